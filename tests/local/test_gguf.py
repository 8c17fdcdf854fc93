"""GGUF transformers as ComfyUI-GGUF publishes them: detected from the header, weights kept quantised and
de-quantised per layer, the same picture as the file's own de-quantised float32 twin, with offload and LoRA."""
from __future__ import annotations

import numpy as np
import pytest
import torch

gguf = pytest.importorskip("gguf")

from comfyui_flux2.flux2.errors import ModelLoadError  # noqa: E402
from comfyui_flux2.flux2.local import backend as lb  # noqa: E402
from comfyui_flux2.flux2.local.weights.gguf import GGUFLinear  # noqa: E402

import gguf_twins  # noqa: E402


def _run(backend, prompt="a red cat"):
    return backend.engine().generate(prompt, 32, 32, [5], 2, backend.effective_guidance, [])[0]


@pytest.fixture(scope="module")
def gguf_files(klein, tmp_path_factory):
    pipe, _, files = klein
    d = tmp_path_factory.mktemp("gguf")
    q = gguf_twins.write_gguf_transformer(pipe.transformer.state_dict(), d / "flux-2-klein-4b-Q8_0.gguf")
    twin = gguf_twins.dequantized_twin(q, d / "flux-2-klein-4b-dequantized.safetensors")
    return q, twin, files


def _backend(tr, files, **kw):
    return lb.LocalBackend("auto", lb.LocalFiles(transformer=tr, text_encoder=files["text_encoder"], vae=files["vae"]),
                           dtype="fp32", device="cpu", steps=2, **kw)


def test_published_layout(gguf_files):
    q, _, _ = gguf_files
    r = gguf.GGUFReader(str(q))
    types = {t.name: t.tensor_type.name for t in r.tensors}
    assert r.get_field("general.architecture").contents() == "flux"
    assert types["img_in.weight"] == "BF16" and types["double_blocks.0.img_attn.norm.query_norm.scale"] == "F32"
    assert {"Q8_0", "Q4_0", "Q5_1"} <= set(types.values())


def test_same_picture_as_its_dequantized_twin(gguf_files):
    q, twin, files = gguf_files
    lb.clear_cache()
    a = _backend(q, files)
    img_q = _run(a)
    tr = a.engine().m.transformer
    lin = tr.double_blocks[0].img_attn.qkv
    assert isinstance(lin, GGUFLinear) and lin.weight.dtype == torch.uint8       # stays quantised in memory
    lb.clear_cache()
    img_f = _run(_backend(twin, files))
    lb.clear_cache()
    diff = np.abs(img_q.astype(np.float64) - img_f.astype(np.float64)) * 255
    assert diff.mean() <= 0.05 and diff.max() <= 2


def test_detection_and_plan_from_the_header(gguf_files):
    """Same model detected as the float twin; the plan counts the quantised bytes (Q8_0: 34 bytes a 32-element
    block) and the largest layer de-quantised."""
    from comfyui_flux2.flux2.backend import GenerationRequest
    from comfyui_flux2.flux2.local.memory import sizes_from_headers

    q, twin, files = gguf_files
    a, b = _backend(q, files), _backend(twin, files)
    assert a.detection().preset == b.detection().preset
    (call,) = a.plan(GenerationRequest("a cat", 64, 64, seed=1))
    assert "detected FLUX.2 [klein]" in call.summary

    def sizes(det):
        return sizes_from_headers(det.transformer, det.text_encoder, det.vae, dtype_bytes=4, keep_fp8=True,
                                  text_layers_used=27)

    sq, sf = sizes(a.detection()), sizes(b.detection())
    assert sq.kept_fp8 and not sf.kept_fp8
    assert sq.largest_linear_elements == sf.largest_linear_elements
    # blocks hold only quantised matrices and F32 norms: between 34/32/4 (Q8_0) and 20/32/4 (Q4_1) of float32
    assert 0.15 * sf.transformer_blocks < sq.transformer_blocks < 0.3 * sf.transformer_blocks
    # resident parts: the modulation matrices are quantised too; img_in / txt_in / time_in / final_layer (BF16 in
    # the file) are cast to the compute dtype as before
    assert sq.transformer_resident < sf.transformer_resident


@pytest.mark.slow
def test_offload_blocks_streams_quantised_blocks(gguf_files):
    q, _, files = gguf_files
    lb.clear_cache()
    ref = _run(_backend(q, files))
    lb.clear_cache()
    off = _backend(q, files, offload="blocks")
    img = _run(off)
    lb.clear_cache()
    assert np.array_equal(img, ref)


def test_text_encoder_file_as_diffusion_model_refused(gguf_files, tmp_path):
    _, _, files = gguf_files
    p = gguf_twins.write_gguf({"token_embd.weight": torch.randn(64, 32)}, tmp_path / "qwen3-4b-Q8_0.gguf", "qwen3",
                              lambda k, t: gguf.GGMLQuantizationType.Q8_0)
    with pytest.raises(ModelLoadError, match="qwen3"):
        lb.LocalBackend("FLUX.2 [klein] 4B", lb.LocalFiles(transformer=p, text_encoder=files["text_encoder"],
                                                            vae=files["vae"]), dtype="fp32", device="cpu").engine()


@pytest.mark.slow
def test_lora_on_top_equals_lora_on_the_float_twin(gguf_files, tmp_path):
    """Flux2LoRA's hooks add the patch to a GGUFLinear's output as to a plain Linear's."""
    import lora_twins as tw
    from comfyui_flux2.flux2.local.model import params
    from comfyui_flux2.flux2.local.weights import lora

    q, twin, files = gguf_files
    shapes = lora.linear_shapes(params.tiny_preset("klein", True).transformer)
    path = tw.save(tw.ai_toolkit(tw.RandomLoRA.make(shapes, seed=2)), tmp_path / "lora.safetensors")
    from comfyui_flux2.flux2.backend import GenerationRequest, run
    from comfyui_flux2.flux2.run_context import RunContext

    spec = (lora.LoRASpec(path, 1.0),)

    def image(tr, loras=()):
        return run(_backend(tr, files, loras=loras), GenerationRequest("a red cat", 64, 64, seed=5),
                   RunContext()).images[0]

    lb.clear_cache()
    with_q, plain_q = image(q, spec), image(q)       # the BF16-kept Linears take it merged, then are read again
    lb.clear_cache()
    assert np.array_equal(image(q), plain_q)           # restored bit for bit from the GGUF file
    lb.clear_cache()
    with_f = image(twin, spec)
    lb.clear_cache()
    diff = np.abs(with_q.astype(np.int32) - with_f.astype(np.int32))
    assert diff.mean() <= 0.05 and diff.max() <= 2
    assert np.abs(with_q.astype(np.int32) - plain_q.astype(np.int32)).max() > 20      # the LoRA does move it


def test_gguf_files_listed_beside_safetensors(tmp_path, monkeypatch):
    import types

    from comfyui_flux2.flux2.local.weights import models_dir
    from comfyui_flux2.nodes import local_backend

    root = tmp_path / "models"
    for rel in ("diffusion_models/a.safetensors", "unet/flux2-dev-Q4_K_M.gguf", "clip/Qwen3-4B-Q8_0.gguf",
                "vae/x.gguf", "vae/ae.safetensors"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(b"")
    assert models_dir.list_files("diffusion_models", root) == ["a.safetensors", "flux2-dev-Q4_K_M.gguf"]
    assert models_dir.list_files("text_encoders", root) == ["Qwen3-4B-Q8_0.gguf"]
    assert models_dir.list_files("vae", root) == ["ae.safetensors"]          # no GGUF VAE is published

    # Inside ComfyUI, folder_paths lists only its own extensions; the node adds the .gguf files of those folders.
    folders = {"diffusion_models": [root / "diffusion_models"], "unet": [root / "unet"],
               "text_encoders": [root / "text_encoders"], "clip": [root / "clip"], "vae": [root / "vae"]}
    fake = types.SimpleNamespace(
        get_filename_list=lambda f: sorted(p.name for d in folders[f] if d.is_dir() for p in d.iterdir()
                                           if p.suffix == ".safetensors"),
        get_folder_paths=lambda f: [str(d) for d in folders[f]])
    monkeypatch.setattr(local_backend, "folder_paths", lambda: fake)
    assert local_backend._list("diffusion_models") == ["a.safetensors", "flux2-dev-Q4_K_M.gguf"]
    assert local_backend._list("text_encoders") == ["Qwen3-4B-Q8_0.gguf"]
    assert local_backend._list("vae") == ["ae.safetensors"]


def test_base_from_the_gguf_name_or_metadata(gguf_files, tmp_path, klein):
    import shutil

    q, _, files = gguf_files
    base = tmp_path / "flux-2-klein-base-4b-Q8_0.gguf"
    shutil.copy(q, base)
    det = _backend(base, files).detection()
    assert not det.preset.distilled and "Base from the file name" in det.describe()
    pipe = klein[0]
    named = gguf_twins.write_gguf_transformer(pipe.transformer.state_dict(), tmp_path / "model.gguf",
                                              general_name="FLUX.2 klein Base 4B")
    det = _backend(named, files).detection()
    assert not det.preset.distilled and "Base from the file's metadata" in det.describe()


@pytest.mark.slow
def test_prefixed_and_archless_files_read_the_same(gguf_files, klein, tmp_path):
    """`model.diffusion_model.` names and a file without general.architecture (ComfyUI-GGUF: compat mode, tensor
    names decide) give the same weights."""
    q, _, files = gguf_files
    pipe = klein[0]
    other = gguf_twins.write_gguf_transformer(pipe.transformer.state_dict(), tmp_path / "p.gguf",
                                              prefix="model.diffusion_model.", arch=None)
    assert gguf.GGUFReader(str(other)).get_field("general.architecture") is None
    lb.clear_cache()
    a = _run(_backend(q, files))
    lb.clear_cache()
    b = _run(_backend(other, files))
    lb.clear_cache()
    assert np.array_equal(a, b)


@pytest.mark.slow
@pytest.mark.parametrize("family", ["klein", "dev"])
def test_gguf_text_encoder_same_picture_as_its_float_twin(family, request, tmp_path):
    """llama.cpp text encoders: Qwen3 ("qwen3", [klein]) and Mistral ("llama", [dev]: q/k rows permuted by the
    converter, un-permuted on load); the picture equals that of the same weights de-quantised as float32."""
    import shutil

    import twins

    pipe, root, _ = request.getfixturevalue(family)
    arch = "qwen3" if family == "klein" else "llama"
    params_te = pipe.text_encoder.config if family == "klein" else pipe.text_encoder.config.text_config
    heads, kv = params_te.num_attention_heads, params_te.num_key_value_heads
    hf = twins.hf_text_encoder(pipe.text_encoder)
    q = gguf_twins.write_gguf_text_encoder(hf, tmp_path / "text-encoder-Q8_0.gguf", arch, heads, kv,
                                           head_dim=getattr(params_te, "head_dim", None))
    f32 = gguf_twins.dequantized_text_encoder_twin(hf, q, tmp_path / "text-encoder-f32.safetensors", arch, heads, kv)
    tok = root / "diffusers" / "flux2-tiny" / "tokenizer" / "tokenizer.json"
    for p in (q, f32):
        shutil.copy(tok, p.with_name(p.stem + ".tokenizer.json"))
    # the float twin says its head size in a config beside it (a safetensors file has no metadata for it)
    f32.with_name(f32.stem + ".config.json").write_text(pipe.text_encoder.config.to_json_string())
    folder = root / "diffusers" / "flux2-tiny"

    def image(te, offload="none"):
        lb.clear_cache()
        b = lb.LocalBackend("auto", lb.LocalFiles(diffusers_dir=folder, text_encoder=te), dtype="fp32",
                            device="cpu", steps=2, offload=offload)
        out = _run(b)
        if te == q and offload == "none":
            enc = b.engine().m.text_encoder
            assert isinstance(enc.layers[0].self_attn.q_proj, GGUFLinear)
        lb.clear_cache()
        return out

    a, b = image(q), image(f32)
    diff = np.abs(a.astype(np.int32) - b.astype(np.int32))
    assert diff.mean() <= 0.05 and diff.max() <= 2
    assert np.array_equal(image(q, "blocks"), a)          # its quantised layers stream under offload=blocks
    # tiny random weights barely react to the prompt, so the layers are compared too: every quantised Linear
    # de-quantises to exactly the float twin's weight (q/k in Hugging Face's row order again)
    from comfyui_flux2.flux2.local.weights import loading

    base = lb.LocalBackend("auto", lb.LocalFiles(diffusers_dir=folder, text_encoder=q)).model_preset.text_encoder
    te_q = loading.load_text_encoder(q, base, torch.float32)
    te_f = loading.load_text_encoder(f32, base, torch.float32)
    swapped = [(n, m) for n, m in te_q.named_modules() if isinstance(m, GGUFLinear)]
    assert any(n.endswith("q_proj") for n, _ in swapped) and any(n.endswith("k_proj") for n, _ in swapped)
    for n, m in swapped:
        assert torch.equal(m.dequantized(torch.float32), te_f.get_submodule(n).weight), n


def test_mistral_gguf_without_a_tokenizer_is_refused_in_one_line(tmp_path):
    """A llama.cpp Mistral file carries its vocabulary as GGUF metadata, not ComfyUI's `tekken_model`; rebuilding
    Tekken from it is not done here, so a tokenizer.json beside it is asked for by name."""
    from comfyui_flux2.flux2.local.model.params import MISTRAL_SMALL
    from comfyui_flux2.flux2.local.weights.loading import tokenizer_for

    p = gguf_twins.write_gguf({"token_embd.weight": torch.randn(64, 32)}, tmp_path / "Mistral-Small-Q4_K_M.gguf",
                              "llama", lambda k, t: gguf.GGMLQuantizationType.Q8_0)
    with pytest.raises(ModelLoadError, match="Mistral-Small-Q4_K_M.tokenizer.json") as e:
        tokenizer_for(p, MISTRAL_SMALL)
    assert "\n" not in str(e.value)


def test_quant_plan_rows_match_published_sizes():
    """The header twins of `benchmark local --rows quant-plan` follow the published layout closely enough that the
    [dev] Q8_0 twin has the size of a published flux2_dev_Q8_0.gguf (34.5 GB, docs/model-files.md) and the Q4_K one
    is just under a Q4_K_M (18.7 GB, which mixes in Q5_K/Q6_K); smaller files plan less memory."""
    from comfyui_flux2.bench.local_quant import plan_rows

    rows = {r["format"]: r for r in plan_rows(names=("FLUX.2 [dev]",))}
    assert abs(rows["Q8_0"]["file_gb"] - 34.5) < 0.3
    assert 17.5 < rows["Q4_K"]["file_gb"] < 18.7
    v = {f: r["vram_none"] for f, r in rows.items()}
    assert v["bf16"] > v["fp8mixed"] > v["NVFP4"] and v["bf16"] > v["Q8_0"] > v["NVFP4"] > v["Q4_K"]
    assert all(r["vram_blocks"] < 8 for r in rows.values())


def test_unported_type_and_diffusers_layout_refused_in_one_line(tmp_path, klein):
    import numpy as np

    pipe, _, files = klein
    QT = gguf.GGMLQuantizationType
    p = tmp_path / "iq2.gguf"
    w = gguf.GGUFWriter(str(p), arch="flux")
    w.add_tensor("double_blocks.0.img_attn.qkv.weight", np.zeros((4, 66), np.uint8),
                 raw_dtype=QT.IQ2_XXS)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    b = lb.LocalBackend("FLUX.2 [klein] 4B", lb.LocalFiles(transformer=p, text_encoder=files["text_encoder"],
                                                            vae=files["vae"]), dtype="fp32", device="cpu")
    with pytest.raises(ModelLoadError, match=r"IQ2_XXS, a GGUF type this engine does not de-quantise") as e:
        b.engine()
    assert "\n" not in str(e.value)
    d = gguf_twins.write_gguf({k: v for k, v in pipe.transformer.state_dict().items()}, tmp_path / "diffusers.gguf",
                              "flux", lambda k, t: QT.F32)
    b = lb.LocalBackend("FLUX.2 [klein] 4B", lb.LocalFiles(transformer=d, text_encoder=files["text_encoder"],
                                                            vae=files["vae"]), dtype="fp32", device="cpu")
    with pytest.raises(ModelLoadError, match="diffusers layout"):
        b.engine()


def test_float_linears_of_a_gguf_file_are_read_again_exactly_for_a_lora_restore(gguf_files):
    """A LoRA is merged into the unquantised Linears of a GGUF model (the quantised ones keep it on the fly);
    switching sets reads those weights again from the .gguf file, bit for bit as they were loaded."""
    from comfyui_flux2.flux2.local.weights import loading, lora

    q, _, _ = gguf_files
    tr = loading.load_transformer([q], None, torch.float32)
    plain = sorted(n for n, m in tr.named_modules() if lora.mergeable(m))
    quantised = [n for n, m in tr.named_modules() if type(m) is GGUFLinear]
    assert plain and quantised
    again = loading.reread_linear_weights([q], torch.float32, plain)
    assert all(torch.equal(again[n], tr.get_submodule(n).weight) for n in plain)
