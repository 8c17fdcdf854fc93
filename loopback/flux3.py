"""FLUX 3 Image and FLUX 3.1 Image on the loopback servers, as BFL documents them (docs/flux3.md).

BFL: `POST /v1/flux-3-image` and `/v1/flux-3.1-image` (the 3.1 path is the pack's reading). Closed schemas:
any field not listed answers 422 `extra_forbidden`, as FastAPI does. The submit answers `{id, polling_url}`
(no cost: it comes with the poll). Polls go Pending -> Reasoning -> Generating -> Ready (statuses BFL
lists), then `result: {sample, prompt (the expanded prompt), seed (int64, chosen by the provider),
start_time, end_time, duration, cost}` and a top-level `cost`, in credits.
Runware: AIR `bfl:flux@3-image` with width x height from FLUX 3's own size table and no seed.
Sizes and prices are this module's own table, not imported from the pack, so the client is checked
against an independent statement of the same published facts.
"""
from __future__ import annotations

import math
import random

ASPECTS = ("21:9", "2:1", "16:9", "3:2", "7:5", "4:3", "5:4", "1:1", "4:5", "3:4", "5:7", "2:3", "9:16", "1:2",
           "9:21")
RESOLUTIONS = {"768sq": 0.5625, "1k": 1.0, "1.5k": 2.25, "2k": 4.0, "4k": 16.0}   # MP of 1024^2 pixels
CREDITS = {"768sq": 4.1, "1k": 4.8, "1.5k": 7.0, "2k": 10.0, "4k": 60.7}           # per image, references free
FLUX3_FIELDS = {"prompt", "images", "aspect_ratio", "resolution", "grounding", "safety_tolerance", "version"}
FLUX31_FIELDS = {"prompt", "images", "mask", "aspect_ratio", "resolution", "width", "height", "bounding_boxes",
                 "grounding", "mode", "safety_tolerance", "version"}
ENDPOINTS = {"/v1/flux-3-image": FLUX3_FIELDS, "/v1/flux-3.1-image": FLUX31_FIELDS}
STAGES = ("Pending", "Reasoning", "Generating")
RUNWARE_AIR = "bfl:flux@3-image"
MP = 1024 * 1024


def size_of(aspect: str, resolution: str) -> tuple[int, int]:
    a, b = (int(x) for x in aspect.split(":"))
    area = RESOLUTIONS[resolution] * MP
    return round(math.sqrt(area * a / b) / 16) * 16, round(math.sqrt(area * b / a) / 16) * 16


TABLE = {size_of(a, r): (a, r) for a in ASPECTS for r in RESOLUTIONS}


def _p(kind, field, msg):
    return {"type": kind, "loc": ["body"] + ([field] if field else []), "msg": msg}


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def check(path: str, body, decode) -> tuple[list[dict], list, object, tuple[int, int]]:
    """(problems, reference arrays, mask array or None, output size) of a FLUX 3 / 3.1 submit."""
    if not isinstance(body, dict):
        return [_p("model_attributes_type", None, "Input should be a valid dictionary")], [], None, (0, 0)
    allowed = ENDPOINTS[path]
    problems = [_p("extra_forbidden", k, "Extra inputs are not permitted") for k in body if k not in allowed]
    prompt = body.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        problems.append(_p("missing" if prompt is None else "string_type", "prompt", "Field required"))
    images = body.get("images", [])
    images = [images] if isinstance(images, str) else images
    refs = []
    limit = 9 if body.get("mask") is not None else 10
    if not isinstance(images, list) or len(images) > limit:
        problems.append(_p("too_long", "images", f"List should have at most {limit} items"))
        images = []
    for i, value in enumerate(images):
        arr = decode(value)
        if arr is None:
            problems.append(_p("value_error", "images", f"Value error, image {i + 1} could not be decoded"))
        elif min(arr.shape[:2]) < 256 and not (isinstance(value, str) and value.startswith("https://")):
            problems.append(_p("value_error", "images", f"Value error, image {i + 1} is smaller than 256x256"))
        elif arr.shape[0] * arr.shape[1] > 16 * MP:
            problems.append(_p("value_error", "images", f"Value error, image {i + 1} is over 16 MP"))
        else:
            refs.append(arr)
    tol = body.get("safety_tolerance", 2)
    if not _is_int(tol) or not 0 <= tol <= 4:
        problems.append(_p("less_than_equal", "safety_tolerance", "Input should be an integer from 0 to 4"))
    mask = None
    if path == "/v1/flux-3-image":
        size = _flux3_size(body, refs, problems)
    else:
        size, mask = _flux31(body, refs, problems, decode)
    return problems, refs, mask, size


def _flux3_size(body, refs, problems) -> tuple[int, int]:
    if "grounding" in body and not isinstance(body["grounding"], bool):
        problems.append(_p("bool_type", "grounding", "Input should be a valid boolean"))
    aspect, res = body.get("aspect_ratio", "auto"), body.get("resolution", "1k")
    if aspect != "auto" and aspect not in ASPECTS:
        problems.append(_p("enum", "aspect_ratio", "Input should be 'auto' or one of " + ", ".join(ASPECTS)))
        return 0, 0
    if res not in RESOLUTIONS:
        problems.append(_p("enum", "resolution", "Input should be one of " + ", ".join(RESOLUTIONS)))
        return 0, 0
    if aspect == "auto":
        if refs:
            h, w = refs[0].shape[:2]
            aspect = min(ASPECTS, key=lambda a: abs(math.log(int(a.split(":")[0]) / int(a.split(":")[1]) * h / w)))
        else:
            aspect = "1:1"
    return size_of(aspect, res)


def _flux31(body, refs, problems, decode):
    if body.get("grounding", "off") not in ("off", "auto", "force"):
        problems.append(_p("enum", "grounding", "Input should be 'off', 'auto' or 'force'"))
    if body.get("mode", "quality") not in ("fast", "quality"):
        problems.append(_p("enum", "mode", "Input should be 'fast' or 'quality'"))
    boxes = body.get("bounding_boxes")
    if boxes is not None:
        if not isinstance(boxes, list) or not 1 <= len(boxes) <= 32:
            problems.append(_p("too_long", "bounding_boxes", "List should have 1 to 32 items"))
        else:
            for i, b in enumerate(boxes):
                ok = isinstance(b, dict) and isinstance(b.get("desc"), str) and (
                    _box(b.get("bbox")) or (_box(b.get("tgt_bbox")) and b.get("from") is not None))
                if not ok or (b.get("from") == "target" and "src_bbox" in b):
                    problems.append(_p("value_error", "bounding_boxes", f"Value error, box {i} is invalid"))
    mask = None
    if body.get("mask") is not None:
        mask = decode(body["mask"])
        if mask is None or not refs:
            problems.append(_p("value_error", "mask", "Value error, a mask needs images[0] and must decode"))
        elif abs((mask.shape[1] / mask.shape[0]) / (refs[0].shape[1] / refs[0].shape[0]) - 1) > 0.01:
            problems.append(_p("value_error", "mask", "Value error, the mask must have images[0]'s aspect ratio"))
    for k in ("seed", "steps"):
        if k in body:
            problems.append(_p("extra_forbidden", k, "Extra inputs are not permitted"))
    w, h = body.get("width"), body.get("height")
    if w is None and h is None:
        return (1024, 1024), mask
    if not (_is_int(w) and _is_int(h) and w > 0 and h > 0):
        problems.append(_p("value_error", "width", "Value error, width and height go together, positive integers"))
        return (0, 0), mask
    if w * h > 16 * MP or max(w, h) > 8 * min(w, h):
        problems.append(_p("value_error", "width", "Value error, at most 16 MP and 8:1"))
    return (w, h), mask


def _box(b) -> bool:
    return (isinstance(b, list) and len(b) == 4 and all(isinstance(v, (int, float)) for v in b)
            and all(0 <= v <= 1 for v in b) and b[0] < b[2] and b[1] < b[3])


def credits(path: str, body: dict, width: int, height: int) -> float:
    if path == "/v1/flux-3-image":
        return CREDITS[body.get("resolution", "1k")]
    mp = min(max(width * height / MP, 1.0), 16.0)
    lo, hi = (1.5, 11.0) if body.get("mode") == "fast" else (3.0, 28.0)
    return round(lo + (hi - lo) * (mp - 1) / 15, 2)


def expand(prompt: str) -> str:
    """What BFL's prompt expansion hands back: a longer prompt that still contains the user's."""
    return f"{prompt}. Rendered with natural light, balanced composition and fine detail."


def stage(polls: int, polls_until_ready: int) -> str:
    """The status shown at a poll before the task is ready: Pending, then Reasoning, then Generating."""
    i = min(len(STAGES) - 1, (polls - 1) * len(STAGES) // max(polls_until_ready - 1, 1))
    return STAGES[max(i, 0)]


def provider_seed() -> int:
    return random.getrandbits(63)


def runware_problem(task) -> tuple[str, str, str] | None:
    """(code, message, parameter) of a FLUX 3 Image imageInference task Runware would refuse, or None."""
    w, h = task.get("width"), task.get("height")
    if (w, h) not in TABLE:
        return ("invalidDimensions", "width x height must be one of FLUX 3 Image's sizes (aspect ratio x "
                "resolution)", "width")
    if "seed" in task:
        return ("invalidSeed", "seed is not supported by this model", "seed")
    for k in ("steps", "CFGScale", "lora"):
        if k in task:
            return (f"invalid{k[0].upper()}{k[1:]}", f"{k} is not supported by this model", k)
    return None


def runware_cost(width: int, height: int) -> float:
    return CREDITS[TABLE[(width, height)][1]] / 100
