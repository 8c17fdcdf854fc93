"""Tiny random FLUX.2 LoRA files in the published key layouts (docs/loras.md says which is a faithful twin).

One random LoRA is described in BFL layer names (`RandomLoRA`: per layer down [r, in], up [out, r], alpha) and
written out in each layout; the writers follow the code that reads or writes that layout:
- `ai_toolkit`: `diffusion_model.<BFL>.lora_A/B.weight`, no alpha (ai-toolkit; read by diffusers'
  `_convert_non_diffusers_flux2_lora_to_diffusers` and ComfyUI's generic `diffusion_model.` map);
- `comfy_updown`: `diffusion_model.<BFL>.lora_up/down.weight` + `.alpha` (ComfyUI LoRAAdapter "regular_lora");
- `kohya`: `lora_unet_<BFL with _>.lora_up/down.weight` + `.alpha` (sd-scripts; diffusers'
  `_convert_kohya_flux2_lora_to_diffusers`);
- `peft`: `transformer.<diffusers name>.lora_A/B.weight`, fused qkv split into to_q/to_k/to_v with a shared A
  (what diffusers' own conversion produces and its Flux2 trainers save);
- `lokr` / `loha`: `diffusion_model.<BFL>.lokr_w1, lokr_w2_a, lokr_w2_b, alpha` / `hada_w1_a ... alpha`
  (LyCORIS names as ComfyUI's weight adapters read them).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

DIFFUSERS_BLOCK = {"img_attn.proj": "attn.to_out.0", "txt_attn.proj": "attn.to_add_out", "img_mlp.0": "ff.linear_in",
                   "img_mlp.2": "ff.linear_out", "txt_mlp.0": "ff_context.linear_in",
                   "txt_mlp.2": "ff_context.linear_out"}
DIFFUSERS_TOP = {"img_in": "x_embedder", "txt_in": "context_embedder",
                 "time_in.in_layer": "time_guidance_embed.timestep_embedder.linear_1",
                 "time_in.out_layer": "time_guidance_embed.timestep_embedder.linear_2",
                 "final_layer.linear": "proj_out",
                 "double_stream_modulation_img.lin": "double_stream_modulation_img.linear",
                 "double_stream_modulation_txt.lin": "double_stream_modulation_txt.linear",
                 "single_stream_modulation.lin": "single_stream_modulation.linear"}
# What diffusers' kohya conversion reads (modulations are not among them).
KOHYA_LAYERS = ("_attn.qkv", "_attn.proj", "_mlp.", "linear1", "linear2", "img_in", "txt_in", "time_in.",
                "final_layer.linear")


@dataclass
class RandomLoRA:
    layers: dict[str, tuple[torch.Tensor, torch.Tensor, float]] = field(default_factory=dict)

    @classmethod
    def make(cls, shapes: dict[str, tuple[int, int]], rank: int = 4, seed: int = 0, scale: float = 0.5,
             only=None) -> "RandomLoRA":
        """shapes: lora.linear_shapes(params). Random down/up large enough to move a tiny model's picture."""
        g = torch.Generator().manual_seed(seed)
        out = cls()
        for m, (o, i) in sorted(shapes.items()):
            if only is not None and not only(m):
                continue
            down = torch.randn(rank, i, generator=g) * scale / i ** 0.5
            up = torch.randn(o, rank, generator=g) * scale / rank ** 0.5
            out.layers[m] = (down, up, float(rank) * 0.5)            # alpha = rank / 2: scale 0.5
        return out

    def delta(self, m: str) -> torch.Tensor:
        down, up, alpha = self.layers[m]
        return up @ down * (alpha / down.shape[0])


def ai_toolkit(lo: RandomLoRA) -> dict[str, torch.Tensor]:
    sd = {}
    for m, (down, up, alpha) in lo.layers.items():
        sd[f"diffusion_model.{m}.lora_A.weight"] = down
        sd[f"diffusion_model.{m}.lora_B.weight"] = up * (alpha / down.shape[0])
    return sd


def comfy_updown(lo: RandomLoRA, prefix: str = "diffusion_model.", sep: str = ".") -> dict[str, torch.Tensor]:
    sd = {}
    for m, (down, up, alpha) in lo.layers.items():
        name = prefix + (m.replace(".", "_") if sep == "_" else m)
        sd[f"{name}.lora_down.weight"] = down
        sd[f"{name}.lora_up.weight"] = up
        sd[f"{name}.alpha"] = torch.tensor(alpha)
    return sd


def kohya(lo: RandomLoRA) -> dict[str, torch.Tensor]:
    return comfy_updown(lo, "lora_unet_", "_")


def peft(lo: RandomLoRA, hidden: int) -> dict[str, torch.Tensor]:
    sd = {}
    for m, (down, up, alpha) in lo.layers.items():
        up = up * (alpha / down.shape[0])
        parts = m.split(".")
        if parts[0] == "double_blocks":
            n, rest = parts[1], ".".join(parts[2:])
            base = f"transformer.transformer_blocks.{n}"
            if rest.endswith("attn.qkv"):
                names = ("to_q", "to_k", "to_v") if rest.startswith("img") else ("add_q_proj", "add_k_proj", "add_v_proj")
                for name, chunk in zip(names, up.chunk(3, 0)):
                    sd[f"{base}.attn.{name}.lora_A.weight"] = down
                    sd[f"{base}.attn.{name}.lora_B.weight"] = chunk
                continue
            name = f"{base}.{DIFFUSERS_BLOCK[rest]}"
        elif parts[0] == "single_blocks":
            name = f"transformer.single_transformer_blocks.{parts[1]}." + \
                   ("attn.to_qkv_mlp_proj" if parts[2] == "linear1" else "attn.to_out")
        elif m == "final_layer.adaLN_modulation.1":
            shift, scale = up.chunk(2, 0)                       # diffusers' norm_out rows are (scale, shift)
            name, up = "transformer.norm_out.linear", torch.cat((scale, shift), 0)
        else:
            name = f"transformer.{DIFFUSERS_TOP[m]}"
        sd[f"{name}.lora_A.weight"] = down
        sd[f"{name}.lora_B.weight"] = up
    return sd


def lokr(shapes: dict[str, tuple[int, int]], seed: int = 0, rank: int = 2, only=None) -> dict[str, torch.Tensor]:
    """LoKr with w1 full [2, 2] and w2 decomposed [out/2, r] x [r, in/2]; alpha = rank (scale 1)."""
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for m, (o, i) in sorted(shapes.items()):
        if only is not None and not only(m):
            continue
        sd[f"diffusion_model.{m}.lokr_w1"] = torch.randn(2, 2, generator=g) * 0.5
        sd[f"diffusion_model.{m}.lokr_w2_a"] = torch.randn(o // 2, rank, generator=g) * 0.5 / rank ** 0.5
        sd[f"diffusion_model.{m}.lokr_w2_b"] = torch.randn(rank, i // 2, generator=g) / (i // 2) ** 0.5
        sd[f"diffusion_model.{m}.alpha"] = torch.tensor(float(rank))
    return sd


def loha(shapes: dict[str, tuple[int, int]], seed: int = 0, rank: int = 2, only=None) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for m, (o, i) in sorted(shapes.items()):
        if only is not None and not only(m):
            continue
        for w in ("w1", "w2"):
            sd[f"diffusion_model.{m}.hada_{w}_a"] = torch.randn(o, rank, generator=g) * 0.7
            sd[f"diffusion_model.{m}.hada_{w}_b"] = torch.randn(rank, i, generator=g) * 0.7 / i ** 0.5
        sd[f"diffusion_model.{m}.alpha"] = torch.tensor(float(rank))
    return sd


def save(sd: dict[str, torch.Tensor], path: Path) -> Path:
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.clone().contiguous() for k, v in sd.items()}, str(path))
    return path
