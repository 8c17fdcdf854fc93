"""Running one batch item: its graph on the runner's Executor, with its own run context, and what it left.

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
import time
from dataclasses import dataclass, field
from pathlib import Path

from ...flux2.errors import Cancelled, Flux2Error
from ...flux2.images import encode
from ...flux2.redaction import log_unexpected, scrub
from ...flux2.run_context import RunContext
from ..executor import UNSAVED, Executor, file_token
from ..run import may_be_billed
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
    """One item on its way: its own RunContext (ledger, cancel hook, result sink), the paid results that
    reached it, the thread running it (a second Ctrl-C interrupts that thread)."""

    def __init__(self, item, env: ItemEnv, is_cancelled=None, worker: str = "in-process", on_calls_done=None,
                 gate=None):
        """`on_calls_done()`: called once the item's last provider call has answered (it may still be saving),
        so the scheduler can give its provider slot to the next item."""
        self.item, self.env, self.worker = item, env, worker
        self.on_calls_done = on_calls_done
        self._answers = 0                          # provider tasks answered so far
        self._calls_done_said = False
        self._answers_lock = threading.Lock()
        self.paid: list = []                       # (request, result) as each provider call returns
        self.stopped_keys: list[str] = []
        self.cache_hits: list[list[int]] = []      # seeds of each result served from the result cache
        self.aborted = False                       # set by the scheduler on a second Ctrl-C
        self.thread: threading.Thread | None = None
        self.executor: Executor | None = None
        cache = _TrackingCache(env.cache, self) if env.cache is not None else None
        self.ctx = RunContext(cache=cache, is_cancelled=is_cancelled, uploads=env.uploads,
                              result_sink=self._paid, answer_sink=self._answered, gate=gate)
        self.started = time.monotonic()

    @property
    def billed_so_far(self) -> float:
        return self.ctx.ledger.billed_total

    def _paid(self, request, result) -> None:
        self.paid.append((request, result))
        remote = [r for _, r in self.paid if r.info.get("provider")]
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
        with self._answers_lock:
            said, self._calls_done_said = self._calls_done_said, True
        if self.on_calls_done is not None and not said:
            self.on_calls_done()

    def run(self) -> ItemOutcome:
        self.thread = threading.current_thread()
        self.started = time.monotonic()
        env = self.env
        try:
            self.executor = Executor(self.item.prompt, registry=env.registry, input_dir=env.input_dir,
                                     output_dir=env.output_dir, more_input_dirs=env.more_input_dirs)
            report = self.executor.run(self.ctx)
        except Cancelled as exc:
            return self.ended(INTERRUPTED if self.aborted else CANCELLED, exc)
        except Flux2Error as exc:
            return self.ended(FAILED, exc)
        except KeyboardInterrupt as exc:           # a second Ctrl-C reached this thread outside provider code
            return self.ended(INTERRUPTED, exc)
        except Exception as exc:  # noqa: BLE001 - a bug in one item must not stop the batch or lose its images
            log_unexpected(log, "batch item %s failed unexpectedly", self.item.id)
            return self.ended(FAILED, exc)
        return self.ended(OK, None, report.saved)

    def ended(self, status: str, error: BaseException | None, saved=None) -> ItemOutcome:
        """The outcome; paid images the graph did not get to save are kept under flux2-unsaved/."""
        root = self.env.output_dir
        if saved is None:               # it failed: what SaveImage wrote before that still counts
            folders = getattr(self.executor, "folders", None)
            saved = list(folders.saved) if folders is not None else []
        files = [Path(p) for p in saved] + self.keep_unsaved(ended_ok=status == OK)
        results = [r for _, r in list(self.paid)]
        seeds = [int(s) for r in results for s in r.seeds] + [int(s) for hit in self.cache_hits for s in hit]
        maybe = may_be_billed(error)
        if status == INTERRUPTED and not maybe and self.executor is not None and self.executor.running:
            maybe = [f"node {self.executor.running} was waiting for the provider; what it sent may be billed"]
        if error is None:
            message = None
        elif isinstance(error, Flux2Error):
            message = str(error)
        elif isinstance(error, KeyboardInterrupt):
            message = "aborted by the user"
        else:
            message = f"unexpected {type(error).__name__}: {scrub(str(error), 200)}"   # a bug may quote a key
        return ItemOutcome(
            self.item.id, status, outputs=[_relative(p, root) for p in files],
            seeds=seeds,
            tasks=[t for r in results for t in r.info.get("tasks") or () if t],
            billed_usd=self.ctx.ledger.billed_total, billed_earlier_usd=self.ctx.ledger.billed_earlier_total,
            images=len(seeds),
            cached=bool(self.cache_hits), error=message,
            maybe_billed=maybe, recover=self._recoverable(maybe), worker=self.worker,
            seconds=time.monotonic() - self.started)

    def keep_unsaved(self, ended_ok: bool = False) -> list[Path]:
        """Paid images no SaveImage of the item has written: OUTPUT/flux2-unsaved/<item>_node<id>_seed<n>.png.
        `ended_ok`: the graph ran through, so only images that reach no SaveImage (a PreviewImage only)."""
        executor = self.executor
        if ended_ok:
            keep = [(q, r) for q, r in list(self.paid) if executor is not None and not executor.reaches_save(q.node_id)]
        else:
            keep = [(q, r) for q, r in list(self.paid) if executor is None or not executor.saved_by_graph(q.node_id)]
        folder = self.env.output_dir / UNSAVED
        paths = []
        for request, result in keep:
            for i, image in enumerate(result.images):
                seed = result.seeds[i] if i < len(result.seeds) else f"x{i}"
                name = f"{file_token(self.item.id)}_node{file_token(str(request.node_id or 'x'))}_seed{seed}.png"
                try:
                    folder.mkdir(parents=True, exist_ok=True)
                    (folder / name).write_bytes(encode(image, "PNG"))
                except (OSError, Flux2Error) as exc:
                    log.error("item %s: could not keep a paid image: %s", self.item.id,
                              getattr(exc, "strerror", None) or exc)
                    continue
                paths.append(folder / name)
        return paths

    def _recoverable(self, maybe: list[str]) -> list[dict]:
        """A one-image Runware request stopped in flight: its task id and its result-cache key. The next
        run asks Runware for that task (getResponse) and stores the image under the key, so the item is
        served from the cache instead of paid again. (BFL tasks and batches of several are only named.)"""
        tasks = [m.group(1) for m in (_RUNWARE_TASK.search(t) for t in maybe) if m]
        if len(tasks) == 1 and len(self.stopped_keys) == 1:
            return [{"provider": "runware", "task": tasks[0], "key": self.stopped_keys[0]}]
        return []


def _relative(path: Path, root: Path) -> str:
    try:
        return Path(path).resolve().relative_to(Path(root).resolve()).as_posix()
    except ValueError:
        return Path(path).as_posix()
