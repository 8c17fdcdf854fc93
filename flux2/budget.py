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
from dataclasses import dataclass

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


def parse_usd(text, source: str) -> float:
    """A cap in US dollars: a finite number >= 0 (refuses nan, inf, negatives, words)."""
    try:
        value = float(str(text).strip())
    except ValueError:
        raise InputError(f"{source} must be a number of US dollars, got {str(text)[:40]!r}") from None
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
