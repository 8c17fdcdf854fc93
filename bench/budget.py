"""Budget overrun (nothing leaves 127.0.0.1; measures, asserts nothing): what `run` and `batch` bill against
`--budget` when the provider's price is unknown ([dev] on Runware) or not the published one.

    python -m comfyui_flux2.bench.budget        # prints one line per scenario: billed vs cap

Each scenario gets a fresh loopback Runware server that bills `charge` per task and takes `task_s` per task
(so tasks overlap, as they do on the real provider), and an empty result cache.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from ..flux2.budget import Cap

KEY = "bench-budget-key"

# (name, command, model, batch_size per item, rows, budget flags, charge per task)
SCENARIOS = [
    ("run [dev] x8, --budget 0 --allow-unpriced", "run", "FLUX.2 [dev]", 8, 1, ["--budget", "0", "--allow-unpriced"], 0.009),
    ("run [dev] x8, --budget 0.01 --allow-unpriced", "run", "FLUX.2 [dev]", 8, 1,
     ["--budget", "0.01", "--allow-unpriced"], 0.009),
    ("batch [dev] 8 rows, --budget 0.03 --allow-unpriced", "batch", "FLUX.2 [dev]", 1, 8,
     ["--budget", "0.03", "--allow-unpriced"], 0.009),
    ("batch [pro] 12 rows est. $0.03 charged $0.10, --budget 0.40", "batch", "FLUX.2 [pro]", 1, 12,
     ["--budget", "0.40"], 0.10),
]


def _workflow(folder: Path, model: str, batch: int) -> Path:
    prompt = {
        "1": {"class_type": "Flux2RemoteBackend", "inputs": {
            "provider": "runware", "model": model, "prompt_upsampling": False, "safety_tolerance": 2,
            "output_format": "PNG", "output_quality": 95, "steps": 0, "guidance": 0.0, "on_moderation": "error"}},
        "2": {"class_type": "Flux2TextToImage", "_meta": {"title": "Make"},
              "inputs": {"backend": ["1", 0], "prompt": "x", "width": 512, "height": 512, "seed": 1,
                         "batch_size": batch}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "budget"}},
    }
    path = folder / "wf.json"
    path.write_text(json.dumps(prompt))
    return path


def scenario(command: str, model: str, batch: int, rows: int, flags: list[str], charge: float,
             task_s: float = 0.2) -> tuple[float, int, int]:
    """(billed USD, tasks billed, exit status as the CLI would give it) of one run against a fresh loopback
    server, through what `run` and `batch` run (the runner and the Batch API; bench/ does not import cli/)."""
    from ..loopback.runware_server import RunwareLoopback

    with tempfile.TemporaryDirectory() as tmp, RunwareLoopback(api_key=KEY, task_s=task_s,
                                                               charge_usd=charge) as server:
        folder = Path(tmp)
        env = {"RUNWARE_API_URL": server.api_url, "RUNWARE_API_KEY": KEY, "FLUX2_CACHE_DIR": str(folder / "cache")}
        saved = {k: os.environ.get(k) for k in env}
        os.environ.update(env)
        try:
            wf = _workflow(folder, model, batch)
            cap = Cap(float(flags[flags.index("--budget") + 1]), "the budget cap", "--allow-unpriced" in flags)
            run = _run_graph if command == "run" else _run_batch
            code = run(wf, folder / "out", cap, rows)
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
        return round(server.billed, 6), len(server.billed_tasks), code


def _run_graph(wf: Path, out: Path, cap, rows: int) -> int:
    """`run`: the dry-run pass and its cap check, then the graph under the budget gate."""
    from ..flux2.budget import BudgetGate, check
    from ..flux2.errors import Flux2Error
    from ..flux2.run_context import RunContext
    from ..nodes.registry import node_registry
    from ..runner.graph import load_workflow
    from ..runner.pricing import plan_graph

    try:
        plan = plan_graph(load_workflow(wf), node_registry(), input_dir=wf.parent, output_dir=out, strict=True)
        check(plan.total_usd, plan.unpriced_nodes, cap)
        plan.executor.run(RunContext(gate=BudgetGate(cap)))
    except Flux2Error:
        return 1
    return 0


def _run_batch(wf: Path, out: Path, cap, rows: int) -> int:
    """`batch`: every item planned and checked, then the scheduler under the budget gate."""
    from ..flux2.errors import Flux2Error
    from ..nodes.registry import node_registry
    from ..runner.batch import Batch

    batch = Batch(wf, registry=node_registry, output_dir=out, rows=[{"Make.prompt": f"row {i}"} for i in range(rows)],
                  cap=cap, use_cache=False)
    try:
        batch.prepare()
        batch.check()
        for _ in batch.run():
            pass
    except Flux2Error:
        return 1
    t = batch.totals
    return 1 if t.failed or t.stopped_by else 0


def main(argv=None) -> int:
    import logging
    logging.getLogger("comfyui_flux2").setLevel(logging.ERROR)      # "charged over the estimate" is the point here
    print(f"{'scenario':62} {'cap':>6} {'billed':>8} {'tasks':>5} {'over':>7} exit")
    for name, command, model, batch, rows, flags, charge in SCENARIOS:
        cap = float(flags[flags.index("--budget") + 1])
        billed, tasks, code = scenario(command, model, batch, rows, flags, charge)
        print(f"{name:62} {cap:6.3f} {billed:8.3f} {tasks:5d} {max(0.0, billed - cap):7.3f} {code}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
