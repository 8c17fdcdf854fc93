"""`auto`: the model is detected from the files' headers; any FLUX.2-architecture size runs at its own size;
only what cannot work is refused, in one line, before any step. Same seed, same picture as the named preset."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from comfyui_flux2.flux2.backend import GenerationRequest
from comfyui_flux2.flux2.errors import ModelLoadError
from comfyui_flux2.flux2.local import backend as lb
from comfyui_flux2.flux2.local.model import params
from comfyui_flux2.flux2.run_context import RunContext

import twins

WORKFLOWS = Path(__file__).resolve().parents[2] / "workflows"


def _run(backend, prompt="a red cat", refs=()):
    return backend.engine().generate(prompt, 32, 32, [5], 2, backend.effective_guidance, list(refs))[0]


def test_diffusers_folder_of_a_custom_size_runs_at_its_own_size(klein):
    """The tiny folder is no published size: detected from config.json + shapes, is_distilled from model_index."""
    _, root, _ = klein
    files = lb.LocalFiles(diffusers_dir=root / "diffusers" / "flux2-tiny")
    auto = lb.LocalBackend("auto", files, dtype="fp32", device="cpu", steps=2)
    det = auto.detection()
    assert det.preset.transformer == params.tiny_preset("klein").transformer
    assert det.preset.family == "klein" and det.preset.distilled
    assert "distilled from model_index.json is_distilled" in det.describe()
    assert "not a published size" in det.describe()
    named = lb.LocalBackend("FLUX.2 [klein] 4B", files, dtype="fp32", device="cpu", steps=2,
                            preset=params.tiny_preset("klein", True))
    lb.clear_cache()
    a = _run(auto)
    lb.clear_cache()
    assert np.array_equal(a, _run(named))                    # same seed, same picture as the preset it matches
    (call,) = auto.plan(GenerationRequest("a cat", 64, 64, seed=1))
    assert "detected FLUX.2 [klein] (hidden 64, 2+2 blocks)" in call.summary


def test_klein_base_folder_gets_real_cfg(klein_base):
    _, root, _ = klein_base
    auto = lb.LocalBackend("auto", lb.LocalFiles(diffusers_dir=root / "diffusers" / "flux2-tiny"), dtype="fp32",
                           device="cpu", steps=2)
    p = auto.model_preset
    assert not p.distilled and p.uses_cfg and auto.effective_guidance == 4.0 and p.name.endswith(" Base")
    named = lb.LocalBackend("FLUX.2 [klein] 4B Base", auto.files, dtype="fp32", device="cpu", steps=2,
                            preset=params.tiny_preset("klein", False))
    lb.clear_cache()
    a = _run(auto)
    lb.clear_cache()
    assert np.array_equal(a, _run(named))


def test_dev_folder_is_detected_by_its_guidance_embedder(dev):
    _, root, _ = dev
    det = lb.LocalBackend("auto", lb.LocalFiles(diffusers_dir=root / "diffusers" / "flux2-tiny")).detection()
    assert det.preset.family == "dev" and det.preset.transformer.guidance_embed
    assert det.preset.text_encoder.kind == "mistral" and det.preset.text_encoder.head_dim == 16


def test_single_files_and_the_base_name(klein, tmp_path):
    pipe, _, files = klein
    tr = tmp_path / "flux-2-klein-4b.safetensors"
    twins.write_bfl_transformer(pipe.transformer.state_dict(), tr, torch.float32)
    ae = twins.write_bfl_vae(pipe.vae.state_dict(), tmp_path / "ae.safetensors")
    auto = lb.LocalBackend("auto", lb.LocalFiles(transformer=tr, text_encoder=files["text_encoder"], vae=ae),
                           dtype="fp32", device="cpu", steps=2)
    assert auto.model_preset.distilled and "assumed distilled" in auto.detection().describe()
    lb.clear_cache()
    a = _run(auto)
    named = lb.LocalBackend("x", lb.LocalFiles(diffusers_dir=klein[1] / "diffusers" / "flux2-tiny"), dtype="fp32",
                            device="cpu", steps=2, preset=params.tiny_preset("klein", True))
    lb.clear_cache()
    assert np.array_equal(a, _run(named))                  # BFL layout + BFL VAE: same picture as diffusers
    base = tmp_path / "flux-2-klein-base-4b.safetensors"
    shutil.copy(tr, base)
    b = lb.LocalBackend("auto", lb.LocalFiles(transformer=base, text_encoder=files["text_encoder"], vae=ae))
    assert not b.model_preset.distilled and "Base from the file name" in b.detection().describe()


def test_refusals_name_the_file_and_what_was_found(klein, dev, tmp_path):
    _, _, files = klein
    dev_te = dev[1] / "diffusers" / "flux2-tiny" / "text_encoder"
    b = lb.LocalBackend("auto", lb.LocalFiles(transformer=files["transformer"], text_encoder=dev_te / "model.safetensors",
                                              vae=files["vae"]))
    with pytest.raises(ModelLoadError, match=r"text encoder model.safetensors is a Mistral text encoder, diffusion "
                                             r"model flux2-tiny.safetensors \(\[klein\]\) needs Qwen3") as e:
        b.check_ready()
    assert "\n" not in str(e.value)
    import tiny

    wide = tiny.make_text_encoder("qwen3", hidden=48)
    twins.write_text_encoder(wide, tmp_path / "qwen_wide.safetensors")
    b = lb.LocalBackend("auto", lb.LocalFiles(transformer=files["transformer"],
                                              text_encoder=tmp_path / "qwen_wide.safetensors", vae=files["vae"]))
    with pytest.raises(ModelLoadError, match=r"text encoder qwen_wide.safetensors gives 144 features \(width 48\), "
                                             r"diffusion model flux2-tiny.safetensors expects 96"):
        b.check_ready()
    sd = load_file(str(files["vae"]))
    sd = {k: v for k, v in sd.items()}
    sd["post_quant_conv.weight"] = sd["post_quant_conv.weight"][:16, :16].contiguous()
    save_file(sd, str(tmp_path / "vae16.safetensors"))
    b = lb.LocalBackend("auto", lb.LocalFiles(transformer=files["transformer"], text_encoder=files["text_encoder"],
                                              vae=tmp_path / "vae16.safetensors"))
    with pytest.raises(ModelLoadError, match=r"vae vae16.safetensors has 16 latent channels, FLUX.2 needs 32"):
        b.check_ready()
    save_file({"double_blocks.0.img_mod.lin.weight": torch.zeros(4, 4)}, str(tmp_path / "flux1-dev.safetensors"))
    b = lb.LocalBackend("auto", lb.LocalFiles(transformer=tmp_path / "flux1-dev.safetensors",
                                              text_encoder=files["text_encoder"], vae=files["vae"]))
    with pytest.raises(ModelLoadError, match=r"flux1-dev.safetensors is a FLUX.1 transformer"):
        b.check_ready()


def test_node_defaults_to_auto_and_the_chain_workflow_runs_on_it(klein, tmp_path, monkeypatch):
    """The shipped chain workflow with Flux2LocalBackend(model=auto) on a tiny diffusers folder from the models
    directory: the real node, not a stand-in."""
    from PIL import Image

    from comfyui_flux2.nodes.local_backend import Flux2LocalBackend
    from comfyui_flux2.cli import node_registry
    from comfyui_flux2.runner import executor as ex

    _, root, _ = klein
    monkeypatch.setenv("FLUX2_MODELS_DIR", str(root))
    spec = Flux2LocalBackend.INPUT_TYPES()["required"]["model"]
    assert spec[0][0] == "auto" and spec[1]["default"] == "auto"
    prompt = json.loads((WORKFLOWS / "api" / "flux2_chain_edit.json").read_text())
    prompt["1"] = {"class_type": "Flux2LocalBackend", "inputs": {
        "model": "auto", "diffusion_model": "(none)", "text_encoder": "(from diffusers folder)",
        "vae": "(from diffusers folder)", "diffusers_folder": "flux2-tiny", "dtype": "fp32", "device": "cpu",
        "steps": 2, "guidance": 0.0, "offload": "none", "vae_tiling": "off"}}
    prompt["3"]["inputs"].update(width=80, height=64)
    lb.clear_cache()
    report = ex.Executor(prompt, registry=node_registry(), input_dir=WORKFLOWS, output_dir=tmp_path).run(RunContext())
    sizes = []
    for path in sorted(report.saved):
        with Image.open(path) as img:
            sizes.append(img.size)
    assert sizes == [(80, 64)] * 3


def _chain_prompt(backend_inputs: dict) -> dict:
    prompt = json.loads((WORKFLOWS / "api" / "flux2_chain_edit.json").read_text())
    prompt["1"] = {"class_type": "Flux2LocalBackend", "inputs": {
        "model": "auto", "diffusion_model": "(none)", "text_encoder": "(from diffusers folder)",
        "vae": "(from diffusers folder)", "diffusers_folder": "(none)", "dtype": "fp32", "device": "cpu",
        "steps": 2, "guidance": 0.0, "offload": "none", "vae_tiling": "off", **backend_inputs}}
    prompt["3"]["inputs"].update(width=80, height=64)
    return prompt


def test_cli_runs_the_chain_on_single_file_twins_with_models_dir(klein, tmp_path, monkeypatch):
    """`comfyui-flux2 run WORKFLOW --models-dir DIR` with ComfyUI-layout single files (BFL transformer, ComfyUI
    Qwen3 file, BFL ae), model auto."""
    from comfyui_flux2 import cli

    pipe = klein[0]
    models = tmp_path / "models"
    twins.write_bfl_transformer(pipe.transformer.state_dict(), models / "diffusion_models" / "flux-2-klein-4b.safetensors")
    twins.write_text_encoder(pipe.text_encoder, models / "text_encoders" / "qwen_3_4b.safetensors")
    twins.write_bfl_vae(pipe.vae.state_dict(), models / "vae" / "ae.safetensors")
    wf = tmp_path / "chain.json"
    wf.write_text(json.dumps(_chain_prompt({"diffusion_model": "flux-2-klein-4b.safetensors",
                                            "text_encoder": "qwen_3_4b.safetensors", "vae": "ae.safetensors"})))
    monkeypatch.delenv("FLUX2_MODELS_DIR", raising=False)
    lb.clear_cache()
    out = tmp_path / "out"
    assert cli.main(["run", str(wf), "--models-dir", str(models), "--output-dir", str(out),
                     "--input-dir", str(WORKFLOWS)]) == 0
    assert len(list(out.rglob("*.png"))) == 3


def test_dev_single_file_twins_load_and_generate(dev, tmp_path):
    """The [dev] layouts: BFL flux2-dev, ComfyUI fp8mixed, Mistral bf16 / fp8 / fp4-mixed with the Tekken tokenizer
    inside. A tiny Mistral's head size is not in its shapes: the named tiny preset gives it."""
    from comfyui_flux2.flux2.local.pipeline import Flux2Engine
    from test_tokenizers import synthetic_tekken

    pipe = dev[0]
    dm, te, va = tmp_path / "diffusion_models", tmp_path / "text_encoders", tmp_path / "vae"
    tek = synthetic_tekken()
    files = {"flux2-dev": twins.write_bfl_transformer(pipe.transformer.state_dict(), dm / "flux2-dev.safetensors"),
             "fp8mixed": twins.write_comfy_fp8mixed_transformer(pipe.transformer.state_dict(),
                                                                dm / "flux2_dev_fp8mixed.safetensors"),
             "ae": twins.write_bfl_vae(pipe.vae.state_dict(), va / "ae.safetensors")}
    for q in ("bf16", "fp8mixed", "fp4mixed"):
        files[f"te-{q}"] = twins.write_text_encoder(pipe.text_encoder, te / f"mistral_3_small_flux2_{q}.safetensors", q,
                                            tekken=tek)
    preset = params.tiny_preset("dev")
    for tr, te_name in (("flux2-dev", "te-bf16"), ("fp8mixed", "te-fp8mixed"), ("flux2-dev", "te-fp4mixed")):
        eng = Flux2Engine(loading_modules(preset, files[tr], files[te_name], files["ae"]))
        img = eng.generate("a red cat", 32, 32, [1], 1, 4.0)[0]
        assert img.shape == (32, 32, 3) and img.std() > 0, (tr, te_name)


def loading_modules(preset, tr, te, vae):
    from comfyui_flux2.flux2.local.weights import loading

    return loading.load_modules(preset, transformer=tr, text_encoder=te, vae=vae, dtype=torch.float32)


def test_sharded_diffusers_folder_loads_like_the_single_shard(klein, tmp_path):
    """diffusers' FLUX.2 folders ship sharded (`*.safetensors.index.json` + shards)."""
    pipe, root, _ = klein
    sharded = tmp_path / "flux2-sharded"
    pipe.save_pretrained(str(sharded), safe_serialization=True, max_shard_size="200KB")
    assert (sharded / "transformer" / "diffusion_pytorch_model.safetensors.index.json").is_file()
    assert len(list((sharded / "transformer").glob("*.safetensors"))) > 1
    a = lb.LocalBackend("auto", lb.LocalFiles(diffusers_dir=sharded), dtype="fp32", device="cpu", steps=2)
    b = lb.LocalBackend("auto", lb.LocalFiles(diffusers_dir=root / "diffusers" / "flux2-tiny"), dtype="fp32",
                        device="cpu", steps=2)
    assert a.model_preset == b.model_preset
    lb.clear_cache()
    x = _run(a)
    lb.clear_cache()
    assert np.array_equal(x, _run(b))
