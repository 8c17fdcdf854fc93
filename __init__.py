"""comfyui-flux2: FLUX.2 nodes for ComfyUI, also a Python library (`comfyui_flux2.flux2`) and a CLI.

ComfyUI imports this folder as a custom-node pack and reads the mappings below. They are built on
first access (PEP 562 module ``__getattr__``), which ComfyUI makes right after the import: the CLI
(`comfyui-flux2 --help`, `models`) and the library never touch them, so they start without torch.
"""
WEB_DIRECTORY = "./web"
_NODE_EXPORTS = ("NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS")

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "WEB_DIRECTORY"]


def __getattr__(name: str):
    if name not in _NODE_EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from . import nodes

    _register_web_routes()
    _provide_example_images()
    globals().update(NODE_CLASS_MAPPINGS=nodes.NODE_CLASS_MAPPINGS,
                     NODE_DISPLAY_NAME_MAPPINGS=nodes.NODE_DISPLAY_NAME_MAPPINGS)
    return globals()[name]


def _register_web_routes() -> None:
    """Editor routes for web/flux2.js (size/cost preview); registers only inside a ComfyUI server."""
    try:
        from .nodes import web_routes

        web_routes.register()
    except Exception as exc:  # pragma: no cover - the editor loses its preview, the nodes still load
        import logging

        logging.getLogger("comfyui_flux2").warning("FLUX.2 editor routes unavailable: %s", exc)


def _provide_example_images() -> None:
    """The example workflows' reference images in ComfyUI's input folder (never replacing a file)."""
    try:
        from .nodes.example_inputs import provide_example_images

        provide_example_images()
    except Exception as exc:  # pragma: no cover - the examples then need their images copied by hand
        import logging

        logging.getLogger("comfyui_flux2").warning("FLUX.2 example images not provided: %s", exc)
