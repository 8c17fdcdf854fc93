"""Tiled VAE decode (bounded memory for 4 MP outputs) and the pre-load memory hook."""
from __future__ import annotations

import torch

from comfyui_flux2.flux2.local.model import autoencoder, params
from comfyui_flux2.flux2.local import backend as lb
from comfyui_flux2.flux2.local.model.autoencoder import AutoencoderFlux2

TINY = params.tiny_preset("klein", True)


def _vae() -> AutoencoderFlux2:
    torch.manual_seed(0)
    vae = AutoencoderFlux2(TINY.vae).eval().requires_grad_(False)
    vae.bn.running_mean.normal_(0, 0.1)
    vae.bn.running_var.uniform_(0.5, 1.5)
    return vae


def _smooth_latents(h: int, w: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(3)
    coarse = torch.randn(1, 128, max(1, h // 8), max(1, w // 8), generator=g)
    return torch.nn.functional.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=False)


def test_tiled_decode_matches_whole_decode_and_decodes_tile_by_tile(monkeypatch):
    vae = _vae()
    z = _smooth_latents(24, 40)                                  # patchified: 48x80 latent px -> 384x640 image
    with torch.no_grad():
        whole = vae.decode(z)
        sizes = []
        real = vae.decoder.forward
        monkeypatch.setattr(vae.decoder, "forward", lambda x: sizes.append(tuple(x.shape[2:])) or real(x))
        tiled = vae.decode(z, tile=32, overlap=8)
    assert tiled.shape == whole.shape == (1, 3, 384, 640)
    assert max(max(s) for s in sizes) <= 32 and len(sizes) == 2 * 3  # never the whole latent at once
    assert torch.isfinite(tiled).all()
    # The decoder's GroupNorm statistics and mid-block attention are per tile, so a random tiny VAE
    # does not give the whole-image result; the stitching itself is checked exactly below.


def test_tiled_stitching_is_exact_for_a_local_decoder():
    """With a decoder that only looks at each latent pixel, tiles must reassemble the image exactly."""
    class LocalDecoder(torch.nn.Module):
        def forward(self, x):                                   # [B, C, h, w] -> [B, 3, 8h, 8w]
            return torch.nn.functional.interpolate(torch.tanh(x[:, :3] * 0.7 + x[:, 3:6]), scale_factor=8)

    z = _smooth_latents(20, 36)
    dec = LocalDecoder()
    whole = dec(z[:, :32].repeat(1, 1, 2, 2)[:, :, :40, :72])
    tiled = autoencoder.decode_tiled(dec, z[:, :32].repeat(1, 1, 2, 2)[:, :, :40, :72], 16, 4)
    assert torch.allclose(tiled, whole, atol=1e-6)


def test_small_images_are_not_tiled():
    vae = _vae()
    z = _smooth_latents(8, 8)
    with torch.no_grad():
        assert torch.equal(vae.decode(z, tile=32), vae.decode(z))


def test_blend_weights_cover_every_pixel():
    starts = autoencoder._starts(100, 32, 8)
    assert starts[0] == 0 and starts[-1] == 100 - 32 and all(b - a <= 24 for a, b in zip(starts, starts[1:]))
    total = torch.zeros(100 * 8)
    for s in starts:
        total[s * 8:s * 8 + 256] += autoencoder._ramp(256, 64, s == starts[0], s == starts[-1], "cpu", torch.float32)
    # decode_tiled divides by the summed weights, so full coverage (> 0 everywhere) is what matters.
    assert total.min() > 0.1


def test_before_load_hook_runs_once_per_load(klein):
    _, root, _ = klein
    lb.clear_cache()
    calls = []
    files = lb.LocalFiles(diffusers_dir=root / "diffusers" / "flux2-tiny")
    make = lambda: lb.LocalBackend("FLUX.2 [klein] 4B", files, dtype="fp32", device="cpu", preset=TINY,
                                   before_load=lambda: calls.append(1))
    make().engine()
    make().engine()                 # a cache hit: ComfyUI's models are not unloaded again
    assert calls == [1]


def test_a_second_backend_on_the_same_weights_does_not_change_a_running_generations_tiling(klein):
    """Two backends share the process's cached engine; one that asks for no tiling while the other's
    generation runs must not turn tiling off under it (settings travel with the request, not the engine)."""
    from comfyui_flux2.flux2.backend import GenerationRequest
    from comfyui_flux2.flux2.run_context import RunContext

    _, root, _ = klein
    lb.clear_cache()
    files = lb.LocalFiles(diffusers_dir=root / "diffusers" / "flux2-tiny")
    tiled = lb.LocalBackend("FLUX.2 [klein] 4B", files, dtype="fp32", device="cpu", preset=TINY, steps=2,
                            vae_tiling="on")
    untiled = lb.LocalBackend("FLUX.2 [klein] 4B", files, dtype="fp32", device="cpu", preset=TINY, steps=2,
                              vae_tiling="off")
    engine = tiled.engine()
    assert untiled.engine() is engine                    # one model set in memory, shared
    tiles = []
    real = engine.m.vae.decode
    engine.m.vae.decode = lambda z, tile=0, **kw: tiles.append(tile) or real(z, tile=tile, **kw)
    ctx = RunContext(progress=lambda node, done, total, message: untiled.engine())   # "meanwhile" on every step
    try:
        tiled.generate(GenerationRequest("a lighthouse", 64, 64, seed=1), ctx)
        untiled.generate(GenerationRequest("a lighthouse", 64, 64, seed=1), RunContext())
    finally:
        del engine.m.vae.decode
        lb.clear_cache()
    assert tiles == [lb.decode_tile("on", torch.device("cpu"), 64, 64), 0]
