"""FLUX.2 VAE (32 latent channels, 8x downsampling) with BatchNorm latent normalisation.

Parameter names follow diffusers' AutoencoderKLFlux2 (`encoder.down_blocks.0.resnets.0.conv1`...);
weights/vae_weights.py renames the LDM/BFL layout (`encoder.down.0.block.0`...) to these names.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .params import VAEParams


class ResnetBlock(nn.Module):
    def __init__(self, cin: int, cout: int, groups: int):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, cin, eps=1e-6)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.norm2 = nn.GroupNorm(groups, cout, eps=1e-6)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.conv_shortcut = nn.Conv2d(cin, cout, 1) if cin != cout else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        if self.conv_shortcut is not None:
            x = self.conv_shortcut(x)
        return x + h


class AttnBlock(nn.Module):
    """Single-head spatial self-attention with a residual (the VAE's mid block)."""

    def __init__(self, ch: int, groups: int):
        super().__init__()
        self.group_norm = nn.GroupNorm(groups, ch, eps=1e-6)
        self.to_q = nn.Linear(ch, ch)
        self.to_k = nn.Linear(ch, ch)
        self.to_v = nn.Linear(ch, ch)
        self.to_out = nn.ModuleList([nn.Linear(ch, ch)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        h = self.group_norm(x).flatten(2).transpose(1, 2)                   # [B, HW, C]
        q, k, v = (m(h)[:, None] for m in (self.to_q, self.to_k, self.to_v))  # [B, 1, HW, C]
        out = F.scaled_dot_product_attention(q, k, v)[:, 0]
        out = self.to_out[0](out).transpose(1, 2).reshape(B, C, H, W)
        return x + out


class MidBlock(nn.Module):
    def __init__(self, ch: int, groups: int):
        super().__init__()
        self.resnets = nn.ModuleList([ResnetBlock(ch, ch, groups), ResnetBlock(ch, ch, groups)])
        self.attentions = nn.ModuleList([AttnBlock(ch, groups)])

    def forward(self, x):
        return self.resnets[1](self.attentions[0](self.resnets[0](x)))


class _Conv(nn.Module):
    def __init__(self, ch: int, stride: int):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, stride=stride, padding=0 if stride == 2 else 1)


class Downsample(_Conv):
    def __init__(self, ch):
        super().__init__(ch, 2)

    def forward(self, x):
        return self.conv(F.pad(x, (0, 1, 0, 1)))   # asymmetric pad, as the original LDM VAE


class Upsample(_Conv):
    def __init__(self, ch):
        super().__init__(ch, 1)

    def forward(self, x):
        dtype = x.dtype
        if dtype == torch.bfloat16:   # nearest upsampling of bf16 is unsupported on some builds
            x = x.float()
        x = F.interpolate(x, scale_factor=2.0, mode="nearest").to(dtype)
        return self.conv(x)


class _Stage(nn.Module):
    def __init__(self, cin: int, cout: int, n: int, groups: int, resample: type | None, attr: str):
        super().__init__()
        self.resnets = nn.ModuleList(ResnetBlock(cin if i == 0 else cout, cout, groups) for i in range(n))
        self.attr = attr
        setattr(self, attr, nn.ModuleList([resample(cout)]) if resample else None)

    def forward(self, x):
        for r in self.resnets:
            x = r(x)
        rs = getattr(self, self.attr)
        return rs[0](x) if rs is not None else x


class Encoder(nn.Module):
    def __init__(self, p: VAEParams):
        super().__init__()
        ch = p.block_out
        self.conv_in = nn.Conv2d(p.in_channels, ch[0], 3, padding=1)
        stages, cout = [], ch[0]
        for i, c in enumerate(ch):
            cin, cout = cout, c
            last = i == len(ch) - 1
            stages.append(_Stage(cin, cout, p.layers_per_block, p.groups, None if last else Downsample, "downsamplers"))
        self.down_blocks = nn.ModuleList(stages)
        self.mid_block = MidBlock(ch[-1], p.groups)
        self.conv_norm_out = nn.GroupNorm(p.groups, ch[-1], eps=1e-6)
        self.conv_out = nn.Conv2d(ch[-1], 2 * p.latent_channels, 3, padding=1)

    def forward(self, x):
        x = self.conv_in(x)
        for b in self.down_blocks:
            x = b(x)
        x = self.mid_block(x)
        return self.conv_out(F.silu(self.conv_norm_out(x)))


class Decoder(nn.Module):
    def __init__(self, p: VAEParams):
        super().__init__()
        widths = p.decoder_widths
        rev = tuple(reversed(widths))
        self.conv_in = nn.Conv2d(p.latent_channels, rev[0], 3, padding=1)
        self.mid_block = MidBlock(rev[0], p.groups)
        stages, cout = [], rev[0]
        for i, c in enumerate(rev):
            cin, cout = cout, c
            last = i == len(rev) - 1
            stages.append(_Stage(cin, cout, p.layers_per_block + 1, p.groups, None if last else Upsample, "upsamplers"))
        self.up_blocks = nn.ModuleList(stages)
        self.conv_norm_out = nn.GroupNorm(p.groups, widths[0], eps=1e-6)
        self.conv_out = nn.Conv2d(widths[0], p.out_channels, 3, padding=1)

    def forward(self, z):
        x = self.mid_block(self.conv_in(z))
        for b in self.up_blocks:
            x = b(x)
        return self.conv_out(F.silu(self.conv_norm_out(x)))


class _BN(nn.Module):
    """Only the running statistics of the VAE's BatchNorm are used (latent normalisation)."""

    def __init__(self, ch: int):
        super().__init__()
        self.register_buffer("running_mean", torch.zeros(ch))
        self.register_buffer("running_var", torch.ones(ch))


class AutoencoderFlux2(nn.Module):
    def __init__(self, p: VAEParams):
        super().__init__()
        self.params = p
        self.encoder = Encoder(p)
        self.decoder = Decoder(p)
        lc = p.latent_channels
        self.quant_conv = nn.Conv2d(2 * lc, 2 * lc, 1)
        self.post_quant_conv = nn.Conv2d(lc, lc, 1)
        self.bn = _BN(4 * lc)

    @property
    def dtype(self) -> torch.dtype:
        return self.encoder.conv_in.weight.dtype

    def _bn_stats(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean = self.bn.running_mean.view(1, -1, 1, 1).to(like.device, like.dtype)
        std = torch.sqrt(self.bn.running_var.view(1, -1, 1, 1) + self.params.bn_eps).to(like.device, like.dtype)
        return mean, std

    def encode(self, image: torch.Tensor) -> torch.Tensor:
        """image [B, 3, H, W] in [-1, 1] -> normalised patchified latents [B, 128, H/16, W/16] (posterior mean)."""
        moments = self.quant_conv(self.encoder(image))
        z = patchify(moments.chunk(2, dim=1)[0])
        mean, std = self._bn_stats(z)
        return (z - mean) / std

    def decode(self, z: torch.Tensor, tile: int = 0, overlap: int = 16) -> torch.Tensor:
        """normalised patchified latents [B, 128, h, w] -> image [B, 3, 16h, 16w] in about [-1, 1].

        tile > 0 decodes in tiles of `tile` x `tile` latent pixels (8 image pixels each) overlapping by
        `overlap`, blended linearly: the decoder's activation memory then stays that of one tile, which
        is what lets a 4 MP image decode on a small GPU. Tiles see less context than the whole picture
        (the decoder's mid-block attention is global), so tiled output differs slightly.
        """
        mean, std = self._bn_stats(z)
        z = self.post_quant_conv(unpatchify(z * std + mean))                 # [B, 32, 2h, 2w]
        if tile <= 0 or (z.shape[2] <= tile and z.shape[3] <= tile):
            return self.decoder(z)
        return decode_tiled(self.decoder, z, tile, min(overlap, tile // 2))


def _ramp(n: int, overlap: int, at_start: bool, at_end: bool, device, dtype) -> torch.Tensor:
    """Blend weights along one axis: linear ramps over the overlaps that touch a neighbour tile."""
    w = torch.ones(n, device=device, dtype=dtype)
    if overlap > 0:
        ramp = torch.linspace(0, 1, overlap + 2, device=device, dtype=dtype)[1:-1]
        if not at_start:
            w[:overlap] = ramp
        if not at_end:
            w[-overlap:] = ramp.flip(0)
    return w


def _starts(size: int, tile: int, overlap: int) -> list[int]:
    if size <= tile:
        return [0]
    step = tile - overlap
    starts = list(range(0, size - tile, step)) + [size - tile]
    return sorted(set(starts))


def decode_tiled(decoder: nn.Module, z: torch.Tensor, tile: int, overlap: int) -> torch.Tensor:
    """z [B, C, H, W] latents -> decoder output [B, 3, 8H, 8W], decoded tile by tile and blended."""
    B, _, H, W = z.shape
    f = 8                                                          # latent pixel -> image pixels
    out = None
    weight = torch.zeros(1, 1, H * f, W * f, device=z.device, dtype=torch.float32)
    ys, xs = _starts(H, tile, overlap), _starts(W, tile, overlap)
    for y in ys:
        for x in xs:
            piece = decoder(z[:, :, y:y + tile, x:x + tile]).float()  # [B, 3, th*8, tw*8]
            th, tw = piece.shape[2], piece.shape[3]
            wy = _ramp(th, overlap * f, y == ys[0], y == ys[-1], z.device, torch.float32)
            wx = _ramp(tw, overlap * f, x == xs[0], x == xs[-1], z.device, torch.float32)
            wt = wy[:, None] * wx[None, :]                          # [th, tw]
            if out is None:
                out = torch.zeros(B, piece.shape[1], H * f, W * f, device=z.device, dtype=torch.float32)
            out[:, :, y * f:y * f + th, x * f:x * f + tw] += piece * wt
            weight[:, :, y * f:y * f + th, x * f:x * f + tw] += wt
    return (out / weight).to(z.dtype)


def patchify(z: torch.Tensor) -> torch.Tensor:
    """[B, C, 2h, 2w] -> [B, 4C, h, w], channel = c*4 + dy*2 + dx."""
    B, C, H, W = z.shape
    z = z.view(B, C, H // 2, 2, W // 2, 2).permute(0, 1, 3, 5, 2, 4)
    return z.reshape(B, C * 4, H // 2, W // 2)


def unpatchify(z: torch.Tensor) -> torch.Tensor:
    B, C4, h, w = z.shape
    z = z.view(B, C4 // 4, 2, 2, h, w).permute(0, 1, 4, 2, 5, 3)
    return z.reshape(B, C4 // 4, h * 2, w * 2)
