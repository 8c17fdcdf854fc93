"""GGUF files (ComfyUI-GGUF's FLUX.2 transformers, llama.cpp text encoders) read with the `gguf` package.

The llama.cpp project's own reader (`gguf.GGUFReader`, imported lazily: an optional dependency) memory-maps the
file; every tensor stays a uint8 view into that map. Layout as ComfyUI-GGUF writes and reads it (docs/model-files.md):
`general.architecture` "flux" for FLUX.2 transformers (or absent / "pig": tensor names decide), BFL tensor names
with or without `model.diffusion_model.`, dims stored innermost first (reversed against torch),
`comfy.gguf.orig_shape.<name>` where a tensor was reshaped to be quantisable; text encoders under llama.cpp names
(`blk.N.attn_q.weight`, `token_embd.weight`) with architecture "qwen3" or "llama".
Linear weights stay quantised (GGUFLinear, de-quantised per layer when it runs); other quantised tensors are
de-quantised once at load. gguf_quants.py holds the block formats.
"""
from __future__ import annotations

import functools
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ...errors import ModelLoadError
from .safetensors_header import Header, TensorInfo
from . import gguf_quants as gq

SUFFIX = ".gguf"
IMAGE_ARCHS = ("flux", "flux2", "pig")            # "pig": gguf-org's files; ComfyUI-GGUF detects from names then
TEXT_ARCHS = ("llama", "qwen3", "mistral3")
# llama.cpp tensor names -> Hugging Face names (ComfyUI-GGUF loader.py LLAMA_SD_MAP, applied in this order)
LLAMA_NAMES = (("blk.", "model.layers."), ("attn_norm", "input_layernorm"), ("attn_q_norm.", "self_attn.q_norm."),
               ("attn_k_norm.", "self_attn.k_norm."), ("attn_q", "self_attn.q_proj"), ("attn_k", "self_attn.k_proj"),
               ("attn_v", "self_attn.v_proj"), ("attn_output", "self_attn.o_proj"), ("ffn_up", "mlp.up_proj"),
               ("ffn_down", "mlp.down_proj"), ("ffn_gate", "mlp.gate_proj"), ("ffn_norm", "post_attention_layernorm"),
               ("token_embd", "model.embed_tokens"), ("output_norm", "model.norm"), ("output.weight", "lm_head.weight"))


def is_gguf(path) -> bool:
    return Path(path).suffix.lower() == SUFFIX


def _gguf():
    try:
        import gguf
    except ImportError:
        raise ModelLoadError("reading .gguf files needs the gguf package: pip install gguf==0.19.0 "
                             "(or comfyui-flux2[gguf])") from None
    return gguf


@dataclass(frozen=True)
class GGUFTensor:
    """One tensor as stored: raw bytes (uint8 view into the mapped file), its ggml type and torch shape."""

    raw: torch.Tensor                  # uint8 [n_bytes]
    tid: int
    shape: tuple[int, ...]

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def type_name(self) -> str:
        return gq.TYPES[self.tid][0]

    @property
    def quantized(self) -> bool:
        return self.type_name not in gq.FLOAT_TYPES

    def numel(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n

    def as_float(self) -> torch.Tensor:
        """F32 / F16 / BF16: a view of the mapped bytes in the file's dtype."""
        return gq.dequantize(self.raw, self.tid, self.shape,
                             {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}[self.type_name])

    def dequantize(self, dtype: torch.dtype) -> torch.Tensor:
        return gq.dequantize(self.raw, self.tid, self.shape, dtype)


# ------------------------------------------------------------------------------------------------ reading

def _open(path: Path, what: str):
    gguf = _gguf()
    if not path.is_file():
        raise ModelLoadError(f"{what} file not found: {path}")
    try:
        return gguf.GGUFReader(str(path), "c")    # copy-on-write, as safetensors maps: a LoRA merged into a float
                                                  # weight writes private pages, never the file
    except (ValueError, OSError, KeyError, IndexError, TypeError) as exc:
        msg = str(exc).splitlines()[0][:100] if str(exc) else type(exc).__name__
        raise ModelLoadError(f"{what} file {path.name} is not a readable GGUF file ({msg})") from None


def _field(reader, key: str):
    """A string or an integer array field, decoded from the reader's parts as ComfyUI-GGUF does (works with every
    gguf release since 0.13, before ReaderField.contents existed)."""
    f = reader.get_field(key)
    if f is None:
        return None
    if f.types[0].name == "STRING":
        return str(bytes(f.parts[f.data[-1]]), encoding="utf-8")
    if f.types[0].name == "ARRAY":
        return [int(f.parts[i][0]) for i in f.data]
    return f.parts[f.data[-1]].tolist()[0]


def _torch_shape(reader, t) -> tuple[int, ...]:
    orig = _field(reader, f"comfy.gguf.orig_shape.{t.name}")
    if orig is not None:
        return tuple(int(d) for d in orig)
    return tuple(int(d) for d in reversed(t.shape.tolist()))


def _hf_name(name: str) -> str:
    for src, dst in LLAMA_NAMES:
        name = name.replace(src, dst)
    return name


@dataclass(frozen=True)
class GGUFFile:
    arch: str | None
    metadata: dict[str, str]           # string fields (general.name, ...), for the distilled / Base hints
    tensors: dict[str, GGUFTensor]     # HF names for text encoders, file names otherwise
    numbers: dict[str, int]            # integer fields (llama.attention.head_count, ...)


def read_gguf(path, what: str = "weights") -> GGUFFile:
    """Every tensor as a GGUFTensor (no data read: views into the memory-mapped file)."""
    path = Path(path)
    reader = _open(path, what)
    arch = _field(reader, "general.architecture")
    text = arch in TEXT_ARCHS
    meta, numbers = {}, {}
    for key, f in reader.fields.items():
        if key.startswith("GGUF."):        # the reader's own entries (version, tensor_count, kv_count): not metadata
            continue
        if len(f.types) == 1 and f.types[0].name == "STRING" and not key.startswith("tokenizer."):
            meta[key] = _field(reader, key)
        elif len(f.types) == 1 and f.types[0].name.startswith(("UINT", "INT")):
            numbers[key] = int(_field(reader, key))
    tensors: dict[str, GGUFTensor] = {}
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        for t in reader.tensors:
            tid = int(t.tensor_type)
            gq.check_supported(tid, f"{what} {path.name}: tensor {t.name}")
            raw = torch.from_numpy(t.data.reshape(-1).view("uint8"))
            tensors[_hf_name(t.name) if text else t.name] = GGUFTensor(raw, tid, _torch_shape(reader, t))
    return GGUFFile(arch, meta, tensors, numbers)


@functools.lru_cache(maxsize=32)
def _header(path: str, _stamp: tuple, what: str) -> Header:
    f = read_gguf(path, what)
    infos = {k: TensorInfo(t.type_name, t.shape) for k, t in f.tensors.items()}
    meta = dict(f.metadata)
    meta.update({k: str(v) for k, v in f.numbers.items()})
    if f.arch is not None:
        meta["general.architecture"] = f.arch
    return Header(infos, meta, sum(t.raw.numel() for t in f.tensors.values()))


def read_gguf_header(path, what: str = "weights") -> Header:
    """Names, ggml type names (TensorInfo.dtype: "Q4_K", "BF16", ...) and torch shapes; cached per file version."""
    path = Path(path)
    if not path.is_file():
        raise ModelLoadError(f"{what} file not found: {path}")
    st = path.stat()
    return _header(str(path.resolve()), (st.st_size, st.st_mtime_ns), what)


# --------------------------------------------------------------------------------------------- the layer

class GGUFLinear(nn.Module):
    """nn.Linear whose weight stays in its GGML blocks (uint8) and is de-quantised, on the device the bytes are on,
    each time the layer runs; LoRA hooks (lora_patches.py) and block offload (offload.py: the uint8 bytes are what
    streams) see an ordinary Linear module."""

    def __init__(self, in_features: int, out_features: int, bias: bool, compute_dtype: torch.dtype, tid: int,
                 n_bytes: int):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.compute_dtype, self.tid = compute_dtype, tid
        self.weight = nn.Parameter(torch.empty(n_bytes, dtype=torch.uint8), requires_grad=False)
        self.bias = nn.Parameter(torch.empty(out_features, dtype=compute_dtype), requires_grad=False) if bias else None

    def dequantized(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        return gq.dequantize(self.weight, self.tid, (self.out_features, self.in_features), dtype or self.compute_dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:        # [..., in] -> [..., out]
        return F.linear(x, self.dequantized(x.dtype), self.bias)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
                f"weight={gq.type_name(self.tid)}")


def swap_gguf_linears(module: nn.Module, sd: dict, compute_dtype: torch.dtype) -> dict:
    """Every nn.Linear whose weight in `sd` is a quantised GGUFTensor becomes a GGUFLinear (module may be on meta);
    returns sd with those weights as their raw bytes."""
    sd = dict(sd)
    for name, child in list(module.named_modules()):
        w = sd.get(f"{name}.weight")
        if type(child) is not nn.Linear or not isinstance(w, GGUFTensor) or not w.quantized:
            continue
        if w.shape != (child.out_features, child.in_features):
            continue                                   # the strict shape check in assemble.into_module names it
        with torch.device("meta"):
            new = GGUFLinear(child.in_features, child.out_features, child.bias is not None, compute_dtype, w.tid,
                             w.raw.numel())
        parent, _, attr = name.rpartition(".")
        setattr(module.get_submodule(parent) if parent else module, attr, new)
        sd[f"{name}.weight"] = w.raw
    return sd


def settle(sd: dict, dtype: torch.dtype, mapped: bool) -> dict:
    """The remaining GGUFTensors as torch tensors: floats cast to `dtype` (mapped: left in the file's dtype, a view;
    offload.py casts them as it streams them), other quantised tensors de-quantised once to `dtype`."""
    out = {}
    for k, t in sd.items():
        if isinstance(t, GGUFTensor):
            if not t.quantized:
                t = t.as_float()
                if not mapped:
                    t = t if t.dtype == dtype else t.to(torch.float32).to(dtype)
            else:
                t = t.dequantize(dtype)
        if not mapped and t.is_floating_point() and t.data_ptr() % 64:
            t = t.clone()                              # aligned, as quant_read.dequantize does (same BLAS paths)
        out[k] = t
    return out


_DIFFUSERS = re.compile(r"^(transformer_blocks|single_transformer_blocks)\.")


def check_transformer(f: GGUFFile, name: str) -> None:
    if f.arch in TEXT_ARCHS:
        raise ModelLoadError(f"{name} is a GGUF text encoder (architecture {f.arch!r}), not a diffusion model")
    if f.arch is not None and f.arch not in IMAGE_ARCHS:
        raise ModelLoadError(f"{name} is a GGUF file of architecture {f.arch!r}, not a FLUX.2 transformer")
    if any(_DIFFUSERS.match(k) for k in f.tensors):
        raise ModelLoadError(f"{name} is a GGUF file in the diffusers layout, which ComfyUI-GGUF does not publish "
                             f"or read; convert the BFL/ComfyUI single file (fused qkv) instead")


# ------------------------------------------------------------------------------------------ text encoders

def _unpermute(t: GGUFTensor, heads: int) -> GGUFTensor:
    """Undo llama.cpp's q/k row permutation (convert_hf_to_gguf.py LlamaModel.permute, for its interleaved RoPE)
    as ComfyUI-GGUF's llama_permute does. Rows are whole blocks, so the raw bytes move row by row."""
    rows = t.shape[0]
    raw = t.raw.reshape(rows, -1)
    raw = raw.reshape(heads, rows // heads // 2, 2, raw.shape[1]).transpose(1, 2).reshape(-1).contiguous()
    return GGUFTensor(raw, t.tid, t.shape)


def read_text_encoder(path, name: str, keep) -> dict[str, GGUFTensor]:
    """A llama.cpp text encoder under Hugging Face names (`model.layers.N.self_attn.q_proj.weight`, ...): "qwen3"
    (klein's Qwen3, no permutation: NEOX RoPE) or "llama" (Mistral Small: q/k rows un-permuted with the file's
    head counts). keep(name) drops what FLUX.2 never reads."""
    f = read_gguf(path, "text encoder")
    if f.arch not in ("qwen3", "llama"):
        what = "no architecture" if f.arch is None else f"architecture {f.arch!r}"
        raise ModelLoadError(f"{name} is a GGUF file with {what}; GGUF text encoders are read for llama.cpp's "
                             f"'qwen3' ([klein]) and 'llama' (Mistral Small, [dev]) only")
    tensors = {k: t for k, t in f.tensors.items() if keep(k)}
    if f.arch == "llama":
        heads, kv = f.numbers.get("llama.attention.head_count"), f.numbers.get("llama.attention.head_count_kv")
        if not heads:
            raise ModelLoadError(f"{name} lacks llama.attention.head_count, needed to undo llama.cpp's q/k order")
        for k, t in list(tensors.items()):
            if k.endswith("self_attn.q_proj.weight"):
                tensors[k] = _unpermute(t, heads)
            elif k.endswith("self_attn.k_proj.weight"):
                tensors[k] = _unpermute(t, kv or heads)
    return tensors


def text_config(header: Header) -> dict:
    """The Hugging Face config fields a llama.cpp text encoder's metadata gives (`<arch>.attention.head_count`,
    `head_count_kv`, `key_length` = head size, `rope.freq_base`, `attention.layer_norm_rms_epsilon`); {} for others.
    The head size matters for Mistral Small, whose heads (128) are not hidden / heads (160)."""
    meta = header.metadata
    arch = meta.get("general.architecture")
    if arch not in TEXT_ARCHS:
        return {}
    names = {"attention.head_count": "num_attention_heads", "attention.head_count_kv": "num_key_value_heads",
             "attention.key_length": "head_dim"}
    return {hf: int(meta[f"{arch}.{g}"]) for g, hf in names.items() if f"{arch}.{g}" in meta}
