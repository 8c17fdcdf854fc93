"""A cancel while a provider task hangs in a network call: `run_jobs` returns within its grace, the cancel error
names the task that may still be billed and keeps the image already paid for, and the process is not held at
exit by the stuck worker (why run_jobs keeps its own daemon threads, not a ThreadPoolExecutor: jobs.py)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from comfyui_flux2.flux2.backend import GenerationRequest
from comfyui_flux2.flux2.errors import Cancelled
from comfyui_flux2.flux2.remote.jobs import Job, run_jobs, settle
from comfyui_flux2.flux2.run_context import RunContext
from comfyui_flux2.loopback.bfl_server import BflLoopback

from test_batch import small_workflow


def test_a_cancel_while_a_task_hangs_returns_at_once_naming_the_paid_and_the_sent_tasks():
    cancelled, hung, release = threading.Event(), threading.Event(), threading.Event()
    ctx = RunContext(is_cancelled=cancelled.is_set)
    jobs = [Job(i, 10 + i, body=None) for i in range(3)]

    def work(job: Job, control) -> None:
        job.task_id, job.sent = f"t{job.index}", True
        if job.index == 1:                    # its answer never comes (a poll held by the provider)
            hung.set()
            release.wait(60)
            return
        hung.wait(10)
        job.image, job.charged, job.settled, job.cost_usd = np.zeros((8, 8, 3), np.float32), True, True, 0.03
        cancelled.set()                       # Ctrl-C once the first image is in: job 2 never starts

    before = set(threading.enumerate())
    try:
        started = time.monotonic()
        outcome = run_jobs(jobs, work, ctx=ctx, node="3", label="bfl", concurrency=2, cancel_grace_s=0.3)
        took = time.monotonic() - started
        left = [t for t in threading.enumerate() if t not in before]
        assert outcome == "cancelled" and took < 5                # not the 60 s the hung call could take
        # The stuck worker is left behind as a daemon thread: it cannot hold the process's exit.
        assert left and all(t.daemon for t in left)
        with pytest.raises(Cancelled) as err:
            settle(jobs, GenerationRequest("x", 256, 256, 10, batch=3, node_id="3"), ctx, provider="bfl",
                   describe="bfl", cache_key=None, outcome=outcome)
    finally:
        release.set()
    exc = err.value
    assert exc.maybe_billed == ("bfl task t1",) and "may still be billed: bfl task t1" in str(exc)
    assert len(exc.salvaged.images) == 1 and exc.salvaged.seeds == [10] and "1 of 3 image(s) kept" in str(exc)
    assert ctx.ledger.billed_total == pytest.approx(0.03) and jobs[2].sent is False


@pytest.mark.slow   # a real `run` process: over 4 s
def test_the_first_ctrl_c_exits_promptly_while_a_bfl_poll_hangs(tmp_path):
    """Measured on this change: exit 1.2-1.9 s after the Ctrl-C with run_jobs' daemon threads; with a
    ThreadPoolExecutor, whose workers the interpreter joins at exit, 20.6-20.9 s for a poll held 20 s."""
    hold_s = 40
    with BflLoopback(api_key="k") as server:
        server.faults.push(route="poll", hold_s=hold_s)
        workflow = small_workflow(tmp_path)
        data = json.loads(workflow.read_text())
        data["1"]["inputs"]["provider"] = "bfl"
        workflow.write_text(json.dumps(data))
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "FLUX2_CACHE_DIR": str(tmp_path / "cache"),
               "BFL_API_URL": server.api_url, "BFL_API_KEY": "k"}
        proc = subprocess.Popen([sys.executable, "-m", "comfyui_flux2", "run", str(workflow), "--output-dir",
                                 str(tmp_path / "o")], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 60
        while not server.polls() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert server.polls(), "the run never polled its task"
        time.sleep(0.3)                       # the poll is in flight, held by the server
        started = time.monotonic()
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=hold_s + 30)
        took = time.monotonic() - started
    (task,) = server.tasks()
    assert proc.returncode == 130, err
    assert took < hold_s / 2, f"exit took {took:.1f} s after the Ctrl-C"
    assert f"may still be billed: bfl task {task.id}" in err
