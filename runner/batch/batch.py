"""One workflow over a table of rows: the batch API the CLI's `batch` command is built on.

    from comfyui_flux2.cli import node_registry
    from comfyui_flux2.runner.batch import Batch

    batch = Batch("workflow.json", rows=[{"3.prompt": "a fox"}, {"3.prompt": "a hare"}], seeds=range(1, 5),
                  registry=node_registry, output_dir="out")
    plan = batch.prepare()            # every item validated and priced; nothing sent
    for result in batch.run():        # as items finish, in any order
        print(result.item.id, result.status, result.paths, result.billed_usd)

Steps: table -> items (items.py) -> dry run of every item (the estimate, bad rows) -> what an earlier run
left (manifest: finished items skipped, tasks to recover) -> the scheduler runs the rest, each item's end
written to DIR/manifest.jsonl at once -> DIR/index.html.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Iterator

from ...flux2.budget import BudgetGate, Cap, check as check_cap
from ...flux2.errors import InputError
from ..graph import load_workflow
from ..executor import UNSAVED
from .executors import ItemEnv, ItemOutcome, ItemRun
from .items import BatchItem, Template, plan_items, shared_backends
from .lock import FolderLock
from .manifest import Manifest, decide, record
from .scheduler import ProviderLimits, Scheduler
from .sheet import write_sheet
from .table import BadRow, Row, read_table

log = logging.getLogger("comfyui_flux2.batch")
BFL_MAX_ACTIVE = 24          # BFL's limit of active tasks per account
SHEET_EVERY_S = 30.0         # a long batch's contact sheet is rewritten this often (and at the end)


@dataclass
class BatchPlan:
    items: list                        # to run now
    bad: list                          # BadRow, one per row (or row and seed) that cannot run
    done: int = 0                      # finished in an earlier run: skipped
    failed_before: int = 0             # failed in an earlier run, not retried (--retry-failed)
    total: int = 0                     # items the table makes (rows x seeds)

    @property
    def estimate_usd(self) -> float:
        return round(sum(i.estimate_usd for i in self.items), 6)

    @property
    def unpriced_items(self) -> list[str]:
        return [i.id for i in self.items if i.unpriced]

    @property
    def approximate(self) -> bool:
        return any(i.approximate for i in self.items)

    @property
    def approximate_reasons(self) -> list[str]:
        return list(dict.fromkeys(r for i in self.items for r in i.approximate_reasons))


@dataclass
class BatchResult:
    item: BatchItem
    outcome: ItemOutcome
    output_dir: Path

    @property
    def status(self) -> str:
        return self.outcome.status

    @property
    def billed_usd(self) -> float:
        return self.outcome.billed_usd

    @property
    def paths(self) -> list[Path]:
        return [self.output_dir / p for p in self.outcome.outputs]


@dataclass
class BatchTotals:
    ok: int = 0
    failed: int = 0
    stopped: int = 0                   # cancelled or interrupted
    images: int = 0
    billed_usd: float = 0.0
    billed_earlier_usd: float = 0.0    # to an earlier, killed run, for images recovered from its tasks
    not_started: int = 0
    stopped_by: str | None = None      # "budget" | "cancel" | "abort"
    budget_reason: str | None = None   # stopped_by budget: why the next item would pass the cap
    unkept: int = 0                    # paid images of items that ran through but reach no SaveImage
    failures: list = field(default_factory=list)


class Batch:
    def __init__(self, workflow, *, registry: Callable[[], dict], output_dir, table=None, rows=None,
                 input_dir=None, seeds=None, cap: Cap | None = None, concurrency: int | None = None,
                 retry_failed: bool = False, use_cache: bool = True, executor: str = "local",
                 ray_address: str | None = None, ray_actors: int | None = None,
                 is_cancelled: Callable[[], bool] | None = None, interrupt: Callable | None = None,
                 strict: bool = True):
        """`registry`: a module-level function returning the node registry (cli.node_registry); Ray actors
        call it in their own process. `rows`: dicts of column -> value, instead of a `table` file."""
        if (table is None) == (rows is None):
            raise InputError("give a table file or rows, not both and not neither")
        if executor not in ("local", "ray"):
            raise InputError(f"executor must be local or ray, got {executor!r}")
        self.workflow_path = Path(workflow) if not isinstance(workflow, dict) else None
        self.workflow = load_workflow(self.workflow_path) if self.workflow_path else workflow
        self.registry_factory = registry
        self.registry = shared_backends(registry())
        self.output_dir = Path(output_dir)
        self.table = Path(table) if table is not None else None
        self.rows = rows
        self.seeds = list(seeds) if seeds is not None else None
        self.cap = cap
        self.concurrency = concurrency
        self.retry_failed = retry_failed
        self.executor = executor
        self.ray_address, self.ray_actors = ray_address, ray_actors
        self.is_cancelled = is_cancelled
        self.interrupt = interrupt
        self.strict = strict
        if input_dir is not None:
            self.input_dirs = (Path(input_dir),)
        else:   # reference paths in a table are relative to the table, then to the workflow (as `run` looks)
            dirs = [self.table.parent] if self.table is not None else []
            if self.workflow_path is not None:
                dirs.append(self.workflow_path.parent)
                if self.workflow_path.parent.name == "api":
                    dirs.append(self.workflow_path.parent.parent)
            self.input_dirs = tuple(dict.fromkeys(dirs or [Path(".")]))
        cache = None
        if use_cache:
            from ...flux2.result_cache import ResultCache, enabled_by_env
            cache = ResultCache() if enabled_by_env() else None
        self.env = ItemEnv(self.registry, self.input_dirs[0], self.output_dir, self.input_dirs[1:], cache)
        self.manifest = Manifest(self.output_dir)
        self.lock = FolderLock(self.output_dir)          # one batch at a time per folder (lock.py)
        self.records: dict[str, dict] = {}
        self.plan: BatchPlan | None = None
        self.scheduler: Scheduler | None = None
        self.totals = BatchTotals()
        self._ray = None
        self._sheet_written = time.monotonic()
        # item id -> what an earlier, aborted run was billed for the tasks of it recovered before this run
        self._recovered_usd: dict[str, float] = {}

    # -- before anything is sent ------------------------------------------------------------------
    def prepare(self, on_item: Callable | None = None) -> BatchPlan:
        """Read the table, build and dry-run every item, set aside what an earlier run finished."""
        from ..core_nodes import check_output_folder
        check_output_folder(self.output_dir, "--output-dir")       # before anything is paid for
        if self.strict:
            # A real run takes the folder before reading its manifest: another batch writing it meanwhile
            # would make this one run (and pay for) the items the other is running.
            self.lock.acquire()
        if self.table is not None:
            rows, bad = read_table(self.table)
        else:
            rows, bad = [Row(n, dict(values)) for n, values in enumerate(self.rows, 1)], []
        template = Template(self.workflow, self.registry)
        items, bad_values = template.items(rows, self.seeds)
        self.records = self.manifest.load()
        total = len(items)
        pending, done, failed_before = [], 0, 0
        for item in items:
            # A finished item is judged by its fingerprint without a dry run (resuming 10 000 rows stays quick).
            state = decide(self.records.get(item.id), item.fingerprint, self.retry_failed)
            done += state == "done"
            failed_before += state == "failed"
            if state == "run":
                pending.append(item)
        good, bad_items = plan_items(pending, self.registry, input_dir=self.env.input_dir,
                                     more_input_dirs=self.env.more_input_dirs, output_dir=self.output_dir,
                                     cache=self.env.cache, strict=self.strict, on_item=on_item)
        bad = sorted(bad + bad_values + bad_items, key=lambda b: (b.number, b.seed if b.seed is not None else -1))
        self.plan = BatchPlan(good, bad, done, failed_before, total)
        return self.plan

    def check(self, skip_bad_rows: bool = False) -> None:
        """Refuse the batch before anything is sent: bad rows (unless skipped), an estimate over the cap."""
        plan = self.plan or self.prepare()
        try:
            if plan.bad and not skip_bad_rows:
                raise InputError(f"{len(plan.bad)} bad row(s), listed above; nothing was sent "
                                 "(--skip-bad-rows runs the others)")
            check_cap(plan.estimate_usd, plan.unpriced_items, self.cap, subject="the batch")
        except Exception:
            self.lock.release()       # this batch will not run: the folder is free again
            raise

    # -- running ----------------------------------------------------------------------------------
    def limits(self) -> dict[str, int]:
        from ...flux2.remote.runware import concurrency as runware_default
        runware = self.concurrency or runware_default()
        bfl = min(self.concurrency, BFL_MAX_ACTIVE) if self.concurrency else self._bfl_default()
        local = self._ray.size if self._ray is not None else 1     # one item per loaded model
        return {"runware": runware, "bfl": bfl, "local": local}

    def run(self) -> Iterator[BatchResult]:
        plan = self.plan or self.prepare()
        self.lock.acquire()           # held since prepare() in a real run; a no-op then
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self._recover(plan.items)
        if self.executor == "ray" and any("local" in i.needs for i in plan.items):
            from .ray_executor import RayPool
            self._ray = RayPool(self.registry_factory, self.env, address=self.ray_address, actors=self.ray_actors)
        self.scheduler = Scheduler(plan.items, self._start, limits=ProviderLimits(self.limits()),
                                   gate=BudgetGate(self.cap) if self.cap else None, is_cancelled=self.is_cancelled,
                                   interrupt=self.interrupt)
        try:
            for item, outcome in self.scheduler.run():
                yield self._ended(item, outcome)
        finally:
            self.close()

    def abort(self) -> Iterator[BatchResult]:
        """Second Ctrl-C arrived outside the scheduler's loop (the caller's code): end the items in flight."""
        if self.scheduler is not None:
            for item, outcome in self.scheduler.abort():
                yield self._ended(item, outcome)
        self.close()

    def _bfl_default(self) -> int:
        """BFL's own limit (FLUX2_CONCURRENCY or its active-task cap); the BFL client is imported only when an
        item uses BFL (its modules cost a Runware-only batch 15 ms at start)."""
        if self.plan is not None and not any("bfl" in item.needs for item in self.plan.items):
            return 1
        from ...flux2.remote.bfl import BflBackend
        return BflBackend("FLUX.2 [pro]").concurrency()

    def _start(self, item: BatchItem, ticket=None):
        """`ticket`: what the budget gate admitted for the item; its provider tasks draw on it."""
        if self._ray is not None and "local" in item.needs:
            return self._ray.item_run(item, self.is_cancelled, ticket)
        scheduler = self.scheduler
        return ItemRun(item, self.env, self.is_cancelled, on_calls_done=lambda: scheduler.calls_done(item.id),
                       gate=ticket)

    def _ended(self, item: BatchItem, outcome: ItemOutcome) -> BatchResult:
        if item.id in self._recovered_usd:
            # Its tasks that _recover fetched were billed to the earlier run, which wrote no line for them: said on
            # this line whatever the item did next (a later run serves them from the cache and would never say it).
            earlier = round(outcome.billed_earlier_usd + self._recovered_usd.pop(item.id), 6)
            outcome = replace(outcome, billed_earlier_usd=earlier)
        line = record(item, outcome)
        self.manifest.append(line)
        self.records[item.id] = line
        t = self.totals
        if outcome.status == "ok":
            t.ok += 1
        elif outcome.status == "failed":
            t.failed += 1
            t.failures.append(f"{item.id}: {outcome.error}")
        else:
            t.stopped += 1
        t.images += len(outcome.outputs)
        if outcome.status == "ok":
            t.unkept += sum(1 for o in outcome.outputs if str(o).startswith(UNSAVED + "/"))
        t.billed_usd = round(t.billed_usd + (outcome.billed_usd or 0.0), 6)
        t.billed_earlier_usd = round(t.billed_earlier_usd + (outcome.billed_earlier_usd or 0.0), 6)
        if time.monotonic() - self._sheet_written > SHEET_EVERY_S:
            self.write_sheet()
        return BatchResult(item, outcome, self.output_dir)

    def close(self) -> None:
        if self.scheduler is not None:
            self.totals.stopped_by = self.scheduler.stopped_by
            self.totals.budget_reason = self.scheduler.budget_reason
            self.totals.not_started = len(self.scheduler.not_started())
        self.manifest.close()
        if self._ray is not None:
            self._ray.close()
            self._ray = None
        if self.records:
            self.write_sheet()
        self.lock.release()

    def write_sheet(self) -> Path:
        self._sheet_written = time.monotonic()
        title = f"{self.workflow_path.name if self.workflow_path else 'workflow'} x " \
                f"{self.table.name if self.table else 'rows'}"
        return write_sheet(self.output_dir, list(self.records.values()), title)

    def _recover(self, items: list[BatchItem]) -> None:
        """Tasks an interrupted earlier run left in flight: fetched from the provider into the result cache,
        so their items are served from it instead of paid again."""
        wanted = {item.id: (self.records.get(item.id) or {}).get("recover") or () for item in items}
        if not any(wanted.values()) or self.env.cache is None:
            return
        from .recover import recover_tasks
        billed = recover_tasks([e for entries in wanted.values() for e in entries], self.env.cache, self.is_cancelled)
        for item_id, entries in wanted.items():
            keys = [e.get("key") for e in entries if isinstance(e, dict) and e.get("key") in billed]
            if keys:
                self._recovered_usd[item_id] = round(sum(billed[k] or 0.0 for k in keys), 6)
