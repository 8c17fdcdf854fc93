"""FLUX2_BUDGET_USD inside ComfyUI: refuse a queued graph whose estimate exceeds the cap, before its
first paid call.

ComfyUI gives each node the whole API-format prompt (hidden input PROMPT). The first FLUX.2
generation node of a run prices the whole graph with the runner's `plan_graph` (the same dry run the
CLI prices with: no network, no GPU) and remembers the answer for that prompt, so every later node of
the same run agrees. A graph the dry run cannot follow (another pack's nodes upstream of ours) is
priced node by node instead. The cap rule itself (unknown prices refused unless
FLUX2_ALLOW_UNPRICED=1) is flux2/budget.py's.
"""
from __future__ import annotations

import hashlib
import json
import logging
from collections import OrderedDict
from pathlib import Path

from ..flux2.budget import cap_from_env, check
from ..flux2.errors import Flux2Error
from .catalog import NODE_CLASS_MAPPINGS
from .comfy_hooks import input_directory

log = logging.getLogger("comfyui_flux2.budget")
# prompt hash -> (estimated USD, nodes without a published price), or None: the dry run cannot price it
_estimates: OrderedDict[str, tuple[float, list[str]] | None] = OrderedDict()


def _input_dir() -> Path:
    return input_directory() or Path(".")


def graph_estimate(prompt: dict) -> tuple[float, list[str]] | None:
    """(USD, unpriced node ids) for the whole prompt, or None when the dry run cannot price it."""
    from ..runner.core_nodes import headless_registry
    from ..runner.pricing import plan_graph

    key = hashlib.sha256(json.dumps(prompt, sort_keys=True, default=str).encode()).hexdigest()
    if key not in _estimates:
        try:
            plan = plan_graph(prompt, headless_registry(NODE_CLASS_MAPPINGS), input_dir=_input_dir())
            _estimates[key] = (plan.total_usd, plan.unpriced_nodes)
        except (Flux2Error, RecursionError) as exc:
            log.warning("FLUX2_BUDGET_USD: cannot price the whole graph (%s); checking node by node", exc)
            _estimates[key] = None
        while len(_estimates) > 64:
            _estimates.popitem(last=False)
    return _estimates[key]


def check_graph_budget(prompt: dict | None, node_estimate, node_id: str = "") -> None:
    """Raise BudgetError if the graph (or, where it cannot be priced, this node) is over the cap."""
    cap = cap_from_env()
    if cap is None:
        return
    priced = graph_estimate(prompt) if isinstance(prompt, dict) else None
    if priced is not None:
        check(priced[0], priced[1], cap, subject="this graph")
    else:
        unpriced = [node_id or "?"] if node_estimate.usd is None else []
        check(node_estimate.usd or 0.0, unpriced, cap, subject="this node")
