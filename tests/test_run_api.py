"""runner/run.py, the one run path the CLI prints: plan -> budget -> run -> keep what was paid, for Python
callers too. A run that fails hands back what it left (paid images kept, money, the error) instead of losing it."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from comfyui_flux2.cli import node_registry
from comfyui_flux2.flux2.budget import Cap
from comfyui_flux2.flux2.errors import BudgetError, ProviderError
from comfyui_flux2.runner.run import check_budget, plan_run, run_planned

WORKFLOWS = Path(__file__).resolve().parents[1] / "workflows"


def chain(tmp_path: Path, **changes) -> Path:
    shutil.copytree(WORKFLOWS, tmp_path / "wf")
    path = tmp_path / "wf" / "api" / "flux2_chain_edit.json"
    data = json.loads(path.read_text())
    for node, inputs in changes.items():
        data[node]["inputs"].update(inputs)
    path.write_text(json.dumps(data))
    return path


def test_a_planned_run_returns_what_it_saved_and_billed(runware, tmp_path):
    plan = plan_run(chain(tmp_path), node_registry(), output_dir=tmp_path / "o")
    assert runware.requests == [] and plan.total_usd > 0           # planning sends nothing
    outcome = run_planned(plan, output_dir=tmp_path / "o")
    assert outcome.error is None and outcome.kept == []
    assert sorted(p.name for p in outcome.saved) == sorted(p.name for p in (tmp_path / "o").rglob("*.png"))
    assert len(outcome.saved) == 3 and outcome.billed_usd == pytest.approx(plan.total_usd) == 0.12


def test_a_failed_run_hands_back_the_paid_image_and_the_error(runware, tmp_path):
    path = chain(tmp_path, **{"5": {"prompt": "forbidden-content"}, "7": {"images": ["3", 0]}})
    outcome = run_planned(plan_run(path, node_registry(), output_dir=tmp_path / "o"), output_dir=tmp_path / "o")
    assert isinstance(outcome.error, ProviderError) and "contentPolicyViolation" in str(outcome.error)
    assert [p.name for p in outcome.kept] == ["node4_seed5150.png"] and outcome.kept[0].is_file()
    assert outcome.billed_usd == pytest.approx(0.075)


def test_a_failed_run_names_what_the_graph_saved_before_it_failed(runware, tmp_path):
    """Before: a failed run's outcome listed no saved file, though SaveImage had written the first image."""
    path = chain(tmp_path, **{"5": {"prompt": "forbidden-content"}})
    outcome = run_planned(plan_run(path, node_registry(), output_dir=tmp_path / "o"), output_dir=tmp_path / "o")
    assert isinstance(outcome.error, ProviderError)
    on_disk = sorted(p for p in (tmp_path / "o").rglob("*.png") if "flux2-unsaved" not in p.parts)
    assert on_disk and sorted(outcome.saved) == on_disk


def test_the_budget_is_checked_on_the_plan_before_anything_is_sent(runware, tmp_path):
    plan = plan_run(chain(tmp_path), node_registry(), output_dir=tmp_path / "o")
    with pytest.raises(BudgetError):
        check_budget(plan, Cap(0.01, "the budget cap"))
    assert runware.requests == []
