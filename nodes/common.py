"""Input declarations shared by the nodes, so every node spells a widget the same way."""
from __future__ import annotations

from ..flux2.backend import Backend
from ..flux2.errors import InputError
from ..flux2.models import MODELS
from ..flux2.rules import FLUX2_SIZES, MAX_SEED, WIDGET_MAX_BATCH   # the widgets stop where every backend's rules do

# Width/height widgets reach the largest side any model takes (FLUX 3.1 Image: 11584 at 8:1); each backend's
# rules then say what its model takes, so the widget never hides a size a model could make.
WIDGET_MAX_SIDE = max(m.max_side for m in MODELS.values())
LAYOUT_TYPE = "FLUX2_LAYOUT"

BACKEND_TYPE = "FLUX2_BACKEND"
# A reference given by URL travels as its own type; Flux2Edit's reference sockets take either it or an
# IMAGE (ComfyUI and its frontend both accept a link whose type is one of a comma-separated union).
REFERENCE_TYPE = "FLUX2_REFERENCE"
REFERENCE_SOCKET = f"IMAGE,{REFERENCE_TYPE}"
CATEGORY = "FLUX.2"


def seed_input(tooltip: str) -> tuple:
    return ("INT", {"default": 0, "min": 0, "max": MAX_SEED, "control_after_generate": True,
                    "tooltip": tooltip})


def batch_input(tooltip: str) -> tuple:
    return ("INT", {"default": 1, "min": 1, "max": WIDGET_MAX_BATCH, "tooltip": tooltip})


def side_input(default: int, tooltip: str, minimum: int = 64) -> tuple:
    return ("INT", {"default": default, "min": minimum, "max": WIDGET_MAX_SIDE, "step": FLUX2_SIZES.multiple,
                    "tooltip": tooltip})


class BackendNode:
    """What every backend node declares: one FLUX2_BACKEND output, built by `build`."""

    CATEGORY = CATEGORY
    RETURN_TYPES = (BACKEND_TYPE,)
    RETURN_NAMES = ("backend",)
    FUNCTION = "build"


def backend_input(value) -> Backend:
    """A node's backend input as a Backend, or one line saying where it must come from."""
    if not isinstance(value, Backend):
        raise InputError("the backend input must come from Flux2RemoteBackend, Flux2LocalBackend or Flux2ComfyBackend")
    return value
