"""The whole-pipeline sections of `comfyui-flux2 benchmark gpu`: a [klein] 4B text-to-image end to end, and the
picture equality with diffusers' Flux2KleinPipeline on the same random weights. Each is one worker process
(bench/gpu.py runs them) that prints one JSON object; weights are random, made on the device (gpu_random.py).

`tiny=True` runs the same code on a tiny [klein] on the CPU (CI's rehearsal of the GPU command).
"""
from __future__ import annotations

import time

PROMPT = "a lighthouse on a cliff at dawn, oil painting"
STEPS = 4                     # [klein] distilled's default
SEED = 7
# FLUX.2 [klein]'s flow-matching schedule, as the pack's tests and `benchmark local` give it to diffusers
SCHEDULER = dict(num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=True, time_shift_type="exponential",
                 base_shift=0.5, max_shift=1.15)


def _setup(device: str, tiny: bool):
    """-> (preset, image size, dtype, sync, peak-memory reader) for this run."""
    import torch

    from ..flux2.local.model.params import get_preset, tiny_preset

    preset = tiny_preset("klein", True) if tiny else get_preset("FLUX.2 [klein] 4B")
    cuda = device.startswith("cuda")
    dtype = torch.float32 if tiny and not cuda else torch.bfloat16
    sync = torch.cuda.synchronize if cuda else (lambda: None)

    def peak_gib():
        return torch.cuda.max_memory_allocated() / 2**30 if cuda else None
    return preset, (64 if tiny else 1024), dtype, sync, peak_gib


def _our_modules(preset, device: str, dtype, transformer=None, vae=None, text_encoder: bool = True):
    """Flux2Modules of random weights (or the given transformer / VAE) with the bundled Qwen3 tokenizer;
    text_encoder=False leaves it out (8 GB at full size) for a caller that supplies the prompt embedding."""
    import torch

    from ..flux2.local.model.autoencoder import AutoencoderFlux2
    from ..flux2.local.pipeline import Flux2Modules
    from ..flux2.local.model.text_encoder import TextEncoder
    from ..flux2.local.model.tokenizer import PromptTokenizer
    from ..flux2.local.model.transformer import Flux2Transformer
    from .gpu_random import built_random

    tr = transformer or built_random(lambda: Flux2Transformer(preset.transformer), device, dtype, seed=1)
    te = built_random(lambda: TextEncoder(preset.text_encoder), device, dtype, seed=2) if text_encoder else None
    vae = vae or built_random(lambda: AutoencoderFlux2(preset.vae), device, dtype, seed=3)
    return Flux2Modules(preset=preset, transformer=tr, text_encoder=te, vae=vae, device=torch.device(device),
                        tokenizer=PromptTokenizer.bundled_qwen3(preset.text_encoder), dtype=dtype)


def t2i_worker(device: str, tiny: bool) -> dict:
    """One 1024² [klein] 4B image, 4 steps, prompt to pixels: a first (cold: kernels load) and a second run, and
    the stages of the second (prompt encoding, denoising, VAE decoding)."""
    import torch

    from ..flux2.local.pipeline import Flux2Engine

    preset, size, dtype, sync, peak_gib = _setup(device, tiny)
    t0 = time.perf_counter()
    eng = Flux2Engine(_our_modules(preset, device, dtype), cache_bytes=0)    # no cache: every run encodes
    sync()
    build_s = time.perf_counter() - t0
    runs = []
    for seed in (SEED, SEED + 1):
        t0 = time.perf_counter()
        img = eng.generate(PROMPT, size, size, [seed], STEPS, 0.0)[0]
        sync()
        runs.append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    eng.encode_prompt(PROMPT)
    sync()
    encode_s = time.perf_counter() - t0
    h = w = size // 16
    x = torch.randn(1, h * w, 128, device=device, dtype=dtype)
    t0 = time.perf_counter()
    eng.decode(x, h, w)
    sync()
    decode_s = time.perf_counter() - t0
    return {"size": size, "steps": STEPS, "build_s": build_s, "first_s": runs[0], "second_s": runs[1],
            "encode_s": encode_s, "decode_s": decode_s, "denoise_s": runs[1] - encode_s - decode_s,
            "image_shape": list(img.shape), "vram_peak_gib": peak_gib()}


def _diffusers_pipeline(preset, device: str, dtype):
    """Flux2KleinPipeline with random transformer and VAE weights made on the device; no text encoder (the
    prompt embedding is given)."""
    from diffusers import AutoencoderKLFlux2, FlowMatchEulerDiscreteScheduler, Flux2KleinPipeline, Flux2Transformer2DModel

    from .gpu_random import built_random

    t, v = preset.transformer, preset.vae
    n = len(v.block_out)
    transformer = built_random(lambda: Flux2Transformer2DModel(
        patch_size=1, in_channels=128, num_layers=t.depth_double, num_single_layers=t.depth_single,
        attention_head_dim=t.head_dim, num_attention_heads=t.heads, joint_attention_dim=t.context_dim,
        timestep_guidance_channels=256, mlp_ratio=t.mlp_hidden / t.hidden, axes_dims_rope=tuple(t.axes_dim),
        rope_theta=t.theta, guidance_embeds=False), device, dtype, seed=1)
    vae = built_random(lambda: AutoencoderKLFlux2(
        down_block_types=("DownEncoderBlock2D",) * n, up_block_types=("UpDecoderBlock2D",) * n,
        block_out_channels=tuple(v.block_out), layers_per_block=v.layers_per_block, latent_channels=32,
        norm_num_groups=v.groups), device, dtype, seed=3)
    pipe = Flux2KleinPipeline(scheduler=FlowMatchEulerDiscreteScheduler(**SCHEDULER), vae=vae, text_encoder=None,
                              tokenizer=None, transformer=transformer, is_distilled=True)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _ours_from(pipe, preset, device: str, dtype):
    """Our engine on the very tensors of diffusers' transformer and VAE (converted to our layout, as the loader
    converts a diffusers folder)."""
    import torch

    from ..flux2.local.model.autoencoder import AutoencoderFlux2
    from ..flux2.local.weights.assemble import into_module
    from ..flux2.local.weights.transformer_weights import diffusers_to_bfl
    from ..flux2.local.weights.vae_weights import normalise_vae_keys
    from ..flux2.local.pipeline import Flux2Engine
    from ..flux2.local.model.transformer import Flux2Transformer

    tr = into_module(Flux2Transformer, preset.transformer, diffusers_to_bfl(dict(pipe.transformer.state_dict())),
                      "random transformer", dtype, device)
    vsd = normalise_vae_keys(dict(pipe.vae.state_dict()), "random VAE")
    vsd = {k: (v.float() if k.startswith("bn.") else v) for k, v in vsd.items()}   # as load_vae keeps them
    vae = into_module(AutoencoderFlux2, preset.vae, vsd, "random VAE", dtype, device)
    return Flux2Engine(_our_modules(preset, device, dtype, transformer=tr, vae=vae, text_encoder=False),
                       cache_bytes=0)


def parity_worker(device: str, tiny: bool) -> dict:
    """The same random prompt embedding, seed and steps through diffusers' pipeline and through this engine:
    8-bit pixel differences of the two pictures, and each tool's time for the image."""
    import numpy as np
    import torch

    preset, size, dtype, sync, peak_gib = _setup(device, tiny)
    pipe = _diffusers_pipeline(preset, device, dtype)
    eng = _ours_from(pipe, preset, device, dtype)
    g = torch.Generator(device).manual_seed(SEED)
    emb = (torch.randn(1, preset.text_encoder.max_length, preset.transformer.context_dim, generator=g,
                       device=device)).to(dtype)                                       # [1, 512, 3*hidden]
    eng.encode_prompt = lambda prompt: emb           # both tools condition on the very same embedding
    times = {}
    t0 = time.perf_counter()
    ref = pipe(prompt_embeds=emb, height=size, width=size, num_inference_steps=STEPS, output_type="np", guidance_scale=1.0,
               generator=torch.Generator("cpu").manual_seed(SEED)).images[0]
    sync()
    times["diffusers_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    ours = eng.generate(PROMPT, size, size, [SEED], STEPS, 0.0)[0]
    sync()
    times["ours_s"] = time.perf_counter() - t0
    ref8 = (ref.astype(np.float32) * 255).round().astype(np.uint8)
    d = np.abs(ours.astype(np.int32) - ref8.astype(np.int32))
    return {"size": size, "steps": STEPS, "dtype": str(dtype).replace("torch.", ""), "max_diff": int(d.max()),
            "mean_diff": float(d.mean()), "share_over_2": float((d > 2).mean()),
            "ours_std": float(ours.std()), **times, "vram_peak_gib": peak_gib()}
