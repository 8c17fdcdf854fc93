"""What a request may be, per model and backend: output sizes, references, batch, seeds and prompt.

Every backend validates through `validate_request(request, rules)`; the nodes and the editor's
preview read the same `Rules`, so a limit is written once. Where the backends really differ, the
README's "Request rules" table says so; `rules_table()` writes it from this file and a test keeps the
README equal to it.
"""
from __future__ import annotations

from dataclasses import dataclass

from .errors import InputError
from .models import BFL, LOCAL, MAX_REFS_ANY, RUNWARE, ModelSpec, ProviderModel, get_model
from .sizes import FLUX2_SIZES, SizeLimits, validate_size

COMFY = "comfy"
LABELS = {RUNWARE: "Runware", BFL: "BFL", LOCAL: "local weights", COMFY: "ComfyUI core"}

# The seed range both providers accept. Seed widgets stop here on every backend, so one graph runs anywhere.
MAX_SEED = 2**32 - 1
# Local weights and ComfyUI core seed torch generators, which take any 64-bit value.
MAX_TORCH_SEED = 2**64 - 1
MAX_PROMPT_CHARS = 32000          # the providers' prompt limit
REMOTE_MAX_BATCH = 8              # the providers: one task per image, all sent at once
LOCAL_MAX_BATCH = 16              # local weights and ComfyUI core: what one sampling batch is allowed
# Batch widgets stop where every backend's rules do, so one graph runs anywhere (as seed widgets do).
WIDGET_MAX_BATCH = min(REMOTE_MAX_BATCH, LOCAL_MAX_BATCH)
LOCAL_MAX_REFS = 4                # references a local preset takes unless it says otherwise ([klein], [dev])


@dataclass(frozen=True)
class Rules:
    """The limits one model has on one backend; `name` is the subject of every message."""

    name: str
    sizes: SizeLimits = FLUX2_SIZES
    max_refs: int = MAX_REFS_ANY
    max_batch: int = LOCAL_MAX_BATCH
    max_seed: int = MAX_TORCH_SEED
    empty_prompt: bool = True         # local models encode "" fine; the providers refuse it
    max_prompt_chars: int | None = None


# No backend connected (Flux2Size alone, the editor before a backend is linked): the FLUX.2 grid.
DEFAULT_RULES = Rules("FLUX.2")


def remote_rules(model: ModelSpec, provider: str, pm: ProviderModel | None = None) -> Rules:
    """A model on Runware or BFL: the provider's minimum side and reference count, batch <= 8 (one task
    per image, sent at once), the providers' 32-bit seeds, a non-empty prompt of at most 32000 characters.
    pm: the entry a backend holds (default: the registry's)."""
    pm = pm or model.on(provider)
    sizes = SizeLimits(multiple=model.multiple, min_side=pm.min_side, max_side=model.max_side,
                       max_pixels=model.max_pixels)
    return Rules(f"{model.name} on {LABELS[provider]}", sizes, max_refs=pm.max_refs, max_batch=REMOTE_MAX_BATCH,
                 max_seed=MAX_SEED, empty_prompt=False, max_prompt_chars=MAX_PROMPT_CHARS)


def local_rules(model_name: str, max_refs: int) -> Rules:
    """A model on local weights; max_refs from its preset (flux2/local/model/params.py)."""
    return Rules(f"{model_name} on {LABELS[LOCAL]}", max_refs=max_refs)


def comfy_rules(model_name: str) -> Rules:
    """ComfyUI core's MODEL: the model is not known by name, so the widest reference count of any FLUX.2."""
    return Rules(f"{model_name} on {LABELS[COMFY]}")


def rules_for(provider: str | None, model_name: str | None) -> Rules:
    """Rules named the way the editor names a backend: a provider and a model, or nothing."""
    if provider is None or model_name is None:
        return DEFAULT_RULES
    return remote_rules(get_model(str(model_name)), str(provider))


def validate_request(request, rules: Rules) -> None:
    """Raise InputError naming the first rule a GenerationRequest breaks (before any network call or GPU step)."""
    prompt = request.prompt
    if not isinstance(prompt, str):
        raise InputError("prompt must be text")
    if not rules.empty_prompt and not prompt.strip():
        raise InputError("prompt is empty")
    try:
        prompt.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InputError(f"prompt cannot be encoded as UTF-8 (character {exc.start} is a lone surrogate)") from None
    if rules.max_prompt_chars is not None and len(prompt) > rules.max_prompt_chars:
        raise InputError(f"prompt is {len(prompt)} characters; {rules.name} takes at most {rules.max_prompt_chars}")
    validate_size(request.width, request.height, rules.sizes, what=rules.name)
    n = len(request.references)
    if n > rules.max_refs:
        raise InputError(f"{rules.name} takes at most {rules.max_refs} reference images, got {n}")
    if isinstance(request.seed, bool) or not isinstance(request.seed, int) or not 0 <= request.seed <= rules.max_seed:
        raise InputError(f"seed {request.seed} is outside 0..{rules.max_seed}")
    batch = request.batch
    if isinstance(batch, bool) or not isinstance(batch, int) or not 1 <= batch <= rules.max_batch:
        raise InputError(f"batch must be 1..{rules.max_batch}, got {batch}")
    last = request.seeds[-1]
    if last > rules.max_seed:
        raise InputError(f"seed {request.seed} with batch_size {batch}: image i uses seed + i, and "
                         f"{last} is above {rules.max_seed}")


def _table_rows() -> list[tuple[str, ...]]:
    from .models import MODELS

    remote = [remote_rules(m, p) for m in MODELS.values() for p in (RUNWARE, BFL) if p in m.providers]
    min_sides = sorted({r.sizes.min_side for r in remote})
    refs = sorted({r.max_refs for r in remote})
    local, comfy = local_rules("m", LOCAL_MAX_REFS), comfy_rules("m")

    def seeds(r: Rules) -> str:
        return "0..2^32-1" if r.max_seed == MAX_SEED else "0..2^64-1"

    def row(r: Rules, min_side: str, max_refs: str) -> tuple[str, ...]:
        s = r.sizes
        return (min_side, f"{s.max_side}", f"{s.multiple}", f"{s.max_pixels / 2**20:g} MP", max_refs,
                f"{r.max_batch}", seeds(r), "allowed" if r.empty_prompt else "refused",
                f"{r.max_prompt_chars}" if r.max_prompt_chars else "-")

    return [
        ("Runware / BFL", *row(remote[0], "/".join(map(str, min_sides)) + " (per model)",
                               "/".join(map(str, refs)) + " (per model)")),
        ("local weights", *row(local, f"{local.sizes.min_side}", f"{local.max_refs} (preset)")),
        ("ComfyUI core", *row(comfy, f"{comfy.sizes.min_side}", f"{comfy.max_refs}")),
    ]


def rules_table() -> str:
    """The table above, as markdown, from the code."""
    head = ("backend", "min side", "max side", "multiple", "max pixels", "max refs", "max batch", "seeds",
            "empty prompt", "max prompt chars")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(r) + " |" for r in _table_rows()]
    return "\n".join(lines)
