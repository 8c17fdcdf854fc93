"""`benchmark local --rows quant-plan,quant-step`: what quantised files cost and save.

quant-plan: device memory and RAM the engine plans (memory.py, from headers alone) for FLUX.2 [dev] and [klein] 9B
at 1024x1024, one file format at a time, offload none and blocks. The headers are real-size twins built from the
model's modules on the meta device (no file, no data): bf16; ComfyUI fp8mixed (MLP Linears float8 + scalar scales,
as `flux2_dev_fp8mixed`); NVFP4 (every block Linear packed, scales beside); GGUF Q8_0 / Q4_K (ComfyUI-GGUF's
layout: norms F32, embedders and final layer BF16, every other matrix quantised; a real Q4_K_M mixes in some Q5_K/
Q6_K, so it is a little larger). The text encoder is the same format where one is published in it.
quant-step: CPU step time of one transformer (the `mid` config) with its Linears as GGUF Q8_0 and Q4_K (de-quantised
per layer) against the same model in fp32, one process, interleaved reps, 1 thread, CPU seconds.
"""
from __future__ import annotations

import time

GIB = 2**30
FORMATS = ("bf16", "fp8mixed", "NVFP4", "Q8_0", "Q4_K")
GGUF_KEPT = ("img_in.", "txt_in.", "time_in.", "guidance_in.", "final_layer.")   # ComfyUI-GGUF lcpp.patch


def _info(dtype: str, shape):
    from ..flux2.local.weights.safetensors_header import TensorInfo
    return TensorInfo(dtype, tuple(shape))


def _is_mlp(key: str) -> bool:
    import re
    return bool(re.match(r"(double_blocks\.\d+\.(img|txt)_mlp\.[02]|single_blocks\.\d+\.linear[12])\.weight$", key))


def header_twin(shapes: dict, fmt: str, block_linear) -> dict:
    """{name: shape} of one module -> {name: TensorInfo} as a file in `fmt` stores it. block_linear(key): the
    Linears the quantised formats quantise (GGUF: every matrix outside GGUF_KEPT)."""
    out = {}
    for k, shape in shapes.items():
        matrix = len(shape) == 2 and k.endswith(".weight")
        n = 1
        for d in shape:
            n *= d
        if fmt == "fp8mixed" and matrix and block_linear(k, fp8=True):
            out[k], out[k[:-6] + "weight_scale"] = _info("F8_E4M3", shape), _info("F32", ())
        elif fmt == "NVFP4" and matrix and block_linear(k, fp8=False):
            rows, cols = shape
            out[k] = _info("U8", (rows, cols // 2))
            out[k[:-6] + "weight_scale"] = _info("F8_E4M3", (-(-rows // 128) * 128, -(-cols // 64) * 4))
            out[k[:-6] + "weight_scale_2"] = _info("F32", ())
        elif fmt in ("Q8_0", "Q4_K"):
            if len(shape) == 1 or n <= 1024:
                out[k] = _info("F32", shape)
            elif k.startswith(GGUF_KEPT):
                out[k] = _info("BF16", shape)
            else:
                out[k] = _info(fmt, shape)
        else:
            out[k] = _info("BF16", shape)
    return out


def plan_rows(names=("FLUX.2 [dev]", "FLUX.2 [klein] 9B"), width: int = 1024, height: int = 1024) -> list[dict]:
    import torch

    from ..flux2.local.memory import plan_memory, sizes_from_headers
    from ..flux2.local.model.autoencoder import AutoencoderFlux2
    from ..flux2.local.model.params import get_preset
    from ..flux2.local.model.text_encoder import TextEncoder
    from ..flux2.local.model.transformer import Flux2Transformer

    rows = []
    for name in names:
        preset = get_preset(name)
        with torch.device("meta"):
            tr = {k: tuple(v.shape) for k, v in Flux2Transformer(preset.transformer).state_dict().items()}
            te = {k: tuple(v.shape) for k, v in TextEncoder(preset.text_encoder).state_dict().items()}
            vae = {k: _info("F32", v.shape) for k, v in AutoencoderFlux2(preset.vae).state_dict().items()}
        for fmt in FORMATS:
            t = header_twin(tr, fmt, lambda k, fp8: _is_mlp(k) if fp8 else k.startswith(("double_blocks", "single_blocks")))
            e = header_twin(te, fmt, lambda k, fp8: k.startswith("layers."))
            sizes = sizes_from_headers(t, e, vae, dtype_bytes=2, keep_fp8=True,
                                       text_layers_used=max(preset.text_encoder.out_layers))
            row = {"model": name, "format": fmt,
                   "file_gb": sum(_stored(i) for i in t.values()) / 1e9}
            for off in ("none", "blocks"):
                p = plan_memory(preset, dtype_bytes=2, offload=off, width=width, height=height, sizes=sizes,
                                device_type="cuda")
                row[f"vram_{off}"], row[f"ram_{off}"] = p.total / GIB, p.ram / GIB
            rows.append(row)
    return rows


def _stored(info) -> int:
    from ..flux2.local.memory import _stored as stored
    return stored(info)


def print_plan(rows: list[dict]) -> None:
    print("\nQuantised files: planned device memory / RAM at 1024x1024, bf16 compute, CUDA (memory.py from real-size "
          "header twins; no data); file = transformer bytes as stored")
    print(f"{'model':<20}{'format':<10}{'file GB':>9}{'VRAM none':>11}{'RAM none':>10}{'VRAM blocks':>13}"
          f"{'RAM blocks':>12}")
    for r in rows:
        print(f"{r['model']:<20}{r['format']:<10}{r['file_gb']:>9.1f}{r['vram_none']:>10.1f}G{r['ram_none']:>9.1f}G"
              f"{r['vram_blocks']:>12.1f}G{r['ram_blocks']:>11.1f}G")


# ----------------------------------------------------------------------------------------------- step

def _quantised_copy(model, qtype: str):
    """The model with every Linear outside GGUF_KEPT as a GGUFLinear of `qtype` (Q8_0 quantised from the weights by
    the gguf package; Q4_K, which it cannot quantise, as random blocks with finite scales: the step time does not
    depend on the values)."""
    import copy

    import numpy as np
    import torch

    from ..flux2.local.weights.gguf import GGUFTensor, settle, swap_gguf_linears
    from ..flux2.local.weights.gguf_quants import BY_NAME, TYPES

    tid = BY_NAME[qtype]
    _, block, size = TYPES[tid]
    q = copy.deepcopy(model)
    sd = {}
    rng = np.random.default_rng(0)
    for name, m in q.named_modules():
        if type(m) is not torch.nn.Linear or name.startswith(GGUF_KEPT) or m.in_features % block:
            continue
        w = m.weight.detach().float().numpy()
        if qtype == "Q8_0":
            import gguf
            raw = gguf.quants.quantize(w, gguf.GGMLQuantizationType.Q8_0).reshape(-1)
        else:
            raw = rng.integers(0, 256, (w.size // block, size), dtype=np.uint8)
            raw[:, 0:4] = np.full((w.size // block, 2), 1e-3, np.float16).view(np.uint8)
            raw = raw.reshape(-1)
        sd[f"{name}.weight"] = GGUFTensor(torch.from_numpy(np.ascontiguousarray(raw)), tid, tuple(w.shape))
    swapped = swap_gguf_linears(q, sd, torch.float32)
    for k, raw in settle(swapped, torch.float32, mapped=False).items():
        mod, _, attr = k.rpartition(".")
        setattr(q.get_submodule(mod), attr, torch.nn.Parameter(raw, requires_grad=False))
    return q


def step_worker(model, config: tuple, name: str, reps: int) -> dict:
    """fp32 `model` (bench/local.py `_build` of config `name`) and its Q8_0 and Q4_K variants, the same inputs,
    interleaved rep by rep (a busy machine slows them alike), CPU seconds of this process on one thread."""
    import torch

    from ..flux2.local.model.sampling import image_ids, text_ids

    torch.set_num_threads(1)
    _, _, _, _, tdim, w, h, lt = config
    g = torch.Generator().manual_seed(0)
    args = (torch.randn(1, (w // 16) * (h // 16), 128, generator=g), image_ids(h // 16, w // 16),
            torch.randn(1, lt, tdim, generator=g), text_ids(lt), torch.tensor([0.5]))
    variants = {"fp32": model, "Q8_0": _quantised_copy(model, "Q8_0"), "Q4_K": _quantised_copy(model, "Q4_K")}
    times = {k: [] for k in variants}
    with torch.no_grad():
        for rep in range(reps + 1):                 # rep 0 warms up and is not counted
            for k, m in variants.items():
                t0 = time.process_time()
                m(*args)
                if rep:
                    times[k].append(time.process_time() - t0)
    med = {k: sorted(v)[len(v) // 2] for k, v in times.items()}
    return {"config": name, **{f"{k}_s": v for k, v in med.items()}, "clock": "CPU s, 1 thread"}


def print_steps(r: dict, reps: int) -> None:
    print(f"\nQuantised step: config {r['config']}, CPU, fp32 compute, median of {reps} steps ({r['clock']}), one "
          f"process, interleaved; GGUF Linears de-quantised per layer")
    print(f"{'fp32 s':>10}{'Q8_0 s':>10}{'Q8_0/fp32':>11}{'Q4_K s':>10}{'Q4_K/fp32':>11}")
    print(f"{r['fp32_s']:>10.4f}{r['Q8_0_s']:>10.4f}{r['Q8_0_s'] / r['fp32_s']:>10.2f}x{r['Q4_K_s']:>10.4f}"
          f"{r['Q4_K_s'] / r['fp32_s']:>10.2f}x")
