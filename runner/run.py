"""One workflow run: plan (a dry run of the whole graph, validated and priced) -> budget -> run -> keep
what was paid. The CLI's `run` prints what this returns; Python callers get the same `RunOutcome`.

    from comfyui_flux2.cli import node_registry
    from comfyui_flux2.runner.run import check_budget, plan_run, run_planned

    plan = plan_run("workflow.json", node_registry(), output_dir=Path("out"))   # nothing sent
    check_budget(plan, cap)                                                       # cap: flux2.budget.Cap or None
    outcome = run_planned(plan, output_dir=Path("out"), cap=cap)
    outcome.saved, outcome.kept, outcome.billed_usd, outcome.error

The run itself executes on the caller's terms (`execute`: the CLI runs it on a worker thread so a
second Ctrl-C can stop waiting); whatever ends it, the paid images the graph did not save are kept.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ..flux2.budget import BudgetGate, Cap, check as check_cap
from ..flux2.run_context import RunContext
from .core_nodes import check_output_folder
from .executor import UNSAVED, Executor, RunReport, save_unsaved_results
from .graph import load_workflow
from .pricing import GraphPlan, plan_graph


@dataclass
class RunOutcome:
    """What a run left: the files the graph saved, the paid images kept beside them, the money."""

    saved: list[Path] = field(default_factory=list)
    kept: list[Path] = field(default_factory=list)      # paid images no SaveImage got to write (flux2-unsaved/)
    kept_nodes: list[str] = field(default_factory=list)  # after a finished run: the nodes whose images no
                                                          # SaveImage keeps (a generation feeding only a preview)
    expanded_prompts: dict[str, list] = field(default_factory=dict)   # FLUX 3: node -> the provider's prompts
    billed_usd: float = 0.0
    ledger: str = ""                                      # the ledger's one-line summary
    seconds: float = 0.0
    maybe_billed: list[str] = field(default_factory=list)   # tasks sent and not answered
    running: str | None = None                            # the node still running when the run ended
    error: BaseException | None = None                    # None: the run finished


def plan_run(path: Path, registry: dict, *, output_dir: Path, input_dir: Path | None = None,
             strict: bool = True, cache=None, output_dir_name: str = "output_dir") -> GraphPlan:
    """The whole graph validated and priced, nothing sent; the output folder (and flux2-unsaved/ in it)
    checked writable first. `strict`: a missing key is an error, not a warning (a real run follows).
    `output_dir_name`: how errors name the folder (the CLI: --output-dir)."""
    path = Path(path)
    workflow = load_workflow(path)
    check_output_folder(Path(output_dir), output_dir_name)      # before anything is paid for
    check_output_folder(Path(output_dir) / UNSAVED, output_dir_name)
    # The examples keep API-format files in api/ beside the UI files and their images: either finds them.
    more = (path.parent.parent,) if input_dir is None and path.parent.name == "api" else ()
    return plan_graph(workflow, registry, input_dir=input_dir or path.parent, output_dir=output_dir,
                      more_input_dirs=more, strict=strict, cache=cache)


def check_budget(plan: GraphPlan, cap: Cap | None) -> None:
    """BudgetError (one line) when the plan's estimate passes the cap, or it holds unpriced calls the cap
    does not allow; before anything is sent."""
    check_cap(plan.total_usd, plan.unpriced_nodes, cap)


def run_planned(plan: GraphPlan, *, output_dir: Path, cap: Cap | None = None, cache=None, progress=None,
                is_cancelled: Callable[[], bool] | None = None, on_node=None,
                execute: Callable[[Executor, RunContext], RunReport] | None = None) -> RunOutcome:
    """Run a planned graph under the budget cap; the outcome says what was saved, kept and billed.
    An error ends up in `outcome.error` (after the paid images were kept), never lost."""
    executor = plan.executor
    pending: list = []
    # The cap held task by task while the run is under way (check_budget only saw estimates).
    ctx = RunContext(gate=BudgetGate(cap) if cap else None, cache=cache, progress=progress,
                     is_cancelled=is_cancelled, result_sink=lambda req, res: pending.append((req, res)))
    if on_node is not None:
        executor.on_node = on_node
    started = time.monotonic()
    try:
        report = (execute or (lambda ex, c: ex.run(c)))(executor, ctx)
    except BaseException as exc:  # noqa: BLE001 - handed back in the outcome, with what was paid kept
        return RunOutcome(kept=keep_paid(pending, executor, output_dir), billed_usd=ctx.ledger.billed_total,
                          ledger=ctx.ledger.summary(), seconds=time.monotonic() - started,
                          maybe_billed=may_be_billed(exc), running=executor.running, error=exc)
    # Finished: paid images that reach no SaveImage (a generation node feeding only PreviewImage) are kept
    # too, since headless a preview shows nothing.
    unkept = [(q, r) for q, r in list(pending) if not executor.reaches_save(q.node_id)]
    return RunOutcome(saved=list(report.saved), kept=save_unsaved_results(unkept, output_dir),
                      kept_nodes=list(dict.fromkeys(str(q.node_id) for q, _ in unkept)),
                      expanded_prompts=dict(ctx.expanded_prompts), billed_usd=ctx.ledger.billed_total,
                      ledger=ctx.ledger.summary(), seconds=time.monotonic() - started)


def keep_paid(pending: list, executor: Executor, output_dir: Path) -> list[Path]:
    """Paid results the graph did not save, written to OUTPUT/flux2-unsaved/."""
    return save_unsaved_results([(q, r) for q, r in list(pending) if not executor.saved_by_graph(q.node_id)],
                                output_dir)


def may_be_billed(error: BaseException | None) -> list[str]:
    """Provider tasks that were sent and not answered, so may still be billed: the provider clients name
    them on the error they raise (`maybe_billed`: Runware taskUUIDs, BFL task ids / polling URLs)."""
    return [str(task) for task in getattr(error, "maybe_billed", None) or ()]
