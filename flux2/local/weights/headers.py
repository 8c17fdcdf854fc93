"""The header of any weight file the engine reads: safetensors (safetensors_header.py) or GGUF (gguf.py, whose
TensorInfo.dtype is a ggml type name such as "Q4_K"), and the JSON configs beside them (diffusers folders).
Names, dtypes and shapes only; no weight is read."""
from __future__ import annotations

import json
from pathlib import Path

from ...errors import ModelLoadError
from .safetensors_header import Header, read_header, read_headers


def read_any_header(path, what: str = "weights") -> Header:
    if Path(path).suffix.lower() == ".gguf":
        from .gguf import read_gguf_header
        return read_gguf_header(path, what)
    return read_header(path, what)


def read_any_headers(paths, what: str = "weights") -> Header:
    """Several shards as one header (tensor names unique across shards; metadata of the first file)."""
    return read_headers(paths, what, read=read_any_header)


def read_json(path: Path) -> dict:
    """A JSON config beside weights (config.json, model_index.json): {} when absent, one line when broken."""
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except ValueError:
        raise ModelLoadError(f"{path} is not valid JSON") from None
