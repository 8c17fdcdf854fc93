"""`comfyui-flux2 run WORKFLOW.json`: a dry run of the whole graph (validated, priced), then the run."""
from __future__ import annotations

import sys
import time
from pathlib import Path

from ..flux2.errors import Cancelled
from ..flux2.pricing import format_usd
from . import interrupts
from .common import (budget_cap, keep_paid, keep_unkept, may_be_billed, node_registry, progress_printer,
                     set_models_dir)


def add_parser(sub) -> None:
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
    run.set_defaults(handler=command)


def command(args) -> int:
    set_models_dir(args)
    return run_workflow(args.workflow, output_dir=args.output_dir, input_dir=args.input_dir, dry_run=args.dry_run,
                        budget=args.budget, allow_unpriced=args.allow_unpriced, use_cache=not args.no_cache)


def run_workflow(path: Path, *, output_dir: Path, input_dir: Path | None = None, dry_run: bool = False,
                 budget=None, allow_unpriced: bool = False, quiet: bool = False, use_cache: bool = True) -> int:
    from ..flux2.budget import check as check_cap
    from ..flux2.result_cache import ResultCache, enabled_by_env
    from ..runner.batch.executors import UNSAVED
    from ..runner.core_nodes import check_output_folder
    from ..runner.graph import load_workflow
    from ..runner.pricing import plan_graph

    path = Path(path)
    cap = budget_cap(budget, allow_unpriced)
    workflow = load_workflow(path)
    out = sys.stderr
    check_output_folder(Path(output_dir), "--output-dir")      # before anything is paid for
    check_output_folder(Path(output_dir) / UNSAVED, "--output-dir")
    # The examples keep API-format files in api/ beside the UI files and their images: either finds them.
    more = (path.parent.parent,) if input_dir is None and path.parent.name == "api" else ()

    # Pass 1: always a dry run. Real runs make it strict (a missing key is an error, not a warning).
    cache = ResultCache() if use_cache and enabled_by_env() else None
    plan = plan_graph(workflow, node_registry(), input_dir=input_dir or path.parent, output_dir=output_dir,
                      more_input_dirs=more, strict=not dry_run, cache=cache)
    print_plan(path.name, plan, out)
    check_cap(plan.total_usd, plan.unpriced_nodes, cap)
    if dry_run:
        print("dry run: nothing was sent", file=out)
        return 0
    return _run(plan, cap, cache, output_dir, quiet, out)


def print_plan(name: str, plan, out) -> None:
    executor, plan_ctx = plan.executor, plan.ctx
    print(f"{name}: {len(executor.order)} nodes, {len(plan_ctx.planned)} generation call(s)", file=out)
    for call, est in plan_ctx.planned:
        print(f"  {call.target}: {call.summary} - est. {est}" + (" (approximate)" if est.approximate else ""), file=out)
    for warning in plan_ctx.grouped_warnings():
        print(f"  warning: {warning}", file=out)
    unpriced = len(plan.unpriced_nodes)
    print(f"estimated cost: {format_usd(plan.total_usd)}"
          + (f" (+{unpriced} call(s) without a published price)" if unpriced else "")
          + (" (approximate: URL references of unknown size priced as <= 1 MP each)" if plan_ctx.ledger.approximate else ""),
          file=out)


def _run(plan, cap, cache, output_dir: Path, quiet: bool, out) -> int:
    """Pass 2: the graph on a worker thread under Ctrl-C; on any end but success, keep what was paid."""
    from ..flux2.budget import BudgetGate
    from ..flux2.run_context import RunContext

    executor = plan.executor
    pending: list = []
    cancel = interrupts.CancelFlag().install()
    # The cap held task by task while the run is under way (the check before it only saw estimates).
    ctx = RunContext(gate=BudgetGate(cap) if cap else None, cache=cache,
                     progress=None if quiet else progress_printer(out), is_cancelled=cancel,
                     result_sink=lambda req, res: pending.append((req, res)))

    def on_node(node, index, total):
        if not quiet:
            print(f"[{index + 1}/{total}] node {node.id} {node.class_type}", file=out, flush=True)

    executor.on_node = on_node
    started = time.monotonic()
    try:
        report = interrupts.run_in_worker(executor, ctx)
    except interrupts.Aborted as aborted:
        cancel.restore()       # a third Ctrl-C (while the paid images are written) interrupts at once
        _after_abort(aborted, pending, executor, ctx, output_dir, out)
        raise Cancelled("aborted at once (second Ctrl-C)") from None
    except BaseException as exc:
        keep_paid(pending, executor, output_dir, out)
        print(f"cost so far: billed {format_usd(ctx.ledger.billed_total)}", file=out)
        tasks = may_be_billed(exc)
        if tasks:
            print(f"may still be billed: {', '.join(tasks)}", file=out)
        raise
    finally:
        cancel.restore()
    for saved in report.saved:
        print(f"saved {saved}")
    keep_unkept(pending, executor, output_dir, out)
    for node_id, prompts in ctx.expanded_prompts.items():      # FLUX 3: what the provider drew from
        for prompt in prompts:
            print(f"expanded prompt (node {node_id}): {prompt}", file=out)
    print(f"done in {time.monotonic() - started:.1f}s; {ctx.ledger.summary()}", file=out)
    return 0


def _after_abort(aborted, pending, executor, ctx, output_dir: Path, out) -> None:
    """Second Ctrl-C: no waiting for a request in flight; keep what was paid and say what may be billed."""
    interrupts.abandoned.set()       # threads still waiting on the network must not hold the exit back
    keep_paid(pending, executor, output_dir, out)
    print(f"cost so far: billed {format_usd(ctx.ledger.billed_total)}", file=out)
    tasks = may_be_billed(aborted.error)
    if tasks:
        print(f"may still be billed (in flight when aborted): {', '.join(tasks)}", file=out)
    elif executor.running:
        print(f"node {executor.running} was still waiting for the provider; what it submitted may still "
              "be billed", file=out)
