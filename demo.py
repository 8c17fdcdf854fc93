"""A local FLUX.2 demo that needs no download and no diffusers: a tiny random [klein] built with this engine.

`write_tiny_models(folder)` saves a ComfyUI-style models dir (diffusion_models/, text_encoders/, vae/); the text
encoder is a single file with no tokenizer beside it (the bundled Qwen3 tokenizer is used, as for real klein
files). `run_local_demo(output_dir, models_dir)` loads it through the normal path (models_dir.resolve ->
LocalBackend -> flux2.backend.run) and renders a 64x64 text-to-image and a 64x64 edit on the CPU in seconds.

The tiny sizes are not one of the node's presets: the demo passes its own `ModelPreset` to LocalBackend
(`preset=`), which checks the weights against it exactly as the real presets check real files.
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch

from .flux2.local.model.params import ModelPreset, tiny_preset

DEMO_PRESET: ModelPreset = replace(tiny_preset("klein", True), name="FLUX.2 [klein] tiny (demo)")
FILES = {
    "diffusion_models": "flux2-klein-tiny-demo.safetensors",
    "text_encoders": "qwen3-tiny-demo.safetensors",
    "vae": "flux2-vae-tiny-demo.safetensors",
}
T2I_PROMPT = "a red fox in the snow, watercolor"
EDIT_PROMPT = "make it night, add a full moon"


def _random_state(preset: ModelPreset, seed: int = 0) -> dict[str, dict[str, torch.Tensor]]:
    from .flux2.local.model.autoencoder import AutoencoderFlux2
    from .flux2.local.model.text_encoder import TextEncoder
    from .flux2.local.model.transformer import Flux2Transformer

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        tr = Flux2Transformer(preset.transformer)
        te = TextEncoder(preset.text_encoder)
        vae = AutoencoderFlux2(preset.vae)
        with torch.no_grad():
            tr.img_in.weight.mul_(0.03)           # let the text matter more than the noise in a random model
            for n, p in tr.named_parameters():
                if n.endswith(("query_norm.scale", "key_norm.scale")):
                    p.mul_(1.5)
            g = torch.Generator().manual_seed(seed + 1)
            vae.bn.running_mean.copy_(0.2 * torch.randn(vae.bn.running_mean.shape, generator=g))
            vae.bn.running_var.copy_(0.5 + torch.rand(vae.bn.running_var.shape, generator=g))
    return {
        # ComfyUI / BFL layout for the transformer, Hugging Face keys for the text encoder, diffusers keys for the VAE
        "diffusion_models": {"model.diffusion_model." + k: v for k, v in tr.state_dict().items()},
        "text_encoders": {"model." + k: v for k, v in te.state_dict().items()},
        "vae": dict(vae.state_dict()),
    }


def write_tiny_models(folder: str | Path, seed: int = 0) -> Path:
    """Write the tiny random klein into `folder` (a models root); returns the folder. ~11 MB, bf16 files."""
    from safetensors.torch import save_file

    root = Path(folder)
    for kind, sd in _random_state(DEMO_PRESET, seed).items():
        (root / kind).mkdir(parents=True, exist_ok=True)
        tensors = {k: (v.to(torch.bfloat16) if v.is_floating_point() and not k.startswith("bn.") else v).contiguous()
                   for k, v in sd.items()}
        save_file(tensors, str(root / kind / FILES[kind]), metadata={"comfyui_flux2": "tiny random demo model"})
    return root


def demo_backend(models_dir: str | Path, steps: int = 0):
    """LocalBackend for the tiny demo model in `models_dir` (written first if missing), resolved as the CLI does."""
    from .flux2.local.weights import models_dir as md
    from .flux2.local.backend import LocalBackend, LocalFiles

    root = Path(models_dir)
    if not all((root / kind / name).is_file() for kind, name in FILES.items()):
        write_tiny_models(root)
    root = md.models_root(root)
    files = LocalFiles(**{attr: md.resolve(FILES[kind], kind, root) for attr, kind in
                          (("transformer", "diffusion_models"), ("text_encoder", "text_encoders"), ("vae", "vae"))})
    return LocalBackend(DEMO_PRESET.name, files, dtype="fp32", device="cpu", steps=steps, preset=DEMO_PRESET)


def run_local_demo(output_dir: str | Path, models_dir: str | Path, seed: int = 0) -> list[Path]:
    """64x64 text-to-image, then a 64x64 edit of it, with the tiny random klein on the CPU. -> the two PNGs."""
    from .flux2.backend import GenerationRequest, run
    from .flux2.images import encode, ref_from_array
    from .flux2.run_context import RunContext

    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    backend = demo_backend(models_dir)
    ctx = RunContext()
    t2i = run(backend, GenerationRequest(T2I_PROMPT, 64, 64, seed), ctx).images[0]
    edit = run(backend, GenerationRequest(EDIT_PROMPT, 64, 64, seed + 1, references=(ref_from_array(t2i),)),
               ctx).images[0]
    paths = [out / "flux2-local-demo-t2i.png", out / "flux2-local-demo-edit.png"]
    for path, img in zip(paths, (t2i, edit)):
        path.write_bytes(encode(img, "PNG"))
    return paths
