"""Model registry: one entry per FLUX.2 variant with its ids per provider and its limits.

Limits come from the providers' public docs (see README "Models"). Where the sources disagree
we take the stricter value, so a request we accept is never rejected for its size or refs.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from .errors import InputError
from . import flux3
from .sizes import FLUX2_SIZES, MEGAPIXEL

RUNWARE = "runware"
BFL = "bfl"
LOCAL = "local"
PROVIDERS = (RUNWARE, BFL)


@dataclass(frozen=True)
class Price:
    """USD per megapixel (MP = w*h / 1024^2, rounded up, each image separately)."""

    first_output_mp: float
    extra_output_mp: float
    reference_mp: float


@dataclass(frozen=True)
class TierPrice:
    """USD per image by FLUX 3 resolution tier (flux2/flux3.py); references are free."""

    by_tier: dict[str, float]

    def usd(self, tier: str) -> float:
        return self.by_tier[tier]


@dataclass(frozen=True)
class ModePrice:
    """FLUX 3.1 Image: USD per image by mode and output size, from two published points per mode; the
    formula between them is not published, so estimates are approximate (flux3.flux31_price)."""

    fast_1mp: float = 0.015
    quality_1mp: float = 0.03


@dataclass(frozen=True)
class ProviderModel:
    """How one provider serves one model."""

    model_id: str            # Runware AIR id or BFL endpoint path
    max_refs: int
    min_side: int
    price: Price | TierPrice | ModePrice | None   # None: the provider publishes no price we trust
    takes_steps: bool = False
    takes_guidance: bool = False
    takes_upsampling: bool = True
    takes_lora: bool = False  # Runware `lora` (AIR id + weight): its runware:400@* FLUX.2 models (docs/loras.md)


@dataclass(frozen=True)
class ModelSpec:
    name: str                # permanent widget value stored in workflows
    family: str              # pro | max | flex | dev | klein | flux3 | flux3.1
    multiple: int = FLUX2_SIZES.multiple
    max_side: int = FLUX2_SIZES.max_side
    max_pixels: int = FLUX2_SIZES.max_pixels
    default_steps: int | None = None
    default_guidance: float | None = None
    providers: dict[str, ProviderModel] = field(default_factory=dict)
    max_aspect: float | None = None   # FLUX 3.1: at most 8:1
    successor: str | None = None      # named when a provider answers that this model is gone

    @property
    def generation(self) -> int:
        """2: FLUX.2 (width x height grid, seeds); 3: FLUX 3 Image and FLUX 3.1 Image (no seed)."""
        return 3 if self.family.startswith("flux3") else 2

    def on(self, provider: str) -> ProviderModel:
        try:
            return self.providers[provider]
        except KeyError:
            served = ", ".join(sorted(self.providers)) or "no remote provider"
            raise InputError(f"{self.name} is not offered by {provider} (served by: {served})") from None


PRO_PRICE = Price(0.03, 0.015, 0.015)
MAX_PRICE = Price(0.07, 0.03, 0.03)
# BFL's own `skills` repository (black-forest-labs/skills, flux-best-practices/rules/model-selection-guide.md:
# [flex] 5c first MP, 5c each further MP; formula first + (out-1)*mp + in*mp) and docs.bfl.ai's pricing page
# ("from $0.05"). The older FLUX.2 overview said $0.06; the billed `cost` shows a stale table (jobs.checked_cost).
FLEX_PRICE_BFL = Price(0.05, 0.05, 0.05)
FLEX_PRICE_RUNWARE = Price(0.06, 0.06, 0.06)   # Runware's bfl:6@1 page: $0.06 per 1 MP image
FLUX3_PRICE = TierPrice(dict(flux3.FLUX3_PRICES))
FLUX31_PRICE = ModePrice()
KLEIN4_PRICE = Price(0.014, 0.001, 0.001)
KLEIN9_PRICE = Price(0.015, 0.002, 0.002)

MODELS: dict[str, ModelSpec] = {m.name: m for m in (
    ModelSpec("FLUX.2 [pro]", "pro", successor="FLUX 3 Image", providers={
        RUNWARE: ProviderModel("bfl:5@1", max_refs=8, min_side=256, price=PRO_PRICE),
        BFL: ProviderModel("/v1/flux-2-pro", max_refs=8, min_side=64, price=PRO_PRICE),
    }),
    ModelSpec("FLUX.2 [max]", "max", successor="FLUX 3 Image", providers={
        RUNWARE: ProviderModel("bfl:7@1", max_refs=8, min_side=256, price=MAX_PRICE),
        BFL: ProviderModel("/v1/flux-2-max", max_refs=8, min_side=64, price=MAX_PRICE),
    }),
    ModelSpec("FLUX.2 [flex]", "flex", successor="FLUX 3 Image", default_steps=50, default_guidance=4.5, providers={
        RUNWARE: ProviderModel("bfl:6@1", max_refs=8, min_side=256, price=FLEX_PRICE_RUNWARE,
                               takes_steps=True, takes_guidance=True),
        BFL: ProviderModel("/v1/flux-2-flex", max_refs=8, min_side=64, price=FLEX_PRICE_BFL,
                           takes_steps=True, takes_guidance=True),
    }),
    ModelSpec("FLUX.2 [dev]", "dev", default_steps=28, default_guidance=4.0, providers={
        RUNWARE: ProviderModel("runware:400@1", max_refs=4, min_side=512, price=None,
                               takes_steps=True, takes_guidance=True, takes_upsampling=False, takes_lora=True),
    }),
    ModelSpec("FLUX.2 [klein] 4B", "klein", default_steps=4, successor="FLUX 3 Image", providers={
        RUNWARE: ProviderModel("runware:400@4", max_refs=4, min_side=128, price=None,
                               takes_steps=True, takes_upsampling=False, takes_lora=True),
        BFL: ProviderModel("/v1/flux-2-klein-4b", max_refs=4, min_side=64, price=KLEIN4_PRICE,
                           takes_upsampling=False),
    }),
    ModelSpec("FLUX.2 [klein] 9B", "klein", default_steps=4, successor="FLUX 3 Image", providers={
        RUNWARE: ProviderModel("runware:400@2", max_refs=4, min_side=128, price=None,
                               takes_steps=True, takes_upsampling=False, takes_lora=True),
        BFL: ProviderModel("/v1/flux-2-klein-9b", max_refs=4, min_side=64, price=KLEIN9_PRICE,
                           takes_upsampling=False),
    }),
    ModelSpec("FLUX.2 [klein] 4B Base", "klein", default_steps=50, default_guidance=4.0, providers={
        RUNWARE: ProviderModel("runware:400@5", max_refs=4, min_side=128, price=None,
                               takes_steps=True, takes_guidance=True, takes_upsampling=False, takes_lora=True),
    }),
    ModelSpec("FLUX.2 [klein] 9B Base", "klein", default_steps=50, default_guidance=4.0, providers={
        RUNWARE: ProviderModel("runware:400@3", max_refs=4, min_side=128, price=None,
                               takes_steps=True, takes_guidance=True, takes_upsampling=False, takes_lora=True),
    }),
    # FLUX 3 Image: BFL `POST /v1/flux-3-image` (docs.bfl.ai/flux_3/flux3_image_overview; H); Runware AIR
    # `bfl:flux@3-image` (M: several public clients and Runware's model URL runware.ai/docs/models/bfl-flux-3-image;
    # Runware takes the delivered width x height). 10 references of >= 256x256, <= 16 MP (Comfy's node, Replicate).
    # Runware publishes no price of its own here: None (the billed cost is shown).
    ModelSpec("FLUX 3 Image", "flux3", max_side=flux3.MAX_SIDE, max_pixels=flux3.MAX_PIXELS,
              successor="FLUX 3.1 Image", providers={
                  RUNWARE: ProviderModel("bfl:flux@3-image", max_refs=10, min_side=64, price=None,
                                         takes_upsampling=False),
                  BFL: ProviderModel("/v1/flux-3-image", max_refs=10, min_side=64, price=FLUX3_PRICE,
                                     takes_upsampling=False),
              }),
    # FLUX 3.1 Image: fields from BFL's 3.1 pages as Comfy-Org's router schema `bfl/flux-3.1-image` shows them
    # (M-H). BFL's path `/v1/flux-3.1-image` is our reading (Comfy's ids map bfl/<name> -> /v1/<name> for
    # flux-3-image); a 404 there answers with one line (flux2/remote/retired.py). Exact width x height
    # up to 16 MP and 8:1; min side 256 is our stricter reading. Runware: no AIR id established.
    ModelSpec("FLUX 3.1 Image", "flux3.1", max_side=11584, max_pixels=16 * MEGAPIXEL, max_aspect=8.0,
              providers={
                  BFL: ProviderModel("/v1/flux-3.1-image", max_refs=10, min_side=256, price=FLUX31_PRICE,
                                     takes_upsampling=False),
              }),
)}

MAX_REFS_ANY = max(p.max_refs for m in MODELS.values() for p in m.providers.values())   # Flux2Edit's sockets
# The widest FLUX.2 reference count: what a backend that does not know its model by name allows (ComfyUI core).
MAX_REFS_FLUX2 = max(p.max_refs for m in MODELS.values() if m.generation == 2 for p in m.providers.values())


def get_model(name: str) -> ModelSpec:
    try:
        return MODELS[name]
    except KeyError:
        raise InputError(f"unknown model {name!r}; known: {', '.join(MODELS)}") from None
