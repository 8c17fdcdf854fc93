"""Random FLUX.2 [klein]-architecture models written to disk in ComfyUI's single-file layout, and a child process
that generates with one under a given offload mode and reports its anonymous memory (test_offload.py).

The files follow what ComfyUI 0.3.75 loads: `diffusion_models/` with the `model.diffusion_model.` prefix (BFL key
names; fp8: block Linear weights float8_e4m3fn with a float32 scalar `weight_scale`, as ComfyUI's fp8 files), a
Hugging Face Qwen3 text encoder with the `model.` prefix, a diffusers-named VAE. Weights are our own random ones.

    python mapped.py MODELS_DIR OFFLOAD OUT.npy     (child: prints one JSON line)
"""
from __future__ import annotations

import json
import re
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import torch

FILES = {"diffusion_models": "flux2-mapped.safetensors", "text_encoders": "qwen3-mapped.safetensors",
         "vae": "flux2-vae-mapped.safetensors"}
# A mid-size model: hidden 1024 (8 heads of 128), 6 double + 12 single blocks, ~700 MB in bf16; the text encoder
# and VAE are tiny so the transformer's blocks are most of the bytes, as in the real models.
MID = dict(hidden=1024, heads=8, depth_double=6, depth_single=12)
PROMPT = "a lighthouse on a cliff at dusk"


def preset(**sizes):
    from comfyui_flux2.flux2.local.model.params import tiny_preset

    return replace(tiny_preset("klein", True, **sizes), name="FLUX.2 [klein] mapped test")


def write_models(root: Path, p, *, fp8_blocks: bool = False, seed: int = 0) -> Path:
    """Random weights for preset `p` in `root` (a models folder); bf16 files, fp8 block Linears if asked."""
    from safetensors.torch import save_file

    from comfyui_flux2.demo import _random_state

    block_linear = re.compile(r"^model\.diffusion_model\.(double|single)_blocks\.\d+\..*\.weight$")
    for kind, sd in _random_state(p, seed).items():
        out = {}
        for k, v in sd.items():
            v = v.detach()
            if fp8_blocks and v.ndim == 2 and block_linear.match(k):
                scale = (v.float().abs().amax() / 448.0).to(torch.float32)
                out[k] = (v.float() / scale).clamp(-448, 448).to(torch.float8_e4m3fn)
                out[k[: -len("weight")] + "weight_scale"] = scale
            elif v.is_floating_point() and not k.startswith("bn."):
                out[k] = v.to(torch.bfloat16).contiguous()
            else:
                out[k] = v.contiguous()
        (root / kind).mkdir(parents=True, exist_ok=True)
        save_file(out, str(root / kind / FILES[kind]))
    return root


def backend(root: Path, p, offload: str, dtype: str = "fp32", steps: int = 1):
    from comfyui_flux2.flux2.local.backend import LocalBackend, LocalFiles

    files = LocalFiles(transformer=root / "diffusion_models" / FILES["diffusion_models"],
                       text_encoder=root / "text_encoders" / FILES["text_encoders"], vae=root / "vae" / FILES["vae"])
    return LocalBackend(p.name, files, dtype=dtype, device="cpu", steps=steps, offload=offload, preset=p)


def weights_bytes(root: Path) -> int:
    return sum((root / kind / name).stat().st_size for kind, name in FILES.items())


def rss_anon_kib() -> int:
    with open("/proc/self/status") as f:
        return int(re.search(r"RssAnon:\s+(\d+)", f.read()).group(1))


class AnonPeak:
    """Peak RssAnon (anonymous resident memory: what the page cache of mapped files is not) sampled every ms
    by a thread; torch's kernels release the GIL, so it samples while they run."""

    def __init__(self):
        self.peak = rss_anon_kib()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_anon_kib())
            time.sleep(0.001)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_anon_kib())


def child(root: Path, offload: str, out: Path) -> dict:
    import gc

    import numpy as np

    from comfyui_flux2.flux2.backend import GenerationRequest
    from comfyui_flux2.flux2.local import pipeline  # noqa: F401  (imports done before the baseline)
    from comfyui_flux2.flux2.run_context import RunContext

    from comfyui_flux2.flux2.local.backend import clear_cache

    req = GenerationRequest(PROMPT, 64, 64, seed=3)
    # Warm-up on a tiny model of the same kind: what does not scale with the weights (lazy imports, the bundled
    # tokenizer's vocabulary, kernel set-up) is in the baseline, so the growth measured is the model's.
    tiny = preset()
    backend(write_models(root / "warm-up", tiny), tiny, offload).generate(req, RunContext())
    clear_cache()
    p = preset(**MID)
    b = backend(root, p, offload)
    gc.collect()
    base = rss_anon_kib()
    t0 = time.perf_counter()
    with AnonPeak() as peak:
        images = b.generate(req, RunContext()).images
    np.save(out, images[0])
    plan = b.memory_plan(req)
    return {"offload": offload, "plan_ram_mib": plan.ram / 2**20, "anon_base_mib": base / 1024, "anon_peak_mib": peak.peak / 1024,
            "anon_growth_mib": (peak.peak - base) / 1024, "weights_mib": weights_bytes(root) / 2**20,
            "seconds": time.perf_counter() - t0}


if __name__ == "__main__":
    print(json.dumps(child(Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3]))))
