"""The ComfyUI-core row of `comfyui-flux2 benchmark local`: ComfyUI's own FLUX.2 transformer.

Run by bench/local.py as `python -m <pack>.bench.comfyui_peer --worker comfyui CONFIG ... --comfyui DIR`
(in an interpreter with ComfyUI's requirements); it lives outside flux2/ because it imports ComfyUI.
"""
from __future__ import annotations

import sys
from pathlib import Path


def comfyui_model(hidden, heads, nd, ns, tdim, axes, device, dtype, w, h, txt, t):
    """comfy.ldm.flux.model.Flux with the settings ComfyUI's model detection gives FLUX.2, random weights, run as
    ComfyUI runs it on this device (its own attention choice included)."""
    import torch

    import comfy.ops
    from comfy.ldm.flux.model import Flux

    model = Flux(image_model="flux2", in_channels=128, out_channels=128, vec_in_dim=None, context_in_dim=tdim,
                 hidden_size=hidden, mlp_ratio=3.0, num_heads=heads, depth=nd, depth_single_blocks=ns,
                 axes_dim=list(axes), theta=2000, patch_size=1, qkv_bias=False, guidance_embed=False,
                 global_modulation=True, mlp_silu_act=True, ops_bias=False, default_ref_method="index",
                 ref_index_scale=10.0, operations=comfy.ops.disable_weight_init)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():                                 # comfy's ops leave weights uninitialised
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.02)
    latent = torch.randn(1, 128, h // 16, w // 16).to(device, dtype)          # [B, 128, H/16, W/16]

    def step():
        return model(latent, t, context=txt)

    return model, step


def main(argv: list[str] | None = None) -> int:
    from . import local as bench

    argv = list(sys.argv[1:] if argv is None else argv)
    if "--comfyui" in argv:
        folder = Path(argv[argv.index("--comfyui") + 1]).resolve()
        sys.path.insert(0, str(folder))
        import torch

        import comfy.cli_args

        device = argv[argv.index("--device") + 1] if "--device" in argv else "auto"
        # before model_management is imported: it picks its device at import time
        comfy.cli_args.args.cpu = device == "cpu" or not torch.cuda.is_available()
        import comfy.ops  # noqa: F401  (imported before the worker measures its memory baseline)
    return bench.main(argv, comfyui_builder=comfyui_model)


if __name__ == "__main__":
    raise SystemExit(main())
