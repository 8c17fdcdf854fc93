"""FLUX.2 MMDiT: double-stream blocks, then single-stream blocks.

Parameter names follow Black Forest Labs' reference layout (fused `qkv`, `img_mlp.0`, `final_layer`
with (shift, scale) order), so BFL/Comfy single files load without renaming; diffusers folders are
converted on load (weights/transformer_weights.py). Attention is one SDPA call over [text, image, references].

The [klein] 9B KV variant (`RefKV`) runs references differently, as BFL's `forward_kv_extract` /
`forward_kv_cached` and diffusers' `Flux2KleinKVPipeline` do: on the first step the reference tokens are
modulated at timestep 0 and attend only to themselves, and their post-RoPE keys/values are kept per block;
later steps leave the references out and attend to those kept keys/values. Since a reference token never
sees the noisy image, the text or the timestep, the kept K/V are exactly what every later step would compute.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .params import TransformerParams


def compute_dtype(linear: nn.Module) -> torch.dtype:
    """The dtype a Linear computes in: its weight's, or `compute_dtype` where the weight is stored quantized
    (weights/quant.py's ScaledFP8Linear declares it), so the model never needs to know the weight formats."""
    return getattr(linear, "compute_dtype", None) or linear.weight.dtype


class RMSNorm(nn.Module):
    """Per-head RMSNorm on q/k; the parameter is called `scale` as in BFL files."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x, (x.shape[-1],), self.scale, self.eps)


class QKNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.query_norm = RMSNorm(dim, eps)
        self.key_norm = RMSNorm(dim, eps)


class MLPEmbedder(nn.Module):
    def __init__(self, in_dim: int, hidden: int):
        super().__init__()
        self.in_layer = nn.Linear(in_dim, hidden, bias=False)
        self.out_layer = nn.Linear(hidden, hidden, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out_layer(F.silu(self.in_layer(x)))


class Modulation(nn.Module):
    """One modulation per stream kind, shared by every block of that kind."""

    def __init__(self, dim: int, sets: int):
        super().__init__()
        self.lin = nn.Linear(dim, dim * 3 * sets, bias=False)
        self.sets = sets

    def forward(self, temb: torch.Tensor) -> list[torch.Tensor]:
        # [B, D] -> 3*sets tensors [B, 1, D]: (shift, scale, gate) per set
        return list(self.lin(F.silu(temb))[:, None, :].chunk(3 * self.sets, dim=-1))


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding [cos, sin] of t (already scaled by 1000). [B] -> [B, dim] float32."""
    half = dim // 2
    exponent = -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half
    args = t[:, None].float() * torch.exp(exponent)[None, :]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


def rope_tables(ids: torch.Tensor, axes_dim: tuple[int, ...], theta: int) -> tuple[torch.Tensor, torch.Tensor]:
    """ids [L, n_axes] -> cos, sin [L, head_dim/2] float32 (angles computed in float64 where supported)."""
    f64 = ids.device.type not in ("mps", "npu")
    dt = torch.float64 if f64 else torch.float32
    pos = ids.to(torch.float32).to(dt)
    angles = []
    for i, d in enumerate(axes_dim):
        freqs = 1.0 / (theta ** (torch.arange(0, d, 2, dtype=dt, device=ids.device) / d))   # [d/2]
        angles.append(pos[:, i:i + 1] * freqs[None, :])                                     # [L, d/2]
    ang = torch.cat(angles, dim=-1)
    return ang.cos().float(), ang.sin().float()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Adjacent-pair rotation. x [B, H, L, D]; cos/sin [L, D/2] float32."""
    xf = x.float().unflatten(-1, (-1, 2))                       # [B, H, L, D/2, 2]
    x0, x1 = xf[..., 0], xf[..., 1]
    out = torch.stack((x0 * cos - x1 * sin, x1 * cos + x0 * sin), dim=-1)
    return out.flatten(-2).to(x.dtype)


def _modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, eps: float) -> torch.Tensor:
    return torch.addcmul(shift, F.layer_norm(x, (x.shape[-1],), eps=eps), 1 + scale)


class SelfAttention(nn.Module):
    def __init__(self, dim: int, heads: int, head_dim: int, eps: float):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * heads * head_dim, bias=False)
        self.norm = QKNorm(head_dim, eps)
        self.proj = nn.Linear(heads * head_dim, dim, bias=False)

    def qkv_heads(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        B, L, _ = x.shape
        q, k, v = self.qkv(x).view(B, L, 3, self.heads, -1).permute(2, 0, 3, 1, 4)   # each [B, H, L, Dh]
        return self.norm.query_norm(q), self.norm.key_norm(k), v


class SwiGLUMLP(nn.Sequential):
    """Keys `N.0` / `N.2` as in BFL files: Linear(D, 2F), SwiGLU, Linear(F, D)."""

    def __init__(self, dim: int, inner: int):
        super().__init__(nn.Linear(dim, 2 * inner, bias=False), _SwiGLU(), nn.Linear(inner, dim, bias=False))


class _SwiGLU(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = x.chunk(2, dim=-1)
        return F.silu(a) * b


class RefKV:
    """Reference keys/values of one generation for the KV variant: one (k, v) per block, post-RoPE,
    each [B, H, Lr, Dh]. Empty until the first (extract) forward fills it; then every forward is 'cached'."""

    def __init__(self, n_ref: int):
        self.n_ref = n_ref                                       # reference tokens, at the end of the image stream
        self.double: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.single: list[tuple[torch.Tensor, torch.Tensor]] = []

    @property
    def filled(self) -> bool:
        return bool(self.double or self.single)

    def clear(self) -> None:
        self.double.clear()
        self.single.clear()


class _RefSlot:
    """One block's view of a RefKV: extract (n_ref trailing reference tokens, store their K/V) or cached (kv)."""

    __slots__ = ("n_ref", "kv", "store")

    def __init__(self, n_ref: int = 0, kv=None, store=None):
        self.n_ref, self.kv, self.store = n_ref, kv, store


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cos, sin, ref: _RefSlot | None = None) -> torch.Tensor:
    """q, k, v [B, H, L, Dh] -> [B, L, H*Dh]. With a reference slot: extract (the last n_ref tokens attend
    only to themselves; their K/V are stored) or cached (the stored reference K/V join the keys)."""
    q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
    if ref is not None and ref.n_ref:
        n = ref.n_ref
        # copies: a slice would keep the whole k / v (or, for a single block's v, its whole linear1 output) alive
        ref.store((k[:, :, -n:].clone(), v[:, :, -n:].clone()))
        main = F.scaled_dot_product_attention(q[:, :, :-n], k, v)                        # text + image: all keys
        own = F.scaled_dot_product_attention(q[:, :, -n:], k[:, :, -n:], v[:, :, -n:])   # references: themselves
        out = torch.cat((main, own), dim=2)
    elif ref is not None and ref.kv is not None:
        kr, vr = ref.kv
        out = F.scaled_dot_product_attention(q, torch.cat((k, kr.to(k.dtype)), 2), torch.cat((v, vr.to(v.dtype)), 2))
    else:
        out = F.scaled_dot_product_attention(q, k, v)               # [B, H, L, Dh]
    return out.transpose(1, 2).flatten(2)                        # [B, L, H*Dh]


class DoubleStreamBlock(nn.Module):
    def __init__(self, p: TransformerParams):
        super().__init__()
        self.eps = p.eps
        self.img_attn = SelfAttention(p.hidden, p.heads, p.head_dim, p.eps)
        self.txt_attn = SelfAttention(p.hidden, p.heads, p.head_dim, p.eps)
        self.img_mlp = SwiGLUMLP(p.hidden, p.mlp_hidden)
        self.txt_mlp = SwiGLUMLP(p.hidden, p.mlp_hidden)

    def forward(self, img, txt, mod_img, mod_txt, cos, sin, ref: _RefSlot | None = None):
        # img [B, Li, D], txt [B, Lt, D]; mod_* = 6 x [B, 1, D] (KV extract: mod_img per token, [B, Li, D])
        i_shift1, i_scale1, i_gate1, i_shift2, i_scale2, i_gate2 = mod_img
        t_shift1, t_scale1, t_gate1, t_shift2, t_scale2, t_gate2 = mod_txt
        iq, ik, iv = self.img_attn.qkv_heads(_modulate(img, i_shift1, i_scale1, self.eps))
        tq, tk, tv = self.txt_attn.qkv_heads(_modulate(txt, t_shift1, t_scale1, self.eps))
        out = attention(torch.cat((tq, iq), 2), torch.cat((tk, ik), 2), torch.cat((tv, iv), 2), cos, sin, ref)
        Lt = txt.shape[1]
        img = img + i_gate1 * self.img_attn.proj(out[:, Lt:])
        img = img + i_gate2 * self.img_mlp(_modulate(img, i_shift2, i_scale2, self.eps))
        txt = txt + t_gate1 * self.txt_attn.proj(out[:, :Lt])
        txt = txt + t_gate2 * self.txt_mlp(_modulate(txt, t_shift2, t_scale2, self.eps))
        if txt.dtype == torch.float16:
            txt = txt.clip(-65504, 65504)
        return img, txt


class SingleStreamBlock(nn.Module):
    """Parallel attention + MLP: one input projection (qkv | mlp_in), one output projection."""

    def __init__(self, p: TransformerParams):
        super().__init__()
        self.eps = p.eps
        self.heads = p.heads
        self.qkv_dim = 3 * p.heads * p.head_dim
        self.linear1 = nn.Linear(p.hidden, self.qkv_dim + 2 * p.mlp_hidden, bias=False)
        self.linear2 = nn.Linear(p.heads * p.head_dim + p.mlp_hidden, p.hidden, bias=False)
        self.norm = QKNorm(p.head_dim, p.eps)

    def forward(self, x, mod, cos, sin, ref: _RefSlot | None = None):
        shift, scale, gate = mod
        B, L, _ = x.shape
        h = self.linear1(_modulate(x, shift, scale, self.eps))
        qkv, mlp = h.split((self.qkv_dim, h.shape[-1] - self.qkv_dim), dim=-1)
        q, k, v = qkv.view(B, L, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        out = attention(self.norm.query_norm(q), self.norm.key_norm(k), v, cos, sin, ref)
        a, b = mlp.chunk(2, dim=-1)
        x = x + gate * self.linear2(torch.cat((out, F.silu(a) * b), dim=-1))
        if x.dtype == torch.float16:
            x = x.clip(-65504, 65504)
        return x


class LastLayer(nn.Module):
    def __init__(self, p: TransformerParams):
        super().__init__()
        self.eps = p.eps
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(p.hidden, 2 * p.hidden, bias=False))
        self.linear = nn.Linear(p.hidden, p.in_channels, bias=False)

    def forward(self, x, temb):
        shift, scale = self.adaLN_modulation(temb.to(x.dtype))[:, None, :].chunk(2, dim=-1)   # BFL order
        return self.linear(_modulate(x, shift, scale, self.eps))


class Flux2Transformer(nn.Module):
    def __init__(self, p: TransformerParams):
        super().__init__()
        self.params = p
        self.img_in = nn.Linear(p.in_channels, p.hidden, bias=False)
        self.txt_in = nn.Linear(p.context_dim, p.hidden, bias=False)
        self.time_in = MLPEmbedder(p.timestep_channels, p.hidden)
        self.guidance_in = MLPEmbedder(p.timestep_channels, p.hidden) if p.guidance_embed else None
        self.double_stream_modulation_img = Modulation(p.hidden, 2)
        self.double_stream_modulation_txt = Modulation(p.hidden, 2)
        self.single_stream_modulation = Modulation(p.hidden, 1)
        self.double_blocks = nn.ModuleList(DoubleStreamBlock(p) for _ in range(p.depth_double))
        self.single_blocks = nn.ModuleList(SingleStreamBlock(p) for _ in range(p.depth_single))
        self.final_layer = LastLayer(p)
        self.block_hook = None        # offload.py installs a per-block callable (weights in/out)

    @property
    def dtype(self) -> torch.dtype:
        return compute_dtype(self.img_in)

    def forward(self, img: torch.Tensor, img_ids: torch.Tensor, txt: torch.Tensor, txt_ids: torch.Tensor,
                timestep: torch.Tensor, guidance: torch.Tensor | None = None,
                ref_kv: RefKV | None = None) -> torch.Tensor:
        """img [B, Li, 128] (image tokens then reference tokens), txt [B, Lt, C], ids [L, 4],
        timestep [B] in 0..1 (sigma), guidance [B] or None. Returns the velocity [B, Li, 128].

        ref_kv (KV variant): while empty, img/img_ids end with ref_kv.n_ref reference tokens, which are
        modulated at timestep 0 and isolated; their K/V fill ref_kv and only the image tokens' velocity is
        returned. Once filled, img/img_ids hold the image tokens only and the kept K/V stand in for the references."""
        p = self.params
        dtype = img.dtype
        temb = self._embed(timestep, guidance, dtype)
        mod_img = self.double_stream_modulation_img(temb)
        mod_txt = self.double_stream_modulation_txt(temb)
        mod_single = self.single_stream_modulation(temb)
        extract = ref_kv is not None and not ref_kv.filled
        n_ref = ref_kv.n_ref if extract else 0
        if extract:
            # references are clean images: modulated as at timestep 0 (diffusers `ref_fixed_timestep=0.0`)
            temb0 = self._embed(torch.zeros_like(timestep), guidance, dtype)
            n_img = img.shape[1] - n_ref
            mod_img = _per_token(mod_img, self.double_stream_modulation_img(temb0), n_img, n_ref)
            mod_single = _per_token(mod_single, self.single_stream_modulation(temb0), txt.shape[1] + n_img, n_ref)

        x = self.img_in(img)                                     # [B, Li, D]
        c = self.txt_in(txt)                                     # [B, Lt, D]
        cos, sin = rope_tables(torch.cat((txt_ids, img_ids), 0), p.axes_dim, p.theta)   # [Lt+Li, Dh/2]

        hook = self.block_hook
        try:
            for i, block in enumerate(self.double_blocks):
                if hook is not None:
                    hook(block)
                x, c = block(x, c, mod_img, mod_txt, cos, sin, _slot(ref_kv, ref_kv.double, i, n_ref) if ref_kv else None)
            Lt = c.shape[1]
            h = torch.cat((c, x), dim=1)                          # [B, Lt+Li, D]
            del x, c
            for i, block in enumerate(self.single_blocks):
                if hook is not None:
                    hook(block)
                h = block(h, mod_single, cos, sin, _slot(ref_kv, ref_kv.single, i, n_ref) if ref_kv else None)
        finally:
            if hook is not None:                                  # offload: the last block goes home too
                hook.release()
        return self.final_layer(h[:, Lt:h.shape[1] - n_ref], temb)   # [B, Li - n_ref, 128]

    def _embed(self, timestep: torch.Tensor, guidance: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor:
        p = self.params
        temb = self.time_in(timestep_embedding(timestep.to(dtype) * 1000, p.timestep_channels).to(dtype))
        if self.guidance_in is not None and guidance is not None:
            temb = temb + self.guidance_in(
                timestep_embedding(guidance.to(dtype) * 1000, p.timestep_channels).to(dtype))
        return temb


def _per_token(mod: list[torch.Tensor], ref_mod: list[torch.Tensor], n_main: int, n_ref: int) -> list[torch.Tensor]:
    """Modulation per token: the first n_main tokens take `mod`, the last n_ref `ref_mod`. Each [B, 1, D] -> [B, L, D]."""
    return [torch.cat((m.expand(-1, n_main, -1), r.expand(-1, n_ref, -1)), dim=1) for m, r in zip(mod, ref_mod)]


def _slot(ref_kv: RefKV, kept: list, i: int, n_ref: int) -> _RefSlot:
    if n_ref:
        return _RefSlot(n_ref=n_ref, store=kept.append)
    return _RefSlot(kv=kept[i])
