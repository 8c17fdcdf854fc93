"""One job machinery for every provider: fan-out, polling with backoff and a deadline, and salvage.

A request of batch N is N jobs (one billable provider task each, seed + i). `run_jobs` runs them on
daemon worker threads while the caller's thread reports progress and watches for a cancel:
- a cancel (first Ctrl-C, ComfyUI's interrupt) starts no new job; jobs already sent finish within
  `cancel_grace_s` (None: wait for them, so a synchronous paid answer is kept) or are left behind;
- an abort (second Ctrl-C: KeyboardInterrupt in the caller's thread) returns at once, leaving the
  workers behind (daemon threads never hold the process open).
`settle` then keeps what was paid before it raises: every image that arrived is returned in the
error's `salvaged` result, booked in the ledger, handed to the run's result sink and written to the
result cache image by image, and the tasks that may still be billed are named (`maybe_billed`).
"""
from __future__ import annotations

import logging
import math
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from ..backend import GenerationRequest, GenerationResult
from ..images import ProviderFile
from ..errors import BudgetError, Cancelled, Flux2Error, ProviderError, ProviderTimeout
from ..redaction import log_unexpected, scrub
from ..net.transport import Deadlines, sleep_with_cancel
from ..rules import MAX_TORCH_SEED
from ..run_context import RunContext
from .wire import WireBody

log = logging.getLogger("comfyui_flux2.remote")

MAX_PLAUSIBLE_USD = 100.0          # more than this for one image is a broken answer, not a price
PRICE_TOLERANCE = 0.01             # relative difference between estimate and charge worth a warning


@dataclass
class Job:
    """One billable task of a request and what became of it."""

    index: int
    seed: int                       # the seed asked for (request seed + index)
    body: WireBody                  # what is sent (its to_json())
    task_id: str | None = None      # Runware taskUUID (known before sending), BFL id (from the submit answer)
    locator: str | None = None      # BFL polling URL
    sent: bool = False              # the billable request may have reached the provider
    settled: bool = False           # the provider's final word on the task is known (billed or not)
    image: np.ndarray | None = None
    file: ProviderFile | None = None  # the provider's file `image` was decoded from (the cache keeps it as is)
    result_seed: int | None = None  # the seed the provider reports, when it is a valid one
    cost_usd: float | None = None   # what the provider says it charged (None: not said or not credible)
    charged: bool = False           # the provider billed the task (its image may still be lost)
    placeholder: bool = False
    cached: bool = False
    recovered: bool = False         # made by the task an earlier, killed run sent (and was billed for)
    earlier_cost_usd: float | None = None   # what that task was billed (None: not known)
    stored: bool = False            # written to the result cache (the moment it arrived)
    error: Flux2Error | None = None
    progress: float = 0.0           # 0..1, read by the reporting thread
    notes: list[str] = field(default_factory=list)

    def may_be_billed(self) -> bool:
        """Sent, and no image here, and not known to be free: it may run (or have run) and be billed.
        Named in the error so it can be looked up (and its image fetched) at the provider."""
        return self.sent and self.image is None and (self.charged or not self.settled)


class JobControl:
    """What a worker may ask of the run: has it been cancelled, and stop starting new jobs."""

    def __init__(self, ctx: RunContext):
        self._ctx = ctx
        self._stop = threading.Event()
        self.refused: Flux2Error | None = None

    def cancelled(self) -> bool:
        return self._ctx.is_cancelled is not None and bool(self._ctx.is_cancelled())

    def stop_new(self, reason: Flux2Error | None = None) -> None:
        """A refusal that every other job would meet too (bad key, no credits): start no more."""
        self.refused = self.refused or reason
        self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set() or self.cancelled()


def run_jobs(jobs: list[Job], work: Callable[[Job, JobControl], None], *, ctx: RunContext, node: str,
             label: str, concurrency: int, cancel_grace_s: float | None, unit_usd: float | None = None,
             cached: Callable[[Job], bool] | None = None) -> str:
    """Run `work(job, control)` for every job, `concurrency` at a time. Returns "done", "cancelled"
    (a cancel was seen) or "aborted" (KeyboardInterrupt: workers were left behind at once); the jobs
    show how far each got. Under a budget cap (`ctx.gate`) a job starts only when the gate admits its
    `unit_usd` (None: no published price); `cached(job)` serves a job for free (the result cache, or
    the task an earlier, killed run sent)."""
    control = JobControl(ctx)

    def one(job: Job) -> None:
        _run_job(job, work, ctx, control, unit_usd, cached, label)

    all_done = _start_workers(jobs, one, concurrency, label)
    try:
        cancelled = _watch(jobs, all_done, ctx, control, node, label, cancel_grace_s)
    except KeyboardInterrupt:
        control.stop_new()
        return "aborted"
    if not all_done.is_set():
        control.stop_new()
    total = float(len(jobs))
    ctx.report(node, total, total, f"{label}: {sum(1 for j in jobs if j.image is not None)}/{len(jobs)} ready")
    return "cancelled" if cancelled else "done"


def _start_workers(jobs: list[Job], one: Callable[[Job], None], concurrency: int, label: str) -> threading.Event:
    """`concurrency` daemon threads taking the jobs in order; the event is set when the last one ends.

    Not concurrent.futures.ThreadPoolExecutor: its workers are not daemon threads and the interpreter joins
    them at exit (concurrent/futures/thread.py registers `_python_exit` with threading._register_atexit), so
    after a cancel a worker stuck in a network call holds the process's exit until that call's deadline
    (BFL poll read deadline: 180 s). Measured with `comfyui-flux2 run` on the loopback BFL server holding a
    poll for 20 s, first Ctrl-C to process exit: 1.2-1.9 s with these threads, 20.6-20.9 s with a
    ThreadPoolExecutor (tests/test_jobs_cancel.py). Daemon threads are dropped at exit, and `run_jobs`
    itself never waits on one longer than its cancel grace."""
    pending = list(reversed(jobs))
    lock = threading.Lock()
    all_done = threading.Event()
    n = max(1, min(concurrency, len(jobs)))
    running = [n]

    def worker() -> None:
        try:
            while True:
                with lock:
                    job = pending.pop() if pending else None
                if job is None:
                    return
                one(job)
        finally:
            with lock:
                running[0] -= 1
                if running[0] == 0:
                    all_done.set()

    for i in range(n):
        threading.Thread(target=worker, name=f"flux2-{label}-{i}", daemon=True).start()
    return all_done


def _watch(jobs: list[Job], all_done: threading.Event, ctx: RunContext, control: JobControl, node: str,
           label: str, cancel_grace_s: float | None) -> bool:
    """Report progress from the caller's thread (ComfyUI's progress bar wants that) until every job ended,
    or a cancel's grace ran out; returns whether a cancel was seen."""
    total, last, cancelled_at = float(len(jobs)), -1.0, None
    while not all_done.wait(0.05):
        done = round(sum(j.progress for j in jobs), 3)
        if done != last:
            ready = sum(1 for j in jobs if j.image is not None)
            ctx.report(node, min(done, total), total, f"{label}: {ready}/{len(jobs)} ready")
            last = done
        if cancelled_at is None and control.cancelled():
            cancelled_at = time.monotonic()
        if cancelled_at is not None and cancel_grace_s is not None \
                and time.monotonic() - cancelled_at > cancel_grace_s:
            break          # a worker stuck in a network call must not hold the cancel back
    return cancelled_at is not None


def _run_job(job: Job, work: Callable[[Job, JobControl], None], ctx: RunContext, control: JobControl,
             unit_usd: float | None, cached: Callable[[Job], bool] | None, label: str) -> None:
    """One job on a worker: not started once the run stops; served free when it can be; else admitted by
    the budget gate, worked, and its task's charge (or that it may be billed) handed back to the gate."""
    if control.stopping:
        job.error = Cancelled("cancelled by the user") if control.cancelled() else None
        job.settled = True
        return
    if cached is not None and cached(job):
        job.progress = 1.0
        return
    task = _admitted(job, ctx, unit_usd, control, label)
    if task is False:
        return
    try:
        work(job, control)
    except Flux2Error as exc:
        job.error = exc
    except Exception as exc:   # noqa: BLE001 - a bug must not lose the batch's paid images
        log_unexpected(log, "%s: job %d failed unexpectedly", label, job.index)
        job.error = ProviderError(f"{label}: unexpected {type(exc).__name__} handling image {job.index + 1}")
    finally:
        job.progress = 1.0 if job.image is not None or job.error is not None else job.progress
        if task is not None:   # a task sent and not answered may be billed: counted as such
            task.ended(job.cost_usd, job.charged or (job.sent and not job.settled), describe_billable(job, label))


def _admitted(job: Job, ctx: RunContext, unit_usd: float | None, control: JobControl, label: str):
    """The budget gate's Task for this job (None: no cap), or False: not started (it would pass the cap,
    or the run stopped while the job waited for a first charge to be seen)."""
    gate = getattr(ctx, "gate", None)
    if gate is None:
        return None
    try:
        task = gate.admit(unit_usd, lambda: control.stopping)
    except BudgetError as exc:
        job.error, job.settled = _with_message(exc, f"{label}: image {job.index + 1} (seed {job.seed}) {exc}"), True
        control.stop_new(job.error)     # every later job would be refused the same way
        return False
    if task is None:
        job.error = Cancelled("cancelled by the user") if control.cancelled() else None
        job.settled = True
        return False
    return task


# -- polling -------------------------------------------------------------------------------------
class Transient(Exception):
    """A poll that failed in a way that may pass (5xx, dropped connection, garbled answer)."""


def poll_until(fetch: Callable[[], object | None], *, deadlines: Deadlines, started: float,
               is_cancelled: Callable[[], bool] | None, what: str):
    """Call `fetch` with backoff (backoff_s x1.5, capped) until it returns a value; `Transient` failures
    are tolerated until the overall deadline (`total_s` from `started`), then ProviderTimeout."""
    delay, last = deadlines.backoff_s, ""
    while True:
        sleep_with_cancel(delay, is_cancelled)
        delay = min(delay * 1.5, deadlines.backoff_cap_s)
        if time.monotonic() - started > deadlines.total_s:
            raise ProviderTimeout(f"{what} did not finish within {deadlines.total_s:g}s"
                                  + (f" (last poll: {last})" if last else "") + "; it may still finish and be billed")
        try:
            value = fetch()
        except Transient as exc:
            last = scrub(str(exc), 200)
            log.info("%s: transient poll failure (%s); polling on", what, last)
            continue
        if value is not None:
            return value


# -- answers -------------------------------------------------------------------------------------
def checked_cost(job: Job, usd, provider: str, estimate_usd: float | None) -> None:
    """Book the provider's charge for a job: implausible values are flagged, not added; a charge
    that differs from the estimate is noted (a wrong price table shows up at the first run)."""
    if usd is None:
        return
    if isinstance(usd, bool) or not isinstance(usd, (int, float)):
        raise ProviderError(f"{provider}: task {job.task_id} reported cost {scrub(repr(usd), 40)}, not a number")
    usd = float(usd)
    if not math.isfinite(usd) or usd < 0 or usd > MAX_PLAUSIBLE_USD:
        note = (f"{provider}: task {job.task_id} reported an implausible cost {usd!r} USD; not counted - "
                "check the provider's dashboard")
        log.warning("%s", note)
        job.notes.append(note)
        return
    job.cost_usd = usd
    if estimate_usd is not None and abs(usd - estimate_usd) > max(0.0005, PRICE_TOLERANCE * estimate_usd):
        note = (f"{provider}: task {job.task_id} was charged ${usd:.4f}, the estimate was ${estimate_usd:.4f}; "
                "the price table may be out of date")
        log.warning("%s", note)
        job.notes.append(note)


def checked_seed(job: Job, seed, provider: str) -> None:
    """The provider's seed for the image, when it is one; a wrong type fails the job (image kept)."""
    if seed is None:
        return
    # A provider may report a seed of its own choosing: any 64-bit value (the widest a backend takes) is one.
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_TORCH_SEED:
        raise ProviderError(f"{provider}: task {job.task_id} reported seed {scrub(repr(seed), 40)}, not an "
                            "integer; the image was kept with the requested seed")
    job.result_seed = seed


# -- salvage -------------------------------------------------------------------------------------
def describe_billable(job: Job, provider: str) -> str:
    if job.task_id and job.locator:
        return f"{provider} task {job.task_id} ({job.locator})"
    if job.task_id:
        return f"{provider} task {job.task_id}"
    return f"{provider} task for seed {job.seed} (no id: its submit answer never came)"


def settle(jobs: list[Job], request: GenerationRequest, ctx: RunContext, *, provider: str,
           describe: str, cache_key: Callable[[int], str | None] | None, outcome: str = "done",
           info: dict | None = None) -> GenerationResult:
    """The result of all jobs; when any failed, keep what was paid for and raise the first failure."""
    done = [j for j in jobs if j.image is not None]
    charged = [j for j in jobs if j.charged]
    known = [j.cost_usd for j in charged if j.cost_usd is not None]
    cost = round(sum(known), 6) if known or not charged else None
    notes = [n for j in jobs for n in j.notes]
    placeholders = any(j.placeholder for j in jobs)
    result = GenerationResult(
        images=[j.image for j in done],
        seeds=[j.result_seed if j.result_seed is not None else j.seed for j in done],
        cost_usd=cost,
        files=[j.file for j in done if j.file is not None],
        info={"provider": provider, "tasks": [j.task_id for j in jobs], "placeholders": placeholders,
              **({"cost_unknown_tasks": len(charged) - len(known)} if len(known) < len(charged) else {}),
              **({"cached_images": sum(j.cached for j in jobs)} if any(j.cached for j in jobs) else {}),
              **({"price_notes": notes} if notes else {}), **(info or {})})
    for note in notes:
        ctx.warn(request.node_id, note)
    _book_earlier(jobs, request, ctx)
    failures = [j.error for j in jobs if j.error is not None]
    maybe = tuple(describe_billable(j, provider) for j in jobs if j.may_be_billed())
    if outcome == "aborted":
        failures.insert(0, Cancelled("aborted by the user"))
    elif outcome == "cancelled" and len(done) < len(jobs) and not any(isinstance(e, Cancelled) for e in failures):
        failures.insert(0, Cancelled("cancelled by the user"))
    elif not failures and len(done) < len(jobs):
        failures = [ProviderError(f"{provider}: {len(jobs) - len(done)} image(s) of the batch were not made")]
    _cache_images(jobs, request, ctx, describe, cache_key, failed=bool(failures))
    if not failures:
        return result
    failure = next((e for e in failures if isinstance(e, Cancelled)), failures[0])
    extra = []
    if len(jobs) > 1 or done:
        extra.append(f"{len(done)} of {len(jobs)} image(s) kept")
    if maybe:
        extra.append("may still be billed: " + ", ".join(maybe))
    if extra:
        failure = _with_message(failure, f"{failure}; " + "; ".join(extra))
    failure.salvaged = result if (done or cost) else None
    failure.maybe_billed = maybe
    # Paid results are booked and handed to the run's sink before the error surfaces, so they are saved.
    if done or cost:
        ctx.ledger.add_billed(request.node_id, cost)
    if done:
        ctx.on_result(request, result)
    raise failure


def _book_earlier(jobs: list[Job], request: GenerationRequest, ctx: RunContext) -> None:
    """Images recovered from an earlier, killed run's tasks cost this run nothing, but that run was billed
    for them and wrote no record: the ledger keeps the charge apart (billed_earlier), so the batch manifest
    and totals show it without counting it against this run's bill or budget."""
    recovered = [j for j in jobs if j.recovered]
    if recovered:
        known = [j.earlier_cost_usd for j in recovered if j.earlier_cost_usd is not None]
        ctx.ledger.add_billed_earlier(request.node_id, round(sum(known), 6) if known else None, len(recovered))


def earlier_cost(job: Job, usd) -> None:
    """Book what the earlier run's task was billed (a plausible number, or nothing) on the recovered job."""
    probe = Job(job.index, job.seed, job.body, task_id=job.task_id)
    try:
        checked_cost(probe, usd, "earlier run", None)
    except ProviderError:
        pass                                 # not a number: the charge is shown as unknown
    job.recovered, job.earlier_cost_usd = True, probe.cost_usd


def book_recovered(job: Job, usd, provider: str, task: str, ctx, cache_key, describe: str, batch: int) -> None:
    """A task an earlier (killed) run sent came back: book its charge on the job, say so once, keep the image in
    the result cache, and mark the job as paid by that run, not by this one."""
    earlier_cost(job, usd)
    billed = "unknown" if job.earlier_cost_usd is None else f"${job.earlier_cost_usd:g}"
    job.notes.append(f"{provider}: image {job.index + 1} recovered from task {task} of an earlier run "
                     f"(billed then: {billed})")
    log.warning("%s", job.notes[-1])
    store_arrived(job, ctx, cache_key, describe, batch)
    job.cached = True


def _with_message(exc: Flux2Error, message: str) -> Flux2Error:
    exc.args = (" ".join(scrub(message).split()),)
    return exc


def _cache_images(jobs, request, ctx, describe, cache_key, failed: bool) -> None:
    """Each paid image under the key of its own one-image request (seed + i, batch 1), the moment the
    batch settles: a re-run after a partial failure pays only for the images that were lost. A batch
    of one that succeeded is cached by `backend.run` under the same key."""
    if ctx.cache is None or cache_key is None:
        return
    for job in jobs:
        if not job.may_be_billed() and not job.cached:
            key = cache_key(job.index)
            if key:                   # answered one way or the other: nothing left to recover later
                ctx.cache.forget_sent(key)
    if len(jobs) == 1 and not failed:
        return
    for job in jobs:
        if job.image is None or job.placeholder or job.cached or job.stored:
            continue
        key = cache_key(job.index)
        if key:
            seed = job.result_seed if job.result_seed is not None else job.seed
            ctx.cache.put(key, [job.image], [seed], job.cost_usd, describe, files=_file_of(job))


def store_arrived(job: Job, ctx: RunContext, cache_key: Callable[[int], str | None] | None, describe: str,
                  batch: int) -> None:
    """Write one paid image to the result cache the moment it arrives, not when the whole batch settles:
    a run killed (kill -9) after some images arrived pays, when run again, only for the others. A batch of
    one is cached by `backend.run` under the same key."""
    if ctx.cache is None or cache_key is None or batch == 1 or job.image is None or job.placeholder \
            or job.cached or job.stored:
        return
    key = cache_key(job.index)
    if key:
        seed = job.result_seed if job.result_seed is not None else job.seed
        ctx.cache.put(key, [job.image], [seed], job.cost_usd, describe, files=_file_of(job))
        ctx.cache.forget_sent(key)
        job.stored = True


def _file_of(job: Job) -> list[ProviderFile]:
    return [job.file] if job.file is not None else []


def note_sent(job: Job, ctx: RunContext, cache_key: Callable[[int], str | None] | None, task: dict) -> None:
    """Before a paid task goes out: note it beside the image's cache entry (see ResultCache.note_sent)."""
    if ctx.cache is None or cache_key is None:
        return
    key = cache_key(job.index)
    if key:
        ctx.cache.note_sent(key, task)


def sent_earlier(job: Job, ctx: RunContext, cache_key: Callable[[int], str | None] | None) -> dict | None:
    """The task an earlier run sent for this image and never heard back from (killed), if noted."""
    if ctx.cache is None or cache_key is None:
        return None
    key = cache_key(job.index)
    return ctx.cache.sent(key) if key else None


def cached_image(job: Job, ctx: RunContext, cache_key: Callable[[int], str | None] | None, batch: int) -> bool:
    """Serve one job of a batch from the per-image cache (filled by an earlier, partly failed run)."""
    if ctx.cache is None or cache_key is None or batch == 1:
        return False
    key = cache_key(job.index)
    hit = ctx.cache.get(key) if key else None
    if hit is None:
        return False
    images, seeds, _, _ = hit
    if len(images) != 1:
        return False
    job.image, job.result_seed, job.cached, job.settled = images[0], seeds[0], True, True
    return True
