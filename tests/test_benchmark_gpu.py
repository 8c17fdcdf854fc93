"""`comfyui-flux2 benchmark gpu` (bench/gpu.py): the one prepared command for a lent GPU. Here: its time limits and
report on stand-in jobs (fast), and the whole command at tiny size on the CPU (slow; CI runs it)."""
from __future__ import annotations

import json
import sys

import pytest

from comfyui_flux2.bench import gpu
from comfyui_flux2.bench.gpu_report import render


def _meta(**kw):
    return {"device": "test", "tiny": True, "budget_s": 10.0, "started": "now", "not_yet": "GGUF: later.", **kw}


def test_a_job_past_its_section_limit_is_stopped_and_the_rest_of_the_section_skipped():
    row = {"model": "klein4b", "impl": "ours-bf16", "build_s": 1.0, "step_s": 0.5, "loop4_s": 2.0, "tflops": 1.0,
           "vram_peak_gib": None, "ram_peak_gib": 1.0}
    ok = [sys.executable, "-c", f"print({json.dumps(json.dumps(row))})"]
    hang = [sys.executable, "-c", "import time; time.sleep(60)"]
    sec = gpu.Section("klein", "klein rows", 2.0, [("fast", ok[1:]), ("hangs", hang[1:]), ("never", ok[1:])])
    gpu.run_section(sec, deadline=float("inf"), worker_argv=[sys.executable])
    assert sec.seconds < 10
    assert [r["label"] for r in sec.rows] == ["fast", "hangs"]
    assert sec.rows[0]["step_s"] == 0.5 and sec.rows[1]["timeout"]
    assert sec.status == "stopped at its limit after 1 of 3 rows"
    text = render(_meta(wall_s=3.0), [sec])
    assert "| klein | 2 s | stopped at its limit after 1 of 3 rows |" in text
    assert "| fast | 0.500 s |" in text and "| hangs | stopped at the limit" in text


def test_a_failing_job_is_one_line_and_the_section_goes_on():
    boom = [sys.executable, "-c", "raise SystemExit('no CUDA here')"]
    sec = gpu.Section("t2i", "t2i", 30.0, [("a", boom[1:]), ("b", boom[1:])])
    gpu.run_section(sec, deadline=float("inf"), worker_argv=[sys.executable])
    assert [r["error"] for r in sec.rows] == ["no CUDA here", "no CUDA here"]
    assert sec.status == "0 of 2 rows (others failed)"


def test_the_report_says_what_did_not_run():
    secs = gpu.plan()
    secs[0].status = "stopped at its limit after 0 of 6 rows"
    text = render(_meta(tiny=False, wall_s=1.0), secs)
    for s in secs:
        assert f"## {s.title}" in text
    assert "Not run: not run." in text and "GGUF: later." in text and "Rehearsal" not in text
    assert sum(s.limit_s for s in secs) <= gpu.BUDGET_S < 8 * 60    # all limits inside the budget, inside 8 min


def test_unknown_sections_are_refused(capsys):
    assert gpu.main(["--sections", "klein,warp", "--device", "cpu"]) == 2
    assert "unknown sections warp" in capsys.readouterr().err


@pytest.mark.slow   # ~13 worker processes; CI runs it (--run-slow)
def test_the_whole_command_runs_at_tiny_size_on_the_cpu(tmp_path, capsys):
    from comfyui_flux2.cli import main

    out = tmp_path / "gpu.md"
    assert main(["benchmark", "gpu", "--tiny", "--device", "cpu", "--out", str(out)]) == 0
    text = out.read_text()
    assert "Rehearsal at tiny sizes on the CPU" in text
    for s in gpu.plan():
        assert f"| {s.key} | {s.limit_s * gpu.TINY_SCALE:.0f} s | {len(s.jobs)} of {len(s.jobs)} rows |" in text
        for label, _ in s.jobs:
            assert f"| {label}" in text
    # The same random weights through diffusers' pipeline and this engine: the same picture in float32, up to the
    # last rounding to 8 bits. One value a float32 ulp apart can round to the next level (seen on one machine: one
    # pixel of 12 288 at 101.499985 vs 101.5; another machine's CPU gave 0 levels), so: at most 1 level, almost nowhere.
    row = next(line for line in text.splitlines() if line.startswith("| klein4b parity (64², 4 steps) | float32 |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[2] in ("0 levels", "1 levels") and float(cells[3].split()[0]) < 0.001 and cells[4] == "0.00 %", row


@pytest.mark.parametrize("kind", ["fp8", "gguf-q8_0", "gguf-q4_k", "nvfp4"])
def test_random_quantised_blocks_decode_like_the_bf16_rows_weights(kind):
    """bench/gpu_quant.py fills GGUF / NVFP4 layers with random bytes: they must de-quantise to weights shaped like
    the bf16 rows' (zero mean, std 1/sqrt(fan_in)), or the quant rows would time a model whose activations blow up
    (or vanish) instead of the real one; and the transformer must still give a finite step."""
    import torch
    from torch import nn

    from comfyui_flux2.bench.gpu_full_size import params_for
    from comfyui_flux2.bench.gpu_quant import quantize_blocks
    from comfyui_flux2.bench.gpu_random import built_random
    from comfyui_flux2.flux2.local.model.sampling import image_ids, text_ids
    from comfyui_flux2.flux2.local.model.transformer import Flux2Transformer

    p = params_for("klein4b", tiny=True)
    model = built_random(lambda: Flux2Transformer(p), "cpu", torch.float32)
    linears = sum(type(m) is nn.Linear for b in (model.double_blocks, model.single_blocks) for m in b.modules())
    assert quantize_blocks(model, kind, torch.float32) == linears > 0
    layers = [m for b in (model.double_blocks, model.single_blocks) for m in b.modules() if hasattr(m, "dequantized")]
    assert len(layers) == linears
    for layer in layers:
        w = layer.dequantized(torch.float32)
        assert w.shape == (layer.out_features, layer.in_features) and torch.isfinite(w).all()
        target = layer.in_features ** -0.5
        assert 0.75 * target < w.std().item() < 1.33 * target, (layer, w.std().item(), target)
        assert abs(w.mean().item()) < 0.15 * target
    x = torch.randn(1, 16, 128)
    out = model(x, image_ids(4, 4), torch.randn(1, 8, p.context_dim), text_ids(8), torch.tensor([0.5]),
                torch.tensor([4.0]) if p.guidance_embed else None)
    assert out.shape == x.shape and torch.isfinite(out).all()
