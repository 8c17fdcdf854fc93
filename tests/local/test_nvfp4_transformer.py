"""NVFP4 transformers (ComfyUI layout, as BFL publishes FLUX.2-dev-NVFP4 / klein NVFP4): Linear weights stay packed
(quant.NVFP4Linear) and are de-quantised per layer with comfy_kitchen's numbers (quant.dequantize_nvfp4, checked
against comfy_kitchen in test_published_layouts.py): the same picture as de-quantising at load, with offload too."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from comfyui_flux2.flux2.local import backend as lb
from comfyui_flux2.flux2.local.weights import quant
from comfyui_flux2.flux2.local.memory import sizes_from_headers

import twins


def _run(backend):
    return backend.engine().generate("a red cat", 32, 32, [5], 2, backend.effective_guidance, [])[0]


@pytest.fixture(scope="module")
def nvfp4(klein, tmp_path_factory):
    pipe, _, files = klein
    path = twins.write_comfy_nvfp4_transformer(pipe.transformer.state_dict(),
                                               tmp_path_factory.mktemp("nv") / "flux2-klein-4b-nvfp4.safetensors")
    return path, files


def _backend(path, files, **kw):
    return lb.LocalBackend("auto", lb.LocalFiles(transformer=path, text_encoder=files["text_encoder"],
                                                 vae=files["vae"]), dtype="fp32", device="cpu", steps=2, **kw)


def test_kept_packed_same_picture_as_dequantised_at_load(nvfp4, monkeypatch):
    path, files = nvfp4
    lb.clear_cache()
    b = _backend(path, files)
    packed = _run(b)
    lin = b.engine().m.transformer.single_blocks[0].linear1
    assert isinstance(lin, quant.NVFP4Linear) and lin.weight.dtype == torch.uint8
    lb.clear_cache()
    off = _run(_backend(path, files, offload="blocks"))
    lb.clear_cache()
    from comfyui_flux2.flux2.local.weights import loading

    real = loading.load_modules
    monkeypatch.setattr(loading, "load_modules", lambda *a, **k: real(*a, **{**k, "keep_fp8": False}))
    b2 = _backend(path, files)
    at_load = _run(b2)
    assert type(b2.engine().m.transformer.single_blocks[0].linear1) is torch.nn.Linear
    lb.clear_cache()
    assert np.array_equal(packed, at_load) and np.array_equal(off, packed)


def test_plan_counts_packed_bytes(nvfp4):
    path, files = nvfp4
    det = _backend(path, files).detection()
    kept = sizes_from_headers(det.transformer, det.text_encoder, det.vae, dtype_bytes=2, keep_fp8=True,
                              text_layers_used=27)
    full = sizes_from_headers(det.transformer, det.text_encoder, det.vae, dtype_bytes=2, keep_fp8=False,
                              text_layers_used=27)
    assert kept.kept_fp8 and kept.largest_linear_elements == full.largest_linear_elements
    # block matrices: 0.5 byte an element + 1/16 byte of scale, against 2 bytes in bf16 (norms stay as they were)
    assert kept.transformer_blocks < 0.35 * full.transformer_blocks
