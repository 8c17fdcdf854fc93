"""Frozen architecture presets for the local FLUX.2 models, plus tiny configs for tests.

The loader infers the transformer/VAE/text-encoder sizes from the weight shapes and then checks them
against the chosen preset, so a wrong file is refused with a clear message instead of a shape error
deep inside a forward pass.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

from ...models import get_model
from ...rules import LOCAL_MAX_REFS


@dataclass(frozen=True)
class TransformerParams:
    hidden: int = 3072                 # = heads * head_dim
    heads: int = 24
    head_dim: int = 128
    depth_double: int = 5
    depth_single: int = 20
    context_dim: int = 7680            # 3 stacked text-encoder layers
    in_channels: int = 128             # 32 VAE channels x 2x2 patch
    mlp_hidden: int = 9216             # hidden * 3 (SwiGLU inner width)
    guidance_embed: bool = False       # [dev] embeds the guidance scale; [klein] does not
    axes_dim: tuple[int, ...] = (32, 32, 32, 32)
    theta: int = 2000
    timestep_channels: int = 256
    eps: float = 1e-6


@dataclass(frozen=True)
class TextEncoderParams:
    kind: str = "qwen3"                # "qwen3" (klein) | "mistral" (dev)
    vocab: int = 151936
    hidden: int = 2560
    layers: int = 36
    heads: int = 32
    kv_heads: int = 8
    head_dim: int = 128
    intermediate: int = 9728
    rope_theta: float = 1_000_000.0
    rms_eps: float = 1e-6
    qk_norm: bool = True               # Qwen3 normalises q and k per head; Mistral does not
    out_layers: tuple[int, ...] = (9, 18, 27)
    max_length: int = 512
    pad_left: bool = False             # Mistral pads on the left, Qwen3 on the right

    @property
    def out_dim(self) -> int:
        return self.hidden * len(self.out_layers)


@dataclass(frozen=True)
class VAEParams:
    block_out: tuple[int, ...] = (128, 256, 512, 512)
    # The decoder's widths where they differ from the encoder's (BFL's small-decoder VAE: (96, 192, 384, 384);
    # diffusers' `decoder_block_out_channels`). None: the same as block_out.
    decoder_block_out: tuple[int, ...] | None = None
    layers_per_block: int = 2
    latent_channels: int = 32
    groups: int = 32
    in_channels: int = 3
    out_channels: int = 3
    bn_eps: float = 1e-4

    @property
    def decoder_widths(self) -> tuple[int, ...]:
        return self.decoder_block_out or self.block_out


@dataclass(frozen=True)
class ModelPreset:
    name: str                          # model name shared with flux2/models.py
    family: str                        # "klein" | "dev"
    distilled: bool                    # klein distilled: no CFG; klein Base: CFG with "" negative
    transformer: TransformerParams
    text_encoder: TextEncoderParams
    vae: VAEParams = field(default_factory=VAEParams)
    default_steps: int = 4
    default_guidance: float = 0.0
    max_refs: int = LOCAL_MAX_REFS
    # The [klein] 9B KV variant: references are modulated at timestep 0, attend only to themselves and join the
    # first step only, their keys/values kept for the later steps (transformer.RefKV; detected from the files).
    reference_kv: bool = False

    @property
    def uses_cfg(self) -> bool:
        return self.family == "klein" and not self.distilled


QWEN3_4B = TextEncoderParams(kind="qwen3", hidden=2560, layers=36, heads=32, kv_heads=8, intermediate=9728)
QWEN3_8B = TextEncoderParams(kind="qwen3", hidden=4096, layers=36, heads=32, kv_heads=8, intermediate=12288)
MISTRAL_SMALL = TextEncoderParams(kind="mistral", vocab=131072, hidden=5120, layers=40, heads=32, kv_heads=8,
                                  intermediate=32768, rope_theta=1_000_000_000.0, rms_eps=1e-5, qk_norm=False,
                                  out_layers=(10, 20, 30), pad_left=True)

KLEIN4B_T = TransformerParams(hidden=3072, heads=24, depth_double=5, depth_single=20, context_dim=3 * 2560,
                              mlp_hidden=9216)
KLEIN9B_T = TransformerParams(hidden=4096, heads=32, depth_double=8, depth_single=24, context_dim=3 * 4096,
                              mlp_hidden=12288)
DEV_T = TransformerParams(hidden=6144, heads=48, depth_double=8, depth_single=48, context_dim=3 * 5120,
                          mlp_hidden=18432, guidance_embed=True)



def _preset(name: str, distilled: bool, transformer: TransformerParams, text: TextEncoderParams) -> ModelPreset:
    """A released model: family and default steps/guidance come from the model registry (flux2/models.py)."""
    spec = get_model(name)
    return ModelPreset(name, spec.family, distilled, transformer, text, default_steps=spec.default_steps,
                       default_guidance=spec.default_guidance or 0.0)


PRESETS: dict[str, ModelPreset] = {p.name: p for p in (
    _preset("FLUX.2 [klein] 4B", True, KLEIN4B_T, QWEN3_4B),
    _preset("FLUX.2 [klein] 9B", True, KLEIN9B_T, QWEN3_8B),
    _preset("FLUX.2 [klein] 4B Base", False, KLEIN4B_T, QWEN3_4B),
    _preset("FLUX.2 [klein] 9B Base", False, KLEIN9B_T, QWEN3_8B),
    _preset("FLUX.2 [dev]", False, DEV_T, MISTRAL_SMALL),
)}


def tiny_preset(family: str = "klein", distilled: bool = True, *, hidden: int = 64, heads: int = 2,
                depth_double: int = 2, depth_single: int = 2, text_hidden: int = 32, text_layers: int | None = None,
                vae_block_out: tuple[int, ...] = (32, 32, 32, 32), out_layers: tuple[int, ...] | None = None) -> ModelPreset:
    """A CPU-second config of the same architecture (tests and the benchmark's small rows)."""
    if family == "dev":
        te = replace(MISTRAL_SMALL, vocab=131072, hidden=text_hidden, layers=text_layers or 31, heads=4, kv_heads=2,
                     head_dim=16, intermediate=64, out_layers=out_layers or (10, 20, 30))
    else:
        te = replace(QWEN3_4B, vocab=151936, hidden=text_hidden, layers=text_layers or 28, heads=4, kv_heads=2,
                     head_dim=16, intermediate=64, out_layers=out_layers or (9, 18, 27))
    head_dim = hidden // heads
    tp = TransformerParams(hidden=hidden, heads=heads, head_dim=head_dim, depth_double=depth_double,
                           depth_single=depth_single, context_dim=te.out_dim, mlp_hidden=hidden * 3,
                           guidance_embed=family == "dev",
                           axes_dim=_axes_for(head_dim))
    vae = VAEParams(block_out=vae_block_out, layers_per_block=1, groups=min(32, min(vae_block_out)))
    return ModelPreset(f"tiny {family}", family, distilled if family == "klein" else False, tp, te, vae,
                       default_steps=4 if (family == "klein" and distilled) else 8,
                       default_guidance=0.0 if (family == "klein" and distilled) else 4.0)


def _axes_for(head_dim: int) -> tuple[int, ...]:
    q = head_dim // 4
    return (q, q, q, head_dim - 3 * q)


def get_preset(name: str) -> ModelPreset:
    from ...errors import InputError

    try:
        return PRESETS[name]
    except KeyError:
        raise InputError(f"unknown local model {name!r}; known: {', '.join(PRESETS)}") from None
