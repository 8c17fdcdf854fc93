"""Two batches into one folder at once (issue 21.8): the second is refused in one line, before it reads the
manifest or sends anything; a lock left by a process that died is no obstacle."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading

import pytest

from comfyui_flux2.runner.batch.lock import LOCK_NAME, FolderLock
from test_batch import batch, records, small_workflow, write_csv


def test_a_second_batch_into_the_same_folder_is_refused_while_the_first_runs(runware, tmp_path, capsys):
    """Before: both wrote item_00001_.png-style names from one counter and doubled every manifest line."""
    runware.task_s = 0.3
    wf = small_workflow(tmp_path)
    table = write_csv(tmp_path, "Make.prompt\na\nb\nc\nd\n")
    out = tmp_path / "o"
    first: dict = {}
    worker = threading.Thread(target=lambda: first.update(code=batch(wf, "--table", table, "--output-dir", out,
                                                                       "--concurrency", "1")))
    worker.start()
    try:
        for _ in range(200):                      # until the first batch holds the folder
            if (out / LOCK_NAME).exists() and runware.requests:
                break
            threading.Event().wait(0.02)
        sent = len(runware.tasks("imageInference"))
        assert batch(wf, "--table", table, "--output-dir", out) == 1
        err = capsys.readouterr().err.strip().splitlines()[-1]
        assert err.startswith(f"error: {out} is in use by another batch (pid {os.getpid()}")
        assert "wait for it to end (then the same command resumes) or give another --output-dir" in err
    finally:
        worker.join(30)
    assert first["code"] == 0
    assert len(runware.tasks("imageInference")) == 4 >= sent
    lines = (out / "manifest.jsonl").read_text().splitlines()
    assert len(lines) == 4 and sorted(records(out)) == ["r1", "r2", "r3", "r4"]
    # The folder is free again: the same command resumes (nothing left to do).
    assert batch(wf, "--table", table, "--output-dir", out) == 0
    assert len(runware.tasks("imageInference")) == 4


def test_a_dry_run_does_not_take_the_folder(runware, tmp_path, capsys):
    out = tmp_path / "o"
    out.mkdir()
    with FolderLock(out):
        table = write_csv(tmp_path, "Make.prompt\na\n")
        assert batch(small_workflow(tmp_path), "--table", table, "--output-dir", out, "--dry-run") == 0


def test_a_lock_left_by_a_killed_process_is_no_obstacle(runware, tmp_path, capsys):
    """kill -9 of a batch leaves its lock file (with its pid) behind; the kernel has dropped the lock itself."""
    out = tmp_path / "o"
    code = ("import sys, os, signal; sys.path[:0] = sys.argv[2:]; "
            "from comfyui_flux2.runner.batch.lock import FolderLock; "
            "FolderLock(sys.argv[1]).acquire(); os.kill(os.getpid(), signal.SIGKILL)")
    proc = subprocess.run([sys.executable, "-c", code, str(out), *sys.path], capture_output=True)
    assert proc.returncode == -9
    holder = json.loads((out / LOCK_NAME).read_text())
    assert holder["pid"] > 0 and holder["pid"] != os.getpid()
    table = write_csv(tmp_path, "Make.prompt\na\n")
    assert batch(small_workflow(tmp_path), "--table", table, "--output-dir", out) == 0
    assert sorted(records(out)) == ["r1"]


def test_without_flock_a_dead_holder_is_taken_over_and_a_live_one_refused(tmp_path, monkeypatch):
    """The O_EXCL fallback (systems without fcntl): the pid in the file decides."""
    import comfyui_flux2.runner.batch.lock as batch_lock
    monkeypatch.setattr(batch_lock, "fcntl", None)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (tmp_path / LOCK_NAME).write_text(json.dumps({"pid": int(dead.stdout)}))
    lock = FolderLock(tmp_path)
    lock.acquire()
    assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == os.getpid()
    with pytest.raises(Exception, match=rf"in use by another batch \(pid {os.getpid()}"):
        FolderLock(tmp_path).acquire()
    lock.release()
    assert not (tmp_path / LOCK_NAME).exists()
    FolderLock(tmp_path).acquire()
