"""Layout boxes (node Flux2Layout, type FLUX2_LAYOUT): where named elements go in the output.

Boxes are `[top, left, bottom, right]` fractions 0..1 of the output, measured from its top-left corner.
The two FLUX 3 models take them differently (sources in docs/flux3.md):
- FLUX 3.1 Image: the `bounding_boxes` field, 1..32 entries `{id, bbox, desc}`; edits move an element
  with `{id, from, src_bbox, tgt_bbox, desc}` where `from` is `ref_image_0`, `ref_image_1`... (or
  `target`, which takes no src_bbox) (Comfy-Org's router schema for bfl/flux-3.1-image).
- FLUX 3 Image: no field; BFL documents a JSON array appended to the prompt after a space, boxes as
  integers 0..1000 in the same order, rows `{id, bbox, desc}` / `{id, from, src_bbox, tgt_bbox, desc}`
  (docs.bfl.ai/flux_3/flux3_image_bounding_boxes).
Other models refuse a layout in one line (flux2/rules.py).

Text form, one box per line (what the node's widget holds):
    sun | 0.05 0.70 0.30 0.95 | a pale yellow sun
    cup | from ref_image_0 0.50 0.10 0.80 0.30 -> 0.50 0.60 0.80 0.80 | the red cup
A JSON array of the 3.1 rows is accepted as well.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass

from .errors import InputError

MAX_BOXES = 32
SOURCE_RE = re.compile(r"^(ref_image_\d|target)$")


@dataclass(frozen=True)
class LayoutBox:
    id: str
    desc: str
    bbox: tuple[float, ...] | None = None         # a new element: where it goes
    source: str | None = None                    # an element moved in an edit: from which image
    src_bbox: tuple[float, ...] | None = None
    tgt_bbox: tuple[float, ...] | None = None

    def field_row(self) -> dict:
        """The row of 3.1's bounding_boxes field (fractions)."""
        if self.bbox is not None:
            return {"id": self.id, "bbox": list(self.bbox), "desc": self.desc}
        row = {"id": self.id, "from": self.source}
        if self.src_bbox is not None:
            row["src_bbox"] = list(self.src_bbox)
        return {**row, "tgt_bbox": list(self.tgt_bbox), "desc": self.desc}

    def prompt_row(self) -> dict:
        """The row appended to a FLUX 3 Image prompt (integers 0..1000)."""
        row = self.field_row()
        for k in ("bbox", "src_bbox", "tgt_bbox"):
            if k in row:
                row[k] = [int(round(v * 1000)) for v in row[k]]
        return row


@dataclass(frozen=True)
class Layout:
    boxes: tuple[LayoutBox, ...]

    def field(self) -> list[dict]:
        return [b.field_row() for b in self.boxes]

    def prompt_suffix(self) -> str:
        return json.dumps([b.prompt_row() for b in self.boxes], separators=(", ", ": "))

    def identity(self) -> list[dict]:
        return self.field()

    def max_source(self) -> int:
        """The highest reference index a row moves an element from (-1: none)."""
        return max((int(b.source.rsplit("_", 1)[1]) for b in self.boxes
                    if b.source and b.source.startswith("ref_image_")), default=-1)


def _box(text: str, where: str) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.replace(",", " ").split())
    except ValueError:
        raise InputError(f"{where}: a box is four numbers top left bottom right, got {text.strip()!r}") from None
    return _checked(values, where)


def _checked(values, where: str) -> tuple[float, ...]:
    if len(values) != 4 or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        raise InputError(f"{where}: a box is four numbers [top, left, bottom, right]")
    top, left, bottom, right = (float(v) for v in values)
    if not all(0.0 <= v <= 1.0 for v in (top, left, bottom, right)):
        raise InputError(f"{where}: box values are fractions 0..1 of the output, got {list(values)}")
    if not (top < bottom and left < right):
        raise InputError(f"{where}: a box needs top < bottom and left < right, got {list(values)}")
    return (top, left, bottom, right)


def _row_from_line(line: str, n: int) -> LayoutBox:
    where = f"layout line {n}"
    parts = [p.strip() for p in line.split("|")]
    if len(parts) != 3 or not parts[0] or not parts[2]:
        raise InputError(f"{where}: write 'id | top left bottom right | description' "
                         "(or 'id | from ref_image_0 BOX -> BOX | description')")
    ident, geom, desc = parts
    if geom.startswith("from "):
        source, _, rest = geom[5:].strip().partition(" ")
        src_text, arrow, tgt_text = rest.partition("->")
        if not arrow:
            return _moved(ident, desc, source, None, _box(src_text, where), where)
        return _moved(ident, desc, source, _box(src_text, where) if src_text.strip() else None,
                      _box(tgt_text, where), where)
    return LayoutBox(ident, desc, bbox=_box(geom, where))


def _moved(ident, desc, source, src, tgt, where) -> LayoutBox:
    if not SOURCE_RE.match(source or ""):
        raise InputError(f"{where}: 'from' names ref_image_0, ref_image_1 ... or target, got {source!r}")
    if source == "target" and src is not None:
        raise InputError(f"{where}: an element 'from target' takes no source box (BFL refuses it)")
    return LayoutBox(ident, desc, source=source, src_bbox=src, tgt_bbox=tgt)


def _row_from_json(row, n: int) -> LayoutBox:
    where = f"layout row {n}"
    if not isinstance(row, dict) or not isinstance(row.get("desc"), str) or not row["desc"].strip():
        raise InputError(f"{where}: each row is an object with id, bbox (or from/src_bbox/tgt_bbox) and desc")
    ident = str(row.get("id") or f"element_{n}")
    if "bbox" in row:
        return LayoutBox(ident, row["desc"], bbox=_checked(row["bbox"] if isinstance(row["bbox"], list) else (),
                                                           where))
    src = _checked(row["src_bbox"], where) if row.get("src_bbox") is not None else None
    return _moved(ident, row["desc"], row.get("from"), src, _checked(row.get("tgt_bbox") or (), where), where)


def parse_layout(text: str) -> Layout:
    """The node's text -> a Layout; InputError naming the line for anything off."""
    if not isinstance(text, str):
        raise InputError("layout must be text")
    stripped = text.strip()
    if stripped.startswith("["):
        try:
            rows = json.loads(stripped)
        except ValueError as exc:
            raise InputError(f"layout: not valid JSON ({exc.msg} at character {exc.pos})") from None
        boxes = tuple(_row_from_json(r, i + 1) for i, r in enumerate(rows))
    else:
        lines = [(i + 1, ln) for i, ln in enumerate(text.splitlines()) if ln.strip() and not ln.strip().startswith("#")]
        boxes = tuple(_row_from_line(ln, i) for i, ln in lines)
    if not boxes:
        raise InputError("layout has no boxes")
    if len(boxes) > MAX_BOXES:
        raise InputError(f"layout has {len(boxes)} boxes; at most {MAX_BOXES}")
    return Layout(boxes)
