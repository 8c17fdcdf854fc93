"""Checks and helpers every remote backend shares."""
from __future__ import annotations

from ..backend import GenerationRequest
from ..errors import InputError
from ..redaction import scrub
from ..models import ModelSpec, ProviderModel, get_model
from .options import RemoteOptions
from .transport import Deadlines
from ..sizes import SizeLimits, validate_size

MAX_PROMPT_CHARS = 32000
MAX_SEED = 2**32 - 1
MAX_BATCH = 8


def size_limits(model: ModelSpec, pm: ProviderModel) -> SizeLimits:
    return SizeLimits(multiple=model.multiple, min_side=pm.min_side, max_side=model.max_side,
                      max_pixels=model.max_pixels)


def validate_common(request: GenerationRequest, model: ModelSpec, pm: ProviderModel, provider: str) -> None:
    prompt = request.prompt.strip() if isinstance(request.prompt, str) else ""
    if not prompt:
        raise InputError("prompt is empty")
    try:
        request.prompt.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InputError(f"prompt cannot be encoded as UTF-8 (character {exc.start} is a lone surrogate)") from None
    if len(request.prompt) > MAX_PROMPT_CHARS:
        raise InputError(f"prompt is {len(request.prompt)} characters; {model.name} takes at most {MAX_PROMPT_CHARS}")
    validate_size(request.width, request.height, size_limits(model, pm), what=f"{model.name} on {provider}")
    if len(request.references) > pm.max_refs:
        raise InputError(f"{len(request.references)} reference images; {model.name} on {provider} "
                         f"takes at most {pm.max_refs}")
    if not 0 <= request.seed <= MAX_SEED:
        raise InputError(f"seed {request.seed} is outside 0..{MAX_SEED}")
    if isinstance(request.batch, int) and request.batch > 1 and request.seed + request.batch - 1 > MAX_SEED:
        raise InputError(f"seed {request.seed} with batch_size {request.batch}: image i uses seed + i, and "
                         f"{request.seed + request.batch - 1} is above {MAX_SEED}")
    if not 1 <= request.batch <= MAX_BATCH:
        raise InputError(f"batch_size must be 1..{MAX_BATCH}, got {request.batch}")


def redact(text: str, secret: str | None, limit: int | None = None) -> str:
    """Provider text echoed to users: every known key (and `secret`) replaced, then cut to `limit`."""
    return scrub(text, limit, extra=(secret,))


class RemoteBackend:
    """What Runware and BFL backends share: model lookup, limits, validation, cache identity.

    Subclasses set `kind` and `label` and implement `host()`, `check_ready()`, `plan()`,
    `estimate()` and `generate()`. No key is ever stored on the object.
    """

    kind = ""
    label = ""

    def __init__(self, model_name: str, options: RemoteOptions = RemoteOptions(),
                 deadlines: Deadlines = Deadlines(), http_transport=None):
        self.model = get_model(model_name)
        self.model_name = model_name
        self.pm = self.model.on(self.kind)
        self.options = options
        self.deadlines = deadlines
        self._http_transport = http_transport

    def describe(self) -> str:
        return f"{self.model_name} on {self.label} ({self.pm.model_id})"

    def __repr__(self) -> str:  # shown in ComfyUI / logs; holds no key by construction
        return f"{type(self).__name__}({self.model_name!r})"

    def host(self) -> str:
        raise NotImplementedError

    def image_cache_key(self, request: GenerationRequest, index: int) -> str:
        """Result-cache key of image `index` of a batch: each image is its own task (seed + i), so it is
        the key of the one-image request with that seed."""
        from dataclasses import replace

        from ..backend import cache_identity
        from ..result_cache import key_of
        return key_of(cache_identity(self, replace(request, seed=request.seed + index, batch=1)))

    def estimate_one(self, request: GenerationRequest) -> float | None:
        """The estimate for one image of the request, to compare with what the provider charged."""
        from dataclasses import replace
        return self.estimate(replace(request, batch=1)).usd

    def cache_identity(self) -> dict:
        return {"provider": self.kind, "host": self.host(), "model": self.pm.model_id, "options": vars(self.options)}

    def limits(self) -> SizeLimits:
        return size_limits(self.model, self.pm)

    def max_references(self) -> int:
        return self.pm.max_refs

    def validate_options(self) -> None:
        """Provider-specific option rules, on top of RemoteOptions.validate()."""

    def validate(self, request: GenerationRequest) -> None:
        self.options.validate()
        self.validate_options()
        validate_common(request, self.model, self.pm, self.label)
