"""The body of a BFL FLUX.2 submit (`POST /v1/flux-2-<model>`), typed.

Field names and order are BFL's (docs.bfl.ai; see shared remote-api-facts). The answers (submit and
poll) are parsed into typed results in bfl_replies.py.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from .wire import WireBody


def input_image_field(index: int) -> str:
    """BFL names the references input_image, input_image_2 ... input_image_8."""
    return "input_image" if index == 0 else f"input_image_{index + 1}"


@dataclass(frozen=True, kw_only=True)
class BflRequest(WireBody):
    prompt: str
    width: int
    height: int
    seed: int
    safety_tolerance: int                # 0 strictest .. 5
    output_format: str                   # jpeg | png
    prompt_upsampling: bool | None = None
    steps: int | None = None
    guidance: float | None = None
    # Sent as input_image, input_image_2, ... after the other fields, not as a list.
    input_images: tuple[str, ...] = field(default=(), metadata={"wire": False})

    def to_json(self) -> dict:
        body = super().to_json()
        for i, ref in enumerate(self.input_images):
            body[input_image_field(i)] = ref
        return body


@dataclass(frozen=True, kw_only=True)
class Flux3Request(WireBody):
    """`POST /v1/flux-3-image`: a closed schema (any other field answers 422), so optional fields stay None
    (omitted) and the provider's defaults apply. No seed, width/height or output_format exist here.
    Fields: docs.bfl.ai/flux_3/flux3_image_overview, Comfy-Org's router schema bfl/flux-3-image."""

    prompt: str                          # with a layout: the JSON rows appended after a space
    images: tuple[str, ...] | None = None    # 1..10, URL or base64; the first drives `auto`
    aspect_ratio: str                    # one of flux2.flux3.ASPECTS (we always send it: the size is then known)
    resolution: str                      # 768sq | 1k | 1.5k | 2k | 4k
    grounding: bool | None = None        # default true at BFL
    safety_tolerance: int | None = None  # 0..4, default 2


@dataclass(frozen=True, kw_only=True)
class Flux31Request(WireBody):
    """FLUX 3.1 Image (BFL path: see flux2/models.py). Exact width/height override aspect/resolution; a
    `mask` (white changes, black is kept) edits images[0]; `bounding_boxes` places elements.
    Fields: BFL's 3.1 pages as Comfy-Org's router schema bfl/flux-3.1-image shows them (docs/flux3.md)."""

    prompt: str
    images: tuple[str, ...] | None = None    # 1..10 (9 with a mask)
    mask: str | None = None
    width: int
    height: int
    bounding_boxes: tuple[dict, ...] | None = None
    grounding: str | None = None         # off | auto | force (default off)
    mode: str | None = None              # fast | quality (default quality)
    safety_tolerance: int | None = None  # sent only when not the default 2 (see bfl.flux3_body)
