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
Every batch item (runner/batch/) runs through the same `GraphRun`: plan_graph priced it, the batch's
check (flux2.budget.check) refused it over the cap, and its tasks draw on a ticket of the batch's one
BudgetGate where `run_planned` makes a gate of its own.
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

    saved: list[Path] = field(default_factory=list)     # also when the run failed: what SaveImage wrote first
    kept: list[Path] = field(default_factory=list)      # paid images no SaveImage got to write (flux2-unsaved/)
    kept_nodes: list[str] = field(default_factory=list)  # after a finished run: the nodes whose images no
                                                          # SaveImage keeps (a generation feeding only a preview)
    expanded_prompts: dict[str, list] = field(default_factory=dict)   # FLUX 3: node -> the provider's prompts
    billed_usd: float = 0.0
    billed_earlier_usd: float = 0.0                       # to an earlier, killed run, for images recovered
                                                          # here from the tasks it sent (not this run's bill)
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
    if on_node is not None:
        plan.executor.on_node = on_node
    # The cap held task by task while the run is under way (check_budget only saw estimates).
    run = GraphRun(output_dir=output_dir, gate=BudgetGate(cap) if cap else None, cache=cache, progress=progress,
                   is_cancelled=is_cancelled)
    return run.run(plan.executor, execute)


class GraphRun:
    """One graph on its way, the part `run` and every batch item share: its RunContext (ledger, the budget
    gate or a batch item's ticket drawn from the batch's gate, cache, cancel hook, result sink), the paid
    results as they reach it, and how it ends: a RunOutcome with whatever was paid and not saved kept under
    OUTPUT/flux2-unsaved/. `stopped(error)` may also be called from another thread while `run` is still stuck
    in a network call (a batch's second Ctrl-C ends items it no longer waits for)."""

    def __init__(self, *, output_dir: Path, gate=None, cache=None, progress=None,
                 is_cancelled: Callable[[], bool] | None = None, uploads: dict | None = None,
                 on_paid: Callable[[object, object], None] | None = None,
                 on_answer: Callable[[], None] | None = None, unsaved_prefix: str = ""):
        """`uploads`: reference uploads shared with other runs (a batch's items); `on_paid(request, result)`:
        after each paid result is in hand; `on_answer()`: as a provider answers a task, before its image is
        fetched (a batch frees the item's provider slot); `unsaved_prefix`: starts the names of kept images."""
        self.output_dir, self.unsaved_prefix, self.on_paid = Path(output_dir), unsaved_prefix, on_paid
        self.paid: list = []                    # (request, result) as each provider call returns
        self.executor: Executor | None = None
        self.ctx = RunContext(gate=gate, cache=cache, progress=progress, is_cancelled=is_cancelled,
                              result_sink=self._sink, answer_sink=on_answer,
                              **({"uploads": uploads} if uploads is not None else {}))
        self.started = time.monotonic()

    def _sink(self, request, result) -> None:
        self.paid.append((request, result))
        if self.on_paid is not None:
            self.on_paid(request, result)

    def run(self, executor: Executor, execute: Callable[[Executor, RunContext], RunReport] | None = None) -> RunOutcome:
        """`execute(executor, ctx)`: how the graph runs (the CLI: on a worker thread; default: here)."""
        self.executor, self.started = executor, time.monotonic()
        try:
            report = (execute or (lambda ex, c: ex.run(c)))(executor, self.ctx)
        except BaseException as exc:  # noqa: BLE001 - handed back in the outcome, with what was paid kept
            return self.stopped(exc)
        # Finished: paid images that reach no SaveImage (a generation node feeding only PreviewImage) are kept
        # too, since headless a preview shows nothing.
        unkept = [(q, r) for q, r in list(self.paid) if not executor.reaches_save(q.node_id)]
        return self._outcome(saved=list(report.saved), kept=self._keep(unkept),
                             kept_nodes=list(dict.fromkeys(str(q.node_id) for q, _ in unkept)),
                             expanded_prompts=dict(self.ctx.expanded_prompts))

    def stopped(self, error: BaseException | None) -> RunOutcome:
        """The outcome of a run that `error` ended: what SaveImage wrote before it, the paid results the
        graph did not save kept, the tasks that may still be billed named."""
        executor = self.executor
        folders = getattr(executor, "folders", None)
        unsaved = [(q, r) for q, r in list(self.paid) if executor is None or not executor.saved_by_graph(q.node_id)]
        return self._outcome(saved=list(folders.saved) if folders is not None else [], kept=self._keep(unsaved),
                             maybe_billed=may_be_billed(error),
                             running=executor.running if executor is not None else None, error=error)

    def _keep(self, results: list) -> list[Path]:
        return save_unsaved_results(results, self.output_dir, prefix=self.unsaved_prefix)

    def _outcome(self, **fields) -> RunOutcome:
        ledger = self.ctx.ledger
        return RunOutcome(billed_usd=ledger.billed_total, billed_earlier_usd=ledger.billed_earlier_total,
                          ledger=ledger.summary(), seconds=time.monotonic() - self.started, **fields)


def may_be_billed(error: BaseException | None) -> list[str]:
    """Provider tasks that were sent and not answered, so may still be billed: the provider clients name
    them on the error they raise (`maybe_billed`: Runware taskUUIDs, BFL task ids / polling URLs)."""
    return [str(task) for task in getattr(error, "maybe_billed", None) or ()]
