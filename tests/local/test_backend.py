"""LocalBackend through the Backend protocol (run(), progress, cancel, cache) and the Flux2LocalBackend node."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from comfyui_flux2.flux2.backend import GenerationRequest, run
from comfyui_flux2.flux2.errors import Cancelled
from comfyui_flux2.flux2.images import ref_from_array
from comfyui_flux2.flux2.local import backend as lb
from comfyui_flux2.flux2.local.model import params
from comfyui_flux2.flux2.run_context import RunContext

TINY = params.tiny_preset("klein", True)


def make_backend(root, **kw):
    files = lb.LocalFiles(diffusers_dir=root / "diffusers" / "flux2-tiny")
    return lb.LocalBackend("FLUX.2 [klein] 4B", files, dtype="fp32", device="cpu", preset=TINY, **kw)


def test_run_generates_batch_with_progress_and_caches(klein, monkeypatch):
    _, root, _ = klein
    lb.clear_cache()
    loads = []
    from comfyui_flux2.flux2.local.weights import loading

    real = loading.load_modules
    monkeypatch.setattr(loading, "load_modules", lambda *a, **k: loads.append(1) or real(*a, **k))
    events = []
    ctx = RunContext(progress=lambda node, done, total, msg: events.append((node, done, total)))
    b = make_backend(root, steps=2)
    req = GenerationRequest("a red cat", 80, 64, seed=41, batch=2, node_id="7")
    res = run(b, req, ctx)
    assert res.seeds == [41, 42] and res.cost_usd == 0.0
    assert len(res.images) == 2 and res.images[0].shape == (64, 80, 3) and res.images[0].dtype == np.uint8
    assert not np.array_equal(res.images[0], res.images[1])
    assert ("7", 1, 2) in events and ("7", 2, 2) in events
    # a second node with the same files reuses the loaded weights; image of seed 42 alone = 2nd of the batch
    res2 = run(make_backend(root, steps=2), GenerationRequest("a red cat", 80, 64, seed=42, node_id="8"), ctx)
    # (batched matmuls round differently from single ones: within one 8-bit level)
    assert np.abs(res2.images[0].astype(int) - res.images[1].astype(int)).max() <= 1
    assert len(loads) == 1
    assert ctx.ledger.billed_total == 0.0


def test_cancel_between_steps(klein):
    _, root, _ = klein
    calls = {"n": 0}

    def cancelled():
        calls["n"] += 1
        return calls["n"] > 3
    ctx = RunContext(is_cancelled=cancelled)
    with pytest.raises(Cancelled):
        run(make_backend(root, steps=4), GenerationRequest("x", 64, 64, seed=1), ctx)


def test_edit_request_with_references(klein):
    _, root, _ = klein
    rng = np.random.default_rng(0)
    refs = tuple(ref_from_array(rng.integers(0, 255, (72, 80, 3), dtype=np.uint8)) for _ in range(2))
    res = run(make_backend(root, steps=2), GenerationRequest("make it green", 80, 64, seed=3, references=refs),
              RunContext())
    assert res.images[0].shape == (64, 80, 3)


def test_dry_run_plans_without_loading(tmp_path):
    b = lb.LocalBackend("FLUX.2 [dev]", lb.LocalFiles(transformer=tmp_path / "missing.safetensors"))
    ctx = RunContext(dry_run=True)
    res = run(b, GenerationRequest("x", 1024, 768, seed=5, batch=2), ctx)
    assert res.info["dry_run"]
    call, est = ctx.planned[0]
    assert call.backend == "local" and "1024x768, seed 5..6, 28 steps, guidance 4" in call.summary
    assert est.usd == 0.0
    assert any("missing.safetensors" in w for w in ctx.warnings)


def test_node_inputs_and_build(klein, monkeypatch):
    from comfyui_flux2.nodes.local_backend import NODE_CLASS_MAPPINGS, Flux2LocalBackend

    assert NODE_CLASS_MAPPINGS == {"Flux2LocalBackend": Flux2LocalBackend}
    _, root, _ = klein
    monkeypatch.setenv("FLUX2_MODELS_DIR", str(root))
    spec = Flux2LocalBackend.INPUT_TYPES()["required"]
    assert all("tooltip" in opts for _, opts in spec.values())
    assert "flux2-tiny.safetensors" in spec["diffusion_model"][0]
    assert "tiny-te.safetensors" in spec["text_encoder"][0]
    assert "flux2-tiny" in spec["diffusers_folder"][0]
    (backend,) = Flux2LocalBackend().build("FLUX.2 [klein] 4B", "flux2-tiny.safetensors", "tiny-te.safetensors",
                                           "flux2-tiny-vae.safetensors", "(none)", "fp32", "cpu", 3, 0.0, "none")
    assert backend.kind == "local" and backend.effective_steps == 3
    assert backend.files.transformer.name == "flux2-tiny.safetensors"
    with pytest.raises(Exception, match="relative"):
        Flux2LocalBackend().build("FLUX.2 [klein] 4B", "../../etc/passwd", "(from diffusers folder)",
                                  "(from diffusers folder)", "(none)", "fp32", "cpu", 0, 0.0, "none")


def test_nodes_on_local_weights_run_the_rules_once_per_request(klein, monkeypatch):
    """Flux2TextToImage and Flux2Edit as ComfyUI calls them (with the graph): the request is checked before the
    budget, and neither run() nor generate() checks it again (it was three times)."""
    from comfyui_flux2.nodes import Flux2Edit, Flux2TextToImage

    _, root, _ = klein
    runs = []
    real = lb.validate_request
    monkeypatch.setattr(lb, "validate_request",
                        lambda request, rules: runs.append(request.node_id) or real(request, rules))
    graph = {"1": {"class_type": "Flux2TextToImage", "inputs": {}}}
    b = make_backend(root, steps=2)
    made = Flux2TextToImage().generate(b, "a red cat", 80, 64, 1, 1, unique_id="1", graph_prompt=graph)["result"][0]
    (edited, _, _) = Flux2Edit().edit(b, "make it blue", made, 0, 0, 2, 1, unique_id="2", graph_prompt=graph)["result"]
    assert edited.shape == (1, 64, 80, 3) and runs == ["1", "2"]
