"""What a backend takes is declared on the Backend protocol and by every backend of the pack, so the engine
reads it instead of probing objects (getattr/hasattr): URL reference forms, the provider host, cache identity, the
LoRAs it takes."""
from __future__ import annotations

import typing

import pytest

from comfyui_flux2.flux2.backend import Backend, GenerationRequest, Reference
from comfyui_flux2.flux2.errors import InputError
from comfyui_flux2.flux2.images import RefImage
from comfyui_flux2.flux2.reference_urls import UrlReference

DECLARED = ("takes_reference_urls", "host", "cache_identity", "takes_loras", "with_lora")


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


LORA_FORMS = {"runware": "", "bfl": "", "local": "file", "comfy": ""}      # Runware's [pro] takes none
REFUSALS = {"runware": r"^Flux2LoRA: FLUX.2 \[pro\] on Runware takes no LoRA \(Runware's FLUX.2 \[dev\]",
            "bfl": r"^Flux2LoRA: FLUX.2 \[pro\] on BFL \(/v1/flux-2-pro\) takes no LoRA \(LoRAs work on Flux2LocalBackend",
            "comfy": r"^Flux2LoRA: Flux2ComfyBackend takes its LoRAs on the MODEL: put ComfyUI's LoraLoaderModelOnly"}


@pytest.mark.parametrize("kind", ["runware", "bfl", "local", "comfy"])
def test_every_backend_declares_the_loras_it_takes_and_refuses_others_in_one_line(kind, tmp_path):
    backend = pack_backends()[kind]
    assert backend.takes_loras == LORA_FORMS[kind]
    if kind == "local":
        path = tmp_path / "a.safetensors"
        chained = backend.with_lora(path, 0.5).with_lora(path, -1)
        assert backend.loras == () and [(s.path, s.strength) for s in chained.loras] == [(path, 0.5), (path, -1.0)]
        return
    with pytest.raises(InputError, match=REFUSALS[kind]) as exc:
        backend.with_lora("civitai:120096@135931", 1.0)
    assert "\n" not in str(exc.value)


def test_runware_declares_loras_per_model():
    from comfyui_flux2.flux2.remote.runware import RunwareBackend

    dev = RunwareBackend("FLUX.2 [dev]")
    assert dev.takes_loras == "air"
    assert dev.with_lora("civitai:120096@135931", 0.5).loras == (("civitai:120096@135931", 0.5),)


def test_the_lora_node_reads_the_declaration_not_the_kind(tmp_path, monkeypatch):
    """A backend of any kind that declares "file" gets the resolved file; one declaring "air" gets the id."""
    import dataclasses

    from comfyui_flux2.nodes.lora_node import Flux2LoRA

    (tmp_path / "loras").mkdir()
    (tmp_path / "loras" / "a.safetensors").write_bytes(b"x")
    monkeypatch.setenv("FLUX2_MODELS_DIR", str(tmp_path))
    local = pack_backends()["local"]
    elsewhere = dataclasses.replace(local)
    object.__setattr__(elsewhere, "kind", "elsewhere")             # the kind no longer says "local"
    (out,) = Flux2LoRA().apply(elsewhere, "a.safetensors", 0.25)
    assert [(s.path, s.strength) for s in out.loras] == [((tmp_path / "loras" / "a.safetensors").resolve(), 0.25)]
    with pytest.raises(InputError, match="the backend input must come from"):
        Flux2LoRA().apply(object(), "a.safetensors", 1.0)
