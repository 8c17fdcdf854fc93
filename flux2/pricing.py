"""Cost estimates from one price table (models.py), and the ledger of billed costs in a run."""
from __future__ import annotations

from dataclasses import dataclass

from . import flux3
from .models import ModelSpec, ModePrice, TierPrice
from .sizes import billed_megapixels


# Why an estimate is approximate: one line each, printed after "estimated cost" (approximate_note).
URL_REFERENCES_ASSUMED = "URL references of unknown size priced as <= 1 MP each"
FLUX31_NOT_PUBLISHED = "FLUX 3.1's price formula is not published (linear reading between its published prices)"


@dataclass(frozen=True)
class Estimate:
    usd: float | None          # None: the provider publishes no price for this model
    detail: str
    approximate: bool = False  # True: priced on an assumption (see approximate_reason)
    approximate_reason: str = ""   # why, one of the reasons above ("" where approximate is False)

    def __str__(self) -> str:
        return format_usd(self.usd) if self.usd is not None else "unknown (no published price)"


def format_usd(usd: float | None) -> str:
    if usd is None:
        return "n/a"
    return f"${usd:.4f}".rstrip("0").rstrip(".") if usd < 0.01 else f"${usd:.3f}".rstrip("0").rstrip(".")


def estimate(model: ModelSpec, provider: str, width: int, height: int,
             reference_sizes: list[tuple[int, int]] = (), batch: int = 1, assumed_references: int = 0,
             mode: str = "quality") -> Estimate:
    """USD for `batch` images of width x height with the given references.

    Rule (BFL's published per-MP pricing, also what Runware bills for BFL-hosted models): the first
    output megapixel at the model's base price, every further output MP and every reference MP at
    the extra price; MP rounded up per image. Each image of a batch is its own task, so references
    are billed once per image. `assumed_references` of the sizes are assumptions (URL references the
    provider fetches itself, priced as <= 1 MP): the estimate is then marked approximate.
    """
    price = model.on(provider).price
    if price is None:
        return Estimate(None, f"{model.name} on {provider}: no published price; the billed cost is shown after the run")
    if isinstance(price, (TierPrice, ModePrice)):
        return _per_image(model, provider, price, width, height, batch, mode)
    out_mp = billed_megapixels(width, height)
    ref_mp = sum(billed_megapixels(w, h) for w, h in reference_sizes)
    one = price.first_output_mp + price.extra_output_mp * (out_mp - 1) + price.reference_mp * ref_mp
    one = round(one, 6)
    detail = (f"{model.name} on {provider}: {out_mp} output MP"
              + (f" + {ref_mp} reference MP" if reference_sizes else "")
              + (f" x {batch} images" if batch > 1 else "")
              + (f" ({assumed_references} URL reference(s) of unknown size priced as <= 1 MP each)"
                 if assumed_references else ""))
    return Estimate(round(one * batch, 6), detail, approximate=assumed_references > 0,
                    approximate_reason=URL_REFERENCES_ASSUMED if assumed_references else "")


def _per_image(model: ModelSpec, provider: str, price, width: int, height: int, batch: int, mode: str) -> Estimate:
    """FLUX 3 Image: a price per image by resolution tier; FLUX 3.1 Image: by mode and size, approximate
    (formula not published). References are free on both; each image of a batch is its own task."""
    if isinstance(price, TierPrice):
        aspect, tier = flux3.nearest(width, height)
        one, what, approx = price.usd(tier), f"{aspect} x {tier}", False
    else:
        mode = mode if mode in ("fast", "quality") else "quality"
        one, what, approx = flux3.flux31_price(mode, width, height), f"{width}x{height} {mode}", True
    detail = (f"{model.name} on {provider}: {what} per image" + (f" x {batch} images" if batch > 1 else "")
              + "; references free"
              + ("; 3.1's price formula is not published: approximate" if approx else ""))
    return Estimate(round(one * batch, 6), detail, approximate=approx,
                    approximate_reason=FLUX31_NOT_PUBLISHED if approx else "")


def approximate_reasons(estimates) -> list[str]:
    """The distinct reasons the approximate ones of `estimates` give, in first-seen order."""
    reasons: list[str] = []
    for est in estimates:
        reason = (est.approximate_reason or "priced on an assumption") if est.approximate else ""
        if reason and reason not in reasons:
            reasons.append(reason)
    return reasons


def approximate_note(reasons) -> str:
    """' (approximate: why; why)' after a total, or '' when no estimate is approximate."""
    return f" (approximate: {'; '.join(reasons)})" if reasons else ""


def reference_sizes(references) -> tuple[list[tuple[int, int]], int]:
    """(sizes, how many are assumed) of a request's references, for `estimate`."""
    sizes = [(r.width, r.height) for r in references]
    return sizes, sum(1 for r in references if not r.size_known)
