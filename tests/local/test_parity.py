"""Parity with diffusers' FLUX.2 pipelines on tiny random float32 CPU models (diffusers = reference).

Each test prints its measured differences (`pytest -s` shows them)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

diffusers = pytest.importorskip("diffusers")

from comfyui_flux2.flux2.local.weights import loading  # noqa: E402
from comfyui_flux2.flux2.local.weights.assemble import into_module  # noqa: E402
from comfyui_flux2.flux2.local.model import params, sampling  # noqa: E402
from comfyui_flux2.flux2.local.pipeline import Flux2Engine, prepare_reference  # noqa: E402

F32 = torch.float32


def engine_for(root, family="klein", distilled=True) -> Flux2Engine:
    preset = params.tiny_preset(family, distilled)
    m = loading.load_modules(preset, diffusers_dir=root / "diffusers" / "flux2-tiny", dtype=F32, device="cpu")
    return Flux2Engine(m)


def ref_images(pipe, prompt, w, h, seed, steps, **kw) -> np.ndarray:
    out = pipe(prompt=prompt, width=w, height=h, num_inference_steps=steps,
               generator=torch.Generator("cpu").manual_seed(seed), output_type="np", **kw).images
    return (out * 255).round().astype(np.uint8)


def diff(a: np.ndarray, b: np.ndarray) -> tuple[int, float]:
    d = np.abs(a.astype(np.int32) - b.astype(np.int32))
    return int(d.max()), float(d.mean())


def pattern(w, h, k) -> Image.Image:
    yy, xx = np.mgrid[0:h, 0:w]
    arr = np.stack([(xx * (3 + k) + yy) % 256, (yy * (5 - k) + 40 * k) % 256, ((xx ^ yy) * 7) % 256], -1)
    return Image.fromarray(arr.astype(np.uint8))


@pytest.mark.parametrize("w,h,steps", [(64, 64, 4), (1024, 1024, 4), (1024, 768, 28), (2048, 2048, 50),
                                       (512, 1536, 1), (2048, 1088, 8)])
def test_schedule_matches_diffusers(w, h, steps):
    import tiny

    sched = tiny.make_scheduler()
    L = (h // 16) * (w // 16)
    mu = diffusers.pipelines.flux2.pipeline_flux2_klein.compute_empirical_mu(L, steps)
    sched.set_timesteps(sigmas=np.linspace(1.0, 1 / steps, steps), mu=mu)
    ours = sampling.sigmas(steps, L)
    assert torch.equal(ours, sched.sigmas), (ours, sched.sigmas)


def test_schedule_example_from_bfl():
    s = sampling.sigmas(4, 64 * 64)
    assert np.allclose(s.numpy(), [1, 0.9674, 0.9081, 0.7672, 0], atol=2e-4)


@pytest.mark.parametrize("w,h,batch", [(64, 48, 1), (96, 128, 2)])
def test_noise_matches_diffusers(klein, w, h, batch):
    pipe = klein[0]
    seed = 1234
    ref, ref_ids = pipe.prepare_latents(batch, 32, h, w, F32, "cpu", torch.Generator("cpu").manual_seed(seed))
    ours = sampling.initial_noise(seed, batch, w, h)
    assert torch.equal(ours, ref)
    assert torch.equal(sampling.image_ids(h // 16, w // 16), ref_ids[0])


@pytest.mark.parametrize("family", ["klein", "dev"])
def test_transformer_forward(klein, dev, family):
    pipe = (klein if family == "klein" else dev)[0]
    tr = pipe.transformer
    sd = loading.normalise_transformer_keys({k: v.clone() for k, v in tr.state_dict().items()}, "t")
    from comfyui_flux2.flux2.local.model.transformer import Flux2Transformer

    mine = into_module(Flux2Transformer, loading.infer_transformer_params(sd), sd, "t", F32, "cpu")
    g = torch.Generator().manual_seed(0)
    B, Lt = 2, 10
    img = torch.randn(B, 12 + 6, 128, generator=g)
    txt = torch.randn(B, Lt, 96, generator=g)
    ids = torch.cat([sampling.image_ids(3, 4), sampling.image_ids(2, 3, t=10)])
    tids = sampling.text_ids(Lt)
    t = torch.tensor([0.9, 0.25])
    guidance = torch.tensor([4.0, 2.5]) if family == "dev" else None
    with torch.no_grad():
        ref = tr(hidden_states=img, encoder_hidden_states=txt, timestep=t, img_ids=ids, txt_ids=tids,
                 guidance=guidance, return_dict=False)[0]
        ours = mine(img, ids, txt, tids, t, guidance)
    err = (ref - ours).abs().max().item()
    print(f"transformer {family}: max abs diff {err:.2e} (mean |ref| {ref.abs().mean():.3f})")
    assert err < 1e-4


def test_vae_encode_decode(klein):
    pipe = klein[0]
    eng = engine_for(klein[1])
    img = pipe.image_processor.preprocess(pattern(64, 48, 1), height=48, width=64, resize_mode="crop")
    with torch.no_grad():
        ref_z = pipe._encode_vae_image(img, generator=None)
        ours_z = eng.m.vae.encode(img)
        ref_x = pipe.vae.decode(pipe._unpatchify_latents(ref_z * torch.sqrt(pipe.vae.bn.running_var.view(1, -1, 1, 1)
                                + 1e-4) + pipe.vae.bn.running_mean.view(1, -1, 1, 1))).sample
        ours_x = eng.m.vae.decode(ref_z)
    ez, ex = (ref_z - ours_z).abs().max().item(), (ref_x - ours_x).abs().max().item()
    print(f"vae: encode max diff {ez:.2e}, decode max diff {ex:.2e}")
    assert ez < 1e-4 and ex < 1e-4


@pytest.mark.parametrize("family", ["klein", "dev"])
def test_text_conditioning(klein, dev, family):
    pipe, root, _ = klein if family == "klein" else dev
    eng = engine_for(root, family, family == "klein")
    for prompt in ["a red cat", "", "portrait of an old man, oil painting " * 80]:   # last one truncates
        ref = pipe.encode_prompt(prompt, device="cpu")[0]
        ours = eng.encode_prompt(prompt)
        err = (ref - ours).abs().max().item()
        print(f"text {family} {len(prompt)} chars: max diff {err:.2e}")
        assert ours.shape == ref.shape and err < 1e-5


def test_dev_system_message_matches_diffusers():
    from diffusers.pipelines.flux2.system_messages import SYSTEM_MESSAGE

    from comfyui_flux2.flux2.local.model.tokenizer import DEV_SYSTEM_MESSAGE

    assert DEV_SYSTEM_MESSAGE == SYSTEM_MESSAGE


@pytest.mark.parametrize("w,h,seed", [(64, 48, 7), (48, 80, 123)])
def test_text_to_image_klein_distilled(klein, w, h, seed):
    pipe, root, _ = klein
    eng = engine_for(root)
    ours = eng.generate("a red cat sitting on a chair", w, h, [seed], 4, 0.0)[0]
    ref = ref_images(pipe, "a red cat sitting on a chair", w, h, seed, 4)[0]
    mx, mean = diff(ours, ref)
    print(f"t2i klein {w}x{h}: max {mx}, mean {mean:.4f} (8-bit levels)")
    assert mean <= 1.0 and mx <= 2
    other = eng.generate("a red dog sitting on a chair", w, h, [seed], 4, 0.0)[0]   # one token changed
    assert diff(other, ours)[1] > 2.0, "parity test is not sensitive to the prompt"


def test_batch_is_seed_plus_i(klein):
    pipe, root, _ = klein
    eng = engine_for(root)
    outs = eng.generate("a small house", 48, 48, [5, 6], 2, 0.0)
    for i, seed in enumerate((5, 6)):
        ref = ref_images(pipe, "a small house", 48, 48, seed, 2)[0]
        assert diff(outs[i], ref)[0] <= 1


def test_edit_multi_reference_klein(klein):
    pipe, root, _ = klein
    eng = engine_for(root)
    refs = [pattern(80, 72, 1), pattern(64, 100, 2)]   # 80x72 -> 80x64 crop; 64x100 -> 64x96 crop
    ref = (pipe(image=refs, prompt="make the sky green", num_inference_steps=3,
                generator=torch.Generator("cpu").manual_seed(3), output_type="np").images * 255).round().astype(np.uint8)[0]
    prepared = [prepare_reference(r) for r in refs]
    h, w = prepared[0].shape[:2]
    assert ref.shape[:2] == (h, w)
    ours = eng.generate("make the sky green", w, h, [3], 3, 0.0, prepared)[0]
    mx, mean = diff(ours, ref)
    print(f"edit klein 2 refs {w}x{h}: max {mx}, mean {mean:.4f}")
    assert mean <= 1.0 and mx <= 2
    swapped = eng.generate("make the sky green", w, h, [3], 3, 0.0, prepared[::-1])[0]
    assert diff(swapped, ours)[1] > 2.0, "parity test is not sensitive to reference order"


def test_reference_preprocessing_large_image():
    big = pattern(1300, 900, 3)
    arr = prepare_reference(big)
    from diffusers.pipelines.flux2.image_processor import Flux2ImageProcessor

    proc = Flux2ImageProcessor(vae_scale_factor=16)
    img = proc._resize_to_target_area(big, 1024 * 1024)
    w, h = img.size[0] // 16 * 16, img.size[1] // 16 * 16
    ref = proc.preprocess(img, height=h, width=w, resize_mode="crop")
    ours = torch.from_numpy(np.array(arr)).float().div(255).permute(2, 0, 1)[None] * 2 - 1
    assert ours.shape == ref.shape and torch.allclose(ours, ref, atol=1e-6)


def test_text_to_image_klein_base_cfg(klein_base):
    pipe, root, _ = klein_base
    eng = engine_for(root, "klein", False)
    ours = eng.generate("a photo of a red cat", 48, 48, [11], 3, 4.0)[0]
    ref = ref_images(pipe, "a photo of a red cat", 48, 48, 11, 3, guidance_scale=4.0)[0]
    mx, mean = diff(ours, ref)
    print(f"t2i klein base cfg 4.0: max {mx}, mean {mean:.4f}")
    assert mean <= 1.0 and mx <= 2


def test_text_to_image_and_edit_dev(dev):
    pipe, root, _ = dev
    eng = engine_for(root, "dev")
    ours = eng.generate("a photo of a red cat", 64, 48, [2], 3, 4.0)[0]
    ref = ref_images(pipe, "a photo of a red cat", 64, 48, 2, 3, guidance_scale=4.0)[0]
    mx, mean = diff(ours, ref)
    print(f"t2i dev guidance 4.0: max {mx}, mean {mean:.4f}")
    assert mean <= 1.0 and mx <= 2
    other = eng.generate("a photo of a red cat", 64, 48, [2], 3, 1.5)[0]
    assert diff(other, ours)[1] > 0.5, "dev output does not react to guidance"
    refs = [pattern(64, 64, 1)]
    ref_e = (pipe(image=refs, prompt="turn the car into a bicycle", num_inference_steps=2, guidance_scale=4.0,
                  generator=torch.Generator("cpu").manual_seed(4), output_type="np").images * 255).round().astype(np.uint8)[0]
    ours_e = eng.generate("turn the car into a bicycle", 64, 64, [4], 2, 4.0, [prepare_reference(refs[0])])[0]
    mx, mean = diff(ours_e, ref_e)
    print(f"edit dev 1 ref: max {mx}, mean {mean:.4f}")
    assert mean <= 1.0 and mx <= 2
