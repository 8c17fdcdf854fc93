"""Flux2LoRA: backend in, backend out with one more LoRA; chain several.

Local weights: a file from ComfyUI's `loras` folder (folder_paths), or `<models dir>/loras` outside ComfyUI (CLI),
applied on the fly (flux2/local/weights/lora.py). Runware: the LoRA's Runware model id (AIR) and weight, sent in the
request where the model takes LoRAs. Other backends refuse in one line (the dry run stops there too).
No ComfyUI import at module level.
"""
from __future__ import annotations

import logging

from ..flux2.errors import InputError
from .comfy_hooks import folder_paths
from .common import BACKEND_TYPE, CATEGORY, backend_input

log = logging.getLogger("comfyui_flux2")
NONE = "(none)"


def list_loras() -> list[str]:
    """LoRA file names, as ComfyUI's own LoRA loaders list them (or from <models dir>/loras outside ComfyUI)."""
    fp = folder_paths()
    if fp is not None:
        try:
            return sorted(fp.get_filename_list("loras"))
        except (KeyError, OSError) as exc:        # an unreadable loras folder: list nothing rather than fail
            log.warning("cannot list ComfyUI's 'loras' folder: %s", exc)
            return []
    from ..flux2.errors import ConfigError
    from ..flux2.local.weights.models_dir import list_files, models_root

    try:
        return list_files("loras", models_root())
    except ConfigError:
        return []


def resolve_lora(name: str):
    """Widget value -> full path inside the loras folder (never outside it)."""
    from pathlib import Path

    from ..flux2.local.weights.models_dir import models_root, resolve

    fp = folder_paths()
    if fp is not None:
        full = fp.get_full_path("loras", name)     # None for a name outside its folders (it refuses traversal)
        if full:
            return Path(full)
        from ..flux2.errors import ModelLoadError
        raise ModelLoadError(f"LoRA file {name!r} not found in ComfyUI's loras folder")
    return resolve(name, "loras", models_root())


class Flux2LoRA:
    DESCRIPTION = ("Adds a LoRA to a FLUX.2 backend; chain several. Flux2LocalBackend: a file from the loras folder, "
                   "applied on the fly (fp8 weights stay fp8; switching LoRAs does not reload the model). Runware "
                   "[dev]/[klein]: the LoRA's Runware model id. BFL and [pro]/[max]/[flex] take none. For "
                   "Flux2ComfyBackend use ComfyUI's LoraLoaderModelOnly on the MODEL instead.")
    CATEGORY = CATEGORY
    RETURN_TYPES = (BACKEND_TYPE,)
    RETURN_NAMES = ("backend",)
    FUNCTION = "apply"

    @classmethod
    def INPUT_TYPES(cls):
        names = [NONE] + list_loras()
        return {"required": {
            "backend": (BACKEND_TYPE, {"tooltip": "A FLUX.2 backend (or another Flux2LoRA)."}),
            "lora_name": (names, {"default": names[0],
                          "tooltip": "A LoRA file in models/loras (local backends). Every FLUX.2 LoRA layout "
                                     "ComfyUI reads: ComfyUI / ai-toolkit, kohya, diffusers/PEFT, LoKr, LoHa."}),
            "strength": ("FLOAT", {"default": 1.0, "min": -100.0, "max": 100.0, "step": 0.01,
                         "tooltip": "Multiplier of the LoRA's update (ComfyUI's strength_model). 0 = no LoRA."}),
        }, "optional": {
            "runware_lora": ("STRING", {"default": "",
                             "tooltip": "Runware only: the LoRA's Runware model id (AIR), e.g. civitai:12345@67890; "
                                        "strength is sent as its weight."}),
        }}

    def apply(self, backend, lora_name, strength, runware_lora=""):
        backend = backend_input(backend)
        strength = float(strength)
        # What the backend declares it takes decides which widget is read; one that takes none refuses in its
        # own words (naming itself) in with_lora.
        if backend.takes_loras == "file":
            if lora_name in (NONE, "", None):
                raise InputError("Flux2LoRA: choose a LoRA file (models/loras) for the local backend")
            return (backend.with_lora(resolve_lora(lora_name), strength),)
        return (backend.with_lora(str(runware_lora or "").strip(), strength),)


NODE_CLASS_MAPPINGS = {"Flux2LoRA": Flux2LoRA}
NODE_DISPLAY_NAME_MAPPINGS = {"Flux2LoRA": "FLUX.2 LoRA"}

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "Flux2LoRA"]
