"""Noise, schedule and Euler steps, written to match diffusers' FLUX.2 pipelines number for number.

Same seed => same initial noise as diffusers: one draw from a CPU `torch.Generator` seeded with the
seed, shape [B, 128, H/16, W/16], in the pipeline dtype, packed row-major into tokens.
"""
from __future__ import annotations

import math

import numpy as np
import torch


def latent_grid(width: int, height: int) -> tuple[int, int]:
    """(rows, cols) of image tokens: one token per 16x16 pixels."""
    return height // 16, width // 16


def initial_noise(seed: int, batch: int, width: int, height: int, dtype: torch.dtype = torch.float32,
                  channels: int = 128) -> torch.Tensor:
    """[B, h*w, 128] on the CPU; token index = row * w + col."""
    h, w = latent_grid(width, height)
    gen = torch.Generator("cpu").manual_seed(int(seed))
    noise = torch.randn((batch, channels, h, w), generator=gen, dtype=dtype)   # [B, C, h, w]
    return pack(noise)


def pack(x: torch.Tensor) -> torch.Tensor:
    """[B, C, h, w] -> [B, h*w, C]."""
    return x.flatten(2).transpose(1, 2)


def unpack(x: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """[B, h*w, C] -> [B, C, h, w]."""
    return x.transpose(1, 2).reshape(x.shape[0], x.shape[2], h, w)


def image_ids(h: int, w: int, t: int = 0, device=None) -> torch.Tensor:
    """(t, row, col, 0) per token, row-major. [h*w, 4] int64."""
    rows = torch.arange(h, device=device).repeat_interleave(w)
    cols = torch.arange(w, device=device).repeat(h)
    return torch.stack((torch.full_like(rows, t), rows, cols, torch.zeros_like(rows)), dim=1)


def text_ids(length: int, device=None) -> torch.Tensor:
    """(0, 0, 0, l). [L, 4] int64."""
    ids = torch.zeros(length, 4, dtype=torch.long, device=device)
    ids[:, 3] = torch.arange(length, device=device)
    return ids


def empirical_mu(image_seq_len: int, steps: int) -> float:
    """BFL's fitted schedule shift for a token count and step count."""
    a1, b1 = 8.73809524e-05, 1.89833333
    a2, b2 = 0.00016927, 0.45666666
    if image_seq_len > 4300:
        return float(a2 * image_seq_len + b2)
    m_200 = a2 * image_seq_len + b2
    m_10 = a1 * image_seq_len + b1
    a = (m_200 - m_10) / 190.0
    b = m_200 - 200.0 * a
    return float(a * steps + b)


def sigmas(steps: int, image_seq_len: int) -> torch.Tensor:
    """steps+1 float32 sigmas from 1 to 0 (the last is 0). Computed in numpy float32 as diffusers does."""
    if steps < 1:
        raise ValueError("steps must be >= 1")
    mu = empirical_mu(image_seq_len, steps)
    s = np.linspace(1.0, 1 / steps, steps).astype(np.float32)
    s = math.exp(mu) / (math.exp(mu) + (1 / s - 1) ** 1.0)
    s = torch.from_numpy(np.asarray(s)).to(torch.float32)
    return torch.cat([s, torch.zeros(1)])


def model_timestep(sigma: torch.Tensor, batch: int, dtype: torch.dtype) -> torch.Tensor:
    """What diffusers feeds the transformer: (sigma*1000 cast to the latent dtype) / 1000, per sample."""
    return (sigma * 1000).expand(batch).to(dtype) / 1000


def euler_step(x: torch.Tensor, v: torch.Tensor, sigma: torch.Tensor, sigma_next: torch.Tensor) -> torch.Tensor:
    """x <- x + (sigma_next - sigma) * v, accumulated in float32, returned in v's dtype (as diffusers)."""
    dt = sigma_next - sigma
    return (x.to(torch.float32) + dt * v).to(v.dtype)
