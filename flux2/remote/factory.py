"""Build a remote backend from the node's choices."""
from __future__ import annotations

from ..errors import InputError
from ..models import BFL, PROVIDERS, RUNWARE, get_model
from .options import RemoteOptions


def make_remote_backend(provider: str, model_name: str, options: RemoteOptions, **kwargs):
    if provider not in PROVIDERS:
        raise InputError(f"unknown provider {provider!r}; choose one of {', '.join(PROVIDERS)}")
    model = get_model(model_name)
    model.on(provider)                          # unknown model / not offered there: one clear error now
    options.validate()
    options.validate_for(model)                 # e.g. grounding on a FLUX.2 model: refused at the backend node
    if provider == RUNWARE:
        from .runware import RunwareBackend
        return RunwareBackend(model_name, options, **kwargs)
    if provider == BFL:
        from .bfl import BflBackend
        return BflBackend(model_name, options, **kwargs)
    raise AssertionError(provider)
