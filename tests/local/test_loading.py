"""Single-file (BFL / ComfyUI) layout, fp8, and clear errors for bad files and bad inputs."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from comfyui_flux2.flux2.backend import GenerationRequest
from comfyui_flux2.flux2.errors import ConfigError, InputError, ModelLoadError
from comfyui_flux2.flux2.local.weights import loading, models_dir
from comfyui_flux2.flux2.local.model import params
from comfyui_flux2.flux2.local.backend import LocalBackend, LocalFiles

F32 = torch.float32
TINY = params.tiny_preset("klein", True)


def test_bfl_file_converts_back_with_diffusers_converter(klein):
    """Our BFL export is what diffusers' own single-file converter understands (independent check)."""
    from diffusers.loaders.single_file_utils import convert_flux2_transformer_checkpoint_to_diffusers

    pipe, _, files = klein
    sd = load_file(str(files["transformer"]))
    assert "model.diffusion_model.double_blocks.0.img_attn.qkv.weight" in sd
    back = convert_flux2_transformer_checkpoint_to_diffusers(
        {k.removeprefix("model.diffusion_model."): v for k, v in sd.items()})
    orig = pipe.transformer.state_dict()
    assert set(back) == set(orig)
    assert all(torch.equal(back[k], orig[k]) for k in orig)


def test_single_files_equal_diffusers_folder(klein):
    from comfyui_flux2.flux2.local.pipeline import Flux2Engine

    pipe, root, files = klein
    a = Flux2Engine(loading.load_modules(TINY, diffusers_dir=root / "diffusers" / "flux2-tiny", dtype=F32))
    b = Flux2Engine(loading.load_modules(TINY, transformer=files["transformer"], text_encoder=files["text_encoder"],
                                         vae=files["vae"], dtype=F32))
    x = a.generate("a red cat", 48, 48, [9], 2, 0.0)[0]
    y = b.generate("a red cat", 48, 48, [9], 2, 0.0)[0]
    assert np.array_equal(x, y)


def test_fp8_weights_with_scales_dequantise(klein, tmp_path):
    _, _, files = klein
    sd = load_file(str(files["transformer"]))
    key = "model.diffusion_model.double_blocks.0.img_attn.qkv.weight"
    w = sd[key]
    scale = w.abs().amax(dim=1) / 448.0                     # per-row, as BFL ships
    sd[key] = (w / scale[:, None]).to(torch.float8_e4m3fn)
    sd[key.replace(".weight", ".weight_scale")] = scale
    k2 = "model.diffusion_model.img_in.weight"
    s2 = sd[k2].abs().max() / 448.0                          # scalar, as ComfyUI's scaled fp8
    sd[k2] = (sd[k2] / s2).to(torch.float8_e4m3fn)
    sd[k2.replace(".weight", ".scale_weight")] = s2
    p = tmp_path / "fp8.safetensors"
    save_file(sd, str(p))
    tr = loading.load_transformer(p, TINY, F32, keep_fp8=False)      # up-cast at load (kept fp8: test_fp8.py)
    got = tr.state_dict()
    assert torch.allclose(got["double_blocks.0.img_attn.qkv.weight"], w, rtol=0.07, atol=1e-6)
    assert torch.allclose(got["img_in.weight"], load_file(str(files["transformer"]))[k2], rtol=0.07, atol=1e-4)


def test_truncated_file_is_one_clear_error(klein, tmp_path):
    _, _, files = klein
    data = files["transformer"].read_bytes()
    bad = tmp_path / "flux2-truncated.safetensors"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelLoadError, match="flux2-truncated.safetensors") as e:
        loading.load_transformer(bad, TINY, F32)
    assert "\n" not in str(e.value)
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a safetensors file at all")
    with pytest.raises(ModelLoadError, match="junk.safetensors"):
        loading.load_transformer(junk, TINY, F32)


def test_wrong_architecture(klein, tmp_path):
    _, _, files = klein
    flux1 = tmp_path / "flux1-dev.safetensors"
    save_file({"double_blocks.0.img_mod.lin.weight": torch.zeros(4, 4), "img_in.weight": torch.zeros(4, 4)}, str(flux1))
    with pytest.raises(ModelLoadError, match="FLUX.1"):
        loading.load_transformer(flux1, TINY, F32)
    other = tmp_path / "sdxl-unet.safetensors"
    save_file({"input_blocks.0.0.weight": torch.zeros(4, 4)}, str(other))
    with pytest.raises(ModelLoadError, match="sdxl-unet.safetensors is not a FLUX.2 transformer"):
        loading.load_transformer(other, TINY, F32)
    # the tiny transformer is not a real [klein] 4B: sizes are reported against the preset
    with pytest.raises(ModelLoadError, match=r"does not match FLUX.2 \[klein\] 4B: hidden 64 \(expected 3072\)"):
        loading.load_transformer(files["transformer"], params.get_preset("FLUX.2 [klein] 4B"), F32)
    # a VAE file without the BatchNorm statistics (FLUX.1 / SD VAE)
    sd = load_file(str(files["vae"]))
    sd = {k: v for k, v in sd.items() if not k.startswith("bn.")}
    sdvae = tmp_path / "ae.safetensors"
    save_file(sd, str(sdvae))
    with pytest.raises(ModelLoadError, match="not the FLUX.2 VAE"):
        loading.load_vae(sdvae, F32)
    # the text encoder passed as the diffusion model
    with pytest.raises(ModelLoadError, match="is not a FLUX.2 transformer"):
        loading.load_transformer(files["text_encoder"], TINY, F32)
    # a Qwen3 text encoder given to [dev]
    with pytest.raises(ModelLoadError, match="Mistral"):
        loading.load_text_encoder(files["text_encoder"], params.tiny_preset("dev").text_encoder, F32)


def test_missing_text_encoder_and_tokenizer(klein, tmp_path):
    _, _, files = klein
    with pytest.raises(ModelLoadError, match="no text encoder"):
        loading.load_modules(TINY, transformer=files["transformer"], vae=files["vae"], dtype=F32)
    # (a lone Qwen3 file uses the bundled tokenizer; a lone Mistral file without Tekken: test_tokenizers.py)
    b = LocalBackend("FLUX.2 [klein] 4B", LocalFiles(transformer=files["transformer"], vae=files["vae"]), preset=TINY)
    with pytest.raises(ConfigError, match="no text encoder"):
        b.check_ready()
    b = LocalBackend("FLUX.2 [klein] 4B", LocalFiles(transformer=tmp_path / "gone.safetensors"), preset=TINY)
    with pytest.raises(ModelLoadError, match="gone.safetensors"):
        b.check_ready()


def test_bad_sizes_and_refs_fail_before_loading(tmp_path):
    from comfyui_flux2.flux2.images import ref_from_array

    # files do not even exist: validate() must fail on the request first, without touching them
    b = LocalBackend("FLUX.2 [klein] 4B", LocalFiles(transformer=tmp_path / "none.safetensors"))
    with pytest.raises(InputError, match="width 1000 is not a multiple of 16"):
        b.validate(GenerationRequest("x", 1000, 1024, 0))
    with pytest.raises(InputError, match="at most 4 reference"):
        ref = ref_from_array(np.zeros((64, 64, 3), np.uint8))
        b.validate(GenerationRequest("x", 512, 512, 0, references=(ref,) * 5))
    with pytest.raises(InputError, match="reference 1 is 32x64"):
        b.validate(GenerationRequest("x", 512, 512, 0, references=(ref_from_array(np.zeros((64, 32, 3), np.uint8)),)))
    with pytest.raises(InputError, match="dtype"):
        LocalBackend("FLUX.2 [klein] 4B", LocalFiles(), dtype="int8")


def test_models_dir_refuses_escape(tmp_path, monkeypatch):
    root = tmp_path / "models"
    (root / "diffusion_models").mkdir(parents=True)
    (root / "diffusion_models" / "a.safetensors").write_bytes(b"x")
    (tmp_path / "secret.safetensors").write_bytes(b"x")
    (root / "diffusion_models" / "link.safetensors").symlink_to(tmp_path / "secret.safetensors")
    monkeypatch.setenv("FLUX2_MODELS_DIR", str(root))
    r = models_dir.models_root()
    assert models_dir.resolve("a.safetensors", "diffusion_models", r).name == "a.safetensors"
    with pytest.raises(InputError, match="relative"):
        models_dir.resolve("../secret.safetensors", "diffusion_models", r)
    with pytest.raises(InputError, match="relative"):
        models_dir.resolve(str(tmp_path / "secret.safetensors"), "diffusion_models", r)
    with pytest.raises(InputError, match="outside"):
        models_dir.resolve("link.safetensors", "diffusion_models", r)
    with pytest.raises(ModelLoadError, match="not found"):
        models_dir.resolve("b.safetensors", "diffusion_models", r)
    assert models_dir.list_files("diffusion_models", r) == ["a.safetensors"]
    monkeypatch.delenv("FLUX2_MODELS_DIR")
    with pytest.raises(ConfigError, match="FLUX2_MODELS_DIR"):
        models_dir.models_root()
