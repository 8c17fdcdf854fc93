"""Flux2RemoteBackend: choose a provider and model; outputs a backend for the generation nodes."""
from __future__ import annotations

from ..flux2.models import MODELS, PROVIDERS
from ..flux2.remote.factory import make_remote_backend
from ..flux2.remote.options import GROUNDING, MODES, ON_MODERATION, OUTPUT_FORMATS, RemoteOptions
from .common import BackendNode


class Flux2RemoteBackend(BackendNode):
    DESCRIPTION = ("FLUX.2, FLUX 3 Image or FLUX 3.1 Image on a remote provider with your own key (RUNWARE_API_KEY "
                   "or BFL_API_KEY in the environment; never stored in the workflow). Swap this node for "
                   "Flux2LocalBackend to run the same graph on local weights. FLUX 3 takes no seed: the seed "
                   "widget still re-runs the node, and the seed output is the seed the provider reports.")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "provider": (list(PROVIDERS), {"default": "runware",
                         "tooltip": "runware: Runware imageInference (RUNWARE_API_KEY). "
                                    "bfl: Black Forest Labs API directly (BFL_API_KEY)."}),
            "model": (list(MODELS), {"default": "FLUX.2 [pro]",
                      "tooltip": "FLUX.2 variant. Limits (size, references) and prices follow the model."}),
            "prompt_upsampling": ("BOOLEAN", {"default": False,
                                  "tooltip": "Let the provider rewrite the prompt. Off keeps edits faithful to "
                                             "their references. FLUX 3 always expands the prompt (the expanded "
                                             "one is kept in the PNG's metadata)."}),
            "safety_tolerance": ("INT", {"default": 2, "min": 0, "max": 5,
                                 "tooltip": "0 = strictest moderation, 5 = most permissive (FLUX 3: up to 4)."}),
            "output_format": (list(OUTPUT_FORMATS), {"default": "PNG",
                              "tooltip": "PNG is lossless, best when the output feeds another edit."}),
            "output_quality": ("INT", {"default": 95, "min": 20, "max": 99,
                               "tooltip": "JPEG/WEBP quality; ignored for PNG."}),
            "steps": ("INT", {"default": 0, "min": 0, "max": 50,
                      "tooltip": "0 = the model's default. Only [flex], [dev] and [klein] take steps."}),
            "guidance": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 10.0, "step": 0.1,
                         "tooltip": "0 = the model's default. Only [flex], [dev] and [klein] Base take guidance."}),
            "on_moderation": (list(ON_MODERATION), {"default": "error",
                              "tooltip": "error: stop the graph with a clear message. placeholder: output a grey "
                                         "image and carry on (moderated requests are not charged)."}),
        },
            # Optional and last, so workflows saved before they existed load with their widget values in place.
            "optional": {
            "grounding": (list(GROUNDING), {"default": "default",
                          "tooltip": "FLUX 3 only: let the model search the web and images before generating. "
                                     "FLUX 3 Image: off/on (BFL's default on); FLUX 3.1 Image: off/auto/force "
                                     "(default off). default = the provider's default."}),
            "mode": (list(MODES), {"default": "default",
                     "tooltip": "FLUX 3.1 Image only: fast (cheaper) or quality (BFL's default)."}),
        }}

    def build(self, provider, model, prompt_upsampling, safety_tolerance, output_format, output_quality,
              steps, guidance, on_moderation, grounding="default", mode="default"):
        options = RemoteOptions(prompt_upsampling=bool(prompt_upsampling), safety_tolerance=int(safety_tolerance),
                                output_format=output_format, output_quality=int(output_quality), steps=int(steps),
                                guidance=float(guidance), on_moderation=on_moderation, grounding=grounding,
                                mode=mode)
        return (make_remote_backend(provider, model, options),)
