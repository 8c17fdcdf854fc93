"""Random weights at real sizes, made on the device: `comfyui-flux2 benchmark gpu` downloads nothing.

A module is built on the meta device (no memory), then its storage is allocated and filled where it will run: on
a GPU the 8-18 GB of a [klein] transformer take well under a second to fill, where a CPU fill would take minutes.
"""
from __future__ import annotations

import itertools


def _scale_like(name: str) -> bool:
    """1-D tensors that multiply (norm scales, BatchNorm variance) start at 1; biases and means at 0."""
    leaf = name.rsplit(".", 1)[-1]
    if leaf in ("bias", "running_mean"):
        return False
    return leaf in ("scale", "running_var") or "norm" in name


def random_init_(module, device, seed: int = 0):
    """Allocate `module` (built under torch.device("meta")) on `device` and fill it: matrices and kernels
    N(0, 1/fan_in), so activations keep their scale through the real depths; returns the module."""
    import torch

    module.to_empty(device=device)
    g = torch.Generator(torch.device(device)).manual_seed(seed)
    with torch.no_grad():
        for name, t in itertools.chain(module.named_parameters(), module.named_buffers()):
            if not t.is_floating_point():
                t.zero_()
            elif t.ndim >= 2:
                t.normal_(0.0, t[0].numel() ** -0.5, generator=g)
            else:
                t.fill_(1.0 if _scale_like(name) else 0.0)
    return module


def built_random(factory, device, dtype, seed: int = 0):
    """`factory()` under the meta device, filled on `device`, cast to `dtype`, in eval mode without grads."""
    import torch

    with torch.device("meta"):
        module = factory().to(dtype)       # cast while nothing is allocated: the fill writes `dtype` directly
    return random_init_(module, device, seed).eval().requires_grad_(False)
