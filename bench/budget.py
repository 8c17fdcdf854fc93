"""Budget overrun (nothing leaves 127.0.0.1; measures, asserts nothing): what `run` and `batch` bill against
`--budget` when the provider's price is unknown ([dev] on Runware) or not the published one.

    python -m comfyui_flux2.bench.budget        # prints one line per scenario: billed vs cap

Each scenario gets a fresh loopback Runware server that bills `charge` per task and takes `task_s` per task
(so tasks overlap, as they do on the real provider), and an empty result cache.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import tempfile
from pathlib import Path

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
    """(billed USD, tasks billed, exit code) of one run against a fresh loopback server."""
    from ..cli import main
    from ..loopback.runware_server import RunwareLoopback

    with tempfile.TemporaryDirectory() as tmp, RunwareLoopback(api_key=KEY, task_s=task_s,
                                                               charge_usd=charge) as server:
        folder = Path(tmp)
        env = {"RUNWARE_API_URL": server.api_url, "RUNWARE_API_KEY": KEY, "FLUX2_CACHE_DIR": str(folder / "cache")}
        saved = {k: os.environ.get(k) for k in env}
        os.environ.update(env)
        try:
            wf = _workflow(folder, model, batch)
            args = [command, str(wf), "--output-dir", str(folder / "out"), *flags]
            if command == "batch":
                table = folder / "rows.csv"
                table.write_text("Make.prompt\n" + "".join(f"row {i}\n" for i in range(rows)))
                args += ["--table", str(table)]
            with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
                code = main(args)
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
        return round(server.billed, 6), len(server.billed_tasks), code


def main(argv=None) -> int:
    print(f"{'scenario':62} {'cap':>6} {'billed':>8} {'tasks':>5} {'over':>7} exit")
    for name, command, model, batch, rows, flags, charge in SCENARIOS:
        cap = float(flags[flags.index("--budget") + 1])
        billed, tasks, code = scenario(command, model, batch, rows, flags, charge)
        print(f"{name:62} {cap:6.3f} {billed:8.3f} {tasks:5d} {max(0.0, billed - cap):7.3f} {code}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
