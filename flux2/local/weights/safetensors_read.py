"""Reading safetensors weight files: one or several shards, memory-mapped, de-quantised on read (quant_read.py).

Every failure is a ModelLoadError naming the file: missing, truncated, not safetensors, or out of memory.
"""
from __future__ import annotations

import errno
import json
from pathlib import Path

import torch

from ...errors import ModelLoadError
from .headers import read_json
from .quant_read import dequantize
from .safetensors_header import read_header


def read_safetensors(paths: list[Path] | Path, dtype: torch.dtype | None = None, what: str = "weights",
                     keep=None, keep_fp8: bool = False, defer_cast: bool = False) -> dict[str, torch.Tensor]:
    """Read one or several (sharded) safetensors files; fp8 weights with scales are dequantised to `dtype`,
    or with keep_fp8 kept as float8 matrices plus `<name>.weight_scale` (see dequantize). The tensors are views
    into the memory-mapped files (safetensors' safe_open); defer_cast: see dequantize."""
    from safetensors import SafetensorError, safe_open

    paths = [paths] if isinstance(paths, (str, Path)) else list(paths)
    raw: dict[str, torch.Tensor] = {}
    for path in paths:
        path = Path(path)
        read_header(path, what)           # missing, truncated or malformed: one precise line, before any mmap
        try:
            with safe_open(str(path), framework="pt", device="cpu") as f:
                for key in f.keys():
                    if keep is None or keep(key):
                        raw[key] = f.get_tensor(key)
        except (SafetensorError, OSError, ValueError, RuntimeError, MemoryError) as exc:
            raise _read_error(path, what, exc) from None
    return dequantize(raw, dtype, keep_fp8, what, defer_cast)


def _read_error(path: Path, what: str, exc: BaseException) -> ModelLoadError:
    """A failed weight read as one line; running out of memory is said as such (it is not a corrupt file)."""
    msg = str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__
    if isinstance(exc, MemoryError) or "Cannot allocate memory" in msg or "os error 12" in msg \
            or getattr(exc, "errno", None) == errno.ENOMEM:
        gib = path.stat().st_size / 2**30
        return ModelLoadError(f"{what} file {path.name} ({gib:.1f} GiB) cannot be mapped into memory: Cannot allocate "
                              f"memory (free RAM or swap, or choose a smaller / fp8 file)")
    return ModelLoadError(f"{what} file {path.name} is not a readable safetensors file (truncated or corrupt: {msg})")


def shard_files(folder: Path, stem: str) -> list[Path]:
    """`stem.safetensors`, or the shards listed in `stem.safetensors.index.json`, or any *.safetensors."""
    single = folder / f"{stem}.safetensors"
    if single.is_file():
        return [single]
    index = folder / f"{stem}.safetensors.index.json"
    if index.is_file():
        try:
            names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (ValueError, KeyError) as exc:
            raise ModelLoadError(f"{index} is not a valid shard index ({type(exc).__name__})") from None
        return [folder / n for n in names]
    found = sorted(folder.glob("*.safetensors"))
    if not found:
        raise ModelLoadError(f"no .safetensors weights in {folder}")
    return found


def read_config(folder: Path) -> dict:
    return read_json(folder / "config.json")


def strip_prefix(sd: dict[str, torch.Tensor], prefixes) -> dict[str, torch.Tensor]:
    """The keys under the first of `prefixes` any key has, without it; `sd` unchanged when none has one."""
    for pre in prefixes:
        if any(k.startswith(pre) for k in sd):
            return {k[len(pre):]: v for k, v in sd.items() if k.startswith(pre)}
    return sd
