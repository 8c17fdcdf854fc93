"""What every backend (remote provider or local weights) takes and returns.

A generation node builds a `GenerationRequest`, hands it to `backend.generate(request, ctx)` and gets
a `GenerationResult`. The same request runs on any backend: that is how one graph runs on
Runware, on BFL or on local weights by swapping only the backend node.

A request is checked once on its way: `validated(backend, request)` runs the backend's checks (its rules from
flux2/rules.py, its options, its LoRA files) and returns a `ValidatedRequest` that this backend's generate
trusts. `run()` and every backend's generate go through it, so the Python API still refuses a bad request.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Protocol, runtime_checkable

import numpy as np

from .images import RefImage
from .layout import Layout
from .pricing import Estimate
from .reference_urls import UrlReference
from .rules import Rules
from .run_context import RunContext

# A reference image: pixels (encoded once, hashed), or a URL / Runware imageUUID (reference_urls.py) that a
# backend taking URLs sends as it is and any other gets fetched. Both give width, height, sha256, size_known.
Reference = RefImage | UrlReference


@dataclass(frozen=True)
class GenerationRequest:
    prompt: str
    width: int
    height: int
    seed: int
    references: tuple[Reference, ...] = ()
    batch: int = 1
    node_id: str = ""                   # for progress/log lines ("node 7")
    mask: RefImage | None = None        # FLUX 3.1 Image: white changes, black is kept (grey PNG, reference 1's aspect)
    layout: Layout | None = None        # layout boxes (flux2/layout.py); refused by models that take none

    @property
    def seeds(self) -> list[int]:
        """Image i of a batch uses seed + i on every backend, so each image can be made again alone
        (validate_request checks the last one is in the backend's range)."""
        return [self.seed + i for i in range(self.batch)]


class ValidatedRequest(GenerationRequest):
    """A GenerationRequest that `validated()` checked for one backend (`checked_for`); that backend trusts it.

    Equal to the request it was made from. `dataclasses.replace` of it is a new, unchecked request (the proof is
    not a field), and it pickles as a plain GenerationRequest: a request from another process is checked again."""

    checked_for = None                  # the backend object it was checked for (set by validated() only)

    def __eq__(self, other):
        if isinstance(other, GenerationRequest):
            return _values(self) == _values(other)
        return NotImplemented

    __hash__ = GenerationRequest.__hash__

    def __reduce__(self):
        return GenerationRequest, _values(self)


def _values(request: GenerationRequest) -> tuple:
    return tuple(getattr(request, f.name) for f in fields(GenerationRequest))


def validated(backend: "Backend", request: GenerationRequest) -> ValidatedRequest:
    """The request checked for this backend (backend.validate: InputError/ConfigError before any network call or
    GPU step), once: a request this already returned for the same backend object comes back as it is."""
    if isinstance(request, ValidatedRequest) and request.checked_for is backend:
        return request
    backend.validate(request)
    checked = ValidatedRequest(*_values(request))
    object.__setattr__(checked, "checked_for", backend)     # frozen: set once, here
    return checked


@dataclass(frozen=True)
class PlannedCall:
    """One provider call (or local run) a request will make; printed by --dry-run."""

    backend: str                        # "runware" | "bfl" | "local"
    target: str                         # e.g. "POST https://api.runware.ai/v1 imageInference bfl:5@1"
    summary: str                        # human summary: size, seed, refs
    payload: dict = field(default_factory=dict)  # request body with images elided (never a key)


@dataclass
class GenerationResult:
    images: list[np.ndarray]            # uint8 [H, W, 3] each
    seeds: list[int]
    cost_usd: float | None = None       # billed cost reported by the provider (None: not reported/local)
    info: dict = field(default_factory=dict)
    files: list = field(default_factory=list)   # images.ProviderFile of those that came as a provider's file


@runtime_checkable
class Backend(Protocol):
    """A configured backend. Holds no secret: keys are read from the environment at call time."""

    kind: str                           # "runware" | "bfl" | "local" | "comfy"
    model_name: str
    # What it takes beyond pixels, declared rather than probed: the URL reference forms it sends as they are
    # ("url", Runware's "uuid"); every other backend is handed the fetched pixels (reference_urls.py).
    takes_reference_urls: tuple[str, ...]
    # The LoRAs it takes (Flux2LoRA): "file" (a LoRA file, applied to local weights), "air" (a provider's LoRA
    # model id, sent in the request) or "" (none: with_lora refuses in one line naming the backend).
    takes_loras: str

    def describe(self) -> str: ...

    def with_lora(self, lora, strength: float) -> "Backend":
        """A new backend: this one with one more LoRA (a file path for "file", an id for "air"; strength is its
        weight). Raises InputError naming this backend where it takes none, or not this one."""

    def host(self) -> str:
        """The provider base URL it sends to ("" for none: local weights, ComfyUI core)."""

    def cache_identity(self) -> dict | None:
        """What decides its output besides the request (result cache key), or None: it is not cached."""

    def rules(self) -> Rules:
        """What a request may be on this model and backend (flux2/rules.py): validate, Flux2Size and
        Flux2Edit's sizes and reference count all read it."""

    def check_ready(self) -> None:
        """Raise ConfigError/AuthError if keys, hosts or weights are missing (no network, no loading)."""

    def validate(self, request: GenerationRequest) -> None:
        """Raise InputError/ConfigError for anything wrong, before any network call or GPU step. Callers go
        through `validated()`, which calls this once per request and backend."""

    def plan(self, request: GenerationRequest) -> list[PlannedCall]: ...

    def estimate(self, request: GenerationRequest) -> Estimate: ...

    def generate(self, request: GenerationRequest, ctx: RunContext) -> GenerationResult:
        """Begins with `request = validated(self, request)`: checks a request nobody checked, trusts one
        run() or a node already checked for this backend."""


def cache_identity(backend: Backend, request: GenerationRequest) -> dict | None:
    """Everything that decides the output; None where the backend does not cache (e.g. local)."""
    identity = backend.cache_identity()
    if identity is None:
        return None
    ident = {**identity, "prompt": request.prompt, "width": request.width, "height": request.height,
             "seed": request.seed, "batch": request.batch, "references": [r.sha256 for r in request.references]}
    # Only when present, so the keys of requests without them stay what they were.
    if request.mask is not None:
        ident["mask"] = request.mask.sha256
    if request.layout is not None:
        ident["layout"] = request.layout.identity()
    return ident


def run(backend: Backend, request: GenerationRequest, ctx: RunContext | None = None) -> GenerationResult:
    """Validate; then plan (dry run), serve from the result cache, or generate and store at once."""
    from .reference_urls import prepare_references
    from .result_cache import key_of
    from .run_context import current

    ctx = ctx or current()
    # URL references: probed, or fetched where the backend needs pixels (reference_urls.py checks the fetched
    # bytes: size cap, format, decode). Fetched pixels make a new request, which validated() checks in full:
    # the size rules skip a reference whose size was unknown, so they run here on the real one.
    request = validated(backend, prepare_references(backend, request, ctx))
    identity = cache_identity(backend, request) if ctx.cache is not None else None
    key = key_of(identity) if identity is not None else None
    if key is None or ctx.dry_run:
        return _run(backend, request, ctx, key)
    # Identical requests at the same time (threads, or another process on the same cache folder) make
    # one provider call: the others wait here, then are served from the cache.
    with ctx.cache.claim(key, ctx.is_cancelled):
        return _run(backend, request, ctx, key)


def _run(backend: Backend, request: GenerationRequest, ctx: RunContext, key: str | None) -> GenerationResult:
    from .errors import Flux2Error
    from .images import placeholder
    from .pricing import Estimate

    est = backend.estimate(request)
    hit = ctx.cache.get(key) if key else None
    if hit is not None:
        images, seeds, _, _ = hit
        free = Estimate(0.0, f"cached result of an identical earlier request ({est.detail})")
        ctx.ledger.add_estimate(request.node_id, free)
        if ctx.dry_run:
            for call in backend.plan(request):
                ctx.record_plan(call, free)
        else:
            ctx.ledger.add_billed(request.node_id, 0.0)
            ctx.report(request.node_id, 1, 1, "cached: nothing billed")
        return GenerationResult(images=images, seeds=seeds, cost_usd=0.0, info={"cached": True})
    if ctx.dry_run:
        try:
            backend.check_ready()
        except Flux2Error as exc:
            if ctx.strict:
                raise
            ctx.warn(request.node_id, str(exc))
        for call in backend.plan(request):
            ctx.record_plan(call, est)
        ctx.ledger.add_estimate(request.node_id, est)
        img = placeholder(request.width, request.height)
        return GenerationResult(images=[img] * request.batch, seeds=request.seeds,
                                cost_usd=None, info={"dry_run": True})
    backend.check_ready()
    ctx.ledger.add_estimate(request.node_id, est)       # the cap is held task by task (ctx.gate)
    result = backend.generate(request, ctx)
    ctx.ledger.add_billed(request.node_id, result.cost_usd)
    if result.info.get("expanded_prompts"):
        ctx.expanded_prompts[request.node_id or "?"] = list(result.info["expanded_prompts"])
    # The run's sink first: it holds the paid images (an interrupt during the cache write loses none), and a
    # batch gives the provider slot to its next item there, so the cache write runs beside the next task.
    # A provider's file is stored as it came (result.files); only other images are encoded here.
    ctx.on_result(request, result)
    if key and len(result.images) == request.batch and not result.info.get("placeholders"):
        ctx.cache.put(key, result.images, result.seeds, result.cost_usd, backend.describe(), files=result.files)
    return result
