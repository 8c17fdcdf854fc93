"""What the editor (web/flux2.js) shows before Queue: the model table, and per node its size and cost.

The browser never re-implements a rule: it sends what the graph holds and shows what the engine
answers, so sizes come from ``flux2.sizes`` and ``flux2.rules`` and prices from
``flux2.pricing.estimate`` -- the very functions the nodes run -- and the numbers in the editor cannot
drift from the billed ones. ``nodes/web_routes.py`` serves these two as JSON:

* ``models_json()`` -- the model table: ids, size rules, max refs, prices.
* ``preview(body)`` -- ``{"items": [...]}`` -> ``{"items": [...]}``: for each item the resolved output
  size, its megapixels, the rule it breaks (if any) and the estimate.
"""
from __future__ import annotations

import math
from dataclasses import asdict
from typing import Any

from . import flux3
from .errors import Flux2Error
from .models import MAX_REFS_ANY, MODELS, PROVIDERS, get_model
from .pricing import estimate, format_usd
from .rules import DEFAULT_RULES, Rules, remote_rules, rules_for
from .sizes import ASPECT_RATIOS, CUSTOM, MEGAPIXEL, SizeLimits, billed_megapixels, chosen_size, edit_size, megapixels, \
    validate_size

API_VERSION = 1
# What the editor assumes for a reference whose size it cannot know before a run (an upstream node's
# output): billed as 1 MP, the minimum a provider bills per image. The badge says so.
ASSUMED_REF_SIZE = (1024, 1024)
MAX_ITEMS = 64
LOCAL_BACKEND_TYPES = ("Flux2LocalBackend", "Flux2ComfyBackend")   # node names the browser sends


def models_json() -> dict[str, Any]:
    """The model table as the browser sees it; generated from flux2/models.py, nothing typed twice."""
    return {
        "version": API_VERSION,
        "megapixel": MEGAPIXEL,                       # MP convention: w*h / 1024^2
        "providers": list(PROVIDERS),
        "max_refs_any": MAX_REFS_ANY,
        "aspect_ratios": list(ASPECT_RATIOS),
        "default_limits": asdict(DEFAULT_RULES.sizes),
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
                        "limits": asdict(remote_rules(m, prov).sizes),
                    }
                    for prov, pm in m.providers.items()
                },
            }
            for name, m in MODELS.items()
        },
    }


def _int(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{what} must be a number")
    return int(value)


def _rules(backend: dict | None) -> Rules:
    """Rules of the connected backend as the browser names it; the defaults when none or unknown."""
    if not backend:
        return DEFAULT_RULES
    return rules_for(backend.get("provider"), backend.get("model"))


def _resolve_size(size: Any, target: SizeLimits) -> tuple[int | None, int | None, str | None]:
    """A size spec -> (w, h, note). Specs: {"width", "height"} numbers, {"flux2_size": {...}} (the
    values of a linked Flux2Size), {"follow": [w, h]} (edit output following reference 1), or
    {"follow": null} (reference 1 not known before the run), {"unknown": why}."""
    if not isinstance(size, dict):
        raise ValueError("size must be an object")
    if "flux2_size" in size:
        fs = size["flux2_size"] or {}
        limits = _rules(fs.get("backend")).sizes
        aspect = str(fs.get("aspect_ratio", "1:1"))
        if aspect == CUSTOM:
            w, h, mp = _int(fs.get("width"), "width"), _int(fs.get("height"), "height"), 0.0
        else:
            w = h = 0
            mp = fs.get("megapixels")
            if isinstance(mp, bool) or not isinstance(mp, (int, float)):
                raise ValueError("megapixels must be a number")
        return (*chosen_size(aspect, float(mp), w, h, limits), None)
    if "unknown" in size:   # linked to a node whose value the editor cannot know before the run
        return None, None, str(size["unknown"] or "size known after the run")[:200]
    if "follow" in size:
        ref = size["follow"]
        known = (_int(ref[0], "reference width"), _int(ref[1], "reference height")) if ref else None
        followed = edit_size(0, 0, known, target)
        if followed is None:
            return None, None, "output follows reference 1"
        return (*followed, "follows reference 1")
    return _int(size.get("width"), "width"), _int(size.get("height"), "height"), None


def layout_item(item: dict) -> dict[str, Any]:
    """Flux2Layout's drawing: the boxes the engine reads from the node's text (flux2/layout.py)."""
    from .layout import parse_layout

    layout = parse_layout(item.get("boxes", ""))
    return {"boxes": [{"id": b.id, "box": list(b.bbox or b.tgt_bbox),
                       "source_box": list(b.src_bbox) if b.src_bbox else None, "moved": b.source is not None}
                      for b in layout.boxes]}


def preview_item(item: dict) -> dict[str, Any]:
    """One node's readout. Raises ValueError/Flux2Error for input it cannot use."""
    if item.get("kind") == "layout":
        return layout_item(item)
    backend = item.get("backend") or None
    if backend is None and item.get("kind") == "size":
        # Flux2Size's own backend input: with FLUX 3 Image it outputs the delivered size, so the readout does too.
        fs = (item.get("size") or {}).get("flux2_size")
        backend = (fs.get("backend") if isinstance(fs, dict) else None) or None
    local = bool(backend and backend.get("type") in LOCAL_BACKEND_TYPES)
    rules = _rules(None if local else backend)
    remote = rules is not DEFAULT_RULES
    limits = rules.sizes
    width, height, note = _resolve_size(item.get("size") or {}, limits)
    if width is not None and height is not None and rules.sizing == "tiers" and width > 0 and height > 0:
        # FLUX 3 Image makes its nearest aspect ratio x resolution: show what will be delivered.
        aspect, tier = flux3.nearest(width, height)
        delivered = flux3.delivered(aspect, tier)
        if delivered != (width, height):
            note = (note + "; " if note else "") + f"delivers {aspect} x {tier} = {delivered[0]}x{delivered[1]}"
        width, height = delivered
    out: dict[str, Any] = {"width": width, "height": height, "note": note, "problems": [],
                           "backend": rules.name if remote else None, "limits": asdict(limits)}
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
    if remote:
        out["max_refs"] = rules.max_refs
        if len(refs) > rules.max_refs:
            out["problems"].append(f"{len(refs)} references; this model takes at most {rules.max_refs}")
        # Unknown output size (edit following an unseen reference): price the 1 MP minimum and say so.
        ew, eh = (width, height) if width is not None else ASSUMED_REF_SIZE
        est = estimate(get_model(str(backend["model"])), str(backend["provider"]), ew, eh, ref_sizes, batch,
                       mode=str(backend.get("mode") or "quality"))       # FLUX 3.1's price depends on its mode
        out.update(usd=est.usd, cost=format_usd(est.usd) if est.usd is not None else None,
                   detail=est.detail, output_assumed=width is None)
    elif local:
        out.update(usd=0.0, cost="$0", detail="local weights: no API cost", output_assumed=False)
    else:
        out.update(usd=None, cost=None, detail="connect a FLUX.2 backend to see the cost",
                   output_assumed=width is None)
    return out


def preview(body: Any) -> dict[str, Any]:
    """``{"items": [{"id", "kind": "size"|"generate", "backend", "size", "references", "batch"}
    | {"id", "kind": "layout", "boxes": text}]}``
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
