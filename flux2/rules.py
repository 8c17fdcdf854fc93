"""What a request may be, per model and backend: output sizes, references, batch, seeds and prompt.

Every backend validates through `validate_request(request, rules)`; the nodes and the editor's
preview read the same `Rules`, so a limit is written once. Where the backends really differ, the
README's "Request rules" table says so; `rules_table()` writes it from this file and a test keeps the
README equal to it.
"""
from __future__ import annotations

from dataclasses import dataclass

from . import flux3
from .errors import InputError
from .models import BFL, LOCAL, MAX_REFS_FLUX2, RUNWARE, ModelSpec, ProviderModel, get_model
from .sizes import FLUX2_SIZES, MEGAPIXEL, SizeLimits, validate_size

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
# FLUX 3 / 3.1 Image (docs/flux3.md): prompt 1..15000 characters (ComfyUI's Flux3ImageNode docs); each reference
# >= 256x256 and <= 16 MP, base64 <= 20 MB (Comfy-Org's router schemas, Replicate's schema).
FLUX3_MAX_PROMPT_CHARS = 15000
FLUX3_REF_MIN_SIDE = 256
FLUX3_REF_MAX_PIXELS = 16 * MEGAPIXEL
FLUX3_REF_MAX_B64 = 20 * 1000 * 1000


@dataclass(frozen=True)
class Rules:
    """The limits one model has on one backend; `name` is the subject of every message."""

    name: str
    sizes: SizeLimits = FLUX2_SIZES
    max_refs: int = MAX_REFS_FLUX2
    max_batch: int = LOCAL_MAX_BATCH
    max_seed: int = MAX_TORCH_SEED
    empty_prompt: bool = True         # local models encode "" fine; the providers refuse it
    max_prompt_chars: int | None = None
    sizing: str = "grid"              # grid: width x height as asked; tiers: FLUX 3 Image's ratio x resolution
    takes_seed: bool = True           # FLUX 3: no seed is sent; the seed output is the provider's
    takes_mask: bool = False          # FLUX 3.1 Image: `mask` over reference 1
    layout: str = ""                  # "": refused; "prompt": appended to the prompt (3.0); "field": bounding_boxes
    ref_min_side: int = 0
    ref_max_pixels: int | None = None
    ref_max_b64: int | None = None    # characters of base64 per reference


# No backend connected (Flux2Size alone, the editor before a backend is linked): the FLUX.2 grid.
DEFAULT_RULES = Rules("FLUX.2")


def remote_rules(model: ModelSpec, provider: str, pm: ProviderModel | None = None) -> Rules:
    """A model on Runware or BFL: the provider's minimum side and reference count, batch <= 8 (one task
    per image, sent at once), the providers' 32-bit seeds, a non-empty prompt of at most 32000 characters.
    pm: the entry a backend holds (default: the registry's)."""
    pm = pm or model.on(provider)
    sizes = SizeLimits(multiple=model.multiple, min_side=pm.min_side, max_side=model.max_side,
                       max_pixels=model.max_pixels, max_aspect=model.max_aspect)
    name = f"{model.name} on {LABELS[provider]}"
    if model.generation == 3:
        return Rules(name, sizes, max_refs=pm.max_refs, max_batch=REMOTE_MAX_BATCH, max_seed=MAX_SEED,
                     empty_prompt=False, max_prompt_chars=FLUX3_MAX_PROMPT_CHARS,
                     sizing="tiers" if model.family == "flux3" else "grid", takes_seed=False,
                     takes_mask=model.family == "flux3.1", layout="field" if model.family == "flux3.1" else "prompt",
                     ref_min_side=FLUX3_REF_MIN_SIDE, ref_max_pixels=FLUX3_REF_MAX_PIXELS,
                     ref_max_b64=FLUX3_REF_MAX_B64)
    return Rules(name, sizes, max_refs=pm.max_refs, max_batch=REMOTE_MAX_BATCH,
                 max_seed=MAX_SEED, empty_prompt=False, max_prompt_chars=MAX_PROMPT_CHARS)


def delivered_size(rules: Rules, width: int, height: int) -> tuple[int, int]:
    """The size a provider delivers for a requested one: FLUX 3 Image maps W x H to its nearest aspect
    ratio and resolution tier (flux2/flux3.py); every other model delivers what was asked."""
    if rules.sizing == "tiers" and _is_int(width) and _is_int(height) and width > 0 and height > 0:
        return flux3.deliver(width, height)
    return width, height


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


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
    validate_size(*delivered_size(rules, request.width, request.height), rules.sizes, what=rules.name)
    n = len(request.references)
    if n > rules.max_refs:
        raise InputError(f"{rules.name} takes at most {rules.max_refs} reference images, got {n}")
    _validate_references(request.references, rules)
    _validate_mask(request, rules)
    _validate_layout(request, rules)
    if isinstance(request.seed, bool) or not isinstance(request.seed, int) or not 0 <= request.seed <= rules.max_seed:
        raise InputError(f"seed {request.seed} is outside 0..{rules.max_seed}")
    batch = request.batch
    if isinstance(batch, bool) or not isinstance(batch, int) or not 1 <= batch <= rules.max_batch:
        raise InputError(f"batch must be 1..{rules.max_batch}, got {batch}")
    last = request.seeds[-1]
    if last > rules.max_seed:
        raise InputError(f"seed {request.seed} with batch_size {batch}: image i uses seed + i, and "
                         f"{last} is above {rules.max_seed}")


def _validate_references(references, rules: Rules) -> None:
    for i, ref in enumerate(references, 1):
        if getattr(ref, "size_known", True) is False:
            continue                               # a URL the provider fetches: checked there
        w, h = ref.width, ref.height
        if min(w, h) < rules.ref_min_side:
            raise InputError(f"reference {i} is {w}x{h}; {rules.name} takes references of at least "
                             f"{rules.ref_min_side}x{rules.ref_min_side}")
        if rules.ref_max_pixels and w * h > rules.ref_max_pixels:
            raise InputError(f"reference {i} is {w}x{h}; {rules.name} takes references of at most "
                             f"{rules.ref_max_pixels / MEGAPIXEL:g} MP")
        png = getattr(ref, "png", None)
        if rules.ref_max_b64 and png is not None and (len(png) + 2) // 3 * 4 > rules.ref_max_b64:
            raise InputError(f"reference {i} is over {rules.ref_max_b64 // 1000000} MB as base64 for {rules.name}; "
                             "make it smaller")


def _validate_mask(request, rules: Rules) -> None:
    mask = getattr(request, "mask", None)
    if mask is None:
        return
    if not rules.takes_mask:
        raise InputError(f"{rules.name} takes no mask (FLUX 3.1 Image on BFL does)")
    refs = request.references
    if not refs:
        raise InputError(f"{rules.name}: a mask edits reference 1; connect reference_1")
    if len(refs) > rules.max_refs - 1:
        raise InputError(f"{rules.name} takes at most {rules.max_refs - 1} reference images with a mask, "
                         f"got {len(refs)}")
    first = refs[0]
    if getattr(first, "size_known", True) is not False:
        ref_ratio, mask_ratio = first.width / first.height, mask.width / mask.height
        if abs(ref_ratio / mask_ratio - 1) > 0.01:
            raise InputError(f"the mask is {mask.width}x{mask.height} but reference 1 is {first.width}x{first.height}; "
                             "give the mask the aspect ratio of reference 1")


def _validate_layout(request, rules: Rules) -> None:
    layout = getattr(request, "layout", None)
    if layout is None:
        return
    if not rules.layout:
        raise InputError(f"{rules.name} takes no layout boxes (FLUX 3 Image and FLUX 3.1 Image do)")
    highest = layout.max_source()
    if highest >= len(request.references):
        raise InputError(f"layout moves an element from ref_image_{highest}, but the request has "
                         f"{len(request.references)} reference(s) (ref_image_0 is reference 1)")


def _table_rows() -> list[tuple[str, ...]]:
    from .models import MODELS

    remote = [remote_rules(m, p) for m in MODELS.values() for p in (RUNWARE, BFL)
              if p in m.providers and m.generation == 2]
    min_sides = sorted({r.sizes.min_side for r in remote})
    refs = sorted({r.max_refs for r in remote})
    local, comfy = local_rules("m", LOCAL_MAX_REFS), comfy_rules("m")

    def seeds(r: Rules) -> str:
        if not r.takes_seed:
            return "none sent (output: provider's seed)"
        return "0..2^32-1" if r.max_seed == MAX_SEED else "0..2^64-1"

    def row(r: Rules, min_side: str, max_refs: str) -> tuple[str, ...]:
        s = r.sizes
        return (min_side, f"{s.max_side}", f"{s.multiple}", f"{s.max_pixels / 2**20:g} MP", max_refs,
                f"{r.max_batch}", seeds(r), "allowed" if r.empty_prompt else "refused",
                f"{r.max_prompt_chars}" if r.max_prompt_chars else "-")

    return [
        ("Runware / BFL", *row(remote[0], "/".join(map(str, min_sides)) + " (per model)",
                               "/".join(map(str, refs)) + " (per model)")),
        *[_flux3_row(m, row) for m in MODELS.values() if m.generation == 3],
        ("local weights", *row(local, f"{local.sizes.min_side}", f"{local.max_refs} (preset)")),
        ("ComfyUI core", *row(comfy, f"{comfy.sizes.min_side}", f"{comfy.max_refs}")),
    ]


def _flux3_row(model: ModelSpec, row) -> tuple[str, ...]:
    """A FLUX 3 model's row: its providers, sizes as the provider takes them, references and their limits."""
    providers = [p for p in (RUNWARE, BFL) if p in model.providers]
    r = remote_rules(model, providers[-1])
    where = f"{model.name} ({' / '.join(LABELS[p] for p in providers)})"
    if r.sizing == "tiers":
        min_side = f"- ({len(flux3.ASPECTS)} ratios x {'/'.join(flux3.TIERS)}; W x H maps to the nearest)"
    else:
        min_side = f"{r.sizes.min_side} (exact W x H, <= {r.sizes.max_aspect:g}:1)"
    refs = (f"{r.max_refs} (each >= {r.ref_min_side}x{r.ref_min_side}, <= {r.ref_max_pixels / 2**20:g} MP"
            + (f"; {r.max_refs - 1} with a mask)" if r.takes_mask else ")"))
    return (where, *row(r, min_side, refs))


def rules_table() -> str:
    """The table above, as markdown, from the code."""
    head = ("backend", "min side", "max side", "multiple", "max pixels", "max refs", "max batch", "seeds",
            "empty prompt", "max prompt chars")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(r) + " |" for r in _table_rows()]
    return "\n".join(lines)
