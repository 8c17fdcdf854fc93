"""offload="blocks": weights stay in the memory-mapped safetensors files and stream to the device block by block.

On this CPU-only machine the streaming logic runs with the CPU transfer (offload.HostTransfer: the "device copy" is
a fresh, aligned tensor in the runtime dtype) and with a recording transfer that prefetches like the CUDA one.
Checks: at most the running block (plus the prefetched next one) is off its host tensor, every parameter is its
host tensor again after a pass (nothing is copied back), outputs equal the non-offloaded modules bit for bit, and
a model loaded from disk with offload=blocks gives offload=none's images (bf16 files computed in fp32, fp8 files)
while its anonymous memory stays well below the weights' size (slow test, a ~700 MB model, in child processes).
The CUDA transfer (pinned staging, copy stream, events) runs only where a GPU is present."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from comfyui_flux2.flux2.backend import GenerationRequest
from comfyui_flux2.flux2.local import backend as lb
from comfyui_flux2.flux2.local.model import params, sampling
from comfyui_flux2.flux2.local.model.autoencoder import AutoencoderFlux2
from comfyui_flux2.flux2.local.offload import HostEmbedding, HostTransfer, apply_offload
from comfyui_flux2.flux2.local.model.text_encoder import TextEncoder
from comfyui_flux2.flux2.local.model.transformer import Flux2Transformer
from comfyui_flux2.flux2.run_context import RunContext

import mapped

TINY = params.tiny_preset("klein", True, depth_double=3, depth_single=4)


def _modules(with_text_encoder: bool = True):
    torch.manual_seed(0)
    tr = Flux2Transformer(TINY.transformer).eval().requires_grad_(False)
    te = TextEncoder(TINY.text_encoder).eval().requires_grad_(False)
    g = torch.Generator().manual_seed(1)
    inputs = (torch.randn(1, 16, 128, generator=g), sampling.image_ids(4, 4),
              torch.randn(1, 8, TINY.transformer.context_dim, generator=g), sampling.text_ids(8), torch.tensor([0.7]))
    ids = torch.randint(0, 1000, (1, 512), generator=g)
    mask = torch.ones(1, 512, dtype=torch.long)
    with torch.no_grad():
        ref, ref_te = tr(*inputs), (te(ids, mask) if with_text_encoder else None)
    modules = SimpleNamespace(transformer=tr, text_encoder=te, vae=AutoencoderFlux2(TINY.vae), dtype=torch.float32)
    return modules, inputs, (ids, mask), ref, ref_te


def _host_ptrs(blocks):
    return {id(t): t.data_ptr() for m in blocks for t in list(m.parameters()) + list(m.buffers())}


def test_block_offload_keeps_one_block_on_device():
    modules, inputs, te_inputs, ref, ref_te = _modules()
    tr, te = modules.transformer, modules.text_encoder
    blocks, layers = list(tr.double_blocks) + list(tr.single_blocks), list(te.layers)
    host = _host_ptrs(blocks + layers)

    def at_home(m):
        return all(t.data_ptr() == host[id(t)] for t in list(m.parameters()) + list(m.buffers()))

    apply_offload(modules, torch.device("cpu"))
    seen = []

    def check(block, _args):
        assert [b for b in blocks if not at_home(b)] == [block], f"at block {blocks.index(block)}"
        seen.append(blocks.index(block))

    for b in blocks:
        b.register_forward_pre_hook(check)
    for _ in range(2):                        # two steps: blocks stream in again each step
        with torch.no_grad():
            assert torch.equal(tr(*inputs), ref)
        assert all(at_home(b) for b in blocks)                  # the host tensors are back; nothing copied back
    assert seen == list(range(len(blocks))) * 2
    te_seen = []

    def check_layer(layer, _args):
        assert [x for x in layers if not at_home(x)] == [layer]
        te_seen.append(layers.index(layer))

    for layer in layers:
        layer.register_forward_pre_hook(check_layer)
    with torch.no_grad():
        assert torch.equal(modules.text_encoder(*te_inputs), ref_te)
    assert te_seen == list(range(len(layers)))
    assert isinstance(te.embed_tokens, HostEmbedding) and all(at_home(x) for x in layers)


class RecordingTransfer(HostTransfer):
    """Prefetches one block ahead, as offload.CudaTransfer does; records which blocks are staged / in use."""

    prefetch = 1

    def __init__(self, blocks):
        super().__init__()
        self.blocks = blocks
        self.events: list[tuple[str, int]] = []

    def _which(self, items):
        first = items[0][0]
        return next(i for i, b in enumerate(self.blocks) if any(p is first for p in b.parameters()))

    def start(self, items):
        self.events.append(("start", self._which(items)))
        return items, super().start(items)

    def finish(self, handle):
        items, out = handle
        self.events.append(("finish", self._which(items)))
        return out


def test_prefetch_stages_the_next_block_while_one_runs():
    from comfyui_flux2.flux2.local.offload import offload_transformer

    modules, inputs, _, ref, _ = _modules(with_text_encoder=False)
    tr = modules.transformer
    blocks = list(tr.double_blocks) + list(tr.single_blocks)
    transfer = RecordingTransfer(blocks)
    offload_transformer(tr, torch.device("cpu"), transfer)
    at_run = []
    for i, b in enumerate(blocks):
        b.register_forward_pre_hook(lambda m, _a, i=i: at_run.append((i, list(transfer.events))))
    with torch.no_grad():
        assert torch.equal(tr(*inputs), ref)
    n = len(blocks)
    for i, events in at_run:                  # block i runs: blocks 0..i fetched, i+1 staged, nothing further
        assert [b for e, b in events if e == "finish"] == list(range(i + 1))
        assert [b for e, b in events if e == "start"] == list(range(min(i + 2, n)))
    assert transfer.events.count(("start", n - 1)) == 1 and tr.block_hook.pending is None

    def boom(_m, _a):
        raise RuntimeError("interrupted")

    handle = blocks[2].register_forward_pre_hook(boom)           # a pass that stops early (Ctrl-C, an error)
    transfer.events.clear()
    with torch.no_grad(), pytest.raises(RuntimeError):
        tr(*inputs)
    handle.remove()
    assert ("finish", 3) in transfer.events and tr.block_hook.pending is None   # the prefetch of block 3 dropped
    host = {id(p): p.data_ptr() for p in tr.parameters()}
    with torch.no_grad():
        assert torch.equal(tr(*inputs), ref)
    assert {id(p): p.data_ptr() for p in tr.parameters()} == host


@pytest.mark.parametrize("fp8", [False, True])
def test_mapped_blocks_give_offload_nones_images(tmp_path, fp8):
    """bf16 (or fp8-block) files, computed in fp32: offload=blocks leaves the block weights as the file has them
    (no cast, no copy at load) and casts per block; the images equal offload=none's exactly."""
    p = mapped.preset(depth_double=2, depth_single=3)
    root = mapped.write_models(tmp_path, p, fp8_blocks=fp8)
    req = GenerationRequest("a red cat", 64, 64, seed=5)
    images = {}
    for offload in ("none", "blocks"):
        lb.clear_cache()
        b = mapped.backend(root, p, offload, steps=2)
        images[offload] = b.generate(req, RunContext()).images[0]
        if offload == "blocks":
            tr = b.engine().m.transformer
            stored = {p_.dtype for blk in tr.double_blocks for p_ in blk.parameters()}
            assert stored == ({torch.float8_e4m3fn, torch.bfloat16} if fp8 else {torch.bfloat16})
            assert tr.img_in.weight.dtype == torch.float32
    lb.clear_cache()
    assert images["none"].std() > 5 and np.array_equal(images["none"], images["blocks"])


def _child(root: Path, offload: str, out: Path) -> dict:
    proc = subprocess.run([sys.executable, str(Path(mapped.__file__)), str(root), offload, str(out)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_mapped_offload_keeps_anonymous_memory_well_below_the_weights(tmp_path):
    """A ~700 MB model (bf16 files, hidden 1024, 6 double + 12 single blocks) generates in a child process each,
    fp32 on the CPU. Bound: with offload=blocks the peak growth of RssAnon (sampled every ms, over a baseline
    taken after a warm-up run on a tiny model) stays under half the weight files' size, and within the memory
    plan's RAM figure plus 64 MiB; offload=none's growth is above the files' size (the measurement sees the weights)."""
    root = mapped.write_models(tmp_path / "models", mapped.preset(**mapped.MID))
    blocks = _child(root, "blocks", tmp_path / "blocks.npy")
    none = _child(root, "none", tmp_path / "none.npy")
    weights = blocks["weights_mib"]
    assert 500 < weights < 2048
    assert blocks["anon_growth_mib"] < 0.5 * weights, blocks
    # the plan counts tensors; loading also builds the prompt tokenizer again (tens of MB of Python objects)
    assert blocks["anon_growth_mib"] < blocks["plan_ram_mib"] + 64, blocks
    assert none["anon_growth_mib"] > weights, none
    assert np.array_equal(np.load(tmp_path / "blocks.npy"), np.load(tmp_path / "none.npy"))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_streaming_equals_resident(tmp_path):
    """On a GPU: pinned staging, copy stream and events (offload.CudaTransfer) give the resident model's images."""
    p = mapped.preset(depth_double=2, depth_single=3)
    root = mapped.write_models(tmp_path, p)
    req = GenerationRequest("a red cat", 64, 64, seed=5)
    images = {}
    for offload in ("none", "blocks"):
        lb.clear_cache()
        b = mapped.backend(root, p, offload, dtype="bf16", steps=2)
        b.device = "cuda"
        images[offload] = b.generate(req, RunContext()).images[0]
    lb.clear_cache()
    assert np.array_equal(images["none"], images["blocks"])
