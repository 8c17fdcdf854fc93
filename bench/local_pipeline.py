"""Whole-pipeline rows of `comfyui-flux2 benchmark local`: work a user repeats, this engine vs diffusers' pipeline.

Rows (same random [klein]-shaped weights, same seeds, same device and dtype, each implementation in its own
process, one run):
- sweep: 8 images of one prompt, seeds 0..7, one call each (diffusers: `Flux2KleinPipeline` called 8 times);
  the time per image after the first, and the largest pixel difference between the two tools' images;
- chain: 3 edits reusing two references (edit k takes both references and edit k-1's output);
- cfg: [klein] Base with CFG 4.0, time per image (after a first one): ours in one 2B forward, ours in two
  calls, diffusers (which runs two).

Run by bench/local.py as `python -m <pack>.bench.local_pipeline --build CFG DIR` (writes a diffusers
folder of random weights; needs diffusers and transformers) and `... --worker IMPL CFG DIR` (prints one JSON line).
The tokenizer is Qwen3's real one (the pack's bundled vocab and merges, with Qwen3's added tokens).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

# name: transformer (hidden, heads, double, single), text encoder (hidden, intermediate), VAE channels, size, steps
PIPELINES = {
    "tiny": ((64, 2, 2, 2), (32, 64), (32, 32, 32, 32), 128, 4),
    "mid": ((1024, 8, 2, 4), (256, 768), (64, 128, 128, 128), 256, 4),
}
SWEEP, CHAIN = 8, 3
PROMPT = "a lighthouse on a cliff at dawn, oil painting"
EDIT = "make the sea stormy and add a red boat"
GUIDANCE = 4.0
# Qwen3's chat template, reduced to what FLUX.2's prompt uses (one user turn, thinking disabled).
QWEN_TEMPLATE = ("{%- for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] "
                 "+ '<|im_end|>\\n' }}{%- endfor %}{%- if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}"
                 "{%- if enable_thinking is defined and enable_thinking is false %}{{ '<think>\\n\\n</think>\\n\\n' }}"
                 "{%- endif %}{%- endif %}")


def preset_for(cfg: str, distilled: bool = True):
    from ..flux2.local.model.params import tiny_preset

    (hidden, heads, nd, ns), (te_hidden, te_inter), vae, _, _ = PIPELINES[cfg]
    p = tiny_preset("klein", distilled, hidden=hidden, heads=heads, depth_double=nd, depth_single=ns,
                    text_hidden=te_hidden, vae_block_out=vae)
    return replace(p, text_encoder=replace(p.text_encoder, intermediate=te_inter))


def build(cfg: str, folder: Path) -> None:
    """A diffusers Flux2KleinPipeline of random weights, shaped as preset_for(cfg), saved to `folder`."""
    import torch
    from diffusers import AutoencoderKLFlux2, FlowMatchEulerDiscreteScheduler, Flux2KleinPipeline, Flux2Transformer2DModel
    from transformers import Qwen2TokenizerFast, Qwen3Config, Qwen3ForCausalLM

    from ..flux2.local.model.tokenizer import qwen3_tokenizer

    p = preset_for(cfg)
    t, te, v = p.transformer, p.text_encoder, p.vae
    torch.manual_seed(0)
    transformer = Flux2Transformer2DModel(
        patch_size=1, in_channels=128, num_layers=t.depth_double, num_single_layers=t.depth_single,
        attention_head_dim=t.head_dim, num_attention_heads=t.heads, joint_attention_dim=t.context_dim,
        timestep_guidance_channels=256, mlp_ratio=3.0, axes_dims_rope=tuple(t.axes_dim), rope_theta=2000,
        guidance_embeds=False)
    with torch.no_grad():
        transformer.x_embedder.weight.mul_(0.03)      # random weights: let the text matter, as in the tests
    text_encoder = Qwen3ForCausalLM(Qwen3Config(
        vocab_size=te.vocab, hidden_size=te.hidden, intermediate_size=te.intermediate, num_hidden_layers=te.layers,
        num_attention_heads=te.heads, num_key_value_heads=te.kv_heads, head_dim=te.head_dim,
        max_position_embeddings=1024, rope_theta=te.rope_theta, rms_norm_eps=te.rms_eps, tie_word_embeddings=True))
    n = len(v.block_out)
    vae = AutoencoderKLFlux2(down_block_types=("DownEncoderBlock2D",) * n, up_block_types=("UpDecoderBlock2D",) * n,
                             block_out_channels=tuple(v.block_out), layers_per_block=v.layers_per_block,
                             latent_channels=32, norm_num_groups=v.groups)
    tok = Qwen2TokenizerFast(tokenizer_object=qwen3_tokenizer(), unk_token="<|endoftext|>", eos_token="<|im_end|>",
                             pad_token="<|endoftext|>", padding_side="right")
    tok.chat_template = QWEN_TEMPLATE
    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=True,
                                                time_shift_type="exponential", base_shift=0.5, max_shift=1.15)
    pipe = Flux2KleinPipeline(scheduler=scheduler, vae=vae.eval(), text_encoder=text_encoder.eval(), tokenizer=tok,
                              transformer=transformer.eval(), is_distilled=True)
    pipe.save_pretrained(str(folder), safe_serialization=True)


def references(size: int):
    """Two deterministic RGB patterns, size x size (PIL images)."""
    import numpy as np
    from PIL import Image

    yy, xx = np.mgrid[0:size, 0:size]
    out = []
    for k in (1, 2):
        arr = np.stack([(xx * (3 + k) + yy) % 256, (yy * (5 - k) + 40 * k) % 256, ((xx ^ yy) * 7) % 256], -1)
        out.append(Image.fromarray(arr.astype(np.uint8)))
    return out


def _ours(cfg: str, folder: Path, dtype, device: str):
    """-> (sweep, chain, cfg) callables on this engine. Each returns uint8 images [H, W, 3]."""
    from ..flux2.local.weights.loading import load_modules
    from ..flux2.local.pipeline import Flux2Engine, prepare_reference

    _, _, _, size, steps = PIPELINES[cfg]
    eng = Flux2Engine(load_modules(preset_for(cfg), diffusers_dir=folder, dtype=dtype, device=device))
    base = Flux2Engine(load_modules(preset_for(cfg, distilled=False), diffusers_dir=folder, dtype=dtype,
                                    device=device))

    def image(seed):
        return eng.generate(PROMPT, size, size, [seed], steps, 0.0)[0]

    def edit(refs, seed):                 # refs: PIL images, prepared per call as the backend does
        return eng.generate(EDIT, size, size, [seed], steps, 0.0, [prepare_reference(r) for r in refs])[0]

    def cfg_image(seed, one_forward):
        return base.generate(PROMPT, size, size, [seed], steps, GUIDANCE, cfg_one_forward=one_forward)[0]

    return image, edit, cfg_image


def _diffusers(cfg: str, folder: Path, dtype, device: str):
    import numpy as np
    import torch
    from diffusers import Flux2KleinPipeline

    _, _, _, size, steps = PIPELINES[cfg]
    pipe = Flux2KleinPipeline.from_pretrained(str(folder), torch_dtype=dtype).to(device)
    pipe.set_progress_bar_config(disable=True)
    base = Flux2KleinPipeline(**pipe.components, is_distilled=False)
    base.set_progress_bar_config(disable=True)

    def run(p, seed, **kw):
        out = p(width=size, height=size, num_inference_steps=steps, output_type="np",
                generator=torch.Generator("cpu").manual_seed(seed), **kw).images[0]
        return (out * 255).round().astype(np.uint8)

    def image(seed):
        return run(pipe, seed, prompt=PROMPT)

    def edit(refs, seed):
        return run(pipe, seed, prompt=EDIT, image=list(refs))

    def cfg_image(seed, one_forward):
        return run(base, seed, prompt=PROMPT, guidance_scale=GUIDANCE)

    return image, edit, cfg_image


def worker(impl: str, cfg: str, folder: Path, dtype_name: str, device: str, out_images: Path | None = None,
           sweep_n: int = SWEEP) -> dict:
    import numpy as np
    import torch
    from PIL import Image

    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[dtype_name]
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    with torch.no_grad():
        image, edit, cfg_image = (_ours if impl == "ours" else _diffusers)(cfg, folder, dtype, device)

        def timed(fn):
            t0 = time.perf_counter()
            out = fn()
            sync()
            return out, time.perf_counter() - t0

        sweep = [timed(lambda s=s: image(s)) for s in range(sweep_n)]
        refs = references(PIPELINES[cfg][3])
        chain_t, prev = 0.0, None
        for k in range(CHAIN):
            prev, dt = timed(lambda: edit(refs + ([Image.fromarray(prev)] if prev is not None else []), 100 + k))
            chain_t += dt
        cfg_rows = {}
        for name, one in (("cfg_one_forward", True), ("cfg_two_calls", False)):
            if impl != "ours" and not one:
                continue                   # diffusers has one way: two calls
            times = [timed(lambda s=s: cfg_image(s, one))[1] for s in range(3)]
            cfg_rows[name] = sum(times[1:]) / 2
    if out_images is not None:
        np.save(out_images, np.stack([img for img, _ in sweep]))
    return {"impl": impl, "config": cfg, "first_s": sweep[0][1],
            "sweep_s": sum(dt for _, dt in sweep[1:]) / (sweep_n - 1), "sweep_n": sweep_n, "chain_s": chain_t,
            **cfg_rows}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m comfyui_flux2.bench.local_pipeline")
    ap.add_argument("--build", nargs=2, metavar=("CONFIG", "DIR"))
    ap.add_argument("--worker", nargs=3, metavar=("IMPL", "CONFIG", "DIR"))
    ap.add_argument("--dtype", default="fp32")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--images", default=None, help="with --worker: save the sweep's images here (.npy)")
    ap.add_argument("--sweep", type=int, default=SWEEP, help="images in the seed sweep (>= 2)")
    args = ap.parse_args(argv)
    if args.build:
        build(args.build[0], Path(args.build[1]))
        return 0
    if args.worker:
        impl, cfg, folder = args.worker
        print(json.dumps(worker(impl, cfg, Path(folder), args.dtype, args.device,
                                Path(args.images) if args.images else None, max(2, args.sweep))))
        return 0
    ap.print_usage(sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
