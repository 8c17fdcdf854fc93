"""HTTP routes for the editor extension (web/flux2.js): limits, sizes and cost before Queue.

The browser never re-implements a rule: it sends what the graph holds and shows what the engine
answers, so sizes come from ``flux2.sizes`` and prices from ``flux2.pricing.estimate`` -- the very
functions the nodes run -- and the numbers in the editor cannot drift from the billed ones.

* ``GET  /flux2/models``  -- the model table (``models_json()``): ids, size rules, max refs, prices.
* ``POST /flux2/preview`` -- ``{"items": [...]}`` -> ``{"items": [...]}`` (``preview()``): for each
  item the resolved output size, its megapixels, the rule it breaks (if any) and the estimate.

ComfyUI also serves both under ``/api/...``. Nothing here imports ComfyUI at module level; routes are
registered only when this runs inside a ComfyUI server (``register()``), so the CLI and the unit
tests import this module freely and call the JSON builders directly.
"""
from __future__ import annotations

import logging
import math
import sys
from dataclasses import asdict
from typing import Any

from ..flux2.errors import Flux2Error
from ..flux2.models import MAX_REFS_ANY, MODELS, PROVIDERS, get_model
from ..flux2.pricing import estimate, format_usd
from ..flux2.sizes import (ASPECT_RATIOS, MEGAPIXEL, SizeLimits, billed_megapixels, fit_size, megapixels,
                           size_from_aspect, snap, validate_size)

log = logging.getLogger("comfyui_flux2")


def size_limits(model, pm) -> SizeLimits:
    """flux2.remote.common's rule, imported on the editor's first request: that module pulls the
    HTTP client in, which ComfyUI must not pay for when it loads the pack."""
    from ..flux2.remote.common import size_limits as rule

    return rule(model, pm)

API_VERSION = 1
# What the editor assumes for a reference whose size it cannot know before a run (an upstream node's
# output): billed as 1 MP, the minimum a provider bills per image. The badge says so.
ASSUMED_REF_SIZE = (1024, 1024)
MAX_ITEMS = 64
LOCAL_BACKEND_TYPES = ("Flux2LocalBackend", "Flux2ComfyBackend")
CUSTOM_ASPECT = "custom"   # nodes/util_nodes.py CUSTOM


def models_json() -> dict[str, Any]:
    """The model table as the browser sees it; generated from flux2/models.py, nothing typed twice."""
    defaults = SizeLimits()
    return {
        "version": API_VERSION,
        "megapixel": MEGAPIXEL,                       # MP convention: w*h / 1024^2
        "providers": list(PROVIDERS),
        "max_refs_any": MAX_REFS_ANY,
        "aspect_ratios": list(ASPECT_RATIOS),
        "default_limits": asdict(defaults),
        "assumed_reference": list(ASSUMED_REF_SIZE),
        "models": {
            name: {
                "family": m.family,
                "multiple": m.multiple,
                "max_side": m.max_side,
                "max_pixels": m.max_pixels,
                "default_steps": m.default_steps,
                "default_guidance": m.default_guidance,
                "providers": {
                    prov: {
                        "model_id": pm.model_id,
                        "max_refs": pm.max_refs,
                        "min_side": pm.min_side,
                        "price": asdict(pm.price) if pm.price is not None else None,
                        "limits": asdict(size_limits(m, pm)),
                    }
                    for prov, pm in m.providers.items()
                },
            }
            for name, m in MODELS.items()
        },
    }


# --------------------------------------------------------------------------------------------
# preview: sizes + estimate for what the graph holds now
# --------------------------------------------------------------------------------------------

def _int(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{what} must be a number")
    return int(value)


def _limits(backend: dict | None) -> tuple[SizeLimits, str | None]:
    """Size rules of the connected backend; (defaults, None) when none or unknown."""
    if not backend:
        return SizeLimits(), None
    provider, model = backend.get("provider"), backend.get("model")
    if provider is None or model is None:
        return SizeLimits(), None
    spec = get_model(str(model))
    return size_limits(spec, spec.on(str(provider))), f"{spec.name} on {provider}"


def _resolve_size(size: Any, target_limits: SizeLimits) -> tuple[int | None, int | None, str | None]:
    """A size spec -> (w, h, note). Specs: {"width", "height"} numbers, {"flux2_size": {...}} (the
    values of a linked Flux2Size), {"follow": [w, h]} (edit output following reference 1), or
    {"follow": null} (reference 1 not known before the run), {"unknown": why}."""
    if not isinstance(size, dict):
        raise ValueError("size must be an object")
    if "flux2_size" in size:
        fs = size["flux2_size"] or {}
        limits, _ = _limits(fs.get("backend"))
        aspect = str(fs.get("aspect_ratio", "1:1"))
        if aspect == CUSTOM_ASPECT:
            w = _int(fs.get("width"), "width")
            h = _int(fs.get("height"), "height")
            w, h = fit_size(snap(w, limits.multiple), snap(h, limits.multiple), limits)
        else:
            mp = fs.get("megapixels")
            if isinstance(mp, bool) or not isinstance(mp, (int, float)):
                raise ValueError("megapixels must be a number")
            w, h = size_from_aspect(aspect, float(mp), limits)
        return w, h, None
    if "unknown" in size:   # linked to a node whose value the editor cannot know before the run
        return None, None, str(size["unknown"] or "size known after the run")[:200]
    if "follow" in size:
        ref = size["follow"]
        if not ref:
            return None, None, "output follows reference 1"
        w, h = fit_size(_int(ref[0], "reference width"), _int(ref[1], "reference height"), target_limits)
        return w, h, "follows reference 1"
    return _int(size.get("width"), "width"), _int(size.get("height"), "height"), None


def preview_item(item: dict) -> dict[str, Any]:
    """One node's readout. Raises ValueError/Flux2Error for input it cannot use."""
    backend = item.get("backend") or None
    local = bool(backend and backend.get("type") in LOCAL_BACKEND_TYPES)
    limits, backend_name = _limits(None if local else backend)
    width, height, note = _resolve_size(item.get("size") or {}, limits)
    out: dict[str, Any] = {"width": width, "height": height, "note": note, "problems": [],
                           "backend": backend_name, "limits": asdict(limits)}
    if width is not None and height is not None:
        out["megapixels"] = round(megapixels(width, height), 4)
        out["billed_megapixels"] = billed_megapixels(width, height)
        try:
            validate_size(width, height, limits, what="size")
        except Flux2Error as exc:   # the readout names the backend on its own line
            out["problems"].append(str(exc).removeprefix("size: "))
    if item.get("kind") != "generate":
        return out

    refs = item.get("references") or []
    if not isinstance(refs, list):
        raise ValueError("references must be a list")
    known = [(_int(r[0], "reference width"), _int(r[1], "reference height")) for r in refs if r]
    assumed = len(refs) - len(known)
    ref_sizes = known + [ASSUMED_REF_SIZE] * assumed
    batch = max(1, _int(item.get("batch", 1), "batch"))
    out.update(references=len(refs), references_assumed=assumed, batch=batch)
    if backend and not local and backend_name:
        spec = get_model(str(backend["model"]))
        pm = spec.on(str(backend["provider"]))
        out["max_refs"] = pm.max_refs
        if len(refs) > pm.max_refs:
            out["problems"].append(f"{len(refs)} references; this model takes at most {pm.max_refs}")
        # Unknown output size (edit following an unseen reference): price the 1 MP minimum and say so.
        ew, eh = (width, height) if width is not None else ASSUMED_REF_SIZE
        est = estimate(spec, str(backend["provider"]), ew, eh, ref_sizes, batch)
        out.update(usd=est.usd, cost=format_usd(est.usd) if est.usd is not None else None,
                   detail=est.detail, output_assumed=width is None)
    elif local:
        out.update(usd=0.0, cost="$0", detail="local weights: no API cost", output_assumed=False)
    else:
        out.update(usd=None, cost=None, detail="connect a FLUX.2 backend to see the cost",
                   output_assumed=width is None)
    return out


def preview(body: Any) -> dict[str, Any]:
    """``{"items": [{"id", "kind": "size"|"generate", "backend", "size", "references", "batch"}]}``
    -> ``{"items": [{"id", ...readout} | {"id", "error"}]}``; one bad item never fails the others."""
    items = body.get("items") if isinstance(body, dict) else None
    if not isinstance(items, list):
        raise ValueError('body must be {"items": [...]}')
    results = []
    for item in items[:MAX_ITEMS]:
        if not isinstance(item, dict):
            results.append({"id": None, "error": "item must be an object"})
            continue
        try:
            res = preview_item(item)
        except (ValueError, TypeError, IndexError, KeyError, Flux2Error) as exc:
            res = {"error": str(exc) or exc.__class__.__name__}
        res["id"] = item.get("id")
        results.append(res)
    return {"items": results}


# --------------------------------------------------------------------------------------------
# registration inside ComfyUI
# --------------------------------------------------------------------------------------------

def _prompt_server():
    """ComfyUI's PromptServer instance, or None outside a ComfyUI server process.

    main.py imports ``server`` before it loads custom nodes; outside ComfyUI we import nothing (a
    random top-level ``server`` module of another program must not be touched)."""
    if "comfy" not in sys.modules and "server" not in sys.modules:
        return None
    try:
        from server import PromptServer  # type: ignore[import-not-found]
    except Exception:
        return None
    return getattr(PromptServer, "instance", None)


def register() -> bool:
    """Add the routes to ComfyUI's route table; False (and nothing done) outside ComfyUI."""
    instance = _prompt_server()
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
