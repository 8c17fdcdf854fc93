"""Device memory a local run needs, worked out before any weight is read.

The modules are built on PyTorch's meta device (shapes only: no memory, no file reads; [dev] in about two
seconds), so a run that cannot fit is refused with one line before a single weight is read (the check runs
when the weights load, after ComfyUI's cached models are unloaded so that "free" is what we could get).
What the engine keeps on the device:

- offload=none: every weight, for as long as the model stays loaded;
- offload=blocks: the transformer's parts outside its blocks and the VAE, resident; the largest
  transformer block while the blocks stream; the text encoder's embedding and largest layer while
  the prompt is encoded (offload.py).

Activations are bounded from above per phase (prompt encoding, reference encoding, denoising, decoding)
and one fixed CUDA overhead is added. The numbers are estimates meant to err high, not measurements.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..errors import ConfigError
from .params import ModelPreset

GIB = 1024 ** 3
CUDA_OVERHEAD = 1 * GIB           # CUDA context, cuBLAS workspace, allocator slack
TEXT_TOKENS = 512
VAE_LIVE_TENSORS = 5              # full-resolution tensors alive at once in an encoder res-block


@dataclass(frozen=True)
class ModuleSizes:
    """Bytes of weights, by the part that offload moves as a unit."""

    transformer_resident: int      # embedders, modulations, final layer
    transformer_blocks: int        # all double + single blocks
    transformer_largest_block: int
    text_embedding: int
    text_layers: int
    text_largest_layer: int
    vae: int
    largest_linear_elements: int   # a kept-fp8 weight is de-quantised one layer at a time


@dataclass(frozen=True)
class MemoryPlan:
    weights: int                   # resident at the peak phase
    activations: int               # of the peak phase
    phase: str                     # which phase is the peak
    offload: str

    @property
    def total(self) -> int:
        return self.weights + self.activations + CUDA_OVERHEAD

    def describe(self) -> str:
        return (f"≈ {self.total / GIB:.1f} GiB ({self.weights / GIB:.1f} weights + {self.activations / GIB:.1f} "
                f"activations while {self.phase} + {CUDA_OVERHEAD / GIB:.0f} overhead)")


def _bytes(module: nn.Module, dtype_bytes: int, fp8: float) -> int:
    """Bytes in memory. fp8: the share (0..1) of Linear weight elements an fp8 file stores as float8, which stay
    1 byte each (quant.py); everything else is in the compute dtype."""
    total = 0.0
    for mod in module.modules():
        for name, p in mod.named_parameters(recurse=False):
            linear = isinstance(mod, nn.Linear) and name == "weight"
            per = fp8 + (1 - fp8) * dtype_bytes if linear else dtype_bytes
            total += p.numel() * per
    return int(total)


@functools.lru_cache(maxsize=16)
def module_sizes(preset: ModelPreset, dtype_bytes: int, fp8_transformer: float, fp8_text: float) -> ModuleSizes:
    from .autoencoder import AutoencoderFlux2
    from .text_encoder import TextEncoder
    from .transformer import Flux2Transformer

    with torch.device("meta"):
        tr = Flux2Transformer(preset.transformer)
        te = TextEncoder(preset.text_encoder)
        vae = AutoencoderFlux2(preset.vae)
    blocks = list(tr.double_blocks) + list(tr.single_blocks)
    block_bytes = [_bytes(b, dtype_bytes, fp8_transformer) for b in blocks]
    layer_bytes = [_bytes(layer, dtype_bytes, fp8_text) for layer in te.layers]
    linears = [m.weight.numel() for m in tr.modules() if isinstance(m, nn.Linear)]
    return ModuleSizes(
        transformer_resident=_bytes(tr, dtype_bytes, fp8_transformer) - sum(block_bytes),
        transformer_blocks=sum(block_bytes),
        transformer_largest_block=max(block_bytes, default=0),
        text_embedding=_bytes(te.embed_tokens, dtype_bytes, 0.0),
        text_layers=sum(layer_bytes),
        text_largest_layer=max(layer_bytes, default=0),
        vae=_bytes(vae, dtype_bytes, 0.0),
        largest_linear_elements=max(linears, default=0),
    )


def plan_memory(preset: ModelPreset, *, dtype_bytes: int, offload: str, width: int, height: int,
                reference_pixels: list[int] = (), batch: int = 1, vae_tile: int = 0,
                fp8_transformer: float = 0.0, fp8_text: float = 0.0) -> MemoryPlan:
    """Peak device bytes of one generate call. reference_pixels: w*h of each prepared reference;
    vae_tile: latent pixels per tile side when the decode is tiled (0: whole image)."""
    s = module_sizes(preset, dtype_bytes, round(float(fp8_transformer), 2), round(float(fp8_text), 2))
    t, te = preset.transformer, preset.text_encoder
    tokens = TEXT_TOKENS + (width // 16) * (height // 16) + sum(p // 256 for p in reference_pixels)
    dequant = s.largest_linear_elements * dtype_bytes if fp8_transformer or fp8_text else 0
    # Per token in a single-stream block: input, modulated input, the fused qkv+mlp projection, q/k/v after
    # norm and RoPE, attention output, the gated MLP activation, the concatenated input of the output projection.
    denoise_act = batch * tokens * (10 * t.hidden + 4 * t.mlp_hidden) * dtype_bytes + dequant
    text_act = TEXT_TOKENS * (10 * te.hidden + 3 * te.intermediate) * dtype_bytes + TEXT_TOKENS ** 2 * 4 + dequant
    # Decoder peak: the last upsample takes the half-resolution stage's channels to full resolution in float32
    # (nearest interpolation, as diffusers), then a copy in the compute dtype and the conv output beside it, with
    # its half-resolution input still alive; one more compute-dtype tensor of margin.
    dec = preset.vae.decoder_widths
    up_channels = dec[1] if len(dec) > 1 else dec[0]
    decode_pixels = min(width * height, (vae_tile * 8) ** 2) if vae_tile else width * height
    decode_act = decode_pixels * up_channels * (4 + 3 * dtype_bytes)
    if vae_tile:                                  # the stitched picture and its blend weights, float32
        decode_act += width * height * (3 + 1) * 4
    encode_act = max(reference_pixels, default=0) * preset.vae.block_out[0] * VAE_LIVE_TENSORS * dtype_bytes

    if offload == "blocks":
        resident = s.transformer_resident + s.vae
        phases = {"encoding the prompt": (s.text_embedding + s.text_largest_layer, text_act),
                  "denoising": (s.transformer_largest_block, denoise_act)}
    else:
        resident = (s.transformer_resident + s.transformer_blocks + s.text_embedding + s.text_layers + s.vae)
        phases = {"encoding the prompt": (0, text_act), "denoising": (0, denoise_act)}
    phases["decoding"] = (0, decode_act)
    if reference_pixels:
        phases["encoding references"] = (0, encode_act)
    phase, (extra_weights, act) = max(phases.items(), key=lambda kv: sum(kv[1]))
    return MemoryPlan(weights=resident + extra_weights, activations=act, phase=phase, offload=offload)


def fp8_share(path: Path | None, *, upcast_marker: str | None = None) -> float:
    """Share (0..1) of the 2-D weight elements a safetensors file stores as float8 (header only, no tensor read).
    A file with a key segment `upcast_marker` (the diffusers layout) is up-cast at load (loading.py): 0."""
    if path is None or not Path(path).is_file():
        return 0.0
    st = Path(path).stat()        # planned on every dry run and load: read a header once per file version
    return _fp8_share(str(Path(path).resolve()), st.st_size, st.st_mtime_ns, upcast_marker)


@functools.lru_cache(maxsize=32)
def _fp8_share(path: str, _size: int, _mtime_ns: int, upcast_marker: str | None) -> float:
    from safetensors import safe_open

    fp8 = total = 0
    try:
        with safe_open(path, framework="pt") as f:
            for key in f.keys():
                if upcast_marker and f".{upcast_marker}" in f".{key}":
                    return 0.0
                tensor = f.get_slice(key)
                shape = tensor.get_shape()
                if len(shape) != 2:
                    continue
                n = shape[0] * shape[1]
                total += n
                fp8 += n if tensor.get_dtype().startswith("F8") else 0
    except Exception:   # unreadable files are reported by the loader, with the file named
        return 0.0
    return fp8 / total if total else 0.0


def free_device_memory(device: torch.device) -> tuple[int, int] | None:
    """(free, total) bytes on a CUDA device; None where the question has no answer (CPU, MPS)."""
    if device.type != "cuda":
        return None
    return torch.cuda.mem_get_info(device)


def check_fits(plan: MemoryPlan, device: torch.device, what: str, alternative: MemoryPlan | None = None) -> None:
    """One-line ConfigError when the plan exceeds the device's free memory (checked before any weight moves)."""
    info = free_device_memory(device)
    if info is None or plan.total <= info[0]:
        return
    free, total = info
    if alternative is not None and alternative.total <= free:
        hint = f"; offload=blocks needs {alternative.describe()}"
    else:
        hint = "; choose a smaller output size, fewer references, or an fp8 file"
    raise ConfigError(f"{what} needs {plan.describe()} on {device} with offload={plan.offload}, but only "
                      f"{free / GIB:.1f} of {total / GIB:.1f} GiB are free{hint}")
