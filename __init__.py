"""comfyui-flux2: FLUX.2 nodes for ComfyUI, also a Python library (`comfyui_flux2.flux2`) and a CLI.

ComfyUI imports this folder as a custom-node pack and reads the mappings below.
"""
from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

WEB_DIRECTORY = "./web"

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "WEB_DIRECTORY"]
