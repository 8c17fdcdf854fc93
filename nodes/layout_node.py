"""Flux2Layout: layout boxes (type FLUX2_LAYOUT) for Flux2TextToImage / Flux2Edit's optional `layout` input."""
from __future__ import annotations

from ..flux2.layout import parse_layout
from .common import CATEGORY, LAYOUT_TYPE

EXAMPLE = ("sun | 0.05 0.65 0.35 0.95 | a pale winter sun\n"
           "boat | 0.55 0.10 0.90 0.55 | a small red sailing boat")


class Flux2Layout:
    DESCRIPTION = ("Where named elements go in the output: one box per line, 'id | top left bottom right | "
                   "description' with fractions 0..1 of the output from its top-left corner; in an edit, "
                   "'id | from ref_image_0 TOP LEFT BOTTOM RIGHT -> TOP LEFT BOTTOM RIGHT | description' moves "
                   "an element of reference 1 (ref_image_1 is reference 2 ...). Up to 32 boxes. FLUX 3.1 Image "
                   "takes them as bounding_boxes; FLUX 3 Image as JSON appended to the prompt (BFL's documented "
                   "form; name the elements in the prompt as <id_1>); other models refuse a layout.")
    CATEGORY = CATEGORY
    RETURN_TYPES = (LAYOUT_TYPE,)
    RETURN_NAMES = ("layout",)
    FUNCTION = "layout"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "boxes": ("STRING", {"multiline": True, "default": EXAMPLE,
                                 "tooltip": "One box per line: id | top left bottom right | description "
                                            "(fractions 0..1). A JSON array of {id, bbox, desc} rows works too."}),
        }}

    def layout(self, boxes):
        layout = parse_layout(boxes)
        rows = [{"id": b.id, "box": list(b.bbox or b.tgt_bbox), "moved": b.source is not None} for b in layout.boxes]
        return {"ui": {"flux2_layout": rows}, "result": (layout,)}
