"""`comfyui-flux2`: run workflows headless, try the pack offline, benchmark.

    comfyui-flux2 run WORKFLOW.json [--output-dir DIR] [--input-dir DIR] [--dry-run] [--budget USD] [--allow-unpriced]
    comfyui-flux2 batch WORKFLOW.json --table ROWS.csv|ROWS.jsonl [--seeds A-B] [--budget USD] [--concurrency N] ...
    comfyui-flux2 demo [--output-dir DIR]          # offline: loopback Runware server + example workflows
    comfyui-flux2 models                           # models, limits, prices
    comfyui-flux2 serve-loopback runware|bfl [--port N]
    comfyui-flux2 benchmark remote|local|load|batch|gpu [...]

Exit status: 0 success, 1 a clear one-line error, 2 usage, 130 cancelled.
"""
from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path

from .flux2.errors import BudgetError, Cancelled, Flux2Error, InputError
from .flux2.pricing import format_usd

PACK_DIR = Path(__file__).resolve().parent
WORKFLOWS = PACK_DIR / "workflows"


def _err(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)


# Set when a second Ctrl-C abandoned a run whose worker threads still wait on the network: the
# process must then exit without joining them (`main` does, when it is the process's entry point).
_abandoned = threading.Event()


class CancelFlag:
    """First Ctrl-C asks the run to stop at the next check (polling stops at once); a second one aborts
    at once: the main thread stops waiting for the run, keeps the paid images in hand, names the tasks
    that may still be billed and exits 130."""

    def __init__(self):
        self.set = False
        self._previous = None

    def install(self):
        def handler(signum, frame):
            if self.set:
                raise KeyboardInterrupt
            self.set = True
            print("\ncancelling: no new task starts; a task in flight finishes so its paid image is kept "
                  "(Ctrl-C again to abort at once)", file=sys.stderr)
        try:
            self._previous = signal.signal(signal.SIGINT, handler)
        except ValueError:   # not the main thread (embedded use): rely on the caller
            pass
        return self

    def restore(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)

    def __call__(self) -> bool:
        return self.set


def _progress_printer(stream=sys.stderr):
    last = {}

    def progress(node: str, done: float, total: float, message: str) -> None:
        key = (node, message)
        if last.get(node) == key and done < total:
            return
        last[node] = key
        pct = int(100 * done / total) if total else 0
        print(f"  [node {node}] {pct:3d}% {message}".rstrip(), file=stream, flush=True)
    return progress


def node_registry() -> dict:
    """What a headless run executes (nodes/registry.py); named here too, as the batch API's docs show it."""
    from .nodes.registry import node_registry as registry
    return registry()


def budget_cap(budget, allow_unpriced: bool = False):
    """--budget wins over FLUX2_BUDGET_USD; both are validated (finite, >= 0) by flux2.budget."""
    from .flux2.budget import Cap, allow_unpriced_from_env, cap_from_env, parse_usd
    allow = allow_unpriced or allow_unpriced_from_env()
    if budget is not None:
        return Cap(parse_usd(budget, "--budget"), "the budget cap", allow)
    cap = cap_from_env("the budget cap")
    return Cap(cap.usd, cap.name, allow) if cap else None


def _keep_paid(pending: list, executor, output_dir: Path, out) -> None:
    from .runner.executor import save_unsaved_results
    kept = save_unsaved_results([(q, r) for q, r in list(pending) if not executor.saved_by_graph(q.node_id)],
                                output_dir)
    if kept:
        print(f"kept {len(kept)} paid image(s) the graph did not save: {kept[0].parent}", file=out)


def _may_be_billed(error: BaseException | None) -> list[str]:
    """Provider tasks that were sent and not answered, so may still be billed: the provider clients name
    them on the error they raise (`maybe_billed`: Runware taskUUIDs, BFL task ids / polling URLs)."""
    return [str(task) for task in getattr(error, "maybe_billed", None) or ()]


# After a second Ctrl-C the run gets this long to take its own abort path (keep what was paid, name the
# tasks that may be billed) before it is left behind.
ABORT_GRACE_S = 1.0


class _Aborted(Exception):
    """Second Ctrl-C. `error`: what the run raised when it took its abort path (may carry `salvaged` and
    `maybe_billed`); `left_behind`: the run did not stop within ABORT_GRACE_S (stuck in a network read)."""

    def __init__(self, error: BaseException | None, left_behind: bool):
        super().__init__("aborted")
        self.error = error
        self.left_behind = left_behind


def _interrupt(thread: threading.Thread) -> None:
    """Raise KeyboardInterrupt inside `thread` at its next Python instruction (CPython's
    PyThreadState_SetAsyncExc): provider code waiting in Python (job fan-out, polling) then takes its
    abort path, as it would in the main thread. A thread blocked inside one C call gets it only after."""
    import ctypes
    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread.ident), ctypes.py_object(KeyboardInterrupt))


def _run_in_worker(executor, ctx):
    """Run the graph on a worker thread so the main thread can stop waiting at a second Ctrl-C.

    Returns the RunReport; raises the run's own error; raises _Aborted on the second Ctrl-C."""
    outcome: dict = {}
    finished = threading.Event()

    def work():
        try:
            outcome["report"] = executor.run(ctx)
        except BaseException as exc:  # noqa: BLE001 - handed to the main thread as is
            outcome["error"] = exc
        finally:
            finished.set()

    worker = threading.Thread(target=work, name="flux2-run", daemon=True)
    worker.start()
    # An Event, not Thread.join: a join interrupted by Ctrl-C marks the thread stopped while it still
    # runs (CPython 3.11, Thread._wait_for_tstate_lock).
    try:
        while not finished.wait(0.2):   # interruptible: the SIGINT handler runs in this thread
            pass
    except KeyboardInterrupt:
        _interrupt(worker)
        finished.wait(ABORT_GRACE_S)
        raise _Aborted(outcome.get("error"), not finished.is_set()) from None
    if "error" in outcome:
        raise outcome["error"]
    return outcome["report"]


def run_workflow(path: Path, *, output_dir: Path, input_dir: Path | None = None, dry_run: bool = False,
                 budget=None, allow_unpriced: bool = False, quiet: bool = False, use_cache: bool = True) -> int:
    from .flux2.budget import check as check_cap
    from .flux2.result_cache import ResultCache, enabled_by_env
    from .flux2.run_context import RunContext
    from .runner.graph import load_workflow
    from .runner.pricing import plan_graph

    path = Path(path)
    cap = budget_cap(budget, allow_unpriced)
    workflow = load_workflow(path)
    out = sys.stderr

    def on_node(node, index, total):
        if not quiet:
            print(f"[{index + 1}/{total}] node {node.id} {node.class_type}", file=out, flush=True)

    # The examples keep API-format files in api/ beside the UI files and their images: either finds them.
    more = (path.parent.parent,) if input_dir is None and path.parent.name == "api" else ()

    # Pass 1: always a dry run. Real runs make it strict (a missing key is an error, not a warning).
    cache = ResultCache() if use_cache and enabled_by_env() else None
    plan = plan_graph(workflow, node_registry(), input_dir=input_dir or path.parent, output_dir=output_dir,
                      more_input_dirs=more, strict=not dry_run, cache=cache)
    executor, plan_ctx = plan.executor, plan.ctx
    print(f"{path.name}: {len(executor.order)} nodes, {len(plan_ctx.planned)} generation call(s)", file=out)
    for call, est in plan_ctx.planned:
        print(f"  {call.target}: {call.summary} - est. {est}" + (" (approximate)" if est.approximate else ""), file=out)
    for warning in plan_ctx.grouped_warnings():
        print(f"  warning: {warning}", file=out)
    unpriced = len(plan.unpriced_nodes)
    print(f"estimated cost: {format_usd(plan.total_usd)}"
          + (f" (+{unpriced} call(s) without a published price)" if unpriced else "")
          + (" (approximate: URL references of unknown size priced as <= 1 MP each)" if plan_ctx.ledger.approximate else ""),
          file=out)
    check_cap(plan.total_usd, plan.unpriced_nodes, cap)
    if dry_run:
        print("dry run: nothing was sent", file=out)
        return 0

    pending: list = []
    cancel = CancelFlag().install()
    ctx = RunContext(budget_usd=cap.usd if cap else None, allow_unpriced=bool(cap and cap.allow_unpriced),
                     cache=cache, progress=None if quiet else _progress_printer(out), is_cancelled=cancel,
                     result_sink=lambda req, res: pending.append((req, res)))
    executor.on_node = on_node
    started = time.monotonic()
    try:
        report = _run_in_worker(executor, ctx)
    except _Aborted as aborted:
        cancel.restore()       # a third Ctrl-C (while the paid images are written) interrupts at once
        # Second Ctrl-C: no waiting for a request in flight; keep what was paid and say what may be billed.
        _abandoned.set()       # threads still waiting on the network must not hold the exit back
        _keep_paid(pending, executor, output_dir, out)
        print(f"cost so far: billed {format_usd(ctx.ledger.billed_total)}", file=out)
        tasks = _may_be_billed(aborted.error)
        if tasks:
            print(f"may still be billed (in flight when aborted): {', '.join(tasks)}", file=out)
        elif executor.running:
            print(f"node {executor.running} was still waiting for the provider; what it submitted may still "
                  "be billed", file=out)
        raise Cancelled("aborted at once (second Ctrl-C)") from None
    except BaseException as exc:
        _keep_paid(pending, executor, output_dir, out)
        print(f"cost so far: billed {format_usd(ctx.ledger.billed_total)}", file=out)
        tasks = _may_be_billed(exc)
        if tasks:
            print(f"may still be billed: {', '.join(tasks)}", file=out)
        raise
    finally:
        cancel.restore()
    for saved in report.saved:
        print(f"saved {saved}")
    print(f"done in {time.monotonic() - started:.1f}s; {ctx.ledger.summary()}", file=out)
    return 0


def batch_workflow(args) -> int:
    """`comfyui-flux2 batch`: the workflow over every row (x seed) of a table; see runner/batch.py."""
    from .runner.batch import Batch
    from .runner.batch_table import parse_seeds

    out = sys.stderr
    cap = budget_cap(args.budget, args.allow_unpriced)
    seeds = parse_seeds(args.seeds) if args.seeds is not None else None
    if args.concurrency is not None and args.concurrency < 1:
        raise InputError("--concurrency must be 1 or more")
    if args.ray_actors is not None and args.ray_actors < 1:
        raise InputError("--ray-actors must be 1 or more")
    cancel = CancelFlag()
    batch = Batch(args.workflow, registry=node_registry, output_dir=args.output_dir, table=args.table,
                  input_dir=args.input_dir, seeds=seeds, cap=cap, concurrency=args.concurrency,
                  retry_failed=args.retry_failed, use_cache=not args.no_cache, executor=args.executor,
                  ray_address=args.ray_address, ray_actors=args.ray_actors, is_cancelled=cancel,
                  interrupt=_interrupt, strict=not args.dry_run)
    bar = _bar(None, "dry run", out)
    try:
        plan = batch.prepare(on_item=lambda item: bar.update())
    finally:
        bar.close()
    for bad in plan.bad:
        print(f"  bad {bad.line()}", file=out)
    print(f"{Path(args.workflow).name} x {Path(args.table).name}: {plan.total} item(s); {len(plan.items)} to run"
          + (f", {plan.done} finished earlier" if plan.done else "")
          + (f", {plan.failed_before} failed earlier (--retry-failed runs them)" if plan.failed_before else "")
          + (f", {len(plan.bad)} bad" if plan.bad else ""), file=out)
    unpriced = len(plan.unpriced_items)
    print(f"estimated cost: {format_usd(plan.estimate_usd)}"
          + (f" (+{unpriced} item(s) without a published price)" if unpriced else "")
          + (" (approximate: URL references of unknown size priced as <= 1 MP each)" if plan.approximate else ""),
          file=out)
    batch.check(skip_bad_rows=args.skip_bad_rows)
    if args.dry_run:
        print("dry run: nothing was sent", file=out)
        return 0
    bar = _bar(len(plan.items), "batch", out)
    started = time.monotonic()
    aborted = False
    cancel.install()
    try:
        try:
            for result in batch.run():
                _progress(bar, batch)
        except KeyboardInterrupt:           # a second Ctrl-C outside the scheduler's own loop
            for result in batch.abort():
                _progress(bar, batch)
            aborted = True
        except Cancelled:
            aborted = True
    finally:
        cancel.restore()
        bar.close()
    if aborted:
        _abandoned.set()          # threads still waiting on the network must not hold the exit back
    t = batch.totals
    print(f"batch: {t.ok} ok, {t.failed} failed" + (f", {t.stopped} stopped" if t.stopped else "")
          + (f", {t.not_started} not started" if t.not_started else "")
          + f"; {t.images} image(s); billed {format_usd(t.billed_usd)} (estimated {format_usd(plan.estimate_usd)}) "
          f"in {time.monotonic() - started:.1f}s", file=out)
    for line in t.failures[:20]:
        print(f"  failed {line}", file=out)
    if len(t.failures) > 20:
        print(f"  ... and {len(t.failures) - 20} more (see the manifest)", file=out)
    maybe = [f"{r['item']}: {', '.join(r['maybe_billed'])}" for r in batch.records.values()
             if r.get("maybe_billed") and r.get("status") != "ok"]
    for line in maybe[:20]:
        print(f"  may still be billed: {line}", file=out)
    print(f"manifest: {batch.manifest.path}\ncontact sheet: {Path(args.output_dir) / 'index.html'}", file=out)
    if t.stopped_by in ("cancel", "abort") or aborted:
        raise Cancelled("batch cancelled: re-run the same command to resume" if not aborted
                        else "batch aborted at once (second Ctrl-C): re-run the same command to resume")
    if t.stopped_by == "budget":
        raise BudgetError(f"stopped before passing the budget cap: {t.not_started} item(s) not started; "
                          "re-run with a larger --budget to finish")
    return 1 if t.failed else 0


def _bar(total, what: str, out):
    """A tqdm progress bar (tqdm is imported only here; a missing tqdm just means no bar)."""
    try:
        from tqdm import tqdm
    except ImportError:
        class _NoBar:
            def update(self, n=1): pass
            def set_postfix_str(self, *a, **k): pass
            def close(self): pass
        return _NoBar()
    return tqdm(total=total, desc=what, unit="item", file=out, dynamic_ncols=True, disable=None)


def _progress(bar, batch) -> None:
    t = batch.totals
    bar.set_postfix_str(f"ok {t.ok} failed {t.failed} images {t.images} billed {format_usd(t.billed_usd)}",
                        refresh=False)
    bar.update()


def cmd_demo(args) -> int:
    """Offline tour: a loopback Runware server stands in for the provider (no key, no network);
    with --local, a tiny random FLUX.2 [klein] runs through the local engine on the CPU instead."""
    if args.local:
        from .demo import run_local_demo
        models = Path(args.models_dir) if args.models_dir else Path(args.output_dir) / "flux2-tiny-models"
        print(f"tiny random FLUX.2 [klein] weights in {models} (random weights: the pictures are noise; "
              "the point is the local path end to end)", file=sys.stderr)
        for path in run_local_demo(Path(args.output_dir), models):
            print(f"saved {path}")
        return 0
    from .loopback.runware_server import RunwareLoopback

    with RunwareLoopback(api_key="demo-key") as server:
        os.environ["RUNWARE_API_URL"] = server.api_url
        os.environ["RUNWARE_API_KEY"] = "demo-key"
        print(f"loopback Runware server on {server.api_url} (the demo never leaves this machine)", file=sys.stderr)
        for name in ("flux2_text_to_image.json", "flux2_multi_reference_edit.json", "flux2_local_references_edit.json",
                     "flux2_chain_edit.json"):
            print(f"\n== {name} (dry run, then run)", file=sys.stderr)
            run_workflow(WORKFLOWS / name, output_dir=Path(args.output_dir), dry_run=True, quiet=True)
            run_workflow(WORKFLOWS / name, output_dir=Path(args.output_dir))
    return 0


def cmd_models(args) -> int:
    from .flux2.models import MODELS
    from .flux2.pricing import estimate
    print(f"{'model':26} {'provider':9} {'id':22} {'refs':>4} {'sides':>10} {'1 MP price':>10}")
    for m in MODELS.values():
        for provider, pm in m.providers.items():
            est = estimate(m, provider, 1024, 1024)
            print(f"{m.name:26} {provider:9} {pm.model_id:22} {pm.max_refs:>4} {pm.min_side:>4}-{m.max_side:<5} "
                  f"{format_usd(est.usd):>10}")
    return 0


def cmd_serve(args) -> int:
    if args.provider == "runware":
        from .loopback.runware_server import RunwareLoopback as Server
        env = "RUNWARE"
    else:
        from .loopback.bfl_server import BflLoopback as Server
        env = "BFL"
    server = Server(port=args.port, api_key=args.key).start()
    print(f"export {env}_API_URL={server.api_url} {env}_API_KEY={args.key}")
    print("serving on 127.0.0.1; Ctrl-C to stop", file=sys.stderr)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        server.stop()
    return 0


def cmd_benchmark(args, rest) -> int:
    if args.target == "remote":
        from .bench.remote import main as bench_main
    elif args.target == "load":
        from .bench.load import main as bench_main
    elif args.target == "batch":
        from .bench.batch import main as bench_main
    elif args.target == "gpu":
        from .bench.gpu import main as bench_main
    else:
        from .bench.local import main as bench_main
    return bench_main(rest)


class _Parser(argparse.ArgumentParser):
    """Usage errors in one line (exit status 2), like every other error of the CLI."""

    def error(self, message):
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="comfyui-flux2", description="FLUX.2 workflows without a ComfyUI server.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log HTTP calls (never keys)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run = sub.add_parser("run", help="run an API- or UI-format workflow",
                         description="Validate and price the whole workflow first (a dry run), then run it. "
                                     "Exit status: 0 ok, 1 error, 2 usage, 130 cancelled.")
    run.add_argument("workflow", type=Path,
                     help="workflow JSON: the UI format ComfyUI saves, or its API format (Export (API))")
    run.add_argument("--output-dir", type=Path, default=Path("output"),
                     help="where SaveImage writes (default: ./output); paid images the graph did not get "
                          "to save go to OUTPUT/flux2-unsaved/")
    run.add_argument("--input-dir", type=Path, default=None,
                     help="where LoadImage finds its files (default: the workflow's folder, and for a "
                          "workflow in a folder named api/, the folder above it too)")
    run.add_argument("--dry-run", action="store_true", help="validate, print planned calls and cost; no network")
    run.add_argument("--budget", metavar="USD", default=None,
                     help="refuse to start if the estimate exceeds this many USD, a number >= 0 "
                          "(also FLUX2_BUDGET_USD; --budget wins)")
    run.add_argument("--allow-unpriced", action="store_true",
                     help="under a budget cap, also run models without a published price (their billed "
                          "cost then counts against the cap); also FLUX2_ALLOW_UNPRICED=1")
    run.add_argument("--no-cache", action="store_true",
                     help="always call the provider, even for a request identical to an earlier one")
    run.add_argument("--models-dir", type=Path, default=None, help="local weights folder (also FLUX2_MODELS_DIR)")
    batch = sub.add_parser("batch", help="run a workflow over every row of a table (resumable, within budget)",
                           description="Each row (x each --seeds seed) sets node inputs, named by column: NODE.INPUT "
                                       "with NODE a node id or title (3.prompt, Salt.seed, a LoadImage's image). "
                                       "Every item is validated and priced first; DIR/manifest.jsonl records each "
                                       "item as it ends and DIR/index.html shows them. Re-running the same command "
                                       "resumes. Exit status: 0 ok, 1 error or failed items, 2 usage, 130 cancelled.")
    batch.add_argument("workflow", type=Path, help="workflow JSON, UI or API format (as `run` takes it)")
    batch.add_argument("--table", type=Path, required=True, help="rows: a .csv with a header row, or a .jsonl")
    batch.add_argument("--seeds", metavar="A-B", default=None,
                       help="run every row once per seed A..B (sets every seed the workflow gives by value)")
    batch.add_argument("--output-dir", type=Path, default=Path("output"),
                       help="images, manifest.jsonl and index.html (default: ./output)")
    batch.add_argument("--input-dir", type=Path, default=None,
                       help="where reference file names from the table and LoadImage are found (default: the "
                            "table's folder, then the workflow's)")
    batch.add_argument("--budget", metavar="USD", default=None,
                       help="refuse a batch estimated over this many USD, and start no item that would take what "
                            "is billed plus what is in flight past it (also FLUX2_BUDGET_USD)")
    batch.add_argument("--allow-unpriced", action="store_true",
                       help="under a budget cap, also run models without a published price")
    batch.add_argument("--concurrency", type=int, default=None, metavar="N",
                       help="provider tasks in flight (default: FLUX2_CONCURRENCY or 8 for Runware, "
                            "FLUX2_BFL_CONCURRENCY or 4 for BFL; BFL at most 24)")
    batch.add_argument("--dry-run", action="store_true", help="validate and price every item; send nothing")
    batch.add_argument("--retry-failed", action="store_true", help="also run items that failed in an earlier run")
    batch.add_argument("--skip-bad-rows", action="store_true", help="run the good rows when some are bad")
    batch.add_argument("--executor", choices=("local", "ray"), default="local",
                       help="ray: local-weights items run on Ray actors, one per GPU (pip install "
                            "'comfyui-flux2[ray]'); remote items always run in this process")
    batch.add_argument("--ray-address", default=None,
                       help="with --executor ray: a running cluster (ray start --head; default: RAY_ADDRESS, "
                            "else a local cluster started for the batch)")
    batch.add_argument("--ray-actors", type=int, default=None, metavar="N",
                       help="with --executor ray: actors to start (default: one per GPU of the cluster, else 2)")
    batch.add_argument("--no-cache", action="store_true", help="do not use the result cache (a resume then pays again)")
    batch.add_argument("--models-dir", type=Path, default=None, help="local weights folder (also FLUX2_MODELS_DIR)")
    demo = sub.add_parser("demo", help="offline tour against a loopback Runware server")
    demo.add_argument("--output-dir", default="output", help="where the demo's images go (default: ./output)")
    demo.add_argument("--local", action="store_true",
                      help="run a tiny random local model instead of the loopback provider (CPU, seconds)")
    demo.add_argument("--models-dir", default=None,
                      help="with --local: where to write the tiny weights (default OUTPUT/flux2-tiny-models)")
    sub.add_parser("models", help="list models, limits and prices")
    serve = sub.add_parser("serve-loopback", help="run a loopback provider server for manual tries")
    serve.add_argument("provider", choices=("runware", "bfl"), help="which provider's protocol to serve")
    serve.add_argument("--port", type=int, default=8765, help="port on 127.0.0.1 (default 8765)")
    serve.add_argument("--key", default="loopback-key", help="the API key the server accepts")
    bench = sub.add_parser("benchmark", help="client overhead (remote), step time/memory (local) or pack load time (load)")
    bench.add_argument("target", choices=("remote", "local", "load", "batch", "gpu"),
                       help="remote: client overhead on loopback servers; local: transformer step time/memory; "
                            "load: the pack's import time; batch: batch throughput and Ray; gpu: the prepared run for a lent "
                            "GPU, writing docs/benchmarks-gpu.md (more options: comfyui-flux2 benchmark TARGET --help)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """The CLI. `argv=None` means this is the process's entry point (console script, python -m)."""
    try:
        code = _main(argv)
    except KeyboardInterrupt:          # e.g. Ctrl-C while the pack is still loading
        _err("interrupted")
        code = 130
    if argv is None and _abandoned.is_set():
        # Worker threads of an aborted run still wait on the network; exiting normally would join them.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


def _main(argv: list[str] | None) -> int:
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    if rest and args.command != "benchmark":
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if not args.verbose:
        logging.getLogger("httpx").setLevel(logging.WARNING)
    try:
        if args.command == "run":
            if args.models_dir:
                os.environ["FLUX2_MODELS_DIR"] = str(args.models_dir)
            return run_workflow(args.workflow, output_dir=args.output_dir, input_dir=args.input_dir,
                                dry_run=args.dry_run, budget=args.budget, allow_unpriced=args.allow_unpriced,
                                use_cache=not args.no_cache)
        if args.command == "batch":
            if args.models_dir:
                os.environ["FLUX2_MODELS_DIR"] = str(args.models_dir)
            return batch_workflow(args)
        if args.command == "demo":
            return cmd_demo(args)
        if args.command == "models":
            return cmd_models(args)
        if args.command == "serve-loopback":
            return cmd_serve(args)
        if args.command == "benchmark":
            return cmd_benchmark(args, rest)
    except Cancelled as exc:
        _err(str(exc))
        return 130
    except KeyboardInterrupt:
        _err("aborted")
        return 130
    except Flux2Error as exc:
        _err(str(exc))
        return 1
    return 2


if __name__ == "__main__":
    sys.exit(main())
