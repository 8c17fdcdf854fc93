"""Flux2Seed and Flux2Size: small helpers that feed the generation nodes."""
from __future__ import annotations

from ..flux2.backend import Backend
from ..flux2.rules import DEFAULT_RULES, delivered_size
from ..flux2.sizes import ASPECT_RATIOS, CUSTOM, chosen_size, describe
from .common import BACKEND_TYPE, CATEGORY, seed_input


class Flux2Seed:
    DESCRIPTION = "One seed for several nodes, with control-after-generate (fixed/increment/randomize)."
    CATEGORY = CATEGORY
    RETURN_TYPES = ("INT",)
    RETURN_NAMES = ("seed",)
    FUNCTION = "seed"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"seed": seed_input("The seed passed to every connected node.")}}

    def seed(self, seed):
        return (int(seed),)


class Flux2Size:
    DESCRIPTION = ("Width and height from an aspect ratio and megapixels (or explicit W x H with 'custom'), "
                   "snapped to a multiple of 16 and kept within the model's limits (FLUX.2: up to 4 MP). With a "
                   "FLUX 3 Image backend connected it outputs the size that model delivers (its nearest aspect "
                   "ratio x resolution).")
    CATEGORY = CATEGORY
    RETURN_TYPES = ("INT", "INT")
    RETURN_NAMES = ("width", "height")
    FUNCTION = "size"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "aspect_ratio": (list(ASPECT_RATIOS) + [CUSTOM], {"default": "1:1",
                                 "tooltip": "Width:height. 'custom' uses the width and height below."}),
                "megapixels": ("FLOAT", {"default": 1.0, "min": 0.1, "max": 16.0, "step": 0.05,
                               "tooltip": "Output area in megapixels (1 MP = 1024x1024)."}),
                "width": ("INT", {"default": 1024, "min": 16, "max": 16384, "step": 16,
                          "tooltip": "Used with aspect_ratio 'custom'; snapped to 16 and fitted to the limits."}),
                "height": ("INT", {"default": 1024, "min": 16, "max": 16384, "step": 16,
                           "tooltip": "Used with aspect_ratio 'custom'; snapped to 16 and fitted to the limits."}),
            },
            "optional": {
                "backend": (BACKEND_TYPE, {"tooltip": "Optional: apply this model's own size limits."}),
            },
        }

    def size(self, aspect_ratio, megapixels, width, height, backend=None):
        rules = backend.rules() if isinstance(backend, Backend) else DEFAULT_RULES
        asked = chosen_size(aspect_ratio, float(megapixels), width, height, rules.sizes)
        w, h = delivered_size(rules, *asked)
        text = describe(w, h) + (f" (what the model delivers for {asked[0]}x{asked[1]})" if (w, h) != asked else "")
        return {"ui": {"text": [text]}, "result": (w, h)}
