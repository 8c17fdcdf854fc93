"""The budget cap (--budget / FLUX2_BUDGET_USD): validated, never bypassed by a model without a price,
the same rule in the CLI and inside ComfyUI. Against the loopback Runware server, which bills
[dev]/[klein] at a fixed made-up UNPRICED_COST (Runware publishes no per-MP price for them)."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from comfyui_flux2.cli import main
from comfyui_flux2.flux2.errors import BudgetError
from comfyui_flux2.loopback.runware_server import UNPRICED_COST


def backend(model: str) -> dict:
    return {"class_type": "Flux2RemoteBackend",
            "inputs": {"provider": "runware", "model": model, "prompt_upsampling": False, "safety_tolerance": 2,
                       "output_format": "PNG", "output_quality": 95, "steps": 0, "guidance": 0.0,
                       "on_moderation": "error"}}


def graph(model: str = "FLUX.2 [dev]", batch: int = 1) -> dict:
    return {"1": backend(model),
            "2": {"class_type": "Flux2TextToImage",
                  "inputs": {"backend": ["1", 0], "prompt": "a teapot", "width": 512, "height": 512, "seed": 1,
                             "batch_size": batch}},
            "3": {"class_type": "Flux2Edit",
                  "inputs": {"backend": ["1", 0], "prompt": "make it blue", "reference_1": ["2", 0], "width": 0,
                             "height": 0, "seed": 1, "batch_size": 1}},
            "4": {"class_type": "SaveImage", "inputs": {"images": ["3", 0], "filename_prefix": "b"}}}


def run(tmp_path: Path, workflow: dict, *extra: str) -> int:
    path = tmp_path / "w.json"
    path.write_text(json.dumps(workflow))
    return main(["run", str(path), "--output-dir", str(tmp_path / "out"), *extra])


@pytest.mark.parametrize("model", ["FLUX.2 [dev]", "FLUX.2 [klein] 4B"])
def test_unpriced_model_is_refused_under_a_cap(runware, tmp_path, capsys, model):
    assert run(tmp_path, graph(model), "--budget", "0") == 1
    err = capsys.readouterr().err
    assert "2 call(s) without a published price (node 2, 3)" in err and "--allow-unpriced" in err
    assert runware.requests == []


def test_unpriced_model_is_refused_under_the_environment_cap(runware, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("FLUX2_BUDGET_USD", "5")
    assert run(tmp_path, graph()) == 1
    assert "FLUX2_ALLOW_UNPRICED=1" in capsys.readouterr().err
    assert runware.requests == []
    monkeypatch.setenv("FLUX2_ALLOW_UNPRICED", "1")
    assert run(tmp_path, graph()) == 0
    assert len(runware.tasks("imageInference")) == 2


def test_without_a_cap_unpriced_models_run(runware, tmp_path):
    assert run(tmp_path, graph()) == 0


def test_opted_in_unpriced_calls_count_what_was_billed_against_the_cap(runware, tmp_path, capsys):
    """Node 2 bills 2 x UNPRICED_COST, over a cap of 1.5 x; node 3 is then refused before it is sent."""
    cap = str(UNPRICED_COST * 1.5)
    assert run(tmp_path, graph(batch=2), "--budget", cap, "--allow-unpriced") == 1
    err = capsys.readouterr().err
    assert "the run so far is estimated at" in err and "over the budget cap" in err
    assert len(runware.tasks("imageInference")) == 2          # node 2's batch only
    assert f"billed ${UNPRICED_COST * 2:.4f}".rstrip("0") in err
    assert sorted(p.name for p in (tmp_path / "out" / "flux2-unsaved").iterdir()) == ["node2_seed1.png",
                                                                                     "node2_seed2.png"]


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "-1", "-0.01", "abc", "1e300", ""])
def test_invalid_budget_flag_is_one_line(tmp_path, capsys, value):
    assert run(tmp_path, graph("FLUX.2 [pro]"), f"--budget={value}", "--dry-run") == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --budget must be a number of US dollars") and "\n" not in err


@pytest.mark.parametrize("value", ["nan", "-1", "inf", "ten"])
def test_invalid_budget_environment_is_one_line(tmp_path, capsys, monkeypatch, value):
    monkeypatch.setenv("FLUX2_BUDGET_USD", value)
    assert run(tmp_path, graph("FLUX.2 [pro]"), "--dry-run") == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: FLUX2_BUDGET_USD must be a number of US dollars") and "\n" not in err


def test_priced_graph_within_the_cap_runs(runware, tmp_path):
    assert run(tmp_path, graph("FLUX.2 [pro]"), "--budget", "0.075") == 0


def test_comfyui_node_refuses_an_unpriced_graph_under_the_cap(runware, monkeypatch):
    """Inside ComfyUI: the same rule, through the same graph pricing (runner.pricing.plan_graph)."""
    from comfyui_flux2.flux2.remote.options import RemoteOptions
    from comfyui_flux2.flux2.remote.runware import RunwareBackend
    from comfyui_flux2.nodes.generate_nodes import Flux2TextToImage

    dev = RunwareBackend("FLUX.2 [dev]", RemoteOptions())
    prompt = graph()
    monkeypatch.setenv("FLUX2_BUDGET_USD", "1")
    with pytest.raises(BudgetError, match=r"this graph has 2 call\(s\) without a published price"):
        Flux2TextToImage().generate(dev, "a teapot", 512, 512, 1, 1, unique_id="2", graph_prompt=prompt)
    foreign = {"1": {"class_type": "SomeOtherPackNode", "inputs": {}}}    # cannot be priced: node by node
    with pytest.raises(BudgetError, match=r"this node has 1 call\(s\) without a published price \(node 2\)"):
        Flux2TextToImage().generate(dev, "a teapot", 512, 512, 1, 1, unique_id="2", graph_prompt=foreign)
    assert runware.requests == []
    monkeypatch.setenv("FLUX2_ALLOW_UNPRICED", "1")
    out = Flux2TextToImage().generate(dev, "a teapot", 512, 512, 1, 1, unique_id="2", graph_prompt=prompt)
    assert out["result"][2] == pytest.approx(UNPRICED_COST)


@pytest.mark.slow   # subprocesses / whole benchmark runs: over 4 s; CI runs it (--run-slow)
def test_budget_environment_is_read_in_one_place():
    """FLUX2_BUDGET_USD is parsed only by flux2/budget.py (the CLI and the nodes both ask it)."""
    root = Path(__file__).resolve().parents[1]
    readers = [p.relative_to(root).as_posix() for p in root.rglob("*.py")
               if ".cache" not in p.parts and "tests" not in p.parts
               and re.search(r"environ.*(FLUX2_BUDGET_USD|CAP_ENV)", p.read_text())]
    assert readers == ["flux2/budget.py"]
