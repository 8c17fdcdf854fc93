"""What a backend takes is declared on the Backend protocol and by every backend of the pack, so the engine
reads it instead of probing objects (getattr/hasattr): URL reference forms, the provider host, cache identity."""
from __future__ import annotations

import typing

import pytest

from comfyui_flux2.flux2.backend import Backend, GenerationRequest, Reference
from comfyui_flux2.flux2.images import RefImage
from comfyui_flux2.flux2.reference_urls import UrlReference

DECLARED = ("takes_reference_urls", "host", "cache_identity")


def pack_backends():
    from comfyui_flux2.flux2.local.backend import LocalBackend, LocalFiles
    from comfyui_flux2.flux2.local.model.params import tiny_preset
    from comfyui_flux2.flux2.remote.bfl import BflBackend
    from comfyui_flux2.flux2.remote.runware import RunwareBackend
    from comfyui_flux2.nodes.comfy_backend import ComfyCoreBackend

    return {"runware": RunwareBackend("FLUX.2 [pro]"), "bfl": BflBackend("FLUX.2 [pro]"),
            "local": LocalBackend("FLUX.2 [klein] 4B", LocalFiles(), preset=tiny_preset("klein", True)),
            "comfy": ComfyCoreBackend(model=None, clip=None, vae=None)}


def test_the_protocol_declares_what_a_backend_takes():
    members = typing.get_type_hints(Backend) | {n: getattr(Backend, n) for n in dir(Backend)}
    assert all(name in members for name in DECLARED)


@pytest.mark.parametrize("kind", ["runware", "bfl", "local", "comfy"])
def test_every_backend_of_the_pack_declares_it(kind):
    backend = pack_backends()[kind]
    assert isinstance(backend, Backend) and backend.kind == kind
    assert isinstance(backend.takes_reference_urls, tuple) and isinstance(backend.host(), str)
    identity = backend.cache_identity()
    assert (identity is None) == (kind in ("local", "comfy"))
    assert backend.host() == "" if kind in ("local", "comfy") else backend.host().startswith("https://api.")


def test_a_reference_is_pixels_or_a_url():
    assert set(typing.get_args(Reference)) == {RefImage, UrlReference}
    hints = typing.get_type_hints(GenerationRequest)
    assert hints["references"] == tuple[Reference, ...]
    assert RefImage.size_known is True and UrlReference("https://example.com/a.png", "url").size_known is False
