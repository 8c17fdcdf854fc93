"""The node registry of a headless run: the pack's node classes plus the core LoadImage/SaveImage stand-ins.

Here, below the CLI and the benchmarks, so both take it without importing each other. A module-level
function: the batch runner's Ray actors call it by reference in their own process."""
from __future__ import annotations


def node_registry() -> dict:
    """What a headless run executes: the pack's node classes plus the core LoadImage/SaveImage stand-ins."""
    from . import NODE_CLASS_MAPPINGS
    from ..runner.core_nodes import headless_registry
    return headless_registry(NODE_CLASS_MAPPINGS)
