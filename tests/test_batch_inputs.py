"""`comfyui-flux2 batch` option values that cannot work are one line before anything starts (no Ray
cluster, no request, no model load)."""
from __future__ import annotations

import pytest

from test_batch import batch, small_workflow, write_csv


@pytest.mark.parametrize("option, value", [("--concurrency", "0"), ("--ray-actors", "0"), ("--ray-actors", "-2")])
def test_a_count_below_one_is_one_line_before_anything_starts(tmp_path, capsys, runware, option, value):
    table = write_csv(tmp_path, "Make.prompt\na fox\n")
    assert batch(small_workflow(tmp_path), "--table", table, "--output-dir", tmp_path / "o", option, value) == 1
    err = capsys.readouterr().err
    assert f"{option} must be 1 or more" in err and err.count("\n") == 1
    assert runware.requests == [] and not (tmp_path / "o").exists()


def test_a_recover_entry_whose_cache_key_is_not_a_key_writes_nothing_outside_the_cache(tmp_path, monkeypatch):
    """manifest.jsonl lies in the output folder (it may come from someone else's batch): its `recover` cache key
    becomes a file name in the result cache, so only a real key (sha256 hex) is used, and no task is fetched."""
    import numpy as np

    from comfyui_flux2.flux2.backend import GenerationResult
    from comfyui_flux2.flux2.remote.runware import RunwareBackend
    from comfyui_flux2.flux2.result_cache import ResultCache
    from comfyui_flux2.runner.batch.recover import recover_tasks

    fetched = []
    monkeypatch.setattr(RunwareBackend, "fetch_task", lambda self, task, ctx: fetched.append(task) or GenerationResult(
        [np.zeros((16, 16, 3), np.uint8)], [7], 0.01))
    cache = ResultCache(tmp_path / "cache" / "results")
    task = "0f8e2a3c-1b2d-4e5f-8a9b-0c1d2e3f4a5b"
    bad = [{"provider": "runware", "task": task, "key": key}
           for key in ("../../escaped", "/tmp/abs", "a" * 63 + "/", "A" * 64, "ab" * 32 + "\n")]
    assert recover_tasks(bad, cache) == {}
    assert fetched == [] and not (tmp_path / "escaped.result").exists() and not (tmp_path / "cache").exists()
    good = "ab" * 32
    assert recover_tasks([{"provider": "runware", "task": task, "key": good}], cache) == {good: 0.01}
    assert cache.get(good) is not None and fetched == [task]
