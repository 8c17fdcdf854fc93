"""ComfyUI node classes (classic style: no ComfyUI import at definition time)."""
from __future__ import annotations

import logging

from .backend_nodes import Flux2RemoteBackend
from .generate_nodes import Flux2Edit, Flux2TextToImage
from .util_nodes import Flux2Seed, Flux2Size

NODE_CLASS_MAPPINGS = {
    "Flux2RemoteBackend": Flux2RemoteBackend,
    "Flux2TextToImage": Flux2TextToImage,
    "Flux2Edit": Flux2Edit,
    "Flux2Seed": Flux2Seed,
    "Flux2Size": Flux2Size,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "Flux2RemoteBackend": "FLUX.2 Remote Backend (Runware / BFL)",
    "Flux2TextToImage": "FLUX.2 Text to Image",
    "Flux2Edit": "FLUX.2 Edit (multi-reference)",
    "Flux2Seed": "FLUX.2 Seed",
    "Flux2Size": "FLUX.2 Size",
}

try:  # the local engine is optional at import time: a broken extra must not hide the remote nodes
    from .local_backend import NODE_CLASS_MAPPINGS as _LOCAL, NODE_DISPLAY_NAME_MAPPINGS as _LOCAL_NAMES
    from .comfy_backend import NODE_CLASS_MAPPINGS as _CORE, NODE_DISPLAY_NAME_MAPPINGS as _CORE_NAMES
except ImportError as exc:  # pragma: no cover - reported, not fatal
    logging.getLogger("comfyui_flux2").warning("local backend nodes unavailable: %s", exc)
else:
    NODE_CLASS_MAPPINGS.update(_LOCAL)
    NODE_DISPLAY_NAME_MAPPINGS.update(_LOCAL_NAMES)
    NODE_CLASS_MAPPINGS.update(_CORE)
    NODE_DISPLAY_NAME_MAPPINGS.update(_CORE_NAMES)
