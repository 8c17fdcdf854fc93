"""FLUX.2 VAE weights (BFL, ComfyUI, diffusers layouts) -> AutoencoderFlux2; refuses FLUX.1 / SD VAEs in one line."""
from __future__ import annotations

import re
from pathlib import Path

import torch

from ...errors import ModelLoadError
from ..model.autoencoder import AutoencoderFlux2
from ..model.params import VAEParams
from .assemble import into_module
from .safetensors_read import read_safetensors, strip_prefix


def ldm_vae_to_diffusers(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """BFL / LDM VAE keys -> diffusers names (AutoencoderKLFlux2).

    BFL's `ae.safetensors` (flux2 repo, `autoencoder.py`) keeps the 1x1 `quant_conv` inside the encoder and
    `post_quant_conv` inside the decoder (`encoder.quant_conv.*`, `decoder.post_quant_conv.*`), has 1x1-conv
    attention (`mid.attn_1.q/k/v/proj_out`, [C, C, 1, 1]) and a BatchNorm with `num_batches_tracked`; ComfyUI
    0.3.75 (`comfy/sd.py`, VAE.__init__) renames exactly those two convs to the top level. The decoder's `up.N`
    count from the top: up.(n-1) is the first stage after the mid block."""
    n_dec = 1 + max((int(k.split(".")[2]) for k in sd if k.startswith("decoder.up.")), default=-1)
    out = {}
    for k, v in sd.items():
        nk = k
        if nk.startswith("encoder.quant_conv."):
            nk = nk[len("encoder."):]
        elif nk.startswith("decoder.post_quant_conv."):
            nk = nk[len("decoder."):]
        nk = re.sub(r"^encoder\.down\.(\d+)\.block\.", r"encoder.down_blocks.\1.resnets.", nk)
        nk = re.sub(r"^encoder\.down\.(\d+)\.downsample\.", r"encoder.down_blocks.\1.downsamplers.0.", nk)
        if m := re.match(r"^decoder\.up\.(\d+)\.(block|upsample)\.(.*)$", nk):
            i = n_dec - 1 - int(m.group(1))
            nk = (f"decoder.up_blocks.{i}.resnets.{m.group(3)}" if m.group(2) == "block"
                  else f"decoder.up_blocks.{i}.upsamplers.0.{m.group(3)}")
        nk = re.sub(r"\.mid\.block_(\d)\.", lambda m: f".mid_block.resnets.{int(m.group(1)) - 1}.", nk)
        if ".mid.attn_1." in nk:
            nk = nk.replace(".mid.attn_1.", ".mid_block.attentions.0.")
            nk = re.sub(r"\.norm\.", ".group_norm.", nk)
            nk = re.sub(r"\.(q|k|v)\.", lambda m: f".to_{m.group(1)}.", nk)
            nk = nk.replace(".proj_out.", ".to_out.0.")
            if v.ndim == 4:                                       # 1x1 conv [C, C, 1, 1] -> linear [C, C]
                v = v[:, :, 0, 0] if isinstance(v, torch.Tensor) else v.squeeze_1x1()
        nk = nk.replace("nin_shortcut", "conv_shortcut")
        nk = re.sub(r"^(encoder|decoder)\.norm_out\.", r"\1.conv_norm_out.", nk)
        out[nk] = v
    return out


def _count(shapes, prefix: str, at: int) -> int:
    return 1 + max((int(k.split(".")[at]) for k in shapes if k.startswith(prefix)), default=-1)


def infer_vae_params(shapes, config: dict) -> VAEParams:
    """VAE sizes from diffusers-named weights (tensors or shapes); encoder and decoder widths separately
    (the small-decoder VAE's decoder is narrower: diffusers' `decoder_block_out_channels`)."""
    shape = lambda k: tuple(shapes[k].shape)   # noqa: E731  (a tensor or a header's TensorInfo)
    n = _count(shapes, "encoder.down_blocks.", 2)
    block_out = tuple(shape(f"encoder.down_blocks.{i}.resnets.0.conv1.weight")[0] for i in range(n))
    layers = _count(shapes, "encoder.down_blocks.0.resnets.", 4)
    n_dec = _count(shapes, "decoder.up_blocks.", 2)
    # up_blocks[0] works at the lowest resolution = the widest stage; block_out lists from the highest resolution.
    dec = tuple(shape(f"decoder.up_blocks.{j}.resnets.0.conv2.weight")[0] for j in reversed(range(n_dec)))
    latent = shape("post_quant_conv.weight")[0]
    return VAEParams(block_out=block_out, decoder_block_out=None if dec == block_out else dec,
                     layers_per_block=layers, latent_channels=latent,
                     groups=int(config.get("norm_num_groups", 32)),
                     bn_eps=float(config.get("batch_norm_eps", 1e-4)))


VAE_PREFIXES = ("vae.", "first_stage_model.")


def normalise_vae_keys(sd: dict, name: str) -> dict:
    """Any published FLUX.2 VAE layout (BFL, ComfyUI, diffusers) -> diffusers names; works on tensors or on
    header shapes. Refuses what is not a FLUX.2 VAE with one line naming the file."""
    sd = strip_prefix(sd, VAE_PREFIXES)
    if "encoder.down.0.block.0.conv1.weight" in sd:
        sd = ldm_vae_to_diffusers(sd)
    sd.pop("bn.num_batches_tracked", None)
    if "encoder.down_blocks.0.resnets.0.conv1.weight" not in sd or "post_quant_conv.weight" not in sd:
        found = "encoder keys" if any(k.startswith("encoder.") for k in sd) else f"{len(sd)} unrelated keys"
        raise ModelLoadError(f"{name} is not a VAE in a known layout (found {found}, expected BFL "
                             f"`encoder.down.N` / diffusers `encoder.down_blocks.N` keys with a post_quant_conv)")
    if "bn.running_mean" not in sd:
        raise ModelLoadError(f"{name} is not the FLUX.2 VAE (no BatchNorm latent statistics; FLUX.1/SD VAE?)")
    return sd


def load_vae(paths, dtype: torch.dtype, device="cpu", name: str | None = None, config: dict | None = None,
             expected: VAEParams | None = None) -> AutoencoderFlux2:
    paths = [Path(p) for p in ([paths] if isinstance(paths, (str, Path)) else paths)]
    name = name or f"vae {paths[0].name}"
    sd = normalise_vae_keys(read_safetensors(paths, dtype, name), name)
    p = infer_vae_params(sd, config or {})
    want = expected.latent_channels if expected is not None else 32
    if p.latent_channels != want:
        raise ModelLoadError(f"{name} has {p.latent_channels} latent channels, FLUX.2 needs {want}")
    sd["bn.running_mean"] = sd["bn.running_mean"].float()
    sd["bn.running_var"] = sd["bn.running_var"].float()
    return into_module(AutoencoderFlux2, p, sd, name, dtype, device)
