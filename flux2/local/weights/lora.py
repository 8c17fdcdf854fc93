"""LoRA (and LoKr / LoHa / full-diff) files for the FLUX.2 transformer, applied on the fly.

A file is read in two passes. `inspect_lora` reads the safetensors header (names and shapes): it maps
every key to one of our Linear layers (and a row range of it), checks the shapes against the model and refuses
a file for another architecture or size in one line, then scans the matched tensors for NaN/Inf (refused: a
black image otherwise); the dry run and the memory plan use it. `load_deltas` reads the tensors of the matched
layers for use. Key formats and their sources: docs/loras.md.

Application (AppliedLoRAs.use): a Linear with float weights (bf16 / fp16 / fp32) gets the LoRA merged into its
weight when the set is attached, as ComfyUI does, so a step costs what it costs without a LoRA (on the fly cost
+18 % per step at the benchmark's mid size, merged +3 %, its noise). When the set changes, the merged weights are
restored bit for bit by reading them again from the mapped model file (loading.reread_linear_weights), not from
a copy kept in memory. Quantised weights (fp8 kept as float8, ...) and streamed blocks (offload=blocks: the
weights are not resident) keep the LoRA on the fly: a forward hook adds `x·Aᵀ·Bᵀ` (all LoRAs of that layer
stacked along the rank, strength·alpha/rank folded into B) or `x·ΔWᵀ` for the dense kinds, the weights untouched.
"""
from __future__ import annotations

import functools
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ...errors import ModelLoadError
from ..model.params import TransformerParams

# (up, down) suffix pairs ComfyUI 0.3.75 reads (comfy/weight_adapter/lora.py, LoRAAdapter.load), most specific first.
LORA_PAIRS = ((".lora_up.weight", ".lora_down.weight"), ("_lora.up.weight", "_lora.down.weight"),
              (".lora_B.default.weight", ".lora_A.default.weight"), (".lora_B.weight", ".lora_A.weight"),
              (".lora.up.weight", ".lora.down.weight"),
              (".lora_linear_layer.up.weight", ".lora_linear_layer.down.weight"), (".lora_B", ".lora_A"))
LOKR = ("lokr_w1", "lokr_w2", "lokr_w1_a", "lokr_w1_b", "lokr_w2_a", "lokr_w2_b", "lokr_t2")
LOHA = ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", "hada_t1", "hada_t2")
# Per-layer extras (comfy/lora.py, load_lora). diff_b / set_weight / w_norm / b_norm target biases or norm
# weights the FLUX.2 Linears do not have (no biases) and are reported as unused.
SINGLE = ("alpha", "dora_scale", "lora_mid.weight", "diff", "diff_b", "set_weight", "w_norm", "b_norm",
          "reshape_weight") + LOKR + LOHA


@dataclass(frozen=True)
class Target:
    """Rows [start, start+rows) of our Linear `module`; swap: the delta's two row halves are in the other order
    (diffusers' norm_out is (scale, shift), BFL's final adaLN (shift, scale))."""

    module: str
    start: int
    rows: int
    swap: bool = False


@dataclass(frozen=True)
class Layer:
    """One adapter of the file: its kind ("lora" | "lokr" | "loha" | "diff"), where it goes, its file keys by role."""

    kind: str
    target: Target
    keys: tuple[tuple[str, str], ...]
    rank: int = 0

    def key(self, role: str) -> str | None:
        return dict(self.keys).get(role)


@dataclass(frozen=True)
class LoRAFile:
    """What inspect_lora found in a file (header only)."""

    path: Path
    layers: tuple[Layer, ...]
    total_keys: int
    unused: tuple[str, ...]          # keys of the file no layer of this model takes (ComfyUI logs them too)

    @property
    def name(self) -> str:
        return self.path.name

    def device_bytes(self, dtype_bytes: int, shapes: dict[str, tuple[int, int]]) -> int:
        """Bytes of the applied patches on the device: low-rank (out + in) x rank, dense out x in."""
        total = 0
        for lay in self.layers:
            out, inp = shapes[lay.target.module]
            total += (out + inp) * lay.rank if lay.rank else out * inp
        return total * dtype_bytes


# ------------------------------------------------------------------------------------------- key tables

def linear_shapes(p: TransformerParams) -> dict[str, tuple[int, int]]:
    """(out, in) of every Linear of transformer.Flux2Transformer, from its params (no module is built)."""
    h, inner, mlp = p.hidden, p.heads * p.head_dim, p.mlp_hidden
    s = {"img_in": (h, p.in_channels), "txt_in": (h, p.context_dim),
         "time_in.in_layer": (h, p.timestep_channels), "time_in.out_layer": (h, h),
         "double_stream_modulation_img.lin": (6 * h, h), "double_stream_modulation_txt.lin": (6 * h, h),
         "single_stream_modulation.lin": (3 * h, h),
         "final_layer.adaLN_modulation.1": (2 * h, h), "final_layer.linear": (p.in_channels, h)}
    if p.guidance_embed:
        s.update({"guidance_in.in_layer": (h, p.timestep_channels), "guidance_in.out_layer": (h, h)})
    for n in range(p.depth_double):
        for st in ("img", "txt"):
            s.update({f"double_blocks.{n}.{st}_attn.qkv": (3 * inner, h), f"double_blocks.{n}.{st}_attn.proj": (h, inner),
                      f"double_blocks.{n}.{st}_mlp.0": (2 * mlp, h), f"double_blocks.{n}.{st}_mlp.2": (h, mlp)})
    for n in range(p.depth_single):
        s.update({f"single_blocks.{n}.linear1": (3 * inner + 2 * mlp, h), f"single_blocks.{n}.linear2": (h, inner + mlp)})
    return s


def _diffusers_names(p: TransformerParams) -> dict[str, Target]:
    """diffusers module names -> our targets: FLUX.2's own names (diffusers' Flux2Transformer2DModel, what its
    trainers save) and the FLUX.1 names ComfyUI 0.3.75 maps for every Flux-derived model (comfy/utils.py,
    flux_to_diffusers) where FLUX.2 has the layer."""
    sh = linear_shapes(p)
    inner = p.heads * p.head_dim

    def full(m: str, swap: bool = False) -> Target:
        return Target(m, 0, sh[m][0], swap)

    d = {"x_embedder": full("img_in"), "context_embedder": full("txt_in"), "proj_out": full("final_layer.linear"),
         "norm_out.linear": full("final_layer.adaLN_modulation.1", swap=True),
         "double_stream_modulation_img.linear": full("double_stream_modulation_img.lin"),
         "double_stream_modulation_txt.linear": full("double_stream_modulation_txt.lin"),
         "single_stream_modulation.linear": full("single_stream_modulation.lin")}
    for emb in ("time_guidance_embed", "time_text_embed"):           # FLUX.2 / FLUX.1 names
        d[f"{emb}.timestep_embedder.linear_1"] = full("time_in.in_layer")
        d[f"{emb}.timestep_embedder.linear_2"] = full("time_in.out_layer")
        if p.guidance_embed:
            d[f"{emb}.guidance_embedder.linear_1"] = full("guidance_in.in_layer")
            d[f"{emb}.guidance_embedder.linear_2"] = full("guidance_in.out_layer")
    for n in range(p.depth_double):
        b, db = f"transformer_blocks.{n}", f"double_blocks.{n}"
        for i, (img, txt) in enumerate((("to_q", "add_q_proj"), ("to_k", "add_k_proj"), ("to_v", "add_v_proj"))):
            d[f"{b}.attn.{img}"] = Target(f"{db}.img_attn.qkv", i * inner, inner)
            d[f"{b}.attn.{txt}"] = Target(f"{db}.txt_attn.qkv", i * inner, inner)
        d[f"{b}.attn.to_qkv"] = full(f"{db}.img_attn.qkv")              # diffusers' fused projections (LoKr)
        d[f"{b}.attn.to_added_qkv"] = full(f"{db}.txt_attn.qkv")
        d[f"{b}.attn.to_out.0"] = full(f"{db}.img_attn.proj")
        d[f"{b}.attn.to_add_out"] = full(f"{db}.txt_attn.proj")
        for ff, st in (("ff", "img"), ("ff_context", "txt")):
            d[f"{b}.{ff}.linear_in"] = d[f"{b}.{ff}.net.0.proj"] = full(f"{db}.{st}_mlp.0")
            d[f"{b}.{ff}.linear_out"] = d[f"{b}.{ff}.net.2"] = full(f"{db}.{st}_mlp.2")
    for n in range(p.depth_single):
        b, sb = f"single_transformer_blocks.{n}", f"single_blocks.{n}"
        d[f"{b}.attn.to_qkv_mlp_proj"] = full(f"{sb}.linear1")
        d[f"{b}.attn.to_out"] = d[f"{b}.proj_out"] = full(f"{sb}.linear2")
        for i, name in enumerate(("to_q", "to_k", "to_v")):
            d[f"{b}.attn.{name}"] = Target(f"{sb}.linear1", i * inner, inner)
    return d


_tables: dict[TransformerParams, dict[str, Target]] = {}


def key_table(p: TransformerParams) -> dict[str, Target]:
    """Every LoRA layer name (file key without its adapter suffix) this model takes -> its target."""
    if p in _tables:
        return _tables[p]
    sh = linear_shapes(p)
    t: dict[str, Target] = {}
    for m, (out, _) in sh.items():
        tgt = Target(m, 0, out)
        t[f"diffusion_model.{m}"] = tgt                       # ComfyUI / ai-toolkit (BFL names)
        t[f"base_model.model.{m}"] = tgt                      # PEFT-saved BFL names (diffusers reads them)
        t["lora_unet_" + m.replace(".", "_")] = tgt           # kohya / sd-scripts
    inner = p.heads * p.head_dim
    for n in range(p.depth_single):                           # ComfyUI: LoRA on the qkv part of linear1 only
        t[f"diffusion_model.single_blocks.{n}.linear1_qkv"] = Target(f"single_blocks.{n}.linear1", 0, 3 * inner)
    for name, tgt in _diffusers_names(p).items():
        t[f"transformer.{name}"] = tgt                        # diffusers / PEFT
        t["lycoris_" + name.replace(".", "_")] = tgt          # SimpleTuner LyCORIS
        t["lora_transformer_" + name.replace(".", "_")] = tgt  # OneTrainer
        if name.startswith(("transformer_blocks.", "single_transformer_blocks.")):
            t[f"diffusion_model.{name}"] = tgt                # ai-toolkit files with expanded diffusers block names
    _tables[p] = t
    return t


def split_key(key: str) -> tuple[str, str] | None:
    """A file key -> (layer name, role); role is "up"/"down" for LoRA pairs, else the suffix (alpha, lokr_w1...)."""
    for up, down in LORA_PAIRS:
        if key.endswith(up):
            return key[: -len(up)], "up"
        if key.endswith(down):
            return key[: -len(down)], "down"
    for s in SINGLE:
        if key.endswith("." + s):
            return key[: -len(s) - 1], s
    return None


# ------------------------------------------------------------------------------------------- inspection

def _shape_of(kind: str, roles: dict[str, tuple[int, ...]]) -> tuple[int, int] | None:
    """(rows, in) the adapter's delta has, from the factor shapes."""
    def mat(w, a, b):
        if w in roles:
            return roles[w][0], roles[w][1]
        if a in roles and b in roles:
            return roles[a][0], roles[b][1]
        return None

    if kind == "lora":
        return (roles["up"][0], roles["down"][1]) if roles["up"][-1] == roles["down"][0] else None   # same rank
    if kind == "diff":
        return tuple(roles["diff"][:2]) if len(roles["diff"]) == 2 else None
    if kind == "lokr":
        w1, w2 = mat("lokr_w1", "lokr_w1_a", "lokr_w1_b"), mat("lokr_w2", "lokr_w2_a", "lokr_w2_b")
        return (w1[0] * w2[0], w1[1] * w2[1]) if w1 and w2 else None
    if kind == "loha":
        return roles["hada_w1_a"][0], roles["hada_w1_b"][1]
    return None


def _rank(kind: str, roles: dict[str, tuple[int, ...]]) -> int:
    """Rank of the low-rank form layer_delta gives (0: applied as a dense ΔW)."""
    if kind == "lora":
        return roles["down"][0]
    if kind == "loha":
        return roles["hada_w1_b"][0] * roles["hada_w2_b"][0]
    if kind == "lokr" and "lokr_w2_a" in roles and "lokr_w2_b" in roles:
        in1 = roles["lokr_w1"][1] if "lokr_w1" in roles else roles["lokr_w1_b"][1]
        return in1 * roles["lokr_w2_b"][0]
    return 0


def classify(shapes: dict[str, tuple[int, ...]], p: TransformerParams, name: str) -> LoRAFile:
    """Map a file's keys (name -> shape) to layers of the model with params p; one-line ModelLoadError when the
    file is not for this model."""
    table, lin = key_table(p), linear_shapes(p)
    groups: dict[str, dict[str, str]] = {}
    unused: list[str] = []
    for key in shapes:
        split = split_key(key)
        if split is None:
            unused.append(key)
        else:
            groups.setdefault(split[0], {})[split[1]] = key
    layers: list[Layer] = []
    wrong: list[str] = []
    for base, roles in groups.items():
        if "dora_scale" in roles:
            raise ModelLoadError(f"LoRA {name}: layer {base} is DoRA (dora_scale), which this engine does not apply; "
                                 f"use a plain LoRA")
        if "lora_mid.weight" in roles or "lokr_t2" in roles or "hada_t1" in roles:
            raise ModelLoadError(f"LoRA {name}: layer {base} is a convolution (Tucker) adapter; FLUX.2 has no "
                                 f"convolutions (LoRA for another architecture?)")
        kind = ("lora" if "up" in roles and "down" in roles else "lokr" if any(r in roles for r in LOKR)
                else "loha" if all(f"hada_w{i}_{x}" in roles for i in (1, 2) for x in "ab")
                else "diff" if "diff" in roles else None)
        tgt = table.get(base)
        if kind is None or tgt is None:
            unused.extend(roles.values())
            continue
        dims = _shape_of(kind, {r: tuple(shapes[k]) for r, k in roles.items()})
        out, inp = lin[tgt.module]
        if dims != (tgt.rows, inp):
            have = "?" if dims is None else f"{dims[0]}x{dims[1]}"
            wrong.append(f"{base} is {have} in the file, the model's {tgt.module} takes {tgt.rows}x{inp}")
            continue
        keep = {r: k for r, k in roles.items() if r in ("up", "down", "alpha", "diff") + LOKR + LOHA}
        rank = _rank(kind, {r: tuple(shapes[k]) for r, k in roles.items()})
        layers.append(Layer(kind, tgt, tuple(sorted(keep.items())), rank))
        unused.extend(k for r, k in roles.items() if r not in keep)
    total = len(shapes)
    matched = sum(len(lay.keys) for lay in layers)
    if wrong:
        raise ModelLoadError(f"LoRA {name} is for another FLUX.2 size or architecture: {matched} of {total} keys fit "
                             f"this model ({len(wrong)} layers do not; first: {wrong[0]})")
    if not layers:
        hint = _other_architecture(shapes)
        raise ModelLoadError(f"LoRA {name} matches no layer of this FLUX.2 model: 0 of {total} keys matched"
                             + (f" ({hint})" if hint else f" (first key: {next(iter(shapes), 'none')})"))
    return LoRAFile(Path(name), tuple(layers), total, tuple(sorted(unused)))


def _other_architecture(shapes) -> str:
    keys = " ".join(list(shapes)[:200])
    for marker, what in ((".img_mod.", "FLUX.1 per-block modulation keys"), ("_img_mod_", "FLUX.1 per-block modulation keys"),
                         ("down_blocks", "an SD / SDXL UNet LoRA"), ("input_blocks", "an SD / SDXL UNet LoRA"),
                         ("lora_te", "a text-encoder LoRA"), ("text_model", "a text-encoder LoRA")):
        if marker in keys:
            return f"it looks like {what}"
    return ""


_lock = threading.Lock()
INSPECT_CACHE_ENTRIES = 64       # file version x model size: headers only, a few kB each


def file_stamp(path: Path) -> tuple:
    st = Path(path).stat()
    return str(Path(path).resolve()), st.st_size, st.st_mtime_ns


def inspect_lora(path: Path, p: TransformerParams) -> LoRAFile:
    """Inspection (cached per file version and model): the header maps keys to layers; the matched tensors are
    then scanned for NaN/Inf (_require_finite)."""
    path = Path(path)
    if not path.is_file():
        raise ModelLoadError(f"LoRA file not found: {path}")
    return _inspect(file_stamp(path), p, path)


@functools.lru_cache(maxsize=INSPECT_CACHE_ENTRIES)
def _inspect(stamp: tuple, p: TransformerParams, path: Path) -> LoRAFile:
    """Keyed by the file's version (`stamp`), so an edited file is inspected again; bounded, least recent out."""
    from .safetensors_header import read_header

    header = read_header(path, "LoRA")
    found = classify({k: i.shape for k, i in header.tensors.items()}, p, path.name)
    _require_finite(path, [k for lay in found.layers for _, k in lay.keys])
    return LoRAFile(path, found.layers, found.total_keys, found.unused)


def _require_finite(path: Path, keys: list[str]) -> None:
    """Refuse a LoRA holding NaN/Inf in a tensor it would apply: one such value spreads through every step and
    the image comes out black. The only pass here that reads values (a LoRA is small; once per file version)."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            for key in keys:
                t = f.get_tensor(key)
                if not t.is_floating_point():
                    continue
                if t.dtype not in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
                    t = t.float()                    # fp8: isfinite wants a wider float
                bad = int((~torch.isfinite(t)).sum())
                if bad:
                    raise ModelLoadError(f"LoRA file {path.name}: tensor {key} holds {bad} NaN/Inf value(s) of "
                                         f"{t.numel()}; refused (it would turn every image black)")
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        msg = str(exc).splitlines()[0][:100] if str(exc) else type(exc).__name__
        raise ModelLoadError(f"LoRA file {path.name} cannot be read ({msg})") from None


# ------------------------------------------------------------------------------------------- deltas

@dataclass
class Delta:
    """One layer's update before strength: low rank (`up @ down * scale`: down [r, in], up [rows, r], kept in the
    file's dtype) or dense [rows, in] float32 (a LoKr / full diff that has no small factorisation)."""

    target: Target
    down: torch.Tensor | None = None
    up: torch.Tensor | None = None
    scale: float = 1.0
    dense: torch.Tensor | None = None


def _factor(t: dict[str, torch.Tensor], w: str, a: str, b: str):
    """(full matrix or None, (a, b) factors or None, rank or None) of one LoKr side."""
    if w in t:
        return t[w], None, None
    return None, (t[a], t[b]), t[b].shape[0]


def _khatri_rao(a1, b1, a2, b2) -> tuple[torch.Tensor, torch.Tensor]:
    """(a1 @ b1) ⊙ (a2 @ b2) as one low-rank product up @ down of rank r1·r2 (exact: the Hadamard product of two
    products is the row-wise Kronecker of the left factors times the column-wise one of the right factors)."""
    up = (a1[:, :, None] * a2[:, None, :]).flatten(1)            # [out, r1*r2]
    down = (b1[:, None, :] * b2[None, :, :]).flatten(0, 1)       # [r1*r2, in]
    return down, up


def layer_delta(lay: Layer, t: dict[str, torch.Tensor]) -> Delta:
    """ComfyUI 0.3.75's arithmetic (comfy/weight_adapter/{lora,lokr,loha}.py, calculate_weight), kept factored where
    it can be: a LoHa is a LoRA of rank r1·r2, a LoKr whose second factor is low rank a LoRA of rank in1·r."""
    alpha = float(t["alpha"].float().item()) if "alpha" in t else None
    if lay.kind == "lora":
        down, up = t["down"], t["up"]
        return Delta(lay.target, down=down, up=up, scale=alpha / down.shape[0] if alpha is not None else 1.0)
    if lay.kind == "diff":
        return Delta(lay.target, dense=t["diff"].float())
    if lay.kind == "lokr":
        w1, f1, r1 = _factor(t, "lokr_w1", "lokr_w1_a", "lokr_w1_b")
        w2, f2, r2 = _factor(t, "lokr_w2", "lokr_w2_a", "lokr_w2_b")
        dim = r2 if r2 is not None else r1              # ComfyUI: the second factor's rank wins when both are
        scale = alpha / dim if alpha is not None and dim is not None else 1.0
        w1 = w1.float() if w1 is not None else f1[0].float() @ f1[1].float()
        if f2 is not None:     # kron(w1, a @ b) = kron(w1, a) @ kron(I, b): rank in1 * r
            a, b = f2[0].float(), f2[1].float()
            eye = torch.eye(w1.shape[1], dtype=torch.float32)
            return Delta(lay.target, down=torch.kron(eye, b), up=torch.kron(w1, a), scale=scale)
        return Delta(lay.target, dense=torch.kron(w1, w2.float()) * scale)
    f = {k: t[k].float() for k in ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b")}
    down, up = _khatri_rao(f["hada_w1_a"], f["hada_w1_b"], f["hada_w2_a"], f["hada_w2_b"])
    return Delta(lay.target, down=down, up=up, scale=alpha / f["hada_w1_b"].shape[0] if alpha is not None else 1.0)


_deltas: "OrderedDict[tuple, list[Delta]]" = OrderedDict()
DELTA_CACHE_FILES = 4            # recently used LoRA files kept read (on the CPU, file dtype): switching back is free


def load_deltas(lf: LoRAFile) -> list[Delta]:
    """The file's matched layers as deltas (cached per file version)."""
    from safetensors import SafetensorError, safe_open

    key = file_stamp(lf.path) + (tuple(lay.keys for lay in lf.layers),)
    with _lock:
        if key in _deltas:
            _deltas.move_to_end(key)
            return _deltas[key]
    out = []
    try:
        with safe_open(str(lf.path), framework="pt", device="cpu") as f:
            for lay in lf.layers:
                t = {role: f.get_tensor(k) for role, k in lay.keys}
                out.append(layer_delta(lay, t))
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        msg = str(exc).splitlines()[0][:100] if str(exc) else type(exc).__name__
        raise ModelLoadError(f"LoRA file {lf.name} cannot be read ({msg})") from None
    with _lock:
        _deltas[key] = out
        while len(_deltas) > DELTA_CACHE_FILES:
            _deltas.popitem(last=False)
    return out


# ------------------------------------------------------------------------------------------- patches

@dataclass
class Patch:
    """Everything added to one Linear: down [R, in] and up [out, R] (all low-rank adapters stacked along R, strength
    folded in, zero rows outside each adapter's row range) and/or one dense [out, in]."""

    down: torch.Tensor | None = None
    up: torch.Tensor | None = None
    dense: torch.Tensor | None = None

    def delta_weight(self) -> torch.Tensor:
        w = 0
        if self.up is not None:
            w = self.up.float() @ self.down.float()
        if self.dense is not None:
            w = w + self.dense.float()
        return w


def _place(rows: torch.Tensor, tgt: Target, out: int) -> torch.Tensor:
    """A [rows, ...] update -> [out, ...] with zeros outside the target's rows (halves swapped where asked)."""
    if tgt.swap:
        a, b = rows.chunk(2, 0)
        rows = torch.cat((b, a), 0)
    if tgt.start == 0 and tgt.rows == out:
        return rows
    full = rows.new_zeros((out,) + tuple(rows.shape[1:]))
    full[tgt.start:tgt.start + tgt.rows] = rows
    return full


def build_patches(loras: list[tuple[list[Delta], float]], shapes: dict[str, tuple[int, int]],
                  dtype: torch.dtype, device: torch.device | str) -> dict[str, Patch]:
    """Deltas of several LoRAs with their strengths -> one Patch per Linear (strength 0: left out entirely)."""
    downs: dict[str, list[torch.Tensor]] = {}
    ups: dict[str, list[torch.Tensor]] = {}
    dense: dict[str, torch.Tensor] = {}
    for deltas, strength in loras:
        if strength == 0:
            continue
        for d in deltas:
            m = d.target.module
            out = shapes[m][0]
            if d.up is not None:       # strength and alpha/rank folded into up, in float32, then the compute dtype
                downs.setdefault(m, []).append(d.down.to(dtype))
                ups.setdefault(m, []).append(_place(d.up.float() * (d.scale * strength), d.target, out).to(dtype))
            if d.dense is not None:
                add = _place(d.dense * strength, d.target, out)
                dense[m] = dense[m] + add if m in dense else add
    patches = {}
    for m in set(downs) | set(dense):
        p = Patch()
        if m in downs:
            p.down = torch.cat(downs[m], 0).to(device)                   # [R, in]
            p.up = torch.cat(ups[m], 1).to(device)                       # [out, R]
        if m in dense:
            p.dense = dense[m].to(device, dtype)                         # [out, in]
        patches[m] = p
    return patches


def _hook(patch: Patch) -> Callable:
    down, up, dense = patch.down, patch.up, patch.dense

    def add_delta(module: nn.Module, args, out: torch.Tensor) -> torch.Tensor:
        x = args[0]                                                      # [..., in]
        if down is not None:
            out = out + F.linear(F.linear(x, down), up)                  # [..., R] -> [..., out]
        if dense is not None:
            out = out + F.linear(x, dense)
        return out

    return add_delta


def attach(transformer: nn.Module, patches: dict[str, Patch]) -> list:
    """Forward hooks that add each patch to its Linear's output; returns the handles (detach() removes them)."""
    return [transformer.get_submodule(m).register_forward_hook(_hook(p)) for m, p in sorted(patches.items())]


def detach(handles: list) -> None:
    for h in handles:
        h.remove()
    handles.clear()


MERGEABLE_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def mergeable(module: nn.Module) -> bool:
    """A plain Linear with float weights takes a LoRA merged; a quantised one keeps it on the fly (merging would
    up-cast it, twice the memory, or re-quantise it, not the LoRA's numbers)."""
    return type(module) is nn.Linear and module.weight.dtype in MERGEABLE_DTYPES


def patch_bytes(patches: dict[str, Patch]) -> int:
    return sum(t.numel() * t.element_size() for p in patches.values() for t in (p.down, p.up, p.dense)
               if t is not None)


@torch.no_grad()
def merge_patches(transformer: nn.Module, patches: dict[str, Patch]) -> None:
    """W += ΔW in the weight's own dtype, ΔW computed in float32 (plain Linears only, see mergeable)."""
    for m, p in patches.items():
        lin = transformer.get_submodule(m)
        if type(lin) is not nn.Linear:
            raise TypeError(f"{m} is {type(lin).__name__}: only plain Linear weights can be merged into")
        lin.weight += p.delta_weight().to(lin.weight.device, lin.weight.dtype)


# ------------------------------------------------------------------------------------------- engine state

@dataclass(frozen=True)
class LoRASpec:
    """One link of a Flux2LoRA chain on a local backend: a file (already confined to the loras folder) and a strength."""

    path: Path
    strength: float = 1.0

    def identity(self) -> tuple:
        return file_stamp(self.path) + (float(self.strength),)


@dataclass
class AppliedLoRAs:
    """The LoRA set currently applied to one engine's transformer: merged into its float Linears, hooked onto the
    others. Generations hold `lock` from applying their set to their last step, so two requests with different
    sets never mix. restore(names) -> the weights those Linears were loaded with (read again from the files);
    None: nothing is merged (offload=blocks streams weights that are not resident), all on the fly."""

    transformer: nn.Module
    restore: Callable[[list[str]], dict[str, torch.Tensor]] | None = None
    lock: threading.RLock = field(default_factory=threading.RLock)
    key: tuple = ()
    handles: list = field(default_factory=list)
    merged: list[str] = field(default_factory=list)
    bytes: int = 0                  # device memory the on-the-fly patches hold (merged ones hold none)

    def use(self, key: tuple, build: Callable[[], dict[str, Patch]]) -> None:
        """Make `key`'s set the applied one (build() is called only when it changes); () = no LoRA."""
        if key == self.key:
            return
        detach(self.handles)
        self.key, self.bytes = ("restoring",), 0       # a failed restore leaves no set that looks applied
        self.unmerge()
        self.key = ()
        if key:
            patches = build()
            merge = {m: p for m, p in patches.items()
                     if self.restore is not None and mergeable(self.transformer.get_submodule(m))}
            live = {m: p for m, p in patches.items() if m not in merge}
            self.merged = sorted(merge)
            merge_patches(self.transformer, merge)
            self.handles = attach(self.transformer, live)
            self.bytes = patch_bytes(live)
        self.key = key

    @torch.no_grad()
    def unmerge(self) -> None:
        """Every merged Linear back to the exact weight it was loaded with."""
        if not self.merged:
            return
        for m, w in self.restore(self.merged).items():
            weight = self.transformer.get_submodule(m).weight
            weight.copy_(w.to(weight.device, weight.dtype))
        self.merged = []
