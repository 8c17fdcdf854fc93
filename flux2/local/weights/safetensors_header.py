"""Read a safetensors file's header (names, dtypes, shapes, metadata) without touching its weights.

Format (safetensors' documented layout): 8 bytes little-endian header length N, then N bytes of JSON mapping
each tensor name to {"dtype", "shape", "data_offsets"}, plus an optional "__metadata__" of strings. Reading
only those bytes with plain file I/O (no mmap) plans a 64 GB file in milliseconds and a few MB of memory,
and a machine with less RAM than the file can still plan it.
"""
from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path

from ...errors import ModelLoadError

MAX_HEADER = 100 * 1024 * 1024        # safetensors' own limit on the JSON header
FP8 = ("F8_E4M3", "F8_E5M2")


@dataclass(frozen=True)
class TensorInfo:
    """What the header says about one tensor; `.shape` / `.ndim` let shape-only code treat it like a tensor."""

    dtype: str                        # safetensors dtype name: "BF16", "F8_E4M3", "U8", ...
    shape: tuple[int, ...]

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def numel(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n

    def squeeze_1x1(self) -> "TensorInfo":
        """[C, C, 1, 1] conv -> [C, C] linear (the VAE's attention), as the loader does with the data."""
        return TensorInfo(self.dtype, self.shape[:2])


@dataclass(frozen=True)
class Header:
    tensors: dict[str, TensorInfo]
    metadata: dict[str, str]
    data_bytes: int                   # bytes of tensor data the header describes


def read_header(path: Path | str, what: str = "weights") -> Header:
    """The header of one safetensors file. Any unreadable header is a ModelLoadError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise ModelLoadError(f"{what} file not found: {path}")
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise ValueError("shorter than a safetensors header")
            (n,) = struct.unpack("<Q", head)
            if n > MAX_HEADER or n + 8 > size:
                raise ValueError(f"header length {n} does not fit the file of {size} bytes")
            raw = json.loads(f.read(n))
    except OSError as exc:
        raise ModelLoadError(f"{what} file {path.name} cannot be read ({exc.strerror or type(exc).__name__})") from None
    except (ValueError, UnicodeDecodeError) as exc:
        msg = str(exc).splitlines()[0][:100] if str(exc) else type(exc).__name__
        raise ModelLoadError(f"{what} file {path.name} is not a readable safetensors file ({msg})") from None
    if not isinstance(raw, dict):
        raise ModelLoadError(f"{what} file {path.name} is not a readable safetensors file (header is not a table)")
    meta = raw.pop("__metadata__", None) or {}
    tensors: dict[str, TensorInfo] = {}
    end = 0
    try:
        for key, info in raw.items():
            tensors[key] = TensorInfo(str(info["dtype"]), tuple(int(d) for d in info["shape"]))
            end = max(end, int(info["data_offsets"][1]))
    except (KeyError, TypeError, ValueError, IndexError):
        raise ModelLoadError(f"{what} file {path.name} is not a readable safetensors file "
                             f"(malformed entry for {key!r})") from None
    if 8 + n + end > size:
        raise ModelLoadError(f"{what} file {path.name} is truncated: its header describes {8 + n + end} bytes, "
                             f"the file has {size}")
    return Header(tensors, {str(k): str(v) for k, v in meta.items()} if isinstance(meta, dict) else {}, end)


def read_headers(paths, what: str = "weights", read=None) -> Header:
    """Several shards as one header (tensor names are unique across shards; metadata of the first file).
    `read(path, what)` reads one file's header (default: a safetensors header)."""
    read = read or read_header
    paths = [paths] if isinstance(paths, (str, Path)) else list(paths)
    tensors: dict[str, TensorInfo] = {}
    meta: dict[str, str] = {}
    total = 0
    for i, p in enumerate(paths):
        h = read(p, what)
        tensors.update(h.tensors)
        meta = meta if i else h.metadata
        total += h.data_bytes
    return Header(tensors, meta, total)
