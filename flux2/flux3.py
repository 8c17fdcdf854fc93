"""FLUX 3 Image sizes and prices: an aspect ratio x a resolution tier, not a width x height.

FLUX 3 Image (`POST /v1/flux-3-image`) takes `aspect_ratio` (15 ratios or `auto`) and `resolution`
(`768sq`, `1k`, `1.5k`, `2k`, `4k`) and no width/height. A requested W x H is mapped to the nearest
ratio and the tier whose area is nearest (both in log space, so 2:1 and 1:2 are as far from 1:1), and
every place that shows a size (Flux2Size with the backend connected, the editor's readout, the dry run)
shows the size the provider delivers, so nothing surprises after paying.

Sources (docs/flux3.md keeps the full list and what is established vs read):
- ratios, tiers, defaults: Comfy-Org's router schema for `bfl/flux-3-image` and ComfyUI's Flux3ImageNode
  docs (docs.comfy.org/built-in-nodes/Flux3ImageNode), Replicate's black-forest-labs/flux-3-image schema;
  BFL's docs pages docs.bfl.ai/flux_3/flux3_image_overview (M: several sources agree).
- delivered sizes: published samples 1k 16:9 = 1360x768, 1k 4:3 = 1184x880, 1.5k 16:9 = 2048x1152,
  2k 1:1 = 2048x2048, 4k 16:9 = 5456x3072 (LaoZhang's FLUX 3 page, BFL-citing), 2k 21:9 = 3136x1344
  (a Runware `bfl:flux@3-image` user's log). All equal the formula in `delivered()` with tier areas
  1, 2.25, 4, 16 MP (MP = 1024^2); Comfy's docs give 0.6 / 1 / 2.4 / 4.2 / 16.8 decimal MP, the same areas.
  768sq = 0.5625 MP (768x768 at 1:1) for every ratio: our reading of Comfy's "0.75K ~ 0.6 MP".
- prices per image (USD): FLUX 3 Image 768sq 0.041, 1k 0.048, 1.5k 0.07, 2k 0.10, 4k 0.607; edits the
  same, references free (M: six resellers agree and cite bfl.ai/pricing; not read on BFL's page itself).
"""
from __future__ import annotations

import math

from .sizes import MEGAPIXEL

# name -> width/height; BFL's order (wide to tall).
ASPECTS: dict[str, float] = {r: (lambda a, b: a / b)(*map(int, r.split(":"))) for r in (
    "21:9", "2:1", "16:9", "3:2", "7:5", "4:3", "5:4", "1:1", "4:5", "3:4", "5:7", "2:3", "9:16", "1:2", "9:21")}
# resolution tier -> output area in MP (1024^2 pixels)
TIERS: dict[str, float] = {"768sq": 0.5625, "1k": 1.0, "1.5k": 2.25, "2k": 4.0, "4k": 16.0}
GRID = 16
# USD per image, by tier (references free; an edit costs what a generation does).
FLUX3_PRICES: dict[str, float] = {"768sq": 0.041, "1k": 0.048, "1.5k": 0.07, "2k": 0.10, "4k": 0.607}


def delivered(aspect: str, tier: str) -> tuple[int, int]:
    """The width x height FLUX 3 Image delivers for a ratio and tier (fits every published sample)."""
    area, r = TIERS[tier] * MEGAPIXEL, ASPECTS[aspect]
    return (int(round(math.sqrt(area * r) / GRID)) * GRID, int(round(math.sqrt(area / r) / GRID)) * GRID)


def nearest(width: int, height: int) -> tuple[str, str]:
    """(aspect_ratio, resolution) nearest to a requested W x H; a delivered size maps to itself."""
    r = math.log(width / height)
    aspect = min(ASPECTS, key=lambda a: abs(math.log(ASPECTS[a]) - r))
    mp = math.log(width * height / MEGAPIXEL)
    tier = min(TIERS, key=lambda t: abs(math.log(TIERS[t]) - mp))
    return aspect, tier


def deliver(width: int, height: int) -> tuple[int, int]:
    return delivered(*nearest(width, height))


def all_sizes() -> list[tuple[int, int]]:
    return [delivered(a, t) for a in ASPECTS for t in TIERS]


MAX_SIDE = max(max(s) for s in all_sizes())
MAX_PIXELS = max(w * h for w, h in all_sizes())


def flux31_price(mode: str, width: int, height: int) -> float:
    """FLUX 3.1 Image per image: fast $0.015 (1 MP) .. $0.11 (16 MP), quality $0.03 .. $0.28 (M: resellers
    quoting BFL's reported cost). The formula between is not published: linear in MP between the two
    published points is our reading, so every 3.1 estimate is marked approximate."""
    lo, hi = (0.015, 0.11) if mode == "fast" else (0.03, 0.28)
    mp = min(max(width * height / MEGAPIXEL, 1.0), 16.0)
    return round(lo + (hi - lo) * (mp - 1.0) / 15.0, 4)
