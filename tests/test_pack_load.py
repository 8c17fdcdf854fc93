"""Loading the pack stays light: inside ComfyUI (torch already there) no HTTP client, tokenizer,
weights reader, image library or model code is imported until a node runs; the CLI's ``--help`` and
``models`` start without torch. Times are measured by ``comfyui-flux2 benchmark load``, not here."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from comfyui_flux2.bench import load


def _run(code: str) -> dict:
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_comfyui_load_imports_no_heavy_module():
    code = ("import json, sys, torch, comfyui_flux2\n"
            "m = comfyui_flux2.NODE_CLASS_MAPPINGS\n"
            "print(json.dumps({'nodes': sorted(m), 'loaded': sorted(sys.modules)}))")
    out = _run(code)
    assert {"Flux2TextToImage", "Flux2Edit", "Flux2RemoteBackend", "Flux2Size", "Flux2Seed"} <= set(out["nodes"])
    loaded = set(out["loaded"])
    for heavy in load.HEAVY + ("rich", "click", "comfyui_flux2.flux2.local.model.autoencoder",
                               "comfyui_flux2.flux2.local.model.text_encoder",
                               "comfyui_flux2.flux2.local.model.tokenizer",
                               "comfyui_flux2.flux2.remote.runware", "comfyui_flux2.flux2.remote.bfl",
                               # this session's additions: LoRA math, batch runner, its Ray executor
                               "ray", "peft", "comfyui_flux2.flux2.local.weights.lora", "comfyui_flux2.runner.batch",
                               "comfyui_flux2.flux2.local.weights.lora_keys",
                               "comfyui_flux2.flux2.local.weights.lora_patches",
                               "comfyui_flux2.runner.batch.ray_executor", "comfyui_flux2.flux2.remote.wire"):
        assert heavy not in loaded, f"{heavy} is imported when ComfyUI loads the pack"


def test_plain_import_builds_no_nodes():
    out = _run("import json, sys, comfyui_flux2\n"
               "print(json.dumps({'nodes': 'comfyui_flux2.nodes' in sys.modules, 'torch': 'torch' in sys.modules}))")
    assert out == {"nodes": False, "torch": False}


def test_cli_help_and_models_start_without_torch():
    for argv in (["--help"], ["models"]):
        r = load.measure_cli(argv, runs=1)
        assert r["torch"] is False, argv


def test_mappings_and_web_directory_are_what_comfyui_reads():
    import comfyui_flux2
    from comfyui_flux2 import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS, nodes

    assert comfyui_flux2.WEB_DIRECTORY == "./web"
    assert NODE_CLASS_MAPPINGS is nodes.NODE_CLASS_MAPPINGS
    assert set(NODE_DISPLAY_NAME_MAPPINGS) == set(NODE_CLASS_MAPPINGS)
    assert not hasattr(comfyui_flux2, "comfy_entrypoint")   # ComfyUI reads the mappings, not a v3 entry point


@pytest.mark.slow   # fast suite < 2 min; CI runs it (--run-slow)
def test_benchmark_load_prints_medians(capsys):
    assert load.main(["--runs", "1"]) == 0
    out = capsys.readouterr().out
    assert "heavy modules loaded: none" in out
    assert out.count("median") == 4 and "torch imported: no" in out
