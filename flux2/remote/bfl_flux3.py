"""The FLUX 3 / 3.1 Image bodies BFL is sent, built from a GenerationRequest (flux2/remote/bfl.py calls this).

Both schemas are closed (an unknown field answers 422), so only fields the user set, or that decide the
size, are sent; "default" options are left out and BFL's defaults apply (docs/flux3.md lists them).
"""
from __future__ import annotations

import base64

from .. import flux3
from ..backend import GenerationRequest
from ..models import ModelSpec
from .bfl_request import Flux3Request, Flux31Request
from .options import RemoteOptions

DEFAULT_SAFETY = 2       # BFL's default safety_tolerance for FLUX 3


def prompt_with_layout(request: GenerationRequest) -> str:
    """FLUX 3 Image has no layout field: BFL documents the rows as JSON appended after a space."""
    if request.layout is None:
        return request.prompt
    return f"{request.prompt} {request.layout.prompt_suffix()}"


def mask_b64(request: GenerationRequest) -> str | None:
    return base64.b64encode(request.mask.png).decode("ascii") if request.mask is not None else None


def flux3_body(model: ModelSpec, opts: RemoteOptions, request: GenerationRequest, references: list[str],
               mask: str | None = None):
    images = tuple(references) or None
    if model.family == "flux3":
        aspect, tier = flux3.nearest(request.width, request.height)
        return Flux3Request(
            prompt=prompt_with_layout(request), images=images, aspect_ratio=aspect, resolution=tier,
            grounding=None if opts.grounding == "default" else opts.grounding == "on",
            safety_tolerance=int(opts.safety_tolerance))
    return Flux31Request(
        prompt=request.prompt, images=images, mask=mask, width=request.width, height=request.height,
        bounding_boxes=tuple(request.layout.field()) if request.layout is not None else None,
        grounding=None if opts.grounding == "default" else opts.grounding,
        mode=None if opts.mode == "default" else opts.mode,
        # Not named in BFL's 3.1 pages we could read (docs/flux3.md): sent only when the user moved it.
        safety_tolerance=int(opts.safety_tolerance) if opts.safety_tolerance != DEFAULT_SAFETY else None)


def summary(model: ModelSpec, request: GenerationRequest, n_refs: int) -> str:
    """The dry run's line: the size BFL delivers (FLUX 3 Image: ratio x tier), and that no seed is sent."""
    if model.family == "flux3":
        aspect, tier = flux3.nearest(request.width, request.height)
        w, h = flux3.delivered(aspect, tier)
        size = f"{aspect} x {tier} -> delivers {w}x{h}"
    else:
        size = f"{request.width}x{request.height}"
    return (size + " (no seed: the provider picks and reports one)"
            + (f" x{request.batch} (one task each)" if request.batch > 1 else "")
            + (f", {n_refs} reference(s)" if n_refs else "")
            + (", mask" if request.mask is not None else "")
            + (f", layout of {len(request.layout.boxes)} box(es)" if request.layout is not None else ""))
