"""Every published FLUX.2 file layout loads (tiny twins from twins.py; facts in docs/model-files.md)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from comfyui_flux2.flux2.errors import ModelLoadError
from comfyui_flux2.flux2.local.weights import loading, quant
from comfyui_flux2.flux2.local.model import params
from comfyui_flux2.flux2.local.weights.safetensors_header import read_header

import twins

F32 = torch.float32
TINY = params.tiny_preset("klein", True)


@pytest.fixture(scope="module")
def published(klein, tmp_path_factory):
    pipe, _, _ = klein
    root = tmp_path_factory.mktemp("published")
    return pipe, root, twins.write_all(root, pipe)


def _latent(seed=0, h=4, w=4):
    return torch.randn(1, 128, h, w, generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------------------------------------ VAE

def test_bfl_ae_layout_loads_and_equals_the_diffusers_vae(published):
    pipe, _, files = published
    sd = load_file(str(files["ae.safetensors"]))
    # the twin carries BFL's names: quant convs inside encoder/decoder, 1x1-conv attention, num_batches_tracked
    assert {"encoder.quant_conv.weight", "decoder.post_quant_conv.weight", "bn.num_batches_tracked"} <= set(sd)
    assert sd["encoder.mid.attn_1.q.weight"].ndim == 4 and sd["bn.num_batches_tracked"].dtype == torch.int64
    ours = loading.load_vae(files["ae.safetensors"], F32)
    ref = pipe.vae
    z = _latent()
    with torch.no_grad():
        a = ours.decode(z)
        # diffusers: un-normalise with its BatchNorm statistics, unpatchify, decode
        from comfyui_flux2.flux2.local.model.autoencoder import unpatchify
        std = torch.sqrt(ref.bn.running_var.view(1, -1, 1, 1) + ref.config.batch_norm_eps)
        b = ref.decode(unpatchify(z * std + ref.bn.running_mean.view(1, -1, 1, 1))).sample
    assert torch.equal(a, b)


@pytest.mark.parametrize("name", ["flux2-vae.safetensors", "flux2-vae (top-level quant convs)"])
def test_comfy_flux2_vae_variants_load(published, name):
    pipe, _, files = published
    ae = loading.load_vae(files[name], F32)
    ref = loading.load_vae(files["ae.safetensors"], F32)
    # bf16 file: the same weights (BatchNorm statistics included) rounded to bf16
    for k, v in ref.state_dict().items():
        assert torch.equal(ae.state_dict()[k], v.to(torch.bfloat16).to(F32)), k


def test_small_decoder_vae_gets_separate_encoder_and_decoder_widths(published):
    _, _, files = published
    path = files["full_encoder_small_decoder.safetensors"]
    ae = loading.load_vae(path, F32)
    assert ae.params.block_out == (32, 64, 64, 64)
    assert ae.params.decoder_block_out == (32, 32, 32, 32)
    # the same numbers as diffusers' AutoencoderKLFlux2 with decoder_block_out_channels
    ref = twins.small_decoder_vae()
    img = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(3)) * 2 - 1
    z = _latent(1)
    with torch.no_grad():
        from comfyui_flux2.flux2.local.model.autoencoder import patchify, unpatchify
        std = torch.sqrt(ref.bn.running_var.view(1, -1, 1, 1) + 1e-4)
        mean = ref.bn.running_mean.view(1, -1, 1, 1)
        want_dec = ref.decode(unpatchify(z * std + mean)).sample
        want_enc = (patchify(ref.encode(img).latent_dist.mean) - mean) / std
        assert torch.equal(ae.decode(z), want_dec)
        assert torch.allclose(ae.encode(img), want_enc, atol=1e-6)
    # planning sees the same widths from the header alone
    h = read_header(path)
    shapes = loading.normalise_vae_keys(dict(h.tensors), "vae x")
    assert loading.infer_vae_params(shapes, {}) == ae.params


def test_vae_refusals_are_one_line(published, tmp_path):
    _, _, files = published
    sd = load_file(str(files["ae.safetensors"]))
    sd["decoder.post_quant_conv.weight"] = sd["decoder.post_quant_conv.weight"][:16, :16].contiguous()
    sd["decoder.post_quant_conv.bias"] = sd["decoder.post_quant_conv.bias"][:16].contiguous()
    from safetensors.torch import save_file
    save_file(sd, str(tmp_path / "ae16.safetensors"))
    with pytest.raises(ModelLoadError, match=r"ae16.safetensors has 16 latent channels, FLUX.2 needs 32"):
        loading.load_vae(tmp_path / "ae16.safetensors", F32)
    save_file({"foo.weight": torch.zeros(2)}, str(tmp_path / "junk.safetensors"))
    with pytest.raises(ModelLoadError, match=r"junk.safetensors is not a VAE in a known layout \(found 1 unrelated"):
        loading.load_vae(tmp_path / "junk.safetensors", F32)


# --------------------------------------------------------------------------------------------- NVFP4

def test_unswizzle_inverts_the_cublas_tiling():
    s = torch.arange(300 * 7, dtype=F32).view(300, 7)
    blocked = twins.to_blocked(s)
    assert blocked.shape == (384, 8)
    assert torch.equal(quant.unswizzle_block_scales(blocked, 300, 7), s)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_nvfp4_dequantisation_equals_comfy_kitchen(dtype):
    """ComfyUI reads NVFP4 through comfy_kitchen: our de-quantisation must give its numbers exactly."""
    ck = pytest.importorskip("comfy_kitchen.backends.eager.quantization")
    w = torch.randn(272, 96, generator=torch.Generator().manual_seed(0)) * 0.05
    scale2 = torch.amax(w.abs()) / (448 * 6)
    packed, blocked = ck.quantize_nvfp4(w, scale2)                      # ComfyUI's own quantiser
    want = ck.dequantize_nvfp4(packed, scale2, blocked, dtype)
    got = quant.dequantize_nvfp4(packed, blocked, scale2, dtype)
    assert got.dtype == dtype and torch.equal(got, want)
    # and our twin writer produces what ComfyUI's quantiser produces
    p2, b2, s2 = twins.quantize_nvfp4(w)
    assert torch.equal(s2, scale2.float())
    assert torch.equal(b2.view(torch.uint8), blocked.view(torch.uint8))
    assert (p2 != packed).float().mean() < 0.01        # ties may round differently; values otherwise identical


def test_nvfp4_text_encoder_kept_packed_or_dequantised(published):
    _, _, files = published
    path = files["qwen_3_4b_fp4_flux2.safetensors"]
    h = read_header(path)
    assert h.tensors["model.layers.0.self_attn.q_proj.weight"].dtype == "U8"
    assert h.tensors["model.layers.0.self_attn.q_proj.weight_scale"].dtype == "F8_E4M3"
    te = loading.load_text_encoder(path, TINY.text_encoder, F32)
    raw = load_file(str(path))
    k = "model.layers.3.mlp.down_proj"
    want = quant.dequantize_nvfp4(raw[k + ".weight"], raw[k + ".weight_scale"], raw[k + ".weight_scale_2"], F32)
    lin = te.layers[3].mlp.down_proj
    assert isinstance(lin, quant.NVFP4Linear) and lin.weight.dtype == torch.uint8       # kept packed
    assert torch.equal(lin.dequantized(F32), want)
    at_load = loading.load_text_encoder(path, TINY.text_encoder, F32, keep_fp8=False)   # de-quantised on load
    assert torch.equal(at_load.state_dict()["layers.3.mlp.down_proj.weight"], want)
    ids = torch.tensor([[1, 2, 3, 4]])
    out = te(ids, torch.ones_like(ids))
    assert out.shape == (1, 4, TINY.text_encoder.out_dim) and torch.isfinite(out).all()


def test_unknown_quantisation_is_refused_by_name(published, tmp_path):
    from safetensors.torch import save_file

    _, _, files = published
    sd = load_file(str(files["qwen_3_4b.safetensors"]))
    sd["model.layers.0.mlp.up_proj.comfy_quant"] = twins.comfy_quant("svdquant_w4a4")
    save_file(sd, str(tmp_path / "q.safetensors"))
    with pytest.raises(ModelLoadError, match=r"layer model.layers.0.mlp.up_proj is quantised as 'svdquant_w4a4'"):
        loading.load_text_encoder(tmp_path / "q.safetensors", TINY.text_encoder, F32)


# ------------------------------------------------------------------------------- every twin runs a step

@pytest.mark.parametrize("tr,te,vae", [
    ("flux-2-klein-4b.safetensors", "qwen_3_4b.safetensors", "ae.safetensors"),
    ("flux-2-klein-4b-fp8.safetensors", "qwen_3_8b_fp8mixed.safetensors", "flux2-vae.safetensors"),
    ("flux-2-klein-4b.safetensors", "qwen_3_4b_fp4_flux2.safetensors", "full_encoder_small_decoder.safetensors"),
    ("flux-2-klein-4b.safetensors", "qwen_3_4b.safetensors", "flux2-vae (top-level quant convs)"),
])
def test_each_klein_twin_generates(published, tr, te, vae):
    from comfyui_flux2.flux2.local.pipeline import Flux2Engine

    _, _, files = published
    eng = Flux2Engine(loading.load_modules(TINY, transformer=files[tr], text_encoder=files[te], vae=files[vae],
                                           dtype=F32))
    img = eng.generate("a red cat", 32, 32, [1], 1, 0.0)[0]
    assert img.shape == (32, 32, 3) and img.dtype == np.uint8 and img.std() > 0


def test_out_of_memory_on_map_is_said_as_such(published, monkeypatch):
    """A machine with less RAM than the file: safetensors' mmap fails with ENOMEM. That is not a corrupt file."""
    import safetensors

    _, _, files = published

    def no_memory(*a, **k):
        raise OSError(12, "unable to mmap 34359738368 bytes from file: Cannot allocate memory (os error 12)")

    monkeypatch.setattr(safetensors, "safe_open", no_memory)
    with pytest.raises(ModelLoadError) as e:
        loading.load_transformer(files["flux-2-klein-4b.safetensors"], TINY, F32)
    msg = str(e.value)
    assert "flux-2-klein-4b.safetensors" in msg and "Cannot allocate memory" in msg
    assert "corrupt" not in msg and "truncated" not in msg and "\n" not in msg
