"""Flux2RemoteBackend: choose a provider and model; outputs a backend for the generation nodes."""
from __future__ import annotations

from ..flux2.models import MODELS, PROVIDERS
from ..flux2.remote.factory import make_remote_backend
from ..flux2.remote.options import ON_MODERATION, OUTPUT_FORMATS, RemoteOptions
from .common import BackendNode


class Flux2RemoteBackend(BackendNode):
    DESCRIPTION = ("FLUX.2 on a remote provider with your own key (RUNWARE_API_KEY or BFL_API_KEY in the "
                   "environment; never stored in the workflow). Swap this node for Flux2LocalBackend to run "
                   "the same graph on local weights.")

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
                                             "their references."}),
            "safety_tolerance": ("INT", {"default": 2, "min": 0, "max": 5,
                                 "tooltip": "0 = strictest moderation, 5 = most permissive."}),
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
        }}

    def build(self, provider, model, prompt_upsampling, safety_tolerance, output_format, output_quality,
              steps, guidance, on_moderation):
        options = RemoteOptions(prompt_upsampling=bool(prompt_upsampling), safety_tolerance=int(safety_tolerance),
                                output_format=output_format, output_quality=int(output_quality), steps=int(steps),
                                guidance=float(guidance), on_moderation=on_moderation)
        return (make_remote_backend(provider, model, options),)
