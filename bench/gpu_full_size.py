"""Full-size rows for one GPU, prepared to run in one go (about 10 minutes on an 80-141 GB card):

    python -m comfyui_flux2.bench.gpu_full_size [--models klein4b,dev] [--json OUT.json]

For [klein] 4B and [dev] transformers with random weights at 1024² (4096 image + 512 text tokens), each row in its own
process: diffusers' Flux2Transformer2DModel in bf16; ours in bf16, with every block Linear kept in fp8
(ScaledFP8Linear, what an fp8 file gives) or GGUF Q8_0 / Q4_K or NVFP4 (bench/gpu_quant.py), and in bf16 under block
offload (offload.py: blocks stream from host RAM through pinned staging buffers on a copy stream, the next block
copied while the current one computes; two blocks on the GPU at most). The random weights of the offload row are held
in RAM (a real run maps them from the files instead: its RAM peak is the staging buffers, not the weights). Per row:
one step (median of 3 forwards), a 4-step Euler loop (one image's denoising at klein's 4 steps), achieved TFLOP/s
against the card's dense bf16 peak (FLOPs counted from the shapes: 2 per multiply-add of every Linear, 4·L²·D per
attention), peak VRAM (allocated) and peak RAM (VmHWM of the process). The text encoder and the VAE are left out:
their full-size random copies alone would not fit the time box.

`--tiny` runs the same code on a few-MB model on the CPU (a test runs it so this script is not dead code).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time

MODELS = ("klein4b", "dev")
# Shapes beyond the released models: [dev] cut to a few blocks at its full width (6144), so one block's time and a
# block-streaming run fit a GPU window; per-block numbers are what the full depth repeats.
CUTS = {"dev-1blk": (1, 1), "dev-6blk": (2, 4)}
IMPLS = ("diffusers-bf16", "ours-bf16", "ours-fp8", "ours-bf16-offload")
# Block weights kept in a stored format and de-quantised per layer as it runs (bench/gpu_quant.py).
QUANT_IMPLS = ("ours-fp8", "ours-gguf-q8_0", "ours-gguf-q4_k", "ours-nvfp4")
# Dense bf16 tensor-core peak, TFLOP/s, from NVIDIA's data sheets (SXM parts; without sparsity).
PEAK_TFLOPS = {"H200": 989.4, "H100": 989.4, "A100": 312.0, "L40S": 362.05}
STEPS = 4
MODULE = __spec__.name if __spec__ else "comfyui_flux2.bench.gpu_full_size"


def params_for(model: str, tiny: bool):
    from dataclasses import replace

    from ..flux2.local.model.params import DEV_T, KLEIN4B_T, KLEIN9B_T

    p = {"klein4b": KLEIN4B_T, "klein9b": KLEIN9B_T}.get(model, DEV_T)
    if model in CUTS:
        p = replace(p, depth_double=CUTS[model][0], depth_single=CUTS[model][1])
    if tiny:
        p = replace(p, hidden=64, heads=2, head_dim=32, depth_double=1, depth_single=2, context_dim=96,
                    mlp_hidden=192, axes_dim=(8, 8, 8, 8))
    return p


def size_for(tiny: bool) -> int:
    return 128 if tiny else 1024


def forward_flops(p, image_tokens: int, text_tokens: int) -> float:
    """Multiply-adds x 2 of one transformer forward (batch 1), attention included; embedders and modulation
    (a few M multiply-adds) left out."""
    D, F, L = p.hidden, p.mlp_hidden, image_tokens + text_tokens
    stream = D * 3 * D + D * D + D * 2 * F + F * D                # qkv, proj, mlp in (gate|up), mlp out
    double = stream * L + 4 * L * L * D / 2                       # both streams together see L tokens
    single = (D * (3 * D + 2 * F) + (D + F) * D) * L + 4 * L * L * D / 2
    io = p.context_dim * D * text_tokens + 128 * D * image_tokens * 2
    return 2.0 * (p.depth_double * double + p.depth_single * single + io)


def _peak_ram_gib() -> float:
    with open("/proc/self/status") as f:
        return int(re.search(r"VmHWM:\s+(\d+)", f.read()).group(1)) / 2**20


def worker(model: str, impl: str, device: str, tiny: bool) -> dict:
    import torch

    from ..flux2.local.model.sampling import image_ids, text_ids

    p = params_for(model, tiny)
    size = size_for(tiny)
    dtype = torch.float32 if tiny and device == "cpu" else torch.bfloat16
    cuda = device.startswith("cuda")
    Li, Lt = (size // 16) ** 2, 512
    g = torch.Generator().manual_seed(1)
    img = torch.randn(1, Li, 128, generator=g).to(device, dtype)
    txt = torch.randn(1, Lt, p.context_dim, generator=g).to(device, dtype)
    iid, tid = image_ids(size // 16, size // 16).to(device), text_ids(Lt).to(device)
    guidance = torch.tensor([4.0], device=device) if p.guidance_embed else None
    t0 = time.perf_counter()
    forward = _forward(impl, p, device, dtype, (txt, iid, tid, guidance))
    build_s = time.perf_counter() - t0
    step_s, loop_s, finite = _timed(forward, img, device)
    flops = forward_flops(p, Li, Lt)
    return {"model": model, "impl": impl, "build_s": build_s, "step_s": step_s, "loop4_s": loop_s, "finite": finite,
            "tflops": flops / step_s / 1e12, "flop_per_step": flops,
            "vram_peak_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else None,
            "ram_peak_gib": _peak_ram_gib()}


def _forward(impl: str, p, device: str, dtype, inputs: tuple):
    """The row's transformer with random weights -> forward(x [1, Li, 128], t [1]) -> velocity [1, Li, 128].
    inputs: (text [1, Lt, C], image ids, text ids, guidance [1] or None)."""
    import torch

    from .gpu_random import built_random

    txt, iid, tid, guidance = inputs
    if impl.startswith("diffusers"):
        from diffusers import Flux2Transformer2DModel

        model_ = built_random(lambda: Flux2Transformer2DModel(
            in_channels=128, num_layers=p.depth_double, num_single_layers=p.depth_single,
            attention_head_dim=p.head_dim, num_attention_heads=p.heads, joint_attention_dim=p.context_dim,
            axes_dims_rope=tuple(p.axes_dim), rope_theta=p.theta, guidance_embeds=p.guidance_embed,
            timestep_guidance_channels=256, mlp_ratio=p.mlp_hidden / p.hidden), device, dtype)

        def forward(x, t):
            return model_(hidden_states=x, encoder_hidden_states=txt, timestep=t, img_ids=iid, txt_ids=tid,
                          guidance=guidance, return_dict=False)[0]
        return forward
    from ..flux2.local.model.transformer import Flux2Transformer
    from ..flux2.local.offload import offload_transformer

    model_ = built_random(lambda: Flux2Transformer(p), device, dtype)
    if impl in QUANT_IMPLS:
        from .gpu_quant import quantize_blocks

        quantize_blocks(model_, impl.removeprefix("ours-"), dtype)
        if device.startswith("cuda"):
            torch.cuda.empty_cache()                  # the bf16 weights it replaced
    # offload: made on the device (fast), then held in host RAM; on the CPU (--tiny) the same code runs
    if impl.endswith("offload"):
        model_.to("cpu")
        if device.startswith("cuda"):
            torch.cuda.empty_cache()
        offload_transformer(model_, torch.device(device))

    def forward(x, t):
        return model_(x, iid, txt, tid, t, guidance)
    return forward


def _timed(forward, img, device: str) -> tuple[float, float, bool]:
    """-> (one step: median of 3 forwards after a warm-up, a STEPS-step Euler loop, seconds; whether the loop's
    latent is finite: a row timing NaNs says so); CUDA peak memory statistics restarted after the warm-up."""
    import torch

    from ..flux2.local.model.sampling import euler_step

    cuda = device.startswith("cuda")
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    with torch.no_grad():
        forward(img, torch.tensor([1.0], device=device))                # warm-up
        sync()
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        times = []
        for _ in range(3):
            t0 = time.perf_counter()
            forward(img, torch.tensor([0.5], device=device))
            sync()
            times.append(time.perf_counter() - t0)
        sig = torch.linspace(1.0, 0.0, STEPS + 1)
        x = img.clone()
        t0 = time.perf_counter()
        for i in range(STEPS):
            v = forward(x, sig[i:i + 1].to(device))
            x = euler_step(x, v, sig[i].to(device), sig[i + 1].to(device))
        sync()
        loop_s = time.perf_counter() - t0
    times.sort()
    return times[1], loop_s, bool(torch.isfinite(x).all())


def _peak(device: str) -> tuple[str, float | None]:
    import torch

    if not device.startswith("cuda"):
        return "cpu", None
    name = torch.cuda.get_device_name(0)
    return name, next((v for k, v in PEAK_TFLOPS.items() if k in name), None)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m comfyui_flux2.bench.gpu_full_size", description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--impls", default=",".join(IMPLS))
    ap.add_argument("--device", default=None)
    ap.add_argument("--tiny", action="store_true", help="a few-MB model (CPU check of this script)")
    ap.add_argument("--json", default=None, help="also write the rows here")
    ap.add_argument("--timeout", type=float, default=240.0, help="seconds per row")
    ap.add_argument("--worker", nargs=2, metavar=("MODEL", "IMPL"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.device is None:
        import torch

        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.worker:
        print(json.dumps(worker(args.worker[0], args.worker[1], args.device, args.tiny)))
        return 0
    name, peak = _peak(args.device)
    rows = []
    for model in args.models.split(","):
        for impl in args.impls.split(","):
            cmd = [sys.executable, "-m", MODULE, "--worker", model, impl, "--device", args.device] + \
                  (["--tiny"] if args.tiny else [])
            try:
                out = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout,
                                     env={**os.environ, "PYTHONWARNINGS": "ignore"})
            except subprocess.TimeoutExpired:
                rows.append({"model": model, "impl": impl, "error": f"over {args.timeout:g} s"})
                continue
            if out.returncode != 0:
                last = out.stderr.strip().splitlines()[-1] if out.stderr.strip() else f"exit {out.returncode}"
                rows.append({"model": model, "impl": impl, "error": last})
                continue
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    size = size_for(args.tiny)
    print(f"{name}, {size}², batch 1, random weights; peak bf16 {peak or '?'} TFLOP/s; ratios = row / diffusers-bf16")
    print("| model | row | 1 step | vs diffusers | 4-step loop | TFLOP/s | % of peak | VRAM peak | RAM peak |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        if "error" in r:
            print(f"| {r['model']} | {r['impl']} | failed: {r['error']} | | | | | | |")
            continue
        ref = next((x for x in rows if x["model"] == r["model"] and x["impl"] == "diffusers-bf16" and "step_s" in x),
                   None)
        ratio = f"{r['step_s'] / ref['step_s']:.2f}×" if ref else "—"
        pct = f"{100 * r['tflops'] / peak:.0f} %" if peak else "—"
        vram = f"{r['vram_peak_gib']:.1f} GiB" if r["vram_peak_gib"] is not None else "—"
        print(f"| {r['model']} | {r['impl']} | {r['step_s']:.3f} s | {ratio} | {r['loop4_s']:.3f} s | "
              f"{r['tflops']:.1f} | {pct} | {vram} | {r['ram_peak_gib']:.1f} GiB |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": name, "peak_tflops": peak, "size": size, "rows": rows}, f, indent=1)
    return 1 if any("error" in r for r in rows) else 0


if __name__ == "__main__":
    raise SystemExit(main())
