"""Ctrl-C on a real `comfyui-flux2 batch` process: no new items, paid images kept and recorded, exit 130;
a re-run resumes without paying again (result cache; a task left in flight is recovered by getResponse)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from comfyui_flux2.loopback.runware_server import RunwareLoopback

from test_batch import records, small_workflow, write_csv


@pytest.fixture
def slow_runware(monkeypatch):
    with RunwareLoopback(api_key="k", task_s=1.5) as server:
        monkeypatch.setenv("RUNWARE_API_URL", server.api_url)
        monkeypatch.setenv("RUNWARE_API_KEY", "k")
        yield server


def start(*args) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "comfyui_flux2", "batch", *map(str, args)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for(condition, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


@pytest.mark.slow   # subprocesses / whole benchmark runs: over 4 s; CI runs it (--run-slow)
def test_ctrl_c_starts_no_new_item_keeps_paid_images_and_resumes(slow_runware, tmp_path):
    server = slow_runware
    wf = small_workflow(tmp_path)
    table = write_csv(tmp_path, "Make.prompt\n" + "".join(f"p{i}\n" for i in range(6)))
    out = tmp_path / "o"
    proc = start(wf, "--table", table, "--output-dir", out, "--concurrency", "2")
    wait_for(lambda: len(server.tasks("imageInference")) == 2)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "batch cancelled: re-run the same command to resume" in err and "Traceback" not in err
    assert len(server.tasks("imageInference")) == 2                 # nothing started after the Ctrl-C
    recs = records(out)
    assert len(recs) == 2
    for r in recs.values():                                         # the two in flight: paid, kept, recorded
        assert r["status"] == "cancelled" and r["billed_usd"] == 0.03
        (kept,) = r["outputs"]
        assert kept.startswith("flux2-unsaved/") and (out / kept).is_file()
    billed = server.billed

    proc = start(wf, "--table", table, "--output-dir", out, "--concurrency", "2")
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    recs = records(out)
    assert sorted(recs) == [f"r{i}" for i in range(1, 7)] and all(r["status"] == "ok" for r in recs.values())
    assert len(server.tasks("imageInference")) == 6                 # the two paid ones came from the cache
    assert server.billed == pytest.approx(billed + 4 * 0.03)
    assert sum(r["billed_usd"] for r in recs.values()) == pytest.approx(4 * 0.03)


def _abort_with_a_task_in_flight(runware, wf, table, out) -> str:
    """A batch whose first task is done and billed at once but answered only after 4 s, stopped by two Ctrl-C
    while it waits: returns its stderr."""
    runware.faults.push(route="submit", hold_s=4)
    proc = start(wf, "--table", table, "--output-dir", out)
    wait_for(lambda: len(runware.tasks("imageInference")) == 1)
    proc.send_signal(signal.SIGINT)
    time.sleep(0.3)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    return err


@pytest.mark.slow   # subprocesses / whole benchmark runs: over 4 s; CI runs it (--run-slow)
def test_second_ctrl_c_aborts_and_the_task_left_in_flight_is_recovered_not_paid_again(runware, tmp_path):
    """The provider finishes (and bills) the task after the batch stopped waiting for it: the re-run asks for
    it with getResponse on its taskUUID and uses that image; no second imageInference is sent."""
    wf = small_workflow(tmp_path)
    table = write_csv(tmp_path, "Make.prompt\nonly one\n")
    out = tmp_path / "o"
    err = _abort_with_a_task_in_flight(runware, wf, table, out)
    assert "aborted at once" in err and "Traceback" not in err
    (task,) = runware.tasks("imageInference")
    (rec,) = records(out).values()
    assert rec["status"] == "interrupted"
    assert rec["recover"] and rec["recover"][0]["task"] == task["taskUUID"]
    assert any(task["taskUUID"] in m for m in rec["maybe_billed"])
    assert f"may still be billed: r1: runware task {task['taskUUID']}" in err
    wait_for(lambda: task["taskUUID"] in runware.billed_tasks)

    proc = start(wf, "--table", table, "--output-dir", out)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert len(runware.tasks("imageInference")) == 1                # not sent again
    assert [t["taskUUID"] for t in runware.tasks("getResponse")] == [task["taskUUID"]]
    (rec,) = records(out).values()
    assert rec["status"] == "ok" and rec["billed_usd"] == 0.0 and rec["cached"] is True
    # what the recovered task was billed shows in the manifest, not only in the log
    assert rec["billed_earlier_usd"] == pytest.approx(0.03)
    assert (out / rec["outputs"][0]).is_file()
    assert runware.billed == pytest.approx(0.03)


@pytest.mark.slow   # subprocesses / whole benchmark runs: over 4 s; CI runs it (--run-slow)
def test_a_recovered_tasks_charge_is_in_the_manifest_when_the_item_then_fails(runware, tmp_path):
    """The re-run recovers the task an aborted run left in flight, then a later node of the item fails: the
    earlier run's charge for that task is still written in the item's manifest line (it was only for items that
    ended ok; the next run serves the image from the cache and would never show it)."""
    wf = small_workflow(tmp_path)
    prompt = json.loads(wf.read_text())
    prompt["5"] = {"class_type": "Flux2TextToImage", "_meta": {"title": "Later"},
                   "inputs": {"backend": ["1", 0], "prompt": "after the first", "width": 256, "height": 256,
                              "seed": 7, "batch_size": 1}}
    prompt["6"] = {"class_type": "SaveImage", "inputs": {"images": ["5", 0], "filename_prefix": "later"}}
    wf.write_text(json.dumps(prompt))
    table = write_csv(tmp_path, "Make.prompt\nonly one\n")
    out = tmp_path / "o"
    _abort_with_a_task_in_flight(runware, wf, table, out)         # node 3's task
    (task,) = runware.tasks("imageInference")
    assert task["positivePrompt"] == "only one"
    wait_for(lambda: task["taskUUID"] in runware.billed_tasks)

    # The re-run: node 3 comes back by getResponse, node 5's prompt is refused by the provider's content filter.
    prompt["5"]["inputs"]["prompt"] = "forbidden-content after the first"
    wf.write_text(json.dumps(prompt))
    proc = start(wf, "--table", table, "--output-dir", out)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode != 0, err
    assert [t["taskUUID"] for t in runware.tasks("getResponse")] == [task["taskUUID"]]
    (rec,) = records(out).values()
    assert rec["status"] == "failed" and "content" in rec["error"].lower()
    assert rec["billed_earlier_usd"] == pytest.approx(0.03)
