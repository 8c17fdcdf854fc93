"""Which batch item starts when: bounded per provider, held to the budget, stopped by Ctrl-C.

Items wait in lanes (one per set of providers they use), so a full BFL queue does not hold back Runware
items. An item starts when every provider it uses has room for its tasks (Runware: --concurrency or
FLUX2_CONCURRENCY; BFL: at most its 24 active tasks; local weights: one item per loaded model or Ray
actor) and when the budget gate (flux2/budget.py, the same one `run` uses) admits its tasks: what is billed,
plus every task in flight, plus its own stays within the cap. Items run on daemon threads (a second Ctrl-C must never wait for a request in flight) and come
back as they finish, in any order.
"""
from __future__ import annotations

import logging
import queue
import threading
import time
from collections import OrderedDict, deque
from typing import Callable, Iterator

from ...flux2.budget import WAIT
from ...flux2.errors import Cancelled
from ...flux2.redaction import log_unexpected
from .items import REMOTE
from .manifest import INTERRUPTED

log = logging.getLogger("comfyui_flux2.batch")
ABORT_GRACE_S = 1.0        # after a second Ctrl-C, items get this long to take their own abort path


class ProviderLimits:
    """Tasks in flight per provider. An item takes, per provider, the tasks its largest call sends at once."""

    def __init__(self, limits: dict[str, int]):
        self.limits = {p: max(1, int(n)) for p, n in limits.items()}
        self.used = {p: 0 for p in self.limits}

    def weight(self, item, provider: str) -> int:
        return min(item.providers.get(provider, 0), self.limits.get(provider, 1))

    def fits(self, item) -> bool:
        return all(self.used.get(p, 0) + self.weight(item, p) <= self.limits.get(p, 1) for p in item.needs)

    def take(self, item) -> None:
        for p in item.needs:
            self.used[p] = self.used.get(p, 0) + self.weight(item, p)

    def give_back(self, item, providers=None) -> None:
        """`providers`: only these of the item's (default: all)."""
        for p in item.needs if providers is None else item.needs & set(providers):
            self.used[p] -= self.weight(item, p)


class Scheduler:
    """`run()` yields (item, outcome) as items end. `start(item)` makes the item's run object (ItemRun or a
    Ray one: `.run() -> ItemOutcome`, `.ended(status, error)`, `.aborted`, `.thread`)."""

    def __init__(self, items: list, start: Callable, *, limits: ProviderLimits, gate=None,
                 is_cancelled: Callable[[], bool] | None = None, interrupt: Callable | None = None):
        self.lanes: OrderedDict[tuple, deque] = OrderedDict()
        for item in items:
            self.lanes.setdefault(tuple(sorted(item.needs)), deque()).append(item)
        self.start = start
        self.limits = limits
        # Items served wholly from the result cache take no provider slot, and an item whose calls answered
        # gives its slot back while it saves: this still bounds the threads (one per item in flight).
        self.max_inflight = 2 * max(1, sum(limits.limits.values()))
        self.gate = gate                               # BudgetGate, or None (no cap)
        self.budget_reason: str | None = None          # why the gate refused the next item
        self.is_cancelled = is_cancelled or (lambda: False)
        self.interrupt = interrupt
        self.inflight: dict[str, tuple] = {}          # item id -> (item, run)
        self.tickets: dict = {}                        # item id -> its budget Ticket
        self.released: set[str] = set()               # in flight, remote providers' slots already given back
        self.done: queue.Queue = queue.Queue()
        self.billed_usd = 0.0
        self.stopped_by: str | None = None             # "budget" | "cancel" | "abort"
        self._aborted = False

    def not_started(self) -> list:
        return [item for lane in self.lanes.values() for item in lane]

    def run(self) -> Iterator[tuple]:
        try:
            while True:
                self._start_what_fits()
                if not self.inflight:
                    return
                try:
                    item_id, outcome = self.done.get(timeout=0.1)
                except queue.Empty:
                    continue
                if outcome is None:                    # its provider calls answered: the slot is free
                    self._release(item_id)
                    continue
                yield self._finish(item_id, outcome)
        except KeyboardInterrupt:
            yield from self.abort()
            raise Cancelled("aborted at once (second Ctrl-C)") from None

    def _start_what_fits(self) -> None:
        if self.stopped_by:
            return
        if self.is_cancelled():
            self.stopped_by = "cancel"
            return
        for lane in self.lanes.values():
            while lane and self.limits.fits(lane[0]) and len(self.inflight) < self.max_inflight:
                item = lane[0]
                ticket = None
                if self.gate is not None:
                    ticket = self.gate.try_admit(getattr(item, "units", []))
                    if ticket == WAIT:         # the first charge of its kind is not in yet
                        break
                    if isinstance(ticket, str):
                        self.stopped_by, self.budget_reason = "budget", ticket   # it would pass the cap
                        return
                    self.tickets[item.id] = ticket
                lane.popleft()
                self.limits.take(item)
                run = self.start(item) if ticket is None else self.start(item, ticket)
                self.inflight[item.id] = (item, run)
                threading.Thread(target=self._work, args=(item.id, run), name=f"flux2-batch-{item.id}",
                                 daemon=True).start()

    def _work(self, item_id: str, run) -> None:
        try:
            outcome = run.run()
        except BaseException as exc:  # noqa: BLE001 - run() returns outcomes; this is the last guard
            log_unexpected(log, "batch item %s: worker failed", item_id)
            outcome = run.ended(INTERRUPTED if isinstance(exc, KeyboardInterrupt) else "failed", exc)
        self.done.put((item_id, outcome))

    def calls_done(self, item_id: str) -> None:
        """From an item's thread: its last remote provider call answered; the rest (saving, and any local
        node after it) needs no remote slot."""
        self.done.put((item_id, None))

    def _release(self, item_id: str) -> None:
        """The item's remote providers' slots, once: a local-weights slot stays taken until the item ends (a
        local node may still run after the last provider answer, and two on one GPU would not fit)."""
        if item_id in self.inflight and item_id not in self.released:
            self.released.add(item_id)
            self.limits.give_back(self.inflight[item_id][0], REMOTE)

    def _finish(self, item_id: str, outcome) -> tuple:
        item, _ = self.inflight.pop(item_id)
        self.limits.give_back(item, [p for p in item.needs if p not in REMOTE or item_id not in self.released])
        self.released.discard(item_id)
        ticket = self.tickets.pop(item_id, None)
        if ticket is not None:
            ticket.close()
        self.billed_usd += outcome.billed_usd or 0.0
        return item, outcome

    def abort(self) -> Iterator[tuple]:
        """Second Ctrl-C: start nothing, interrupt every item in flight, give them ABORT_GRACE_S to keep
        their paid images and name their tasks, then end the rest here without waiting for the network."""
        if self._aborted:
            return
        self._aborted = True
        self.stopped_by = "abort"
        for item, run in list(self.inflight.values()):
            run.aborted = True
            if self.interrupt is not None and run.thread is not None and run.thread.is_alive():
                self.interrupt(run.thread)
        deadline = time.monotonic() + ABORT_GRACE_S
        while self.inflight and time.monotonic() < deadline:
            try:
                item_id, outcome = self.done.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                break
            if outcome is not None and item_id in self.inflight:
                yield self._finish(item_id, outcome)
        for item_id, (item, run) in list(self.inflight.items()):
            yield self._finish(item_id, run.ended(INTERRUPTED, KeyboardInterrupt()))
