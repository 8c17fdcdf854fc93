"""How long the pack takes to load, each figure the median over fresh interpreters.

1. Inside ComfyUI: torch is already imported, then ComfyUI imports the pack and reads its
   ``NODE_CLASS_MAPPINGS`` (which builds the node classes and registers the editor routes). Timed in
   the child around exactly that, as wall time (``perf_counter``) and as the process's CPU time
   (``process_time``: on a busy shared machine it is the steadier of the two); goal <= 100 ms.
2. The CLI: ``python -m comfyui_flux2 --help`` and ``... models``, whole process from outside, with
   whether torch got imported (it should not).

    comfyui-flux2 benchmark load [--runs 11]
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

HEAVY = ("httpx", "tokenizers", "safetensors", "PIL", "comfyui_flux2.flux2.local.model.transformer",
         "comfyui_flux2.flux2.local.pipeline", "comfyui_flux2.flux2.net.transport")

_IN_COMFYUI = f"""
import json, sys, time
import torch  # ComfyUI has it loaded before any custom node
t0, c0 = time.perf_counter(), time.process_time()
import comfyui_flux2
mappings = comfyui_flux2.NODE_CLASS_MAPPINGS
wall, cpu = time.perf_counter() - t0, time.process_time() - c0
print(json.dumps({{"seconds": wall, "cpu": cpu, "nodes": len(mappings),
                  "heavy": [m for m in {HEAVY!r} if m in sys.modules]}}))
"""

_CLI = """
import json, runpy, sys, time
sys.argv = ["comfyui-flux2", *{argv!r}]
try:
    runpy.run_module("comfyui_flux2", run_name="__main__")
except SystemExit:
    pass
print(json.dumps({{"torch": "torch" in sys.modules}}), file=sys.stderr)
"""


def _child(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=300)


def measure_pack_load(runs: int) -> dict:
    samples, cpu, last = [], [], {}
    for _ in range(runs):
        last = json.loads(_child(_IN_COMFYUI).stdout.strip().splitlines()[-1])
        samples.append(last["seconds"])
        cpu.append(last["cpu"])
    return {"samples": samples, "cpu": cpu, "nodes": last["nodes"], "heavy": last["heavy"]}


def measure_cli(argv: list[str], runs: int) -> dict:
    samples, torch_loaded = [], False
    for _ in range(runs):
        t0 = time.perf_counter()
        proc = _child(_CLI.format(argv=argv))
        samples.append(time.perf_counter() - t0)
        torch_loaded |= json.loads(proc.stderr.strip().splitlines()[-1])["torch"]
    return {"samples": samples, "torch": torch_loaded}


def _ms(samples: list[float]) -> str:
    return (f"median {statistics.median(samples) * 1000:7.1f} ms "
            f"(min {min(samples) * 1000:.1f}, max {max(samples) * 1000:.1f}, {len(samples)} runs)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="comfyui-flux2 benchmark load")
    parser.add_argument("--runs", type=int, default=11, help="fresh interpreters per figure")
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    pack = measure_pack_load(args.runs)
    print("pack load inside ComfyUI (torch already imported; import + NODE_CLASS_MAPPINGS):")
    print(f"  wall {_ms(pack['samples'])}; goal <= 100 ms")
    print(f"  cpu  {_ms(pack['cpu'])}; {pack['nodes']} nodes; "
          f"heavy modules loaded: {', '.join(pack['heavy']) or 'none'}")
    for cli in (["--help"], ["models"]):
        r = measure_cli(cli, args.runs)
        print(f"comfyui-flux2 {' '.join(cli)} (whole process): {_ms(r['samples'])}; "
              f"torch imported: {'yes' if r['torch'] else 'no'}")
    return 0
