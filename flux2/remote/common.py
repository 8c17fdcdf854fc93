"""Checks and helpers every remote backend shares."""
from __future__ import annotations

from ..backend import GenerationRequest
from ..errors import InputError
from ..models import ModelSpec, ProviderModel
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
    if len(request.prompt) > MAX_PROMPT_CHARS:
        raise InputError(f"prompt is {len(request.prompt)} characters; {model.name} takes at most {MAX_PROMPT_CHARS}")
    validate_size(request.width, request.height, size_limits(model, pm), what=f"{model.name} on {provider}")
    if len(request.references) > pm.max_refs:
        raise InputError(f"{len(request.references)} reference images; {model.name} on {provider} "
                         f"takes at most {pm.max_refs}")
    if not 0 <= request.seed <= MAX_SEED:
        raise InputError(f"seed {request.seed} is outside 0..{MAX_SEED}")
    if not 1 <= request.batch <= MAX_BATCH:
        raise InputError(f"batch_size must be 1..{MAX_BATCH}, got {request.batch}")


def redact(text: str, secret: str | None) -> str:
    """Provider messages are echoed to users: make sure a key could never ride along."""
    # A very short "key" (a test value, a typo) would mangle every message and protects nothing.
    if secret and len(secret) >= 8 and secret in text:
        text = text.replace(secret, "***")
    return text
