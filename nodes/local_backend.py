"""Flux2LocalBackend: FLUX.2 [klein] / [dev] on local weights; outputs a backend for the generation nodes.

No ComfyUI import at module level: inside ComfyUI the file lists come from `folder_paths` (imported lazily),
outside (headless runner, tests) from FLUX2_MODELS_DIR.
"""
from __future__ import annotations

import logging

from ..flux2.errors import ConfigError, InputError
from ..flux2.local.weights.detect import AUTO
from ..flux2.local.model.params import PRESETS
from .comfy_hooks import folder_paths, free_comfy_memory
from .common import BackendNode

log = logging.getLogger("comfyui_flux2")
NONE = "(none)"
FROM_DIFFUSERS = "(from diffusers folder)"
_COMFY_KINDS = {"diffusion_models": ("diffusion_models", "unet"), "text_encoders": ("text_encoders", "clip"),
                "vae": ("vae",)}


def _models_root():
    from ..flux2.local.weights.models_dir import models_root
    try:
        return models_root()
    except ConfigError:
        return None


def _list(kind: str) -> list[str]:
    fp = folder_paths()
    names: list[str] = []
    if fp is not None and kind != "diffusers":
        for folder in _COMFY_KINDS[kind]:
            try:
                names += fp.get_filename_list(folder)
                if kind in ("diffusion_models", "text_encoders"):
                    names += _gguf_names(fp, folder)
            except KeyError:    # a folder this ComfyUI version does not know
                log.debug("ComfyUI has no %r model folder; listing the others", folder)
            except OSError as exc:  # a model folder unreadable, or removed while ComfyUI lists it
                log.warning("cannot list ComfyUI's %r model folder: %s", folder, exc)
    root = _models_root() if fp is None or kind == "diffusers" else None
    if fp is not None and kind == "diffusers":
        base = getattr(fp, "models_dir", None)
        if base:
            from pathlib import Path
            root = Path(base)
    if root is not None:
        from ..flux2.local.weights.models_dir import list_files
        names += list_files(kind, root)
    return sorted(set(names))


def _gguf_names(fp, folder: str) -> list[str]:
    """.gguf files under a ComfyUI model folder: ComfyUI lists only its own extensions (.gguf only where
    ComfyUI-GGUF registered it), and get_full_path resolves any name inside the folder."""
    from pathlib import Path

    out = []
    for base in fp.get_folder_paths(folder):
        b = Path(base)
        if b.is_dir():
            out += [p.relative_to(b).as_posix() for p in b.rglob("*.gguf") if p.is_file()]
    return out


def _resolve(name: str, kind: str):
    """Widget value -> full path; names never leave the models directory."""
    from pathlib import Path

    from ..flux2.local.weights.models_dir import resolve

    fp = folder_paths()
    if fp is not None and kind != "diffusers":
        for folder in _COMFY_KINDS[kind]:
            full = fp.get_full_path(folder, name)   # None for a folder it does not know; refuses traversal itself
            if full:
                return Path(full)
    if fp is not None and kind == "diffusers" and hasattr(fp, "models_dir"):
        return resolve(name, kind, Path(fp.models_dir).resolve())
    from ..flux2.local.weights.models_dir import models_root
    return resolve(name, kind, models_root())


class Flux2LocalBackend(BackendNode):
    DESCRIPTION = ("FLUX.2 on local weights ([klein] 4B/9B, Base, [dev]). Same-seed images match diffusers' FLUX.2 "
                   "pipelines. Swap this node for Flux2RemoteBackend to run the same graph on a provider.")

    @classmethod
    def INPUT_TYPES(cls):
        diffusion = [NONE] + _list("diffusion_models")
        te = [FROM_DIFFUSERS] + _list("text_encoders")
        vae = [FROM_DIFFUSERS] + _list("vae")
        diffusers = [NONE] + _list("diffusers")
        return {"required": {
            "model": ([AUTO] + list(PRESETS), {"default": AUTO,
                      "tooltip": "auto: family, size and [klein] distilled / Base are read from the files (the dry "
                                 "run prints what was detected). A named model asserts that size and gives its "
                                 "defaults: [klein] 4B/9B: 4 steps, no guidance. Base: ~50 steps with real CFG. "
                                 "[dev]: 32B, embedded guidance, ~28-50 steps."}),
            "diffusion_model": (diffusion, {"default": diffusion[0],
                                "tooltip": "Transformer weights in models/diffusion_models (BFL/ComfyUI single file, "
                                           "bf16, fp8, NVFP4 or a ComfyUI-GGUF .gguf). (none): take it from the "
                                           "diffusers folder."}),
            "text_encoder": (te, {"default": te[0],
                             "tooltip": "Qwen3 (klein) or Mistral Small 3.2 (dev) in models/text_encoders "
                                        "(safetensors, or a llama.cpp .gguf: qwen3 / llama). klein uses the bundled "
                                        "Qwen3 tokenizer; a tokenizer.json beside the file as <name>.tokenizer.json "
                                        "wins (a Mistral .gguf needs one)."}),
            "vae": (vae, {"default": vae[0], "tooltip": "The FLUX.2 VAE (32 latent channels) in models/vae."}),
            "diffusers_folder": (diffusers, {"default": diffusers[0],
                                 "tooltip": "A diffusers FLUX.2 folder (with model_index.json) under models/diffusers; "
                                            "single files chosen above override its parts."}),
            "dtype": (["bf16", "fp16", "fp32"], {"default": "bf16",
                      "tooltip": "Compute dtype. bf16 on recent GPUs; fp32 on CPU for exact parity tests."}),
            "device": (["auto", "cpu", "cuda"], {"default": "auto",
                       "tooltip": "auto: CUDA if available, else Apple MPS, else CPU."}),
            "steps": ("INT", {"default": 0, "min": 0, "max": 200,
                      "tooltip": "0 = the model's default (klein 4, Base 50, dev 28)."}),
            "guidance": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 20.0, "step": 0.1,
                         "tooltip": "0 = the model's default (Base and dev 4.0). Ignored by distilled klein."}),
            "offload": (["none", "blocks"], {"default": "none",
                        "tooltip": "blocks: keep weights in RAM and stream transformer blocks to the GPU "
                                   "(slower, for [dev] on 24 GB cards)."}),
            "vae_tiling": (["auto", "on", "off"], {"default": "auto",
                           "tooltip": "Decode the image in overlapping tiles to bound GPU memory. auto: above "
                                      "2 MP on a GPU (4 MP outputs on small cards)."}),
        }}

    def build(self, model, diffusion_model, text_encoder, vae, diffusers_folder, dtype, device, steps, guidance,
              offload, vae_tiling="auto"):
        from ..flux2.local.backend import LocalBackend, LocalFiles

        d = None if diffusers_folder in (NONE, "", None) else _resolve(diffusers_folder, "diffusers")
        tr = None if diffusion_model in (NONE, "", None) else _resolve(diffusion_model, "diffusion_models")
        te = None if text_encoder in (FROM_DIFFUSERS, NONE, "", None) else _resolve(text_encoder, "text_encoders")
        ae = None if vae in (FROM_DIFFUSERS, NONE, "", None) else _resolve(vae, "vae")
        if d is None and tr is None:
            raise InputError("Flux2LocalBackend: choose a diffusion model file or a diffusers folder")
        files = LocalFiles(diffusers_dir=d, transformer=tr, text_encoder=te, vae=ae)
        backend = LocalBackend(model, files, dtype=dtype, device=device, steps=int(steps), guidance=float(guidance),
                               offload=offload, vae_tiling=vae_tiling, before_load=free_comfy_memory)
        backend.check_ready()
        return (backend,)


NODE_CLASS_MAPPINGS = {"Flux2LocalBackend": Flux2LocalBackend}
NODE_DISPLAY_NAME_MAPPINGS = {"Flux2LocalBackend": "FLUX.2 Local Backend (klein / dev weights)"}

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "Flux2LocalBackend"]
