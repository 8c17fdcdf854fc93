"""What a whole graph will cost: its dry run, priced. The CLI and ComfyUI's budget check both call this.

The dry run executes every node with `RunContext(dry_run=True)`: generation nodes validate and plan
their provider calls and add an estimate to the ledger; nothing is sent and nothing is saved.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..flux2.run_context import RunContext
from .executor import Executor


@dataclass
class GraphPlan:
    executor: Executor
    ctx: RunContext                 # the dry run's context: planned calls, warnings, ledger

    @property
    def total_usd(self) -> float:
        return self.ctx.ledger.estimated_total

    @property
    def unpriced_nodes(self) -> list[str]:
        return self.ctx.ledger.unpriced_nodes()


def plan_graph(workflow: dict, registry: dict, *, input_dir: Path, output_dir: Path = Path("."),
               more_input_dirs: tuple = (), strict: bool = False, cache=None) -> GraphPlan:
    """Validate and price every node. `strict`: a missing key is an error (a real run follows)."""
    executor = Executor(workflow, registry=registry, input_dir=input_dir, output_dir=output_dir,
                        more_input_dirs=more_input_dirs)
    ctx = RunContext(dry_run=True, strict=strict, cache=cache)
    executor.run(ctx)
    return GraphPlan(executor, ctx)

