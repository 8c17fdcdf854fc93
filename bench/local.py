"""Transformer step time and peak memory: this engine vs diffusers' Flux2Transformer2DModel.

`main(argv) -> int` (wired as `comfyui-flux2 benchmark local`). Each (implementation, config) runs in its own
subprocess so peak memory is measured cleanly: CUDA peak allocated on GPU, peak RSS growth on CPU.
Same config, dtype, device and inputs for both; diffusers must be installed (test extra).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

CONFIGS = {
    # name: (hidden, heads, double, single, text_dim, width, height, text_tokens)
    "tiny": (64, 2, 2, 2, 96, 128, 128, 512),
    "mid": (1024, 8, 2, 4, 3072, 256, 256, 512),
    "klein4b-1blk": (3072, 24, 1, 1, 7680, 1024, 1024, 512),
}


ENGINE_MODULE = __spec__.name if __spec__ else "comfyui_flux2.bench.local"
BENCH_PACKAGE = ENGINE_MODULE.rpartition(".")[0]        # the pack's bench/, under whatever name it is imported
PEER_MODULE = BENCH_PACKAGE + ".comfyui_peer"          # imports ComfyUI
PIPELINE_MODULE = BENCH_PACKAGE + ".local_pipeline"    # whole-pipeline rows
PIPELINE_CONFIGS = ("tiny", "mid")    # bench/local_pipeline.py PIPELINES (its mid has a 768-wide text context)
COMFY_SWEEP_MODULE = BENCH_PACKAGE + ".comfyui_sweep"  # starts a ComfyUI server
ROWS = ("step", "pipeline", "lora", "comfyui-sweep", "quant-plan", "quant-step")


def _reset_peak_rss() -> None:
    """Linux: restart the process's peak-RSS counter (VmHWM) so later peaks exclude import-time spikes."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def _peak_rss_mb() -> float:
    with open("/proc/self/status") as f:
        return int(re.search(r"VmHWM:\s+(\d+)", f.read()).group(1)) / 1024


def _current_rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _build(impl: str, cfg: str, dtype, device: str, comfyui_builder=None):
    """-> (model, step) for one implementation at one config, inputs made on the device."""
    import torch

    from ..flux2.local.model.sampling import image_ids, text_ids

    torch.manual_seed(0)
    hidden, heads, nd, ns, tdim, w, h, lt = CONFIGS[cfg]
    hd = hidden // heads
    q = hd // 4
    axes = (q, q, q, hd - 3 * q)
    img = torch.randn(1, (w // 16) * (h // 16), 128).to(device, dtype)   # [B, Li, 128]
    txt = torch.randn(1, lt, tdim).to(device, dtype)                      # [B, Lt, C]
    iid, tid = image_ids(h // 16, w // 16).to(device), text_ids(lt).to(device)
    t = torch.tensor([0.5], device=device)
    if impl == "comfyui":
        model, step = comfyui_builder(hidden, heads, nd, ns, tdim, axes, device, dtype, w, h, txt, t)
    elif impl == "diffusers":
        from diffusers import Flux2Transformer2DModel

        model = Flux2Transformer2DModel(in_channels=128, num_layers=nd, num_single_layers=ns, attention_head_dim=hd,
                                        num_attention_heads=heads, joint_attention_dim=tdim, axes_dims_rope=axes,
                                        guidance_embeds=False)

        def step():
            return model(hidden_states=img, encoder_hidden_states=txt, timestep=t, img_ids=iid, txt_ids=tid,
                         guidance=None, return_dict=False)[0]
    else:
        from ..flux2.local.model.params import TransformerParams
        from ..flux2.local.model.transformer import Flux2Transformer

        model = Flux2Transformer(TransformerParams(hidden=hidden, heads=heads, head_dim=hd, depth_double=nd,
                                                   depth_single=ns, context_dim=tdim, mlp_hidden=3 * hidden,
                                                   axes_dim=axes))

        def step():
            return model(img, iid, txt, tid, t)
    model.to(device, dtype).eval().requires_grad_(False)
    return model, step


def _worker(impl: str, cfg: str, dtype_name: str, device: str, reps: int, comfyui_builder=None) -> dict:
    """comfyui_builder: bench/comfyui_peer.py passes ComfyUI's model (the engine never imports ComfyUI)."""
    import gc

    import torch

    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[dtype_name]
    cuda = device.startswith("cuda")
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    # Warm-up on the tiny config: imports and kernel libraries load lazily, and differently in each stack;
    # memory is then counted from the RSS after that (CPU) or above the weights (CUDA).
    with torch.no_grad():
        _build(impl, "tiny", dtype, device, comfyui_builder)[1]()
    gc.collect()
    if not cuda:
        _reset_peak_rss()
    cpu_base = _current_rss_mb()
    model, step = _build(impl, cfg, dtype, device, comfyui_builder)
    with torch.no_grad():
        step()
        sync()
        if cuda:
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            step()
            sync()
            times.append(time.perf_counter() - t0)
    peak = (torch.cuda.max_memory_allocated() - base) / 2**20 if cuda else _peak_rss_mb() - cpu_base
    times.sort()
    return {"impl": impl, "config": cfg, "step_s": times[len(times) // 2], "peak_mb": peak,
            "peak_kind": ("CUDA peak allocated above weights" if cuda
                          else "peak RSS above the RSS before the model is built (weights + activations)")}


def _lora_rows(args, python: str) -> int:
    rows = []
    for cfg in args.configs.split(","):
        r = _run_json([python, "-m", ENGINE_MODULE, "--worker", "lora", cfg, "--dtype", args.dtype, "--device",
                       args.device, "--reps", str(args.reps), "--lora-rank", str(args.lora_rank)], f"lora {cfg}")
        if r is None:
            return 1
        rows.append(r)
    from .local_lora import print_rows
    print_rows(rows, args)
    return 0


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="comfyui-flux2 benchmark local", description=__doc__.splitlines()[0])
    ap.add_argument("--configs", default="tiny,mid", help=f"comma list of {', '.join(CONFIGS)}")
    ap.add_argument("--dtype", default=None, help="fp32 | bf16 | fp16 (default: bf16 on CUDA, fp32 on CPU)")
    ap.add_argument("--device", default=None, help="cpu | cuda (default: cuda if available)")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--rows", default="step,pipeline",
                    help="step: one transformer step (and memory); pipeline: a seed sweep of 8 images, a 3-edit "
                         "chain reusing two references, CFG one forward vs two (tiny and mid configs only); lora: "
                         "step time with no LoRA, a LoRA on the fly, the same LoRA merged (same process); "
                         "comfyui-sweep: the seed sweep against ComfyUI core's graph queued in the provisioned "
                         "ComfyUI 0.3.75 server (tests/comfy_server.py; [dev]-shaped tiny and mid configs); "
                         "quant-plan: planned VRAM / RAM of [dev] and [klein] 9B at 1024x1024 for bf16, fp8mixed, "
                         "NVFP4, GGUF Q8_0 and Q4_K files (header twins, no data); quant-step: CPU step time of "
                         "GGUF Q8_0 / Q4_K against fp32 (same process)")
    ap.add_argument("--sweep", type=int, default=8, help="images in the pipeline rows' seed sweep (>= 2)")
    ap.add_argument("--lora-rank", type=int, default=0,
                    help="lora rows: LoRA rank (default hidden/24, the Turbo LoRA's ratio on [dev])")
    ap.add_argument("--threads", type=int, default=None,
                    help="CPU threads per tool (OMP_NUM_THREADS) for the pipeline and comfyui-sweep rows; default "
                         "1 on the CPU (on a small shared CPU, OpenMP threads waiting for busy cores slow tiny ops "
                         "down many times over), 0: torch's default")
    ap.add_argument("--comfyui", metavar="DIR", help="also time ComfyUI core's FLUX.2 transformer from this ComfyUI "
                                                      "folder (the one with main.py)")
    ap.add_argument("--comfyui-python", metavar="PYTHON", default=None,
                    help="interpreter with ComfyUI's requirements (and diffusers); every row then runs in it "
                         "(default: this one)")
    ap.add_argument("--worker", nargs=2, metavar=("IMPL", "CONFIG"), help=argparse.SUPPRESS)
    return ap


def main(argv: list[str] | None = None, comfyui_builder=None) -> int:
    args = _parser().parse_args(argv)
    if args.worker and args.worker[0] == "comfyui" and comfyui_builder is None:
        print("the comfyui row runs through bench/comfyui_peer.py", file=sys.stderr)
        return 2
    if args.device is None:
        import torch

        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    args.dtype = args.dtype or ("bf16" if args.device.startswith("cuda") else "fp32")
    if args.worker:
        print(json.dumps(_run_worker(args, comfyui_builder)))
        return 0
    problem = _refusal(args)
    if problem:
        print(problem, file=sys.stderr)
        return 2
    return _rows(args, args.comfyui_python or sys.executable)    # one interpreter for every row: like with like


def _run_worker(args, comfyui_builder) -> dict:
    """--worker IMPL CONFIG: one row's numbers, in this process."""
    impl, cfg = args.worker
    if impl == "quant":
        import torch

        from .local_quant import step_worker
        model, _ = _build("ours", cfg, torch.float32, "cpu")
        return step_worker(model, CONFIGS[cfg], cfg, args.reps)
    if impl == "lora":
        from .local_lora import lora_worker
        return lora_worker(cfg, args.dtype, args.device, args.reps, args.lora_rank, _build)
    return _worker(impl, cfg, args.dtype, args.device, args.reps, comfyui_builder)


def _refusal(args) -> str | None:
    """Why these arguments cannot run (one line), or None."""
    if args.comfyui and not (Path(args.comfyui) / "comfy").is_dir():
        return f"--comfyui {args.comfyui}: no ComfyUI there (expected a folder holding comfy/ and main.py)"
    try:
        import diffusers  # noqa: F401
    except ImportError:
        return "benchmark needs diffusers (pip install 'comfyui-flux2[test]')"
    for cfg in args.configs.split(","):
        if cfg not in CONFIGS:
            return f"unknown config {cfg!r}; known: {', '.join(CONFIGS)}"
    if any(k not in ROWS for k in args.rows.split(",")):
        return f"unknown rows {args.rows!r}; known: {', '.join(ROWS)}"
    return None


def _rows(args, python: str) -> int:
    kinds = args.rows.split(",")
    if "step" in kinds and _step_rows(args, python) != 0:
        return 1
    if "lora" in kinds and _lora_rows(args, python) != 0:
        return 1
    if "quant-plan" in kinds:
        from .local_quant import plan_rows, print_plan
        print_plan(plan_rows())
    if "quant-step" in kinds:
        from .local_quant import print_steps
        for cfg in args.configs.split(","):
            r = _run_json([python, "-m", ENGINE_MODULE, "--worker", "quant", cfg, "--reps", str(args.reps)],
                          f"quant {cfg}")
            if r is None:
                return 1
            print_steps(r, args.reps)
    threads = args.threads if args.threads is not None else (1 if args.device == "cpu" else 0)
    if threads and ("pipeline" in kinds or "comfyui-sweep" in kinds):
        os.environ["OMP_NUM_THREADS"] = str(threads)         # the row workers (and the ComfyUI server) inherit it
    if "pipeline" in kinds and _pipeline_rows(args, python) != 0:
        return 1
    if "comfyui-sweep" in kinds:
        return _comfyui_sweep_rows(args, python, threads)
    return 0


def _comfyui_sweep_rows(args, python: str, threads: int) -> int:
    for cfg in (c for c in args.configs.split(",") if c in PIPELINE_CONFIGS):
        out = subprocess.run([python, "-m", COMFY_SWEEP_MODULE, "--config", cfg, "--sweep", str(args.sweep),
                              "--threads", str(threads)],
                             capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
        if out.returncode != 0:
            last = out.stderr.strip().splitlines()[-1] if out.stderr.strip() else out.returncode
            print(f"comfyui-sweep {cfg} failed: {last}", file=sys.stderr)
            return 1
        print("\n".join(out.stdout.strip().splitlines()[:-1]))     # the table; the last line is its JSON
    return 0


def _run_json(cmd: list[str], what: str) -> dict | None:
    out = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    if out.returncode != 0:
        print(f"{what} failed: {out.stderr.strip().splitlines()[-1] if out.stderr else out.returncode}",
              file=sys.stderr)
        return None
    return json.loads(out.stdout.strip().splitlines()[-1]) if out.stdout.strip() else {}


def _pipeline_rows(args, python: str) -> int:
    """Seed sweep, chain and CFG rows (bench/local_pipeline.py), ours and diffusers' pipeline in one run."""
    import tempfile

    import numpy as np

    configs = [c for c in args.configs.split(",") if c in PIPELINE_CONFIGS]
    if not configs:
        return 0
    results = []
    with tempfile.TemporaryDirectory(prefix="flux2-bench-") as tmp:
        for cfg in configs:
            folder = Path(tmp) / cfg
            base = [python, "-m", PIPELINE_MODULE]
            if _run_json(base + ["--build", cfg, str(folder)], f"building the {cfg} pipeline") is None:
                return 1
            pair = {}
            for impl in ("diffusers", "ours"):
                pair[impl] = _run_json(base + ["--worker", impl, cfg, str(folder), "--dtype", args.dtype,
                                               "--device", args.device, "--images", str(folder / f"{impl}.npy"),
                                               "--sweep", str(args.sweep)],
                                       f"{impl} {cfg} pipeline")
                if pair[impl] is None:
                    return 1
            a, b = (np.load(folder / f"{impl}.npy").astype(np.int32) for impl in ("ours", "diffusers"))
            pair["max_diff"] = int(np.abs(a - b).max())
            results.append((cfg, pair))
    print(f"\npipeline rows: device {args.device}, dtype {args.dtype}, OMP_NUM_THREADS "
          f"{os.environ.get('OMP_NUM_THREADS', 'unset')}; seconds; ratios = ours / diffusers")
    print(f"{'config':<8}{'row':<36}{'ours':>10}{'diffusers':>11}{'ratio':>8}")
    for cfg, p in results:
        o, d = p["ours"], p["diffusers"]
        lines = [(f"sweep of {o['sweep_n']}, per image after the 1st", o["sweep_s"], d["sweep_s"]),
                 ("sweep, first image", o["first_s"], d["first_s"]),
                 ("3-edit chain, 2 references reused", o["chain_s"], d["chain_s"]),
                 ("CFG 4.0 per image, one forward", o["cfg_one_forward"], d["cfg_one_forward"]),
                 ("CFG 4.0 per image, two calls", o["cfg_two_calls"], d["cfg_one_forward"])]
        for name, ours, peer in lines:
            print(f"{cfg:<8}{name:<36}{ours:>10.3f}{peer:>11.3f}{ours / peer:>7.2f}x")
        print(f"{cfg:<8}{'CFG one forward / two calls (ours)':<36}{o['cfg_one_forward'] / o['cfg_two_calls']:>28.2f}x")
        print(f"{cfg:<8}sweep images, ours vs diffusers: max difference {p['max_diff']} (8-bit levels)")
    return 0


def _step_rows(args, python: str) -> int:
    rows = []
    for cfg in args.configs.split(","):
        pair = {}
        for impl in ("diffusers", "ours") + (("comfyui",) if args.comfyui else ()):
            module = PEER_MODULE if impl == "comfyui" else ENGINE_MODULE
            cmd = [python, "-m", module, "--worker", impl, cfg, "--dtype", args.dtype, "--device", args.device,
                   "--reps", str(args.reps)] + (["--comfyui", args.comfyui] if impl == "comfyui" else [])
            pair[impl] = _run_json(cmd, f"{impl} {cfg}")
            if pair[impl] is None:
                return 1
        rows.append((cfg, pair))
    kind = rows[0][1]["ours"]["peak_kind"]
    print(f"device {args.device}, dtype {args.dtype}, median of {args.reps} steps; memory = {kind}; "
          f"ratios = ours / peer")
    peers = [p for p in ("diffusers", "comfyui") if p in rows[0][1]]
    head = f"{'config':<14}{'ours s':>10}{'ours MB':>10}"
    for peer in peers:
        head += f"{peer + ' s':>13}{'time':>8}{peer + ' MB':>14}{'mem':>8}"
    print(head)
    for cfg, pair in rows:
        o = pair["ours"]
        line = f"{cfg:<14}{o['step_s']:>10.4f}{o['peak_mb']:>10.1f}"
        for peer in peers:
            d = pair[peer]
            line += (f"{d['step_s']:>13.4f}{o['step_s'] / d['step_s']:>7.2f}x{d['peak_mb']:>14.1f}"
                     f"{o['peak_mb'] / max(d['peak_mb'], 1e-9):>7.2f}x")
        print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
