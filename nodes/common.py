"""Input declarations shared by the nodes, so every node spells a widget the same way."""
from __future__ import annotations

BACKEND_TYPE = "FLUX2_BACKEND"
CATEGORY = "FLUX.2"
MAX_SEED = 0xFFFFFFFF   # what both providers accept; ComfyUI's default seed max is larger


def seed_input(tooltip: str) -> tuple:
    return ("INT", {"default": 0, "min": 0, "max": MAX_SEED, "control_after_generate": True,
                    "tooltip": tooltip})


def side_input(default: int, tooltip: str, minimum: int = 64) -> tuple:
    return ("INT", {"default": default, "min": minimum, "max": 2048, "step": 16, "tooltip": tooltip})


class BackendNode:
    """What every backend node declares: one FLUX2_BACKEND output, built by `build`."""

    CATEGORY = CATEGORY
    RETURN_TYPES = (BACKEND_TYPE,)
    RETURN_NAMES = ("backend",)
    FUNCTION = "build"
