"""`comfyui-flux2 batch`: tables, bad rows, estimate and budget, manifest and resume, concurrency, the
Python API. Against the loopback Runware server (Runware's documented protocol)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from comfyui_flux2.cli import main, node_registry
from comfyui_flux2.runner.batch import Batch
from comfyui_flux2.runner.batch.table import parse_seeds, read_table
from comfyui_flux2.flux2.errors import InputError

ROOT = Path(__file__).resolve().parents[1]
WORKFLOWS = ROOT / "workflows"


def small_workflow(folder: Path, **t2i) -> Path:
    """Runware FLUX.2 [pro] text-to-image at 256x256 (quick to render), titled nodes, API format."""
    prompt = {
        "1": {"class_type": "Flux2RemoteBackend", "_meta": {"title": "Backend"},
              "inputs": {"provider": "runware", "model": "FLUX.2 [pro]", "prompt_upsampling": False,
                         "safety_tolerance": 2, "output_format": "PNG", "output_quality": 95, "steps": 0,
                         "guidance": 0.0, "on_moderation": "error"}},
        "3": {"class_type": "Flux2TextToImage", "_meta": {"title": "Make"},
              "inputs": {"backend": ["1", 0], "prompt": "a lighthouse", "width": 256, "height": 256, "seed": 5,
                         "batch_size": 1, **t2i}},
        "4": {"class_type": "SaveImage", "_meta": {"title": "Save"},
              "inputs": {"images": ["3", 0], "filename_prefix": "cat/item"}},
    }
    path = folder / "wf.json"
    path.write_text(json.dumps(prompt))
    return path


def write_csv(folder: Path, text: str, name: str = "rows.csv") -> Path:
    path = folder / name
    path.write_text(text)
    return path


def records(out: Path) -> dict:
    lines = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    return {r["item"]: r for r in lines}


def batch(*args) -> int:
    return main(["batch", *map(str, args)])


# -- tables -------------------------------------------------------------------------------------
def test_csv_and_jsonl_tables_give_the_same_rows(tmp_path):
    csv_rows, _ = read_table(write_csv(tmp_path, '3.prompt,Make.seed\n"a, b",7\n\n"x ""y""",\n'))
    (tmp_path / "rows.jsonl").write_text('{"3.prompt": "a, b", "Make.seed": "7"}\n\n{"3.prompt": "x \\"y\\""}\n')
    jsonl_rows, _ = read_table(tmp_path / "rows.jsonl")
    assert [r.values for r in csv_rows] == [r.values for r in jsonl_rows] == [
        {"3.prompt": "a, b", "Make.seed": "7"}, {"3.prompt": 'x "y"'}]
    assert [r.number for r in csv_rows] == [1, 3] and [r.number for r in jsonl_rows] == [1, 3]


@pytest.mark.parametrize("name, content, message", [
    ("rows.txt", "3.prompt\nx\n", "is not CSV or JSONL"),
    ("rows.csv", b"\xff\xfe3.prompt\n", "is not UTF-8"),
    ("rows.csv", "", "no header row"),
    ("rows.csv", "3.prompt,3.prompt\nx,y\n", "names column '3.prompt' twice"),
    ("rows.jsonl", "\n\n", "has no rows"),
])
def test_a_table_that_is_not_csv_or_jsonl_is_one_line(tmp_path, capsys, runware, name, content, message):
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    assert batch(small_workflow(tmp_path), "--table", path, "--output-dir", tmp_path / "o") == 1
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert runware.requests == []


def test_seeds_parse():
    assert parse_seeds("3-5") == [3, 4, 5] and parse_seeds("9") == [9]
    for bad in ("5-3", "a-b", "-1", "1-2-3", "0-4294967296"):
        with pytest.raises(InputError):
            parse_seeds(bad)


# -- bad rows -----------------------------------------------------------------------------------
BAD_TABLE = (
    "Make.prompt,Make.width,9.image,Make.seed\n"
    "good one,256,,1\n"                        # row 1: fine
    "bad size,250,,2\n"                        # row 2: not a multiple of 16
    "no such file,256,missing.png,3\n"         # row 3: a column naming no node, and a missing file
    "good two,256,,4\n"                        # row 4: fine, but column 9.image is bad for every row that sets it
    "not a number,256,,x\n"                    # row 5: a seed that is not a number
)


def test_bad_rows_are_reported_one_line_each_before_anything_is_sent(runware, tmp_path, capsys):
    wf = small_workflow(tmp_path)
    table = write_csv(tmp_path, BAD_TABLE)
    assert batch(wf, "--table", table, "--output-dir", tmp_path / "o") == 1
    err = capsys.readouterr().err
    bad = [line.strip() for line in err.splitlines() if line.startswith("  bad row")]
    assert len(bad) == 3, err
    assert bad[0].startswith("bad row 2: ") and "multiple of 16" in bad[0]
    assert bad[1].startswith("bad row 3: ") and "no node has id or title '9'" in bad[1]
    assert bad[2].startswith("bad row 5: ") and "must be a whole number" in bad[2]
    assert "3 bad row(s), listed above; nothing was sent" in err
    assert runware.requests == [] and not (tmp_path / "o" / "manifest.jsonl").exists()


def test_skip_bad_rows_runs_the_others(runware, tmp_path, capsys):
    wf = small_workflow(tmp_path)
    table = write_csv(tmp_path, BAD_TABLE)
    out = tmp_path / "o"
    assert batch(wf, "--table", table, "--output-dir", out, "--skip-bad-rows") == 0
    assert sorted(records(out)) == ["r1", "r4"]
    assert sorted(t["positivePrompt"] for t in runware.tasks("imageInference")) == ["good one", "good two"]
    assert sorted(t["seed"] for t in runware.tasks("imageInference")) == [1, 4]


def test_missing_reference_file_and_unknown_input_are_bad_rows(runware, tmp_path, capsys):
    """A LoadImage column takes reference paths relative to the table's folder."""
    shutil.copy(WORKFLOWS / "flux2_example_ref_1.png", tmp_path / "ref.png")
    wf = json.loads((WORKFLOWS / "api" / "flux2_local_references_edit.json").read_text())
    loads = sorted(k for k, v in wf.items() if v["class_type"] == "LoadImage")
    (tmp_path / "edit.json").write_text(json.dumps(wf))
    table = write_csv(tmp_path, f"{loads[0]}.image,{loads[1]}.imag\nref.png,\nnope.png,\n,x.png\n")
    shutil.copy(WORKFLOWS / "flux2_example_ref_2.png", tmp_path / "flux2_example_ref_2.png")
    shutil.copy(WORKFLOWS / "flux2_example_ref_3.png", tmp_path / "flux2_example_ref_3.png")
    shutil.copy(WORKFLOWS / "flux2_example_ref_1.png", tmp_path / "flux2_example_ref_1.png")
    assert batch(tmp_path / "edit.json", "--table", table, "--output-dir", tmp_path / "o", "--dry-run") == 1
    err = capsys.readouterr().err
    bad = [line.strip() for line in err.splitlines() if line.startswith("  bad row")]
    assert len(bad) == 2, err
    assert bad[0].startswith("bad row 2: ") and "'nope.png' not found" in bad[0]
    assert bad[1].startswith("bad row 3: ") and f"has no input 'imag'" in bad[1]
    assert runware.requests == []


# -- workflow formats, columns, seeds -----------------------------------------------------------
def test_ui_and_api_workflows_make_the_same_items(tmp_path, capsys, monkeypatch):
    """Columns by node id and by title (an untitled node is called by its type), in both formats."""
    monkeypatch.setenv("RUNWARE_API_KEY", "unused")
    table = write_csv(tmp_path, "3.prompt,Flux2Size.aspect_ratio\na fox,1:1\na hare,16:9\n")
    plans = []
    for wf in (WORKFLOWS / "flux2_text_to_image.json", WORKFLOWS / "api" / "flux2_text_to_image.json"):
        b = Batch(wf, registry=node_registry, output_dir=tmp_path / "o", table=table, seeds=[1, 2])
        plans.append(b.prepare())
    ui, api = plans
    assert [i.id for i in ui.items] == ["r1-s1", "r1-s2", "r2-s1", "r2-s2"]
    assert [i.fingerprint for i in ui.items] == [i.fingerprint for i in api.items]
    assert [i.inputs for i in ui.items][1] == {"3.prompt": "a fox", "2.aspect_ratio": "1:1", "3.seed": 2}
    assert ui.estimate_usd == api.estimate_usd == pytest.approx(4 * 0.045)


def test_seeds_multiply_rows_and_set_every_seed_given_by_value(runware, tmp_path):
    wf = tmp_path / "chain.json"
    shutil.copy(WORKFLOWS / "api" / "flux2_chain_edit.json", wf)
    table = tmp_path / "rows.jsonl"
    table.write_text('{"3.prompt": "first"}\n')
    out = tmp_path / "o"
    assert batch(wf, "--table", table, "--seeds", "10-11", "--output-dir", out) == 0
    sent = runware.tasks("imageInference")
    assert len(sent) == 6
    assert sorted(t["seed"] for t in sent if t["positivePrompt"] == "first") == [10, 11]
    recs = records(out)
    assert sorted(recs) == ["r1-s10", "r1-s11"] and all(len(r["outputs"]) == 3 for r in recs.values())


def test_a_seed_column_and_seeds_together_are_refused(runware, tmp_path, capsys):
    table = write_csv(tmp_path, "Make.seed\n3\n")
    assert batch(small_workflow(tmp_path), "--table", table, "--seeds", "1-2", "--output-dir", tmp_path / "o") == 1
    assert "sets a seed and --seeds sets them too" in capsys.readouterr().err
    assert runware.requests == []


# -- estimate and budget ------------------------------------------------------------------------
def test_budget_refuses_a_batch_estimated_over_it(runware, tmp_path, capsys):
    table = write_csv(tmp_path, "Make.prompt\na\nb\nc\n")
    code = batch(small_workflow(tmp_path), "--table", table, "--budget", "0.08", "--output-dir", tmp_path / "o")
    assert code == 1
    assert "the batch is estimated at $0.09, over the budget cap $0.08; nothing was sent" in capsys.readouterr().err
    assert runware.requests == []


def test_budget_stops_scheduling_when_billed_plus_in_flight_would_pass_it(runware, tmp_path, capsys):
    """The estimate fits ($0.09 for 3), but the provider charges more than it said: after two items the
    third would take billed + in flight past the cap, so it is not started."""
    runware.faults.push(route="submit", patch={"cost": 0.05})
    runware.faults.push(route="submit", patch={"cost": 0.05})
    table = write_csv(tmp_path, "Make.prompt\na\nb\nc\n")
    out = tmp_path / "o"
    code = batch(small_workflow(tmp_path), "--table", table, "--budget", "0.12", "--concurrency", "1",
                 "--output-dir", out)
    err = capsys.readouterr().err
    assert code == 1
    assert "stopped before passing the budget cap: 1 item(s) not started" in err
    assert len(runware.tasks("imageInference")) == 2 and sorted(records(out)) == ["r1", "r2"]


# -- manifest and resume ------------------------------------------------------------------------
def test_manifest_has_one_line_per_item_and_a_rerun_skips_finished_ones(runware, tmp_path, capsys):
    wf = small_workflow(tmp_path)
    table = write_csv(tmp_path, "Make.prompt,Make.seed\na fox,1\nfail here,2\na hare,3\n")
    out = tmp_path / "o"
    # one item is refused (HTTP 400, nothing billed); the others go on
    runware.faults.push(route="submit")            # r1: answered normally (one item at a time, in order)
    runware.faults.push(route="submit", status=400, body={"errors": [{"code": "invalidParameter", "message": "boom"}]})
    code = batch(wf, "--table", table, "--output-dir", out, "--concurrency", "1")
    assert code == 1
    recs = records(out)
    assert {k: r["status"] for k, r in recs.items()} == {"r1": "ok", "r2": "failed", "r3": "ok"}
    r1 = recs["r1"]
    assert r1["inputs"] == {"3.prompt": "a fox", "3.seed": 1} and r1["seeds"] == [1]
    assert r1["billed_usd"] == 0.03 and r1["tasks"] == [runware.tasks("imageInference")[0]["taskUUID"]]
    assert (out / r1["outputs"][0]).is_file() and r1["outputs"][0] == "cat/item-r1_00001_.png"
    assert "boom" in recs["r2"]["error"] and recs["r2"]["outputs"] == []
    sent = len(runware.tasks("imageInference"))

    capsys.readouterr()
    assert batch(wf, "--table", table, "--output-dir", out) == 0          # resume: nothing to do
    assert "0 to run, 2 finished earlier, 1 failed earlier (--retry-failed runs them)" in capsys.readouterr().err
    assert len(runware.tasks("imageInference")) == sent

    assert batch(wf, "--table", table, "--output-dir", out, "--retry-failed") == 0
    assert len(runware.tasks("imageInference")) == sent + 1
    assert records(out)["r2"]["status"] == "ok"
    assert len((out / "manifest.jsonl").read_text().splitlines()) == 4


def test_an_edited_row_is_a_new_item(runware, tmp_path):
    wf = small_workflow(tmp_path)
    out = tmp_path / "o"
    assert batch(wf, "--table", write_csv(tmp_path, "Make.prompt\na\nb\n"), "--output-dir", out) == 0
    assert batch(wf, "--table", write_csv(tmp_path, "Make.prompt\na\nB\n"), "--output-dir", out) == 0
    assert [t["positivePrompt"] for t in runware.tasks("imageInference")][2:] == ["B"]


# -- concurrency --------------------------------------------------------------------------------
def test_tasks_in_flight_stay_within_the_concurrency_limit(tmp_path, monkeypatch):
    from comfyui_flux2.loopback.runware_server import RunwareLoopback
    with RunwareLoopback(api_key="k", task_s=0.3) as server:
        monkeypatch.setenv("RUNWARE_API_URL", server.api_url)
        monkeypatch.setenv("RUNWARE_API_KEY", "k")
        rows = [{"Make.prompt": f"p{i}"} for i in range(9)]
        b = Batch(small_workflow(tmp_path), registry=node_registry, output_dir=tmp_path / "o", rows=rows,
                  concurrency=3)
        results = list(b.run())
    assert sorted(r.item.id for r in results) == [f"r{i}" for i in range(1, 10)]
    assert all(r.status == "ok" and r.paths[0].is_file() for r in results)
    assert server.peak_processing == 3            # the limit was used, and never passed


def test_bfl_is_held_to_its_24_active_tasks(tmp_path, monkeypatch):
    monkeypatch.setenv("RUNWARE_API_KEY", "unused")
    b = Batch(small_workflow(tmp_path), registry=node_registry, output_dir=tmp_path / "o",
              rows=[{"Make.prompt": "x"}], concurrency=50)
    assert b.limits() == {"runware": 50, "bfl": 24, "local": 1}
    monkeypatch.setenv("FLUX2_CONCURRENCY", "6")
    b.concurrency = None
    assert b.limits()["runware"] == 6


# -- contact sheet ------------------------------------------------------------------------------
def test_contact_sheet_escapes_user_text(runware, tmp_path):
    evil = '<script>alert(1)</script> & "quotes" <img src=x onerror=alert(2)>'
    (tmp_path / "rows.jsonl").write_text(json.dumps({"Make.prompt": evil}) + "\n")
    out = tmp_path / "o"
    assert batch(small_workflow(tmp_path), "--table", tmp_path / "rows.jsonl", "--output-dir", out) == 0
    page = (out / "index.html").read_text()
    assert "<script>" not in page and "<img src=x" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt; &amp; &quot;quotes&quot;" in page
    assert 'src="cat/item-r1_00001_.png"' in page


def test_items_share_one_backend_per_setting(tmp_path):
    """One provider client (connections, retries) per backend setting for the whole batch, not one per row."""
    from comfyui_flux2.runner.batch.items import shared_backends
    registry = shared_backends(node_registry())
    node = registry["Flux2RemoteBackend"]
    args = dict(provider="runware", model="FLUX.2 [pro]", prompt_upsampling=False, safety_tolerance=2,
                output_format="PNG", output_quality=95, steps=0, guidance=0.0, on_moderation="error")
    (a,), (b,) = node().build(**args), node().build(**args)
    (c,) = node().build(**{**args, "safety_tolerance": 3})
    assert a is b and c is not a and c.options.safety_tolerance == 3


def test_reference_url_column_checks_each_url_per_row(runware, tmp_path, capsys):
    """A Flux2ReferenceURL's url from the table: a URL that is not https is that row's one-line error."""
    wf = WORKFLOWS / "api" / "flux2_multi_reference_edit.json"
    table = write_csv(tmp_path, "2.url\nhttps://assets.runware.ai/assets/inputs/other.jpg\n"
                                "http://example.com/ref.png\n")
    assert batch(wf, "--table", table, "--output-dir", tmp_path / "o", "--dry-run") == 1
    err = capsys.readouterr().err
    (bad,) = [line.strip() for line in err.splitlines() if line.startswith("  bad row")]
    assert bad.startswith("bad row 2: ") and "https" in bad
    assert batch(wf, "--table", table, "--output-dir", tmp_path / "o", "--dry-run", "--skip-bad-rows") == 0
    err = capsys.readouterr().err
    assert "2 item(s); 1 to run, 1 bad" in err and "estimated cost: $0.09" in err
    assert runware.requests == []


def test_the_contact_sheet_follows_a_long_batch(runware, tmp_path, monkeypatch):
    from comfyui_flux2.runner.batch import batch as batch_module
    monkeypatch.setattr(batch_module, "SHEET_EVERY_S", 0.0)
    b = Batch(small_workflow(tmp_path), registry=node_registry, output_dir=tmp_path / "o",
              rows=[{"Make.prompt": "first"}, {"Make.prompt": "second"}], concurrency=1)
    results = b.run()
    # Either item may end first: the second starts once the first's provider call answered (while it saves).
    ended, later = ("first", "second") if next(results).item.id == "r1" else ("second", "first")
    assert ended in (tmp_path / "o" / "index.html").read_text()          # written before the batch ended
    list(results)
    assert later in (tmp_path / "o" / "index.html").read_text()


def test_a_reference_picture_is_uploaded_once_per_batch(runware, tmp_path):
    wf = tmp_path / "api" / "edit.json"
    wf.parent.mkdir()
    shutil.copy(WORKFLOWS / "api" / "flux2_local_references_edit.json", wf)
    for i in (1, 2, 3):
        shutil.copy(WORKFLOWS / f"flux2_example_ref_{i}.png", tmp_path / f"flux2_example_ref_{i}.png")
    table = write_csv(tmp_path, "5.prompt,5.width,5.height\none,256,256\ntwo,256,256\nthree,256,256\n")
    assert batch(wf, "--table", table, "--output-dir", tmp_path / "o", "--concurrency", "1") == 0
    assert len(runware.tasks("imageInference")) == 3
    assert len(runware.tasks("imageUpload")) == 3                  # not 9: the three pictures, once each
    sent = runware.tasks("imageInference")
    assert sent[0]["inputs"]["referenceImages"] == sent[2]["inputs"]["referenceImages"]


def test_a_provider_slot_is_free_once_the_items_calls_answered():
    """Concurrency 1: the second item starts while the first is still saving, not after it ended."""
    import threading
    from types import SimpleNamespace

    from comfyui_flux2.runner.batch.executors import ItemOutcome
    from comfyui_flux2.runner.batch.scheduler import ProviderLimits, Scheduler

    items = [SimpleNamespace(id=f"r{i}", needs={"runware"}, providers={"runware": 1}, estimate_usd=0.0)
             for i in (1, 2)]
    started, saving = [], threading.Event()

    class Run:
        def __init__(self, item):
            self.item, self.aborted, self.thread = item, False, None

        def run(self):
            started.append(self.item.id)
            scheduler.calls_done(self.item.id)          # the provider answered...
            if self.item.id == "r1":
                assert saving.wait(10)                  # ...and r1 keeps "saving" until r2 has started
            else:
                saving.set()
            return ItemOutcome(self.item.id, "ok")

    scheduler = Scheduler(items, Run, limits=ProviderLimits({"runware": 1}))
    done = [item.id for item, _ in scheduler.run()]
    assert started == ["r1", "r2"] and sorted(done) == ["r1", "r2"]


def test_a_local_weights_slot_stays_taken_after_the_items_provider_calls_answered():
    """A Runware node feeding a local edit: once Runware answered, the next item may send its Runware task, but
    its local node must not run beside the first one's on the one local slot. Before, the answer gave back every
    slot of the item, local included, and the two local runs overlapped."""
    import threading
    import time
    from types import SimpleNamespace

    from comfyui_flux2.runner.batch.executors import ItemOutcome
    from comfyui_flux2.runner.batch.scheduler import ProviderLimits, Scheduler

    items = [SimpleNamespace(id=f"r{i}", needs={"runware", "local"}, providers={"runware": 1, "local": 1},
                             estimate_usd=0.0) for i in (1, 2)]
    local_running, overlaps, lock = [0], [], threading.Lock()

    class Run:
        def __init__(self, item):
            self.item, self.aborted, self.thread = item, False, None

        def run(self):
            scheduler.calls_done(self.item.id)          # Runware answered; the local node runs now
            with lock:
                local_running[0] += 1
                overlaps.append(local_running[0])
            time.sleep(0.3)
            with lock:
                local_running[0] -= 1
            return ItemOutcome(self.item.id, "ok")

    scheduler = Scheduler(items, Run, limits=ProviderLimits({"runware": 4, "local": 1}))
    assert sorted(item.id for item, _ in scheduler.run()) == ["r1", "r2"]
    assert max(overlaps) == 1 and scheduler.limits.used == {"runware": 0, "local": 0}


@pytest.mark.slow   # subprocesses / whole benchmark runs: over 4 s; CI runs it (--run-slow)
def test_the_batch_benchmark_runs_ours_beside_the_raw_httpx_peer(capsys, monkeypatch):
    """`comfyui-flux2 benchmark batch` end to end at tiny size (numbers reported, never asserted)."""
    from comfyui_flux2.bench import batch as bench
    for name in ("RUNWARE_API_URL", "RUNWARE_API_KEY", "FLUX2_CACHE_DIR"):     # the benchmark sets them
        monkeypatch.setenv(name, "")
    assert bench.main(["--items", "6", "--task-s", "0.05", "--concurrency", "3", "--repeat", "2",
                       "--local-items", "0"]) == 0
    out = capsys.readouterr().out
    assert "ours (6/6 ok)" in out and "raw httpx peer (6/6 ok)" in out and "ours / peer throughput" in out
