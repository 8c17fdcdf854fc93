"""The process's loaded model set: loaded on first use, shared by every backend on the same files, evicted
when another set is asked for (two rarely fit in memory).

A cached engine holds what the files are (the modules, their caches); what one request wants of it (VAE
tiling, which LoRA set) travels with that request, so a backend never changes an engine another one uses.
"""
from __future__ import annotations

import gc
import threading
from pathlib import Path
from typing import Callable

import torch

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


class EngineCache:
    """Engines by key (files and their versions, dtype, device, offload mode); one model set at a time."""

    def __init__(self):
        self._engines: dict[tuple, object] = {}
        self._lock = threading.Lock()

    def get(self, key: tuple, load: Callable[[], object], before_load: Callable[[], None] | None = None):
        """The engine for `key`: the cached one, or (after the old set is evicted and `before_load` ran) load()."""
        with self._lock:
            hit = self._engines.get(key)
            if hit is not None:
                return hit
            self._evict()
            if before_load is not None:
                before_load()
            engine = load()
            self._engines[key] = engine
            return engine

    def clear(self) -> None:
        with self._lock:
            for engine in self._engines.values():
                engine.cache.clear()
            self._engines.clear()

    def _evict(self) -> None:
        if not self._engines:
            return
        for old in self._engines.values():
            old.cache.clear()       # its prompt/reference caches belong to the model set that goes
        self._engines.clear()
        gc.collect()                # ...and its memory must be really free before the next load's fit check
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


ENGINES = EngineCache()


def file_stamps(paths: list[Path]) -> tuple:
    """(resolved path, size, mtime) of each file: a file replaced on disk is another key."""
    stamp = []
    for p in paths:
        try:
            st = Path(p).stat()
            stamp.append((str(Path(p).resolve()), st.st_size, st.st_mtime_ns))
        except OSError:
            stamp.append((str(p), None, None))
    return tuple(stamp)


def load_engine(preset, files, *, dtype: str, device: torch.device, offload: str):
    """Modules from the files, block offload settled, wrapped as an engine with its LoRA slot."""
    from .offload import apply_offload
    from .pipeline import Flux2Engine
    from .weights.loading import load_modules
    from .weights.lora import AppliedLoRAs

    load_device = torch.device("cpu") if offload == "blocks" else device
    modules = load_modules(preset, diffusers_dir=files.diffusers_dir, transformer=files.transformer,
                           text_encoder=files.text_encoder, vae=files.vae, tokenizer=files.tokenizer,
                           dtype=DTYPES[dtype], device=load_device, mapped=offload == "blocks")
    modules.device = device
    if offload == "blocks":
        apply_offload(modules, device)
    engine = Flux2Engine(modules)
    # LoRA sets switch on this engine without a reload: merged into float weights, restored from the files
    engine.loras = AppliedLoRAs(modules.transformer, restore=weight_restorer(files, dtype, offload))
    return engine


def weight_restorer(files, dtype: str, offload: str):
    """restore(names) for AppliedLoRAs: the loaded weights read again from the transformer's files. None under
    offload=blocks, whose streamed blocks keep a LoRA on the fly (their weights are not resident)."""
    from functools import partial

    from .weights.reread import reread_linear_weights
    from .weights.safetensors_read import shard_files

    if offload == "blocks":
        return None
    paths = files.transformer or shard_files(Path(files.diffusers_dir) / "transformer", "diffusion_pytorch_model")
    return partial(reread_linear_weights, paths, DTYPES[dtype])
