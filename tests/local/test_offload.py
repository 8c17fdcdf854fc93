"""offload="blocks" on a CPU-only machine: small parts move with `Module.to`, instrumented so that moves to a (fake)
CUDA device are recorded and skipped; blocks and text-encoder layers stream tensor by tensor through
`offload._device_copy`, replaced by a recording clone. Checks: at most one block is "on the device" at any time
(exactly the one running), small parts stay resident, after a call every parameter is its original host tensor
again (nothing is copied back), and the outputs equal the non-offloaded modules bit for bit."""
from __future__ import annotations

from types import SimpleNamespace

import torch
from torch import nn

from comfyui_flux2.flux2.local import offload, params, sampling
from comfyui_flux2.flux2.local.autoencoder import AutoencoderFlux2
from comfyui_flux2.flux2.local.offload import apply_offload
from comfyui_flux2.flux2.local.text_encoder import TextEncoder
from comfyui_flux2.flux2.local.transformer import Flux2Transformer

TINY = params.tiny_preset("klein", True, depth_double=3, depth_single=4)
CUDA = torch.device("cuda")


def _target(args, kwargs):
    t = args[0] if args else kwargs.get("device")
    return torch.device(t) if isinstance(t, (str, torch.device)) else None


def test_block_offload_keeps_one_block_on_device(monkeypatch):
    torch.manual_seed(0)
    tr = Flux2Transformer(TINY.transformer).eval().requires_grad_(False)
    te = TextEncoder(TINY.text_encoder).eval().requires_grad_(False)
    modules = SimpleNamespace(transformer=tr, text_encoder=te, vae=AutoencoderFlux2(TINY.vae))
    g = torch.Generator().manual_seed(1)
    inputs = (torch.randn(1, 16, 128, generator=g), sampling.image_ids(4, 4), torch.randn(1, 8, TINY.transformer.context_dim,
              generator=g), sampling.text_ids(8), torch.tensor([0.7]))
    ids = torch.randint(0, 1000, (1, 512), generator=g)
    mask = torch.ones(1, 512, dtype=torch.long)
    with torch.no_grad():
        ref, ref_te = tr(*inputs), te(ids, mask)

    on_device: set[int] = set()
    moves: list[tuple[str, nn.Module]] = []
    real_to = nn.Module.to

    def fake_to(self, *args, **kwargs):
        dev = _target(args, kwargs)
        if dev is not None and dev.type == "cuda":
            on_device.add(id(self))
            moves.append(("in", self))
            return self                       # no CUDA here: stay on the CPU, but remember where it "is"
        if dev is not None and dev.type == "cpu":
            on_device.discard(id(self))
            moves.append(("out", self))
        return real_to(self, *args, **kwargs)

    copies: list[torch.Tensor] = []

    def fake_copy(t, device):
        assert device == CUDA
        copies.append(t)
        return t.clone()                      # a "device" copy: other storage, same numbers

    monkeypatch.setattr(nn.Module, "to", fake_to)
    monkeypatch.setattr(offload, "_device_copy", fake_copy)
    blocks = list(tr.double_blocks) + list(tr.single_blocks)
    layers = list(te.layers)
    host = {id(t): t.data_ptr() for m in blocks + layers for t in list(m.parameters()) + list(m.buffers())}

    def streamed_in(m):
        return all(t.data_ptr() != host[id(t)] for t in m.parameters())

    def at_home(m):
        return all(t.data_ptr() == host[id(t)] for t in list(m.parameters()) + list(m.buffers()))

    apply_offload(modules, CUDA)
    resident_small = [c for n, c in tr.named_children() if n not in ("double_blocks", "single_blocks")]
    assert all(id(c) in on_device for c in resident_small)
    seen = []

    def check(block, _args):
        here = [b for b in blocks if not at_home(b)]
        assert here == [block] and streamed_in(block), f"{len(here)} blocks on the device at block {blocks.index(block)}"
        seen.append(blocks.index(block))

    for b in blocks:
        b.register_forward_pre_hook(check)
    for _ in range(2):                        # two steps: blocks stream in again each step
        moves.clear()
        copies.clear()
        with torch.no_grad():
            out = tr(*inputs)
        assert torch.equal(out, ref)
        assert all(at_home(b) for b in blocks)                              # host tensors back, no copy made
        assert [c.data_ptr() for c in copies] == [host[id(t)] for b in blocks for t in b.parameters()]   # each once
        assert not any(d == "out" for d, _ in moves)                       # nothing moved back with Module.to
    assert seen == list(range(len(blocks))) * 2
    # the text encoder streams too: its embedding for the call, then one decoder layer at a time
    te_seen = []

    def check_layer(layer, _args):
        here = [x for x in layers if not at_home(x)]
        assert here == [layer] and id(te.embed_tokens) in on_device
        te_seen.append(layers.index(layer))

    for layer in layers:
        layer.register_forward_pre_hook(check_layer)
    moves.clear()
    with torch.no_grad():
        assert torch.equal(modules.text_encoder(ids, mask), ref_te)
    assert te_seen == list(range(len(layers)))
    assert [m for d, m in moves if d == "in"] == [te.embed_tokens]
    assert all(at_home(x) for x in layers) and id(te.embed_tokens) not in on_device
