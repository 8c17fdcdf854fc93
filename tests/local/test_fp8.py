"""fp8 files stay fp8 in memory (ScaledFP8Linear) and give exactly the numbers of up-casting at load."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from comfyui_flux2.flux2.local.weights import loading, quant
from comfyui_flux2.flux2.local.model import params, sampling
from comfyui_flux2.flux2.local.model.text_encoder import TextEncoder
from comfyui_flux2.flux2.local.model.transformer import Flux2Transformer

E4M3, E5M2 = torch.float8_e4m3fn, torch.float8_e5m2
TINY = params.tiny_preset("klein", True)


def quantise(sd: dict[str, torch.Tensor], prefix: str = "") -> dict[str, torch.Tensor]:
    """Every matrix to fp8, cycling through the layouts found in the wild: BFL per-row `weight_scale`, ComfyUI
    scalar `scale_weight`, [out, 1] scale, no scale at all, and e5m2. Other tensors (norms) stay as they are."""
    out, i = {}, 0
    for k, v in sd.items():
        if not (k.endswith(".weight") and v.ndim == 2):
            out[prefix + k] = v.contiguous()
            continue
        base = prefix + k[: -len(".weight")]
        kind = i % 5
        i += 1
        if kind == 0:
            s = v.abs().amax(1).clamp_min(1e-12) / 448.0
            out[base + ".weight"], out[base + ".weight_scale"] = (v / s[:, None]).to(E4M3), s
        elif kind == 1:
            s = v.abs().max() / 448.0
            out[base + ".weight"], out[base + ".scale_weight"] = (v / s).to(E4M3), s
        elif kind == 2:
            s = v.abs().amax(1, keepdim=True) / 448.0
            out[base + ".weight"], out[base + ".weight_scale"] = (v / s).to(E4M3), s
        elif kind == 3:
            out[base + ".weight"] = v.to(E4M3)
        else:
            s = v.abs().max() / 57344.0
            out[base + ".weight"], out[base + ".weight_scale"] = (v / s).to(E5M2), s.reshape(1)
            out[base + ".input_scale"] = torch.ones(())          # activation scales are ignored
    return out


@pytest.fixture(scope="module")
def fp8_transformer(tmp_path_factory):
    torch.manual_seed(0)
    sd = Flux2Transformer(TINY.transformer).state_dict()
    path = tmp_path_factory.mktemp("fp8") / "flux2-tiny-fp8.safetensors"
    q = quantise(sd, "model.diffusion_model.")
    q["scaled_fp8"] = torch.zeros(0, dtype=E4M3)
    save_file(q, str(path))
    return path


def forward_inputs(p, dtype):
    g = torch.Generator().manual_seed(1)
    img = torch.randn(2, 12 + 6, 128, generator=g).to(dtype)
    txt = torch.randn(2, 10, p.context_dim, generator=g).to(dtype)
    ids = torch.cat([sampling.image_ids(3, 4), sampling.image_ids(2, 3, t=10)])
    return img, ids, txt, sampling.text_ids(10), torch.tensor([0.9, 0.3])


def state_bytes(m: torch.nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in m.state_dict().values())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fp8_transformer_exact_and_half_memory(fp8_transformer, dtype):
    kept = loading.load_transformer(fp8_transformer, TINY, dtype)
    upcast = loading.load_transformer(fp8_transformer, TINY, dtype, keep_fp8=False)
    lin = kept.double_blocks[0].img_attn.qkv
    assert isinstance(lin, quant.ScaledFP8Linear) and lin.weight.dtype == E4M3
    n_fp8 = sum(isinstance(m, quant.ScaledFP8Linear) for m in kept.modules())
    assert n_fp8 == sum(isinstance(m, torch.nn.Linear) for m in upcast.modules()) and n_fp8 > 20
    assert any(m.weight.dtype == E5M2 for m in kept.modules() if isinstance(m, quant.ScaledFP8Linear))
    assert kept.dtype == dtype and all(not isinstance(m, quant.ScaledFP8Linear) for m in upcast.modules())
    # the weights each layer computes with are bit-identical to the up-cast-at-load ones
    up = dict(upcast.named_modules())
    for name, m in kept.named_modules():
        if isinstance(m, quant.ScaledFP8Linear):
            assert torch.equal(m.dequantized(), up[name].weight), name
    with torch.no_grad():
        a = kept(*forward_inputs(TINY.transformer, dtype))
        b = upcast(*forward_inputs(TINY.transformer, dtype))
    assert a.dtype == dtype and torch.equal(a, b)
    bf16 = state_bytes(loading.load_transformer(fp8_transformer, TINY, torch.bfloat16, keep_fp8=False))
    ratio = state_bytes(kept) / (bf16 if dtype == torch.bfloat16 else bf16 * 2)
    print(f"fp8 kept / bf16 up-cast memory ({dtype}): {state_bytes(kept) / bf16:.3f}")
    assert state_bytes(kept) / bf16 < 0.56, ratio


def test_fp8_text_encoder_exact(tmp_path):
    p = params.tiny_preset("klein").text_encoder
    torch.manual_seed(0)
    sd = {"model." + k: v for k, v in TextEncoder(p).state_dict().items()}
    sd = quantise(sd)                                            # embed_tokens too: up-cast at load (not a Linear)
    f = tmp_path / "qwen3-fp8.safetensors"
    save_file(sd, str(f))
    kept = loading.load_text_encoder(f, p, torch.float32)
    upcast = loading.load_text_encoder(f, p, torch.float32, keep_fp8=False)
    assert kept.embed_tokens.weight.dtype == torch.float32
    assert isinstance(kept.layers[0].mlp.down_proj, quant.ScaledFP8Linear)
    ids = torch.randint(0, 151936, (2, 512), generator=torch.Generator().manual_seed(0))
    mask = torch.ones(2, 512, dtype=torch.long)
    mask[1, 300:] = 0
    with torch.no_grad():
        assert torch.equal(kept(ids, mask), upcast(ids, mask))


def test_dequantize_in_chunks_is_exact(monkeypatch):
    g = torch.Generator().manual_seed(0)
    w = (torch.randn(37, 29, generator=g) * 50).to(E4M3)
    for scale in (torch.rand(37, generator=g), torch.tensor(0.01), None):
        whole = quant.dequantize_weight(w, scale, torch.bfloat16)
        monkeypatch.setattr(quant, "_CHUNK", 100)                 # 3 rows a chunk
        assert torch.equal(quant.dequantize_weight(w, scale, torch.bfloat16), whole)
        monkeypatch.setattr(quant, "_CHUNK", 1 << 24)


def test_fp8_single_files_and_diffusers_layout_generate_same_image(klein, tmp_path):
    """Engine level: fp8 single files (kept fp8) and a diffusers-layout fp8 transformer (up-cast while renaming)
    give the same image as up-casting everything at load."""
    from comfyui_flux2.flux2.local.pipeline import Flux2Engine

    pipe, _, files = klein
    tr = tmp_path / "tr-fp8.safetensors"
    save_file(quantise(load_file(str(files["transformer"]))), str(tr))
    te = tmp_path / "te-fp8.safetensors"
    save_file(quantise(load_file(str(files["text_encoder"]))), str(te))
    tok = files["text_encoder"].with_name("tiny-te.tokenizer.json")

    def image(transformer, keep):
        m = loading.load_modules(TINY, transformer=transformer, text_encoder=te, vae=files["vae"], tokenizer=tok,
                                 dtype=torch.float32, keep_fp8=keep)
        return m, Flux2Engine(m).generate("a red cat", 48, 32, [3], 2, 0.0)[0]

    m, kept = image(tr, True)
    assert isinstance(m.transformer.single_blocks[0].linear1, quant.ScaledFP8Linear)
    assert isinstance(m.text_encoder.layers[0].self_attn.q_proj, quant.ScaledFP8Linear)
    _, upcast = image(tr, False)
    assert np.array_equal(kept, upcast)
    dif = tmp_path / "diffusers-fp8.safetensors"
    save_file(quantise({k: v.detach().clone() for k, v in pipe.transformer.state_dict().items()}), str(dif))
    m2, from_diffusers = image(dif, True)
    _, from_diffusers_up = image(dif, False)
    assert np.array_equal(from_diffusers, from_diffusers_up)
    assert not any(isinstance(x, quant.ScaledFP8Linear) for x in m2.transformer.modules())
