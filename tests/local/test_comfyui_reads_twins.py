"""Where ComfyUI 0.3.75's own loading code can read a twin, it must agree with ours.

- VAE: the BFL `ae.safetensors` twin goes through ComfyUI's VAE detection and key conversion (comfy/sd.py
  VAE.__init__: `encoder.quant_conv` / `decoder.post_quant_conv` renamed, BatchNorm latent statistics) and its
  LDM decoder. 0.3.75 hard-codes the full-size widths (ch 128, ch_mult 1-2-4-4, 2 res-blocks), so the test
  builds ComfyUI's AutoencoderKL at the twin's tiny widths; everything else is ComfyUI's code path.
- fp8mixed transformer: ComfyUI's mixed-precision ops (comfy.ops.mixed_precision_ops) read the `_quantization_metadata` header and the scalar
  `weight_scale`, and de-quantises each layer; the weights must equal ours.
(NVFP4 is checked against comfy_kitchen, the library newer ComfyUI reads it with: test_published_layouts.py.)
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from comfyui_flux2.flux2.local.weights import loading

import twins

pytestmark = pytest.mark.slow

SCRIPT = r"""
import json, sys
import numpy as np
import torch
comfy_dir, ae_path, fp8_path, latent_path, out_dir = sys.argv[1:6]
sys.path.insert(0, comfy_dir)
import comfy.cli_args
comfy.cli_args.args.cpu = True
import comfy.sd, comfy.utils, comfy.ops

real = comfy.sd.AutoencoderKL
def tiny_widths(ddconfig, embed_dim, **kw):          # 0.3.75 hard-codes the full-size widths
    ddconfig.update(ch=32, ch_mult=[1, 1, 1, 1], num_res_blocks=1)
    return real(ddconfig=ddconfig, embed_dim=embed_dim, **kw)
comfy.sd.AutoencoderKL = tiny_widths
vae = comfy.sd.VAE(sd=comfy.utils.load_torch_file(ae_path))
model = vae.first_stage_model.float().eval()
z = torch.from_numpy(np.load(latent_path))
with torch.no_grad():
    np.save(out_dir + "/decoded.npy", model.decode(z).numpy())
print("latent_channels", vae.latent_channels, "bn", model.bn is not None)

sd, meta = comfy.utils.load_torch_file(fp8_path, return_metadata=True)
layers = json.loads(meta["_quantization_metadata"])["layers"]
ops = comfy.ops.mixed_precision_ops(layers, torch.float32)
out = {}
pre = "model.diffusion_model."
for name in ["double_blocks.0.img_attn.qkv", "single_blocks.1.linear2"]:
    w = sd[pre + name + ".weight"]
    lin = ops.Linear(w.shape[1], w.shape[0], bias=False)
    state = {k[len(pre):]: v for k, v in sd.items() if k.startswith(pre + name + ".")}
    lin._load_from_state_dict(state, name + ".", {}, True, [], [], [])
    out[name] = lin.weight.dequantize().float().numpy()
np.savez(out_dir + "/fp8.npz", **out)
"""


def test_comfyui_reads_the_vae_and_fp8mixed_twins_as_we_do(klein, dev, tmp_path):
    from comfy_server import provision

    inst = provision()
    pipe = klein[0]
    ae = twins.write_bfl_vae(pipe.vae.state_dict(), tmp_path / "ae.safetensors")
    fp8 = twins.write_comfy_fp8mixed_transformer(dev[0].transformer.state_dict(),
                                                 tmp_path / "flux2_dev_fp8mixed.safetensors")
    z = torch.randn(1, 128, 4, 4, generator=torch.Generator().manual_seed(0))
    np.save(tmp_path / "z.npy", z.numpy())
    (tmp_path / "check.py").write_text(SCRIPT)
    res = subprocess.run([str(inst.python), str(tmp_path / "check.py"), str(inst.comfy_dir), str(ae), str(fp8),
                          str(tmp_path / "z.npy"), str(tmp_path)], capture_output=True, text=True, timeout=600,
                         cwd=str(inst.comfy_dir))
    assert res.returncode == 0, res.stderr[-3000:]
    assert "latent_channels 128 bn True" in res.stdout          # ComfyUI saw a FLUX.2 VAE (32 x 2x2)

    ours = loading.load_vae(ae, torch.float32)
    with torch.no_grad():
        mine = ours.decode(z).numpy()
    theirs = np.load(tmp_path / "decoded.npy")
    assert theirs.shape == mine.shape
    assert np.abs(theirs - mine).max() < 1e-5

    sd = loading.read_safetensors(fp8, torch.float32, keep_fp8=False)
    got = np.load(tmp_path / "fp8.npz")
    for name in ("double_blocks.0.img_attn.qkv", "single_blocks.1.linear2"):
        assert np.array_equal(got[name], sd[f"model.diffusion_model.{name}.weight"].numpy()), name


def test_chain_workflow_with_auto_runs_inside_comfyui_from_its_model_folders(klein, tmp_path):
    """The real ComfyUI 0.3.75 server: the twins sit in its own models/ folders, Flux2LocalBackend(model=auto)
    finds them through folder_paths, and the shipped chain workflow saves three pictures."""
    from comfy_server import run_workflow, start_server

    pipe = klein[0]
    base = tmp_path / "comfy"
    models = base / "models"
    twins.write_comfy_klein_models(pipe, models)
    prompt = json.loads((Path(__file__).resolve().parents[2] / "workflows" / "api" / "flux2_chain_edit.json").read_text())
    prompt["1"] = {"class_type": "Flux2LocalBackend", "inputs": {
        "model": "auto", "diffusion_model": "flux-2-klein-4b.safetensors", "text_encoder": "qwen_3_4b.safetensors",
        "vae": "flux2-vae.safetensors", "diffusers_folder": "(none)", "dtype": "fp32", "device": "cpu",
        "steps": 2, "guidance": 0.0, "offload": "none", "vae_tiling": "off"}}
    prompt["3"]["inputs"].update(width=80, height=64)
    server = start_server(base_dir=base)
    try:
        entry = run_workflow(server, prompt, timeout=600)
        saved = [img for out in entry["outputs"].values() for img in out.get("images", [])]
        assert len(saved) == 3
        for img in saved:
            assert (server.output_dir / img["subfolder"] / img["filename"]).is_file()
    finally:
        server.stop()
