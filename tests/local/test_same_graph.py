"""The shipped chain workflow, backend node swapped for local weights, runs unchanged otherwise."""
from __future__ import annotations

import json
from pathlib import Path

from PIL import Image

from comfyui_flux2.cli import node_registry
from comfyui_flux2.flux2.local import backend as lb
from comfyui_flux2.flux2.local.model import params
from comfyui_flux2.flux2.run_context import RunContext
from comfyui_flux2.runner import executor as ex

WORKFLOWS = Path(__file__).resolve().parents[2] / "workflows"


def test_chain_workflow_runs_on_local_weights(klein, tmp_path, monkeypatch):
    _, root, _ = klein

    class TinyLocalBackend:   # stands in for Flux2LocalBackend, whose presets are the real model sizes
        RETURN_TYPES = ("FLUX2_BACKEND",)
        FUNCTION = "build"

        @classmethod
        def INPUT_TYPES(cls):
            return {"required": {}}

        def build(self):
            files = lb.LocalFiles(diffusers_dir=root / "diffusers" / "flux2-tiny")
            return (lb.LocalBackend("FLUX.2 [klein] 4B", files, dtype="fp32", device="cpu", steps=2,
                                    preset=params.tiny_preset("klein", True)),)

    prompt = json.loads((WORKFLOWS / "api" / "flux2_chain_edit.json").read_text())
    prompt["1"] = {"class_type": "TinyLocalBackend", "inputs": {}}
    prompt["3"]["inputs"].update(width=80, height=64)          # CPU-sized; the edits follow their reference
    run = ex.Executor(prompt, registry={**node_registry(), "TinyLocalBackend": TinyLocalBackend},
                      input_dir=WORKFLOWS, output_dir=tmp_path)
    report = run.run(RunContext())
    sizes = []
    for path in sorted(report.saved):
        with Image.open(path) as img:
            sizes.append(img.size)
    assert sizes == [(80, 64)] * 3
    assert report.ctx.ledger.billed_total == 0.0
