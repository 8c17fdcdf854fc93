"""LocalBackend: FLUX.2 [klein] / [dev] on local weights, behind the same Backend protocol as the providers.

Weights load lazily on the first generate and stay in a process-wide cache keyed by files, dtype, device
and offload mode, so a graph with several generation nodes loads them once. A batch of N gives the
images of seeds seed, seed+1, ..., seed+N-1, each identical to diffusers' single image with that seed.
"""
from __future__ import annotations

from typing import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..backend import GenerationRequest, GenerationResult, PlannedCall, validated
from ..errors import ConfigError, InputError, ModelLoadError
from ..pricing import Estimate
from ..run_context import RunContext
from ..rules import Rules, local_rules, validate_request
from .engine_cache import DTYPES, ENGINES, file_stamps, load_engine
from .model.params import ModelPreset, get_preset
from .pipeline import NonFiniteValues, decode_tile, reference_size
from .weights.detect import AUTO, with_reference_kv

OFFLOAD = ("none", "blocks")
VAE_TILING = ("auto", "on", "off")
REF_MIN_SIDE, REF_MAX_ASPECT = 64, 8.0


def clear_cache() -> None:
    """Drop the process's loaded model set (tests; ComfyUI frees memory through its own hooks)."""
    ENGINES.clear()


def pick_device(device: str) -> torch.device:
    if device in ("", "auto", None):
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        return torch.device("mps" if mps is not None and mps.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("device 'cuda' requested but this torch build sees no CUDA GPU")
    return torch.device(device)


@dataclass(frozen=True)
class LocalFiles:
    """Resolved paths (the node / CLI resolve names through folder_paths or models_dir.resolve)."""

    diffusers_dir: Path | None = None
    transformer: Path | None = None
    text_encoder: Path | None = None
    vae: Path | None = None
    tokenizer: Path | None = None

    def paths(self) -> list[Path]:
        return [p for p in (self.diffusers_dir, self.transformer, self.text_encoder, self.vae, self.tokenizer) if p]


@dataclass
class LocalBackend:
    model_name: str                     # a preset name, or "auto": detected from the files (weights/detect.py)
    files: LocalFiles
    dtype: str = "bf16"
    device: str = "auto"
    steps: int = 0                      # 0 = model default
    guidance: float = 0.0               # 0 = model default
    offload: str = "none"
    preset: ModelPreset | None = None   # tests pass tiny presets; otherwise from model_name
    vae_tiling: str = "auto"            # auto: tiled VAE decode above 2 MP on a GPU; on; off
    # Called before weights are loaded (not on a cache hit); inside ComfyUI the node passes a hook that
    # unloads ComfyUI's cached models, so a 24 GB card is not already full when ours arrive.
    before_load: Callable[[], None] | None = field(default=None, compare=False, repr=False)
    loras: tuple = ()                   # lora.LoRASpec links of a Flux2LoRA chain, applied on the fly in this order
    kind: str = field(default="local", init=False)
    takes_reference_urls = ()           # URL references arrive fetched: the engine needs pixels
    takes_loras = "file"                # LoRA files applied on the fly (weights/lora.py)
    _kv_checked: bool = field(default=False, init=False, repr=False, compare=False)

    def __post_init__(self):
        if self.preset is None and self.model_name != AUTO:
            self.preset = get_preset(self.model_name)
        if self.dtype not in DTYPES:
            raise InputError(f"dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        if self.offload not in OFFLOAD:
            raise InputError(f"offload must be one of {', '.join(OFFLOAD)}, got {self.offload!r}")
        if self.steps < 0 or self.steps > 200:
            raise InputError(f"steps must be 0 (model default) .. 200, got {self.steps}")
        if self.guidance < 0:
            raise InputError(f"guidance must be >= 0, got {self.guidance}")
        if self.vae_tiling not in VAE_TILING:
            raise InputError(f"vae_tiling must be one of {', '.join(VAE_TILING)}, got {self.vae_tiling!r}")

    # ------------------------------------------------------------------ detection
    def detection(self):
        """What the files are (weights/detect.py, headers only; cached per file version)."""
        from .weights.detect import detect

        return detect(self.files)

    def _files_complete(self) -> bool:
        """Whether all three parts are there to plan from (a single file, or the diffusers folder's subfolder)."""
        f = self.files
        d = Path(f.diffusers_dir) if f.diffusers_dir else None

        def has(single, sub: str) -> bool:
            return Path(single).exists() if single is not None else d is not None and (d / sub).is_dir()

        return has(f.transformer, "transformer") and has(f.text_encoder, "text_encoder") and has(f.vae, "vae")

    @property
    def model_preset(self) -> ModelPreset:
        """The named preset, or for "auto" the one detected from the files (a one-line ModelLoadError if they
        cannot work together)."""
        if self.preset is None:
            self.preset = self.detection().preset
        elif self.model_name != AUTO and not self._kv_checked and self._files_complete():
            self._kv_checked = True
            self.preset = with_reference_kv(self.preset, self.files)   # a named [klein] preset on KV weights
        return self.preset

    # ------------------------------------------------------------------ protocol
    def describe(self) -> str:
        src = self.files.diffusers_dir or self.files.transformer
        name = self.model_preset.name if self.model_name == AUTO else self.model_name
        return (f"local {name} ({Path(src).name if src else 'no weights'}, {self.dtype}, "
                f"{self.device}, {self.effective_steps} steps)")

    @property
    def effective_steps(self) -> int:
        return self.steps or self.model_preset.default_steps

    @property
    def effective_guidance(self) -> float:
        return self.guidance or self.model_preset.default_guidance

    def rules(self) -> Rules:
        return local_rules(self.model_name, self.model_preset.max_refs)

    def check_ready(self) -> None:
        f = self.files
        if f.diffusers_dir is None and f.transformer is None:
            raise ConfigError(f"{self.model_name}: no diffusion model file or diffusers folder selected")
        for p in f.paths():
            if not Path(p).exists():
                raise ModelLoadError(f"{self.model_name}: file not found: {p}")
        if f.diffusers_dir is None:
            if f.text_encoder is None:
                raise ConfigError(f"{self.model_name}: no text encoder file selected")
            if f.vae is None:
                raise ConfigError(f"{self.model_name}: no VAE file selected")
        if self.device not in ("auto", "cpu"):
            pick_device(self.device)
        if self.model_name == AUTO:
            self.model_preset          # the files must be one FLUX.2 model: refused here, before any step

    def with_lora(self, path, strength: float) -> "LocalBackend":
        """This backend with one more LoRA file (a path inside the loras folder: the node resolves it)."""
        from dataclasses import replace

        from .weights.lora import LoRASpec

        return replace(self, loras=tuple(self.loras) + (LoRASpec(Path(path), float(strength)),))

    def lora_files(self) -> list:
        """The chain's LoRA files as this model takes them (headers, and a NaN/Inf scan of the matched tensors);
        a file for another architecture or size, one that matches no layer, or one holding NaN/Inf is a one-line
        ModelLoadError naming it."""
        from .weights.lora_inspect import inspect_lora

        return [inspect_lora(s.path, self.model_preset.transformer) for s in self.loras]

    def lora_bytes(self) -> int:
        """Device bytes of the chain's patches in the compute dtype (strength 0 adds nothing)."""
        from .weights.lora_keys import linear_shapes

        shapes = linear_shapes(self.model_preset.transformer)
        return sum(f.device_bytes(DTYPES[self.dtype].itemsize, shapes)
                   for f, s in zip(self.lora_files(), self.loras) if s.strength != 0)

    def lora_key(self) -> tuple:
        """Identity of the applied LoRA set (file versions and strengths; strength-0 links apply nothing)."""
        return tuple(s.identity() for s in self.loras if s.strength != 0)

    def validate(self, request: GenerationRequest) -> None:
        validate_request(request, self.rules())
        self.lora_files()
        for i, ref in enumerate(request.references, 1):
            if min(ref.width, ref.height) < REF_MIN_SIDE:
                raise InputError(f"reference {i} is {ref.width}x{ref.height}; both sides must be >= {REF_MIN_SIDE}")
            if max(ref.width / ref.height, ref.height / ref.width) > REF_MAX_ASPECT:
                raise InputError(f"reference {i} is {ref.width}x{ref.height}; aspect ratio over {REF_MAX_ASPECT:g}:1")

    def plan(self, request: GenerationRequest) -> list[PlannedCall]:
        refs = [reference_size(r.width, r.height) for r in request.references]
        seeds = request.seeds
        summary = (f"{request.width}x{request.height}, seed {seeds[0]}"
                   + (f"..{seeds[-1]}" if len(seeds) > 1 else "")
                   + f", {self.effective_steps} steps"
                   + (f", guidance {self.effective_guidance:g}" if self.effective_guidance else "")
                   + (f", {len(refs)} refs " + " ".join(f"{w}x{h}" for w, h in refs) if refs else ""))
        memory = self.memory_plan(request)
        summary += f"; device memory {memory.describe()}; RAM {memory.describe_ram()}"
        loras = [{"file": f.name, "strength": s.strength, "layers": len(f.layers), "unused_keys": len(f.unused)}
                 for f, s in zip(self.lora_files(), self.loras)]
        if loras:
            summary += "; LoRA " + ", ".join(f"{x['file']} x{x['strength']:g} ({x['layers']} layers"
                                             + (f", {x['unused_keys']} keys unused" if x["unused_keys"] else "") + ")"
                                             for x in loras)
        name = self.model_preset.name
        if self.model_name == AUTO:
            summary += f"; {self.detection().describe()}"
        return [PlannedCall("local", f"local {name} on {self.device} ({self.dtype})", summary,
                            {"model": name, "width": request.width, "height": request.height,
                             "seed": request.seed, "batch": request.batch, "steps": self.effective_steps,
                             "guidance": self.effective_guidance, "references": len(refs),
                             "device_memory_gib": round(memory.total / 2**30, 1),
                             "ram_gib": round(memory.ram / 2**30, 1),
                             **({"reference_kv_gib": round(memory.reference_kv / 2**30, 2)}
                                if memory.reference_kv else {}),
                             **({"loras": loras} if loras else {})})]

    def estimate(self, request: GenerationRequest) -> Estimate:
        return Estimate(0.0, f"{self.model_preset.name} on local weights: no charge")

    def host(self) -> str:
        return ""                       # nothing is sent anywhere

    def cache_identity(self) -> None:
        return None                     # free and reproducible: not kept in the result cache

    def generate(self, request: GenerationRequest, ctx: RunContext) -> GenerationResult:
        from PIL import Image

        from ..images import decode
        from .pipeline import prepare_reference

        request = validated(self, request)      # trusted when run() already checked it
        node = request.node_id or "?"
        refs = [prepare_reference(Image.fromarray(decode(r.png, f"reference {i}")))
                for i, r in enumerate(request.references, 1)]
        ctx.check_cancelled()
        ctx.report(node, 0, self.effective_steps, f"loading {self.model_name}")
        engine = self.engine(request)
        seeds = request.seeds
        steps = self.effective_steps

        def on_step(done: int, total: int) -> None:
            ctx.report(node, done, total, f"step {done}/{total}")
            if done < total:
                ctx.check_cancelled()

        ctx.check_cancelled()
        with engine.loras.lock:           # this request's LoRA set stays hooked in until its last step
            engine.loras.use(self.lora_key(), lambda: self.lora_patches(engine))
            try:
                images = engine.generate(request.prompt, request.width, request.height, seeds, steps,
                                         self.effective_guidance, refs, on_step=on_step,
                                         cfg_one_forward=self.cfg_one_forward(request, engine.device),
                                         vae_tiling=self.vae_tiling)
            except NonFiniteValues as exc:
                raise ModelLoadError(f"{exc}; the likely cause: {self.likely_file(exc.part)} holds NaN/Inf "
                                     "weights (damaged or badly converted: check or download it again)") from None
        return GenerationResult(images=images, seeds=seeds, cost_usd=0.0,
                                info={"model": self.model_preset.name, "steps": steps,
                                      "guidance": self.effective_guidance, "device": str(engine.device)})

    def likely_file(self, part: str) -> str:
        """The file(s) a non-finite stage points at: the component's single file or its diffusers subfolder;
        for the transformer, also the LoRAs applied to it."""
        f = self.files
        single = {"transformer": f.transformer, "text_encoder": f.text_encoder, "vae": f.vae}.get(part)
        where = (f"{part.replace('_', ' ')} file {Path(single).name}" if single is not None
                 else f"{part.replace('_', ' ')} weights in {Path(f.diffusers_dir).name}/{part}/" if f.diffusers_dir
                 else f"the {part.replace('_', ' ')}")
        loras = [Path(s.path).name for s in self.loras if s.strength != 0] if part == "transformer" else []
        return where + (f" or LoRA {', '.join(loras)}" if loras else "")

    def cfg_one_forward(self, request: GenerationRequest, device: torch.device) -> bool:
        """Whether CFG's two halves run as one batch of 2B: not under block offload (memory is what it saves
        there), and on CUDA only when the activations planned for 2B fit the memory free now (weights loaded)."""
        if self.offload == "blocks" or not (self.model_preset.uses_cfg and self.effective_guidance > 1.0):
            return False
        from dataclasses import replace

        from .memory import free_device_memory

        info = free_device_memory(device)
        if info is None:                 # CPU / MPS: no device budget to plan against
            return True
        free = info[0] + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        return self.memory_plan(replace(request, batch=2 * request.batch), cfg_batched=True).activations <= free

    def lora_patches(self, engine) -> dict:
        """The chain's patches for this engine's transformer, in its compute dtype on its device."""
        from .weights.lora_deltas import load_deltas
        from .weights.lora_inspect import inspect_lora
        from .weights.lora_keys import linear_shapes
        from .weights.lora_patches import build_patches

        p = engine.m.transformer.params
        files = [(load_deltas(inspect_lora(s.path, p)), s.strength) for s in self.loras if s.strength != 0]
        return build_patches(files, linear_shapes(p), engine.m.transformer.dtype, engine.device)

    # ------------------------------------------------------------------ loading
    def cache_key(self) -> tuple:
        return (self.model_preset.name, file_stamps(self.files.paths()), self.dtype, str(pick_device(self.device)),
                self.offload)

    def memory_plan(self, request: GenerationRequest, offload: str | None = None, cfg_batched: bool = False):
        """Device memory this request needs on this backend's device (memory.py), from shapes only.
        cfg_batched: the request's batch already holds both CFG halves (one forward), so one prompt kind."""
        from .memory import plan_memory, sizes_from_headers

        try:
            device = pick_device(self.device)
        except ConfigError:     # e.g. a dry run planned on a machine without the GPU the graph names
            device = torch.device(self.device)
        keep_fp8 = device.type != "mps"
        dtype_bytes = DTYPES[self.dtype].itemsize
        sizes = None
        if self.model_name == AUTO or self._files_complete():
            det = self.detection()       # headers only: no weight is read, no file mapped
            sizes = sizes_from_headers(det.transformer, det.text_encoder, det.vae, dtype_bytes=dtype_bytes,
                                       keep_fp8=keep_fp8, upcast_transformer=det.upcast_transformer,
                                       text_layers_used=max(self.model_preset.text_encoder.out_layers))
        # else: a named model whose files are not all there yet (a dry run warns about them): its preset's sizes
        cfg = self.model_preset.uses_cfg and self.effective_guidance > 1.0      # as Flux2Engine.generate decides
        return plan_memory(self.model_preset, dtype_bytes=dtype_bytes, offload=offload or self.offload, sizes=sizes,
                           width=request.width, height=request.height, batch=request.batch,
                           reference_pixels=[w * h for w, h in (reference_size(r.width, r.height)
                                                                for r in request.references)],
                           vae_tile=decode_tile(self.vae_tiling, device, request.height, request.width),
                           lora_bytes=self.lora_bytes() if self.loras else 0, device_type=device.type,
                           prompt_kinds=2 if cfg and not cfg_batched else 1)

    def engine(self, request: GenerationRequest | None = None):
        """The loaded engine (shared, engine_cache.py). With a request, a run that cannot fit the device is
        refused before any weight is read."""
        self.check_ready()
        device = pick_device(self.device)

        def load():
            if request is not None:          # after before_load: ComfyUI's models no longer hold memory
                self._check_fits(request, device)
            return load_engine(self.model_preset, self.files, dtype=self.dtype, device=device, offload=self.offload)

        return ENGINES.get(self.cache_key(), load, self.before_load)

    def _check_fits(self, request: GenerationRequest, device: torch.device) -> None:
        from .memory import check_fits

        alternative = self.memory_plan(request, "blocks") if self.offload == "none" else None
        check_fits(self.memory_plan(request), device, f"{self.model_preset.name} at {request.width}x{request.height}",
                   alternative)
