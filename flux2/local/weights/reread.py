"""The restore-from-file path: Linear weights read again exactly as load_transformer gave them, what undoes a LoRA
merged into them (lora.AppliedLoRAs.unmerge) without a copy of the originals kept in memory."""
from __future__ import annotations

from pathlib import Path

import torch

from ...errors import ModelLoadError
from .safetensors_read import read_safetensors, strip_prefix
from .transformer_weights import TRANSFORMER_PREFIXES, normalise_transformer_keys


def reread_linear_weights(paths, dtype: torch.dtype, names: list[str]) -> dict[str, torch.Tensor]:
    """The weights of the Linears `names` exactly as load_transformer gave them (same read, de-quantisation, cast
    and key layout), read again from the mapped files: what undoes a LoRA merged into them, with no copy of the
    originals kept in memory meanwhile. Only those tensors are read from a BFL / ComfyUI file; a diffusers folder
    names them differently (q, k, v apart), so its files are read whole, as at load."""
    paths = [Path(p) for p in ([paths] if isinstance(paths, (str, Path)) else paths)]
    if any(p.suffix.lower() == ".gguf" for p in paths):
        return _reread_gguf_linear_weights(paths[0], dtype, names)
    wanted = {f"{pre}{n}.weight" for n in names for pre in TRANSFORMER_PREFIXES + ("",)}
    sd = strip_prefix(read_safetensors(paths, dtype, "diffusion model", keep=wanted.__contains__), TRANSFORMER_PREFIXES)
    if not all(n + ".weight" in sd for n in names):
        sd = normalise_transformer_keys(read_safetensors(paths, dtype, "diffusion model"), "diffusion model", dtype)
    missing = [n for n in names if n + ".weight" not in sd]
    if missing:
        raise ModelLoadError(f"diffusion model {paths[0].name} no longer holds {missing[0]}.weight (changed since "
                             f"it was loaded?)")
    return {n: sd[n + ".weight"] for n in names}


def _reread_gguf_linear_weights(path: Path, dtype: torch.dtype, names: list[str]) -> dict[str, torch.Tensor]:
    """reread_linear_weights for a GGUF transformer: its float (unquantised) Linears are the ones that take a
    LoRA merged; they are read again as _load_gguf_transformer read them (gguf.settle: the same cast)."""
    from .gguf import read_gguf, settle

    sd = normalise_transformer_keys(read_gguf(path, "diffusion model").tensors, f"diffusion model {path.name}")
    missing = [n for n in names if n + ".weight" not in sd]
    if missing:
        raise ModelLoadError(f"diffusion model {path.name} no longer holds {missing[0]}.weight (changed since it "
                             f"was loaded?)")
    out = settle({n + ".weight": sd[n + ".weight"] for n in names}, dtype, mapped=False)
    return {n: out[n + ".weight"] for n in names}
