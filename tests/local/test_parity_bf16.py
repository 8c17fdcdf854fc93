"""Parity with diffusers in bfloat16, on bf16 twins of the published layouts (tiny random models, CPU).

bf16 keeps 8 significant bits, so two correct implementations that order their sums differently do not give the
same pixels: on these (deliberately sensitive) tiny models diffusers' own bf16 picture is ~1 level (mean) away
from its float32 picture. What bf16 allows, and what these tests hold us to:
  1. every bf16 layout of the same weights gives the same picture in our engine (bit-identical);
  2. our bf16 picture is as close to diffusers' float32 picture as diffusers' bf16 picture is
     (mean error <= 1.25 x diffusers' own + 0.25 levels), i.e. we add no error beyond bf16 rounding;
  3. our bf16 picture is within 2 levels + a tenth of diffusers' own bf16 error (mean) of diffusers' bf16 picture,
     and max <= 32 (CFG multiplies rounding differences by the guidance scale).
Each test prints the measured numbers (`pytest -s`)."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

diffusers = pytest.importorskip("diffusers")

from comfyui_flux2.flux2.local.weights import loading  # noqa: E402
from comfyui_flux2.flux2.local.model import params  # noqa: E402
from comfyui_flux2.flux2.local.pipeline import Flux2Engine, prepare_reference  # noqa: E402

import tiny  # noqa: E402
import twins  # noqa: E402
from test_parity import diff, pattern  # noqa: E402

BF = torch.bfloat16
OWN_FACTOR, OWN_SLACK, MEAN_BOUND, MEAN_OWN_SHARE, MAX_BOUND = 1.25, 0.25, 2.0, 0.1, 32


def _images(pipe, prompt, seed, steps, w=None, h=None, image=None, **kw) -> np.ndarray:
    out = pipe(prompt=prompt, width=w, height=h, num_inference_steps=steps, image=image,
               generator=torch.Generator("cpu").manual_seed(seed), output_type="np", **kw).images
    return (out.astype(np.float32) * 255).round().astype(np.uint8)[0]


@pytest.fixture(scope="module")
def bf16_layouts(klein, tmp_path_factory):
    """The session's tiny klein cast to bf16 (diffusers), and the same bf16 weights in each published layout."""
    pipe32 = klein[0]
    pipe = copy.deepcopy(pipe32).to(BF)
    root = tmp_path_factory.mktemp("bf16")
    folder = tiny.save_diffusers(pipe, root / "diffusers" / "flux2-tiny")
    sd = pipe.transformer.state_dict()
    files = {
        "diffusers folder": {"diffusers_dir": folder},
        "BFL single files": {"transformer": twins.write_bfl_transformer(sd, root / "flux-2-klein-4b.safetensors"),
                             "text_encoder": twins.write_text_encoder(pipe.text_encoder, root / "qwen_3_4b.safetensors"),
                             "vae": twins.write_bfl_vae(pipe.vae.state_dict(), root / "flux2-vae.safetensors", BF),
                             "tokenizer": None},
    }
    pipe.tokenizer.backend_tokenizer.save(str(root / "qwen_3_4b.tokenizer.json"))
    files["BFL single files"]["tokenizer"] = root / "qwen_3_4b.tokenizer.json"
    engines = {name: Flux2Engine(loading.load_modules(params.tiny_preset("klein", True), dtype=BF, **f))
               for name, f in files.items()}
    return pipe32, pipe, engines


def _check(ours: np.ndarray, ref_bf16: np.ndarray, ref_f32: np.ndarray, what: str) -> None:
    mx, mean = diff(ours, ref_bf16)
    own = diff(ref_bf16, ref_f32)[1]                  # diffusers' own bf16 rounding, in 8-bit levels
    err = diff(ours, ref_f32)[1]
    print(f"{what}: ours bf16 vs diffusers bf16 max {mx} mean {mean:.3f}; to the float32 picture: ours {err:.3f}, "
          f"diffusers bf16 {own:.3f}")
    assert err <= OWN_FACTOR * own + OWN_SLACK, f"{what}: {err:.3f} levels from the float32 picture, diffusers {own:.3f}"
    assert mean <= MEAN_BOUND + MEAN_OWN_SHARE * own and mx <= MAX_BOUND


@pytest.mark.slow   # fast suite < 2 min; CI runs it (--run-slow)
def test_bf16_text_to_image_every_layout(bf16_layouts):
    pipe32, pipe, engines = bf16_layouts
    prompt, w, h, seed = "a red cat sitting on a chair", 64, 48, 7
    outs = {name: e.generate(prompt, w, h, [seed], 4, 0.0)[0] for name, e in engines.items()}
    first, *rest = outs.values()
    for name, img in outs.items():
        assert np.array_equal(img, first), f"{name} differs from the diffusers folder in bf16"
    _check(first, _images(pipe, prompt, seed, 4, w, h), _images(pipe32, prompt, seed, 4, w, h), "bf16 t2i klein")


@pytest.mark.slow   # fast suite < 2 min; CI runs it (--run-slow)
def test_bf16_multi_reference_edit(bf16_layouts):
    pipe32, pipe, engines = bf16_layouts
    refs = [pattern(80, 72, 1), pattern(64, 100, 2)]
    prepared = [prepare_reference(r) for r in refs]
    h, w = prepared[0].shape[:2]
    outs = [e.generate("make the sky green", w, h, [3], 3, 0.0, prepared)[0] for e in engines.values()]
    assert all(np.array_equal(o, outs[0]) for o in outs)
    _check(outs[0], _images(pipe, "make the sky green", 3, 3, image=refs),
           _images(pipe32, "make the sky green", 3, 3, image=refs), "bf16 edit klein, 2 refs")


@pytest.mark.slow   # fast suite < 2 min; CI runs it (--run-slow)
def test_bf16_klein_base_cfg(klein_base, tmp_path):
    pipe32 = klein_base[0]
    pipe = copy.deepcopy(pipe32).to(BF)
    folder = tiny.save_diffusers(pipe, tmp_path / "flux2-tiny-base")
    eng = Flux2Engine(loading.load_modules(params.tiny_preset("klein", False), diffusers_dir=folder, dtype=BF))
    ours = eng.generate("a photo of a red cat", 48, 48, [11], 3, 4.0)[0]
    _check(ours, _images(pipe, "a photo of a red cat", 11, 3, 48, 48, guidance_scale=4.0),
           _images(pipe32, "a photo of a red cat", 11, 3, 48, 48, guidance_scale=4.0), "bf16 t2i klein Base, CFG 4")
