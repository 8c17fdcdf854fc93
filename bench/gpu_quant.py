"""Random block weights in the stored formats the engine runs without up-casting at load: fp8, GGUF, NVFP4.

For step-time rows (bench/gpu_full_size.py): every nn.Linear inside the transformer's blocks becomes the layer a
file of that format gives (ScaledFP8Linear, GGUFLinear, NVFP4Linear), holding random bytes of the real size and
layout. De-quantising costs the same whatever the values, so the bytes need only decode to weights like the bf16
rows' (gpu_random: zero mean, std 1/sqrt(fan_in), so activations keep their scale through the real depth): fp8 is
the bf16 weight rounded; GGUF blocks get random quants under f16 scales chosen for that std (Q4_K's min term set
to cancel the mean); NVFP4 random E2M1 codes (symmetric) under float8 block scales in [0.5, 1] and a per-tensor
scale for that std. Built on the device, so a 9B model's worth takes a moment, not a quantiser's minutes.
"""
from __future__ import annotations

import torch
from torch import nn

KINDS = ("fp8", "gguf-q8_0", "gguf-q4_k", "nvfp4")
# Per type: (byte offset of an f16 scale field in one block, its value as a multiple of the target std). ggml's
# block_q8_0 is d, qs[32] (w = d*q, q uniform in int8: std 74 d); block_q4_K is d, dmin, scales[12], qs[128]
# (w = d*sc*q - dmin*m, sc and m uniform 6-bit, q 4-bit: dmin = 7.5 d makes the mean 0, the std is then 258 d).
_GGUF_SCALES = {"Q8_0": ((0, 1 / 74),), "Q4_K": ((0, 1 / 258), (2, 7.5 / 258))}
_NVFP4_STD = 2.2          # std of an E2M1 code value (2.93) times a block scale uniform in [0.5, 1] (0.76)


def quantize_blocks(model: nn.Module, kind: str, compute_dtype: torch.dtype) -> int:
    """Swap the Linears of `model.double_blocks` and `model.single_blocks` for `kind`'s layer; returns how many."""
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r} (known: {', '.join(KINDS)})")
    n = 0
    for blocks in (model.double_blocks, model.single_blocks):
        for name, child in list(blocks.named_modules()):
            if type(child) is not nn.Linear:
                continue
            blocks.set_submodule(name, _layer(child, kind, compute_dtype))
            n += 1
    return n


def _layer(linear: nn.Linear, kind: str, dtype: torch.dtype) -> nn.Module:
    # Built where the weights are: the layers' empty tensors are not made in host RAM and copied over.
    with torch.device(linear.weight.device):
        if kind == "fp8":
            layer = _fp8(linear, dtype)
        elif kind == "nvfp4":
            layer = _nvfp4(linear, dtype)
        else:
            layer = _gguf(linear, kind.split("-")[1].upper(), dtype)
    if linear.bias is not None:
        layer.bias.data = linear.bias.detach().to(dtype)
    return layer


def _fp8(linear: nn.Linear, dtype: torch.dtype) -> nn.Module:
    """float8_e4m3fn weight with one scale (what an fp8 file gives)."""
    from ..flux2.local.weights.quant import ScaledFP8Linear

    w = linear.weight.detach()
    scale = w.abs().amax().float().clamp_min(1e-12) / 448.0
    layer = ScaledFP8Linear(linear.in_features, linear.out_features, linear.bias is not None, dtype)
    layer.weight.data = (w.float() / scale).to(torch.float8_e4m3fn)
    layer.weight_scale.data = scale.reshape(())
    return layer


def _gguf(linear: nn.Linear, type_name: str, dtype: torch.dtype) -> nn.Module:
    from ..flux2.local.weights import gguf_quants as gq
    from ..flux2.local.weights.gguf import GGUFLinear

    device = linear.weight.device
    tid = gq.BY_NAME[type_name]
    _, block_values, block_bytes = gq.TYPES[tid]
    blocks = linear.in_features * linear.out_features // block_values
    raw = torch.randint(0, 256, (blocks, block_bytes), dtype=torch.uint8, device=device)
    std = linear.in_features ** -0.5
    for offset, per_std in _GGUF_SCALES[type_name]:
        raw[:, offset:offset + 2] = torch.full((blocks,), std * per_std, dtype=torch.float16, device=device) \
            .view(torch.uint8).reshape(blocks, 2)
    layer = GGUFLinear(linear.in_features, linear.out_features, linear.bias is not None, dtype, tid, raw.numel())
    layer.weight.data = raw.reshape(-1)
    return layer


def _nvfp4(linear: nn.Linear, dtype: torch.dtype) -> nn.Module:
    """uint8 codes [out, in/2] (two codes a byte), float8 block scales in the 128x4-tiled shape, float32
    per-tensor scale."""
    from ..flux2.local.weights.quant import NVFP4_BLOCK, NVFP4Linear

    device, rows, cols = linear.weight.device, linear.out_features, linear.in_features
    scale_shape = (-(-rows // 128) * 128, -(-(cols // NVFP4_BLOCK) // 4) * 4)
    layer = NVFP4Linear(cols, rows, linear.bias is not None, dtype, scale_shape)
    layer.weight.data = torch.randint(0, 256, (rows, cols // 2), dtype=torch.uint8, device=device)
    layer.weight_scale.data = (0.5 + 0.5 * torch.rand(scale_shape, device=device)).to(torch.float8_e4m3fn)
    layer.weight_scale_2.data = torch.tensor(cols ** -0.5 / _NVFP4_STD, dtype=torch.float32, device=device)
    return layer
