"""LoRA rows of `comfyui-flux2 benchmark local` (bench/local.py runs each config in its own process): step time
with no LoRA, a LoRA applied on the fly and the same LoRA merged, in one process, and the cost of switching sets."""
from __future__ import annotations

import time
from pathlib import Path


def lora_worker(cfg: str, dtype_name: str, device: str, reps: int, rank: int, build) -> dict:
    """One process: step time with no LoRA, with a LoRA of `rank` on every Linear applied on the fly (lora.attach),
    and with the same LoRA merged once into a copy of the weights (lora.merge_patches). The three run interleaved,
    rep by rep, so a busy machine slows them alike; plus what building, attaching and merging cost, and what the
    engine's switch between LoRA sets costs (_switch_times). build(impl, cfg, dtype, device) -> (model, step):
    bench/local.py's."""
    import copy

    import torch

    from ..flux2.local.weights.lora_deltas import Delta
    from ..flux2.local.weights.lora_keys import Target, linear_shapes
    from ..flux2.local.weights.lora_patches import build_patches, merge_patches

    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[dtype_name]
    cuda = device.startswith("cuda")
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    # On a CPU: one thread and the process's CPU seconds, so other jobs on a shared machine do not decide the
    # comparison (wall time there measured the machine's load, not the LoRA). On CUDA: wall time after a sync.
    clock = time.perf_counter if cuda else time.process_time
    if not cuda:
        torch.set_num_threads(1)
    model, step = build("ours", cfg, dtype, device)
    shapes = linear_shapes(model.params)
    rank = rank or max(8, model.params.hidden // 24)   # fal's Turbo LoRA: rank ~256 on [dev]'s 6144 (docs/loras.md)
    g = torch.Generator().manual_seed(0)
    deltas = [Delta(Target(m, 0, o), down=torch.randn(rank, i, generator=g) / i ** 0.5,
                    up=torch.randn(o, rank, generator=g) * 1e-3) for m, (o, i) in shapes.items()]

    def timed(fn) -> float:
        sync()
        t0 = clock()
        fn()
        sync()
        return clock() - t0

    out = {"config": cfg, "rank": rank, "clock": "wall s" if cuda else "CPU s, 1 thread"}
    patches = {}
    out["build_s"] = timed(lambda: patches.update(build_patches([(deltas, 1.0)], shapes, dtype, device)))
    merged = copy.deepcopy(model)
    out["merge_s"] = timed(lambda: merge_patches(merged, patches))
    params = dict(model.named_parameters())
    swap = [(p, dict(merged.named_parameters())[n].data) for n, p in params.items()]
    base = [(p, p.data) for p in params.values()]
    del merged
    out.update(_interleaved(model, step, patches, (swap, base), reps, timed))
    out.update(_switch_times(model, shapes, deltas, dtype, device, timed))
    out["lora_mb"] = sum(t.numel() * t.element_size() for p in patches.values() for t in (p.down, p.up)) / 2**20
    return out


def _interleaved(model, step, patches, weights, reps: int, timed) -> dict:
    """Step times with no LoRA, the LoRA attached on the fly, and the merged weights swapped in, interleaved rep by
    rep (median each), plus the attach time and the largest difference between the two ways of applying it.
    weights: ((parameter, merged data), ...), ((parameter, base data), ...)."""
    import torch

    from ..flux2.local.weights.lora_patches import attach, detach

    swap, base = weights
    handles: list = []
    out = {}
    times = {"none": [], "fly": [], "merged": []}
    with torch.no_grad():
        for rep in range(reps + 1):                      # rep 0 warms each variant up and is not counted
            t = timed(step)
            out["attach_s"] = timed(lambda: handles.extend(attach(model, patches)))
            t_fly = timed(step)
            if rep == reps:
                fly = step().float()
            detach(handles)
            for p, w in swap:
                p.data = w
            t_merged = timed(step)
            if rep == reps:
                out["max_diff"] = float((step().float() - fly).abs().max())     # the two applications agree
            for p, w in base:
                p.data = w
            if rep:
                times["none"].append(t)
                times["fly"].append(t_fly)
                times["merged"].append(t_merged)
    for k, v in times.items():
        out[f"{k}_s"] = sorted(v)[len(v) // 2]
    return out


def _switch_times(model, shapes, deltas, dtype, device, timed) -> dict:
    """What the engine does when a request brings another LoRA set (lora.AppliedLoRAs): merge set A, switch to set B
    (A's merged weights restored from the model file, B merged), back to no LoRA. The weights are written to a
    safetensors file first, so the restore reads a file as the engine reads its model's."""
    import tempfile
    from functools import partial

    from safetensors.torch import save_file

    from ..flux2.local.weights.reread import reread_linear_weights
    from ..flux2.local.weights.lora import AppliedLoRAs
    from ..flux2.local.weights.lora_patches import build_patches

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.safetensors"
        save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, str(path))
        applied = AppliedLoRAs(model, restore=partial(reread_linear_weights, path, dtype))
        out = {"merge_in_s": timed(lambda: applied.use(("a",), lambda: build_patches([(deltas, 1.0)], shapes, dtype,
                                                                                         device))),
               "switch_s": timed(lambda: applied.use(("b",), lambda: build_patches([(deltas, 0.5)], shapes, dtype,
                                                                                      device))),
               "unmerge_s": timed(lambda: applied.use((), dict))}
    return out



def print_rows(rows: list[dict], args) -> None:
    """The LoRA rows' table, one row per config."""
    print(f"\nLoRA rows: device {args.device}, dtype {args.dtype}, median of {args.reps} steps ({rows[0]['clock']}), "
          f"one process per config, the three interleaved; a LoRA on every Linear; +% = vs no LoRA")
    print(f"{'config':<14}{'rank':>5}{'LoRA MB':>9}{'none s':>10}{'on the fly s':>18}{'merged s':>18}"
          f"{'merge once s':>14}{'attach s':>10}{'switch s':>10}{'off s':>8}{'max |fly - merged|':>20}")
    for r in rows:
        fly, merged = r["fly_s"] / r["none_s"] - 1, r["merged_s"] / r["none_s"] - 1
        print(f"{r['config']:<14}{r['rank']:>5}{r['lora_mb']:>9.1f}{r['none_s']:>10.4f}"
              f"{r['fly_s']:>11.4f} ({fly:+4.0%}){r['merged_s']:>11.4f} ({merged:+4.0%})"
              f"{r['merge_s'] + r['build_s']:>14.3f}{r['attach_s'] + r['build_s']:>10.3f}{r['switch_s']:>10.3f}"
              f"{r['unmerge_s']:>8.3f}{r['max_diff']:>20.2e}")
    print("switch s: the engine going from one LoRA set to another (the first set's merged weights read again from "
          "the model file, the second merged in); off s: back to no LoRA")
