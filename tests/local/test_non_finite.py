"""Non-finite numbers in local weights (issue 21.9): a LoRA holding NaN/Inf is refused when it is inspected (the
dry run), and a stage that goes non-finite stops in one line naming the stage and the likely file, instead of a
black image and a bare numpy warning. Tiny random [klein] twins (conftest.py), CPU."""
from __future__ import annotations

import warnings

import pytest
import torch
from safetensors.torch import load_file, save_file

from comfyui_flux2.flux2.backend import GenerationRequest, run
from comfyui_flux2.flux2.errors import ModelLoadError
from comfyui_flux2.flux2.local import backend as lb
from comfyui_flux2.flux2.local.model import params
from comfyui_flux2.flux2.local.weights import lora
from comfyui_flux2.flux2.run_context import RunContext

import lora_twins as tw

TINY = params.tiny_preset("klein", True)
REQ = GenerationRequest("a red cat", 80, 64, 5)


def single_files_backend(files: dict, loras=(), **replaced) -> lb.LocalBackend:
    chosen = {**files, **replaced}
    return lb.LocalBackend("FLUX.2 [klein] 4B", lb.LocalFiles(transformer=chosen["transformer"],
                                                              text_encoder=chosen["text_encoder"], vae=chosen["vae"]),
                           dtype="fp32", device="cpu", preset=TINY, steps=2,
                           loras=tuple(lora.LoRASpec(p, s) for p, s in loras))


def poisoned(path, tmp_path, name: str, pick, value=float("nan")):
    """A copy of a safetensors file with `value` written into the first tensor whose key `pick` accepts."""
    sd = load_file(str(path))
    key = next(k for k in sorted(sd) if pick(k) and sd[k].is_floating_point() and sd[k].numel() > 1)
    sd[key] = sd[key].clone()
    sd[key].view(-1)[0] = value
    out = tmp_path / name
    save_file(sd, str(out))
    return out


def run_quietly(backend) -> None:
    """Runs `backend` with every warning an error (the bare numpy cast warning counts as a failure)."""
    lb.clear_cache()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        run(backend, REQ, RunContext())


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_a_lora_with_non_finite_values_is_refused_at_inspection(tmp_path, value):
    lo = tw.RandomLoRA.make(lora.linear_shapes(TINY.transformer), seed=2)
    sd = tw.comfy_updown(lo)
    key = sorted(k for k in sd if k.endswith("lora_up.weight"))[0]
    sd[key][0, 0] = value
    path = tw.save(sd, tmp_path / "broken.safetensors")
    with pytest.raises(ModelLoadError, match=rf"LoRA file broken.safetensors: tensor {key} holds 1 NaN/Inf "
                                             r"value\(s\) of \d+; refused") as e:
        lora.inspect_lora(path, TINY.transformer)
    assert "\n" not in str(e.value)


def test_a_broken_lora_fails_the_dry_run_before_any_step(klein, tmp_path):
    """Before: the run went through and produced a black image."""
    _, _, files = klein
    lo = tw.RandomLoRA.make(lora.linear_shapes(TINY.transformer), seed=3)
    sd = tw.comfy_updown(lo)
    sd[sorted(sd)[0]].view(-1)[0] = float("nan")
    path = tw.save(sd, tmp_path / "nan-lora.safetensors")
    backend = single_files_backend(files, loras=[(path, 1.0)])
    with pytest.raises(ModelLoadError, match="nan-lora.safetensors"):
        run(backend, REQ, RunContext(dry_run=True))


def test_a_transformer_with_nan_stops_at_the_first_step_naming_the_file(klein, tmp_path):
    """Before: a black image and numpy's 'invalid value encountered in cast'."""
    _, _, files = klein
    bad = poisoned(files["transformer"], tmp_path, "nan-transformer.safetensors",
                   lambda k: "double_blocks.0" in k and k.endswith("weight"))
    with pytest.raises(ModelLoadError) as e:
        run_quietly(single_files_backend(files, transformer=bad))
    text = str(e.value)
    assert text == ("step 1 of 2 produced non-finite values (NaN/Inf); the likely cause: transformer file "
                    "nan-transformer.safetensors holds NaN/Inf weights (damaged or badly converted: check or "
                    "download it again)")


def test_a_transformer_with_nan_under_a_lora_names_both(klein, tmp_path):
    _, _, files = klein
    bad = poisoned(files["transformer"], tmp_path, "nan-tr.safetensors", lambda k: "double_blocks.0" in k)
    good = tw.save(tw.comfy_updown(tw.RandomLoRA.make(lora.linear_shapes(TINY.transformer), seed=4)),
                   tmp_path / "fine-lora.safetensors")
    with pytest.raises(ModelLoadError, match=r"transformer file nan-tr.safetensors or LoRA fine-lora.safetensors"):
        run_quietly(single_files_backend(files, loras=[(good, 0.5)], transformer=bad))


@pytest.mark.parametrize("part, stage, pick", [
    ("text_encoder", "the text encoder", lambda k: k.endswith("layers.0.input_layernorm.weight")),
    ("vae", "the VAE decoder", lambda k: k.startswith("decoder.") and "conv_out" in k and k.endswith("bias")),
])
def test_a_text_encoder_or_vae_with_inf_names_its_stage_and_file(klein, tmp_path, part, stage, pick):
    _, _, files = klein
    bad = poisoned(files[part], tmp_path, f"bad-{part}.safetensors", pick, float("inf"))
    with pytest.raises(ModelLoadError) as e:
        run_quietly(single_files_backend(files, **{part: bad}))
    assert str(e.value).startswith(f"{stage} produced non-finite values (NaN/Inf); the likely cause: "
                                   f"{part.replace('_', ' ')} file bad-{part}.safetensors holds NaN/Inf weights")


def test_finite_weights_still_make_an_image(klein):
    _, _, files = klein
    lb.clear_cache()
    out = run(single_files_backend(files), REQ, RunContext())
    assert out.images[0].shape == (64, 80, 3) and out.images[0].std() > 0
