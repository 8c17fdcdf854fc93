"""comfyui-flux2: FLUX.2 nodes for ComfyUI, also a Python library (`comfyui_flux2.flux2`) and a CLI.

ComfyUI imports this folder as a custom-node pack and reads the mappings below.
"""
from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

WEB_DIRECTORY = "./web"

try:  # editor routes for web/flux2.js (size/cost preview); registers only inside a ComfyUI server
    from .nodes import web_routes as _web_routes

    _web_routes.register()
except Exception as _exc:  # pragma: no cover - the editor loses its preview, the nodes still load
    import logging

    logging.getLogger("comfyui_flux2").warning("FLUX.2 editor routes unavailable: %s", _exc)

try:  # the example workflows' reference images in ComfyUI's input folder (never replacing a file)
    from .nodes.example_inputs import provide_example_images as _provide_example_images

    _provide_example_images()
except Exception as _exc:  # pragma: no cover - the examples then need their images copied by hand
    import logging

    logging.getLogger("comfyui_flux2").warning("FLUX.2 example images not provided: %s", _exc)

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "WEB_DIRECTORY"]
