"""The suite runs from a clone laid out the way users install the pack: a folder named
``comfyui-flux2`` (not a Python identifier), also inside ``ComfyUI/custom_nodes/``.

pytest collects a folder holding ``__init__.py`` as a package and imports that file; for the pack
root under such a name its relative imports fail and every test errors at collection
(``tests/conftest.py`` collects the root as a plain folder instead). ``.ci/run`` runs the whole
suite from such a folder; this test keeps the cheap check in the fast suite.
"""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

PROBE = '''
import comfyui_flux2.flux2


def test_probe():
    assert comfyui_flux2.flux2
'''


@pytest.mark.slow   # fast suite < 2 min; CI runs it (--run-slow)
def test_a_test_passes_in_a_clone_named_like_the_pack(tmp_path):
    clone = tmp_path / "ComfyUI" / "custom_nodes" / "comfyui-flux2"
    (clone / "tests").mkdir(parents=True)
    for name in ("__init__.py", "pyproject.toml", "tests/conftest.py"):
        shutil.copyfile(REPO / name, clone / name)
    (clone / "tests" / "test_probe.py").write_text(PROBE)
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_probe.py"],
                          cwd=clone, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "1 passed" in proc.stdout

