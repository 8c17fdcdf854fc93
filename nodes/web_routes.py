"""HTTP routes for the editor extension (web/flux2.js); what they answer is built in flux2/preview.py.

* ``GET  /flux2/models``  -- the model table (``models_json()``): ids, size rules, max refs, prices.
* ``POST /flux2/preview`` -- ``{"items": [...]}`` -> ``{"items": [...]}`` (``preview()``): for each
  item the resolved output size, its megapixels, the rule it breaks (if any) and the estimate.

ComfyUI also serves both under ``/api/...``. Nothing here imports ComfyUI at module level; routes are
registered only when this runs inside a ComfyUI server (``register()``), so the CLI and the unit
tests import this module freely.
"""
from __future__ import annotations

from ..flux2.preview import models_json, preview
from .comfy_hooks import prompt_server


# --------------------------------------------------------------------------------------------
# registration inside ComfyUI
# --------------------------------------------------------------------------------------------

def register() -> bool:
    """Add the routes to ComfyUI's route table; False (and nothing done) outside ComfyUI."""
    instance = prompt_server()
    routes = getattr(instance, "routes", None)
    if routes is None:
        return False
    if getattr(instance, "_flux2_routes_registered", False):   # a reloaded pack must not add them twice
        return True
    from aiohttp import web

    @routes.get("/flux2/models")
    async def flux2_models(request):  # noqa: ARG001
        return web.json_response(models_json(), headers={"Cache-Control": "no-cache"})

    @routes.post("/flux2/preview")
    async def flux2_preview(request):
        try:
            body = await request.json()
            return web.json_response(preview(body))
        except ValueError as exc:   # bad JSON or shape
            return web.json_response({"error": str(exc)}, status=400)

    instance._flux2_routes_registered = True
    return True
