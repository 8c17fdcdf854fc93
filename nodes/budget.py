"""FLUX2_BUDGET_USD inside ComfyUI: refuse a queued graph whose estimate exceeds the cap, before its
first paid call.

ComfyUI gives each node the whole API-format prompt (hidden input PROMPT). The first FLUX.2
generation node of a run prices the whole graph with the runner's `plan_graph` (the same dry run the
CLI prices with: no network, no GPU) and remembers the answer for that prompt, so every later node of
the same run agrees. A graph the dry run cannot follow (another pack's nodes upstream of ours) is
priced node by node instead. The cap rule itself (unknown prices refused unless
FLUX2_ALLOW_UNPRICED=1) is flux2/budget.py's.

While the run is under way the cap is also held task by task, as `comfyui-flux2 run --budget` holds it: one
BudgetGate per queued run (ComfyUI's prompt id), shared by every generation node of that run, so a provider
charging more than its price table stops the run's later tasks instead of passing the cap.
"""
from __future__ import annotations

import hashlib
import json
import logging
import threading
from collections import OrderedDict
from dataclasses import replace
from pathlib import Path

from ..flux2.budget import BudgetGate, cap_from_env, check
from ..flux2.errors import Flux2Error
from ..flux2.run_context import RunContext
from .catalog import NODE_CLASS_MAPPINGS
from .comfy_hooks import input_directory, running_prompt_id

log = logging.getLogger("comfyui_flux2.budget")
# prompt hash -> (estimated USD, nodes without a published price), or None: the dry run cannot price it
_estimates: OrderedDict[str, tuple[float, list[str]] | None] = OrderedDict()
# ComfyUI prompt id -> the gate holding FLUX2_BUDGET_USD through that run (the newest few kept)
_gates: OrderedDict[str, BudgetGate] = OrderedDict()
_gates_lock = threading.Lock()


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


def with_run_gate(ctx: RunContext) -> RunContext:
    """`ctx` holding FLUX2_BUDGET_USD task by task through the run ComfyUI is executing (unchanged headless,
    without a cap, or where a runner's context already holds one)."""
    gate = None if ctx.gate is not None else run_gate()
    return ctx if gate is None else replace(ctx, gate=gate)


def run_gate() -> BudgetGate | None:
    """The gate holding FLUX2_BUDGET_USD through the run ComfyUI is executing, or None (no cap; headless)."""
    prompt_id = running_prompt_id()
    cap = cap_from_env() if prompt_id is not None else None
    if cap is None:
        return None
    with _gates_lock:
        gate = _gates.get(prompt_id)
        if gate is None or gate.cap != cap:
            gate = _gates[prompt_id] = BudgetGate(cap)
        _gates.move_to_end(prompt_id)
        while len(_gates) > 16:
            _gates.popitem(last=False)
    return gate
