"""Tiny random FLUX.2 pipelines, built once per session and saved as diffusers folders + single files."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))


def _build(tmp_path_factory, family: str, distilled: bool, single_files: bool = False):
    pytest.importorskip("diffusers")
    import tiny

    pipe = tiny.make_pipeline(family, distilled)
    root = tmp_path_factory.mktemp(f"{family}{'d' if distilled else 'b'}")
    tiny.save_diffusers(pipe, root / "diffusers" / "flux2-tiny")
    files = tiny.save_single_files(pipe, root) if single_files else None
    return pipe, root, files


@pytest.fixture(scope="session")
def klein(tmp_path_factory):
    """(diffusers pipeline, models root, single-file paths) for a tiny distilled klein."""
    return _build(tmp_path_factory, "klein", True, single_files=True)


@pytest.fixture(scope="session")
def klein_base(tmp_path_factory):
    return _build(tmp_path_factory, "klein", False)


@pytest.fixture(scope="session")
def dev(tmp_path_factory):
    return _build(tmp_path_factory, "dev", False)
