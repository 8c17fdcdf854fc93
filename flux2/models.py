"""Model registry: one entry per FLUX.2 variant with its ids per provider and its limits.

Limits come from the providers' public docs (see README "Models"). Where the sources disagree
we take the stricter value, so a request we accept is never rejected for its size or refs.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from .errors import InputError
from .sizes import FLUX2_SIZES

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
class ProviderModel:
    """How one provider serves one model."""

    model_id: str            # Runware AIR id or BFL endpoint path
    max_refs: int
    min_side: int
    price: Price | None      # None: the provider publishes no per-MP price we trust
    takes_steps: bool = False
    takes_guidance: bool = False
    takes_upsampling: bool = True
    takes_lora: bool = False  # Runware `lora` (AIR id + weight): its runware:400@* FLUX.2 models (docs/loras.md)


@dataclass(frozen=True)
class ModelSpec:
    name: str                # permanent widget value stored in workflows
    family: str              # pro | max | flex | dev | klein
    multiple: int = FLUX2_SIZES.multiple
    max_side: int = FLUX2_SIZES.max_side
    max_pixels: int = FLUX2_SIZES.max_pixels
    default_steps: int | None = None
    default_guidance: float | None = None
    providers: dict[str, ProviderModel] = field(default_factory=dict)

    def on(self, provider: str) -> ProviderModel:
        try:
            return self.providers[provider]
        except KeyError:
            served = ", ".join(sorted(self.providers)) or "no remote provider"
            raise InputError(f"{self.name} is not offered by {provider} (served by: {served})") from None


PRO_PRICE = Price(0.03, 0.015, 0.015)
MAX_PRICE = Price(0.07, 0.03, 0.03)
FLEX_PRICE_BFL = Price(0.06, 0.06, 0.06)     # BFL's FLUX.2 overview: $0.06/MP in and out
FLEX_PRICE_RUNWARE = Price(0.06, 0.06, 0.06)
KLEIN4_PRICE = Price(0.014, 0.001, 0.001)
KLEIN9_PRICE = Price(0.015, 0.002, 0.002)

MODELS: dict[str, ModelSpec] = {m.name: m for m in (
    ModelSpec("FLUX.2 [pro]", "pro", providers={
        RUNWARE: ProviderModel("bfl:5@1", max_refs=8, min_side=256, price=PRO_PRICE),
        BFL: ProviderModel("/v1/flux-2-pro", max_refs=8, min_side=64, price=PRO_PRICE),
    }),
    ModelSpec("FLUX.2 [max]", "max", providers={
        RUNWARE: ProviderModel("bfl:7@1", max_refs=8, min_side=256, price=MAX_PRICE),
        BFL: ProviderModel("/v1/flux-2-max", max_refs=8, min_side=64, price=MAX_PRICE),
    }),
    ModelSpec("FLUX.2 [flex]", "flex", default_steps=50, default_guidance=4.5, providers={
        RUNWARE: ProviderModel("bfl:6@1", max_refs=8, min_side=256, price=FLEX_PRICE_RUNWARE,
                               takes_steps=True, takes_guidance=True),
        BFL: ProviderModel("/v1/flux-2-flex", max_refs=8, min_side=64, price=FLEX_PRICE_BFL,
                           takes_steps=True, takes_guidance=True),
    }),
    ModelSpec("FLUX.2 [dev]", "dev", default_steps=28, default_guidance=4.0, providers={
        RUNWARE: ProviderModel("runware:400@1", max_refs=4, min_side=512, price=None,
                               takes_steps=True, takes_guidance=True, takes_upsampling=False, takes_lora=True),
    }),
    ModelSpec("FLUX.2 [klein] 4B", "klein", default_steps=4, providers={
        RUNWARE: ProviderModel("runware:400@4", max_refs=4, min_side=128, price=None,
                               takes_steps=True, takes_upsampling=False, takes_lora=True),
        BFL: ProviderModel("/v1/flux-2-klein-4b", max_refs=4, min_side=64, price=KLEIN4_PRICE,
                           takes_upsampling=False),
    }),
    ModelSpec("FLUX.2 [klein] 9B", "klein", default_steps=4, providers={
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
)}

MAX_REFS_ANY = max(p.max_refs for m in MODELS.values() for p in m.providers.values())


def get_model(name: str) -> ModelSpec:
    try:
        return MODELS[name]
    except KeyError:
        raise InputError(f"unknown model {name!r}; known: {', '.join(MODELS)}") from None
