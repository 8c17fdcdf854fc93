"""Flux2ComfyBackend outside ComfyUI: what it refuses, and that it is priced and planned like a local backend.

Its real work (driving ComfyUI's own sampler) is tested in a real server: tests/test_comfy_backend_server.py.
"""
from __future__ import annotations

import pytest

from comfyui_flux2.flux2.backend import GenerationRequest
from comfyui_flux2.flux2.errors import ConfigError, InputError
from comfyui_flux2.flux2.images import ref_from_array
from comfyui_flux2.nodes.comfy_backend import ComfyCoreBackend, Flux2ComfyBackend, _model_family
from comfyui_flux2.nodes import web_routes

import numpy as np


class Flux2:                      # stands in for comfy.model_base.Flux2 (only the class name is read)
    pass


class Flux:
    pass


class Patcher:
    def __init__(self, inner):
        self.model = inner


class Clip:
    def encode_from_tokens_scheduled(self, tokens):
        raise AssertionError("never called outside ComfyUI")


class Vae:
    def decode(self, samples):
        raise AssertionError("never called outside ComfyUI")


def backend(**kw) -> ComfyCoreBackend:
    return ComfyCoreBackend(Patcher(Flux2()), Clip(), Vae(), **kw)


def test_headless_the_node_says_it_needs_comfyui():
    with pytest.raises(ConfigError, match="inside ComfyUI only"):
        Flux2ComfyBackend().build(Patcher(Flux2()), Clip(), Vae())


def test_headless_input_types_still_list_a_sampler():
    spec = Flux2ComfyBackend.INPUT_TYPES()["required"]
    assert spec["sampler_name"][0] == ["euler"] and spec["sampler_name"][1]["default"] == "euler"
    assert [spec[k][0] for k in ("model", "clip", "vae")] == ["MODEL", "CLIP", "VAE"]


def test_only_a_flux2_model_is_accepted():
    assert _model_family(Patcher(Flux2())) == "Flux2"
    with pytest.raises(InputError, match="needs a FLUX.2 MODEL.*got Flux"):
        _model_family(Patcher(Flux()))


@pytest.mark.parametrize("kw, message", [({"steps": 0}, "steps must be 1..200"),
                                         ({"guidance": -1.0}, "must be >= 0"),
                                         ({"cfg": -0.5}, "must be >= 0")])
def test_bad_settings_are_refused(kw, message):
    with pytest.raises(InputError, match=message):
        backend(**kw)


@pytest.mark.parametrize("req, message", [
    (dict(width=1000, height=1024), "multiple of 16"),
    (dict(width=4096, height=1024), "2048"),
    (dict(batch=17), "batch must be 1..16"),
])
def test_bad_requests_are_refused_before_any_work(req, message):
    request = GenerationRequest(**{"prompt": "x", "width": 512, "height": 512, "seed": 1, **req})
    with pytest.raises(InputError, match=message):
        backend().validate(request)


def test_too_many_or_too_small_references_are_refused():
    ref = ref_from_array(np.zeros((64, 64, 3), np.uint8))
    with pytest.raises(InputError, match="at most 8 reference images"):
        backend().validate(GenerationRequest("x", 512, 512, 1, references=(ref,) * 9))
    tiny = ref_from_array(np.zeros((8, 64, 3), np.uint8))
    with pytest.raises(InputError, match="reference 1 is 64x8"):
        backend().validate(GenerationRequest("x", 512, 512, 1, references=(tiny,)))


def test_costs_nothing_and_plans_one_local_run():
    b = backend(steps=28, cfg=1.0)
    request = GenerationRequest("x", 1024, 768, 5, references=(ref_from_array(np.zeros((1500, 1000, 3), np.uint8)),))
    assert b.estimate(request).usd == 0.0
    (call,) = b.plan(request)
    assert call.backend == "comfy" and "28 steps" in call.summary and "1 refs 832x1248" in call.summary
    assert "28 steps" in b.describe()


def test_editor_prices_it_as_local():
    [item] = web_routes.preview({"items": [{"id": "x", "kind": "generate", "backend": {"type": "Flux2ComfyBackend"},
                                            "size": {"width": 512, "height": 512}}]})["items"]
    assert item["cost"] == "$0" and item["usd"] == 0.0


def test_a_reference_becomes_writable_pixels_without_a_warning():
    """PIL hands a read-only buffer; torch.from_numpy on it warns inside ComfyUI 0.33's log."""
    import warnings

    from comfyui_flux2.flux2.images import encode
    from comfyui_flux2.nodes.comfy_backend import reference_pixels

    rgb = np.arange(40 * 56 * 3, dtype=np.uint8).reshape(40, 56, 3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pixels = reference_pixels(encode(rgb), 1)
    assert pixels.shape == (1, 32, 48, 3)                     # centre-cropped to multiples of 16
    assert pixels.dtype.is_floating_point and float(pixels.max()) <= 1.0
    assert np.array_equal((pixels[0] * 255).round().byte().numpy(), rgb[4:36, 4:52])
