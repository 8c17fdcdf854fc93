"""LoRA (and LoKr / LoHa / full-diff) files for the FLUX.2 transformer: the applied set of one engine (AppliedLoRAs)
and a chain link (LoRASpec); the pieces are re-exported here.

A file is read in two passes. `inspect_lora` (lora_inspect) reads the safetensors header (names and shapes): it maps
every key to one of our Linear layers (and a row range of it), checks the shapes against the model and refuses
a file for another architecture or size in one line, then scans the matched tensors for NaN/Inf (refused: a
black image otherwise); the dry run and the memory plan use it. `load_deltas` reads the tensors of the matched
layers for use (lora_deltas). Key formats (lora_keys) and their sources: docs/loras.md.

Application (AppliedLoRAs.use, with lora_patches): a Linear with float weights (bf16 / fp16 / fp32) gets the
LoRA merged into its weight when the set is attached, as ComfyUI does, so a step costs what it costs without a
LoRA (on the fly cost +18 % per step at the benchmark's mid size, merged +3 %, its noise). When the set changes,
the merged weights are restored bit for bit by reading them again from the mapped model file
(reread.reread_linear_weights), not from a copy kept in memory. Quantised weights (fp8 kept as float8, ...) and
streamed blocks (offload=blocks: the weights are not resident) keep the LoRA on the fly: a forward hook adds
`x·Aᵀ·Bᵀ` (all LoRAs of that layer stacked along the rank, strength·alpha/rank folded into B) or `x·ΔWᵀ` for the
dense kinds, the weights untouched.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from .lora_deltas import Delta, layer_delta, load_deltas
from .lora_inspect import Layer, LoRAFile, classify, file_stamp, inspect_lora
from .lora_keys import Target, key_table, linear_shapes, split_key
from .lora_patches import Patch, attach, build_patches, detach, merge_patches, mergeable, patch_bytes

__all__ = ["AppliedLoRAs", "Delta", "Layer", "LoRAFile", "LoRASpec", "Patch", "Target", "attach", "build_patches",
           "classify", "detach", "file_stamp", "inspect_lora", "key_table", "layer_delta", "linear_shapes",
           "load_deltas", "merge_patches", "mergeable", "patch_bytes", "split_key"]


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
