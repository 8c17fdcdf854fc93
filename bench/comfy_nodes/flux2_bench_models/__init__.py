"""Benchmark-only ComfyUI node pack: FLUX.2 MODEL / CLIP / VAE of any size, built from ComfyUI core's own classes
and loaded from files in ComfyUI's own layout.

ComfyUI 0.3.75's loaders (UNETLoader, CLIPLoader, VAELoader) detect FLUX.2 from tensor shapes and then fix the
[dev] sizes (48 heads of 128, Mistral Small 3.2 24B, the full-width VAE), so a CPU-sized model cannot go through
them. `Flux2BenchFileModels` does what they do after detection -- `supported_models.Flux2` / `model_base.Flux2`
/ `ModelPatcher`, `comfy.sd.CLIP` around `Flux2TEModel` with ComfyUI's Tekken `Flux2Tokenizer`, `comfy.sd.VAE`
-- at the sizes given, and loads the weights with ComfyUI's `load_torch_file` and `load_model_weights` /
`load_sd`. Everything downstream (text encoding and its cache, sampling, VAE decode, memory management) is
ComfyUI's unmodified code. `build_and_save` writes the random weights the engine and ComfyUI then both read
(bench/comfyui_sweep.py). Loaded by that benchmark only (never by the pack).
"""
from __future__ import annotations

import json
import os

import torch

import comfy.model_management as mm
import comfy.model_patcher
import comfy.sd
import comfy.supported_models
import comfy.supported_models_base
import comfy.text_encoders.flux
import comfy.text_encoders.llama
import comfy.utils
from comfy import sd1_clip

FILES = {"diffusion_models": "flux2-bench.safetensors", "text_encoders": "mistral-bench.safetensors",
         "vae": "flux2-vae-bench.safetensors"}


def unet_config(c: dict) -> dict:
    return {"image_model": "flux2", "in_channels": 128, "out_channels": 128, "vec_in_dim": None,
            "context_in_dim": 3 * c["text_hidden"], "hidden_size": c["hidden"], "mlp_ratio": 3.0,
            "num_heads": c["heads"], "depth": c["depth_double"], "depth_single_blocks": c["depth_single"],
            "axes_dim": c["axes"], "theta": 2000, "patch_size": 1, "qkv_bias": False, "guidance_embed": True,
            "global_modulation": True, "mlp_silu_act": True, "ops_bias": False, "default_ref_method": "index",
            "ref_index_scale": 10.0}


def model(c: dict, sd: dict | None = None):
    config = comfy.supported_models.Flux2(unet_config(c))
    config.set_inference_dtype(torch.float32, None)
    m = config.get_model({}, "")
    if sd is not None:
        m.load_model_weights(sd, "model.diffusion_model.")
    return comfy.model_patcher.ModelPatcher(m, load_device=mm.get_torch_device(), offload_device=mm.unet_offload_device())


def text_encoder_class(c: dict):
    class BenchMistral(sd1_clip.SDClipModel):
        """Mistral3Small24B (ComfyUI's FLUX.2 [dev] text encoder) at the benchmark's sizes; layers 10, 20, 30 read."""

        def __init__(self, device="cpu", layer=[10, 20, 30], layer_idx=None, dtype=None, attention_mask=True,
                     model_options={}):
            config = {"vocab_size": c["vocab"], "hidden_size": c["text_hidden"], "intermediate_size": c["text_inter"],
                      "num_hidden_layers": 31, "num_attention_heads": 2, "num_key_value_heads": 1,
                      "final_norm": False}                       # head_dim: Mistral3Small24BConfig's fixed 128
            super().__init__(device=device, layer=layer, layer_idx=layer_idx, textmodel_json_config=config, dtype=dtype,
                             special_tokens={"start": 1, "pad": 0}, layer_norm_hidden_state=False,
                             model_class=comfy.text_encoders.llama.Mistral3Small24B,
                             enable_attention_masks=attention_mask, return_attention_masks=attention_mask,
                             model_options=model_options)

    class BenchFlux2TE(comfy.text_encoders.flux.Flux2TEModel):
        def __init__(self, device="cpu", dtype=None, model_options={}):
            super().__init__(device=device, dtype=torch.float32, model_options=model_options, clip_model=BenchMistral)

    return BenchFlux2TE


# ComfyUI 0.3.75's Flux2Tokenizer prompt template (comfy/text_encoders/flux.py)
FLUX2_TEMPLATE = ("[SYSTEM_PROMPT]You are an AI that reasons about image descriptions. You give structured responses "
                  "focusing on object relationships, object\nattribution and actions without speculation."
                  "[/SYSTEM_PROMPT][INST]{}[/INST]")


class BenchTokenizer(sd1_clip.SDTokenizer):
    """ComfyUI's shipped Qwen2.5 BPE files with Mistral3Tokenizer's settings (no padding: min_length 1, pad left).
    ComfyUI 0.3.75's Tekken reader (load_mistral_tokenizer) calls transformers' MistralConverter with arguments
    newer transformers releases no longer take, so the Tekken table in the file cannot be read by it here."""

    def __init__(self, embedding_directory=None, tokenizer_data={}):
        from transformers import Qwen2Tokenizer

        path = os.path.join(os.path.dirname(os.path.realpath(comfy.text_encoders.llama.__file__)), "qwen25_tokenizer")
        super().__init__(path, pad_with_end=False, embedding_size=5120, embedding_key="mistral3_24b",
                         tokenizer_class=Qwen2Tokenizer, has_start_token=False, has_end_token=False,
                         pad_to_max_length=False, max_length=99999999, min_length=1, pad_token=151643, pad_left=True,
                         tokenizer_data=tokenizer_data)


class BenchFlux2Tokenizer(comfy.text_encoders.flux.Flux2Tokenizer):
    def __init__(self, embedding_directory=None, tokenizer_data={}):
        sd1_clip.SD1Tokenizer.__init__(self, embedding_directory=embedding_directory, tokenizer_data=tokenizer_data,
                                       name="mistral3_24b", tokenizer=BenchTokenizer)
        self.llama_template = FLUX2_TEMPLATE


def clip(c: dict, sd: dict):
    target = comfy.supported_models_base.ClipTarget(BenchFlux2Tokenizer, text_encoder_class(c))
    out = comfy.sd.CLIP(target=target, model_options={"dtype": torch.float32})
    out.load_sd({k: v for k, v in sd.items() if k != "tekken_model"})
    return out


def vae_ddconfig(c: dict) -> dict:
    return {"double_z": True, "z_channels": 32, "resolution": 256, "in_channels": 3, "out_ch": 3, "ch": c["vae_ch"],
            "ch_mult": [1] * 4, "num_res_blocks": 1, "attn_resolutions": [], "dropout": 0.0, "batch_norm_latent": True}


def vae(c: dict, sd: dict):
    """comfy.sd.VAE from a BFL-layout state dict; 0.3.75 hard-codes the full-size widths, so they are set to the
    benchmark's for the construction (the test pack flux2_tiny_core does the same)."""
    real = comfy.sd.AutoencoderKL

    def widths(ddconfig, embed_dim, **kw):
        ddconfig.update(ch=c["vae_ch"], ch_mult=[1] * 4, num_res_blocks=1)
        return real(ddconfig=ddconfig, embed_dim=embed_dim, **kw)

    comfy.sd.AutoencoderKL = widths
    try:
        return comfy.sd.VAE(sd=sd)
    finally:
        comfy.sd.AutoencoderKL = real


def _randomize(module: torch.nn.Module, g: torch.Generator) -> dict:
    """Seeded weights (ComfyUI's ops leave them uninitialised): 1/sqrt(fan_in) normals, norm scales near 1."""
    with torch.no_grad():
        for name, p in module.named_parameters():
            if p.ndim == 0:
                continue
            if p.ndim == 1 and ("norm" in name or name.endswith("scale")):
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=g))
            elif p.ndim == 1:
                p.copy_(0.02 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(torch.randn(p.shape, generator=g) / p[0].numel() ** 0.5)
    return module.state_dict()


def build_and_save(c: dict, root: str, tekken_json: str, seed: int = 0) -> None:
    """Random weights in ComfyUI's file layout: `model.diffusion_model.*` (BFL names) for the diffusion model,
    the text encoder's `model.*` state dict with the Tekken tokenizer as the uint8 tensor `tekken_model` (as
    ComfyUI's [dev] text-encoder files carry it), the VAE's LDM/BFL state dict with its BatchNorm statistics."""
    from safetensors.torch import save_file

    from comfy.ldm.models.autoencoder import AutoencoderKL

    g = torch.Generator().manual_seed(seed)
    m = model(c)
    tr = {"model.diffusion_model." + k: v for k, v in _randomize(m.model.diffusion_model, g).items()}
    te_model = text_encoder_class(c)(dtype=torch.float32)
    te = {k.split("mistral3_24b.transformer.", 1)[-1]: v for k, v in _randomize(te_model, g).items()}
    with open(tekken_json, "rb") as f:
        te["tekken_model"] = torch.frombuffer(bytearray(f.read()), dtype=torch.uint8)
    ae = _randomize(AutoencoderKL(ddconfig=vae_ddconfig(c), embed_dim=32), g)
    ae["bn.running_mean"] = 0.1 * torch.randn(ae["bn.running_mean"].shape, generator=g)
    ae["bn.running_var"] = 1.0 + torch.rand(ae["bn.running_var"].shape, generator=g)
    for kind, sd in (("diffusion_models", tr), ("text_encoders", te), ("vae", ae)):
        os.makedirs(os.path.join(root, kind), exist_ok=True)
        save_file({k: v.contiguous() for k, v in sd.items()}, os.path.join(root, kind, FILES[kind]))


class Flux2BenchFileModels:
    CATEGORY = "testing"
    RETURN_TYPES = ("MODEL", "CLIP", "VAE")
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"folder": ("STRING", {"default": ""}), "config": ("STRING", {"default": "{}"})}}

    def load(self, folder, config):
        c = json.loads(config)
        load = lambda kind: comfy.utils.load_torch_file(os.path.join(folder, kind, FILES[kind]))  # noqa: E731
        return model(c, load("diffusion_models")), clip(c, load("text_encoders")), vae(c, load("vae"))


NODE_CLASS_MAPPINGS = {"Flux2BenchFileModels": Flux2BenchFileModels}
