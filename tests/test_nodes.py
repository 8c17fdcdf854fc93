"""Node classes called directly, as ComfyUI calls them."""
from __future__ import annotations

import pytest
import torch

from comfyui_flux2 import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS
from comfyui_flux2.flux2.errors import InputError
from comfyui_flux2.flux2.sizes import SizeLimits, fit_size, size_from_aspect, validate_size
from comfyui_flux2.nodes import Flux2Edit, Flux2RemoteBackend, Flux2Seed, Flux2Size, Flux2TextToImage

PERMANENT = ["Flux2RemoteBackend", "Flux2TextToImage", "Flux2Edit", "Flux2Seed", "Flux2Size", "Flux2LocalBackend",
             "Flux2ComfyBackend", "Flux2LoRA"]


def test_permanent_node_names_are_registered():
    for name in PERMANENT:
        assert name in NODE_CLASS_MAPPINGS and name in NODE_DISPLAY_NAME_MAPPINGS


@pytest.mark.parametrize("cls", list(NODE_CLASS_MAPPINGS.values()))
def test_every_input_has_a_tooltip_and_node_a_description(cls):
    assert cls.DESCRIPTION
    types = cls.INPUT_TYPES()
    for section in ("required", "optional"):
        for name, spec in (types.get(section) or {}).items():
            assert len(spec) > 1 and spec[1].get("tooltip"), f"{cls.__name__}.{name} has no tooltip"


def test_seed_widgets_have_control_after_generate():
    for cls in (Flux2Seed, Flux2TextToImage, Flux2Edit):
        assert cls.INPUT_TYPES()["required"]["seed"][1]["control_after_generate"] is True
    assert Flux2Seed().seed(42) == (42,)


def backend(model="FLUX.2 [pro]", provider="runware", **kw):
    args = dict(provider=provider, model=model, prompt_upsampling=False, safety_tolerance=2, output_format="PNG",
                output_quality=95, steps=0, guidance=0.0, on_moderation="error")
    args.update(kw)
    return Flux2RemoteBackend().build(**args)[0]


def test_backend_node_holds_no_key(monkeypatch):
    monkeypatch.setenv("RUNWARE_API_KEY", "sk-should-not-appear")
    b = backend()
    assert "sk-should-not-appear" not in repr(b) and "sk-should-not-appear" not in repr(vars(b))


def test_backend_node_rejects_model_not_on_provider():
    with pytest.raises(InputError, match=r"FLUX.2 \[dev\] is not offered by bfl"):
        backend(model="FLUX.2 [dev]", provider="bfl")


@pytest.mark.parametrize("aspect, mp, expected", [
    ("3:2", 1.5, (1536, 1024)), ("1:1", 1.0, (1024, 1024)), ("16:9", 1.0, (1360, 768)),
    ("1:1", 4.0, (2048, 2048)), ("21:9", 4.0, (2048, 880)), ("9:21", 0.1, (208, 496)), ("4:1", 0.1, (640, 160)),
])
def test_size_node_snaps_and_clamps(aspect, mp, expected):
    out = Flux2Size().size(aspect, mp, 0, 0)
    assert out["result"] == expected
    w, h = expected
    assert w % 16 == 0 and h % 16 == 0 and w * h <= 2048 * 2048
    assert out["ui"]["text"][0].startswith(f"{w}x{h}")


def test_size_node_uses_backend_limits():
    dev = backend(model="FLUX.2 [dev]")
    assert Flux2Size().size("custom", 1, 300, 300, backend=dev)["result"] == (512, 512)
    assert Flux2Size().size("custom", 1, 5000, 5000, backend=dev)["result"] == (2048, 2048)
    assert Flux2Size().size("custom", 1, 1000, 760, backend=dev)["result"] == (992, 768)


def test_fit_size_follows_aspect_within_limits():
    assert fit_size(1000, 750) == (992, 736)
    w, h = fit_size(4000, 3000)
    assert w * h <= 2048 * 2048 and abs(w / h - 4 / 3) < 0.02
    with pytest.raises(InputError, match="over the limit of 4.00 MP"):
        validate_size(2048, 2064, SizeLimits(max_side=4096))


def image(h, w, b=1):
    return torch.rand(b, h, w, 3)


def test_edit_follows_first_reference_and_counts_batches(runware):
    node = Flux2Edit()
    out = node.edit(backend(), "edit", image(600, 800), 0, 0, 7, 1, unique_id="9", reference_2=image(64, 64, b=2))
    img, seed, cost = out["result"]
    assert img.shape == (1, 592, 800, 3) and 0 <= img.min() and img.max() <= 1
    assert seed == 7 and cost == pytest.approx(0.03 + 3 * 0.015)
    (task,) = runware.tasks("imageInference")
    assert len(task["inputs"]["referenceImages"]) == 3


def test_edit_rejects_too_many_references_before_network(runware):
    with pytest.raises(InputError, match="at most 8"):
        Flux2Edit().edit(backend(), "edit", image(64, 64, b=9), 0, 0, 7, 1)
    with pytest.raises(InputError, match="set both width and height"):
        Flux2Edit().edit(backend(), "edit", image(64, 64), 512, 0, 7, 1)
    assert runware.requests == []


def test_text_to_image_node_returns_comfy_image(runware):
    out = Flux2TextToImage().generate(backend(), "a cat", 512, 256, 3, 2, unique_id="4")
    img, seed, cost = out["result"]
    assert img.dtype == torch.float32 and img.shape == (2, 256, 512, 3)
    assert out["ui"]["flux2"][0]["seeds"] == [3, 4]


def test_generation_node_rejects_a_non_backend():
    with pytest.raises(InputError, match="backend input"):
        Flux2TextToImage().generate("not a backend", "a", 512, 512, 1, 1)


def test_budget_cap_refuses_the_whole_graph_before_its_first_call(runware, monkeypatch):
    """Inside ComfyUI each generation node sees the whole graph (hidden PROMPT) and prices it first."""
    import json
    from pathlib import Path

    from comfyui_flux2.flux2.errors import BudgetError
    chain = json.loads((Path(__file__).resolve().parents[1] / "workflows" / "api" / "flux2_chain_edit.json").read_text())
    monkeypatch.setenv("FLUX2_BUDGET_USD", "0.1")             # the chain is estimated at $0.12
    with pytest.raises(BudgetError, match=r"estimated at \$0.12, over FLUX2_BUDGET_USD \$0.1"):
        Flux2TextToImage().generate(backend(), "a teapot", 1024, 1024, 5150, 1, unique_id="3", graph_prompt=chain)
    assert runware.requests == []
    monkeypatch.setenv("FLUX2_BUDGET_USD", "0.12")
    out = Flux2TextToImage().generate(backend(), "a teapot", 1024, 1024, 5150, 1, unique_id="3", graph_prompt=chain)
    assert out["result"][2] == pytest.approx(0.03)


def test_budget_cap_falls_back_to_the_node_when_the_graph_cannot_be_priced(runware, monkeypatch):
    from comfyui_flux2.flux2.errors import BudgetError
    foreign = {"1": {"class_type": "SomeOtherPackNode", "inputs": {}},
               "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "x"}}}
    monkeypatch.setenv("FLUX2_BUDGET_USD", "0.04")
    with pytest.raises(BudgetError, match=r"this node is estimated at \$0.045"):
        Flux2TextToImage().generate(backend(), "a", 1536, 1024, 1, 1, unique_id="3", graph_prompt=foreign)
    assert Flux2TextToImage().generate(backend(), "a", 1024, 1024, 1, 1, unique_id="3",
                                       graph_prompt=foreign)["result"][2] == pytest.approx(0.03)
    assert len(runware.tasks("imageInference")) == 1
