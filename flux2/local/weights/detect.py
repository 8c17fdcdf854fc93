"""Which FLUX.2 model a set of files is, from their safetensors or GGUF headers alone (no weight is read).

As ComfyUI's model detection does, the family and size come from the tensors: a guidance embedder means
[dev]; the text encoder's kind (Qwen3: per-head q/k norms; Mistral: none) and width; the transformer's width
and block counts (klein 4B / 9B / dev, or any other FLUX.2-architecture size, which then runs at its own size).
Whether a [klein] is step-distilled or Base is not in the weights: a diffusers folder's `model_index.json`
(`is_distilled`), the file's metadata or its name tell; where nothing does, distilled is assumed and said.
Only what cannot work is refused, in one line naming the file: not FLUX.2, a text encoder whose width is not
the transformer's context width, a VAE without 32 latent channels.
"""
from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass, replace
from pathlib import Path

from ...errors import ModelLoadError
from ..model.params import (DEV_T, KLEIN4B_T, KLEIN9B_T, MISTRAL_SMALL, PRESETS, QWEN3_4B, QWEN3_8B, ModelPreset,
                     TextEncoderParams, TransformerParams, VAEParams)
from .quant import in_features
from .safetensors_header import Header, TensorInfo
from .headers import read_any_headers as read_headers, read_json

AUTO = "auto"
_TR_PREFIXES = ("model.diffusion_model.", "diffusion_model.", "transformer.")
_TE_PREFIXES = ("model.language_model.", "language_model.model.", "model.text_model.", "text_model.model.", "model.")
_SIZES = {"[klein] 4B": KLEIN4B_T, "[klein] 9B": KLEIN9B_T, "[dev]": DEV_T}


@dataclass(frozen=True)
class Detection:
    preset: ModelPreset
    notes: tuple[str, ...]                    # what was found, and what was assumed
    transformer: dict[str, TensorInfo]        # BFL or diffusers names, prefixes stripped
    text_encoder: dict[str, TensorInfo]       # HF names without prefix
    vae: dict[str, TensorInfo]                # diffusers names
    upcast_transformer: bool                  # diffusers layout: fp8 weights are up-cast at load

    def describe(self) -> str:
        return f"detected {self.preset.name} ({'; '.join(self.notes)})"


def _strip(tensors: dict, prefixes) -> dict:
    for pre in prefixes:
        if any(k.startswith(pre) for k in tensors):
            return {k[len(pre):]: v for k, v in tensors.items() if k.startswith(pre)}
    return tensors


def _blocks(keys, prefix: str) -> int:
    n = [int(m.group(1)) for k in keys if (m := re.match(re.escape(prefix) + r"(\d+)\.", k))]
    return 1 + max(n) if n else 0


# ----------------------------------------------------------------------------------------- transformer

def transformer_params(t: dict, name: str, config: dict | None = None) -> TransformerParams:
    """FLUX.2 transformer sizes from tensor shapes (BFL or diffusers names); a diffusers config.json wins
    where shapes cannot tell (the RoPE axes split of a head size other than 128)."""
    cfg = config or {}
    if "double_blocks.0.img_mod.lin.weight" in t or "transformer_blocks.0.norm1.linear.weight" in t:
        raise ModelLoadError(f"{name} is a FLUX.1 transformer (per-block modulation), not FLUX.2")
    if "double_blocks.0.img_attn.qkv.weight" in t and "single_stream_modulation.lin.weight" in t:
        hidden, in_ch = t["img_in.weight"].shape[0], in_features(t, "img_in.weight")
        head_dim = t.get("double_blocks.0.img_attn.norm.query_norm.scale",
                         t.get("double_blocks.0.img_attn.norm.query_norm.weight")).shape[0]
        nd, ns = _blocks(t, "double_blocks."), _blocks(t, "single_blocks.")
        ctx = in_features(t, "txt_in.weight")
        mlp = in_features(t, "double_blocks.0.img_mlp.2.weight")
        guidance = "guidance_in.in_layer.weight" in t
    elif "transformer_blocks.0.attn.to_q.weight" in t and "single_stream_modulation.linear.weight" in t:
        hidden, in_ch = t["x_embedder.weight"].shape
        head_dim = t["transformer_blocks.0.attn.norm_q.weight"].shape[0]
        nd, ns = _blocks(t, "transformer_blocks."), _blocks(t, "single_transformer_blocks.")
        ctx = t["context_embedder.weight"].shape[1]
        mlp = t["transformer_blocks.0.ff.linear_out.weight"].shape[1]
        guidance = "time_guidance_embed.guidance_embedder.linear_1.weight" in t
    else:
        raise ModelLoadError(f"{name} is not a FLUX.2 transformer (no FLUX.2 double/single-stream keys)")
    head_dim = int(cfg.get("attention_head_dim") or head_dim)
    axes = cfg.get("axes_dims_rope")
    if not axes:
        q = head_dim // 4
        axes = (32, 32, 32, 32) if head_dim == 128 else (q, q, q, head_dim - 3 * q)
    return TransformerParams(hidden=hidden, heads=hidden // head_dim, head_dim=head_dim, depth_double=nd,
                             depth_single=ns, context_dim=ctx, in_channels=in_ch, mlp_hidden=mlp,
                             guidance_embed=guidance, axes_dim=tuple(int(a) for a in axes),
                             theta=int(cfg.get("rope_theta", 2000)))


def size_name(p: TransformerParams) -> str | None:
    for label, ref in _SIZES.items():
        if (p.hidden, p.depth_double, p.depth_single) == (ref.hidden, ref.depth_double, ref.depth_single):
            return label
    return None


# ---------------------------------------------------------------------------------------- text encoder

def text_encoder_params(t: dict, name: str, config: dict | None = None) -> TextEncoderParams:
    """Qwen3 (klein) or Mistral (dev) text-encoder sizes from shapes; a config.json (diffusers folder) wins."""
    from .text_encoder_weights import text_params_from_config

    if "embed_tokens.weight" not in t or "layers.0.self_attn.q_proj.weight" not in t:
        raise ModelLoadError(f"{name} is not a Hugging Face causal-LM text encoder (no embed_tokens / layers)")
    vocab, hidden = t["embed_tokens.weight"].shape
    qwen = "layers.0.self_attn.q_norm.weight" in t
    if qwen:
        base = QWEN3_8B if hidden == QWEN3_8B.hidden else QWEN3_4B
        head_dim = t["layers.0.self_attn.q_norm.weight"].shape[0]
    else:
        base = MISTRAL_SMALL
        head_dim = int((config or {}).get("text_config", config or {}).get("head_dim") or 0) or MISTRAL_SMALL.head_dim
    q_out = t["layers.0.self_attn.q_proj.weight"].shape[0]
    k_out = t["layers.0.self_attn.k_proj.weight"].shape[0]
    if q_out % head_dim or k_out % head_dim:
        raise ModelLoadError(f"{name}: cannot tell the head size of this {hidden}-wide Mistral text encoder from its "
                             f"shapes (q {q_out}, k {k_out}); put its config.json beside it as <name>.config.json")
    p = text_params_from_config(config or {}, base)
    # The packed width of an NVFP4 weight is half the real one; shapes of unquantised tensors decide.
    inter = t["layers.0.mlp.gate_proj.weight"].shape[0]
    p = replace(p, vocab=vocab, hidden=hidden, head_dim=head_dim, heads=q_out // head_dim, kv_heads=k_out // head_dim,
                intermediate=inter, layers=_blocks(t, "layers."))
    if p.layers < max(p.out_layers):
        raise ModelLoadError(f"{name} has {p.layers} layers; FLUX.2 reads layer {max(p.out_layers)} of it")
    return p


# ------------------------------------------------------------------------------------------------ VAE

def vae_params(t: dict, name: str, config: dict | None = None) -> tuple[dict, VAEParams]:
    from .vae_weights import infer_vae_params, normalise_vae_keys

    t = normalise_vae_keys(dict(t), name)
    p = infer_vae_params(t, config or {})
    if p.latent_channels != 32:
        raise ModelLoadError(f"{name} has {p.latent_channels} latent channels, FLUX.2 needs 32")
    return t, p


# ---------------------------------------------------------------------------------------------- files

def _distilled(files, header: Header, family: str, notes: list[str]) -> bool:
    if family != "klein":
        return False
    if files.diffusers_dir is not None:
        index = read_json(Path(files.diffusers_dir) / "model_index.json")
        if isinstance(index.get("is_distilled"), bool):
            notes.append(f"{'distilled' if index['is_distilled'] else 'Base'} from model_index.json is_distilled")
            return index["is_distilled"]
    meta = " ".join(f"{k}={v}" for k, v in header.metadata.items() if k != "_quantization_metadata").lower()
    if re.search(r"\bbase\b", meta):
        notes.append("Base from the file's metadata")
        return False
    names = [Path(p).name for p in (files.transformer, files.diffusers_dir) if p is not None]
    if any(re.search(r"(^|[^a-z])base([^a-z]|$)", n.lower()) for n in names):
        notes.append(f"Base from the file name {names[0]}")
        return False
    if any(re.search(r"distill", n.lower()) for n in names):
        notes.append(f"distilled from the file name {names[0]}")
        return True
    notes.append("assumed distilled (nothing in the files says; choose a Base preset for ~50 steps with CFG)")
    return True


KV_PIPELINE = "Flux2KleinKVPipeline"       # diffusers' pipeline class of BFL's FLUX.2-klein-9b-kv folder


def reference_kv(files, header: Header | None = None) -> str | None:
    """Why these files are the [klein] KV variant (references isolated, their keys/values kept after the first
    step: transformer.RefKV), or None. The weights have the [klein] 9B names and shapes, so what tells is, for a
    single transformer file, its metadata or its name (`-kv`); for a diffusers folder, its `model_index.json`
    (`_class_name` Flux2KleinKVPipeline), or its name where model_index.json names no pipeline class."""
    kv_word = re.compile(r"(^|[^a-z0-9])kv([^a-z0-9]|$)")
    if files.transformer is not None:                        # a single file overrides a folder's transformer
        if header is not None:
            meta = " ".join(f"{k}={v}" for k, v in header.metadata.items() if k != "_quantization_metadata").lower()
            if kv_word.search(meta) or "kv-cache" in meta or "kv_cache" in meta:
                return "KV variant from the file's metadata"
        name = Path(files.transformer).name
        return f"KV variant from the file name {name}" if kv_word.search(name.lower()) else None
    if files.diffusers_dir is not None:
        cls = read_json(Path(files.diffusers_dir) / "model_index.json").get("_class_name")
        if cls:
            return f"KV variant from model_index.json _class_name {KV_PIPELINE}" if cls == KV_PIPELINE else None
        name = Path(files.diffusers_dir).name
        return f"KV variant from the folder name {name}" if kv_word.search(name.lower()) else None
    return None


def with_reference_kv(preset: ModelPreset, files) -> ModelPreset:
    """A named [klein] preset behaves as the KV variant when its files are that variant (headers only)."""
    if preset.family != "klein":
        return preset
    tr = files.transformer
    header = read_headers([Path(tr)], "diffusion model") if tr is not None and Path(tr).is_file() else None
    return replace(preset, name=preset.name + " KV", reference_kv=True) if reference_kv(files, header) else preset


def _parts(files):
    """(transformer shards, text-encoder shards, VAE shards, their configs): single files override a folder."""
    from .safetensors_read import shard_files

    d = Path(files.diffusers_dir) if files.diffusers_dir else None
    tr, te, vae = files.transformer, files.text_encoder, files.vae
    cfg = {"transformer": {}, "text_encoder": {}, "vae": {}}
    if d is not None:
        if tr is None:
            if not (d / "transformer").is_dir():
                raise ModelLoadError(f"{d} is not a diffusers FLUX.2 folder (no transformer/ subfolder)")
            tr = shard_files(d / "transformer", "diffusion_pytorch_model")
            cfg["transformer"] = read_json(d / "transformer" / "config.json")
        if te is None and (d / "text_encoder").is_dir():
            te = shard_files(d / "text_encoder", "model")
            cfg["text_encoder"] = read_json(d / "text_encoder" / "config.json")
        if vae is None and (d / "vae").is_dir():
            vae = shard_files(d / "vae", "diffusion_pytorch_model")
            cfg["vae"] = read_json(d / "vae" / "config.json")
    if tr is None:
        raise ModelLoadError("no diffusion model file given")
    if te is None:
        raise ModelLoadError("no text encoder given (a Qwen3 file for [klein], Mistral Small 3.2 for [dev])")
    if vae is None:
        raise ModelLoadError("no VAE file given (the FLUX.2 VAE, 32 latent channels)")
    as_list = lambda x: [Path(p) for p in x] if isinstance(x, (list, tuple)) else [Path(x)]   # noqa: E731
    return as_list(tr), as_list(te), as_list(vae), cfg


def detect(files) -> Detection:
    """files: a backend.LocalFiles. Reads headers (and JSON configs) only; cached per file version."""
    tr, te, vae, cfg = _parts(files)
    stamp = tuple((str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns) if p.is_file() else (str(p), 0, 0)
                  for p in tr + te + vae)
    return _detect(tuple(tr), tuple(te), tuple(vae), json.dumps(cfg, sort_keys=True), files, stamp)


@functools.lru_cache(maxsize=16)
def _detect(tr, te, vae, cfg_json, files, _stamp) -> Detection:
    cfg = json.loads(cfg_json)
    tr_name, te_name, vae_name = (f"diffusion model {tr[0].name}", f"text encoder {te[0].name}", f"vae {vae[0].name}")
    tr_header = read_headers(tr, "diffusion model")
    t = _strip(tr_header.tensors, _TR_PREFIXES)
    tp = transformer_params(t, tr_name, cfg["transformer"])
    te_header = read_headers(te, "text encoder")
    te_t = _strip(te_header.tensors, _TE_PREFIXES)
    te_t = {k: v for k, v in te_t.items() if "vision" not in k and not k.startswith("lm_head")}
    if "embed_tokens.weight" in te_t and te_t["embed_tokens.weight"].ndim == 2:
        width = te_t["embed_tokens.weight"].shape[1]
        if 3 * width != tp.context_dim:            # FLUX.2 stacks three hidden states of the text encoder
            raise ModelLoadError(f"{te_name} gives {3 * width} features (width {width}), {tr_name} expects "
                                 f"{tp.context_dim} (text encoder of another model size?)")
    family = "dev" if tp.guidance_embed else "klein"
    kind = "qwen3" if "layers.0.self_attn.q_norm.weight" in te_t else "mistral"
    if (family == "dev") != (kind == "mistral"):
        want = "Mistral Small 3.2" if family == "dev" else "Qwen3"
        raise ModelLoadError(f"{te_name} is a {'Qwen3' if kind == 'qwen3' else 'Mistral'} text encoder, "
                             f"{tr_name} ({'[dev]' if family == 'dev' else '[klein]'}) needs {want}")
    te_cfg = cfg["text_encoder"]
    if not te_cfg and len(te) == 1:              # a single file may bring its config as <stem>.config.json
        te_cfg = read_json(te[0].with_name(te[0].stem + ".config.json"))
    if not te_cfg and te[0].suffix.lower() == ".gguf":     # a llama.cpp file says its head counts and head size
        from .gguf import text_config
        te_cfg = text_config(te_header)
    tep = text_encoder_params(te_t, te_name, te_cfg)
    vae_t, vp = vae_params(read_headers(vae, "vae").tensors, vae_name, cfg["vae"])
    if tep.out_dim != tp.context_dim:
        raise ModelLoadError(f"{te_name} gives {tep.out_dim} features ({tep.kind}, width {tep.hidden}), "
                             f"{tr_name} expects {tp.context_dim}")
    family = "dev" if tp.guidance_embed else "klein"
    size = size_name(tp)
    notes = [f"{'guidance embedder: [dev]' if family == 'dev' else 'no guidance embedder: [klein]'}",
             f"transformer {tp.hidden} wide, {tp.depth_double}+{tp.depth_single} blocks"
             + (f" = {size}" if size else " (not a published size: runs at its own size)"),
             f"text encoder {'Qwen3' if tep.kind == 'qwen3' else 'Mistral'} {tep.hidden} wide"]
    if vp.decoder_block_out:
        notes.append(f"small-decoder VAE {vp.decoder_block_out}")
    distilled = _distilled(files, tr_header, family, notes)
    preset = _preset(family, distilled, size, tp, tep, vp)
    kv = reference_kv(files, tr_header) if family == "klein" else None
    if kv is not None:
        notes.append(kv)
        preset = replace(preset, name=preset.name + " KV", reference_kv=True)
    return Detection(preset, tuple(notes), t, te_t, vae_t,
                     upcast_transformer="transformer_blocks.0.attn.to_q.weight" in t)


def _preset(family, distilled, size, tp, tep, vp) -> ModelPreset:
    """A preset of the detected sizes; defaults (steps, guidance) from the named preset of that kind."""
    if size is not None and (size == "[dev]") == (family == "dev"):
        name = f"FLUX.2 {size}"
    else:
        name = f"FLUX.2 [{family}] (hidden {tp.hidden}, {tp.depth_double}+{tp.depth_single} blocks)"
    if family == "klein" and not distilled:
        name += " Base"
    default = {("dev", False): "FLUX.2 [dev]", ("klein", True): "FLUX.2 [klein] 4B",
               ("klein", False): "FLUX.2 [klein] 4B Base"}[(family, distilled if family == "klein" else False)]
    like = PRESETS.get(name, PRESETS[default])
    return replace(like, name=name, family=family, distilled=distilled if family == "klein" else False,
                   transformer=tp, text_encoder=tep, vae=vp)
