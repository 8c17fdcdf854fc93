"""The tiny local demo: our engine + safetensors + tokenizers only (diffusers and transformers blocked)."""
from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest
from PIL import Image

from comfyui_flux2.flux2.errors import ModelLoadError


@pytest.mark.slow   # subprocesses / whole benchmark runs: over 4 s; CI runs it (--run-slow)
def test_local_demo_runs_without_diffusers(tmp_path):
    code = textwrap.dedent(f"""
        import sys, time
        sys.modules["diffusers"] = None       # import of either now fails
        sys.modules["transformers"] = None
        from comfyui_flux2.demo import run_local_demo
        t = time.perf_counter()
        paths = run_local_demo({str(tmp_path / "out")!r}, {str(tmp_path / "models")!r})
        print(f"demo took {{time.perf_counter() - t:.1f}} s")
        print("\\n".join(map(str, paths)))
    """)
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    print(res.stdout.splitlines()[0])
    lines = res.stdout.strip().splitlines()[1:]
    assert [p.rsplit("/", 1)[1] for p in lines] == ["flux2-local-demo-t2i.png", "flux2-local-demo-edit.png"]
    imgs = []
    for p in lines:
        with Image.open(p) as im:
            assert im.size == (64, 64) and im.mode == "RGB"
            imgs.append(np.asarray(im))
    assert not np.array_equal(imgs[0], imgs[1])
    models = tmp_path / "models"
    assert sorted(p.relative_to(models).as_posix() for p in models.rglob("*.safetensors")) == [
        "diffusion_models/flux2-klein-tiny-demo.safetensors", "text_encoders/qwen3-tiny-demo.safetensors",
        "vae/flux2-vae-tiny-demo.safetensors"]
    assert not list((models / "text_encoders").glob("*.json"))      # no tokenizer beside: the bundled one is used


def test_demo_model_is_refused_by_real_presets(tmp_path):
    from comfyui_flux2.flux2.local import backend as lb
    from comfyui_flux2.demo import DEMO_PRESET, demo_backend

    b = demo_backend(tmp_path)
    assert b.preset is DEMO_PRESET and b.model_name == "FLUX.2 [klein] tiny (demo)"
    real = lb.LocalBackend("FLUX.2 [klein] 4B", b.files, dtype="fp32", device="cpu")
    with pytest.raises(ModelLoadError, match=r"does not match FLUX.2 \[klein\] 4B: hidden 64 \(expected 3072\)"):
        real.engine()
