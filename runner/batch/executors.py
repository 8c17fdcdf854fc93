"""Running one batch item: its graph on runner/run.py's `GraphRun` (the run path `run` takes), and what it left.

`ItemRun` is the in-process executor (threads of this process; remote providers and, one at a time,
local weights). Ray actors (ray_executor.py) run the very same `ItemRun` in their own process. Whatever
happens inside an item ends as an `ItemOutcome`: one failing item never stops the others, and every
paid image that reached the process is on disk and named in the outcome.
"""
from __future__ import annotations

import contextlib
import logging
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path

from ...flux2.errors import Cancelled, Flux2Error
from ...flux2.redaction import log_unexpected, scrub
from ..executor import Executor, file_token
from ..run import GraphRun, RunOutcome
from .manifest import CANCELLED, FAILED, INTERRUPTED, OK

log = logging.getLogger("comfyui_flux2.batch")
_RUNWARE_TASK = re.compile(r"runware task ([0-9a-fA-F-]{36})")


@dataclass
class ItemOutcome:
    item_id: str
    status: str                                       # ok | failed | cancelled | interrupted
    outputs: list = field(default_factory=list)       # files, relative to the batch folder (posix)
    seeds: list = field(default_factory=list)         # seeds of every image the item's nodes made
    tasks: list = field(default_factory=list)         # provider task ids
    billed_usd: float = 0.0
    # Billed to an earlier, killed run (which wrote no manifest line) for images recovered here from its tasks
    billed_earlier_usd: float = 0.0
    images: int = 0
    cached: bool = False                              # some image came from the result cache ($0)
    error: str | None = None
    maybe_billed: list = field(default_factory=list)  # tasks sent and unanswered: may still be billed
    recover: list = field(default_factory=list)       # [{key, task}]: fetch these before paying again
    worker: str = "in-process"
    seconds: float = 0.0


@dataclass
class ItemEnv:
    """What every item of a batch shares."""
    registry: dict
    input_dir: Path
    output_dir: Path
    more_input_dirs: tuple = ()
    cache: object | None = None                      # ResultCache, or None (--no-cache)
    uploads: dict = field(default_factory=dict)       # reference uploads, shared: one upload per picture per batch


class _TrackingCache:
    """The result cache, noting which request an item was waiting for when it was stopped: a Runware task
    left in flight is then fetched by its id on the next run and stored under that request's key."""

    def __init__(self, cache, run: "ItemRun"):
        self._cache, self._run = cache, run

    def get(self, key):
        hit = self._cache.get(key)
        if hit is not None:                       # served at $0: never reaches the result sink, noted here
            self._run.cache_hits.append(list(hit[1]))
        return hit

    def put(self, *args, **kwargs):
        return self._cache.put(*args, **kwargs)

    def __getattr__(self, name):              # the rest (notes of tasks sent) is the cache's own
        return getattr(self._cache, name)

    @contextlib.contextmanager
    def claim(self, key, is_cancelled=None):
        with self._cache.claim(key, is_cancelled):
            try:
                yield
            except BaseException:
                self._run.stopped_keys.append(key)
                raise


class ItemRun:
    """One item on its way: a `GraphRun` (runner/run.py, the run path `run` takes too: its RunContext, the
    paid results, what is kept when it ends) drawing on the item's budget ticket, plus what a batch adds: the
    cache hits and stopped requests the manifest names, the thread running it (a second Ctrl-C interrupts
    that thread), the item's status."""

    def __init__(self, item, env: ItemEnv, is_cancelled=None, worker: str = "in-process", on_calls_done=None,
                 gate=None):
        """`on_calls_done()`: called once the item's last provider call has answered (it may still be saving),
        so the scheduler can give its provider slot to the next item. `gate`: the item's budget Ticket."""
        self.item, self.env, self.worker = item, env, worker
        self.on_calls_done = on_calls_done
        self._answers = 0                          # provider tasks answered so far
        self._calls_done_said = False
        self._answers_lock = threading.Lock()
        self.stopped_keys: list[str] = []
        self.cache_hits: list[list[int]] = []      # seeds of each result served from the result cache
        self.aborted = False                       # set by the scheduler on a second Ctrl-C
        self.thread: threading.Thread | None = None
        cache = _TrackingCache(env.cache, self) if env.cache is not None else None
        # Kept images are named after the item too: items share one flux2-unsaved/ folder.
        self.graph = GraphRun(output_dir=env.output_dir, gate=gate, cache=cache, is_cancelled=is_cancelled,
                              uploads=env.uploads, on_paid=self._paid, on_answer=self._answered,
                              unsaved_prefix=f"{file_token(item.id)}_")

    def _paid(self, request, result) -> None:
        remote = [r for _, r in list(self.graph.paid) if r.info.get("provider")]
        if len(remote) == getattr(self.item, "provider_calls", -1):
            self._calls_done()

    def _answered(self) -> None:
        """A provider answered one of the item's tasks: once all have (one per entry of item.units), its slot
        is free, before the images are downloaded, decoded and saved."""
        with self._answers_lock:
            self._answers += 1
            last = self._answers == len(getattr(self.item, "units", None) or ())
        if last:
            self._calls_done()

    def _calls_done(self) -> None:
        if getattr(self.item, "planned_hits", 0):
            # A call planned as a cache hit sends a task of its own if the entry is gone by then (deleted, damaged),
            # maybe after every planned task answered: such an item keeps its slot until it ends.
            return
        with self._answers_lock:
            said, self._calls_done_said = self._calls_done_said, True
        if self.on_calls_done is not None and not said:
            self.on_calls_done()

    def run(self) -> ItemOutcome:
        self.thread = threading.current_thread()
        env = self.env
        try:
            executor = Executor(self.item.prompt, registry=env.registry, input_dir=env.input_dir,
                                output_dir=env.output_dir, more_input_dirs=env.more_input_dirs)
        except BaseException as exc:  # noqa: BLE001 - ends as the item's outcome; nothing ran, nothing paid
            self._log_bug(exc)
            return self._ended(self.graph.stopped(exc))
        return self._ended(self.graph.run(executor, self._execute))

    def _execute(self, executor: Executor, ctx) -> object:
        try:
            return executor.run(ctx)
        except BaseException as exc:
            self._log_bug(exc)
            raise

    def _log_bug(self, exc: BaseException) -> None:
        """A bug in one item must not stop the batch or lose its images: logged (scrubbed) and the item fails."""
        if isinstance(exc, Exception) and not isinstance(exc, Flux2Error):
            log_unexpected(log, "batch item %s failed unexpectedly", self.item.id)

    def ended(self, status: str, error: BaseException | None) -> ItemOutcome:
        """The outcome now, from another thread too (the scheduler ends items left in flight by a second
        Ctrl-C): paid images the graph did not get to save are kept under flux2-unsaved/."""
        return self._ended(self.graph.stopped(error), status)

    def _ended(self, run: RunOutcome, status: str | None = None) -> ItemOutcome:
        status = status or _status(run.error, self.aborted)
        results = [r for _, r in list(self.graph.paid)]
        seeds = [int(s) for r in results for s in r.seeds] + [int(s) for hit in self.cache_hits for s in hit]
        maybe = list(run.maybe_billed)
        if status == INTERRUPTED and not maybe and run.running:
            maybe = [f"node {run.running} was waiting for the provider; what it sent may be billed"]
        root = self.env.output_dir
        return ItemOutcome(
            self.item.id, status, outputs=[_relative(p, root) for p in [*run.saved, *run.kept]], seeds=seeds,
            tasks=[t for r in results for t in r.info.get("tasks") or () if t],
            billed_usd=run.billed_usd, billed_earlier_usd=run.billed_earlier_usd, images=len(seeds),
            cached=bool(self.cache_hits), error=_message(run.error), maybe_billed=maybe,
            recover=self._recoverable(maybe), worker=self.worker, seconds=run.seconds)

    def _recoverable(self, maybe: list[str]) -> list[dict]:
        """A one-image Runware request stopped in flight: its task id and its result-cache key. The next
        run asks Runware for that task (getResponse) and stores the image under the key, so the item is
        served from the cache instead of paid again. (BFL tasks and batches of several are only named.)"""
        tasks = [m.group(1) for m in (_RUNWARE_TASK.search(t) for t in maybe) if m]
        if len(tasks) == 1 and len(self.stopped_keys) == 1:
            return [{"provider": "runware", "task": tasks[0], "key": self.stopped_keys[0]}]
        return []


def _status(error: BaseException | None, aborted: bool) -> str:
    if error is None:
        return OK
    if isinstance(error, Cancelled):          # the first Ctrl-C between nodes; after a second one, interrupted
        return INTERRUPTED if aborted else CANCELLED
    if isinstance(error, KeyboardInterrupt):  # a second Ctrl-C reached the item's thread outside provider code
        return INTERRUPTED
    return FAILED


def _message(error: BaseException | None) -> str | None:
    if error is None:
        return None
    if isinstance(error, Flux2Error):
        return str(error)
    if isinstance(error, KeyboardInterrupt):
        return "aborted by the user"
    return f"unexpected {type(error).__name__}: {scrub(str(error), 200)}"   # a bug may quote a key


def _relative(path: Path, root: Path) -> str:
    try:
        return Path(path).resolve().relative_to(Path(root).resolve()).as_posix()
    except ValueError:
        return Path(path).as_posix()
