"""A LoRA file's matched layers read as deltas (LoRA, LoKr, LoHa, full diff), with ComfyUI's arithmetic, kept
low-rank where it can be; the recently used files stay read."""
from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass

import torch

from ...errors import ModelLoadError
from .lora_inspect import Layer, LoRAFile, file_stamp
from .lora_keys import Target


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


_lock = threading.Lock()
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

