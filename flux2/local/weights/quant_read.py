"""De-quantising a read state dict: fp8 with ComfyUI / BFL scales, ComfyUI NVFP4, the `comfy_quant` metadata;
or, with keep_fp8, float8 / NVFP4 matrices kept with their scales for the quantised layers (quant.py)."""
from __future__ import annotations

import json
import re

import torch

from ...errors import ModelLoadError
from .quant import FP8_DTYPES, dequantize_nvfp4, dequantize_weight, is_nvfp4


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
    (assemble.into_module makes them quant.NVFP4Linear layers, de-quantised per layer with the same numbers). Scale
    tensors and quantisation metadata are consumed; other tensors are cast to `dtype`.
    keep_fp8: float8 matrices `X.weight` stay float8, their scale (if any) as float32 `X.weight_scale`;
    into_module turns them into ScaledFP8Linear layers (or up-casts them there, with the same numbers).
    defer_cast (offload=blocks): a tensor that needs no de-quantisation is returned as read, still a view into the
    mapped file, neither cast nor re-aligned; offload.py casts it per block, as it streams it, with this rule."""
    out = {}
    for key, t in sd.items():
        if _QUANT_META.search(key) or key.endswith(".pre_quant_scale"):
            continue
        base = key[: -len(".weight")] if key.endswith(".weight") else key
        nvfp4 = _is_nvfp4_layer(sd, key, base, t, name)
        kept = _kept_quantised(sd, key, base, t, nvfp4) if keep_fp8 else None
        if kept is not None:
            out.update(kept)
            continue
        if nvfp4:
            w = _nvfp4_to_float(sd, base, t, dtype, name)
        elif t.dtype in FP8_DTYPES:
            w = _fp8_to_float(sd, base, t)
        else:
            w = t
        out[key] = w if defer_cast and w is t else _cast(key, w, dtype)
    return out


def _is_nvfp4_layer(sd: dict[str, torch.Tensor], key: str, base: str, t: torch.Tensor, name: str) -> bool:
    """Whether `key` is an NVFP4 layer's codes; refuses quantisation formats and NVFP4 variants this engine cannot
    read, or an NVFP4 layer without its two scales."""
    fmt = comfy_quant_format(sd.get(base + ".comfy_quant"))
    if fmt is not None and fmt not in _KNOWN_COMFY_FORMATS:
        raise ModelLoadError(f"{name}: layer {base} is quantised as {fmt!r}; this engine reads fp8 and NVFP4 "
                             f"(de-quantised on load) only")
    if not (fmt == "nvfp4" or (t.dtype == torch.uint8 and base + ".weight_scale_2" in sd)):
        return False
    if base + ".pre_quant_scale" in sd:
        raise ModelLoadError(f"{name}: layer {base} is NVFP4 with an AWQ pre_quant_scale, which this engine "
                             f"does not read; use the bf16 or fp8 file")
    if base + ".weight_scale" not in sd or base + ".weight_scale_2" not in sd:
        raise ModelLoadError(f"{name}: NVFP4 layer {base} lacks its weight_scale / weight_scale_2")
    return True


def _kept_quantised(sd: dict[str, torch.Tensor], key: str, base: str, t: torch.Tensor,
                    nvfp4: bool) -> dict[str, torch.Tensor] | None:
    """keep_fp8: a quantised matrix with its scales, as the quantised layers take them; None: de-quantise it."""
    if not (key.endswith(".weight") and t.ndim == 2):
        return None
    if nvfp4:
        if t.dtype != torch.uint8:
            return None
        # kept packed (quant.NVFP4Linear, de-quantised per layer with the same numbers)
        return {key: t, base + ".weight_scale": sd[base + ".weight_scale"],
                base + ".weight_scale_2": sd[base + ".weight_scale_2"].to(torch.float32)}
    if t.dtype not in FP8_DTYPES:
        return None
    scale = sd.get(base + ".weight_scale", sd.get(base + ".scale_weight"))
    kept = {key: t.clone() if t.data_ptr() % 64 else t}
    if scale is not None:
        kept[base + ".weight_scale"] = scale.to(torch.float32)
    return kept


def _nvfp4_to_float(sd: dict[str, torch.Tensor], base: str, t: torch.Tensor, dtype: torch.dtype | None,
                    name: str) -> torch.Tensor:
    try:
        return dequantize_nvfp4(t, sd[base + ".weight_scale"], sd[base + ".weight_scale_2"], dtype or torch.float32)
    except (ValueError, RuntimeError) as exc:
        raise ModelLoadError(f"{name}: NVFP4 layer {base} cannot be de-quantised "
                             f"({str(exc).splitlines()[0][:100]})") from None


def _fp8_to_float(sd: dict[str, torch.Tensor], base: str, t: torch.Tensor) -> torch.Tensor:
    """float8 [out, in] times its scale (scalar, or one per output row), in float32."""
    scale = sd.get(base + ".weight_scale", sd.get(base + ".scale_weight"))
    w = t.to(torch.float32)
    if scale is not None:
        s = scale.to(torch.float32)
        if s.numel() > 1 and s.ndim == 1 and w.ndim == 2:
            s = s[:, None]                         # per output row
        w = w * s
    return w


def _cast(key: str, t: torch.Tensor, dtype: torch.dtype | None) -> torch.Tensor:
    """To the load dtype (BatchNorm statistics stay as they are), 64-byte aligned."""
    if dtype is not None and t.is_floating_point() and not key.startswith("bn.") and ".bn." not in key:
        t = t.to(dtype)
    if t.data_ptr() % 64:
        # safetensors can hand out tensors at any byte offset; BLAS kernels then take other code paths and
        # round differently, so the same weights from two files would not give bit-identical images.
        t = t.clone()
    return t


def upcast_kept_fp8(sd: dict[str, torch.Tensor], dtype, keep=lambda key: False) -> dict[str, torch.Tensor]:
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
