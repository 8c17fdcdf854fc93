"""Text-encoder weights (Hugging Face causal LM: Qwen3 for klein, Mistral for dev; safetensors or GGUF) -> TextEncoder,
only the layers FLUX.2 reads."""
from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

import torch

from ...errors import ModelLoadError
from ..model.params import TextEncoderParams
from ..model.text_encoder import TextEncoder
from .assemble import into_module
from .safetensors_read import read_safetensors


_TE_PREFIXES = ("model.language_model.", "language_model.model.", "model.text_model.", "text_model.model.",
                "model.", "")


def text_params_from_config(cfg: dict, base: TextEncoderParams) -> TextEncoderParams:
    cfg = cfg.get("text_config", cfg)
    if not cfg:
        return base
    rope = cfg.get("rope_theta") or (cfg.get("rope_parameters") or {}).get("rope_theta") or base.rope_theta
    heads = cfg.get("num_attention_heads", base.heads)
    hidden = cfg.get("hidden_size", base.hidden)
    return replace(base, vocab=cfg.get("vocab_size", base.vocab), hidden=hidden,
                   layers=cfg.get("num_hidden_layers", base.layers), heads=heads,
                   kv_heads=cfg.get("num_key_value_heads", base.kv_heads),
                   head_dim=cfg.get("head_dim") or hidden // heads,
                   intermediate=cfg.get("intermediate_size", base.intermediate), rope_theta=float(rope),
                   rms_eps=float(cfg.get("rms_norm_eps", base.rms_eps)))


def load_text_encoder(paths, base: TextEncoderParams, dtype: torch.dtype, device="cpu", name: str | None = None,
                      config: dict | None = None, keep_fp8: bool = True, mapped: bool = False) -> TextEncoder:
    """mapped: as load_transformer's."""
    paths = [Path(p) for p in ([paths] if isinstance(paths, (str, Path)) else paths)]
    name = name or f"text encoder {paths[0].name}"
    wanted = max(base.out_layers)

    def keep(key: str) -> bool:   # skip vision tower, LM head and layers FLUX.2 never reads
        if "vision" in key or "multi_modal_projector" in key or key.startswith("lm_head") or key == "tekken_model":
            return False
        m = re.search(r"layers\.(\d+)\.", key)
        return m is None or int(m.group(1)) < wanted

    gguf_file = paths[0].suffix.lower() == ".gguf"
    if gguf_file:
        from .gguf import read_text_encoder
        sd = read_text_encoder(paths[0], name, keep)      # HF names; quantised tensors as GGUFTensor
    else:
        sd = read_safetensors(paths, dtype, name, keep=keep, keep_fp8=keep_fp8, defer_cast=mapped)
    for pre in _TE_PREFIXES:
        if f"{pre}embed_tokens.weight" in sd:
            sd = {k[len(pre):]: v for k, v in sd.items() if k.startswith(pre)}
            break
    else:
        raise ModelLoadError(f"{name} is not a Hugging Face causal-LM text encoder (no embed_tokens)")
    p = text_params_from_config(config or {}, base)
    vocab, hidden = sd["embed_tokens.weight"].shape
    has_qk_norm = "layers.0.self_attn.q_norm.weight" in sd
    if has_qk_norm != base.qk_norm:
        want = "Qwen3 (klein)" if base.qk_norm else "Mistral (dev)"
        raise ModelLoadError(f"{name} is not the {want} text encoder this model needs")
    if has_qk_norm:
        p = replace(p, head_dim=sd["layers.0.self_attn.q_norm.weight"].shape[0])
    kv = sd["layers.0.self_attn.k_proj.weight"].shape[0] // p.head_dim
    p = replace(p, vocab=vocab, hidden=hidden, heads=sd["layers.0.self_attn.q_proj.weight"].shape[0] // p.head_dim,
                kv_heads=kv, intermediate=sd["layers.0.mlp.gate_proj.weight"].shape[0])
    if p.hidden * len(p.out_layers) != base.hidden * len(base.out_layers):
        raise ModelLoadError(f"{name} has hidden size {p.hidden}, expected {base.hidden} for this model "
                             f"(wrong text encoder for the chosen model family?)")
    if gguf_file:                       # quantised Linears stay in their blocks (GGUFLinear), the rest is cast
        from .gguf import settle, swap_gguf_linears
        with torch.device("meta"):
            module = TextEncoder(p)
        sd = settle(swap_gguf_linears(module, sd, dtype), dtype, mapped)
        return into_module(TextEncoder, p, sd, name, dtype, device, module=module)
    return into_module(TextEncoder, p, sd, name, dtype, device)
