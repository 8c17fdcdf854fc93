"""Per-run state shared by every node of one graph run: dry-run flag, progress and cancel hooks,
the cost ledger, the budget cap and the reference-upload cache.

The ComfyUI node layer and the CLI runner each install their own hooks; the engine only calls them.
"""
from __future__ import annotations

import contextvars
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

from .errors import Cancelled
from .pricing import Estimate, approximate_reasons, format_usd

log = logging.getLogger("comfyui_flux2")


@dataclass
class Ledger:
    """Estimated and billed USD per node; one running total per run."""

    estimates: dict[str, Estimate] = field(default_factory=dict)
    billed: dict[str, float | None] = field(default_factory=dict)
    # Billed to an earlier, killed run for images this run recovered from its tasks (not to this run):
    # node -> known USD; and how many images were recovered so (some charges may be unknown).
    billed_earlier: dict[str, float] = field(default_factory=dict)
    recovered_images: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add_estimate(self, node: str, est: Estimate) -> None:
        with self._lock:
            key = node or f"#{len(self.estimates)}"
            self.estimates[key] = est

    def add_billed(self, node: str, usd: float | None) -> None:
        with self._lock:
            key = node or f"#{len(self.billed)}"
            prev = self.billed.get(key)
            self.billed[key] = usd if prev is None else prev + (usd or 0.0)

    def add_billed_earlier(self, node: str, usd: float | None, images: int) -> None:
        with self._lock:
            key = node or f"#{len(self.billed_earlier)}"
            self.billed_earlier[key] = round(self.billed_earlier.get(key, 0.0) + (usd or 0.0), 6)
            self.recovered_images += images

    @property
    def billed_earlier_total(self) -> float:
        return round(sum(self.billed_earlier.values()), 6)

    @property
    def estimated_total(self) -> float:
        return round(sum(e.usd for e in self.estimates.values() if e.usd is not None), 6)

    @property
    def unpriced(self) -> int:
        return sum(1 for e in self.estimates.values() if e.usd is None)

    def unpriced_nodes(self) -> list[str]:
        """Nodes whose estimate is unknown and whose billed cost is not known yet either."""
        return [n for n, e in self.estimates.items() if e.usd is None and self.billed.get(n) is None]

    @property
    def approximate(self) -> bool:
        """Some estimate rests on an assumption (e.g. a URL reference of unknown size priced as 1 MP)."""
        return any(e.approximate for e in self.estimates.values())

    @property
    def approximate_reasons(self) -> list[str]:
        """Why the approximate estimates are approximate (pricing.approximate_note prints them)."""
        return approximate_reasons(self.estimates.values())

    @property
    def billed_total(self) -> float:
        return round(sum(v for v in self.billed.values() if v is not None), 6)

    def summary(self) -> str:
        est = format_usd(self.estimated_total) + (f" (+{self.unpriced} unpriced)" if self.unpriced else "")
        return (f"estimated {est}, billed {format_usd(self.billed_total)}"
                + (f" ({self.recovered_images} image(s) recovered from an earlier run's tasks, billed then "
                   f"{format_usd(self.billed_earlier_total)})" if self.recovered_images else ""))


@dataclass
class RunContext:
    dry_run: bool = False
    strict: bool = False                 # dry run as a pre-flight check: missing keys are errors, not warnings
    budget_usd: float | None = None      # validated by flux2.budget.parse_usd
    allow_unpriced: bool = False         # under a cap, run calls without a published price (opt-in)
    # The cap held task by task (flux2.budget.BudgetGate, or a batch item's Ticket drawn from one);
    # made from budget_usd when not given.
    gate: object | None = None
    progress: Callable[[str, float, float, str], None] | None = None   # (node, done, total, message)
    is_cancelled: Callable[[], bool] | None = None
    result_sink: Callable[[object, object], None] | None = None        # saves paid results at once
    # A provider answered one task (its image may still be on the way): a batch gives that provider slot to
    # its next item now, not after the download, decoding and the item's saving.
    answer_sink: Callable[[], None] | None = None
    cache: object | None = None          # a ResultCache, or None for no result cache
    ledger: Ledger = field(default_factory=Ledger)
    planned: list = field(default_factory=list)
    warnings: list = field(default_factory=list)          # "node N: message", one per node
    # provider -> content sha256 -> (provider image id, expiry epoch seconds)
    uploads: dict[str, dict[str, tuple[str, float]]] = field(default_factory=dict)
    # node id -> the prompts as the provider expanded them (FLUX 3), kept in saved PNGs' metadata
    expanded_prompts: dict[str, list] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def __post_init__(self) -> None:
        if self.gate is None and self.budget_usd is not None:
            from .budget import BudgetGate, Cap
            self.gate = BudgetGate(Cap(self.budget_usd, "the budget cap", self.allow_unpriced))

    def record_plan(self, call, est: Estimate) -> None:
        self.planned.append((call, est))

    def report(self, node: str, done: float, total: float, message: str = "") -> None:
        if self.progress is not None:
            self.progress(node, done, total, message)

    def check_cancelled(self) -> None:
        if self.is_cancelled is not None and self.is_cancelled():
            raise Cancelled("cancelled by the user")

    def warn(self, node: str, message: str) -> None:
        self.warnings.append(f"node {node or '?'}: {message}")

    def grouped_warnings(self) -> list[str]:
        """The same warning for many nodes (e.g. no API key) once, naming the nodes."""
        nodes_by_text: dict[str, list[str]] = {}
        for line in self.warnings:
            head, sep, text = line.partition(": ")
            if sep and head.startswith("node ") and " " not in head[5:]:
                nodes_by_text.setdefault(text, []).append(head[5:])
            else:                                   # a warning not about one node: as it is
                nodes_by_text.setdefault(line, [])
        return [text + (f" (node{'s' if len(nodes) > 1 else ''} {', '.join(nodes)})" if nodes else "")
                for text, nodes in nodes_by_text.items()]

    def on_result(self, request, result) -> None:
        if self.result_sink is not None:
            self.result_sink(request, result)

    def on_answer(self) -> None:
        if self.answer_sink is not None:
            self.answer_sink()

    def cached_upload(self, provider: str, sha256: str) -> str | None:
        with self._lock:
            hit = self.uploads.get(provider, {}).get(sha256)
            if hit and hit[1] > time.time():
                return hit[0]
            return None

    def remember_upload(self, provider: str, sha256: str, image_id: str, ttl_s: float) -> None:
        with self._lock:
            self.uploads.setdefault(provider, {})[sha256] = (image_id, time.time() + ttl_s)


# Inside ComfyUI there is no per-run object we can hang state on, so a process-wide default context
# serves (its upload cache then lives across queue runs, bounded by the provider's expiry).
def _default_context() -> RunContext:
    from .result_cache import ResultCache, enabled_by_env
    return RunContext(cache=ResultCache() if enabled_by_env() else None)


_default = _default_context()
_current: contextvars.ContextVar[RunContext] = contextvars.ContextVar("flux2_run_context", default=_default)


def current() -> RunContext:
    return _current.get()


class using:
    """`with using(ctx): ...` makes ctx the current run context (CLI runner, tests)."""

    def __init__(self, ctx: RunContext):
        self.ctx = ctx

    def __enter__(self) -> RunContext:
        self._token = _current.set(self.ctx)
        return self.ctx

    def __exit__(self, *exc) -> None:
        _current.reset(self._token)
