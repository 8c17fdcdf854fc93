"""A provider answering that a model or endpoint no longer exists -> one line naming the successor.

BFL answers 404/410 on a submit to an endpoint it does not serve; Runware answers an error whose code
names the model as unknown (or HTTP 404/410). Neither is retried: the same request would get the same
answer, and the user needs to pick another model on Flux2RemoteBackend. Successors: flux2/models.py.
"""
from __future__ import annotations

from ..errors import ProviderError
from ..models import ModelSpec

_MODEL_GONE = ("notfound", "invalid", "unknown", "unsupported", "deprecated", "retired", "unavailable",
               "doesnotexist", "notexist")


def retired_error(model: ModelSpec, provider: str, detail: str, status: int | None = None) -> ProviderError:
    where = {"bfl": "BFL", "runware": "Runware"}.get(provider, provider)
    text = f"{provider}: {model.name} is not served by {where} any more ({detail})"
    if model.successor:
        text += f"; its successor is {model.successor}: choose it as the model on Flux2RemoteBackend"
    else:
        text += "; choose another model on Flux2RemoteBackend"
    return ProviderError(text, status=status, code="retired", retryable=False)


def is_model_gone(exc: ProviderError) -> bool:
    """Runware's answer for a model id it does not know (any code naming the model as gone), or 404/410."""
    code = (exc.code or "").lower().replace("_", "")
    # The code is about the model itself (invalidModel, modelNotFound), not a model's setting
    # (unsupportedModelResolution): what is left without "model" must be a "gone" word alone.
    return exc.status in (404, 410) or ("model" in code and code.replace("model", "", 1) in _MODEL_GONE)
