"""Text conditioning: minimal Qwen3 (klein) and Mistral (dev) decoder stacks in plain torch.

Only the layers whose hidden states FLUX.2 reads are run (up to layer 27 of Qwen3's 36, 30 of Mistral's
40); no LM head, no KV cache. Parameter names follow Hugging Face's (`layers.N.self_attn.q_proj`...),
so HF / ComfyUI text-encoder files load after stripping their prefix (weights/text_encoder_weights.py).

We chose our own implementation over `transformers` (kept as a test-only reference): it avoids a heavy
runtime dependency, skips unused layers, and is ~150 lines.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .params import TextEncoderParams


class HFRMSNorm(nn.Module):
    """RMSNorm computed in float32, weight applied after casting back (as Hugging Face's)."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * xf.to(dtype)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    a, b = x.chunk(2, dim=-1)
    return torch.cat((-b, a), dim=-1)


class Attention(nn.Module):
    def __init__(self, p: TextEncoderParams):
        super().__init__()
        self.p = p
        self.q_proj = nn.Linear(p.hidden, p.heads * p.head_dim, bias=False)
        self.k_proj = nn.Linear(p.hidden, p.kv_heads * p.head_dim, bias=False)
        self.v_proj = nn.Linear(p.hidden, p.kv_heads * p.head_dim, bias=False)
        self.o_proj = nn.Linear(p.heads * p.head_dim, p.hidden, bias=False)
        if p.qk_norm:
            self.q_norm = HFRMSNorm(p.head_dim, p.rms_eps)
            self.k_norm = HFRMSNorm(p.head_dim, p.rms_eps)

    def forward(self, x, cos, sin, mask):
        B, L, _ = x.shape
        p = self.p
        q = self.q_proj(x).view(B, L, p.heads, p.head_dim)
        k = self.k_proj(x).view(B, L, p.kv_heads, p.head_dim)
        v = self.v_proj(x).view(B, L, p.kv_heads, p.head_dim).transpose(1, 2)
        if p.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = q.transpose(1, 2), k.transpose(1, 2)                      # [B, H, L, Dh]
        q = q * cos + _rotate_half(q) * sin
        k = k * cos + _rotate_half(k) * sin
        # Rows with no visible key (left padding) come out as exact zeros, as with transformers' SDPA path.
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=p.heads != p.kv_heads)
        return self.o_proj(out.transpose(1, 2).reshape(B, L, -1))


class MLP(nn.Module):
    def __init__(self, p: TextEncoderParams):
        super().__init__()
        self.gate_proj = nn.Linear(p.hidden, p.intermediate, bias=False)
        self.up_proj = nn.Linear(p.hidden, p.intermediate, bias=False)
        self.down_proj = nn.Linear(p.intermediate, p.hidden, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    def __init__(self, p: TextEncoderParams):
        super().__init__()
        self.self_attn = Attention(p)
        self.mlp = MLP(p)
        self.input_layernorm = HFRMSNorm(p.hidden, p.rms_eps)
        self.post_attention_layernorm = HFRMSNorm(p.hidden, p.rms_eps)

    def forward(self, x, cos, sin, mask):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, mask)
        return x + self.mlp(self.post_attention_layernorm(x))


class TextEncoder(nn.Module):
    """Returns the stacked hidden states FLUX.2 conditions on: [B, L, len(out_layers) * hidden]."""

    def __init__(self, p: TextEncoderParams):
        super().__init__()
        self.p = p
        self.embed_tokens = nn.Embedding(p.vocab, p.hidden)
        # Layers after the last one read are never run, so they are not even built.
        self.layers = nn.ModuleList(DecoderLayer(p) for _ in range(max(p.out_layers)))
        self.layer_hook = None        # offload.py installs a per-layer callable (weights in/out)

    @property
    def dtype(self) -> torch.dtype:
        return self.embed_tokens.weight.dtype

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        p = self.p
        B, L = input_ids.shape
        dev = input_ids.device
        x = self.embed_tokens(input_ids)                                   # [B, L, Dm]
        pos = torch.arange(L, device=dev, dtype=torch.float32)
        inv = 1.0 / (p.rope_theta ** (torch.arange(0, p.head_dim, 2, device=dev, dtype=torch.int64).float()
                                      / p.head_dim))
        freqs = pos[:, None] * inv[None, :]                                # [L, Dh/2] float32
        emb = torch.cat((freqs, freqs), dim=-1)
        cos, sin = emb.cos().to(x.dtype), emb.sin().to(x.dtype)
        causal = torch.ones(L, L, dtype=torch.bool, device=dev).tril()
        mask = causal[None, None] & attention_mask.bool()[:, None, None, :]  # [B, 1, L, L]
        outs = {}
        wanted = set(p.out_layers)
        if 0 in wanted:
            outs[0] = x
        hook = self.layer_hook
        try:
            for i, layer in enumerate(self.layers, start=1):
                if hook is not None:
                    hook(layer)
                x = layer(x, cos, sin, mask)
                if i in wanted:
                    outs[i] = x
        finally:
            if hook is not None:                                      # offload: the last layer goes home too
                hook.release()
        out = torch.stack([outs[k] for k in p.out_layers], dim=2)          # [B, L, n, Dm]
        return out.reshape(B, L, -1)
