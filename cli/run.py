"""`comfyui-flux2 run WORKFLOW.json`: a dry run of the whole graph (validated, priced), then the run."""
from __future__ import annotations

import sys
from pathlib import Path

from ..flux2.errors import Cancelled
from ..flux2.pricing import approximate_note, format_usd
from . import interrupts
from .common import budget_cap, node_registry, progress_printer, set_models_dir


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
    """Prints what runner/run.py plans and returns; exit status 0, or the run's error raised."""
    from ..flux2.result_cache import ResultCache, enabled_by_env
    from ..runner.run import check_budget, plan_run

    out = sys.stderr
    cap = budget_cap(budget, allow_unpriced)
    # Pass 1: always a dry run. Real runs make it strict (a missing key is an error, not a warning).
    cache = ResultCache() if use_cache and enabled_by_env() else None
    plan = plan_run(Path(path), node_registry(), output_dir=output_dir, input_dir=input_dir,
                    strict=not dry_run, cache=cache, output_dir_name="--output-dir")
    print_plan(Path(path).name, plan, out)
    check_budget(plan, cap)
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
          + approximate_note(plan_ctx.ledger.approximate_reasons),
          file=out)


def _run(plan, cap, cache, output_dir: Path, quiet: bool, out) -> int:
    """Pass 2: the graph on a worker thread under Ctrl-C (runner/run.py keeps what was paid), then printed."""
    from ..runner.run import run_planned

    cancel = interrupts.CancelFlag().install()

    def on_node(node, index, total):
        if not quiet:
            print(f"[{index + 1}/{total}] node {node.id} {node.class_type}", file=out, flush=True)

    def execute(executor, ctx):
        try:
            return interrupts.run_in_worker(executor, ctx)
        except interrupts.Aborted:
            cancel.restore()               # a third Ctrl-C (while the paid images are written) interrupts at once
            interrupts.abandoned.set()     # threads still waiting on the network must not hold the exit back
            raise

    try:
        outcome = run_planned(plan, output_dir=output_dir, cap=cap, cache=cache, is_cancelled=cancel,
                              progress=None if quiet else progress_printer(out), on_node=on_node, execute=execute)
    finally:
        cancel.restore()
    if outcome.error is not None:
        _print_failure(outcome, out)
        if isinstance(outcome.error, interrupts.Aborted):
            raise Cancelled("aborted at once (second Ctrl-C)") from None
        raise outcome.error
    for saved in outcome.saved:
        print(f"saved {saved}")
    if outcome.kept:
        nodes = ", ".join(outcome.kept_nodes)
        print(f"kept {len(outcome.kept)} paid image(s) that no SaveImage keeps (node {nodes}): {outcome.kept[0].parent}",
              file=out)
    for node_id, prompts in outcome.expanded_prompts.items():      # FLUX 3: what the provider drew from
        for prompt in prompts:
            print(f"expanded prompt (node {node_id}): {prompt}", file=out)
    print(f"done in {outcome.seconds:.1f}s; {outcome.ledger}", file=out)
    return 0


def _print_failure(outcome, out) -> None:
    """What a run that did not finish leaves: the paid images kept, the cost, the tasks that may be billed."""
    from ..runner.run import may_be_billed         # the runner (and torch) only once a run is under way

    if outcome.kept:
        print(f"kept {len(outcome.kept)} paid image(s) the graph did not save: {outcome.kept[0].parent}", file=out)
    print(f"cost so far: billed {format_usd(outcome.billed_usd)}", file=out)
    if isinstance(outcome.error, interrupts.Aborted):    # second Ctrl-C: no waiting for a request in flight
        tasks = may_be_billed(outcome.error.error)
        if tasks:
            print(f"may still be billed (in flight when aborted): {', '.join(tasks)}", file=out)
        elif outcome.running:
            print(f"node {outcome.running} was still waiting for the provider; what it submitted may still "
                  "be billed", file=out)
    elif outcome.maybe_billed:
        print(f"may still be billed: {', '.join(outcome.maybe_billed)}", file=out)
