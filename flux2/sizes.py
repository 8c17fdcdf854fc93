"""Output sizes: aspect/megapixel presets snapped to the model's grid, and validation."""
from __future__ import annotations

import math
from dataclasses import dataclass

from .errors import InputError

MEGAPIXEL = 1024 * 1024

ASPECT_RATIOS = ("1:1", "3:2", "2:3", "4:3", "3:4", "16:9", "9:16", "21:9", "9:21", "5:4", "4:5")


@dataclass(frozen=True)
class SizeLimits:
    """Output size rules; the defaults are FLUX.2's grid on every backend (16-pixel steps, sides up to
    2048, at most 4 MP); a provider may raise min_side (flux2/rules.py)."""

    multiple: int = 16
    min_side: int = 64
    max_side: int = 2048
    max_pixels: int = 2048 * 2048
    max_aspect: float | None = None   # longer side / shorter side at most this (FLUX 3.1: 8)


FLUX2_SIZES = SizeLimits()


def megapixels(width: int, height: int) -> float:
    return width * height / MEGAPIXEL


def billed_megapixels(width: int, height: int) -> int:
    """Providers bill whole megapixels, rounded up (1536x1024 -> 2)."""
    return max(1, math.ceil(width * height / MEGAPIXEL - 1e-9))


def parse_aspect(aspect: str) -> tuple[int, int]:
    try:
        a, b = (int(part) for part in aspect.split(":"))
        if a <= 0 or b <= 0:
            raise ValueError
    except ValueError:
        raise InputError(f"aspect ratio must look like '3:2', got {aspect!r}") from None
    return a, b


def snap(value: float, multiple: int) -> int:
    return max(multiple, int(round(value / multiple)) * multiple)


def size_from_aspect(aspect: str, mp: float, limits: SizeLimits = FLUX2_SIZES) -> tuple[int, int]:
    """(w, h) with w/h ~ aspect, w*h ~ mp megapixels, both multiples of the grid, within limits."""
    if not (mp > 0):
        raise InputError(f"megapixels must be > 0, got {mp}")
    a, b = parse_aspect(aspect)
    area = min(mp * MEGAPIXEL, limits.max_pixels)
    width, height = math.sqrt(area * a / b), math.sqrt(area * b / a)
    # Scale, never clamp one side alone: clamping would change the aspect ratio.
    width, height = _scale_into(width, height, limits)
    width, height = snap(width, limits.multiple), snap(height, limits.multiple)
    while width * height > limits.max_pixels or max(width, height) > limits.max_side:
        if width >= height:
            width -= limits.multiple
        else:
            height -= limits.multiple
    return max(width, limits.min_side), max(height, limits.min_side)


def _scale_into(width: float, height: float, limits: SizeLimits) -> tuple[float, float]:
    big = max(width, height)
    if big > limits.max_side:
        width, height = width * limits.max_side / big, height * limits.max_side / big
    small = min(width, height)
    if small < limits.min_side:
        width, height = width * limits.min_side / small, height * limits.min_side / small
    return width, height


def validate_size(width: int, height: int, limits: SizeLimits, what: str = "size") -> None:
    """Raise InputError naming the rule a size breaks."""
    m = limits.multiple
    for side_name, side in (("width", width), ("height", height)):
        if not isinstance(side, int) or isinstance(side, bool):
            raise InputError(f"{what}: {side_name} must be an integer, got {side!r}")
        if side % m:
            lo, hi = side // m * m, (side // m + 1) * m
            raise InputError(f"{what}: {side_name} {side} is not a multiple of {m} (try {lo} or {hi})")
        if side < limits.min_side or side > limits.max_side:
            raise InputError(f"{what}: {side_name} {side} is outside {limits.min_side}..{limits.max_side}")
    if width * height > limits.max_pixels:
        raise InputError(f"{what}: {width}x{height} is {megapixels(width, height):.2f} MP, "
                         f"over the limit of {limits.max_pixels / MEGAPIXEL:.2f} MP")
    if limits.max_aspect and max(width, height) > limits.max_aspect * min(width, height):
        raise InputError(f"{what}: {width}x{height} is more elongated than {limits.max_aspect:g}:1")


def describe(width: int, height: int) -> str:
    return f"{width}x{height} ({megapixels(width, height):.2f} MP)"


def fit_size(width: int, height: int, limits: SizeLimits = FLUX2_SIZES) -> tuple[int, int]:
    """The largest grid-aligned size with the same aspect that fits the limits (edit output follows its
    first reference this way: a 1000x750 photo gives 992x736, a 4000x3000 one is scaled to <= 4 MP)."""
    m = limits.multiple
    scale = 1.0
    if width * height > limits.max_pixels:
        scale = math.sqrt(limits.max_pixels / (width * height))
    scale = min(scale, limits.max_side / width, limits.max_side / height)
    w = max(limits.min_side, int(width * scale) // m * m)
    h = max(limits.min_side, int(height * scale) // m * m)
    return min(w, limits.max_side), min(h, limits.max_side)


CUSTOM = "custom"       # Flux2Size's aspect choice for an explicit width x height


def chosen_size(aspect: str, mp: float, width: int, height: int, limits: SizeLimits) -> tuple[int, int]:
    """Flux2Size's output (the editor's preview runs the same): an aspect and megapixels, or with
    'custom' the given width x height snapped to the grid and fitted to the limits."""
    if aspect == CUSTOM:
        return fit_size(snap(width, limits.multiple), snap(height, limits.multiple), limits)
    return size_from_aspect(aspect, mp, limits)


def edit_size(width: int, height: int, reference: tuple[int, int] | None,
              limits: SizeLimits) -> tuple[int, int] | None:
    """Flux2Edit's output: width x height as given, or both 0 to follow reference 1 (fitted to the limits).
    None where it follows a reference whose size is not known before the run."""
    if (width == 0) != (height == 0):
        raise InputError("set both width and height, or both to 0 to follow the first reference")
    if width:
        return width, height
    return fit_size(*reference, limits) if reference else None
