"""FLUX2_BUDGET_USD inside ComfyUI: refuse a queued graph whose estimate exceeds the cap, before its
first paid call.

ComfyUI gives each node the whole API-format prompt (hidden input PROMPT). The first FLUX.2
generation node of a run prices the whole graph with the headless runner's dry run (no network, no
GPU) and remembers the answer for that prompt, so every later node of the same run agrees. A graph
the dry run cannot follow (another pack's nodes upstream of ours) is priced node by node instead.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from collections import OrderedDict
from pathlib import Path

from ..flux2.errors import BudgetError, Flux2Error, InputError
from ..flux2.pricing import format_usd

log = logging.getLogger("comfyui_flux2.budget")
_estimates: OrderedDict[str, float | None] = OrderedDict()


def budget_cap() -> float | None:
    raw = os.environ.get("FLUX2_BUDGET_USD", "").strip()
    if not raw:
        return None
    try:
        return float(raw)
    except ValueError:
        raise InputError("FLUX2_BUDGET_USD must be a number of US dollars") from None


def _input_dir() -> Path:
    try:
        import folder_paths  # ComfyUI only
        return Path(folder_paths.get_input_directory())
    except ImportError:
        return Path(".")


def graph_estimate(prompt: dict) -> float | None:
    """USD for the whole prompt, or None when the dry run cannot price it."""
    from ..flux2.run_context import RunContext
    from ..runner.executor import Executor

    key = hashlib.sha256(json.dumps(prompt, sort_keys=True, default=str).encode()).hexdigest()
    if key not in _estimates:
        try:
            plan = RunContext(dry_run=True)
            Executor(prompt, input_dir=_input_dir(), output_dir=Path(".")).run(plan)   # a dry run saves nothing
            _estimates[key] = plan.ledger.estimated_total
        except Flux2Error as exc:
            log.warning("FLUX2_BUDGET_USD: cannot price the whole graph (%s); checking node by node", exc)
            _estimates[key] = None
        while len(_estimates) > 64:
            _estimates.popitem(last=False)
    return _estimates[key]


def check_graph_budget(prompt: dict | None, node_estimate) -> None:
    """Raise BudgetError if the graph (or, where it cannot be priced, this node) is over the cap."""
    cap = budget_cap()
    if cap is None:
        return
    total = graph_estimate(prompt) if isinstance(prompt, dict) else None
    if total is not None:
        if total > cap + 1e-9:
            raise BudgetError(f"this graph is estimated at {format_usd(total)}, over FLUX2_BUDGET_USD "
                              f"{format_usd(cap)}; nothing was sent")
    elif node_estimate.usd is not None and node_estimate.usd > cap + 1e-9:
        raise BudgetError(f"this node is estimated at {format_usd(node_estimate.usd)}, over FLUX2_BUDGET_USD "
                          f"{format_usd(cap)}; nothing was sent")
