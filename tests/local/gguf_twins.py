"""GGUF twins written with the gguf package's own writer, in the layout ComfyUI-GGUF publishes for FLUX
transformers (facts and sources: docs/model-files.md):

- `general.architecture` "flux" (tools/convert.py ModelFlux: BFL keys, diffusers layout refused), tensor names
  without `model.diffusion_model.` (convert.py strips it), `general.quantization_version`, `general.file_type`;
- 1-D tensors and tensors of <= 1024 elements F32 (convert.py: QUANTIZATION_THRESHOLD);
- `img_in.`, `txt_in.`, `time_in.`, `guidance_in.`, `final_layer.` kept in the source dtype, BF16 (tools/lcpp.patch:
  llama-quantize skips them for LLM_ARCH_FLUX); every other matrix quantised. A _K_M file mixes types per
  tensor, so the twins cycle through `types`.

The package quantises Q8_0, Q4_0, Q4_1, Q5_0, Q5_1 and BF16 itself; K-quants are not written here (tiny widths are
not multiples of 256; their de-quantisation is checked block by block in test_gguf_quants.py).
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch

KEPT_BF16 = ("img_in.", "txt_in.", "time_in.", "guidance_in.", "final_layer.")


def published_type(key: str, t: torch.Tensor, quant: str):
    import gguf

    QT = gguf.GGMLQuantizationType
    if t.ndim == 1 or t.numel() <= 1024:
        return QT.F32
    if key.startswith(KEPT_BF16):
        return QT.BF16
    return QT[quant]


def write_gguf(tensors: dict[str, torch.Tensor], path: Path, arch: str | None, types, general_name: str | None = None,
               fields=None) -> Path:
    """types(key, tensor) -> GGMLQuantizationType; fields(writer) adds further key/values."""
    import gguf

    path.parent.mkdir(parents=True, exist_ok=True)
    w = gguf.GGUFWriter(str(path), arch=arch or "flux")
    if arch is None:                                  # sd.cpp-style file without the architecture key
        w.kv_data[0].pop("general.architecture", None)
    if general_name:
        w.add_name(general_name)
    if fields is not None:
        fields(w)
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    w.add_file_type(gguf.LlamaFileType.MOSTLY_Q8_0)
    for key, t in tensors.items():
        qt = types(key, t)
        data = t.detach().to(torch.float32).numpy()
        q = gguf.quants.quantize(data, qt)
        w.add_tensor(key, q, raw_dtype=qt)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def write_gguf_transformer(diffusers_sd, path: Path, quants=("Q8_0", "Q4_0", "Q5_1", "Q4_1", "Q5_0"),
                           prefix: str = "", arch: str | None = "flux", general_name: str | None = None) -> Path:
    """A FLUX.2 transformer as ComfyUI-GGUF publishes it; matrices cycle through `quants` (a mixed file)."""
    import twins

    sd = twins.bfl_transformer(diffusers_sd)
    order = {k: i for i, k in enumerate(sorted(sd))}
    types = lambda key, t: published_type(key[len(prefix):], t, quants[order[key[len(prefix):]] % len(quants)])  # noqa: E731
    return write_gguf({prefix + k: v for k, v in sd.items()}, path, arch, types, general_name)


def dequantized_twin(gguf_path: Path, out: Path, prefix: str = "") -> Path:
    """The same file de-quantised by the gguf package itself (the reference), saved as float32 safetensors."""
    import gguf
    from safetensors.torch import save_file

    r = gguf.GGUFReader(str(gguf_path))
    sd = {}
    for t in r.tensors:
        shape = tuple(int(d) for d in reversed(t.shape.tolist()))
        x = gguf.quants.dequantize(np.array(t.data), t.tensor_type).reshape(shape)
        sd[re.sub("^" + re.escape(prefix), "", t.name)] = torch.from_numpy(np.ascontiguousarray(x, np.float32))
    save_file(sd, str(out))
    return out


# llama.cpp's tensor names for Hugging Face causal LMs (convert_hf_to_gguf.py / gguf.constants TENSOR_NAMES)
HF_TO_LLAMA = (("model.embed_tokens", "token_embd"), ("model.norm", "output_norm"), ("model.layers.", "blk."),
               ("self_attn.q_proj", "attn_q"), ("self_attn.k_proj", "attn_k"), ("self_attn.v_proj", "attn_v"),
               ("self_attn.o_proj", "attn_output"), ("self_attn.q_norm", "attn_q_norm"),
               ("self_attn.k_norm", "attn_k_norm"), ("input_layernorm", "attn_norm"),
               ("post_attention_layernorm", "ffn_norm"), ("mlp.gate_proj", "ffn_gate"), ("mlp.up_proj", "ffn_up"),
               ("mlp.down_proj", "ffn_down"))


def llama_permute(w: torch.Tensor, heads: int) -> torch.Tensor:
    """convert_hf_to_gguf.py LlamaModel.permute: q/k rows reordered for llama.cpp's interleaved RoPE."""
    return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_gguf_text_encoder(hf_sd: dict[str, torch.Tensor], path: Path, arch: str, heads: int, kv_heads: int,
                            quants=("Q8_0", "Q4_1", "Q5_0"), head_dim: int | None = None) -> Path:
    """A llama.cpp text encoder: "qwen3" (Qwen3, names as is) or "llama" (Mistral: q/k rows permuted, head counts
    in `llama.attention.head_count(_kv)`); norms F32, token_embd and matrices quantised (cycling `quants`)."""
    import gguf

    out = {}
    for k, v in hf_sd.items():
        if arch == "llama" and k.endswith("q_proj.weight"):
            v = llama_permute(v, heads)
        elif arch == "llama" and k.endswith("k_proj.weight"):
            v = llama_permute(v, kv_heads)
        for src, dst in HF_TO_LLAMA:
            k = k.replace(src, dst)
        out[k] = v
    order = {k: i for i, k in enumerate(sorted(out))}
    QT = gguf.GGMLQuantizationType

    def types(key, t):
        return QT.F32 if t.ndim == 1 else QT[quants[order[key] % len(quants)]]

    def fields(w):
        w.add_head_count(heads)
        w.add_head_count_kv(kv_heads)
        if head_dim:                     # llama.cpp writes it where the config names a head_dim (Mistral Small)
            w.add_key_length(head_dim)
            w.add_value_length(head_dim)

    return write_gguf(out, path, arch, types, fields=fields)


def dequantized_text_encoder_twin(hf_sd: dict[str, torch.Tensor], gguf_path: Path, out: Path, arch: str,
                                  heads: int, kv_heads: int) -> Path:
    """The GGUF text encoder de-quantised by the gguf package, back under HF names (q/k un-permuted by the
    inverse of llama_permute), as float32 safetensors."""
    import gguf
    from safetensors.torch import save_file

    back = {dst: src for src, dst in HF_TO_LLAMA}
    r = gguf.GGUFReader(str(gguf_path))
    sd = {}
    for t in r.tensors:
        shape = tuple(int(d) for d in reversed(t.shape.tolist()))
        x = torch.from_numpy(np.ascontiguousarray(gguf.quants.dequantize(np.array(t.data), t.tensor_type)
                                                  .reshape(shape), np.float32))
        name = t.name
        for dst, src in reversed(list(back.items())):
            name = name.replace(dst, src)
        if arch == "llama" and name.endswith(("q_proj.weight", "k_proj.weight")):
            h = heads if "q_proj" in name else kv_heads
            x = x.reshape(h, x.shape[0] // h // 2, 2, *x.shape[1:]).swapaxes(1, 2).reshape(x.shape)
        sd[name] = x
    assert set(sd) == set(hf_sd), sorted(set(sd) ^ set(hf_sd))[:4]
    save_file(sd, str(out))
    return out
