"""`comfyui-flux2 batch WORKFLOW --table FILE`: the workflow over every row (x seed) of a table; see runner/batch/."""
from __future__ import annotations

import sys
import time
from pathlib import Path

from ..flux2.errors import BudgetError, Cancelled, InputError
from ..flux2.pricing import approximate_note, format_usd
from . import interrupts
from .common import budget_cap, node_registry, set_models_dir, whole_number


def add_parser(sub) -> None:
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
    batch.add_argument("--concurrency", type=whole_number, default=None, metavar="N",
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
    batch.add_argument("--ray-actors", type=whole_number, default=None, metavar="N",
                       help="with --executor ray: actors to start (default: one per GPU of the cluster, else 2)")
    batch.add_argument("--no-cache", action="store_true", help="do not use the result cache (a resume then pays again)")
    batch.add_argument("--models-dir", type=Path, default=None, help="local weights folder (also FLUX2_MODELS_DIR)")
    batch.set_defaults(handler=command)


def command(args) -> int:
    set_models_dir(args)
    return batch_workflow(args)


def batch_workflow(args) -> int:
    """`comfyui-flux2 batch`: the workflow over every row (x seed) of a table; see runner/batch/."""
    from ..runner.batch import Batch
    from ..runner.batch.table import parse_seeds

    out = sys.stderr
    cap = budget_cap(args.budget, args.allow_unpriced)
    seeds = parse_seeds(args.seeds) if args.seeds is not None else None
    if args.concurrency is not None and args.concurrency < 1:
        raise InputError("--concurrency must be 1 or more")
    if args.ray_actors is not None and args.ray_actors < 1:
        raise InputError("--ray-actors must be 1 or more")
    cancel = interrupts.CancelFlag()
    batch = Batch(args.workflow, registry=node_registry, output_dir=args.output_dir, table=args.table,
                  input_dir=args.input_dir, seeds=seeds, cap=cap, concurrency=args.concurrency,
                  retry_failed=args.retry_failed, use_cache=not args.no_cache, executor=args.executor,
                  ray_address=args.ray_address, ray_actors=args.ray_actors, is_cancelled=cancel,
                  interrupt=interrupts.interrupt, strict=not args.dry_run)
    plan = _prepare(batch, args, out)
    batch.check(skip_bad_rows=args.skip_bad_rows)
    if args.dry_run:
        print("dry run: nothing was sent", file=out)
        return 0
    started = time.monotonic()
    aborted = _run(batch, cancel, len(plan.items), out)
    _print_totals(batch, plan, args, time.monotonic() - started, out)
    t = batch.totals
    if t.stopped_by in ("cancel", "abort") or aborted:
        raise Cancelled("batch cancelled: re-run the same command to resume" if not aborted
                        else "batch aborted at once (second Ctrl-C): re-run the same command to resume")
    if t.stopped_by == "budget":
        raise BudgetError(f"stopped before passing the budget cap: {t.not_started} item(s) not started"
                          + (f" (the next: {t.budget_reason})" if t.budget_reason else "")
                          + "; re-run with a larger --budget to finish")
    return 1 if t.failed else 0


def _prepare(batch, args, out):
    """The dry run of every item, and what it found."""
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
          + approximate_note(plan.approximate_reasons),
          file=out)
    return plan


def _run(batch, cancel, total: int, out) -> bool:
    """The items, under Ctrl-C; True when a second Ctrl-C aborted them."""
    bar = _bar(total, "batch", out)
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
        interrupts.abandoned.set()          # threads still waiting on the network must not hold the exit back
    return aborted


def _print_totals(batch, plan, args, seconds: float, out) -> None:
    t = batch.totals
    print(f"batch: {t.ok} ok, {t.failed} failed" + (f", {t.stopped} stopped" if t.stopped else "")
          + (f", {t.not_started} not started" if t.not_started else "")
          + f"; {t.images} image(s); billed {format_usd(t.billed_usd)}"
          + (f" + {format_usd(t.billed_earlier_usd)} billed to an earlier, killed run for images recovered from "
             "its tasks" if t.billed_earlier_usd else "")
          + f" (estimated {format_usd(plan.estimate_usd)}) in {seconds:.1f}s", file=out)
    for line in t.failures[:20]:
        print(f"  failed {line}", file=out)
    if len(t.failures) > 20:
        print(f"  ... and {len(t.failures) - 20} more (see the manifest)", file=out)
    if t.unkept:
        print(f"  kept {t.unkept} paid image(s) that no SaveImage keeps: {Path(args.output_dir) / 'flux2-unsaved'}",
              file=out)
    maybe = [f"{r['item']}: {', '.join(r['maybe_billed'])}" for r in batch.records.values()
             if r.get("maybe_billed") and r.get("status") != "ok"]
    for line in maybe[:20]:
        print(f"  may still be billed: {line}", file=out)
    print(f"manifest: {batch.manifest.path}\ncontact sheet: {Path(args.output_dir) / 'index.html'}", file=out)


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
