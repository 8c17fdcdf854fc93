"""ComfyUI node classes (classic style: no ComfyUI import at definition time)."""
from __future__ import annotations

import importlib
import logging

from .backend_nodes import Flux2RemoteBackend
from .catalog import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS
from .generate_nodes import Flux2Edit, Flux2TextToImage
from .layout_node import Flux2Layout
from .lora_node import Flux2LoRA
from .reference_nodes import Flux2ReferenceURL
from .util_nodes import Flux2Seed, Flux2Size

NODE_CLASS_MAPPINGS.update({
    "Flux2RemoteBackend": Flux2RemoteBackend,
    "Flux2TextToImage": Flux2TextToImage,
    "Flux2Edit": Flux2Edit,
    "Flux2Seed": Flux2Seed,
    "Flux2Size": Flux2Size,
    "Flux2ReferenceURL": Flux2ReferenceURL,
    "Flux2LoRA": Flux2LoRA,
    "Flux2Layout": Flux2Layout,
})
NODE_DISPLAY_NAME_MAPPINGS.update({
    "Flux2RemoteBackend": "FLUX.2 Remote Backend (Runware / BFL)",
    "Flux2TextToImage": "FLUX.2 Text to Image",
    "Flux2Edit": "FLUX.2 Edit (multi-reference)",
    "Flux2Seed": "FLUX.2 Seed",
    "Flux2Size": "FLUX.2 Size",
    "Flux2ReferenceURL": "FLUX.2 Reference by URL",
    "Flux2LoRA": "FLUX.2 LoRA",
    "Flux2Layout": "FLUX Layout boxes (FLUX 3)",
})

# The local backends are optional at import time: a broken extra must not hide the remote nodes, nor each other.
for _module in ("local_backend", "comfy_backend"):
    try:
        _mod = importlib.import_module(f".{_module}", __name__)
    except ImportError as exc:  # pragma: no cover - reported, not fatal
        logging.getLogger("comfyui_flux2").warning("%s nodes unavailable: %s", _module, exc)
    else:
        NODE_CLASS_MAPPINGS.update(_mod.NODE_CLASS_MAPPINGS)
        NODE_DISPLAY_NAME_MAPPINGS.update(_mod.NODE_DISPLAY_NAME_MAPPINGS)
