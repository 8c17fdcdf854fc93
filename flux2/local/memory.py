"""Device memory and RAM a local run needs, worked out before any weight is read.

The modules are built on PyTorch's meta device (shapes only: no memory, no file reads; [dev] in about two
seconds), so a run that cannot fit is refused with one line before a single weight is read (the check runs
when the weights load, after ComfyUI's cached models are unloaded so that "free" is what we could get).
What the engine keeps on the device:

- offload=none: every weight, for as long as the model stays loaded;
- offload=blocks: the transformer's parts outside its blocks and the VAE, resident; on CUDA two of the
  largest transformer blocks while the blocks stream (the running one and the next, prefetched), two of the
  text encoder's largest layers while the prompt is encoded (its embedding stays on the host; offload.py);
  on the CPU one of each.

RAM (anonymous memory; the page cache of the memory-mapped weight files is not counted: the OS gives it back under
pressure): offload=none on CUDA, the largest part (the transformer) passes through RAM while it loads; on the CPU
every weight stays there. offload=blocks: the weights stay in the mapped files; on CUDA two pinned staging
buffers of the largest block as stored, plus the resident parts while they load; on the CPU the resident parts,
one block and the activations. The prompt / reference caches add up to their budget (caches.py, 512 MiB).

The [klein] 9B KV variant keeps every block's reference keys/values from the first step to the last
(transformer.RefKV, on the device: RAM on the CPU); `reference_kv_bytes` adds them to the denoising phase.

Activations are bounded from above per phase (prompt encoding, reference encoding, denoising, decoding)
and one fixed CUDA overhead is added. The numbers are estimates meant to err high, not measurements.
"""
from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..errors import ConfigError
from .model.params import ModelPreset, TransformerParams
from .weights.gguf_quants import BY_NAME, FLOAT_TYPES, stored_bytes

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
    kept_fp8: bool = False          # (header sizes) some Linear weights stay float8
    largest_unit_stored: int = 0    # (header sizes) bytes of the largest block / text layer as the file stores it

    @property
    def staging_unit(self) -> int:
        """Bytes of one pinned staging buffer under offload=blocks on CUDA (offload.CudaTransfer)."""
        return self.largest_unit_stored or max(self.transformer_largest_block, self.text_largest_layer)


@dataclass(frozen=True)
class MemoryPlan:
    weights: int                   # resident at the peak phase
    activations: int               # of the peak phase
    phase: str                     # which phase is the peak
    offload: str
    ram: int = 0                   # anonymous host memory at its peak (page cache of the mapped files aside)
    ram_note: str = ""             # what that is
    reference_kv: int = 0          # KV variant: kept reference keys/values, part of the denoising activations

    @property
    def total(self) -> int:
        return self.weights + self.activations + CUDA_OVERHEAD

    def describe(self) -> str:
        return (f"≈ {self.total / GIB:.1f} GiB ({self.weights / GIB:.1f} weights + {self.activations / GIB:.1f} "
                f"activations while {self.phase}" + (f", {self.reference_kv / GIB:.1f} of them kept reference K/V"
                                                      if self.reference_kv and self.phase == "denoising" else "")
                + f" + {CUDA_OVERHEAD / GIB:.0f} overhead)")

    def describe_ram(self) -> str:
        return f"≈ {self.ram / GIB:.1f} GiB ({self.ram_note})"


def _bytes(module: nn.Module, dtype_bytes: int, fp8: float) -> int:
    """Bytes in memory. fp8: the share (0..1) of Linear weight elements an fp8 file stores as float8, which stay
    1 byte each (weights/quant.py); everything else is in the compute dtype."""
    total = 0.0
    for mod in module.modules():
        for name, p in mod.named_parameters(recurse=False):
            linear = isinstance(mod, nn.Linear) and name == "weight"
            per = fp8 + (1 - fp8) * dtype_bytes if linear else dtype_bytes
            total += p.numel() * per
    return int(total)


@functools.lru_cache(maxsize=16)
def module_sizes(preset: ModelPreset, dtype_bytes: int, fp8_transformer: float, fp8_text: float) -> ModuleSizes:
    from .model.autoencoder import AutoencoderFlux2
    from .model.text_encoder import TextEncoder
    from .model.transformer import Flux2Transformer

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


_SCALE_KEY = re.compile(r"(\.weight_scale|\.weight_scale_2|\.scale_weight|\.input_scale|\.scale_input|\.comfy_quant"
                        r"|\.pre_quant_scale|^scaled_fp8|num_batches_tracked)$")
_BLOCK = re.compile(r"^(double_blocks|single_blocks|transformer_blocks|single_transformer_blocks)\.(\d+)\.")


def _tensor_bytes(tensors: dict, key: str, info, dtype_bytes: int, keep_fp8: bool) -> tuple[int, int]:
    """(bytes in memory, elements) of one tensor as the loader keeps it: float8 Linear weights stay 1 byte where
    kept (weights/quant.py), NVFP4 (uint8 codes + weight_scale_2) kept packed likewise (else de-quantised to the compute
    dtype), GGUF matrices stay in their blocks (weights/gguf.py), the rest is cast
    to it; scales and markers are consumed."""
    if _SCALE_KEY.search(key):
        return 0, 0
    n = info.numel()
    if info.dtype in GGUF_QUANTS:   # GGUF: Linear weights stay in their blocks (GGUFLinear); a token embedding and
        linear = info.ndim == 2 and "embed_tokens" not in key      # anything else is de-quantised at load
        return (stored_bytes(info.dtype, n) if linear else n * dtype_bytes), n
    if info.dtype == "U8" and key.endswith(".weight") and key[: -len("weight")] + "weight_scale_2" in tensors:
        # NVFP4 [out, in/2] codes: kept packed (quant.NVFP4Linear) with one fp8 block scale per 16 elements
        return (n + n // 8 if keep_fp8 else 2 * n * dtype_bytes), 2 * n
    if info.dtype in ("F8_E4M3", "F8_E5M2") and keep_fp8 and info.ndim == 2:
        return n, n
    if info.dtype not in ("F32", "F16", "BF16", "F64", "F8_E4M3", "F8_E5M2"):
        return 0, 0                                   # ids, tokenizer blobs (`tekken_model`), counters
    return n * dtype_bytes, n


_STORED_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "F8_E4M3": 1, "F8_E5M2": 1, "U8": 1, "I64": 8, "I32": 4}
GGUF_QUANTS = frozenset(n for n in BY_NAME if n not in FLOAT_TYPES)


def _stored(info) -> int:
    """Bytes of one tensor as the file stores it."""
    if info.dtype in GGUF_QUANTS:
        return stored_bytes(info.dtype, info.numel())
    return info.numel() * _STORED_BYTES.get(info.dtype, 4)


def sizes_from_headers(transformer: dict, text_encoder: dict, vae: dict, *, dtype_bytes: int, keep_fp8: bool,
                       text_layers_used: int, upcast_transformer: bool = False) -> ModuleSizes:
    """ModuleSizes from safetensors headers (weights/detect.py): no module is built and no weight read, so a 64 GB
    file is planned in milliseconds. upcast_transformer: diffusers-layout fp8 weights are up-cast at load."""
    resident, blocks, stored = 0, {}, {}
    largest = 0
    kept = keep_fp8 and any(i.dtype.startswith("F8") and i.ndim == 2 for i in
                            (*([] if upcast_transformer else transformer.values()), *text_encoder.values()))
    # GGUF Linear weights are de-quantised one layer at a time too: the plan adds the largest one in the compute dtype
    kept = kept or any(i.dtype in GGUF_QUANTS and i.ndim == 2 for i in (*transformer.values(), *text_encoder.values()))
    kept = kept or keep_fp8 and any(i.dtype == "U8" and k.endswith(".weight") and k[:-6] + "weight_scale_2" in t
                                    for t in (transformer, text_encoder) for k, i in t.items())
    for k, info in transformer.items():
        b, n = _tensor_bytes(transformer, k, info, dtype_bytes, keep_fp8 and not upcast_transformer)
        if m := _BLOCK.match(k):
            blocks[m.group(0)] = blocks.get(m.group(0), 0) + b
            stored[m.group(0)] = stored.get(m.group(0), 0) + _stored(info)
        else:
            resident += b
        if k.endswith(".weight") and info.ndim == 2:
            largest = max(largest, n)
    embedding, layers = 0, {}
    for k, info in text_encoder.items():
        b, _ = _tensor_bytes(text_encoder, k, info, dtype_bytes, keep_fp8)
        if k.startswith("embed_tokens."):
            embedding += b
        elif (m := re.match(r"layers\.(\d+)\.", k)) and int(m.group(1)) < text_layers_used:
            layers[m.group(1)] = layers.get(m.group(1), 0) + b
            unit = "text " + m.group(1)
            stored[unit] = stored.get(unit, 0) + _stored(info)
    vae_bytes = sum(_tensor_bytes(vae, k, i, dtype_bytes, False)[0] for k, i in vae.items())
    return ModuleSizes(transformer_resident=resident, transformer_blocks=sum(blocks.values()),
                       transformer_largest_block=max(blocks.values(), default=0), text_embedding=embedding,
                       text_layers=sum(layers.values()), text_largest_layer=max(layers.values(), default=0),
                       vae=vae_bytes, largest_linear_elements=largest, kept_fp8=kept,
                       largest_unit_stored=max(stored.values(), default=0))


def reference_kv_bytes(t: TransformerParams, reference_tokens: int, *, dtype_bytes: int, batch: int = 1,
                       prompt_kinds: int = 1) -> int:
    """Bytes the KV variant keeps after its first step (transformer.RefKV): in every double and single block one
    key and one value of the reference tokens, each [batch, heads, tokens, head_dim] in the compute dtype; with
    CFG one RefKV per prompt kind (prompt_kinds=2; or one RefKV of batch 2B when both run as one forward).
    [klein] 9B, one 1 MP reference (4,096 tokens), bf16: 4096 * 2 * 4096 * 2 bytes * 32 blocks = 2 GiB."""
    blocks = t.depth_double + t.depth_single
    return prompt_kinds * batch * reference_tokens * 2 * t.heads * t.head_dim * dtype_bytes * blocks


def plan_memory(preset: ModelPreset, *, dtype_bytes: int, offload: str, width: int, height: int,
                reference_pixels: list[int] = (), batch: int = 1, vae_tile: int = 0,
                fp8_transformer: float = 0.0, fp8_text: float = 0.0, sizes: ModuleSizes | None = None,
                lora_bytes: int = 0, device_type: str = "cuda", prompt_kinds: int = 1) -> MemoryPlan:
    """Peak device bytes (and RAM) of one generate call. reference_pixels: w*h of each prepared reference;
    vae_tile: latent pixels per tile side when the decode is tiled (0: whole image). sizes: from the files'
    headers (sizes_from_headers); without them, from the preset's modules built on the meta device. lora_bytes:
    the LoRA patches (weights/lora_patches.py), resident on the device in both offload modes.
    device_type: "cuda" (blocks prefetched: two on the device) or "cpu" (one; the device is the RAM).
    prompt_kinds: 2 when CFG runs the prompts as two forwards (the KV variant then keeps one cache per kind)."""
    s = sizes or module_sizes(preset, dtype_bytes, round(float(fp8_transformer), 2), round(float(fp8_text), 2))
    t, te = preset.transformer, preset.text_encoder
    ref_tokens = sum(p // 256 for p in reference_pixels)       # prepared references are multiples of 16 a side
    tokens = TEXT_TOKENS + (width // 16) * (height // 16) + ref_tokens
    dequant = s.largest_linear_elements * dtype_bytes if fp8_transformer or fp8_text or (sizes and sizes.kept_fp8) else 0
    # Per token in a single-stream block: input, modulated input, the fused qkv+mlp projection, q/k/v after
    # norm and RoPE, attention output, the gated MLP activation, the concatenated input of the output projection.
    denoise_act = batch * tokens * (10 * t.hidden + 4 * t.mlp_hidden) * dtype_bytes + dequant
    kv = (reference_kv_bytes(t, ref_tokens, dtype_bytes=dtype_bytes, batch=batch, prompt_kinds=prompt_kinds)
          if preset.reference_kv else 0)
    denoise_act += kv                 # kept from the first step to the last, beside each step's activations
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

    cpu = device_type == "cpu"
    if offload == "blocks":
        resident = s.transformer_resident + s.vae + lora_bytes
        on_device = 2 if device_type == "cuda" else 1     # CUDA: the running block and the prefetched next one
        phases = {"encoding the prompt": (on_device * s.text_largest_layer, text_act),
                  "denoising": (on_device * s.transformer_largest_block, denoise_act)}
    else:
        resident = (s.transformer_resident + s.transformer_blocks + s.text_embedding + s.text_layers + s.vae
                    + lora_bytes)
        phases = {"encoding the prompt": (0, text_act), "denoising": (0, denoise_act)}
    phases["decoding"] = (0, decode_act)
    if reference_pixels:
        phases["encoding references"] = (0, encode_act)
    phase, (extra_weights, act) = max(phases.items(), key=lambda kv: sum(kv[1]))
    weights = resident + extra_weights
    if cpu:
        ram, note = weights + act, ("weights and activations; the mapped files' page cache aside" if offload == "blocks"
                                    else "every weight and the activations")
    elif offload == "blocks":
        ram = 2 * s.staging_unit + s.transformer_resident + s.vae
        note = "2 pinned staging buffers of the largest block + resident parts while loading; weights stay mapped"
    else:
        ram = max(s.transformer_resident + s.transformer_blocks, s.text_embedding + s.text_layers)
        note = "the largest part passes through RAM while loading"
    return MemoryPlan(weights=weights, activations=act, phase=phase, offload=offload, ram=ram, ram_note=note,
                      reference_kv=kv)


def fp8_share(path: Path | None, *, upcast_marker: str | None = None) -> float:
    """Share (0..1) of the 2-D weight elements a safetensors file stores as float8 (header only, no tensor read).
    A file with a key segment `upcast_marker` (the diffusers layout) is up-cast at load
    (weights/transformer_weights.py): 0.
    No file: 0. A header that cannot be read is a ModelLoadError naming the file (never a silent bf16 guess)."""
    if path is None:
        return 0.0
    from .weights.headers import read_any_header

    fp8 = total = 0
    for key, info in read_any_header(path).tensors.items():
        if upcast_marker and f".{upcast_marker}" in f".{key}":
            return 0.0
        if info.ndim != 2:
            continue
        n = info.numel()
        total += n
        fp8 += n if info.dtype.startswith("F8") else 0
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
