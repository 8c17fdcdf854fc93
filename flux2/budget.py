"""The budget cap: where it comes from (`--budget`, FLUX2_BUDGET_USD), what makes it valid, and the one
rule both the CLI and ComfyUI apply to a priced graph.

A model without a published price (FLUX.2 [dev] and [klein] on Runware) cannot be held to a cap: its
cost is only known after the provider billed it. Under a cap such a call is refused unless the user
opts in (`--allow-unpriced`, FLUX2_ALLOW_UNPRICED=1); then the run counts what the provider actually
billed against the cap before each later call.
"""
from __future__ import annotations

import math
import os
import re
import threading
from dataclasses import dataclass
from typing import Callable

from .errors import BudgetError, InputError
from .pricing import format_usd

CAP_ENV = "FLUX2_BUDGET_USD"
ALLOW_UNPRICED_ENV = "FLUX2_ALLOW_UNPRICED"
# Above this a cap is almost certainly a typo (cents for dollars); it would also hide nothing.
MAX_CAP_USD = 1_000_000.0
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("", "0", "false", "no", "off")


@dataclass(frozen=True)
class Cap:
    usd: float
    name: str                     # how messages name it: "the budget cap", "FLUX2_BUDGET_USD"
    allow_unpriced: bool = False


# Plain decimal only: Python's float() also takes "1_0" (as 10), "-0", "1e3", "nan", " +5 " - a cap read
# differently from how it was meant is worse than one refused.
_PLAIN_USD = re.compile(r"([0-9]+(\.[0-9]*)?|\.[0-9]+)")


def parse_usd(text, source: str) -> float:
    """A cap in US dollars: a plain decimal number >= 0 such as 5, 0.40 or .5 (refuses nan, inf, signs,
    exponents, digit separators, words)."""
    raw = str(text).strip()
    if not _PLAIN_USD.fullmatch(raw):
        raise InputError(f"{source} must be a number of US dollars written plainly (like 5 or 0.40), "
                         f"got {raw[:40]!r}")
    value = float(raw)
    if not math.isfinite(value) or value < 0 or value > MAX_CAP_USD:
        raise InputError(f"{source} must be a number of US dollars from 0 to {MAX_CAP_USD:,.0f}, got {text}")
    return value


def allow_unpriced_from_env() -> bool:
    raw = os.environ.get(ALLOW_UNPRICED_ENV, "").strip().lower()
    if raw not in _TRUE + _FALSE:
        raise InputError(f"{ALLOW_UNPRICED_ENV} must be 1 or 0, got {raw[:20]!r}")
    return raw in _TRUE


def cap_from_env(name: str = CAP_ENV) -> Cap | None:
    """The one place FLUX2_BUDGET_USD is read (the CLI and the ComfyUI nodes both ask here)."""
    raw = os.environ.get(CAP_ENV, "").strip()
    if not raw:
        return None
    return Cap(parse_usd(raw, CAP_ENV), name, allow_unpriced_from_env())


def check(total_usd: float, unpriced_nodes: list[str], cap: Cap | None, subject: str = "the graph") -> None:
    """Raise BudgetError if `subject` (priced at `total_usd`, plus calls of unknown price) breaks the cap."""
    if cap is None:
        return
    if unpriced_nodes and not cap.allow_unpriced:
        nodes = ", ".join(unpriced_nodes[:5]) + (" ..." if len(unpriced_nodes) > 5 else "")
        raise BudgetError(f"{subject} has {len(unpriced_nodes)} call(s) without a published price (node {nodes}), "
                          f"so {cap.name} cannot hold them; nothing was sent. Allow it with --allow-unpriced "
                          f"or {ALLOW_UNPRICED_ENV}=1 (what the provider bills then counts against the cap)")
    if total_usd > cap.usd + 1e-9:
        raise BudgetError(f"{subject} is estimated at {format_usd(total_usd)}, over {cap.name} "
                          f"{format_usd(cap.usd)}; nothing was sent")


# -- the gate: the cap held task by task while a run or a batch is under way -------------------
WAIT = "wait"


class BudgetGate:
    """One per `run` or `batch`: whether a paid provider task may start now.

    A task starts only if its estimate, plus what is billed, plus every task in flight (its charge once
    the provider said it, else its estimate) stays within the cap. Estimates learn from the provider:
    a priced task counts at its table price times the worst charged/estimate ratio seen in this run; a
    model without a published price counts at the highest charge seen so far for one such task. Until a
    kind (priced / unpriced) has been charged once, its tasks start one at a time: that first task shows
    what the provider really charges. So an in-flight task can pass the cap only by what it is charged
    over its learned estimate (the first task of a kind: over its table price; the first unpriced task:
    over what was left of the cap when it started - it starts only while some is left, and nothing else
    starts while it is in flight). A task billed at a price never said (its answer lost) keeps counting at
    its kind's learned estimate, which may rise after it ended.
    Thread-safe: run_jobs' workers and the batch scheduler ask it from several threads.
    """

    def __init__(self, cap: Cap):
        self.cap = cap
        self._cond = threading.Condition()
        self.billed = 0.0                       # charges of tasks whose ticket is closed
        # Tasks of closed tickets that were billed at a price never said (their answer was lost): counted
        # at what a new task of theirs is expected to cost, so a ratio learnt later raises them too.
        self._lost: list = []
        self._open: list[Ticket] = []
        self._ratio = 1.0                       # priced: highest charged / estimate seen
        self._priced_seen = False
        self._unit_max: float | None = None     # unpriced: highest charge of one task seen
        self._blind: str | None = None          # an unpriced task whose charge the provider did not say

    # -- what things are expected to cost (call with the lock held) --------------------------------
    def _seen(self, unit: float | None) -> bool:
        return self._priced_seen if unit is not None else self._unit_max is not None

    def _expected(self, unit: float | None) -> float:
        if unit is not None:
            return unit * self._ratio
        return self._unit_max or 0.0

    def _committed(self) -> float:
        return (self.billed + sum(self._expected(u) for u in self._lost)
                + sum(t._committed() for t in self._open))

    def _unseen_in_flight(self, unit: float | None, besides: "Ticket | None" = None) -> bool:
        kind = unit is not None
        return any((u is not None) == kind for t in self._open if t is not besides for u in t._live())

    # -- asking ------------------------------------------------------------------------------------
    def _verdict(self, units: list, besides: "Ticket | None" = None) -> str | None:
        """None: the units may start; WAIT: a first task of their kind is in flight; else why not."""
        if not units:
            return None
        if self._blind and any(u is None for u in units):
            return self._blind
        if any(u is None for u in units) and not self.cap.allow_unpriced:
            return f"a call without a published price cannot be held to {self.cap.name}"
        if any(not self._seen(u) and self._unseen_in_flight(u, besides) for u in units):
            return WAIT
        if self._unit_max is None and self._unseen_in_flight(None, besides):
            return WAIT               # a first unpriced task counts $0 until billed: nothing joins it meanwhile
        committed = self._committed()
        wanted = sum(self._expected(u) for u in units)
        if committed + wanted > self.cap.usd + 1e-9:
            return (f"{_what(units, self)} on top of {format_usd(committed)} billed and in flight would pass "
                    f"{self.cap.name} {format_usd(self.cap.usd)}")
        if any(u is None and not self._seen(u) for u in units) and committed >= self.cap.usd - 1e-9:
            return (f"a call without a published price (its cost is only known once billed) with "
                    f"{format_usd(committed)} of {self.cap.name} {format_usd(self.cap.usd)} billed and in flight")
        return None

    def try_admit(self, units: list) -> "Ticket | str":
        """A ticket for tasks that start together (a batch item's), WAIT, or the reason they may not start."""
        with self._cond:
            verdict = self._verdict(list(units))
            if verdict is not None:
                return verdict
            ticket = Ticket(self, list(units))
            self._open.append(ticket)
            return ticket

    def admit(self, unit: float | None, is_stopping: Callable[[], bool] = lambda: False) -> "Task | None":
        """One task of `unit` USD (None: unpriced) starts now: its Task, or None if the run is stopping
        meanwhile. Waits while a first task of its kind is in flight; raises BudgetError if it would pass."""
        with self._cond:
            while True:
                if is_stopping():
                    return None
                verdict = self._verdict([unit])
                if verdict is None:
                    ticket = Ticket(self, [unit], solo=True)
                    self._open.append(ticket)
                    return ticket.start(unit)
                if verdict != WAIT:
                    raise BudgetError(f"not started: {verdict}")
                self._cond.wait(0.1)

    # -- hearing back ------------------------------------------------------------------------------
    def _learn(self, unit: float | None, usd: float | None, charged: bool, what: str) -> float:
        """A task ended: book what it cost (returns it) and learn the price from it."""
        if not charged:
            return 0.0
        if usd is None:
            if unit is None:
                self._blind = (f"the provider did not say what {what} cost, so {self.cap.name} cannot hold "
                               "further calls without a published price")
                return self._unit_max or 0.0
            return self._expected(unit)
        if unit is None:
            self._unit_max = max(self._unit_max or 0.0, usd)
        else:
            self._priced_seen = True
            if unit > 0:
                self._ratio = max(self._ratio, usd / unit)
        return usd

    def _close(self, ticket: "Ticket") -> None:
        with self._cond:
            if ticket in self._open:
                self._open.remove(ticket)
                self.billed = round(self.billed + ticket.charged, 6)
                self._lost.extend(ticket.lost)
            self._cond.notify_all()

    @property
    def committed_usd(self) -> float:
        with self._cond:
            return round(self._committed(), 6)


class Ticket:
    """Tasks admitted together (one batch item's). Its tasks start through `admit`, which draws on what
    was admitted; a task beyond that (more than planned) asks the gate afresh. `close()` when done."""

    def __init__(self, gate: BudgetGate, units: list, solo: bool = False):
        self.gate = gate
        self.solo = solo                        # one task's own ticket: closed when the task ends
        self.pending = list(units)              # admitted, not started
        self.running: list = []                 # started, not ended
        self.charged = 0.0
        self.lost: list = []                    # ended, billed at a price never said: see BudgetGate._lost

    def _live(self) -> list:
        return self.pending + self.running

    def _committed(self) -> float:
        return self.charged + sum(self.gate._expected(u) for u in self._live() + self.lost)

    def start(self, unit: float | None) -> "Task":
        if unit in self.pending:
            self.pending.remove(unit)
        elif self.pending:
            self.pending.pop(0)
        self.running.append(unit)
        return Task(self, unit)

    def admit(self, unit: float | None, is_stopping: Callable[[], bool] = lambda: False) -> "Task | None":
        """A task of this item: drawn on the ticket (a first task of its kind still runs alone)."""
        gate = self.gate
        with gate._cond:
            if self.pending:
                while self._first_of_kind_running(unit):
                    if is_stopping():
                        return None
                    gate._cond.wait(0.1)
                return self.start(unit)
        return gate.admit(unit, is_stopping)        # more tasks than the item planned: asked afresh

    def _first_of_kind_running(self, unit: float | None) -> bool:
        """A task of this kind, not charged yet in this run, is in flight here or elsewhere: wait for it."""
        if self.gate._seen(unit):
            return False
        kind = unit is not None
        return any((u is not None) == kind for u in self.running) or self.gate._unseen_in_flight(unit, besides=self)

    def book_outside(self, billed_usd: float) -> None:
        """What the item's tasks were billed where this ticket saw none of them start (a Ray actor runs the
        item in another process): booked before `close`, so the gate counts it toward the cap. The cap was held
        on the item's estimates while it ran; a charge over them is not learnt from here."""
        with self.gate._cond:
            self.charged = round(max(self.charged, float(billed_usd or 0.0)), 6)

    def close(self) -> None:
        self.pending.clear()
        self.gate._close(self)


class Task:
    """One started task. `ended(usd, charged)` once the provider has answered for it (or never will)."""

    def __init__(self, ticket: Ticket, unit: float | None):
        self.ticket, self.unit = ticket, unit
        self._done = False

    def ended(self, usd: float | None, charged: bool, what: str = "a task") -> None:
        gate = self.ticket.gate
        with gate._cond:
            if self._done:
                return
            self._done = True
            booked = gate._learn(self.unit, usd, charged, what)
            if charged and usd is None:
                self.ticket.lost.append(self.unit)   # counted at its kind's expected cost, as it is learnt
            else:
                self.ticket.charged = round(self.ticket.charged + booked, 6)
            if self.unit in self.ticket.running:
                self.ticket.running.remove(self.unit)
            if self.ticket.solo:
                gate._close(self.ticket)         # the Condition's lock is an RLock: re-entered here
            gate._cond.notify_all()


def _what(units: list, gate: BudgetGate) -> str:
    priced = [u for u in units if u is not None]
    parts = []
    if priced:
        parts.append(f"{format_usd(sum(gate._expected(u) for u in priced))} estimated"
                     + (f" (the price table x {gate._ratio:.2f}, what the provider charged over it)"
                        if gate._ratio > 1 + 1e-9 else ""))
    if len(priced) < len(units):
        parts.append(f"{format_usd(gate._expected(None) * (len(units) - len(priced)))} for "
                     f"{len(units) - len(priced)} call(s) without a published price (the highest charge seen "
                     "for one)")
    return " and ".join(parts)
