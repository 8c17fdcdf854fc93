"""FLUX.2 transformer weights -> Flux2Transformer, from BFL / ComfyUI single files, diffusers folders (keys converted)
and ComfyUI-GGUF files; sizes inferred from the weight shapes and checked against the chosen preset."""
from __future__ import annotations

import re
from pathlib import Path

import torch

from ...errors import ModelLoadError
from ..model.params import ModelPreset, TransformerParams
from ..model.transformer import Flux2Transformer
from .assemble import check_against, into_module
from .quant import in_features
from .quant_read import upcast_kept_fp8
from .safetensors_read import read_safetensors, strip_prefix

TRANSFORMER_PREFIXES = ("model.diffusion_model.", "diffusion_model.", "transformer.")


def diffusers_to_bfl(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """diffusers Flux2Transformer2DModel keys -> BFL keys (fused qkv, final adaLN as (shift, scale))."""
    out: dict[str, torch.Tensor] = {}
    simple = {
        "x_embedder.weight": "img_in.weight",
        "context_embedder.weight": "txt_in.weight",
        "time_guidance_embed.timestep_embedder.linear_1.weight": "time_in.in_layer.weight",
        "time_guidance_embed.timestep_embedder.linear_2.weight": "time_in.out_layer.weight",
        "time_guidance_embed.guidance_embedder.linear_1.weight": "guidance_in.in_layer.weight",
        "time_guidance_embed.guidance_embedder.linear_2.weight": "guidance_in.out_layer.weight",
        "double_stream_modulation_img.linear.weight": "double_stream_modulation_img.lin.weight",
        "double_stream_modulation_txt.linear.weight": "double_stream_modulation_txt.lin.weight",
        "single_stream_modulation.linear.weight": "single_stream_modulation.lin.weight",
        "proj_out.weight": "final_layer.linear.weight",
    }
    double = {
        "attn.norm_q.weight": "img_attn.norm.query_norm.scale", "attn.norm_k.weight": "img_attn.norm.key_norm.scale",
        "attn.norm_added_q.weight": "txt_attn.norm.query_norm.scale",
        "attn.norm_added_k.weight": "txt_attn.norm.key_norm.scale",
        "attn.to_out.0.weight": "img_attn.proj.weight", "attn.to_add_out.weight": "txt_attn.proj.weight",
        "ff.linear_in.weight": "img_mlp.0.weight", "ff.linear_out.weight": "img_mlp.2.weight",
        "ff_context.linear_in.weight": "txt_mlp.0.weight", "ff_context.linear_out.weight": "txt_mlp.2.weight",
    }
    single = {
        "attn.to_qkv_mlp_proj.weight": "linear1.weight", "attn.to_out.weight": "linear2.weight",
        "attn.norm_q.weight": "norm.query_norm.scale", "attn.norm_k.weight": "norm.key_norm.scale",
    }
    fused: dict[str, dict[str, torch.Tensor]] = {}
    for key, t in sd.items():
        if key in simple:
            out[simple[key]] = t
        elif key == "norm_out.linear.weight":
            scale, shift = t.chunk(2, dim=0)
            out["final_layer.adaLN_modulation.1.weight"] = torch.cat((shift, scale), 0)
        elif m := re.match(r"transformer_blocks\.(\d+)\.(.+)$", key):
            n, rest = m.groups()
            if q := re.match(r"attn\.(to_q|to_k|to_v|add_q_proj|add_k_proj|add_v_proj)\.weight$", rest):
                name = q.group(1)
                stream = "txt" if name.startswith("add_") else "img"
                letter = name[4] if stream == "txt" else name[3]          # add_q_proj -> q, to_q -> q
                fused.setdefault(f"double_blocks.{n}.{stream}_attn.qkv.weight", {})[letter] = t
            elif rest in double:
                out[f"double_blocks.{n}.{double[rest]}"] = t
            else:
                out[key] = t          # left for the strict load to report
        elif m := re.match(r"single_transformer_blocks\.(\d+)\.(.+)$", key):
            n, rest = m.groups()
            out[f"single_blocks.{n}.{single.get(rest, rest)}"] = t
        else:
            out[key] = t
    for key, parts in fused.items():
        if set(parts) != {"q", "k", "v"}:
            raise ModelLoadError(f"diffusers transformer weights lack part of {key} (have {sorted(parts)})")
        out[key] = torch.cat((parts["q"], parts["k"], parts["v"]), 0)
    return out


def normalise_transformer_keys(sd: dict[str, torch.Tensor], name: str,
                               dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    sd = strip_prefix(sd, TRANSFORMER_PREFIXES)
    if "double_blocks.0.img_mod.lin.weight" in sd:
        raise ModelLoadError(f"{name} is a FLUX.1 transformer (per-block modulation), not FLUX.2")
    if "transformer_blocks.0.attn.to_q.weight" in sd or "x_embedder.weight" in sd:
        if "transformer_blocks.0.norm1.linear.weight" in sd:
            raise ModelLoadError(f"{name} is a FLUX.1 diffusers transformer, not FLUX.2")
        # diffusers layout fuses / reorders weights: kept fp8 matrices are up-cast first (same numbers)
        sd = diffusers_to_bfl(upcast_kept_fp8(sd, dtype))
    # Some BFL files name RMSNorm parameters `weight` instead of `scale`.
    sd = {re.sub(r"(query_norm|key_norm)\.weight$", r"\1.scale", k): v for k, v in sd.items()}
    if "double_blocks.0.img_attn.qkv.weight" not in sd or "single_stream_modulation.lin.weight" not in sd:
        raise ModelLoadError(f"{name} is not a FLUX.2 transformer (no FLUX.2 double/single-stream keys)")
    return sd


def infer_transformer_params(sd: dict[str, torch.Tensor]) -> TransformerParams:
    hidden, in_ch = sd["img_in.weight"].shape[0], in_features(sd, "img_in.weight")
    head_dim = sd["double_blocks.0.img_attn.norm.query_norm.scale"].shape[0]
    n_double = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("double_blocks."))
    singles = [int(k.split(".")[1]) for k in sd if k.startswith("single_blocks.")]
    q = head_dim // 4
    axes = (32, 32, 32, 32) if head_dim == 128 else (q, q, q, head_dim - 3 * q)
    return TransformerParams(hidden=hidden, heads=hidden // head_dim, head_dim=head_dim, depth_double=n_double,
                             depth_single=1 + max(singles) if singles else 0,
                             context_dim=in_features(sd, "txt_in.weight"), in_channels=in_ch,
                             mlp_hidden=in_features(sd, "double_blocks.0.img_mlp.2.weight"),
                             guidance_embed="guidance_in.in_layer.weight" in sd, axes_dim=axes)


def load_transformer(paths, preset: ModelPreset | None, dtype: torch.dtype, device="cpu",
                     name: str | None = None, keep_fp8: bool = True, mapped: bool = False) -> Flux2Transformer:
    """keep_fp8: float8 Linear weights of the file stay float8 in memory (ScaledFP8Linear), up-cast per layer
    at run time with exactly the numbers of up-casting at load (keep_fp8=False).
    mapped (offload=blocks): weights stay views into the mapped file, in the file's dtype; offload.py casts them
    as it streams them (and the resident parts once)."""
    paths = [Path(p) for p in ([paths] if isinstance(paths, (str, Path)) else paths)]
    name = name or f"diffusion model {paths[0].name}"
    if any(p.suffix.lower() == ".gguf" for p in paths):
        return _load_gguf_transformer(paths, preset, dtype, device, name, mapped)
    sd = normalise_transformer_keys(read_safetensors(paths, dtype, name, keep_fp8=keep_fp8, defer_cast=mapped),
                                    name, dtype)
    p = infer_transformer_params(sd)
    if preset is not None:
        check_against(p, preset.transformer, name, ("hidden", "depth_double", "depth_single", "context_dim",
                                                     "guidance_embed"), preset.name)
    return into_module(Flux2Transformer, p, sd, name, dtype, device)


def _load_gguf_transformer(paths: list[Path], preset, dtype, device, name: str, mapped: bool) -> Flux2Transformer:
    """A ComfyUI-GGUF FLUX.2 transformer (weights/gguf.py): quantised Linear weights stay in their blocks
    (GGUFLinear, views into the mapped file until moved to the device), the rest is cast like a safetensors file."""
    from .gguf import check_transformer, read_gguf, settle, swap_gguf_linears

    if len(paths) != 1:
        raise ModelLoadError(f"{name}: a GGUF transformer is one file, got {len(paths)}")
    f = read_gguf(paths[0], "diffusion model")
    check_transformer(f, name)
    sd = normalise_transformer_keys(f.tensors, name)
    p = infer_transformer_params(sd)
    if preset is not None:
        check_against(p, preset.transformer, name, ("hidden", "depth_double", "depth_single", "context_dim",
                                                     "guidance_embed"), preset.name)
    with torch.device("meta"):
        module = Flux2Transformer(p)
    sd = settle(swap_gguf_linears(module, sd, dtype), dtype, mapped)
    return into_module(Flux2Transformer, p, sd, name, dtype, device, module=module)
