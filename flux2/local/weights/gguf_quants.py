"""GGML block formats de-quantised in torch, on whatever device the bytes are on (no `gguf` import here).

Each function takes the raw blocks of one tensor, uint8 [n_blocks, type_size], and returns float32
[n_blocks, block_size]. Every step copies the llama.cpp project's own numpy reference
(`gguf.quants.<TYPE>.dequantize_blocks`, gguf 0.19.0) operation for operation in float32: the same products and sums
in the same order, no fused multiply-add, so the results are bit-identical to `gguf.quants.dequantize`
(tests/local/test_gguf_quants.py checks every type on random blocks). Types the package de-quantises with lookup
grids (IQ1/IQ2/IQ3, TQ) are not ported; `check_supported` refuses them in one line naming the type.
"""
from __future__ import annotations

import torch

QK_K = 256
_CHUNK = 1 << 22            # elements de-quantised to float32 at a time (16 MiB, a few times that in temporaries)

# ggml type id -> (name, elements per block, bytes per block); ids and sizes as in gguf.constants
TYPES: dict[int, tuple[str, int, int]] = {
    0: ("F32", 1, 4), 1: ("F16", 1, 2), 30: ("BF16", 1, 2),
    2: ("Q4_0", 32, 18), 3: ("Q4_1", 32, 20), 6: ("Q5_0", 32, 22), 7: ("Q5_1", 32, 24), 8: ("Q8_0", 32, 34),
    10: ("Q2_K", QK_K, 84), 11: ("Q3_K", QK_K, 110), 12: ("Q4_K", QK_K, 144), 13: ("Q5_K", QK_K, 176),
    14: ("Q6_K", QK_K, 210), 20: ("IQ4_NL", 32, 18), 23: ("IQ4_XS", QK_K, 136),
}
BY_NAME = {name: tid for tid, (name, _, _) in TYPES.items()}
FLOAT_TYPES = ("F32", "F16", "BF16")
IQ4_VALUES = (-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113)


def type_name(tid: int) -> str:
    if tid in TYPES:
        return TYPES[tid][0]
    try:
        from gguf import GGMLQuantizationType
        return GGMLQuantizationType(tid).name
    except (ImportError, ValueError):
        return f"ggml type {tid}"


def check_supported(tid: int, what: str) -> None:
    """A one-line refusal for a type this engine cannot de-quantise (`what` names the file and tensor)."""
    from ...errors import ModelLoadError

    if tid not in TYPES:
        raise ModelLoadError(f"{what} is stored as {type_name(tid)}, a GGUF type this engine does not de-quantise "
                             f"(supported: {', '.join(n for n, _, _ in TYPES.values())})")


def stored_bytes(name: str, numel: int) -> int:
    """Bytes `numel` elements take in the file as type `name` (a name from TYPES)."""
    _, block, size = TYPES[BY_NAME[name]]
    return numel // block * size


# ------------------------------------------------------------------------------------------------ helpers

def _f16(b: torch.Tensor) -> torch.Tensor:
    """uint8 [n, 2] little-endian halves -> float32 [n, 1]."""
    return b.contiguous().view(torch.float16).to(torch.float32)


def _shifts(values, shape, like: torch.Tensor) -> torch.Tensor:
    return torch.tensor(values, dtype=like.dtype, device=like.device).reshape(shape)


def _u32(b: torch.Tensor) -> torch.Tensor:
    """uint8 [n, 4] little-endian -> int64 [n, 1] (torch has no general uint32 shifts)."""
    b = b.to(torch.int64)
    return (b[:, 0] | b[:, 1] << 8 | b[:, 2] << 16 | b[:, 3] << 24).reshape(-1, 1)


def _nibbles(qs: torch.Tensor, group: int) -> torch.Tensor:
    """[n, k * group] bytes -> [n, k, 2, group] nibbles: low nibbles of a group first, then its high nibbles."""
    n = qs.shape[0]
    return (qs.reshape(n, -1, 1, group) >> _shifts([0, 4], (1, 1, 2, 1), qs)) & 0x0F


def _bits(qh: torch.Tensor, count: int) -> torch.Tensor:
    """int64 [n, 1] -> its low `count` bits [n, count] (bit i at column i), uint8."""
    return ((qh >> torch.arange(count, device=qh.device).reshape(1, count)) & 1).to(torch.uint8)


# ----------------------------------------------------------------------------------------- legacy quants

def _q4_0(b):
    n = b.shape[0]
    d = _f16(b[:, :2])
    qs = _nibbles(b[:, 2:], 16).reshape(n, -1).to(torch.int8) - 8
    return d * qs.to(torch.float32)


def _q4_1(b):
    n = b.shape[0]
    d, m = _f16(b[:, :2]), _f16(b[:, 2:4])
    qs = _nibbles(b[:, 4:], 16).reshape(n, -1).to(torch.float32)
    return (d * qs) + m


def _q5(b, off: int):
    n = b.shape[0]
    qh = _bits(_u32(b[:, off:off + 4]), 32)                                    # [n, 32]
    ql = _nibbles(b[:, off + 4:], 16).reshape(n, -1)
    return ql | (qh << 4)                                                      # [n, 32] 0..31, uint8


def _q5_0(b):
    d = _f16(b[:, :2])
    return d * (_q5(b, 2).to(torch.int8) - 16).to(torch.float32)


def _q5_1(b):
    d, m = _f16(b[:, :2]), _f16(b[:, 2:4])
    return (d * _q5(b, 4).to(torch.float32)) + m


def _q8_0(b):
    d = _f16(b[:, :2])
    x = b[:, 2:].contiguous().view(torch.int8).to(torch.float32)
    return x * d


# ---------------------------------------------------------------------------------------------- K-quants

def _q2_k(b):
    n = b.shape[0]
    scales, qs = b[:, :16], b[:, 16:80]
    d, dmin = _f16(b[:, 80:82]), _f16(b[:, 82:84])
    dl = (d * (scales & 0xF).to(torch.float32)).reshape(n, 16, 1)
    ml = (dmin * (scales >> 4).to(torch.float32)).reshape(n, 16, 1)
    q = (qs.reshape(n, -1, 1, 32) >> _shifts([0, 2, 4, 6], (1, 1, 4, 1), qs)) & 3
    q = q.reshape(n, 16, 16).to(torch.float32)
    return (dl * q - ml).reshape(n, -1)


def _q3_k(b):
    n = b.shape[0]
    hmask, qs, scales, d = b[:, :32], b[:, 32:96], b[:, 96:108], _f16(b[:, 108:110])
    low = (scales[:, :8].reshape(n, 1, 8) >> _shifts([0, 4], (1, 2, 1), scales)).reshape(n, 16)
    high = (scales[:, 8:].reshape(n, 1, 4) >> _shifts([0, 2, 4, 6], (1, 4, 1), scales)).reshape(n, 16)
    sc = (low & 0x0F) | ((high & 0x03) << 4)
    sc = (sc.to(torch.int8) - 32).to(torch.float32)
    dl = (d * sc).reshape(n, 16, 1)
    ql = (qs.reshape(n, -1, 1, 32) >> _shifts([0, 2, 4, 6], (1, 1, 4, 1), qs)).reshape(n, 16, 16) & 3
    qh = (hmask.reshape(n, -1, 1, 32) >> _shifts(list(range(8)), (1, 1, 8, 1), hmask)).reshape(n, 16, 16) & 1
    qh = qh ^ 1                                      # as ggml: the offset is 0 where the mask bit is set
    q = (ql.to(torch.int8) - (qh << 2).to(torch.int8)).to(torch.float32)
    return (dl * q).reshape(n, QK_K)


def _scale_min_k4(scales: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Q4_K / Q5_K: 12 bytes -> 8 six-bit scales and 8 six-bit mins, each [n, 8] uint8."""
    n = scales.shape[0]
    s = scales.reshape(n, 3, 4)
    d, m, md = s[:, 0:1], s[:, 1:2], s[:, 2:3]
    sc = torch.cat([d & 0x3F, (md & 0x0F) | ((d >> 2) & 0x30)], dim=-1)
    mn = torch.cat([m & 0x3F, (md >> 4) | ((m >> 2) & 0x30)], dim=-1)
    return sc.reshape(n, 8), mn.reshape(n, 8)


def _k_scales(b):
    n = b.shape[0]
    d, dmin = _f16(b[:, :2]), _f16(b[:, 2:4])
    sc, mn = _scale_min_k4(b[:, 4:16])
    return (d * sc.to(torch.float32)).reshape(n, -1, 1), (dmin * mn.to(torch.float32)).reshape(n, -1, 1)


def _q4_k(b):
    n = b.shape[0]
    d, dm = _k_scales(b)
    q = _nibbles(b[:, 16:], 32).reshape(n, -1, 32).to(torch.float32)
    return (d * q - dm).reshape(n, QK_K)


def _q5_k(b):
    n = b.shape[0]
    d, dm = _k_scales(b)
    qh, qs = b[:, 16:48], b[:, 48:]
    ql = _nibbles(qs, 32).reshape(n, -1, 32)
    qh = ((qh.reshape(n, -1, 1, 32) >> _shifts(list(range(8)), (1, 1, 8, 1), qh)) & 1).reshape(n, -1, 32)
    q = (ql | (qh << 4)).to(torch.float32)
    return (d * q - dm).reshape(n, QK_K)


def _q6_k(b):
    n = b.shape[0]
    ql, qh, scales, d = b[:, :128], b[:, 128:192], b[:, 192:208], _f16(b[:, 208:210])
    sc = scales.contiguous().view(torch.int8).to(torch.float32)
    d = (d * sc).reshape(n, 16, 1)
    ql = _nibbles(ql, 64).reshape(n, -1, 32)
    qh = ((qh.reshape(n, -1, 1, 32) >> _shifts([0, 2, 4, 6], (1, 1, 4, 1), qh)) & 3).reshape(n, -1, 32)
    q = ((ql | (qh << 4)).to(torch.int8) - 32).reshape(n, 16, -1).to(torch.float32)
    return (d * q).reshape(n, QK_K)


# ------------------------------------------------------------------------------------ non-linear 4-bit

def _iq4_lut(like: torch.Tensor) -> torch.Tensor:
    return torch.tensor(IQ4_VALUES, dtype=torch.float32, device=like.device)


def _iq4_nl(b):
    n = b.shape[0]
    d = _f16(b[:, :2])
    codes = _nibbles(b[:, 2:], 16).reshape(n, -1)
    return d * _iq4_lut(b)[codes.long()]


def _iq4_xs(b):
    n = b.shape[0]
    d = _f16(b[:, :2])
    sh = b[:, 2:4].to(torch.int64)
    sh = (sh[:, 0] | sh[:, 1] << 8).reshape(n, 1)                                 # uint16 of high scale bits
    sl = (b[:, 4:8].reshape(n, -1, 1) >> _shifts([0, 4], (1, 1, 2), b)).reshape(n, -1) & 0x0F
    sh = ((sh >> torch.arange(0, 16, 2, device=b.device).reshape(1, -1)) & 3).to(torch.uint8)
    sc = ((sl | (sh << 4)).to(torch.int8) - 32).to(torch.float32)
    dl = (d * sc).reshape(n, -1, 1)
    codes = _nibbles(b[:, 8:], 16).reshape(n, -1, 32)
    return (dl * _iq4_lut(b)[codes.long()]).reshape(n, -1)


_BLOCKS = {"Q4_0": _q4_0, "Q4_1": _q4_1, "Q5_0": _q5_0, "Q5_1": _q5_1, "Q8_0": _q8_0, "Q2_K": _q2_k,
           "Q3_K": _q3_k, "Q4_K": _q4_k, "Q5_K": _q5_k, "Q6_K": _q6_k, "IQ4_NL": _iq4_nl, "IQ4_XS": _iq4_xs}


# ------------------------------------------------------------------------------------------------- entry

def dequantize(raw: torch.Tensor, tid: int, shape: tuple[int, ...], dtype: torch.dtype = torch.float32
               ) -> torch.Tensor:
    """Raw bytes of one tensor (uint8, any shape, on any device) of ggml type `tid` -> `shape` in `dtype`, on the
    same device. Values are those of gguf.quants.dequantize (float32), then cast to `dtype`; large tensors are
    de-quantised a bounded chunk of blocks at a time straight into the output."""
    name, block, size = TYPES[tid]
    flat = raw.reshape(-1)
    if name in FLOAT_TYPES:
        src = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}[name]
        t = flat.contiguous().view(src).reshape(shape)
        return t if src == dtype else t.to(torch.float32).to(dtype)     # f16/bf16 -> f32 is exact: one rounding
    blocks = flat.reshape(-1, size)
    fn = _BLOCKS[name]
    if blocks.shape[0] * block <= _CHUNK:
        return fn(blocks).to(dtype).reshape(shape)
    out = torch.empty(blocks.shape[0], block, dtype=dtype, device=raw.device)
    step = max(1, _CHUNK // block)
    for i in range(0, blocks.shape[0], step):
        out[i:i + step] = fn(blocks[i:i + step]).to(dtype)
    return out.reshape(shape)
