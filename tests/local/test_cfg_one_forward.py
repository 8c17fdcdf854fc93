"""CFG in one forward: the conditional and unconditional halves run as one batch of 2B per step, giving the same
images as two calls within float tolerance (diffusers parity: test_parity.py runs the one-forward default); the
backend falls back to two calls under block offload and where its memory plan says 2B will not fit."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from comfyui_flux2.flux2.backend import GenerationRequest
from comfyui_flux2.flux2.local.weights import loading
from comfyui_flux2.flux2.local.model import params
from comfyui_flux2.flux2.local.backend import LocalBackend, LocalFiles
from comfyui_flux2.flux2.local.pipeline import Flux2Engine

F32 = torch.float32


@pytest.fixture(scope="module")
def engine(klein_base):
    preset = params.tiny_preset("klein", False)
    m = loading.load_modules(preset, diffusers_dir=klein_base[1] / "diffusers" / "flux2-tiny", dtype=F32,
                             device="cpu")
    return Flux2Engine(m)


def test_one_forward_equals_two_calls_within_float_tolerance(engine):
    tr = engine.m.transformer
    batches = []
    hook = tr.register_forward_hook(lambda mod, args, out: batches.append(args[0].shape[0]))
    steps = 3
    # latents before decoding, so the comparison is not hidden by 8-bit rounding
    latents = {}
    real_decode = engine.decode

    def keep(x, h, w, vae_tiling="auto"):
        latents[len(latents)] = x.clone()
        return real_decode(x, h, w, vae_tiling)

    engine.decode = keep
    try:
        one = engine.generate("a photo of a red cat", 48, 48, [11, 12], steps, 4.0, cfg_one_forward=True)
        assert batches == [4] * steps                    # 2B in one call per step
        batches.clear()
        two = engine.generate("a photo of a red cat", 48, 48, [11, 12], steps, 4.0, cfg_one_forward=False)
        assert batches == [2] * (2 * steps)              # B, twice per step
    finally:
        hook.remove()
        del engine.decode
    err = (latents[0] - latents[1]).abs().max().item()
    print(f"cfg one forward vs two: latent max diff {err:.2e}")
    assert err < 1e-4
    for a, b in zip(one, two):
        assert np.abs(a.astype(int) - b.astype(int)).max() <= 1
    # and the guidance really acts: 1.0 switches CFG off and changes the picture
    off = engine.generate("a photo of a red cat", 48, 48, [11], steps, 1.0)[0]
    assert np.abs(off.astype(int) - one[0].astype(int)).mean() > 1.0


def _backend(tmp_path, **kw):
    """The real [klein] 4B Base preset (planned from shapes only: no weights are read)."""
    return LocalBackend("FLUX.2 [klein] 4B Base", LocalFiles(diffusers_dir=tmp_path), dtype="bf16", device="cpu", **kw)


def test_backend_chooses_one_forward_where_it_fits(tmp_path, monkeypatch):
    from comfyui_flux2.flux2.local import memory

    req = GenerationRequest("x", 1024, 1024, 1, batch=4)
    cuda = torch.device("cuda")
    assert _backend(tmp_path).cfg_one_forward(req, torch.device("cpu"))                 # no device budget: batch
    assert not _backend(tmp_path, offload="blocks").cfg_one_forward(req, torch.device("cpu"))
    assert not _backend(tmp_path, guidance=1.0).cfg_one_forward(req, torch.device("cpu"))      # no CFG at all
    distilled = LocalBackend("tiny", LocalFiles(diffusers_dir=tmp_path), device="cpu",
                             preset=params.tiny_preset("klein", True))
    assert not distilled.cfg_one_forward(req, torch.device("cpu"))

    b = _backend(tmp_path)
    need = b.memory_plan(GenerationRequest("x", 1024, 1024, 1, batch=8)).activations      # what 2B needs
    assert need > b.memory_plan(req).activations
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device=None: 300)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device=None: 100)
    monkeypatch.setattr(memory, "free_device_memory", lambda device: (need - 200, 80 * 2**30))
    assert b.cfg_one_forward(req, cuda)                     # free + reserved-but-unused = exactly enough
    monkeypatch.setattr(memory, "free_device_memory", lambda device: (need - 201, 80 * 2**30))
    assert not b.cfg_one_forward(req, cuda)                 # one byte short: two calls


def test_backend_run_uses_its_choice(klein_base, monkeypatch):
    from comfyui_flux2.flux2.local.backend import clear_cache
    from comfyui_flux2.flux2.run_context import RunContext

    clear_cache()
    seen = []
    real = Flux2Engine.generate

    def spy(self, *args, **kwargs):
        seen.append(kwargs["cfg_one_forward"])
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Flux2Engine, "generate", spy)
    try:
        b = LocalBackend("tiny", LocalFiles(diffusers_dir=klein_base[1] / "diffusers" / "flux2-tiny"), dtype="fp32",
                         device="cpu", steps=1, preset=params.tiny_preset("klein", False))
        b.generate(GenerationRequest("a red cat", 64, 64, 1), RunContext())
        assert seen == [True]
    finally:
        clear_cache()
