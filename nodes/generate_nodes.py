"""Flux2TextToImage and Flux2Edit: build a GenerationRequest, run it on the connected backend."""
from __future__ import annotations

from ..flux2.backend import GenerationRequest, run, validated
from ..flux2.errors import InputError
from ..flux2.images import arrays_to_tensor, mask_from_tensor, ref_from_array, tensor_to_arrays
from ..flux2.layout import Layout
from ..flux2.models import MAX_REFS_ANY
from ..flux2.pricing import format_usd
from ..flux2.rules import delivered_size
from ..flux2.sizes import edit_size
from .budget import check_graph_budget, with_run_gate
from .comfy_hooks import node_context
from ..flux2.reference_urls import UrlReference
from .common import (BACKEND_TYPE, CATEGORY, LAYOUT_TYPE, REFERENCE_SOCKET, backend_input, batch_input, seed_input,
                     side_input)

RETURN_TYPES = ("IMAGE", "INT", "FLOAT")
BACKEND_TOOLTIP = "From Flux2RemoteBackend, Flux2LocalBackend or Flux2ComfyBackend."
RETURN_NAMES = ("image", "seed", "cost_usd")
PROMPT_TOOLTIP = "What to make (text-to-image) or what to change (edit)."
BATCH_TOOLTIP = "Images to make; image i uses seed + i, so each one can be reproduced on its own."
SEED_NOTE = (" FLUX 3 takes no seed: changing it still re-runs the node, and the seed output is the seed the "
             "provider reports.")
LAYOUT_TOOLTIP = ("Optional: boxes from Flux2Layout placing named elements. FLUX 3.1 Image sends them as "
                  "bounding_boxes, FLUX 3 Image appends them to the prompt as BFL documents; other models refuse.")


def _layout(value) -> Layout | None:
    if value is None or isinstance(value, Layout):
        return value
    raise InputError("the layout input must come from Flux2Layout")


def _execute(backend, prompt, width, height, seed, batch_size, unique_id, references=(), graph=None,
             mask=None, layout=None):
    backend = backend_input(backend)
    # FLUX 3 Image makes its nearest ratio x tier: the request, the estimate and the dry run all carry that size.
    width, height = delivered_size(backend.rules(), int(width), int(height))
    request = GenerationRequest(prompt=prompt, width=width, height=height, seed=int(seed),
                                references=tuple(references), batch=int(batch_size),
                                node_id=str(unique_id or ""), mask=mask, layout=_layout(layout))
    if graph is not None:
        # Checked before the budget, so bad input reports as such, not as a budget question; run() trusts it.
        request = validated(backend, request)
        check_graph_budget(graph, backend.estimate(request), request.node_id)
    result = run(backend, request, with_run_gate(node_context()))
    images = arrays_to_tensor(result.images)                   # [B, H, W, 3] float 0..1
    cost = float(result.cost_usd or 0.0)
    ui = {"flux2": [{"backend": backend.describe(), "size": [request.width, request.height],
                     "seeds": result.seeds, "billed": format_usd(result.cost_usd),
                     "dry_run": bool(result.info.get("dry_run")),
                     **({"expanded_prompts": result.info["expanded_prompts"]}
                        if result.info.get("expanded_prompts") else {})}]}
    return {"ui": ui, "result": (images, int(result.seeds[0]), cost)}


def _references(value) -> list:
    """One reference socket's value -> references: each image of an IMAGE batch, or a URL reference."""
    if isinstance(value, UrlReference):
        return [value]
    return [ref_from_array(a) for a in tensor_to_arrays(value)]


class Flux2TextToImage:
    DESCRIPTION = ("FLUX.2 / FLUX 3 text-to-image on the connected backend (remote or local). FLUX 3 Image makes "
                   "the nearest of its aspect ratios x resolutions to width x height (shown before you queue).")
    CATEGORY = CATEGORY
    RETURN_TYPES = RETURN_TYPES
    RETURN_NAMES = RETURN_NAMES
    FUNCTION = "generate"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "backend": (BACKEND_TYPE, {"tooltip": BACKEND_TOOLTIP}),
                "prompt": ("STRING", {"multiline": True, "default": "", "tooltip": PROMPT_TOOLTIP}),
                "width": side_input(1024, "Output width; a multiple of 16 within the model's limits."),
                "height": side_input(1024, "Output height; a multiple of 16 within the model's limits."),
                "seed": seed_input("Same seed, prompt and settings give the same image." + SEED_NOTE),
                "batch_size": batch_input(BATCH_TOOLTIP),
            },
            # Sockets only (no widget): workflows saved before it keep their widget values in place.
            "optional": {"layout": (LAYOUT_TYPE, {"tooltip": LAYOUT_TOOLTIP})},
            # The whole graph (for FLUX2_BUDGET_USD); named so it cannot clash with the text "prompt".
            "hidden": {"unique_id": "UNIQUE_ID", "graph_prompt": "PROMPT"},
        }

    def generate(self, backend, prompt, width, height, seed, batch_size=1, unique_id=None, graph_prompt=None,
                 layout=None):
        return _execute(backend, prompt, width, height, seed, batch_size, unique_id, graph=graph_prompt,
                        layout=layout)


class Flux2Edit:
    DESCRIPTION = ("FLUX.2 multi-reference edit: the prompt says what to change, the reference images "
                   "(1 up to the model's limit; a batch counts as several) guide it. Chain its output into "
                   "another Flux2Edit.")
    CATEGORY = CATEGORY
    RETURN_TYPES = RETURN_TYPES
    RETURN_NAMES = RETURN_NAMES
    FUNCTION = "edit"

    @classmethod
    def INPUT_TYPES(cls):
        optional = {f"reference_{i}": (REFERENCE_SOCKET, {"tooltip": f"Reference image {i} (optional)."})
                    for i in range(2, MAX_REFS_ANY + 1)}
        # Sockets only (no widgets), after the references: saved workflows keep their widget values in place.
        optional["mask"] = ("MASK", {"tooltip": "Optional, FLUX 3.1 Image only: what to change in reference 1 "
                                                "(white/1 changes, black/0 is kept exactly, grey blends); same "
                                                "aspect ratio as reference 1. Other models refuse it."})
        optional["layout"] = (LAYOUT_TYPE, {"tooltip": LAYOUT_TOOLTIP})
        return {
            "required": {
                "backend": (BACKEND_TYPE, {"tooltip": BACKEND_TOOLTIP}),
                "prompt": ("STRING", {"multiline": True, "default": "", "tooltip": PROMPT_TOOLTIP}),
                "reference_1": (REFERENCE_SOCKET, {"tooltip": "First reference image (an IMAGE or a "
                                                              "Flux2ReferenceURL); the output size follows it "
                                                              "when width and height are 0."}),
                "width": side_input(0, "0 = follow the first reference (snapped to the model's grid).", 0),
                "height": side_input(0, "0 = follow the first reference (snapped to the model's grid).", 0),
                "seed": seed_input("Same seed, prompt, references and settings give the same image." + SEED_NOTE),
                "batch_size": batch_input(BATCH_TOOLTIP),
            },
            "optional": optional,
            # The whole graph (for FLUX2_BUDGET_USD); named so it cannot clash with the text "prompt".
            "hidden": {"unique_id": "UNIQUE_ID", "graph_prompt": "PROMPT"},
        }

    def edit(self, backend, prompt, reference_1, width, height, seed, batch_size=1, unique_id=None,
             graph_prompt=None, mask=None, layout=None, **more):
        backend = backend_input(backend)
        tensors = [reference_1] + [more[f"reference_{i}"] for i in range(2, MAX_REFS_ANY + 1)
                                   if more.get(f"reference_{i}") is not None]
        refs = [r for t in tensors for r in _references(t)]
        rules = backend.rules()
        if len(refs) > rules.max_refs:
            # Checked here too so a batch plugged into one socket gets the same clear message.
            raise InputError(f"{len(refs)} reference images; {backend.describe()} takes at most {rules.max_refs}")
        first = refs[0]
        known = None if isinstance(first, UrlReference) else (first.width, first.height)
        size = edit_size(width, height, known, rules.sizes)
        if size is None:
            raise InputError(f"set width and height: reference 1 ({first.value}) is given by URL, so its size "
                             "is not known before the provider fetches it")
        width, height = size
        mask_ref = mask_from_tensor(mask) if mask is not None else None
        return _execute(backend, prompt, width, height, seed, batch_size, unique_id, refs, graph=graph_prompt,
                        mask=mask_ref, layout=layout)
