"""`comfyui-flux2 benchmark local` runs end to end (numbers are reported, never asserted), with ComfyUI
core's FLUX.2 transformer as a third peer when a ComfyUI is given."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from comfyui_flux2.bench import local as bench

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


@pytest.mark.slow   # subprocesses / whole benchmark runs: over 4 s; CI runs it (--run-slow)
def test_reports_ours_and_diffusers_on_the_tiny_config(capsys):
    assert bench.main(["--configs", "tiny", "--reps", "1", "--device", "cpu", "--rows", "step"]) == 0
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
                       "--comfyui-python", str(install.python), "--rows", "step"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert "diffusers s" in out[1] and "comfyui s" in out[1]
    assert out[2].split()[0] == "tiny" and out[2].count("x") == 4


@pytest.mark.slow   # subprocesses / whole benchmark runs: over 4 s; CI runs it (--run-slow)
def test_pipeline_rows_sweep_chain_and_cfg_on_the_tiny_config(capsys):
    """Whole-pipeline rows (bench/local_pipeline.py): ours vs diffusers' pipeline on the same random weights; the
    sweep's images of the two tools are compared, so the rows time the same pictures."""
    assert bench.main(["--configs", "tiny", "--rows", "pipeline", "--device", "cpu", "--sweep", "2"]) == 0
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if line.startswith("tiny")]
    names = [line[8:44].strip() for line in lines]            # the row column
    assert names[:6] == ["sweep of 2, per image after the 1st", "sweep, first image",
                         "3-edit chain, 2 references reused", "CFG 4.0 per image, one forward",
                         "CFG 4.0 per image, two calls", "CFG one forward / two calls (ours)"], names
    assert all(line.rstrip().endswith("x") for line in lines[:6])
    diff = int(lines[-1].split("max difference ")[1].split()[0])
    assert diff <= 2, f"ours and diffusers' sweep images differ by {diff} levels"


def test_unknown_rows_are_refused(capsys):
    assert bench.main(["--configs", "tiny", "--rows", "everything", "--device", "cpu"]) == 2
    assert "unknown rows" in capsys.readouterr().err


@pytest.mark.slow   # subprocesses / whole benchmark runs: over 4 s; CI runs it (--run-slow)
def test_gpu_full_size_script_runs_its_tiny_path_on_cpu(capsys, tmp_path):
    """bench/gpu_full_size.py is prepared for a GPU; here its every row runs on a few-MB model (in-process for
    speed, and once through main for the table)."""
    from comfyui_flux2.bench import gpu_full_size as g

    for model in g.MODELS:
        for impl in g.IMPLS:
            row = g.worker(model, impl, "cpu", tiny=True)
            assert row["step_s"] > 0 and row["loop4_s"] > 0 and row["tflops"] > 0 and row["vram_peak_gib"] is None
    assert g.main(["--tiny", "--device", "cpu", "--models", "dev", "--impls", "diffusers-bf16,ours-fp8",
                   "--json", str(tmp_path / "rows.json")]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("cpu, 128²") and out[1].startswith("| model | row | 1 step | vs diffusers")
    assert out[3].startswith("| dev | diffusers-bf16 |") and "| 1.00× |" in out[3]
    assert out[4].startswith("| dev | ours-fp8 |")


def test_flop_count_of_dev_at_1024():
    """The step's FLOPs from shapes (Linears + attention's 4·L²·D per block) against the figure in the FLUX.2 facts:
    ≈ 283 TFLOP per [dev] step at 1024²."""
    from comfyui_flux2.bench import gpu_full_size as g

    p = g.params_for("dev", tiny=False)
    flops = g.forward_flops(p, 4096, 512)
    L = 4096 + 512
    attention = (p.depth_double + p.depth_single) * 4 * L * L * p.hidden
    assert abs(flops / 283e12 - 1) < 0.01 and 0.05 < attention / flops < 0.15
    assert g.forward_flops(g.params_for("klein4b", tiny=False), 4096, 512) < flops / 6    # "~8x cheaper"


def test_lora_rows_time_none_on_the_fly_and_merged_in_one_process(capsys):
    """The LoRA rows: no LoRA, the same LoRA on the fly and merged, in one worker; the two applications agree."""
    assert bench.main(["--configs", "tiny", "--reps", "1", "--device", "cpu", "--rows", "lora", "--lora-rank", "4"]) == 0
    out = capsys.readouterr().out.splitlines()
    head = next(i for i, line in enumerate(out) if line.startswith("config"))
    assert "on the fly s" in out[head] and "merged s" in out[head] and "switch s" in out[head]
    row = out[head + 1].split()
    assert row[0] == "tiny" and row[1] == "4"
    assert float(row[-3]) > 0 and float(row[-2]) > 0     # switching sets: restore from the file + merge; back off
    assert float(row[-1]) < 1e-3          # max |on the fly - merged| of the step output (fp32)


@pytest.mark.slow
def test_comfyui_sweep_row_runs_both_tools_on_the_same_files(capsys):
    """bench/comfyui_sweep.py: ComfyUI core's FLUX.2 graph queued in the provisioned server and this engine, on the
    same ComfyUI-layout files (2 images; the times are printed, not checked)."""
    from comfyui_flux2.bench import comfyui_sweep

    assert comfyui_sweep.main(["--config", "tiny", "--sweep", "2"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    rows = json.loads(out[-1])
    assert len(rows["ours"]["times"]) == len(rows["comfyui"]["times"]) == 2
    assert all(t > 0 for t in rows["ours"]["times"] + rows["comfyui"]["times"])
    assert any(line.startswith("sweep of 2, per image after the 1st") for line in out)
