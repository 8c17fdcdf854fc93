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
    """Node 2's first image shows what [dev] costs (UNPRICED_COST); its second would take the run past a
    cap of 1.5 x that, so it is not sent, and node 3 never runs. The paid image is kept."""
    cap = str(UNPRICED_COST * 1.5)
    assert run(tmp_path, graph(batch=2), "--budget", cap, "--allow-unpriced") == 1
    err = capsys.readouterr().err
    # Either image may be the one that goes first (both ask the gate at once); the other is not started.
    refused = re.search(r"image ([12]) \(seed \1\) not started: \$0\.0038 for 1 call\(s\) without a published "
                        r"price \(the highest charge seen for one\) on top of \$0\.0038 billed and in flight would "
                        r"pass the budget cap \$0\.0057", err)
    assert refused, err
    assert len(runware.tasks("imageInference")) == 1 and runware.billed == pytest.approx(UNPRICED_COST)
    assert f"billed ${UNPRICED_COST:.4f}".rstrip("0") in err
    kept_seed = 3 - int(refused.group(1))
    assert sorted(p.name for p in (tmp_path / "out" / "flux2-unsaved").iterdir()) == [f"node2_seed{kept_seed}.png"]


def t2i(model: str = "FLUX.2 [dev]", batch: int = 8) -> dict:
    """One generation node of `batch` images, saved."""
    return {"1": backend(model),
            "2": {"class_type": "Flux2TextToImage", "_meta": {"title": "Make"},
                  "inputs": {"backend": ["1", 0], "prompt": "a teapot", "width": 512, "height": 512, "seed": 1,
                             "batch_size": batch}},
            "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "b"}}}


@pytest.mark.parametrize("cap,tasks", [(0, 0), (UNPRICED_COST * 0.5, 1), (UNPRICED_COST * 2.5, 2)])
def test_run_holds_the_cap_image_by_image_on_an_unpriced_model(runware, tmp_path, capsys, cap, tasks):
    """A [dev] batch of 8 under a cap, opted in: the first image alone shows the price (it starts only while
    some of the cap is left), then images start while billed + in flight + the highest charge seen fit.
    Before the gate, all 8 were sent whatever the cap (billed 8 x the price)."""
    runware.task_s = 0.05                      # tasks overlap, as they do at the provider
    assert run(tmp_path, t2i(), "--budget", str(cap), "--allow-unpriced") == 1
    err = capsys.readouterr().err
    assert len(runware.billed_tasks) == tasks
    assert runware.billed <= max(cap, UNPRICED_COST) + 1e-9      # the first image may pass: its price was unknown
    assert "not started" in err and err.strip().splitlines()[-1].startswith("error: node 2")
    if cap == 0:
        assert "without a published price (its cost is only known once billed) with $0 of the budget cap $0" in err
    else:
        assert f"{tasks} of 8 image(s) kept" in err
        assert len(list((tmp_path / "out" / "flux2-unsaved").iterdir())) == tasks


def test_run_under_a_cap_learns_a_price_the_provider_raised(runware, tmp_path, capsys):
    """[pro] at 512x512 is estimated at $0.03 a task; the provider charges $0.10. The first task runs alone
    and shows it, so a cap of $0.25 holds 2 tasks, not the 8 the estimate allowed ($0.24) all at once."""
    runware.charge_usd, runware.task_s = 0.10, 0.05
    assert run(tmp_path, t2i("FLUX.2 [pro]"), "--budget", "0.25") == 1
    err = capsys.readouterr().err
    assert runware.billed == pytest.approx(0.20) and len(runware.billed_tasks) == 2
    assert "(the price table x 3.33, what the provider charged over it)" in err


def batch_run(tmp_path: Path, workflow: dict, rows: int, *extra: str) -> int:
    path = tmp_path / "w.json"
    path.write_text(json.dumps(workflow))
    table = tmp_path / "rows.csv"
    table.write_text("Make.prompt\n" + "".join(f"row {i}\n" for i in range(rows)))
    return main(["batch", str(path), "--table", str(table), "--output-dir", str(tmp_path / "out"), *extra])


def test_batch_holds_the_cap_on_an_unpriced_model(runware, tmp_path, capsys):
    """8 one-image [dev] items under a cap of 3.5 x the price: 3 run (the first alone), 5 are not started.
    Before the gate the unpriced items counted $0 each and all 8 ran."""
    runware.task_s = 0.05
    cap = UNPRICED_COST * 3.5
    assert batch_run(tmp_path, t2i(batch=1), 8, "--budget", str(cap), "--allow-unpriced") == 1
    err = capsys.readouterr().err
    assert len(runware.billed_tasks) == 3 and runware.billed <= cap
    assert "3 ok, 0 failed" in err and "5 item(s) not started" in err


def test_batch_holds_the_cap_when_the_provider_charges_over_the_price_table(runware, tmp_path, capsys):
    """12 [pro] items estimated at $0.03, charged $0.10, cap $0.40 (the estimate, $0.36, fits): the first item
    runs alone and shows the real price; 4 items run in all, billed $0.40. Before: $0.90 billed."""
    runware.charge_usd, runware.task_s = 0.10, 0.05
    assert batch_run(tmp_path, t2i("FLUX.2 [pro]", batch=1), 12, "--budget", "0.40") == 1
    err = capsys.readouterr().err
    assert runware.billed == pytest.approx(0.40) and len(runware.billed_tasks) == 4
    assert "8 item(s) not started (the next: $0.1 estimated (the price table x 3.33" in err


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


def test_budget_environment_is_read_in_one_place():
    """FLUX2_BUDGET_USD is parsed only by flux2/budget.py (the CLI and the nodes both ask it)."""
    root = Path(__file__).resolve().parents[1]
    # the pack's folders and top-level files (a walk of the whole root also went through .venv: seconds)
    files = [*root.glob("*.py"), *(p for d in ("flux2", "runner", "nodes", "cli", "bench", "loopback")
                                   for p in (root / d).rglob("*.py"))]
    readers = [p.relative_to(root).as_posix() for p in files
               if re.search(r"environ.*(FLUX2_BUDGET_USD|CAP_ENV)", p.read_text())]
    assert readers == ["flux2/budget.py"]


def test_the_gate_waits_for_a_first_charge_then_counts_the_highest_seen():
    """The gate alone: a second unpriced task waits while the first is in flight (its price is unknown), then
    each counts at the highest charge seen; a priced task counts at its table price x the worst ratio seen."""
    import threading

    from comfyui_flux2.flux2.budget import BudgetGate, Cap

    gate = BudgetGate(Cap(1.0, "the budget cap", allow_unpriced=True))
    first = gate.admit(None)
    admitted = []
    waiter = threading.Thread(target=lambda: admitted.append(gate.admit(None)))
    waiter.start()
    waiter.join(0.3)
    assert waiter.is_alive() and admitted == []              # waits: the first charge is not in yet
    first.ended(0.3, True)
    waiter.join(5)
    assert len(admitted) == 1 and gate.committed_usd == pytest.approx(0.6)   # billed 0.3 + 0.3 in flight
    third = gate.admit(None)                                  # 0.9 of 1.0
    with pytest.raises(BudgetError, match=r"not started: \$0.3 for 1 call\(s\) without a published price"):
        gate.admit(None)
    for task in (admitted[0], third):
        task.ended(0.1, True)                                 # cheaper than feared: the highest stays 0.3
    assert gate.committed_usd == pytest.approx(0.5)
    priced = gate.admit(0.05)                                 # the first priced task runs alone...
    priced.ended(0.1, False)                                  # ...and was not charged (refused): not learnt
    priced = gate.admit(0.05)
    priced.ended(0.15, True)                                  # charged 3x the table
    with pytest.raises(BudgetError, match=r"\$0.6 estimated \(the price table x 3.00"):
        gate.admit(0.2)                                       # 0.65 billed + 0.6 > 1.0
    assert gate.admit(0.1).unit == 0.1                        # 0.65 + 0.3 fits


def test_results_served_from_the_cache_pass_a_zero_cap(runware, tmp_path, capsys):
    """What the result cache serves costs nothing: a re-run of a paid graph under --budget 0 is served whole."""
    assert run(tmp_path, t2i("FLUX.2 [pro]", batch=2)) == 0
    assert run(tmp_path, t2i("FLUX.2 [pro]", batch=2), "--budget", "0") == 0
    assert len(runware.billed_tasks) == 2


def test_jobs_the_cache_serves_are_not_asked_of_the_gate():
    """run_jobs: jobs served for free (result cache, an earlier run's task) start whatever the cap; a paid one
    under a $0 cap is refused, and no later job starts."""
    from comfyui_flux2.flux2.budget import BudgetGate, Cap
    from comfyui_flux2.flux2.remote.jobs import Job, run_jobs
    from comfyui_flux2.flux2.run_context import RunContext

    jobs = [Job(i, i, body=None) for i in range(4)]
    worked = []
    ctx = RunContext(gate=BudgetGate(Cap(0.0, "the budget cap")))
    outcome = run_jobs(jobs, lambda job, control: worked.append(job.index), ctx=ctx, node="2", label="x",
                       concurrency=1, cancel_grace_s=None, unit_usd=0.03, cached=lambda job: job.index < 2)
    assert outcome == "done" and worked == []
    assert [type(j.error).__name__ if j.error else None for j in jobs] == [None, None, "BudgetError", None]
    assert "x: image 3 (seed 2) not started: $0.03 estimated on top of $0 billed" in str(jobs[2].error)


def test_a_task_whose_answer_was_lost_counts_at_the_worst_ratio_seen_later():
    """A priced task charged but its price never said (its answer lost) counts at the table price times the
    worst charged/estimate ratio seen - also one learnt after it ended - like a task not yet started, so
    the cap holds when the provider charges more than the table."""
    from comfyui_flux2.flux2.budget import BudgetGate, Cap

    gate = BudgetGate(Cap(0.25, "the budget cap"))
    lost = gate.admit(0.03)
    lost.ended(None, True)                                    # sent, billed, its answer lost: price unknown
    assert gate.committed_usd == pytest.approx(0.03)          # nothing learnt yet: the table price
    charged = gate.admit(0.03)
    charged.ended(0.09, True)                                 # the provider charges 3x the table
    assert gate.committed_usd == pytest.approx(0.18)          # the lost one too is now feared at 0.09
    with pytest.raises(BudgetError, match=r"\$0.09 estimated .* on top of \$0.18 billed and in flight"):
        gate.admit(0.03)                                      # 0.18 + 0.09 > 0.25 (was let through at 0.12)
    ticket = gate.try_admit([0.01])                           # a batch item's ticket: the same rule
    task = ticket.admit(0.01)
    task.ended(None, True)
    ticket.close()
    assert gate.committed_usd == pytest.approx(0.21)


def test_an_item_run_on_a_ray_actor_books_its_bill_on_the_batch_gate(tmp_path):
    """A Ray actor runs the item in another process, where the batch's gate sees none of its tasks. Before, its
    ticket closed with $0 charged: the gate forgot what the item's Runware/BFL tasks cost, and later items
    started as if that money were still there."""
    import queue
    import types

    from comfyui_flux2.flux2.budget import BudgetGate, Cap
    from comfyui_flux2.runner.batch.executors import ItemOutcome
    from comfyui_flux2.runner.batch.ray_executor import RayItemRun

    class Errors:
        RayActorError = type("RayActorError", (Exception,), {})
        RayError = Exception

    outcome = ItemOutcome("r1", "ok", billed_usd=0.09)
    actor = types.SimpleNamespace(run=types.SimpleNamespace(remote=lambda item: "ref"))
    ray = types.SimpleNamespace(wait=lambda refs, timeout: (refs, []), get=lambda ref: (outcome, {}),
                                exceptions=Errors)
    pool = types.SimpleNamespace(ray=ray, actors=[actor], busy={}, idle=queue.Queue(), take=lambda: actor,
                                 env=types.SimpleNamespace(output_dir=tmp_path))
    gate = BudgetGate(Cap(0.10, "the budget cap"))
    ticket = gate.try_admit([0.03])
    assert RayItemRun(pool, types.SimpleNamespace(id="r1"), ticket).run().billed_usd == 0.09
    ticket.close()
    assert gate.billed == pytest.approx(0.09)
    assert isinstance(gate.try_admit([0.03]), str)          # $0.09 billed + $0.03 would pass $0.10
