"""A request's rules run once on its way from a generation node to the provider (not once in the node, again in
flux2.backend.run and again in the backend's generate), and still run when the engine is called directly.

Counted by watching the one function that runs them (rules.validate_request), however a module imported it."""
from __future__ import annotations

import pickle
import shutil
import sys
import threading
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from comfyui_flux2.cli import node_registry
from comfyui_flux2.flux2 import rules
from comfyui_flux2.flux2.backend import GenerationRequest, run, validated
from comfyui_flux2.flux2.errors import InputError
from comfyui_flux2.flux2.images import ref_from_array
from comfyui_flux2.flux2.remote.bfl import BflBackend
from comfyui_flux2.flux2.remote.runware import RunwareBackend
from comfyui_flux2.flux2.run_context import RunContext
from comfyui_flux2.nodes import Flux2Edit, Flux2RemoteBackend, Flux2TextToImage
from comfyui_flux2.runner.run import plan_run, run_planned

WORKFLOWS = Path(__file__).resolve().parents[1] / "workflows"
GRAPH = {"3": {"class_type": "Flux2TextToImage", "inputs": {}}}     # ComfyUI's hidden PROMPT (no cap: not priced)


@contextmanager
def rule_runs():
    """A list that grows by one each time rules.validate_request runs, on any thread."""
    runs: list[str] = []
    target = rules.validate_request.__code__

    def watch(frame, event, arg):
        if event == "call" and frame.f_code is target:
            runs.append(frame.f_locals["rules"].name)

    previous = sys.getprofile()
    sys.setprofile(watch)
    threading.setprofile(watch)
    try:
        yield runs
    finally:
        sys.setprofile(previous)
        threading.setprofile(None)


def backend_node(provider: str, model: str):
    return Flux2RemoteBackend().build(provider=provider, model=model, prompt_upsampling=False, safety_tolerance=2,
                                      output_format="PNG", output_quality=95, steps=0, guidance=0.0,
                                      on_moderation="error")[0]


def image(w=64, h=64):
    return torch.rand(1, h, w, 3)


@pytest.mark.parametrize("graph", [None, GRAPH], ids=["headless", "comfyui"])
def test_text_to_image_node_runs_the_rules_once(runware, graph):
    with rule_runs() as runs:
        out = Flux2TextToImage().generate(backend_node("runware", "FLUX.2 [pro]"), "a cat", 512, 512, 3, 2,
                                          unique_id="4", graph_prompt=graph)
    assert out["result"][0].shape == (2, 512, 512, 3)
    assert runs == ["FLUX.2 [pro] on Runware"]


@pytest.mark.parametrize("provider", ["runware", "bfl"])
def test_edit_node_runs_the_rules_once(runware, bfl, provider):
    with rule_runs() as runs:
        out = Flux2Edit().edit(backend_node(provider, "FLUX.2 [pro]"), "make it blue", image(), 512, 512, 7, 1,
                               unique_id="5", graph_prompt=GRAPH)
    assert out["result"][0].shape == (1, 512, 512, 3)
    assert len(runs) == 1


def test_a_runner_run_checks_each_request_once_per_pass(runware, tmp_path):
    """The runner's dry pass and its real pass build a request each (the real one carries the real images
    from upstream); each is checked once: 3 generation nodes x 2 passes."""
    shutil.copytree(WORKFLOWS, tmp_path / "wf")
    with rule_runs() as planned:
        plan = plan_run(tmp_path / "wf" / "api" / "flux2_chain_edit.json", node_registry(), output_dir=tmp_path / "o")
    with rule_runs() as ran:
        outcome = run_planned(plan, output_dir=tmp_path / "o")
    assert outcome.error is None and len(outcome.saved) == 3
    assert (len(planned), len(ran)) == (3, 3)


def test_the_engine_called_directly_still_checks_and_refuses(runware, ctx):
    backend = RunwareBackend("FLUX.2 [pro]")
    with rule_runs() as runs:
        assert len(backend.generate(GenerationRequest("a cat", 512, 512, 1), ctx).images) == 1
    assert len(runs) == 1
    for bad in (GenerationRequest(" ", 512, 512, 1), GenerationRequest("a cat", 500, 512, 1)):
        with pytest.raises(InputError):
            backend.generate(bad, ctx)
        with pytest.raises(InputError):
            run(backend, bad, ctx)
    assert runware.tasks("imageInference") and len(runware.tasks("imageInference")) == 1


def test_a_dry_run_checks_once(ctx):
    with rule_runs() as runs:
        run(BflBackend("FLUX.2 [pro]"), GenerationRequest("a cat", 512, 512, 1), RunContext(dry_run=True))
    assert len(runs) == 1


def test_a_checked_request_is_trusted_only_by_the_backend_that_checked_it(runware, ctx):
    one, other = RunwareBackend("FLUX.2 [pro]"), RunwareBackend("FLUX.2 [pro]")
    request = GenerationRequest("a cat", 512, 512, 1)
    with rule_runs() as runs:
        checked = validated(one, request)
        assert validated(one, checked) is checked and checked == request
        validated(other, checked)                                   # another backend checks it for itself
        changed = replace(checked, seed=2)                          # a changed request is a new one
        validated(one, changed)
    assert len(runs) == 3
    # The proof does not travel: an unpickled request (another process) is a plain one, checked again.
    back = pickle.loads(pickle.dumps(checked))
    assert type(back) is GenerationRequest and back == request


def test_a_request_checked_for_a_backend_that_refuses_it_is_refused_there(ctx):
    """FLUX 3.1 takes a mask and FLUX.2 [pro] does not: a request checked on one is checked again on the other."""
    mask = ref_from_array(np.zeros((512, 512, 3), np.uint8))
    request = GenerationRequest("x", 512, 512, 1, references=(ref_from_array(np.zeros((512, 512, 3), np.uint8)),),
                                mask=mask)
    checked = validated(BflBackend("FLUX 3.1 Image"), request)
    with pytest.raises(InputError, match="takes no mask"):
        run(BflBackend("FLUX.2 [pro]"), checked, RunContext(dry_run=True))


def test_counting_sees_every_run_of_the_rules():
    """The watch itself: it counts a direct call (so a count of 1 above is not a watch that sees nothing)."""
    with rule_runs() as runs:
        rules.validate_request(GenerationRequest("x", 512, 512, 1), rules.DEFAULT_RULES)
        with pytest.raises(InputError):
            rules.validate_request(GenerationRequest("x", 500, 512, 1), rules.DEFAULT_RULES)
    assert runs == ["FLUX.2", "FLUX.2"]
