"""Checks and helpers every remote backend shares."""
from __future__ import annotations

import os

from ..backend import GenerationRequest
from ..errors import ConfigError, InputError
from ..redaction import scrub
from ..models import get_model
from ..net.transport import Deadlines
from ..rules import LABELS, Rules, remote_rules, validate_request
from .options import RemoteOptions


def concurrency_from_env(env: str, maximum: int | None = None) -> int | None:
    """Tasks in flight from `env`, read the same way for every provider: None when unset, else a whole
    number 1.. (`maximum`); anything else is refused in one line rather than silently replaced."""
    raw = os.environ.get(env, "").strip()
    if not raw:
        return None
    try:
        n = int(raw)
    except ValueError:
        n = 0
    if n < 1 or (maximum is not None and n > maximum):
        span = f"1..{maximum}" if maximum is not None else "1 or more"
        raise ConfigError(f"{env} must be an integer {span}, got {raw!r}")
    return n


def redact(text: str, secret: str | None, limit: int | None = None) -> str:
    """Provider text echoed to users: every known key (and `secret`) replaced, then cut to `limit`."""
    return scrub(text, limit, extra=(secret,))


class RemoteBackend:
    """What Runware and BFL backends share: model lookup, limits, validation, cache identity.

    Subclasses set `kind` (their label is the rules table's) and implement `host()`, `check_ready()`, `plan()`,
    `estimate()` and `generate()`. No key is ever stored on the object.
    """

    kind = ""
    takes_reference_urls: tuple[str, ...] = ()      # Runware and BFL name the forms they send as they are
    takes_loras = ""                                 # Runware's [dev]/[klein] models take LoRA ids (runware.py)

    def __init__(self, model_name: str, options: RemoteOptions = RemoteOptions(),
                 deadlines: Deadlines = Deadlines(), http_transport=None):
        self.model = get_model(model_name)
        self.model_name = model_name
        self.pm = self.model.on(self.kind)
        self.options = options
        self.deadlines = deadlines
        self._http_transport = http_transport

    @property
    def label(self) -> str:
        return LABELS[self.kind]

    def describe(self) -> str:
        return f"{self.model_name} on {self.label} ({self.pm.model_id})"

    def __repr__(self) -> str:  # shown in ComfyUI / logs; holds no key by construction
        return f"{type(self).__name__}({self.model_name!r})"

    def host(self) -> str:
        raise NotImplementedError

    def with_lora(self, lora, strength: float) -> "RemoteBackend":
        raise InputError(f"Flux2LoRA: {self.describe()} takes no LoRA (LoRAs work on Flux2LocalBackend and on "
                         "Runware's FLUX.2 [dev] / [klein] models)")

    def image_cache_key(self, request: GenerationRequest, index: int) -> str:
        """Result-cache key of image `index` of a batch: each image is its own task (seed + i), so it is
        the key of the one-image request with that seed."""
        from dataclasses import replace

        from ..backend import cache_identity
        from ..result_cache import key_of
        return key_of(cache_identity(self, replace(request, seed=request.seeds[index], batch=1)))

    def estimate_one(self, request: GenerationRequest) -> float | None:
        """The estimate for one image of the request, to compare with what the provider charged."""
        from dataclasses import replace
        return self.estimate(replace(request, batch=1)).usd

    def cache_identity(self) -> dict:
        # The FLUX 3 options only when set, so the keys of results cached before they existed still match.
        options = {k: v for k, v in vars(self.options).items()
                   if not (k in ("grounding", "mode") and v == "default")}
        return {"provider": self.kind, "host": self.host(), "model": self.pm.model_id, "options": options}

    def rules(self) -> Rules:
        return remote_rules(self.model, self.kind, self.pm)

    def validate_options(self) -> None:
        """Provider-specific option rules, on top of RemoteOptions.validate()."""

    def validate(self, request: GenerationRequest) -> None:
        self.options.validate()
        self.options.validate_for(self.model)
        self.validate_options()
        validate_request(request, self.rules())
