"""Test-only ComfyUI node pack: tiny random FLUX.2 MODEL / CLIP / VAE built from ComfyUI core's own classes.

The real loaders (UNETLoader, CLIPLoader, VAELoader) detect a FLUX.2 model from its tensor shapes and, in
ComfyUI 0.3.75, fix the [dev] sizes (48 heads of 128, Mistral Small 24B), so a CPU-sized model cannot go
through them. This node does what they do after detection -- ComfyUI's `supported_models.Flux2` config,
`model_base.Flux2`, `ModelPatcher`, `comfy.sd.CLIP` around `Flux2TEModel`, `comfy.sd.VAE` from a state
dict -- with tiny sizes and seeded random weights. Everything downstream (conditioning, ReferenceLatent,
sampling, VAE encode/decode, memory management) is ComfyUI's unmodified code.
"""
from __future__ import annotations

import dataclasses
import os

import torch

import comfy.model_management as mm
import comfy.model_patcher
import comfy.sd
import comfy.supported_models
import comfy.supported_models_base
import comfy.text_encoders.flux
import comfy.ldm.flux.model
import comfy.text_encoders.llama
from comfy import sd1_clip
from comfy.ldm.models.autoencoder import AutoencoderKL

TEXT_HIDDEN, TEXT_LAYERS = 32, 31          # FLUX.2 stacks hidden states 10, 20, 30 -> context 3 * 32
HIDDEN, HEADS = 32, 2                      # head_dim 16 = sum of the four RoPE axes


def _randomize(module: torch.nn.Module, seed: int) -> None:
    """Seeded weights: 1/sqrt(fan_in) normals for matrices, small biases, ones for norm scales."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if p.ndim == 0:                          # scalars (e.g. CLIP's logit scale) are unused here
                continue
            if p.ndim == 1 and ("norm" in name or name.endswith("scale")):
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=g))
            elif p.ndim == 1:
                p.copy_(0.02 * torch.randn(p.shape, generator=g))
            else:
                fan_in = p[0].numel()
                p.copy_(torch.randn(p.shape, generator=g) / fan_in ** 0.5)


def tiny_model(seed: int):
    unet_config = {
        "image_model": "flux2", "in_channels": 128, "out_channels": 128, "vec_in_dim": None,
        "context_in_dim": 3 * TEXT_HIDDEN, "hidden_size": HIDDEN, "mlp_ratio": 3.0, "num_heads": HEADS,
        "depth": 1, "depth_single_blocks": 2, "axes_dim": [4, 4, 4, 4], "theta": 2000, "patch_size": 1,
        "qkv_bias": False, "guidance_embed": True, "global_modulation": True, "mlp_silu_act": True,
        "ops_bias": False, "default_ref_method": "index", "ref_index_scale": 10.0,
    }
    # Newer ComfyUI (0.33) added a required FluxParams field: which text-id axes carry positions. Its
    # FLUX.2 detection sets [3] (model_detection.py); 0.3.75's FluxParams has no such field and would refuse it.
    if "txt_ids_dims" in {f.name for f in dataclasses.fields(comfy.ldm.flux.model.FluxParams)}:
        unet_config["txt_ids_dims"] = [3]
    config = comfy.supported_models.Flux2(unet_config)
    config.set_inference_dtype(torch.float32, None)
    model = config.get_model({}, "")
    _randomize(model.diffusion_model, seed)
    return comfy.model_patcher.ModelPatcher(model, load_device=mm.get_torch_device(),
                                            offload_device=mm.unet_offload_device())


class TinyTokenizer(sd1_clip.SDTokenizer):
    """ComfyUI's shipped Qwen2.5 BPE files (the vocabulary only matters for the embedding size)."""

    def __init__(self, embedding_directory=None, tokenizer_data={}):
        from transformers import Qwen2Tokenizer
        path = os.path.join(os.path.dirname(os.path.realpath(comfy.text_encoders.llama.__file__)), "qwen25_tokenizer")
        super().__init__(path, pad_with_end=False, embedding_size=TEXT_HIDDEN, embedding_key="mistral3_24b",
                         tokenizer_class=Qwen2Tokenizer, has_start_token=False, has_end_token=False,
                         pad_to_max_length=False, max_length=99999999, min_length=1, pad_token=151643,
                         pad_left=True, tokenizer_data=tokenizer_data)


class TinyFlux2Tokenizer(comfy.text_encoders.flux.Flux2Tokenizer):
    def __init__(self, embedding_directory=None, tokenizer_data={}):
        sd1_clip.SD1Tokenizer.__init__(self, embedding_directory=embedding_directory, tokenizer_data=tokenizer_data,
                                       name="mistral3_24b", tokenizer=TinyTokenizer)
        self.llama_template = "[INST]{}[/INST]"


class TinyMistral(sd1_clip.SDClipModel):
    def __init__(self, device="cpu", layer=[10, 20, 30], layer_idx=None, dtype=None, attention_mask=True,
                 model_options={}):
        config = {"vocab_size": 151936, "hidden_size": TEXT_HIDDEN, "intermediate_size": 64,
                  "num_hidden_layers": TEXT_LAYERS, "num_attention_heads": 2, "num_key_value_heads": 1,
                  "final_norm": False}
        super().__init__(device=device, layer=layer, layer_idx=layer_idx, textmodel_json_config=config, dtype=dtype,
                         special_tokens={"pad": 151643}, layer_norm_hidden_state=False,
                         model_class=comfy.text_encoders.llama.Mistral3Small24B, enable_attention_masks=attention_mask,
                         return_attention_masks=attention_mask, model_options=model_options)


class TinyFlux2TE(comfy.text_encoders.flux.Flux2TEModel):
    def __init__(self, device="cpu", dtype=None, model_options={}):
        super().__init__(device=device, dtype=torch.float32, model_options=model_options, clip_model=TinyMistral)


def tiny_clip(seed: int):
    target = comfy.supported_models_base.ClipTarget(TinyFlux2Tokenizer, TinyFlux2TE)
    clip = comfy.sd.CLIP(target=target, model_options={"dtype": torch.float32})
    _randomize(clip.cond_stage_model, seed)
    return clip


def tiny_vae(seed: int):
    """The FLUX.2 VAE architecture at its real size (ComfyUI fixes its channel widths), random weights."""
    ddconfig = {"double_z": True, "z_channels": 32, "resolution": 256, "in_channels": 3, "out_ch": 3, "ch": 128,
                "ch_mult": [1, 2, 4, 4], "num_res_blocks": 2, "attn_resolutions": [], "dropout": 0.0,
                "batch_norm_latent": True}
    ae = AutoencoderKL(ddconfig=ddconfig, embed_dim=32)
    _randomize(ae, seed)
    sd = ae.state_dict()
    g = torch.Generator().manual_seed(seed + 1)
    sd["bn.running_mean"] = 0.1 * torch.randn(sd["bn.running_mean"].shape, generator=g)
    sd["bn.running_var"] = 1.0 + torch.rand(sd["bn.running_var"].shape, generator=g)
    return comfy.sd.VAE(sd=sd)


class Flux2TestTinyCoreModels:
    CATEGORY = "testing"
    RETURN_TYPES = ("MODEL", "CLIP", "VAE")
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"seed": ("INT", {"default": 0, "min": 0, "max": 2 ** 31})}}

    def load(self, seed):
        return tiny_model(seed), tiny_clip(seed + 1), tiny_vae(seed + 2)


NODE_CLASS_MAPPINGS = {"Flux2TestTinyCoreModels": Flux2TestTinyCoreModels}
