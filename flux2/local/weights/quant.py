"""fp8 Linear weights kept in float8 in memory and up-cast one layer at a time (half the memory of bf16).

`ScaledFP8Linear` stores the file's float8 weight and its scale (scalar or per output row) and, in forward,
rebuilds exactly the weight that up-casting at load would have produced: `(w.float() * scale).to(compute dtype)`,
then runs the same `F.linear`. So the numbers are identical to the up-cast-at-load path; only the peak memory of
one layer's weight in the compute dtype (plus a bounded float32 chunk) is added while that layer runs.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# NVFP4 (ComfyUI's `nvfp4` format, read through comfy_kitchen's TensorCoreNVFP4Layout): each Linear weight
# [out, in] is stored as `weight` uint8 [out, in/2] (two E2M1 codes a byte, the even column in the high nibble),
# `weight_scale` float8_e4m3fn block scales, one per 16 columns, in cuBLAS' 128x4-tiled ("swizzled") layout of
# shape [roundup(out, 128), roundup(in/16, 4)], and `weight_scale_2` a float32 per-tensor scale.
E2M1_VALUES = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0)
NVFP4_BLOCK = 16

FP8_DTYPES = tuple(getattr(torch, n) for n in ("float8_e4m3fn", "float8_e5m2") if hasattr(torch, n))
_CHUNK = 1 << 24          # elements up-cast to float32 at a time (64 MiB)


def dequantize_weight(w: torch.Tensor, scale: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor:
    """float8 [out, in] (+ scale [] / [out] / [out, 1]) -> dtype, the same numbers as `(w.float() * s).to(dtype)`."""
    if scale is not None:
        scale = scale.to(device=w.device, dtype=torch.float32)
        if scale.numel() > 1:
            scale = scale.reshape(-1, 1)
    if w.numel() <= _CHUNK or w.ndim != 2:
        wf = w.to(torch.float32)
        return (wf * scale if scale is not None else wf).to(dtype)
    out = torch.empty(w.shape, dtype=dtype, device=w.device)
    step = max(1, _CHUNK // w.shape[1])
    for i in range(0, w.shape[0], step):
        wf = w[i:i + step].to(torch.float32)
        if scale is not None:
            wf = wf * (scale if scale.numel() == 1 else scale[i:i + step])
        out[i:i + step] = wf.to(dtype)
    return out


def unswizzle_block_scales(blocked: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    """cuBLAS 128x4-tiled block-scale layout -> plain [rows, cols] (cols = blocks per row).

    A tile covers 128 rows x 4 block columns and is stored as [32, 16]: entry (r, c) of the tile sits at
    row r % 32, column (r // 32) * 4 + c."""
    n_r, n_c = -(-rows // 128), -(-cols // 4)
    t = blocked.reshape(n_r, n_c, 32, 4, 4)               # [row tile, col tile, r % 32, r // 32, c]
    t = t.permute(0, 3, 2, 1, 4)                           # [row tile, r // 32, r % 32, col tile, c]
    return t.reshape(n_r * 128, n_c * 4)[:rows, :cols]


def dequantize_nvfp4(packed: torch.Tensor, block_scale: torch.Tensor, scale_2: torch.Tensor,
                     dtype: torch.dtype) -> torch.Tensor:
    """NVFP4 weight -> [out, in] in `dtype`, the same numbers as ComfyUI's de-quantisation to that dtype
    (comfy_kitchen's reference: code value, block scale and per-tensor scale each cast to `dtype`, then
    value * (scale_2 * block_scale) in `dtype`)."""
    if packed.dtype != torch.uint8 or packed.ndim != 2:
        raise ValueError(f"NVFP4 weight must be 2-D uint8, got {packed.dtype} {tuple(packed.shape)}")
    rows, cols = packed.shape[0], packed.shape[1] * 2
    if cols % NVFP4_BLOCK:
        raise ValueError(f"NVFP4 weight has {cols} columns, not a multiple of {NVFP4_BLOCK}")
    if block_scale.dtype == torch.uint8:
        block_scale = block_scale.view(torch.float8_e4m3fn)
    lut = torch.tensor(E2M1_VALUES, dtype=dtype, device=packed.device)
    codes = torch.stack((packed >> 4, packed & 0x0F), dim=-1).reshape(rows, cols)   # even column: high nibble
    values = lut[codes.long()].reshape(rows, cols // NVFP4_BLOCK, NVFP4_BLOCK)
    scales = unswizzle_block_scales(block_scale, rows, cols // NVFP4_BLOCK)         # [rows, cols / 16]
    total = scale_2.to(device=packed.device, dtype=dtype) * scales.to(dtype)
    return (values * total[..., None]).reshape(rows, cols).to(dtype)


class ScaledFP8Linear(nn.Module):
    """Drop-in for nn.Linear whose weight stays float8; `compute_dtype` is the model dtype."""

    def __init__(self, in_features: int, out_features: int, bias: bool, compute_dtype: torch.dtype,
                 fp8_dtype: torch.dtype = FP8_DTYPES[0] if FP8_DTYPES else None, per_row: bool = False):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.compute_dtype = compute_dtype
        self.weight = nn.Parameter(torch.empty(out_features, in_features, dtype=fp8_dtype), requires_grad=False)
        self.register_buffer("weight_scale", torch.ones(out_features if per_row else (), dtype=torch.float32))
        self.bias = nn.Parameter(torch.empty(out_features, dtype=compute_dtype), requires_grad=False) if bias else None

    def dequantized(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        return dequantize_weight(self.weight, self.weight_scale, dtype or self.compute_dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.dequantized(x.dtype), self.bias)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
                f"weight={self.weight.dtype}, scale={'per-row' if self.weight_scale.numel() > 1 else 'scalar'}")


def swap_fp8_linears(module: nn.Module, sd: dict[str, torch.Tensor], compute_dtype: torch.dtype) -> int:
    """Replace every nn.Linear whose weight in `sd` is float8 by a ScaledFP8Linear (module may be on meta).
    `sd` gets a `<name>.weight_scale` for each (1.0 where the file had no scale). Returns how many were swapped."""
    n = 0
    for name, child in list(module.named_modules()):
        if type(child) is not nn.Linear:
            continue
        w = sd.get(f"{name}.weight")
        if w is None or w.dtype not in FP8_DTYPES:
            continue
        key = f"{name}.weight_scale"
        scale = sd.get(key)
        scale = torch.ones((), dtype=torch.float32) if scale is None else scale.to(torch.float32)
        if scale.numel() > 1:
            scale = scale.reshape(-1)
            if scale.numel() != child.out_features:
                continue            # unusual scale layout: the caller up-casts this weight at load instead
        elif scale.ndim:
            scale = scale.reshape(())
        sd[key] = scale
        with torch.device("meta"):
            new = ScaledFP8Linear(child.in_features, child.out_features, child.bias is not None, compute_dtype,
                                  w.dtype, per_row=scale.numel() > 1)
        parent, _, attr = name.rpartition(".")
        setattr(module.get_submodule(parent) if parent else module, attr, new)
        n += 1
    return n


class NVFP4Linear(nn.Module):
    """Drop-in for nn.Linear whose weight stays NVFP4 (uint8 codes [out, in/2], float8 block scales in the 128x4
    tiled layout, float32 per-tensor scale): a quarter of bf16's bytes. Each forward de-quantises with
    `dequantize_nvfp4` to the input's dtype, the very numbers de-quantising at load gives (comfy_kitchen's)."""

    def __init__(self, in_features: int, out_features: int, bias: bool, compute_dtype: torch.dtype,
                 scale_shape: tuple[int, int]):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.compute_dtype = compute_dtype
        self.weight = nn.Parameter(torch.empty(out_features, in_features // 2, dtype=torch.uint8), requires_grad=False)
        self.register_buffer("weight_scale", torch.empty(scale_shape, dtype=torch.float8_e4m3fn))
        self.register_buffer("weight_scale_2", torch.ones((), dtype=torch.float32))
        self.bias = nn.Parameter(torch.empty(out_features, dtype=compute_dtype), requires_grad=False) if bias else None

    def dequantized(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        return dequantize_nvfp4(self.weight, self.weight_scale, self.weight_scale_2, dtype or self.compute_dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:          # [..., in] -> [..., out]
        return F.linear(x, self.dequantized(x.dtype), self.bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, nvfp4"


def is_nvfp4(sd: dict, key: str) -> bool:
    """`key` (a `.weight`) is an NVFP4 weight: uint8 codes with a `weight_scale_2` beside them."""
    t = sd.get(key)
    return t is not None and t.dtype == torch.uint8 and key.endswith(".weight") \
        and key[: -len("weight")] + "weight_scale_2" in sd


def swap_nvfp4_linears(module: nn.Module, sd: dict[str, torch.Tensor], compute_dtype: torch.dtype) -> set[str]:
    """Replace every nn.Linear whose weight in `sd` is kept NVFP4 by an NVFP4Linear (module may be on meta); the
    block scales are viewed as float8 and the per-tensor scale made a float32 scalar in `sd`. Returns the swapped
    weights' keys."""
    done = set()
    for name, child in list(module.named_modules()):
        key = f"{name}.weight"
        if type(child) is not nn.Linear or not is_nvfp4(sd, key):
            continue
        if tuple(sd[key].shape) != (child.out_features, child.in_features // 2):
            continue                                 # the strict shape check names it
        bs = sd[f"{name}.weight_scale"]
        sd[f"{name}.weight_scale"] = bs.view(torch.float8_e4m3fn) if bs.dtype == torch.uint8 else bs
        sd[f"{name}.weight_scale_2"] = sd[f"{name}.weight_scale_2"].to(torch.float32).reshape(())
        with torch.device("meta"):
            new = NVFP4Linear(child.in_features, child.out_features, child.bias is not None, compute_dtype,
                              tuple(bs.shape))
        parent, _, attr = name.rpartition(".")
        setattr(module.get_submodule(parent) if parent else module, attr, new)
        done.add(key)
    return done


def in_features(sd: dict, key: str) -> int:
    """Columns of a Linear weight given as a tensor or a header's TensorInfo: an NVFP4 weight packs two a byte."""
    w = sd[key]
    packed = str(getattr(w, "dtype", "")) in ("U8", "torch.uint8") and key.endswith(".weight") \
        and key[: -len("weight")] + "weight_scale_2" in sd
    return w.shape[1] * (2 if packed else 1)
