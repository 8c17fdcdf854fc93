"""`comfyui-flux2 benchmark local` runs end to end (numbers are reported, never asserted), with ComfyUI
core's FLUX.2 transformer as a third peer when a ComfyUI is given."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

from comfyui_flux2.flux2.local import bench

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def test_reports_ours_and_diffusers_on_the_tiny_config(capsys):
    assert bench.main(["--configs", "tiny", "--reps", "1", "--device", "cpu"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("device cpu, dtype fp32, median of 1 steps")
    assert "diffusers s" in out[1] and "comfyui" not in out[1]
    assert out[2].split()[0] == "tiny" and out[2].count("x") == 2


def test_a_folder_without_comfyui_is_one_clear_error(tmp_path, capsys):
    assert bench.main(["--configs", "tiny", "--reps", "1", "--comfyui", str(tmp_path)]) == 2
    assert "no ComfyUI there" in capsys.readouterr().err


def test_unknown_config_is_refused(capsys):
    assert bench.main(["--configs", "huge", "--reps", "1", "--device", "cpu"]) == 2
    assert "unknown config 'huge'" in capsys.readouterr().err


@pytest.mark.slow
def test_comfyui_core_transformer_is_a_third_peer(capsys):
    from comfy_server import provision

    install = provision()
    assert bench.main(["--configs", "tiny", "--reps", "1", "--device", "cpu", "--comfyui", str(install.comfy_dir),
                       "--comfyui-python", str(install.python)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert "diffusers s" in out[1] and "comfyui s" in out[1]
    assert out[2].split()[0] == "tiny" and out[2].count("x") == 4
