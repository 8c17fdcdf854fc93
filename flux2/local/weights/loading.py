"""Weights -> modules: the four parts of a FLUX.2 model from a diffusers folder and / or single files (BFL, ComfyUI,
GGUF; fp8 / NVFP4 with scales included).

One module per component and concern: safetensors_read (files, shards), quant_read (de-quantising on read),
assemble (state dict -> module), transformer_weights, text_encoder_weights, vae_weights, tokenizer_files, reread
(the restore-from-file path). Every failure is a ModelLoadError naming the file. The per-component loaders are
re-exported here, the loading API callers and tests use.
"""
from __future__ import annotations

from pathlib import Path

import torch

from ...errors import ModelLoadError
from ..model.params import ModelPreset
from .reread import reread_linear_weights
from .safetensors_read import read_config, read_safetensors, shard_files
from .text_encoder_weights import load_text_encoder
from .tokenizer_files import tokenizer_for
from .transformer_weights import (diffusers_to_bfl, infer_transformer_params, load_transformer,
                                  normalise_transformer_keys)
from .vae_weights import infer_vae_params, load_vae, normalise_vae_keys

__all__ = ["diffusers_to_bfl", "infer_transformer_params", "infer_vae_params", "load_modules", "load_text_encoder",
           "load_transformer", "load_vae", "normalise_transformer_keys", "normalise_vae_keys", "read_safetensors",
           "reread_linear_weights", "shard_files", "tokenizer_for"]


def load_modules(preset: ModelPreset, *, diffusers_dir: Path | None = None, transformer: Path | None = None,
                 text_encoder: Path | None = None, vae: Path | None = None, tokenizer: Path | None = None,
                 dtype: torch.dtype = torch.bfloat16, device: str | torch.device = "cpu", keep_fp8: bool | None = None,
                 mapped: bool = False):
    """Load the four parts; single files override the matching part of a diffusers folder.
    keep_fp8 (default: yes, except on MPS which has no float8): fp8 files stay fp8 in memory.
    mapped (offload=blocks): the transformer's and text encoder's weights stay in the mapped files, uncast, until
    offload.apply_offload settles the resident parts and streams the rest."""
    from ..model.modules import Flux2Modules

    device = torch.device(device)
    d = Path(diffusers_dir) if diffusers_dir else None
    te_cfg: dict = {}
    vae_cfg: dict = {}
    if d is not None:
        if not (d / "transformer").is_dir() and transformer is None:
            raise ModelLoadError(f"{d} is not a diffusers FLUX.2 folder (no transformer/ subfolder)")
        transformer = transformer or shard_files(d / "transformer", "diffusion_pytorch_model")
        if text_encoder is None and (d / "text_encoder").is_dir():
            text_encoder = shard_files(d / "text_encoder", "model")
            te_cfg = read_config(d / "text_encoder")
        if vae is None and (d / "vae").is_dir():
            vae = shard_files(d / "vae", "diffusion_pytorch_model")
            vae_cfg = read_config(d / "vae")
        if tokenizer is None and (d / "tokenizer" / "tokenizer.json").is_file():
            tokenizer = d / "tokenizer" / "tokenizer.json"
    if transformer is None:
        raise ModelLoadError("no diffusion model file given")
    if text_encoder is None:
        raise ModelLoadError(f"no text encoder given for {preset.name} "
                             f"({'Qwen3' if preset.text_encoder.kind == 'qwen3' else 'Mistral Small 3.2'} file needed)")
    if vae is None:
        raise ModelLoadError("no VAE file given (the FLUX.2 VAE, 32 latent channels)")
    te_first = text_encoder[0] if isinstance(text_encoder, list) else Path(text_encoder)
    tok_params = preset.text_encoder
    tok = tokenizer_for(text_encoder, tok_params, tokenizer)        # before the big loads: fail fast
    if keep_fp8 is None:
        keep_fp8 = device.type != "mps"
    tr = load_transformer(transformer, preset, dtype, device, keep_fp8=keep_fp8, mapped=mapped)
    te = load_text_encoder(text_encoder, preset.text_encoder, dtype, device, config=te_cfg, keep_fp8=keep_fp8,
                           mapped=mapped)
    tok.p = te.p
    ae = load_vae(vae, dtype, device, config=vae_cfg, expected=preset.vae)
    if te.p.out_dim != tr.params.context_dim:
        raise ModelLoadError(f"text encoder {te_first.name} gives {te.p.out_dim} features, the diffusion model "
                             f"expects {tr.params.context_dim} (text encoder of another model size?)")
    return Flux2Modules(preset=preset, transformer=tr, text_encoder=te, tokenizer=tok, vae=ae, device=device,
                        dtype=dtype)
