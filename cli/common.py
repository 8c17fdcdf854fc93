"""What several commands print or read the same way: one-line errors, progress, the budget cap, the registry."""
from __future__ import annotations

import sys


def err(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)


def progress_printer(stream=sys.stderr):
    last = {}

    def progress(node: str, done: float, total: float, message: str) -> None:
        key = (node, message)
        if last.get(node) == key and done < total:
            return
        last[node] = key
        pct = int(100 * done / total) if total else 0
        print(f"  [node {node}] {pct:3d}% {message}".rstrip(), file=stream, flush=True)
    return progress


def node_registry() -> dict:
    """What a headless run executes (nodes/registry.py); named here too, as the batch API's docs show it."""
    from ..nodes.registry import node_registry as registry
    return registry()


def budget_cap(budget, allow_unpriced: bool = False):
    """--budget wins over FLUX2_BUDGET_USD; both are validated (finite, >= 0) by flux2.budget."""
    from ..flux2.budget import Cap, allow_unpriced_from_env, cap_from_env, parse_usd
    allow = allow_unpriced or allow_unpriced_from_env()
    if budget is not None:
        return Cap(parse_usd(budget, "--budget"), "the budget cap", allow)
    cap = cap_from_env("the budget cap")
    return Cap(cap.usd, cap.name, allow) if cap else None


def whole_number(text: str) -> int:
    """argparse type for counts: plain digits, maybe signed (int() also reads "1_0" as 10, and
    non-ASCII digits); the range is checked where the count is used."""
    import argparse
    import re
    if not re.fullmatch(r"-?[0-9]+", str(text).strip()):
        raise argparse.ArgumentTypeError(f"expected a whole number, got {str(text)[:20]!r}")
    return int(text)


def set_models_dir(args) -> None:
    """--models-dir: the local weights folder, for this process (the engine reads FLUX2_MODELS_DIR)."""
    import os
    if getattr(args, "models_dir", None):
        os.environ["FLUX2_MODELS_DIR"] = str(args.models_dir)
