"""The fast tests run on both cores of a small machine: `python -m pytest -n 2` (pytest-xdist, test extra).

Each xdist worker is its own pytest process: it loads tests/conftest.py itself (one OpenMP thread, the
pack root collected as a plain folder, per-test result cache and provider env), and pytest-xdist gives
each worker its own tmp_path base, so the fixtures need no sharing between workers.
"""
from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parents[1]


def test_the_test_extra_carries_what_the_readme_fast_command_needs():
    test_extra = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]["test"]
    assert "pytest-xdist" in {Requirement(r).name for r in test_extra}
    assert ".venv/bin/python -m pytest -n 3" in (REPO / "README.md").read_text()


@pytest.mark.slow   # starts a pytest with two worker processes; CI runs it (--run-slow)
def test_the_suite_runs_under_two_xdist_workers():
    files = ["tests/test_rules.py", "tests/test_pack_metadata.py"]
    done = subprocess.run([sys.executable, "-m", "pytest", "-n", "2", "-p", "no:cacheprovider", "-v", *files],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    # -v names the worker that ran each test: both ran some
    assert "[gw0]" in done.stdout and "[gw1]" in done.stdout and " passed" in done.stdout, done.stdout[-3000:]
