"""FLUX.2 [klein] 9B KV: references modulated at timestep 0, isolated, their keys/values kept after the first step.

Reference: diffusers 0.42.1 `Flux2KleinKVPipeline` / `Flux2Transformer2DModel(kv_cache_mode=...)`, which
implement BFL's `forward_kv_extract` / `forward_kv_cached` (flux2 repo docs/flux2_klein_kv_cache.md)."""
from __future__ import annotations

import copy
from dataclasses import replace

import numpy as np
import pytest
import torch

diffusers = pytest.importorskip("diffusers")

from comfyui_flux2.flux2.local import backend as lb  # noqa: E402
from comfyui_flux2.flux2.local.weights import loading  # noqa: E402
from comfyui_flux2.flux2.local.weights.assemble import into_module  # noqa: E402
from comfyui_flux2.flux2.local.model import params, sampling  # noqa: E402
from comfyui_flux2.flux2.local.weights.detect import detect  # noqa: E402
from comfyui_flux2.flux2.local.pipeline import Flux2Engine, prepare_reference  # noqa: E402
from comfyui_flux2.flux2.local.model.transformer import Flux2Transformer, RefKV  # noqa: E402

import tiny  # noqa: E402
import twins  # noqa: E402
from test_parity import diff, pattern  # noqa: E402

F32 = torch.float32
TINY = params.tiny_preset("klein", True)
TINY_KV = replace(TINY, reference_kv=True)


def _ours(pipe) -> Flux2Transformer:
    sd = loading.normalise_transformer_keys({k: v.clone() for k, v in pipe.transformer.state_dict().items()}, "t")
    return into_module(Flux2Transformer, loading.infer_transformer_params(sd), sd, "t", F32, "cpu")


def _kv_pipeline(pipe):
    from diffusers import Flux2KleinKVPipeline

    return Flux2KleinKVPipeline(scheduler=tiny.make_scheduler(), vae=pipe.vae, text_encoder=pipe.text_encoder,
                                tokenizer=pipe.tokenizer, transformer=copy.deepcopy(pipe.transformer))


def test_cached_step_equals_the_uncached_computation(klein):
    """The kept reference K/V stand in exactly for the references: a cached step gives the velocity a full
    (extract) forward with the references in the sequence gives, at any later timestep and image state."""
    tr = _ours(klein[0])
    g = torch.Generator().manual_seed(0)
    B, Lt, Li = 2, 10, 12
    refs = torch.randn(B, 6 + 4, 128, generator=g)
    img_ids = sampling.image_ids(3, 4)
    ref_ids = torch.cat([sampling.image_ids(2, 3, t=10), sampling.image_ids(2, 2, t=20)])
    txt = torch.randn(B, Lt, 96, generator=g)
    tids = sampling.text_ids(Lt)
    kv = RefKV(refs.shape[1])
    with torch.no_grad():
        x0 = torch.randn(B, Li, 128, generator=g)
        tr(torch.cat((x0, refs), 1), torch.cat((img_ids, ref_ids)), txt, tids, torch.tensor([1.0, 1.0]), ref_kv=kv)
        assert kv.filled and len(kv.double) == 2 and len(kv.single) == 2
        for t in (0.9, 0.4, 0.05):
            x = torch.randn(B, Li, 128, generator=g)
            tt = torch.full((B,), t)
            cached = tr(x, img_ids, txt, tids, tt, ref_kv=kv)
            full = tr(torch.cat((x, refs), 1), torch.cat((img_ids, ref_ids)), txt, tids, tt, ref_kv=RefKV(refs.shape[1]))
            err = (cached - full).abs().max().item()
            print(f"t={t}: cached vs uncached max abs diff {err:.2e} (mean |v| {full.abs().mean():.3f})")
            assert cached.shape == (B, Li, 128) and err < 1e-5
            # the variant is not the standard reference path (references see everything, modulated at t)
            standard = tr(torch.cat((x, refs), 1), torch.cat((img_ids, ref_ids)), txt, tids, tt)[:, :Li]
            assert (standard - full).abs().max().item() > 1e-3


def test_kv_edit_matches_diffusers_kv_pipeline(klein):
    pipe, root, _ = klein
    refs = [pattern(80, 72, 1), pattern(64, 100, 2)]
    want = (_kv_pipeline(pipe)(image=refs, prompt="make the sky green", num_inference_steps=3,
                               generator=torch.Generator("cpu").manual_seed(3), output_type="np").images * 255)
    want = want.round().astype(np.uint8)[0]
    eng = Flux2Engine(loading.load_modules(TINY_KV, diffusers_dir=root / "diffusers" / "flux2-tiny", dtype=F32))
    prepared = [prepare_reference(r) for r in refs]
    h, w = prepared[0].shape[:2]
    ours = eng.generate("make the sky green", w, h, [3], 3, 0.0, prepared)[0]
    mx, mean = diff(ours, want)
    print(f"KV edit 2 refs {w}x{h}: max {mx}, mean {mean:.4f} (8-bit levels)")
    assert mean <= 1.0 and mx <= 2
    eng.m.preset = TINY                                   # the same weights on the standard reference path
    assert diff(eng.generate("make the sky green", w, h, [3], 3, 0.0, prepared)[0], ours)[1] > 2.0
    # no reference: the KV variant is plain text-to-image
    eng.m.preset = TINY_KV
    t2i = eng.generate("a red cat", 48, 48, [1], 2, 0.0)[0]
    eng.m.preset = TINY
    assert np.array_equal(t2i, eng.generate("a red cat", 48, 48, [1], 2, 0.0)[0])


def test_kv_fp8_twin_is_detected_and_edits(klein, tmp_path):
    pipe, _, _ = klein
    tr = twins.write_klein_kv_fp8_transformer(pipe.transformer.state_dict(),
                                              tmp_path / "flux-2-klein-9b-kv-fp8.safetensors")
    te = twins.write_text_encoder(pipe.text_encoder, tmp_path / "qwen_3_8b_fp8mixed.safetensors", "fp8mixed")
    ae = twins.write_bfl_vae(pipe.vae.state_dict(), tmp_path / "flux2-vae.safetensors", torch.bfloat16)
    files = lb.LocalFiles(transformer=tr, text_encoder=te, vae=ae, tokenizer=None)
    det = detect(files)
    assert det.preset.reference_kv and det.preset.name.endswith(" KV")
    assert "KV variant from the file name flux-2-klein-9b-kv-fp8.safetensors" in det.describe()
    # the same file under another name is the plain [klein]: nothing in its tensors says KV
    plain = tmp_path / "flux-2-klein-9b-fp8.safetensors"
    plain.write_bytes(tr.read_bytes())
    assert not detect(lb.LocalFiles(transformer=plain, text_encoder=te, vae=ae)).preset.reference_kv
    # a named [klein] preset on the KV file takes the KV behaviour from the file
    named = lb.LocalBackend("FLUX.2 [klein] 4B", files, dtype="fp32", device="cpu", steps=2, preset=TINY)
    assert named.model_preset.reference_kv
    eng = Flux2Engine(loading.load_modules(det.preset, transformer=tr, text_encoder=te, vae=ae, dtype=F32))
    img = eng.generate("make it blue", 32, 32, [1], 2, 0.0, [prepare_reference(pattern(32, 32, 1))])[0]
    assert img.shape == (32, 32, 3) and img.std() > 0


def test_kv_diffusers_folder_is_detected_from_model_index(klein, tmp_path):
    pipe, root, _ = klein
    folder = twins.write_klein_kv_diffusers(pipe, tmp_path / "klein-edit-folder")   # the name does not say KV
    det = detect(lb.LocalFiles(diffusers_dir=folder))
    assert det.preset.reference_kv
    assert "KV variant from model_index.json _class_name Flux2KleinKVPipeline" in det.describe()
    assert not detect(lb.LocalFiles(diffusers_dir=root / "diffusers" / "flux2-tiny")).preset.reference_kv
    # a folder's model_index.json outranks its name: the plain pipeline class under a "-kv" name is not KV
    alias = tmp_path / "flux2-klein-9b-kv"
    alias.symlink_to(root / "diffusers" / "flux2-tiny", target_is_directory=True)
    assert not detect(lb.LocalFiles(diffusers_dir=alias)).preset.reference_kv


def test_references_join_only_the_first_step_with_cfg_either_way(klein_base):
    """A KV file under a Base preset (CFG): one RefKV per prompt kind; references are in the sequence on the first
    step only; CFG as one 2B batch and as two calls give the same latents."""
    preset = replace(params.tiny_preset("klein", False), reference_kv=True)
    eng = Flux2Engine(loading.load_modules(preset, diffusers_dir=klein_base[1] / "diffusers" / "flux2-tiny", dtype=F32))
    tr = eng.m.transformer
    seen = []
    hook = tr.register_forward_hook(lambda mod, args, out: seen.append(tuple(args[0].shape[:2])))
    latents = []
    real_decode = eng.decode
    eng.decode = lambda x, h, w, vae_tiling="auto": (latents.append(x.clone()), real_decode(x, h, w, vae_tiling))[1]
    ref = [prepare_reference(pattern(32, 32, 1))]               # 2x2 latent tokens = 4 reference tokens
    try:
        eng.generate("a photo of a red cat", 32, 32, [11], 3, 4.0, ref, cfg_one_forward=True)
        assert seen == [(2, 4 + 4), (2, 4), (2, 4)]
        seen.clear()
        eng.generate("a photo of a red cat", 32, 32, [11], 3, 4.0, ref, cfg_one_forward=False)
        assert seen == [(1, 8), (1, 8), (1, 4), (1, 4), (1, 4), (1, 4)]
    finally:
        hook.remove()
        del eng.decode
    err = (latents[0] - latents[1]).abs().max().item()
    print(f"KV with CFG, one forward vs two: latent max diff {err:.2e}")
    assert err < 1e-4


@pytest.mark.parametrize("one_forward", [True, False])
def test_planned_kv_bytes_equal_the_kept_tensors(klein_base, monkeypatch, one_forward):
    """memory.reference_kv_bytes equals the bytes the live RefKV objects hold after step 0 (distinct storages,
    so a slice that kept its whole parent tensor alive would count in full): CFG, a batch of 2, two references."""
    from comfyui_flux2.flux2.local import memory, pipeline

    preset = replace(params.tiny_preset("klein", False), reference_kv=True)
    eng = Flux2Engine(loading.load_modules(preset, diffusers_dir=klein_base[1] / "diffusers" / "flux2-tiny", dtype=F32))
    made = []

    class Recorded(RefKV):
        def __init__(self, n_ref):
            super().__init__(n_ref)
            made.append(self)

    monkeypatch.setattr(pipeline, "RefKV", Recorded)
    kept = []

    def on_step(done, total):
        if done == 1:
            storages = {}
            for kv in made:
                for k, v in kv.double + kv.single:
                    for x in (k, v):
                        storages[x.untyped_storage().data_ptr()] = x.untyped_storage().nbytes()
            kept.append(sum(storages.values()))

    refs = [prepare_reference(pattern(32, 32, 1)), prepare_reference(pattern(48, 32, 2))]   # 4 + 6 tokens
    eng.generate("a photo of a red cat", 32, 32, [11, 12], 2, 4.0, refs, on_step=on_step, cfg_one_forward=one_forward)
    p = eng.m.transformer.params
    planned = memory.reference_kv_bytes(p, 4 + 6, dtype_bytes=4, batch=2, prompt_kinds=2)
    print(f"kept reference K/V after step 0: {kept[0]} bytes; planned {planned}")
    assert kept == [planned] and planned == 2 * 2 * 10 * 2 * p.heads * p.head_dim * 4 * (p.depth_double + p.depth_single)
