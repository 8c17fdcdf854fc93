"""Flux2ComfyBackend: our generation nodes on top of ComfyUI core's own FLUX.2 MODEL / CLIP / VAE.

Users who already load FLUX.2 the core way (UNETLoader, CLIPLoader type flux2, VAELoader) plug those
three outputs in here and keep ComfyUI's memory management, samplers, previews and interrupt. The
backend drives ComfyUI's API exactly as the core graph does

    CLIPTextEncode -> FluxGuidance -> ReferenceLatent(VAEEncode(ref))... -> CFGGuider
    EmptyFlux2LatentImage + RandomNoise(seed) + KSamplerSelect + Flux2Scheduler -> SamplerCustomAdvanced -> VAEDecode

so one image with seed S is the image that core graph makes with noise_seed S (tested in a real
ComfyUI server). Image i of a batch uses seed S+i, as on every other backend.

Every ComfyUI import is inside a function: the module is imported (and its node listed) headless too,
where building the backend fails with one clear line instead.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from ..flux2.backend import GenerationRequest, GenerationResult, PlannedCall, validated
from ..flux2.errors import ConfigError, InputError
from ..flux2.images import decode, tensor_to_arrays
from ..flux2.pricing import Estimate
from ..flux2.run_context import RunContext
from ..flux2.rules import Rules, comfy_rules, validate_request
from .comfy_hooks import in_comfyui, sampler_names
from .common import BackendNode

LATENT_CHANNELS, LATENT_SCALE = 128, 16      # FLUX.2 latents in ComfyUI: [B, 128, H/16, W/16]


def _schedule(steps: int, width: int, height: int) -> torch.Tensor:
    """steps+1 sigmas; ComfyUI's own Flux2Scheduler formula where present, else ours (same formula)."""
    seq_len = round(width * height / (LATENT_SCALE * LATENT_SCALE))
    try:
        from comfy_extras.nodes_flux import get_schedule  # type: ignore  # ComfyUI only
    except ImportError:      # headless, or a ComfyUI without it: the same formula from our engine
        from ..flux2.local.model.sampling import sigmas
        return sigmas(steps, seq_len)
    return get_schedule(steps, seq_len)


def _model_family(model) -> str:
    """'Flux2' when the MODEL is ComfyUI's FLUX.2 class (model_base.Flux2) or a subclass; raises otherwise."""
    inner = getattr(model, "model", None)
    cls = type(inner if inner is not None else model)
    if not any(c.__name__ == "Flux2" for c in cls.__mro__):
        raise InputError(f"Flux2ComfyBackend needs a FLUX.2 MODEL (UNETLoader with a FLUX.2 file); got {cls.__name__}")
    return "Flux2"


@dataclass
class ComfyCoreBackend:
    """A Backend over ComfyUI core objects: ModelPatcher (MODEL), comfy.sd.CLIP, comfy.sd.VAE."""

    model: object
    clip: object
    vae: object
    steps: int = 20
    guidance: float = 4.0
    cfg: float = 1.0
    sampler_name: str = "euler"
    model_name: str = "FLUX.2 (ComfyUI MODEL)"
    kind: str = field(default="comfy", init=False)
    takes_reference_urls = ()           # URL references arrive fetched: ComfyUI's VAE encodes pixels
    takes_loras = ""                    # its LoRAs go on the MODEL, in ComfyUI's own graph

    def with_lora(self, lora, strength: float) -> "ComfyCoreBackend":
        raise InputError("Flux2LoRA: Flux2ComfyBackend takes its LoRAs on the MODEL: put ComfyUI's "
                         "LoraLoaderModelOnly between the model loader and Flux2ComfyBackend")

    def __post_init__(self):
        if not 1 <= self.steps <= 200:
            raise InputError(f"steps must be 1..200, got {self.steps}")
        if self.guidance < 0 or self.cfg < 0:
            raise InputError("guidance and cfg must be >= 0")

    def host(self) -> str:
        return ""                       # runs in this process

    def cache_identity(self) -> None:
        return None                     # ComfyUI core objects have no stable identity to key a cache on

    def describe(self) -> str:
        return (f"ComfyUI core {self.model_name} ({self.steps} steps, {self.sampler_name}, guidance "
                f"{self.guidance:g}, cfg {self.cfg:g})")

    def rules(self) -> Rules:
        return comfy_rules(self.model_name)

    def check_ready(self) -> None:
        if not in_comfyui():
            raise ConfigError("Flux2ComfyBackend runs inside ComfyUI only; use Flux2LocalBackend headless")
        _model_family(self.model)
        for name, obj, method in (("clip", self.clip, "encode_from_tokens_scheduled"), ("vae", self.vae, "decode")):
            if not callable(getattr(obj, method, None)):
                raise InputError(f"Flux2ComfyBackend: the {name} input is not a ComfyUI {name.upper()}")

    def validate(self, request: GenerationRequest) -> None:
        validate_request(request, self.rules())
        from ..flux2.local.pipeline import reference_size  # model code: loaded on first use, not with the pack

        for i, ref in enumerate(request.references, 1):
            if min(reference_size(ref.width, ref.height)) < LATENT_SCALE:
                raise InputError(f"reference {i} is {ref.width}x{ref.height}; both sides must be >= 16")

    def plan(self, request: GenerationRequest) -> list[PlannedCall]:
        from ..flux2.local.pipeline import reference_size

        refs = [reference_size(r.width, r.height) for r in request.references]
        summary = (f"{request.width}x{request.height}, seed {request.seed}, {self.steps} steps {self.sampler_name}"
                   + (f", {len(refs)} refs " + " ".join(f"{w}x{h}" for w, h in refs) if refs else ""))
        return [PlannedCall("comfy", f"ComfyUI core {self.model_name}", summary,
                            {"width": request.width, "height": request.height, "seed": request.seed,
                             "batch": request.batch, "steps": self.steps, "guidance": self.guidance,
                             "cfg": self.cfg, "sampler": self.sampler_name, "references": len(refs)})]

    def estimate(self, request: GenerationRequest) -> Estimate:
        return Estimate(0.0, "ComfyUI core model on this machine: no charge")

    def generate(self, request: GenerationRequest, ctx: RunContext) -> GenerationResult:
        import comfy.model_management as mm  # type: ignore  # ComfyUI only
        import comfy.sample  # type: ignore
        import comfy.samplers  # type: ignore
        import latent_preview  # type: ignore
        import node_helpers  # type: ignore

        request = validated(self, request)      # trusted when run() already checked it
        self.check_ready()
        positive = self._encode(request.prompt, node_helpers)
        real_cfg = self.cfg != 1.0
        negative = self._encode("", node_helpers) if real_cfg else None
        for i, ref in enumerate(request.references, 1):
            pixels = reference_pixels(ref.png, i)                                              # [1, h, w, 3]
            latent = self.vae.encode(pixels)                                                   # [1, 128, h/16, w/16]
            positive = node_helpers.conditioning_set_values(positive, {"reference_latents": [latent]}, append=True)
            if real_cfg:
                negative = node_helpers.conditioning_set_values(negative, {"reference_latents": [latent]}, append=True)
        mm.throw_exception_if_processing_interrupted()          # ComfyUI shows it as "interrupted", not an error

        zeros = torch.zeros([1, LATENT_CHANNELS, request.height // LATENT_SCALE, request.width // LATENT_SCALE],
                            device=mm.intermediate_device())
        latent = comfy.sample.fix_empty_latent_channels(self.model, zeros).repeat(request.batch, 1, 1, 1)
        seeds = request.seeds
        # Per-image noise from seed+i, each drawn as RandomNoise draws a batch of one.
        noise = torch.cat([comfy.sample.prepare_noise(latent[:1], s) for s in seeds])
        sigmas = _schedule(self.steps, request.width, request.height)

        guider = comfy.samplers.CFGGuider(self.model)
        if real_cfg:
            guider.set_conds(positive, negative)
            guider.set_cfg(self.cfg)
        else:                                                   # what core's BasicGuider does
            guider.inner_set_conds({"positive": positive})
        # ComfyUI's own callback: progress bar, live previews, and (through the progress hook) interrupt.
        callback = latent_preview.prepare_callback(self.model, sigmas.shape[-1] - 1)
        samples = guider.sample(noise, latent, comfy.samplers.sampler_object(self.sampler_name), sigmas,
                                callback=callback, disable_pbar=True, seed=request.seed)
        samples = samples.to(mm.intermediate_device())
        mm.throw_exception_if_processing_interrupted()
        images = self.vae.decode(samples)                        # [B, H, W, 3] float 0..1
        if images.ndim == 5:                                    # video-style VAEs return [B, T, H, W, C]
            images = images.reshape(-1, *images.shape[-3:])
        return GenerationResult(images=tensor_to_arrays(images), seeds=seeds, cost_usd=0.0,
                                info={"steps": self.steps, "sampler": self.sampler_name})

    def _encode(self, text: str, node_helpers) -> list:
        tokens = self.clip.tokenize(text)
        cond = self.clip.encode_from_tokens_scheduled(tokens)
        return node_helpers.conditioning_set_values(cond, {"guidance": self.guidance})


def prepare_reference_array(png: bytes, index: int):
    """The same reference preparation as the local engine: <= 1 MP, centre-cropped to multiples of 16."""
    from PIL import Image

    from ..flux2.local.pipeline import prepare_reference
    return prepare_reference(Image.fromarray(decode(png, f"reference {index}")))


def reference_pixels(png: bytes, index: int) -> torch.Tensor:
    """A reference as ComfyUI's IMAGE, [1, h, w, 3] float 0..1. The prepared array views PIL's read-only
    buffer; torch.from_numpy on it warns (ComfyUI 0.33 shows that in its log), so it is copied first."""
    arr = np.array(prepare_reference_array(png, index), dtype=np.uint8, copy=True)  # [h, w, 3], writable
    return torch.from_numpy(arr).float().div(255.0)[None]


class Flux2ComfyBackend(BackendNode):
    DESCRIPTION = ("FLUX.2 on ComfyUI core's own MODEL / CLIP / VAE (UNETLoader, CLIPLoader type flux2, VAELoader), "
                   "with ComfyUI's memory management. One image with seed S equals the core graph's "
                   "SamplerCustomAdvanced result with noise_seed S.")

    @classmethod
    def INPUT_TYPES(cls):
        samplers = sampler_names()
        return {"required": {
            "model": ("MODEL", {"tooltip": "A FLUX.2 diffusion model from UNETLoader (Load Diffusion Model)."}),
            "clip": ("CLIP", {"tooltip": "The FLUX.2 text encoder from CLIPLoader with type flux2."}),
            "vae": ("VAE", {"tooltip": "The FLUX.2 VAE from VAELoader."}),
            "steps": ("INT", {"default": 20, "min": 1, "max": 200,
                      "tooltip": "Sampling steps: [dev] 20-50, [klein] distilled 4, [klein] Base ~50."}),
            "guidance": ("FLOAT", {"default": 4.0, "min": 0.0, "max": 100.0, "step": 0.1,
                         "tooltip": "Embedded guidance (as FluxGuidance); used by [dev], ignored by [klein]."}),
            "cfg": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 100.0, "step": 0.1,
                    "tooltip": "Real classifier-free guidance against an empty prompt. 1.0 = off (one model "
                               "call per step); [klein] Base wants ~4."}),
            "sampler_name": (samplers, {"default": "euler" if "euler" in samplers else samplers[0],
                             "tooltip": "ComfyUI sampler (KSamplerSelect); euler is FLUX.2's reference sampler."}),
        }}

    def build(self, model, clip, vae, steps=20, guidance=4.0, cfg=1.0, sampler_name="euler"):
        backend = ComfyCoreBackend(model, clip, vae, steps=int(steps), guidance=float(guidance), cfg=float(cfg),
                                   sampler_name=sampler_name)
        backend.check_ready()
        return (backend,)


NODE_CLASS_MAPPINGS = {"Flux2ComfyBackend": Flux2ComfyBackend}
NODE_DISPLAY_NAME_MAPPINGS = {"Flux2ComfyBackend": "FLUX.2 Comfy Backend (core MODEL / CLIP / VAE)"}
