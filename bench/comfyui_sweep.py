"""Seed-sweep row against ComfyUI core's graph: the FLUX.2 graph queued 8 times in a real ComfyUI server vs this
engine generating the same 8 images, on the same weights (files in ComfyUI's layout), same size, steps, guidance,
device and dtype (float32), one run.

ComfyUI 0.3.75 runs FLUX.2 [dev] only (Mistral text encoder, guidance embedding), so this row uses a [dev]-shaped
config, unlike the [klein]-shaped diffusers rows. Its loaders fix the real [dev] sizes, so the server loads the
files through a benchmark-only node built from its own classes (bench/comfy_nodes/flux2_bench_models). The graph
is the one ComfyUI's FLUX.2 template wires: CLIPTextEncode -> FluxGuidance -> BasicGuider, EmptyFlux2LatentImage,
RandomNoise (seed 0..7), KSamplerSelect euler, Flux2Scheduler -> SamplerCustomAdvanced -> VAEDecode -> SaveImage;
between queued prompts ComfyUI's cache keeps the loaded models and the encoded prompt, so only sampling, decoding
and saving run again. Per image: ComfyUI's own execution_start -> execution_success timestamps for each prompt;
ours: wall time of each `Flux2Engine.generate` call. Tokenizers: ours reads Mistral's Tekken table
(mistral-common's `tekken_240911` with the special-token list [dev] files carry) embedded in the text-encoder file as
ComfyUI's [dev] files embed it; ComfyUI 0.3.75's own Tekken reader fails with the installed transformers, so the
server tokenizes with ComfyUI's shipped Qwen2.5 BPE under Mistral3Tokenizer's settings (the node's docstring).
ComfyUI does not pad the prompt (its FLUX.2 tokenizer has min_length 1: ~60 tokens with the system prompt), while
this engine pads to 512 as BFL's reference and diffusers do, so each of its steps attends over more text tokens.

    python -m comfyui_flux2.bench.comfyui_sweep [--config tiny|mid] [--sweep 8]

The server is started with tests/comfy_server.py (provisioned ComfyUI 0.3.75 and its interpreter).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
NODES = Path(__file__).resolve().parent / "comfy_nodes" / "flux2_bench_models"
# transformer hidden, heads, double, single; text hidden, intermediate; VAE width; image side; steps
CONFIGS = {
    "tiny": dict(hidden=64, heads=2, depth_double=2, depth_single=2, text_hidden=32, text_inter=64, vae_ch=32,
                 size=128, steps=4),
    "mid": dict(hidden=1024, heads=8, depth_double=2, depth_single=4, text_hidden=256, text_inter=768, vae_ch=64,
                size=256, steps=4),
}
PROMPT = "a lighthouse on a cliff at dawn, oil painting"
GUIDANCE = 4.0
VOCAB = 151936          # covers the ids of both tokenizers (Tekken < 131072; the server's Qwen2.5 BPE < 151936)
MODULE = __spec__.name if __spec__ else "comfyui_flux2.bench.comfyui_sweep"


def comfy_config(cfg: str) -> dict:
    c = dict(CONFIGS[cfg])
    hd = c["hidden"] // c["heads"]
    q = hd // 4
    c.update(axes=[q, q, q, hd - 3 * q], vocab=VOCAB)
    return c


def preset_for(cfg: str):
    """Our preset of the same model: tiny [dev] at these sizes; the text encoder as ComfyUI's Mistral3Small24B
    builds it (head_dim fixed at 128, 2 heads, 1 KV head, 31 layers of which FLUX.2 reads up to 30)."""
    from ..flux2.local.model.params import VAEParams, tiny_preset

    c = CONFIGS[cfg]
    p = tiny_preset("dev", hidden=c["hidden"], heads=c["heads"], depth_double=c["depth_double"],
                    depth_single=c["depth_single"], text_hidden=c["text_hidden"], vae_block_out=(c["vae_ch"],) * 4)
    te = replace(p.text_encoder, heads=2, kv_heads=1, head_dim=128, intermediate=c["text_inter"],
                 rope_theta=1000000000.0, rms_eps=1e-5)
    return replace(p, name=f"FLUX.2 [dev] {cfg} (benchmark)", text_encoder=te,
                   vae=VAEParams(block_out=(c["vae_ch"],) * 4, layers_per_block=1, groups=min(32, c["vae_ch"])))


def tekken_with_specials(out: Path) -> Path:
    """mistral-common's tekken_240911 (Mistral Small 3.x's rank table) with the `special_tokens` list that
    ComfyUI's [dev] text-encoder files carry (ComfyUI's reader needs it): Mistral's control tokens at their ids,
    the rest of the 1000 special ranks as <SPECIAL_i>."""
    import mistral_common

    data = json.loads((Path(mistral_common.__file__).parent / "data" / "tekken_240911.json").read_text())
    named = {0: "<unk>", 1: "<s>", 2: "</s>", 3: "[INST]", 4: "[/INST]", 11: "<pad>", 17: "[SYSTEM_PROMPT]",
             18: "[/SYSTEM_PROMPT]"}
    n = data["config"]["default_num_special_tokens"]
    data["special_tokens"] = [{"rank": i, "token_str": named.get(i, f"<SPECIAL_{i}>"), "is_control": True}
                              for i in range(n)]
    data.pop("image", None)
    out.write_text(json.dumps(data))
    return out


def _comfy_build(comfy_dir: str, cfg: str, root: str, tekken: str) -> None:
    """In ComfyUI's interpreter: ComfyUI's classes, random weights, saved in ComfyUI's layout."""
    sys.path.insert(0, comfy_dir)
    import comfy.cli_args

    comfy.cli_args.args.cpu = True
    sys.path.insert(0, str(NODES.parent))
    import flux2_bench_models

    flux2_bench_models.build_and_save(comfy_config(cfg), root, tekken)


def graph(root: Path, cfg: str, seed: int) -> dict:
    c = CONFIGS[cfg]
    size, steps = c["size"], c["steps"]
    return {
        "m": {"class_type": "Flux2BenchFileModels",
              "inputs": {"folder": str(root), "config": json.dumps(comfy_config(cfg))}},
        "enc": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["m", 1], "text": PROMPT}},
        "cond": {"class_type": "FluxGuidance", "inputs": {"conditioning": ["enc", 0], "guidance": GUIDANCE}},
        "guider": {"class_type": "BasicGuider", "inputs": {"model": ["m", 0], "conditioning": ["cond", 0]}},
        "lat": {"class_type": "EmptyFlux2LatentImage", "inputs": {"width": size, "height": size, "batch_size": 1}},
        "sig": {"class_type": "Flux2Scheduler", "inputs": {"steps": steps, "width": size, "height": size}},
        "smp": {"class_type": "KSamplerSelect", "inputs": {"sampler_name": "euler"}},
        "noise": {"class_type": "RandomNoise", "inputs": {"noise_seed": seed}},
        "sca": {"class_type": "SamplerCustomAdvanced",
                "inputs": {"noise": ["noise", 0], "guider": ["guider", 0], "sampler": ["smp", 0], "sigmas": ["sig", 0],
                           "latent_image": ["lat", 0]}},
        "dec": {"class_type": "VAEDecode", "inputs": {"samples": ["sca", 0], "vae": ["m", 2]}},
        "save": {"class_type": "SaveImage", "inputs": {"images": ["dec", 0], "filename_prefix": f"sweep{seed}"}},
    }


def _execution_seconds(history: dict) -> float:
    stamps = {name: data["timestamp"] for name, data in history["status"]["messages"]
              if name in ("execution_start", "execution_success")}
    return (stamps["execution_success"] - stamps["execution_start"]) / 1000.0


def run_comfyui(root: Path, cfg: str, n: int) -> dict:
    sys.path.insert(0, str(REPO / "tests"))
    from comfy_server import queue_prompt, start_server, wait_for_history

    threads = os.environ.get("OMP_NUM_THREADS")
    server = start_server(custom_nodes={"flux2_bench_models": NODES}, extra_args=["--cpu"], timeout=300,
                          env={"OMP_NUM_THREADS": threads} if threads else None)
    try:
        times = []
        for seed in range(n):             # queued one after another, as a user queues a sweep
            pid = queue_prompt(server, graph(root, cfg, seed))
            times.append(_execution_seconds(wait_for_history(server, pid, timeout=1800)))
    finally:
        server.stop()
    return {"impl": "comfyui", "first_s": times[0], "sweep_s": sum(times[1:]) / (n - 1), "times": times}


def run_ours(root: Path, cfg: str, n: int) -> dict:
    import torch

    from ..flux2.local.weights.loading import load_modules
    from ..flux2.local.pipeline import Flux2Engine

    c = CONFIGS[cfg]
    kinds = {"diffusion_models": "flux2-bench.safetensors", "text_encoders": "mistral-bench.safetensors",
             "vae": "flux2-vae-bench.safetensors"}
    times = []
    with torch.no_grad():
        t0 = time.perf_counter()
        eng = Flux2Engine(load_modules(preset_for(cfg), transformer=root / "diffusion_models" / kinds["diffusion_models"],
                                       text_encoder=root / "text_encoders" / kinds["text_encoders"],
                                       vae=root / "vae" / kinds["vae"], dtype=torch.float32, device="cpu"))
        load_s = time.perf_counter() - t0
        for seed in range(n):
            t0 = time.perf_counter()
            eng.generate(PROMPT, c["size"], c["size"], [seed], c["steps"], GUIDANCE)
            times.append(time.perf_counter() - t0)
    return {"impl": "ours", "load_s": load_s, "first_s": times[0], "sweep_s": sum(times[1:]) / (n - 1),
            "times": times}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m comfyui_flux2.bench.comfyui_sweep", description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="tiny", choices=sorted(CONFIGS))
    ap.add_argument("--sweep", type=int, default=8)
    ap.add_argument("--threads", type=int, default=1,
                    help="CPU threads for both tools (OMP_NUM_THREADS; 0: torch's default). On a small shared CPU "
                         "OpenMP threads that wait for busy cores slow tiny ops down many times over")
    ap.add_argument("--build", nargs=4, metavar=("COMFY_DIR", "CONFIG", "ROOT", "TEKKEN"), help=argparse.SUPPRESS)
    ap.add_argument("--ours", nargs=2, metavar=("CONFIG", "ROOT"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.build:
        _comfy_build(*args.build)
        return 0
    if args.ours:
        print(json.dumps(run_ours(Path(args.ours[1]), args.ours[0], args.sweep)))
        return 0
    if args.threads:
        os.environ["OMP_NUM_THREADS"] = str(args.threads)      # ours, the server and the build inherit it
    sys.path.insert(0, str(REPO / "tests"))
    from comfy_server import provision

    inst = provision()
    n = max(2, args.sweep)
    with tempfile.TemporaryDirectory(prefix="flux2-comfy-sweep-") as tmp:
        root = Path(tmp) / "models"
        tekken = tekken_with_specials(Path(tmp) / "tekken.json")
        subprocess.run([str(inst.python), "-m", MODULE, "--build", str(inst.comfy_dir), args.config, str(root),
                        str(tekken)], check=True, cwd=str(inst.comfy_dir))
        ours = subprocess.run([sys.executable, "-m", MODULE, "--ours", args.config, str(root), "--sweep", str(n)],
                              capture_output=True, text=True)
        if ours.returncode != 0:
            print(f"ours failed: {ours.stderr.strip().splitlines()[-1]}", file=sys.stderr)
            return 1
        o = json.loads(ours.stdout.strip().splitlines()[-1])
        cu = run_comfyui(root, args.config, n)
    c = CONFIGS[args.config]
    print(f"\nComfyUI core sweep row: [dev]-shaped {args.config} config (hidden {c['hidden']}, "
          f"{c['depth_double']}+{c['depth_single']} blocks), {c['size']}², {c['steps']} steps, guidance {GUIDANCE:g}, "
          f"fp32, CPU, {args.threads or 'default'} thread(s); seconds; ratio = ours / ComfyUI")
    print(f"{'row':<40}{'ours':>10}{'ComfyUI':>10}{'ratio':>8}")
    for name, key in ((f"sweep of {n}, per image after the 1st", "sweep_s"), ("sweep, first image", "first_s")):
        print(f"{name:<40}{o[key]:>10.3f}{cu[key]:>10.3f}{o[key] / cu[key]:>7.2f}x")
    print(json.dumps({"ours": o, "comfyui": cu}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
