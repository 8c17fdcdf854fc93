"""Checks and helpers every remote backend shares."""
from __future__ import annotations

from ..backend import GenerationRequest
from ..redaction import scrub
from ..models import get_model
from ..rules import LABELS, Rules, remote_rules, validate_request
from .options import RemoteOptions
from ..net.transport import Deadlines


def redact(text: str, secret: str | None, limit: int | None = None) -> str:
    """Provider text echoed to users: every known key (and `secret`) replaced, then cut to `limit`."""
    return scrub(text, limit, extra=(secret,))


class RemoteBackend:
    """What Runware and BFL backends share: model lookup, limits, validation, cache identity.

    Subclasses set `kind` (their label is the rules table's) and implement `host()`, `check_ready()`, `plan()`,
    `estimate()` and `generate()`. No key is ever stored on the object.
    """

    kind = ""

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
        return {"provider": self.kind, "host": self.host(), "model": self.pm.model_id, "options": vars(self.options)}

    def rules(self) -> Rules:
        return remote_rules(self.model, self.kind, self.pm)

    def validate_options(self) -> None:
        """Provider-specific option rules, on top of RemoteOptions.validate()."""

    def validate(self, request: GenerationRequest) -> None:
        self.options.validate()
        self.validate_options()
        validate_request(request, self.rules())
