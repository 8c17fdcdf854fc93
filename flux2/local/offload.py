"""Block offload: weights stay in the safetensors files, memory-mapped, and each transformer block (each text-encoder
layer) is copied to the device only while it runs.

With offload=blocks the loader leaves every block tensor as the view safetensors gives into the mapped file (no
copy in anonymous RAM, not cast; weights/quant_read.py), so [dev] needs neither its 64 GB on the GPU nor in RAM: the
OS page cache holds what fits and drops it under pressure. Per block, `BlockStreamer` copies the block's tensors to
the device in the dtype the model runs in (`runtime_dtype`), points the parameters at those copies, and after the
block points them back at the mapped host tensors (nothing is copied back; the device copies are dropped).

- CUDA (`CudaTransfer`): the next block is staged while the current one computes: a worker thread copies its
  mapped pages into one of two pinned buffers, issues the host-to-device copies on a side stream and records an
  event; the compute stream waits on that event before the block runs. Two blocks are on the GPU at most.
- CPU (`HostTransfer`): the block is copied (and cast) synchronously into fresh, aligned memory; one block of
  anonymous memory at a time instead of the whole model (the low-RAM mode on a machine without a GPU).

The text encoder streams the same way, one decoder layer at a time; its token embedding (1.3 GB for [dev]) is not
moved at all: the prompt's rows are gathered from the mapped table on the host (`HostEmbedding`). The transformer's
small always-needed parts (embedders, modulations, final layer) and the VAE (~170 MB) stay resident. memory.py
plans what this leaves on the device and in RAM.
"""
from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor

import torch
import torch.nn.functional as F
from torch import nn

from .weights.quant import FP8_DTYPES

FLOAT32_NAMES = ("weight_scale", "weight_scale_2", "running_mean", "running_var")    # stay float32 whatever the compute dtype
STAGING_ALIGN = 256                                                   # bytes; any dtype can view an aligned slice


def runtime_dtype(name: str, t: torch.Tensor, dtype: torch.dtype) -> torch.dtype:
    """The dtype a weight has while the model runs, the same rule as loading without offload (quant_read.dequantize):
    float8 weights stay float8 (ScaledFP8Linear), fp8 scales and BatchNorm statistics float32, other floats `dtype`."""
    if not t.is_floating_point() or t.dtype in FP8_DTYPES or name.rsplit(".", 1)[-1] in FLOAT32_NAMES:
        return t.dtype
    return dtype


def _block_tensors(block: nn.Module, dtype: torch.dtype) -> list[tuple[torch.Tensor, torch.Tensor, torch.dtype]]:
    """(parameter or buffer, its host tensor, the dtype it runs in) for every tensor of a block."""
    named = list(block.named_parameters()) + list(block.named_buffers())
    return [(t, t.data, runtime_dtype(n, t, dtype)) for n, t in named]


def _align(n: int) -> int:
    return -(-n // STAGING_ALIGN) * STAGING_ALIGN


def staging_bytes(block: nn.Module) -> int:
    """Bytes one block takes in a pinned staging buffer (its host tensors as stored, each slice aligned)."""
    return sum(_align(t.numel() * t.element_size()) for t in list(block.parameters()) + list(block.buffers()))


class HostTransfer:
    """CPU (and MPS): each tensor is copied into fresh memory on the device in its runtime dtype (a cast where the
    file's dtype differs), synchronously; on the CPU the block so computes on aligned tensors, as the
    non-offloaded model does."""

    prefetch = 0

    def __init__(self, device: torch.device = torch.device("cpu")):
        self.device = device

    def start(self, items) -> list[torch.Tensor]:
        out = []
        for _param, host, dtype in items:
            t = torch.empty(host.shape, dtype=dtype, device=self.device)
            t.copy_(host)                                # copy_ casts with the same rounding as .to(dtype)
            out.append(t)
        return out

    def finish(self, handle) -> list[torch.Tensor]:
        return handle


class CudaTransfer:
    """Host-to-GPU transfers overlapped with compute: two pinned staging buffers, one copy stream, events.

    `start` hands the block to a worker thread, which waits until the staging buffer it will use is free (the event
    of that buffer's previous host-to-device copy), copies the mapped host tensors into it (a CPU memcpy that
    releases the GIL, so it runs while the main thread launches the current block's kernels), then issues the
    non-blocking copies, and any cast to the runtime dtype, on the copy stream and records an event. `finish` makes
    the compute stream wait on that event and marks the device tensors as used by the compute stream, so the
    caching allocator does not hand their memory out again before the block's kernels are done with it."""

    prefetch = 1

    def __init__(self, device: torch.device, slot_bytes: int):
        self.device = device
        self.stream = torch.cuda.Stream(device)
        self.slots = [torch.empty(max(slot_bytes, 1), dtype=torch.uint8, pin_memory=True) for _ in range(2)]
        self.slot_free: list[torch.cuda.Event | None] = [None, None]   # set after the copies out of that slot
        self.next_slot = 0
        # one worker: staging is serial; its thread ends when the engine (and so this transfer) is dropped
        self.worker = ThreadPoolExecutor(1, thread_name_prefix="flux2-offload")

    def start(self, items) -> Future:
        slot = self.next_slot
        self.next_slot ^= 1
        return self.worker.submit(self._stage, slot, items)

    def _stage(self, slot: int, items):
        free = self.slot_free[slot]
        if free is not None:
            free.synchronize()                         # the last copies out of this buffer have finished
        buf = self.slots[slot]
        views, offset = [], 0
        for _param, host, _dtype in items:
            n = host.numel() * host.element_size()
            if offset + n > buf.numel():
                raise RuntimeError(f"offload staging buffer of {buf.numel()} bytes is too small for a block")
            view = buf[offset:offset + n].view(host.dtype).view(host.shape)
            view.copy_(host)                           # mapped file pages -> pinned memory
            views.append(view)
            offset += _align(n)
        out = []
        with torch.cuda.device(self.device), torch.cuda.stream(self.stream):
            for view, (_param, _host, dtype) in zip(views, items):
                t = view.to(self.device, non_blocking=True)
                out.append(t if t.dtype == dtype else t.to(dtype))
            done = torch.cuda.Event()
            done.record(self.stream)
        self.slot_free[slot] = done
        return out, done

    def finish(self, handle: Future) -> list[torch.Tensor]:
        out, done = handle.result()
        compute = torch.cuda.current_stream(self.device)
        compute.wait_event(done)
        for t in out:
            t.record_stream(compute)
        return out


class BlockStreamer:
    """The per-block hook (the transformer calls `hook(block)` before each block and `hook.release()` after the
    pass; the text encoder per layer). It keeps one block on the device, the one running, plus the next one while
    the transfer prefetches it (`transfer.prefetch`). `order`: the blocks in the order a pass visits them; a block
    asked for out of that order is simply fetched then (a prefetched other block is dropped)."""

    def __init__(self, transfer, order: list[nn.Module], dtype: torch.dtype):
        self.transfer = transfer
        self.order = list(order)
        self.index = {id(b): i for i, b in enumerate(self.order)}
        self.dtype = dtype
        self.current: nn.Module | None = None
        self.current_items: list = []
        self.pending: tuple[nn.Module, list, object] | None = None    # (block, items, transfer handle)

    def _start(self, block: nn.Module):
        items = _block_tensors(block, self.dtype)
        return block, items, self.transfer.start(items)

    def __call__(self, block: nn.Module) -> None:
        if self.current is block:
            return
        self._release_current()
        if self.pending is not None and self.pending[0] is block:
            _, items, handle = self.pending
        else:
            self._drop_pending()
            _, items, handle = self._start(block)
        self.pending = None
        for (param, _host, _dtype), t in zip(items, self.transfer.finish(handle)):
            param.data = t
        self.current, self.current_items = block, items
        nxt = self.index.get(id(block), -1) + 1
        if self.transfer.prefetch and 0 < nxt < len(self.order):
            self.pending = self._start(self.order[nxt])     # staged while `block` computes

    def _drop_pending(self) -> None:
        if self.pending is not None:
            self.transfer.finish(self.pending[2])   # let its copies complete before their memory is reused
            self.pending = None

    def _release_current(self) -> None:
        for param, host, _dtype in self.current_items:
            param.data = host
        self.current_items = []
        self.current = None

    def release(self) -> None:
        """End of a pass: the running block's device copies are dropped and its parameters are the mapped host
        tensors again; a prefetch left over (a pass that stopped early) is dropped too."""
        self._release_current()
        self._drop_pending()


class HostEmbedding(nn.Module):
    """The text encoder's token embedding under offload: the table stays on the host (memory-mapped); only the
    prompt's rows are gathered and sent to the device, in the compute dtype (a cast commutes with a gather, so the
    numbers are those of embedding with the cast table)."""

    def __init__(self, inner: nn.Embedding, dtype: torch.dtype):
        super().__init__()
        self.weight = inner.weight          # the host (mapped) table, as a parameter so state_dict is unchanged
        self.dtype = dtype

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        rows = F.embedding(ids.cpu(), self.weight.data)                 # [B, L, Dm] in the file's dtype
        return rows.to(ids.device, self.dtype)


class _StreamedTextEncoder(nn.Module):
    """Wraps the text encoder: its layers stream one at a time through the encoder's layer hook (the encoder
    releases it after the pass, as the transformer does); the embedding gathers on the host."""

    def __init__(self, inner: nn.Module, device: torch.device, transfer=None, dtype: torch.dtype | None = None):
        super().__init__()
        self.inner = inner
        self.device = device              # pipeline.encode_prompt puts the token ids here
        self.compute_dtype = dtype or inner.dtype
        if not isinstance(inner.embed_tokens, HostEmbedding):
            inner.embed_tokens = HostEmbedding(inner.embed_tokens, self.compute_dtype)
        inner.layer_hook = BlockStreamer(transfer or transfer_for(device, list(inner.layers)), list(inner.layers),
                                         self.compute_dtype)

    @property
    def dtype(self) -> torch.dtype:
        return self.compute_dtype

    def __getattr__(self, name):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self._modules["inner"], name)

    def forward(self, *args, **kwargs):
        return self.inner(*args, **kwargs)


def transfer_for(device: torch.device, blocks: list[nn.Module]):
    """The transfer for `device`: CudaTransfer with staging buffers sized for the largest of `blocks`, else
    HostTransfer."""
    if device.type == "cuda":
        return CudaTransfer(device, max((staging_bytes(b) for b in blocks), default=0))
    return HostTransfer(device)


def _settle_resident(module: nn.Module, device: torch.device, dtype: torch.dtype) -> None:
    """A part that stays resident goes to the device in its runtime dtype (loading left it as the file has it)."""
    for mod in module.modules():
        for name, t in list(mod.named_parameters(recurse=False)) + list(mod.named_buffers(recurse=False)):
            want = runtime_dtype(name, t, dtype)
            if t.device != device or t.dtype != want:
                t.data = t.data.to(device, want)
            elif t.data_ptr() % 64:
                t.data = t.data.clone()  # an aligned copy, as loading without offload makes (weights/quant_read.py)


def offload_transformer(tr: nn.Module, device: torch.device, transfer=None, dtype: torch.dtype | None = None) -> None:
    """Blocks stay where they are (mapped files, or host RAM) and visit `device` one at a time; the small
    always-needed parts (embedders, modulations, final layer) go to the device in the compute dtype `dtype`
    (default: the model's, right when it was not loaded `mapped`)."""
    dtype = dtype or tr.dtype
    for name, child in tr.named_children():
        if name not in ("double_blocks", "single_blocks"):
            _settle_resident(child, device, dtype)
    blocks = list(tr.double_blocks) + list(tr.single_blocks)
    tr.block_hook = BlockStreamer(transfer or transfer_for(device, blocks), blocks, dtype)


def apply_offload(modules, device: torch.device) -> None:
    """Stream transformer blocks and text-encoder layers to `device` (one transfer, so one set of staging buffers,
    for both); the VAE is resident there."""
    te = modules.text_encoder
    dtype = getattr(modules, "dtype", None) or modules.transformer.dtype
    units = list(modules.transformer.double_blocks) + list(modules.transformer.single_blocks) + list(te.layers)
    transfer = transfer_for(device, units)
    offload_transformer(modules.transformer, device, transfer, dtype)
    for name, child in te.named_children():
        if name not in ("layers", "embed_tokens"):
            _settle_resident(child, device, dtype)
    modules.vae.to(device)                       # the VAE is small (~170 MB): keep it resident
    modules.text_encoder = _StreamedTextEncoder(te, device, transfer, dtype)
