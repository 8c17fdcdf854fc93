"""`comfyui-flux2 benchmark gpu`: the one command for a lent GPU window, writing docs/benchmarks-gpu.md.

Nothing is downloaded: every weight is random, at the real sizes, made on the device (gpu_random.py). Sections run
one after another, each job in its own process (clean peak memory, a crash or hang costs one row), each section
within its own time limit and all within one budget (default 450 s, so start-up included it ends inside 8 minutes
on one H100). The file is rewritten after every section and says what ran, what stopped at its limit, and why.

    comfyui-flux2 benchmark gpu                      # on the GPU: docs/benchmarks-gpu.md
    comfyui-flux2 benchmark gpu --tiny --out F.md    # the whole command at tiny size on the CPU (CI rehearses it)
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

MODULE = __spec__.name if __spec__ else "comfyui_flux2.bench.gpu"
DEFAULT_OUT = Path(__file__).resolve().parents[1] / "docs" / "benchmarks-gpu.md"
TINY_OUT = Path("benchmarks-gpu-tiny.md")     # a rehearsal never overwrites the real file by default
BUDGET_S = 450.0
# --tiny on a CPU: rows are process start and imports (diffusers alone takes seconds on a busy 2-core machine), not
# compute, so the rehearsal gets this many times the GPU limits; what it checks is that every row runs.
TINY_SCALE = 5.0
STEP_IMPLS = ("diffusers-bf16", "ours-bf16", "ours-fp8")
NOT_YET = ("Not in this command: ComfyUI core rows, and the text encoder and VAE in the quantised formats (the "
           "quant section times the transformer's blocks only).")
QUANT = ("ours-bf16", "ours-gguf-q8_0", "ours-gguf-q4_k", "ours-nvfp4")


@dataclass
class Section:
    key: str
    title: str
    limit_s: float
    jobs: list[tuple[str, list[str]]]      # (row label, worker arguments)
    rows: list[dict] = field(default_factory=list)
    status: str = "not run"
    seconds: float = 0.0


def plan() -> list[Section]:
    """The sections in the order they run; limits in seconds on one H100 (sum 450 s, the budget). A row is a process
    start, a random model built on the device and a few forwards: about 10-15 s at [klein] sizes (not yet measured)."""
    def steps(models, impls):
        return [(f"{m} {i}", ["step", m, i]) for m in models for i in impls]
    return [
        Section("klein", "[klein] 4B and 9B: one transformer step at 1024² vs diffusers, bf16 and fp8", 140,
                steps(("klein4b", "klein9b"), STEP_IMPLS)),
        Section("dev-block", "[dev] at full width (6144): one double + one single block at 1024²", 60,
                steps(("dev-1blk",), STEP_IMPLS)),
        Section("offload", "[dev] width, 2 double + 4 single blocks: resident vs `offload=blocks` streaming", 60,
                steps(("dev-6blk",), ("ours-bf16", "ours-bf16-offload"))),
        Section("t2i", "[klein] 4B text-to-image end to end at 1024², 4 steps", 60, [("klein4b t2i", ["t2i"])]),
        Section("parity", "Picture equality with diffusers' Flux2KleinPipeline, same random weights", 60,
                [("klein4b parity", ["parity"])]),
        Section("quant", "[klein] 4B: one step with the block weights kept GGUF Q8_0 / Q4_K or NVFP4 vs bf16", 70,
                steps(("klein4b",), QUANT)),
    ]


def run_job(argv: list[str], timeout: float) -> dict:
    """One worker process -> its JSON row, or {"error": one line}; killed at `timeout` seconds."""
    if timeout <= 1:
        return {"error": "no time left"}
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                             env={**os.environ, "PYTHONWARNINGS": "ignore"})
    except subprocess.TimeoutExpired:
        return {"error": f"stopped at the limit ({timeout:.0f} s left for it)", "timeout": True}
    if out.returncode != 0:
        lines = out.stderr.strip().splitlines()
        return {"error": lines[-1][:300] if lines else f"exit status {out.returncode}"}
    try:
        return json.loads(out.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        return {"error": "the worker printed no result"}


def run_section(sec: Section, deadline: float, worker_argv: list[str]) -> Section:
    """Run `sec`'s jobs in turn within its own limit and the global `deadline` (time.monotonic())."""
    start = time.monotonic()
    end = min(start + sec.limit_s, deadline)
    for label, job in sec.jobs:
        row = run_job(worker_argv + job, end - time.monotonic())
        sec.rows.append({"label": label, **row})
        print(f"[benchmark gpu] {sec.key} {label}: {json.dumps(row)}", file=sys.stderr, flush=True)
        if row.get("timeout") or row.get("error") == "no time left":
            break
    sec.seconds = time.monotonic() - start
    done = sum("error" not in r for r in sec.rows)
    stopped = any(r.get("timeout") or r.get("error") == "no time left" for r in sec.rows)
    sec.status = (f"stopped at its limit after {done} of {len(sec.jobs)} rows" if stopped
                  else f"{done} of {len(sec.jobs)} rows" + ("" if done == len(sec.jobs) else " (others failed)"))
    return sec


def _device_line(device: str) -> str:
    import torch

    bits = [f"torch {torch.__version__}"]
    try:
        import diffusers
        bits.append(f"diffusers {diffusers.__version__}")
    except ImportError:
        bits.append("diffusers not installed")
    name = torch.cuda.get_device_name(0) if device.startswith("cuda") else f"CPU ({platform.machine()})"
    return f"{name}; {', '.join(bits)}; Python {platform.python_version()}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="comfyui-flux2 benchmark gpu", description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=None,
                    help=f"the report (default: the pack's docs/benchmarks-gpu.md; with --tiny ./{TINY_OUT})")
    ap.add_argument("--tiny", action="store_true", help="tiny sizes on the CPU: a rehearsal of the whole command")
    ap.add_argument("--device", default=None, help="cuda | cpu (default: cuda if available)")
    ap.add_argument("--budget", type=float, default=None,
                    help=f"seconds for all sections (default {BUDGET_S:g}; with --tiny {TINY_SCALE:g} times that)")
    ap.add_argument("--sections", default=None, help="comma list of sections to run (default: all)")
    ap.add_argument("--worker", nargs="+", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.device is None:
        import torch

        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.worker:
        print(json.dumps(worker(args.worker, args.device, args.tiny)))
        return 0
    sections = plan()
    if args.tiny:
        for sec in sections:
            sec.limit_s *= TINY_SCALE
    if args.budget is None:
        args.budget = BUDGET_S * (TINY_SCALE if args.tiny else 1.0)
    if args.sections:
        wanted = args.sections.split(",")
        unknown = sorted(set(wanted) - {s.key for s in sections})
        if unknown:
            print(f"error: unknown sections {', '.join(unknown)} (known: {', '.join(s.key for s in sections)})",
                  file=sys.stderr)
            return 2
        sections = [s for s in sections if s.key in wanted]
    out = args.out or (TINY_OUT if args.tiny else DEFAULT_OUT)
    return run_all(sections, out, args)


def run_all(sections: list[Section], out: Path, args) -> int:
    from .gpu_report import render

    t0 = time.monotonic()
    deadline = t0 + args.budget
    meta = {"device": _device_line(args.device), "tiny": args.tiny, "budget_s": args.budget,
            "started": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "not_yet": NOT_YET}
    worker_argv = [sys.executable, "-m", MODULE, "--device", args.device] + (["--tiny"] if args.tiny else []) + \
        ["--worker"]
    out.parent.mkdir(parents=True, exist_ok=True)
    for sec in sections:
        run_section(sec, deadline, worker_argv)
        meta["wall_s"] = time.monotonic() - t0
        out.write_text(render(meta, sections))        # after every section: a later hang loses nothing
    print(f"wrote {out} ({meta['wall_s']:.0f} s)")
    return 0 if all(s.status.endswith(f"{len(s.jobs)} of {len(s.jobs)} rows") for s in sections) else 1


def worker(job: list[str], device: str, tiny: bool) -> dict:
    kind = job[0]
    if kind == "step":
        from .gpu_full_size import worker as step_worker

        return step_worker(job[1], job[2], device, tiny)
    from . import gpu_pipeline

    if kind == "t2i":
        return gpu_pipeline.t2i_worker(device, tiny)
    if kind == "parity":
        return gpu_pipeline.parity_worker(device, tiny)
    raise SystemExit(f"unknown worker {kind}")


if __name__ == "__main__":
    raise SystemExit(main())
