"""Applying deltas to the transformer's Linears: one Patch per Linear (all LoRAs stacked, strengths folded in),
merged into float weights or added on the fly by a forward hook."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .lora_deltas import Delta
from .lora_keys import Target


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

