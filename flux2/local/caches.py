"""Work a seed sweep or a chain of edits would otherwise repeat: prompt embeddings and reference latents.

One `TensorLRU` per engine (pipeline.Flux2Engine), so the cache goes when the model set changes (the backend drops
the engine). Keys carry the identity of the module that produced the value (`module_token`: a number never reused
in the process, unlike `id()`), so a swapped text encoder or VAE can never be answered from another's entries.
Values are kept on the CPU, where a byte budget is cheap to honour and no device memory is planned for them; the
tensors are returned as stored (bit-identical to a fresh computation) and must be treated as read-only.
"""
from __future__ import annotations

import hashlib
import itertools
import threading
import weakref
from collections import OrderedDict
from typing import Callable, Hashable

import numpy as np
import torch

DEFAULT_BYTES = 512 * 2**20     # ≈ 32 [dev] prompt embeddings ([1, 512, 15360] bf16 = 15 MiB each)

_tokens: "weakref.WeakKeyDictionary[object, int]" = weakref.WeakKeyDictionary()
_counter = itertools.count(1)
_tokens_lock = threading.Lock()


def module_token(module: object) -> int:
    """A process-unique number for this object while it lives (ids are reused after garbage collection)."""
    with _tokens_lock:
        token = _tokens.get(module)
        if token is None:
            token = _tokens[module] = next(_counter)
        return token


def content_hash(arr: np.ndarray) -> str:
    """sha256 of an array's shape, dtype and bytes."""
    arr = np.ascontiguousarray(arr)
    h = hashlib.sha256(f"{arr.shape}|{arr.dtype}|".encode())
    h.update(arr.data)
    return h.hexdigest()


def tensor_bytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


class TensorLRU:
    """Least-recently-used tensors under a byte budget. A value larger than the whole budget is not kept."""

    def __init__(self, max_bytes: int = DEFAULT_BYTES):
        self.max_bytes = max(0, int(max_bytes))
        self._items: OrderedDict[Hashable, torch.Tensor] = OrderedDict()
        self._lock = threading.Lock()
        self.bytes = 0
        self.hits = self.misses = self.evictions = 0

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._items

    def get(self, key: Hashable) -> torch.Tensor | None:
        with self._lock:
            value = self._items.get(key)
            if value is None:
                self.misses += 1
                return None
            self._items.move_to_end(key)
            self.hits += 1
            return value

    def put(self, key: Hashable, value: torch.Tensor) -> None:
        size = tensor_bytes(value)
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self.bytes -= tensor_bytes(old)
            if size > self.max_bytes:
                return
            while self._items and self.bytes + size > self.max_bytes:
                _, evicted = self._items.popitem(last=False)
                self.bytes -= tensor_bytes(evicted)
                self.evictions += 1
            self._items[key] = value
            self.bytes += size

    def get_or_compute(self, key: Hashable, compute: Callable[[], torch.Tensor], device: torch.device) -> torch.Tensor:
        """The cached value moved to `device`, or compute() (on `device`), stored as a CPU copy."""
        hit = self.get(key)
        if hit is not None:
            return hit.to(device)
        value = compute()
        if self.max_bytes:
            self.put(key, value.detach().to("cpu", copy=True))     # a copy: the caller's tensor stays its own
        return value

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self.bytes = 0
