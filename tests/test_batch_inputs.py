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
