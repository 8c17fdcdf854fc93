"""A read state dict into a module built on meta: fp8 / NVFP4 Linears swapped for their quantised layers, then a strict
load whose missing keys and wrong shapes are one line naming the file."""
from __future__ import annotations

import torch

from ...errors import ModelLoadError
from .quant import FP8_DTYPES, is_nvfp4, swap_fp8_linears, swap_nvfp4_linears
from .quant_read import upcast_kept_fp8


def check_against(found, expected, name: str, fields: tuple[str, ...], what: str) -> None:
    """Sizes inferred from a file against the chosen preset's: the differing fields in one line."""
    diffs = [f"{f} {getattr(found, f)} (expected {getattr(expected, f)})" for f in fields
             if getattr(found, f) != getattr(expected, f)]
    if diffs:
        raise ModelLoadError(f"{name} does not match {what}: " + ", ".join(diffs))


def into_module(module_cls, params, sd, name: str, dtype, device, module=None):
    """module: already built on meta (GGUF: its quantised Linears swapped for GGUFLinear first)."""
    if module is None:
        with torch.device("meta"):
            module = module_cls(params)
    nvfp4 = swap_nvfp4_linears(module, sd, dtype) if any(is_nvfp4(sd, k) for k in sd) else set()
    if nvfp4 or any(t.dtype in FP8_DTYPES for t in sd.values()):
        swap_fp8_linears(module, sd, dtype)          # fp8 Linear weights stay float8 (ScaledFP8Linear)
        kept = {k for k, v in module.state_dict().items() if v.dtype in FP8_DTYPES} | nvfp4
        sd = upcast_kept_fp8(sd, dtype, keep=lambda key: key in kept)
    expected = set(module.state_dict().keys())
    missing = sorted(expected - set(sd))
    if missing:
        raise ModelLoadError(f"{name} lacks {len(missing)} weights (first: {missing[0]}); "
                             f"truncated export or other architecture")
    sd = {k: v for k, v in sd.items() if k in expected}
    for k, v in module.state_dict().items():
        if tuple(sd[k].shape) != tuple(v.shape):
            raise ModelLoadError(f"{name}: weight {k} has shape {tuple(sd[k].shape)}, expected {tuple(v.shape)}")
    module.load_state_dict(sd, strict=True, assign=True)
    return module.to(device=device).eval().requires_grad_(False)
