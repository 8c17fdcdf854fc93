"""LoRA file inspection from the safetensors header (names and shapes): every key mapped to a layer of the model,
shapes checked, a file for another architecture or size refused in one line, then the matched tensors scanned
for NaN/Inf. The dry run and the memory plan use it (cached per file version and model)."""
from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import torch

from ...errors import ModelLoadError
from ..model.params import TransformerParams
from .lora_keys import LOHA, LOKR, Target, key_table, linear_shapes, split_key


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

