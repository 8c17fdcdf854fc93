"""Weights -> modules, for diffusers folders and BFL / ComfyUI single files (fp8 with scales included).

Every failure is a ModelLoadError naming the file: missing, truncated, not safetensors, or another
architecture (FLUX.1, an SD VAE, a different text encoder...). Sizes are inferred from the weight shapes
and checked against the chosen preset.
"""
from __future__ import annotations

import errno
import json
import re
from dataclasses import replace
from pathlib import Path

import torch

from ...errors import ModelLoadError
from ..model.autoencoder import AutoencoderFlux2
from ..model.params import ModelPreset, TextEncoderParams, TransformerParams, VAEParams
from .quant import (FP8_DTYPES, dequantize_nvfp4, dequantize_weight, in_features, is_nvfp4, swap_fp8_linears,
                    swap_nvfp4_linears)
from .safetensors_header import read_header
from ..model.text_encoder import TextEncoder
from ..model.transformer import Flux2Transformer

_PREFIXES = ("model.diffusion_model.", "diffusion_model.", "transformer.")


# ----------------------------------------------------------------------------------------------- files

def read_safetensors(paths: list[Path] | Path, dtype: torch.dtype | None = None, what: str = "weights",
                     keep=None, keep_fp8: bool = False, defer_cast: bool = False) -> dict[str, torch.Tensor]:
    """Read one or several (sharded) safetensors files; fp8 weights with scales are dequantised to `dtype`,
    or with keep_fp8 kept as float8 matrices plus `<name>.weight_scale` (see dequantize). The tensors are views
    into the memory-mapped files (safetensors' safe_open); defer_cast: see dequantize."""
    from safetensors import SafetensorError, safe_open

    paths = [paths] if isinstance(paths, (str, Path)) else list(paths)
    raw: dict[str, torch.Tensor] = {}
    for path in paths:
        path = Path(path)
        read_header(path, what)           # missing, truncated or malformed: one precise line, before any mmap
        try:
            with safe_open(str(path), framework="pt", device="cpu") as f:
                for key in f.keys():
                    if keep is None or keep(key):
                        raw[key] = f.get_tensor(key)
        except (SafetensorError, OSError, ValueError, RuntimeError, MemoryError) as exc:
            raise _read_error(path, what, exc) from None
    return dequantize(raw, dtype, keep_fp8, what, defer_cast)


def _read_error(path: Path, what: str, exc: BaseException) -> ModelLoadError:
    """A failed weight read as one line; running out of memory is said as such (it is not a corrupt file)."""
    msg = str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__
    if isinstance(exc, MemoryError) or "Cannot allocate memory" in msg or "os error 12" in msg \
            or getattr(exc, "errno", None) == errno.ENOMEM:
        gib = path.stat().st_size / 2**30
        return ModelLoadError(f"{what} file {path.name} ({gib:.1f} GiB) cannot be mapped into memory: Cannot allocate "
                              f"memory (free RAM or swap, or choose a smaller / fp8 file)")
    return ModelLoadError(f"{what} file {path.name} is not a readable safetensors file (truncated or corrupt: {msg})")


_QUANT_META = re.compile(r"(\.weight_scale|\.weight_scale_2|\.scale_weight|\.input_scale|\.scale_input|\.comfy_quant"
                         r"|^scaled_fp8)$")
_KNOWN_COMFY_FORMATS = ("float8_e4m3fn", "float8_e5m2", "nvfp4")


def comfy_quant_format(t: torch.Tensor | None) -> str | None:
    """ComfyUI stores each quantised layer's settings as a uint8 JSON tensor `<layer>.comfy_quant`."""
    if t is None:
        return None
    try:
        return str(json.loads(bytes(t.to(torch.uint8).flatten().tolist()).decode("utf-8")).get("format"))
    except (ValueError, AttributeError, UnicodeDecodeError):
        return "unreadable"


def dequantize(sd: dict[str, torch.Tensor], dtype: torch.dtype | None,
               keep_fp8: bool = False, name: str = "weights", defer_cast: bool = False) -> dict[str, torch.Tensor]:
    """fp8 weights: ComfyUI `weight_scale` / `scale_weight` (scalar or per-row) and BFL per-row scales.
    NVFP4 weights (ComfyUI `nvfp4`: uint8 codes + fp8 block scales + `weight_scale_2`) are de-quantised to
    `dtype` here, as ComfyUI does (quant.dequantize_nvfp4), or with keep_fp8 kept packed with their two scales
    (`_into` makes them quant.NVFP4Linear layers, de-quantised per layer with the same numbers). Scale tensors and quantisation metadata are
    consumed; other tensors are cast to `dtype`.
    keep_fp8: float8 matrices `X.weight` stay float8, their scale (if any) as float32 `X.weight_scale`;
    `_into` turns them into ScaledFP8Linear layers (or up-casts them there, with the same numbers).
    defer_cast (offload=blocks): a tensor that needs no de-quantisation is returned as read, still a view into the
    mapped file, neither cast nor re-aligned; offload.py casts it per block, as it streams it, with this rule."""
    out = {}
    for key, t in sd.items():
        if _QUANT_META.search(key) or key.endswith(".pre_quant_scale"):
            continue
        read = t
        base = key[: -len(".weight")] if key.endswith(".weight") else key
        fmt = comfy_quant_format(sd.get(base + ".comfy_quant"))
        if fmt is not None and fmt not in _KNOWN_COMFY_FORMATS:
            raise ModelLoadError(f"{name}: layer {base} is quantised as {fmt!r}; this engine reads fp8 and NVFP4 "
                                 f"(de-quantised on load) only")
        if fmt == "nvfp4" or (t.dtype == torch.uint8 and base + ".weight_scale_2" in sd):
            if base + ".pre_quant_scale" in sd:
                raise ModelLoadError(f"{name}: layer {base} is NVFP4 with an AWQ pre_quant_scale, which this engine "
                                     f"does not read; use the bf16 or fp8 file")
            if base + ".weight_scale" not in sd or base + ".weight_scale_2" not in sd:
                raise ModelLoadError(f"{name}: NVFP4 layer {base} lacks its weight_scale / weight_scale_2")
            if keep_fp8 and key.endswith(".weight") and t.ndim == 2 and t.dtype == torch.uint8:
                # kept packed (quant.NVFP4Linear, de-quantised per layer with the same numbers)
                out[key] = t
                out[base + ".weight_scale"] = sd[base + ".weight_scale"]
                out[base + ".weight_scale_2"] = sd[base + ".weight_scale_2"].to(torch.float32)
                continue
            try:
                t = dequantize_nvfp4(t, sd[base + ".weight_scale"], sd[base + ".weight_scale_2"],
                                     dtype or torch.float32)
            except (ValueError, RuntimeError) as exc:
                raise ModelLoadError(f"{name}: NVFP4 layer {base} cannot be de-quantised "
                                     f"({str(exc).splitlines()[0][:100]})") from None
        elif t.dtype in FP8_DTYPES:
            scale = sd.get(base + ".weight_scale", sd.get(base + ".scale_weight"))
            if keep_fp8 and key.endswith(".weight") and t.ndim == 2:
                out[key] = t.clone() if t.data_ptr() % 64 else t
                if scale is not None:
                    out[base + ".weight_scale"] = scale.to(torch.float32)
                continue
            w = t.to(torch.float32)
            if scale is not None:
                s = scale.to(torch.float32)
                if s.numel() > 1 and s.ndim == 1 and w.ndim == 2:
                    s = s[:, None]                         # per output row
                w = w * s
            t = w
        if defer_cast and t is read:
            out[key] = t
            continue
        if dtype is not None and t.is_floating_point() and not key.startswith("bn.") and ".bn." not in key:
            t = t.to(dtype)
        if t.data_ptr() % 64:
            # safetensors can hand out tensors at any byte offset; BLAS kernels then take other code paths and
            # round differently, so the same weights from two files would not give bit-identical images.
            t = t.clone()
        out[key] = t
    return out


def shard_files(folder: Path, stem: str) -> list[Path]:
    """`stem.safetensors`, or the shards listed in `stem.safetensors.index.json`, or any *.safetensors."""
    single = folder / f"{stem}.safetensors"
    if single.is_file():
        return [single]
    index = folder / f"{stem}.safetensors.index.json"
    if index.is_file():
        try:
            names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (ValueError, KeyError) as exc:
            raise ModelLoadError(f"{index} is not a valid shard index ({type(exc).__name__})") from None
        return [folder / n for n in names]
    found = sorted(folder.glob("*.safetensors"))
    if not found:
        raise ModelLoadError(f"no .safetensors weights in {folder}")
    return found


def read_config(folder: Path) -> dict:
    cfg = folder / "config.json"
    if not cfg.is_file():
        return {}
    try:
        return json.loads(cfg.read_text())
    except ValueError:
        raise ModelLoadError(f"{cfg} is not valid JSON") from None


def _strip(sd: dict[str, torch.Tensor], prefixes) -> dict[str, torch.Tensor]:
    for pre in prefixes:
        if any(k.startswith(pre) for k in sd):
            return {k[len(pre):]: v for k, v in sd.items() if k.startswith(pre)}
    return sd


# ----------------------------------------------------------------------------------------- transformer

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
    sd = _strip(sd, _PREFIXES)
    if "double_blocks.0.img_mod.lin.weight" in sd:
        raise ModelLoadError(f"{name} is a FLUX.1 transformer (per-block modulation), not FLUX.2")
    if "transformer_blocks.0.attn.to_q.weight" in sd or "x_embedder.weight" in sd:
        if "transformer_blocks.0.norm1.linear.weight" in sd:
            raise ModelLoadError(f"{name} is a FLUX.1 diffusers transformer, not FLUX.2")
        # diffusers layout fuses / reorders weights: kept fp8 matrices are up-cast first (same numbers)
        sd = diffusers_to_bfl(_upcast_kept_fp8(sd, dtype))
    # Some BFL files name RMSNorm parameters `weight` instead of `scale`.
    sd = {re.sub(r"(query_norm|key_norm)\.weight$", r"\1.scale", k): v for k, v in sd.items()}
    if "double_blocks.0.img_attn.qkv.weight" not in sd or "single_stream_modulation.lin.weight" not in sd:
        raise ModelLoadError(f"{name} is not a FLUX.2 transformer (no FLUX.2 double/single-stream keys)")
    return sd


def reread_linear_weights(paths, dtype: torch.dtype, names: list[str]) -> dict[str, torch.Tensor]:
    """The weights of the Linears `names` exactly as load_transformer gave them (same read, de-quantisation, cast
    and key layout), read again from the mapped files: what undoes a LoRA merged into them, with no copy of the
    originals kept in memory meanwhile. Only those tensors are read from a BFL / ComfyUI file; a diffusers folder
    names them differently (q, k, v apart), so its files are read whole, as at load."""
    paths = [Path(p) for p in ([paths] if isinstance(paths, (str, Path)) else paths)]
    if any(p.suffix.lower() == ".gguf" for p in paths):
        return _reread_gguf_linear_weights(paths[0], dtype, names)
    wanted = {f"{pre}{n}.weight" for n in names for pre in _PREFIXES + ("",)}
    sd = _strip(read_safetensors(paths, dtype, "diffusion model", keep=wanted.__contains__), _PREFIXES)
    if not all(n + ".weight" in sd for n in names):
        sd = normalise_transformer_keys(read_safetensors(paths, dtype, "diffusion model"), "diffusion model", dtype)
    missing = [n for n in names if n + ".weight" not in sd]
    if missing:
        raise ModelLoadError(f"diffusion model {paths[0].name} no longer holds {missing[0]}.weight (changed since "
                             f"it was loaded?)")
    return {n: sd[n + ".weight"] for n in names}


def _reread_gguf_linear_weights(path: Path, dtype: torch.dtype, names: list[str]) -> dict[str, torch.Tensor]:
    """reread_linear_weights for a GGUF transformer: its float (unquantised) Linears are the ones that take a
    LoRA merged; they are read again as _load_gguf_transformer read them (gguf.settle: the same cast)."""
    from .gguf import read_gguf, settle

    sd = normalise_transformer_keys(read_gguf(path, "diffusion model").tensors, f"diffusion model {path.name}")
    missing = [n for n in names if n + ".weight" not in sd]
    if missing:
        raise ModelLoadError(f"diffusion model {path.name} no longer holds {missing[0]}.weight (changed since it "
                             f"was loaded?)")
    out = settle({n + ".weight": sd[n + ".weight"] for n in names}, dtype, mapped=False)
    return {n: out[n + ".weight"] for n in names}


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


def _check_against(found, expected, name: str, fields: tuple[str, ...], what: str) -> None:
    diffs = [f"{f} {getattr(found, f)} (expected {getattr(expected, f)})" for f in fields
             if getattr(found, f) != getattr(expected, f)]
    if diffs:
        raise ModelLoadError(f"{name} does not match {what}: " + ", ".join(diffs))


def _upcast_kept_fp8(sd: dict[str, torch.Tensor], dtype, keep=lambda key: False) -> dict[str, torch.Tensor]:
    """Float8 matrices kept by dequantize(keep_fp8=True) -> `dtype` (as dequantize would have done at read time),
    except those `keep(key)` says stay float8. Their consumed scales are dropped."""
    out = {}
    for key, t in sd.items():
        if key.endswith((".weight_scale", ".weight_scale_2")) and key[: key.rindex("_scale")] in sd:
            if keep(key[: key.rindex("_scale")]):
                out[key] = t
            continue
        if is_nvfp4(sd, key) and not keep(key):
            base = key[: -len("weight")]
            t = dequantize_nvfp4(t, sd[base + "weight_scale"], sd[base + "weight_scale_2"], dtype or torch.float32)
        elif t.dtype in FP8_DTYPES and not keep(key):
            t = dequantize_weight(t, sd.get(key + "_scale"), dtype or torch.float32)
        out[key] = t
    return out


def _into(module_cls, params, sd, name: str, dtype, device, module=None):
    """module: already built on meta (GGUF: its quantised Linears swapped for GGUFLinear first)."""
    if module is None:
        with torch.device("meta"):
            module = module_cls(params)
    nvfp4 = swap_nvfp4_linears(module, sd, dtype) if any(is_nvfp4(sd, k) for k in sd) else set()
    if nvfp4 or any(t.dtype in FP8_DTYPES for t in sd.values()):
        swap_fp8_linears(module, sd, dtype)          # fp8 Linear weights stay float8 (ScaledFP8Linear)
        kept = {k for k, v in module.state_dict().items() if v.dtype in FP8_DTYPES} | nvfp4
        sd = _upcast_kept_fp8(sd, dtype, keep=lambda key: key in kept)
    expected = set(module.state_dict().keys())
    missing = sorted(expected - set(sd))
    if missing:
        raise ModelLoadError(f"{name} lacks {len(missing)} weights (first: {missing[0]}); "
                             f"truncated export or other architecture")
    sd = {k: v for k, v in sd.items() if k in expected}
    for k, v in module.state_dict().items():
        if tuple(sd[k].shape) != tuple(v.shape):
            raise ModelLoadError(f"{name}: weight {k} has shape {tuple(sd[k].shape)}, expected {tuple(v.shape)}")
    module.load_state_dict(sd, strict=True, assign=True)
    return module.to(device=device).eval().requires_grad_(False)


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
        _check_against(p, preset.transformer, name, ("hidden", "depth_double", "depth_single", "context_dim",
                                                     "guidance_embed"), preset.name)
    return _into(Flux2Transformer, p, sd, name, dtype, device)


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
        _check_against(p, preset.transformer, name, ("hidden", "depth_double", "depth_single", "context_dim",
                                                     "guidance_embed"), preset.name)
    with torch.device("meta"):
        module = Flux2Transformer(p)
    sd = settle(swap_gguf_linears(module, sd, dtype), dtype, mapped)
    return _into(Flux2Transformer, p, sd, name, dtype, device, module=module)


# ---------------------------------------------------------------------------------------------- VAE

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
    sd = _strip(sd, VAE_PREFIXES)
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
    return _into(AutoencoderFlux2, p, sd, name, dtype, device)


# --------------------------------------------------------------------------------------- text encoder

_TE_PREFIXES = ("model.language_model.", "language_model.model.", "model.text_model.", "text_model.model.",
                "model.", "")


def text_params_from_config(cfg: dict, base: TextEncoderParams) -> TextEncoderParams:
    cfg = cfg.get("text_config", cfg)
    if not cfg:
        return base
    rope = cfg.get("rope_theta") or (cfg.get("rope_parameters") or {}).get("rope_theta") or base.rope_theta
    heads = cfg.get("num_attention_heads", base.heads)
    hidden = cfg.get("hidden_size", base.hidden)
    return replace(base, vocab=cfg.get("vocab_size", base.vocab), hidden=hidden,
                   layers=cfg.get("num_hidden_layers", base.layers), heads=heads,
                   kv_heads=cfg.get("num_key_value_heads", base.kv_heads),
                   head_dim=cfg.get("head_dim") or hidden // heads,
                   intermediate=cfg.get("intermediate_size", base.intermediate), rope_theta=float(rope),
                   rms_eps=float(cfg.get("rms_norm_eps", base.rms_eps)))


def load_text_encoder(paths, base: TextEncoderParams, dtype: torch.dtype, device="cpu", name: str | None = None,
                      config: dict | None = None, keep_fp8: bool = True, mapped: bool = False) -> TextEncoder:
    """mapped: as load_transformer's."""
    paths = [Path(p) for p in ([paths] if isinstance(paths, (str, Path)) else paths)]
    name = name or f"text encoder {paths[0].name}"
    wanted = max(base.out_layers)

    def keep(key: str) -> bool:   # skip vision tower, LM head and layers FLUX.2 never reads
        if "vision" in key or "multi_modal_projector" in key or key.startswith("lm_head") or key == "tekken_model":
            return False
        m = re.search(r"layers\.(\d+)\.", key)
        return m is None or int(m.group(1)) < wanted

    gguf_file = paths[0].suffix.lower() == ".gguf"
    if gguf_file:
        from .gguf import read_text_encoder
        sd = read_text_encoder(paths[0], name, keep)      # HF names; quantised tensors as GGUFTensor
    else:
        sd = read_safetensors(paths, dtype, name, keep=keep, keep_fp8=keep_fp8, defer_cast=mapped)
    for pre in _TE_PREFIXES:
        if f"{pre}embed_tokens.weight" in sd:
            sd = {k[len(pre):]: v for k, v in sd.items() if k.startswith(pre)}
            break
    else:
        raise ModelLoadError(f"{name} is not a Hugging Face causal-LM text encoder (no embed_tokens)")
    p = text_params_from_config(config or {}, base)
    vocab, hidden = sd["embed_tokens.weight"].shape
    has_qk_norm = "layers.0.self_attn.q_norm.weight" in sd
    if has_qk_norm != base.qk_norm:
        want = "Qwen3 (klein)" if base.qk_norm else "Mistral (dev)"
        raise ModelLoadError(f"{name} is not the {want} text encoder this model needs")
    if has_qk_norm:
        p = replace(p, head_dim=sd["layers.0.self_attn.q_norm.weight"].shape[0])
    kv = sd["layers.0.self_attn.k_proj.weight"].shape[0] // p.head_dim
    p = replace(p, vocab=vocab, hidden=hidden, heads=sd["layers.0.self_attn.q_proj.weight"].shape[0] // p.head_dim,
                kv_heads=kv, intermediate=sd["layers.0.mlp.gate_proj.weight"].shape[0])
    if p.hidden * len(p.out_layers) != base.hidden * len(base.out_layers):
        raise ModelLoadError(f"{name} has hidden size {p.hidden}, expected {base.hidden} for this model "
                             f"(wrong text encoder for the chosen model family?)")
    if gguf_file:                       # quantised Linears stay in their blocks (GGUFLinear), the rest is cast
        from .gguf import settle, swap_gguf_linears
        with torch.device("meta"):
            module = TextEncoder(p)
        sd = settle(swap_gguf_linears(module, sd, dtype), dtype, mapped)
        return _into(TextEncoder, p, sd, name, dtype, device, module=module)
    return _into(TextEncoder, p, sd, name, dtype, device)


# ------------------------------------------------------------------------------------------- bundles

def find_tokenizer(text_encoder_file: Path) -> Path | None:
    """tokenizer.json for a single text-encoder file: `<stem>.tokenizer.json`, `<stem>/tokenizer.json` or
    `tokenizer.json` beside it."""
    f = Path(text_encoder_file)
    for cand in (f.with_name(f.stem + ".tokenizer.json"), f.with_suffix("") / "tokenizer.json",
                 f.parent / "tokenizer.json"):
        if cand.is_file():
            return cand
    return None


def tokenizer_for(text_encoder, params: TextEncoderParams, tokenizer: Path | None = None):
    """The prompt tokenizer for a text encoder, first found of: the given tokenizer.json; one beside the
    text-encoder file (find_tokenizer); the Tekken tokenizer ComfyUI embeds in [dev] text-encoder files
    (`tekken_model`); for Qwen3 (klein) the bundled Qwen3 tokenizer."""
    from ..model.tokenizer import PromptTokenizer, read_tekken

    files = [Path(p) for p in ([text_encoder] if isinstance(text_encoder, (str, Path)) else text_encoder)]
    tokenizer = tokenizer or find_tokenizer(files[0])
    if tokenizer is not None:
        return PromptTokenizer.from_file(tokenizer, params)
    if params.kind == "mistral":
        data = read_tekken(files)
        if data is not None:
            return PromptTokenizer.from_tekken(data, params, f"Tekken tokenizer in {files[0].name}")
        raise ModelLoadError(f"no tokenizer for text encoder {files[0].name}: it carries no Tekken tokenizer "
                             f"(`tekken_model`); put its tokenizer.json next to it as {files[0].stem}.tokenizer.json")
    return PromptTokenizer.bundled_qwen3(params)


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
