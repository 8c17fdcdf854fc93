"""Request rules in one place (flux2/rules.py): every backend, node and the editor read the same Rules."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

from comfyui_flux2.flux2.backend import GenerationRequest
from comfyui_flux2.flux2.errors import InputError
from comfyui_flux2.flux2.local.model.params import PRESETS
from comfyui_flux2.flux2.models import MODELS, get_model
from comfyui_flux2.flux2.preview import preview
from comfyui_flux2.flux2.rules import (DEFAULT_RULES, MAX_SEED, comfy_rules, local_rules, remote_rules, rules_table,
                                       validate_request)
from comfyui_flux2.nodes import Flux2Size

ROOT = Path(__file__).resolve().parents[1]


def req(prompt="a cat", width=1024, height=1024, seed=0, batch=1, refs=0):
    return GenerationRequest(prompt, width, height, seed, references=(object(),) * refs, batch=batch)


def test_readme_carries_the_table_the_code_writes():
    assert rules_table() in (ROOT / "README.md").read_text(encoding="utf-8")


def test_seeds_are_seed_plus_i():
    assert req(seed=7, batch=3).seeds == [7, 8, 9]
    assert req(seed=7).seeds == [7]


def test_prompt_policy_differs_between_providers_and_local():
    pro = remote_rules(get_model("FLUX.2 [pro]"), "runware")
    with pytest.raises(InputError, match="prompt is empty"):
        validate_request(req(prompt="  "), pro)
    validate_request(req(prompt=""), local_rules("FLUX.2 [klein] 4B", 4))
    validate_request(req(prompt=""), comfy_rules("FLUX.2 (ComfyUI MODEL)"))
    with pytest.raises(InputError, match="prompt must be text"):
        validate_request(req(prompt=None), DEFAULT_RULES)
    with pytest.raises(InputError, match="takes at most 32000"):
        validate_request(req(prompt="x" * 32001), pro)


def test_batch_and_seed_ranges_differ_where_the_backends_do():
    pro = remote_rules(get_model("FLUX.2 [pro]"), "bfl")
    local = local_rules("FLUX.2 [klein] 4B", 4)
    with pytest.raises(InputError, match=r"batch must be 1\.\.8, got 9"):
        validate_request(req(batch=9), pro)
    validate_request(req(batch=16), local)
    with pytest.raises(InputError, match=r"batch must be 1\.\.16, got 17"):
        validate_request(req(batch=17), local)
    validate_request(req(seed=MAX_SEED - 1, batch=2), pro)
    with pytest.raises(InputError, match="image i uses seed \\+ i"):
        validate_request(req(seed=MAX_SEED - 1, batch=3), pro)
    validate_request(req(seed=MAX_SEED - 1, batch=3), local)      # torch generators take 64-bit seeds
    with pytest.raises(InputError, match="is outside 0.."):
        validate_request(req(seed=-1), local)


def test_sizes_and_references_come_from_the_model_table():
    dev = remote_rules(get_model("FLUX.2 [dev]"), "runware")
    assert dev.sizes.min_side == 512 and dev.max_refs == 4 and dev.name == "FLUX.2 [dev] on Runware"
    with pytest.raises(InputError, match=r"outside 512\.\.2048"):
        validate_request(req(width=256), dev)
    with pytest.raises(InputError, match="takes at most 4 reference images, got 5"):
        validate_request(req(refs=5), dev)


def test_local_presets_take_their_defaults_from_the_model_table():
    for name, preset in PRESETS.items():
        spec = MODELS[name]
        assert (preset.family, preset.default_steps, preset.default_guidance) == \
            (spec.family, spec.default_steps, spec.default_guidance or 0.0)


@pytest.mark.parametrize("aspect, mp, w, h", [("3:2", 1.5, 0, 0), ("custom", 1, 1000, 760), ("custom", 1, 5000, 300)])
@pytest.mark.parametrize("model", [None, "FLUX.2 [dev]"])
def test_flux2size_and_the_editor_resolve_a_size_the_same_way(aspect, mp, w, h, model):
    from comfyui_flux2.nodes import Flux2RemoteBackend

    backend = None
    if model:
        backend = Flux2RemoteBackend().build(provider="runware", model=model, prompt_upsampling=False,
                                             safety_tolerance=2, output_format="PNG", output_quality=95, steps=0,
                                             guidance=0.0, on_moderation="error")[0]
    node = Flux2Size().size(aspect, mp, w, h, backend=backend)["result"]
    fs = {"aspect_ratio": aspect, "megapixels": mp, "width": w, "height": h,
          "backend": {"provider": "runware", "model": model} if model else None}
    [item] = preview({"items": [{"id": 1, "kind": "size", "size": {"flux2_size": fs}}]})["items"]
    assert (item["width"], item["height"]) == node


COMFY_MODULES = {"comfy", "comfy_extras", "folder_paths", "server", "latent_preview", "node_helpers", "nodes"}


def _imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found


def test_only_comfy_hooks_and_the_comfy_backend_import_comfyui():
    touching = sorted(p.name for p in (ROOT / "nodes").glob("*.py") if _imports(p) & COMFY_MODULES)
    assert touching == ["comfy_backend.py", "comfy_hooks.py"]


def test_no_node_module_hides_an_exception_silently():
    """A broad except in nodes/ logs what it hides or raises; it never just passes or returns."""
    for path in (ROOT / "nodes").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.ExceptHandler):
                continue
            broad = node.type is None or (isinstance(node.type, ast.Name) and node.type.id in ("Exception",
                                                                                                 "BaseException"))
            if not broad:
                continue
            says = any(isinstance(n, ast.Raise) or (isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)
                                                    and getattr(n.func.value, "id", "") == "log")
                       for n in ast.walk(ast.Module(body=node.body, type_ignores=[])))
            assert says, f"{path.name}:{node.lineno} hides an exception"


@pytest.mark.parametrize("provider", ["runware", "bfl"])
def test_a_remote_backend_validates_by_its_rules(provider):
    from comfyui_flux2.nodes import Flux2RemoteBackend

    b = Flux2RemoteBackend().build(provider=provider, model="FLUX.2 [pro]", prompt_upsampling=False,
                                   safety_tolerance=2, output_format="PNG", output_quality=95, steps=0,
                                   guidance=0.0, on_moderation="error")[0]
    assert b.rules() == remote_rules(get_model("FLUX.2 [pro]"), provider)
    with pytest.raises(InputError, match=r"batch must be 1\.\.8, got 9"):
        b.validate(req(batch=9))
    with pytest.raises(InputError, match="prompt is empty"):
        b.validate(req(prompt=" "))


def test_local_presets_take_the_reference_count_the_table_shows():
    from comfyui_flux2.flux2.rules import LOCAL_MAX_REFS

    assert {p.max_refs for p in PRESETS.values()} == {LOCAL_MAX_REFS}


def test_batch_widgets_stop_where_every_backend_takes_the_batch():
    from comfyui_flux2.flux2.rules import WIDGET_MAX_BATCH
    from comfyui_flux2.nodes import NODE_CLASS_MAPPINGS

    every = [remote_rules(m, p) for m in MODELS.values() for p in m.providers]
    every += [local_rules("m", 4), comfy_rules("m")]
    assert WIDGET_MAX_BATCH == min(r.max_batch for r in every)
    for name in ("Flux2TextToImage", "Flux2Edit"):
        kind, spec = NODE_CLASS_MAPPINGS[name].INPUT_TYPES()["required"]["batch_size"]
        assert (kind, spec["min"], spec["max"]) == ("INT", 1, WIDGET_MAX_BATCH)


def test_provider_labels_come_from_the_rules_table_alone(monkeypatch):
    from comfyui_flux2.flux2 import rules
    from comfyui_flux2.flux2.remote.bfl import BflBackend
    from comfyui_flux2.flux2.remote.runware import RunwareBackend

    monkeypatch.setitem(rules.LABELS, "runware", "Runware (renamed)")
    monkeypatch.setitem(rules.LABELS, "bfl", "BFL (renamed)")
    assert RunwareBackend("FLUX.2 [pro]").describe() == "FLUX.2 [pro] on Runware (renamed) (bfl:5@1)"
    assert BflBackend("FLUX.2 [pro]").describe().startswith("FLUX.2 [pro] on BFL (renamed) (")
    assert BflBackend("FLUX.2 [pro]").rules().name == "FLUX.2 [pro] on BFL (renamed)"


def test_the_local_plan_names_the_seeds_generation_request_gives(monkeypatch, tmp_path):
    """The plan does not work out the seeds of a batch itself: change the rule and the plan follows."""
    from comfyui_flux2.flux2.local import backend as lb

    monkeypatch.setattr(GenerationRequest, "seeds",
                        property(lambda self: [self.seed + 10 * i for i in range(self.batch)]))
    backend = lb.LocalBackend("FLUX.2 [dev]", lb.LocalFiles(transformer=tmp_path / "missing.safetensors"))
    (call,) = backend.plan(GenerationRequest("x", 1024, 768, seed=5, batch=3))
    assert "1024x768, seed 5..25," in call.summary
