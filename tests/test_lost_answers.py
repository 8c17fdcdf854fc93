"""Every paid task accounted for (issue 21, items 1, 2, 5): an answer lost after the provider took (and
billed) the task is recovered by task id or the task is named "may still be billed" -- in the error, the
run summary and the batch manifest; a run killed with SIGKILL pays again only for what never arrived;
deadlines count from the submit; API answers stop at a size limit.

The loopback Runware server follows the documented protocol: getResponse knows async tasks only,
getTaskDetails knows any executed task (runware.ai/docs/platform/task-details). `task_details = False`
plays a provider where no lookup finds the task, so it can only be named.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid

import pytest

from comfyui_flux2.cli import main
from comfyui_flux2.flux2.backend import GenerationRequest, run
from comfyui_flux2.flux2.errors import ModerationError, ProviderError, ProviderTimeout
from comfyui_flux2.flux2.remote import common
from comfyui_flux2.flux2.remote.bfl import BflBackend
from comfyui_flux2.flux2.remote.options import RemoteOptions
from comfyui_flux2.flux2.remote.runware import RunwareBackend
from comfyui_flux2.flux2.net.transport import MAX_ANSWER_BYTES, Deadlines, LostResponse
from comfyui_flux2.flux2.run_context import RunContext
from comfyui_flux2.loopback.runware_server import RunwareLoopback

from test_batch import records, small_workflow, write_csv

FAST = Deadlines(retries=3, backoff_s=0.01, backoff_cap_s=0.05, total_s=12, request_s=4, lookup_s=0.4)   # request_s with room for a loaded machine
PRO_USD = 0.03
# Each way an answer is lost after the provider ran (and billed) the task, as the loopback server plays it.
LOST = {
    "dropped": {"drop": True},
    "garbage 200": {"garble": "<html>502 Bad Gateway</html>"},
    "truncated on the wire": {"truncate_at": 40},
    "cut JSON": {"cut_json": True},
    "changed taskUUID": {"patch": {"taskUUID": str(uuid.uuid4())}},
    "dribbled past the deadline": {"dribble_s": 0.05},      # ~700 bytes: 35 s against request_s 4
}


def runware_pro(deadlines=FAST) -> RunwareBackend:
    return RunwareBackend("FLUX.2 [pro]", RemoteOptions(), deadlines=deadlines)


def batch_of(n: int, seed: int = 100) -> GenerationRequest:
    return GenerationRequest("x", 256, 256, seed, batch=n, node_id="5")


def lost_task(server, kept_seeds) -> str:
    """The taskUUID of the one image of the batch that did not come back."""
    (task,) = [t for t in server.tasks("imageInference") if t["seed"] not in kept_seeds]
    return task["taskUUID"]


# -- item 1: a lost answer is recovered, or its task is named ----------------------------------------
@pytest.mark.parametrize("fault", LOST.values(), ids=LOST.keys())
def test_a_lost_answer_in_a_batch_of_8_is_recovered_by_task_id(runware, fault):
    runware.faults.push(route="submit", **fault)
    result = run(runware_pro(), batch_of(8), RunContext())
    assert len(runware.billed_tasks) == 8 and len(result.images) == 8          # 8 billed, 8 kept
    assert result.seeds == list(range(100, 108)) and result.cost_usd == pytest.approx(8 * PRO_USD)
    assert len(runware.tasks("imageInference")) == 8                           # none sent twice
    assert len(runware.tasks("getTaskDetails")) >= 1       # getResponse does not know a sync task


@pytest.mark.parametrize("fault", [LOST["dropped"], LOST["garbage 200"], LOST["changed taskUUID"]],
                         ids=["dropped", "garbage 200", "changed taskUUID"])
def test_a_lost_answer_no_lookup_finds_is_named_not_taken_from_the_lookup(runware, fault):
    runware.task_details = False
    runware.faults.push(route="submit", **fault)
    ctx = RunContext()
    with pytest.raises(ProviderError) as err:
        run(runware_pro(), batch_of(8), ctx)
    exc = err.value
    assert len(runware.billed_tasks) == 8 and len(exc.salvaged.images) == 7    # 8 billed, 7 kept, 1 named
    lost = lost_task(runware, exc.salvaged.seeds)
    assert exc.maybe_billed == (f"runware task {lost}",)
    assert f"may still be billed: runware task {lost}" in str(exc) and "7 of 8 image(s) kept" in str(exc)
    # The lookup's own "unknown taskUUID" is named as what the lookup said, not as the task's outcome.
    assert not str(exc).startswith("runware: unknown taskUUID") and "no lookup finds the task" in str(exc)
    assert ctx.ledger.billed_total == pytest.approx(7 * PRO_USD)


def test_a_lost_answer_of_a_refused_task_is_known_as_refused(runware):
    runware.faults.push(route="submit", drop=True)
    with pytest.raises(ModerationError) as err:
        run(runware_pro(), GenerationRequest("forbidden-content here", 256, 256, 1), RunContext())
    assert err.value.maybe_billed == ()        # the provider's own record: refused, not billed
    assert runware.billed_tasks == [] and len(runware.tasks("getTaskDetails")) == 1


def test_an_async_task_is_found_by_get_response(runware):
    """The loopback server keeps the documented split: getResponse answers for async tasks."""
    from comfyui_flux2.flux2.remote.runware_tasks import GetResponse
    backend = runware_pro()
    task = backend.inference_task(GenerationRequest("x", 256, 256, 3), 0, []).to_json()
    transport, url, _ = backend._client()
    ack = transport.submit(url, [dict(task, deliveryMethod="async")]).json()
    assert ack == {"data": [{"taskType": "imageInference", "taskUUID": task["taskUUID"]}]}
    found = transport.submit(url, [GetResponse(taskUUID=task["taskUUID"]).to_json()]).json()
    assert found["data"][0]["status"] == "success" and found["data"][0]["imageURL"]
    sync = backend.inference_task(GenerationRequest("x", 256, 256, 4), 0, []).to_json()
    transport.submit(url, [sync])
    unknown = transport.submit(url, [GetResponse(taskUUID=sync["taskUUID"]).to_json()])
    assert unknown.status_code == 400 and unknown.json()["errors"][0]["code"] == "invalidParameter"


@pytest.fixture
def fast_backends(monkeypatch):
    """Every remote backend the CLI builds gets the test's short deadlines."""
    init = common.RemoteBackend.__init__

    def fast(self, model_name, options=RemoteOptions(), deadlines=None, http_transport=None):
        init(self, model_name, options, FAST, http_transport)

    monkeypatch.setattr(common.RemoteBackend, "__init__", fast)


def test_run_summary_names_the_task_that_may_still_be_billed(runware, fast_backends, tmp_path, capsys):
    runware.task_details = False
    runware.faults.push(route="submit", drop=True)
    out = tmp_path / "o"
    assert main(["run", str(small_workflow(tmp_path, batch_size=8)), "--output-dir", str(out)]) == 1
    err = capsys.readouterr().err
    assert len(runware.billed_tasks) == 8 and len(list(out.rglob("*.png"))) == 7        # 7 kept on disk
    lost = [t["taskUUID"] for t in runware.tasks("imageInference") if f"runware task {t['taskUUID']}" in err]
    assert len(lost) == 1 and lost[0] in runware.billed_tasks
    assert f"may still be billed: runware task {lost[0]}" in err
    assert "billed $0.21" in err                                    # the 7 whose charge came back


def test_batch_manifest_names_the_task_that_may_still_be_billed(runware, fast_backends, tmp_path, capsys):
    runware.task_details = False
    runware.faults.push(route="submit", drop=True)
    table = write_csv(tmp_path, "Make.prompt\n" + "".join(f"p{i}\n" for i in range(8)))
    out = tmp_path / "o"
    assert main(["batch", str(small_workflow(tmp_path)), "--table", str(table), "--output-dir", str(out),
                 "--concurrency", "4"]) == 1
    err = capsys.readouterr().err
    recs = records(out)
    named = {item: r["maybe_billed"] for item, r in recs.items() if r["maybe_billed"]}
    assert len(recs) == 8 and sum(r["status"] == "ok" for r in recs.values()) == 7 and len(named) == 1
    ((item, tasks),) = named.items()
    (uuid_,) = [t for t in runware.billed_tasks if f"runware task {t}" in tasks[0]]
    assert f"may still be billed: {item}: runware task {uuid_}" in err


def test_bfl_submit_answer_cut_on_the_wire_is_polled_by_the_id_that_arrived(bfl, ctx):
    bfl.faults.push(route="submit", truncate_at=50)             # '{"id": "<36 chars>", "polling_url": "ht'
    result = run(BflBackend("FLUX.2 [pro]", RemoteOptions(), deadlines=FAST), GenerationRequest("x", 256, 256, 1), ctx)
    assert len(result.images) == 1 and len(bfl.submits()) == 1


def test_bfl_submit_answer_cut_before_its_id_names_the_task_and_keeps_the_others(serve_bfl, monkeypatch, ctx):
    bfl = serve_bfl()
    monkeypatch.setenv("FLUX2_BFL_CONCURRENCY", "1")
    bfl.faults.push(route="submit", truncate_at=20)             # '{"id": "d0a1…' : no whole id
    with pytest.raises(LostResponse) as err:
        run(BflBackend("FLUX.2 [pro]", RemoteOptions(), deadlines=FAST), batch_of(8), ctx)
    assert len(bfl.submits()) == 8 and len(err.value.salvaged.images) == 7      # the other 7 still made
    assert err.value.maybe_billed == ("bfl task for seed 100 (no id: its submit answer never came)",)
    assert "may have been billed" in str(err.value) and "not resubmitted" in str(err.value)


# -- item 2: kill -9 of `run` pays again only for what never arrived ------------------------------------
def _start_run(workflow, out, cache, server) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "FLUX2_CONCURRENCY": "4", "FLUX2_CACHE_DIR": str(cache),
           "RUNWARE_API_URL": server.api_url, "RUNWARE_API_KEY": server.api_key}
    return subprocess.Popen([sys.executable, "-m", "comfyui_flux2", "run", str(workflow), "--output-dir", str(out)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for(condition, seconds: float) -> bool:
    end = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > end:
            return False
        time.sleep(0.05)
    return True


@pytest.mark.slow   # two real `run` processes: over 4 s
def test_kill_9_after_4_of_8_arrived_then_rerun_bills_8_not_16(tmp_path):
    cache = tmp_path / "cache"
    with RunwareLoopback(api_key="k") as server:
        for _ in range(4):
            server.faults.push(route="submit")                    # the first four answer at once
        for _ in range(4):
            server.faults.push(route="submit", hold_s=30)         # the others: run and billed, answer held
        workflow = small_workflow(tmp_path, batch_size=8)
        proc = _start_run(workflow, tmp_path / "o", cache, server)
        try:
            assert _wait_for(lambda: len(server.billed_tasks) == 8 and len(server.downloads) == 4, 60)
            # The four that arrived are on disk at once (not when the batch settles).
            arrived = _wait_for(lambda: len(list(cache.rglob("*.result"))) == 4, 10)
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.communicate(timeout=30)
        assert arrived, "the four images that arrived were not cached before the kill"
        server.faults.clear()
        proc = _start_run(workflow, tmp_path / "o", cache, server)
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        # 8 billed in all: the four held tasks were found again by their taskUUID (getTaskDetails).
        assert len(server.billed_tasks) == 8 and len(server.tasks("imageInference")) == 8
        assert len(list((tmp_path / "o").rglob("*.png"))) == 8
        # The summary names what the killed run was billed for the four recovered here.
        assert f"4 image(s) recovered from an earlier run's tasks, billed then ${4 * PRO_USD:g}" in err, err


@pytest.mark.slow   # two real `run` processes: over 4 s
def test_bfl_kill_9_after_4_of_8_arrived_then_rerun_polls_the_others_instead_of_paying(tmp_path):
    from comfyui_flux2.loopback.bfl_server import BflLoopback
    cache = tmp_path / "cache"
    with BflLoopback(api_key="k") as server:
        for _ in range(4):
            server.faults.push(route="submit")
        for _ in range(4):
            server.faults.push(route="submit", pending_polls=10**9)    # accepted; still generating at the kill
        workflow = small_workflow(tmp_path, batch_size=8)
        data = json.loads(workflow.read_text())
        data["1"]["inputs"]["provider"] = "bfl"
        workflow.write_text(json.dumps(data))
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "FLUX2_BFL_CONCURRENCY": "4", "FLUX2_CACHE_DIR": str(cache),
               "BFL_API_URL": server.api_url, "BFL_API_KEY": "k"}
        cmd = [sys.executable, "-m", "comfyui_flux2", "run", str(workflow), "--output-dir", str(tmp_path / "o")]
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            noted = _wait_for(lambda: len(list(cache.rglob("*.result"))) == 4 and len(list(cache.rglob("*.sent"))) == 4,
                              60)
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.communicate(timeout=30)
        assert noted, "the four arrived images and the four tasks in flight were not on disk before the kill"
        for task in server.tasks():
            task.meta.pop("pending_polls", None)                        # the four finish at BFL meanwhile
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        assert len(server.submits()) == 8 and server.billed_usd == pytest.approx(8 * PRO_USD)
        assert len(list((tmp_path / "o").rglob("*.png"))) == 8
        # The charge from the killed run's submit answers, noted with each task, is named.
        assert f"4 image(s) recovered from an earlier run's tasks, billed then ${4 * PRO_USD:g}" in err, err


# -- item 5: deadlines from the submit, bounded answers ----------------------------------------------------
def test_bfl_hanging_polls_end_at_the_task_deadline_counted_from_submit(bfl, ctx):
    for _ in range(20):
        bfl.faults.push(route="poll", hold_s=3)                   # each poll hangs longer than the task may
    deadlines = Deadlines(retries=4, backoff_s=0.01, backoff_cap_s=0.05, total_s=1.5, request_s=10, read_s=10)
    started = time.monotonic()
    with pytest.raises(ProviderTimeout) as err:
        run(BflBackend("FLUX.2 [pro]", RemoteOptions(), deadlines=deadlines), GenerationRequest("x", 256, 256, 1), ctx)
    assert time.monotonic() - started < 1.5 + 1.0                # not retries x request_s
    (task,) = bfl.tasks()
    assert err.value.maybe_billed and task.id in str(err.value)


@pytest.mark.parametrize("size", [MAX_ANSWER_BYTES * 4, -1], ids=["32 MiB", "endless"])
def test_a_huge_submit_answer_stops_at_the_size_limit_and_is_recovered(runware, size):
    runware.faults.push(route="submit", huge_bytes=size)
    result = run(runware_pro(Deadlines(retries=3, backoff_s=0.01, backoff_cap_s=0.05, total_s=20, lookup_s=1)),
                 GenerationRequest("x", 256, 256, 1), RunContext())
    assert len(result.images) == 1 and len(runware.tasks("imageInference")) == 1
    assert runware.endless_bytes_sent < MAX_ANSWER_BYTES + 16 * 1024 * 1024


def test_a_huge_bfl_poll_answer_is_not_read_whole(bfl, ctx):
    bfl.faults.push(route="poll", huge_bytes=-1)
    result = run(BflBackend("FLUX.2 [pro]", RemoteOptions(), deadlines=FAST), GenerationRequest("x", 256, 256, 1), ctx)
    assert len(result.images) == 1
    assert bfl.endless_bytes_sent < MAX_ANSWER_BYTES + 16 * 1024 * 1024


def test_a_lost_flux3_answer_on_runware_is_recovered_by_task_id(runware):
    """FLUX 3 Image on Runware: a lost answer is found by getTaskDetails like FLUX.2's (documented for any
    executed task). Before: the loopback server kept no record of FLUX 3 tasks, so no lookup could find one
    and a paid image was only named, never recovered."""
    runware.faults.push(route="submit", drop=True)
    backend = RunwareBackend("FLUX 3 Image", RemoteOptions(), deadlines=FAST)
    result = run(backend, GenerationRequest("x", 1024, 768, 1, batch=2), RunContext())
    assert len(runware.billed_tasks) == 2 and len(result.images) == 2 and len(runware.tasks("imageInference")) == 2
    assert len(runware.tasks("getTaskDetails")) >= 1
    assert sorted(result.seeds) == sorted(item["seed"] for item in runware.results.values())   # the provider's


@pytest.mark.slow   # two real `batch` processes: over 4 s
def test_kill_9_of_a_batch_then_resume_books_the_recovered_tasks_charge_in_the_manifest(tmp_path):
    """Four one-image items, two answered and two held (run and billed) when the batch is killed -9: the
    killed run wrote lines for the two it finished only. The resumed batch recovers the other two by
    taskUUID (nothing paid again) and their manifest lines carry what the killed run was billed for them
    (billed_earlier_usd; billed_usd stays what this run paid), so the lines add up to the provider's bill."""
    cache, out = tmp_path / "cache", tmp_path / "o"
    with RunwareLoopback(api_key="k") as server:
        server.faults.push(route="submit")
        server.faults.push(route="submit")
        server.faults.push(route="submit", hold_s=30)
        server.faults.push(route="submit", hold_s=30)
        table = write_csv(tmp_path, "Make.prompt\n" + "".join(f"p{i}\n" for i in range(4)))
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "FLUX2_CACHE_DIR": str(cache),
               "RUNWARE_API_URL": server.api_url, "RUNWARE_API_KEY": server.api_key}
        cmd = [sys.executable, "-m", "comfyui_flux2", "batch", str(small_workflow(tmp_path)), "--table", str(table),
               "--output-dir", str(out), "--concurrency", "4"]
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            ready = _wait_for(lambda: len(server.billed_tasks) == 4 and (out / "manifest.jsonl").exists()
                              and len((out / "manifest.jsonl").read_text().splitlines()) == 2, 60)
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.communicate(timeout=30)
        assert ready, "the killed batch had not finished two items with the other two in flight"
        server.faults.clear()
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        assert len(server.billed_tasks) == 4 and len(server.tasks("imageInference")) == 4     # none paid twice
        recs = records(out)
        recovered = {i: r for i, r in recs.items() if r["billed_earlier_usd"]}
        assert len(recs) == 4 and all(r["status"] == "ok" for r in recs.values()) and len(recovered) == 2
        for r in recovered.values():
            assert r["billed_usd"] == 0 and r["billed_earlier_usd"] == pytest.approx(PRO_USD)
        total = sum(r["billed_usd"] + r["billed_earlier_usd"] for r in recs.values())
        assert total == pytest.approx(4 * PRO_USD)                       # every charge on some line, once
        assert f"billed $0 + ${2 * PRO_USD:g} billed to an earlier, killed run" in err, err
