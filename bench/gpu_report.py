"""docs/benchmarks-gpu.md from the sections `comfyui-flux2 benchmark gpu` ran (bench/gpu.py): what ran, what
stopped at its time limit, the numbers. Pure formatting: no torch, no I/O."""
from __future__ import annotations


def _s(v) -> str:
    return "—" if v is None else f"{v:.3f} s"


def _gib(v) -> str:
    return "—" if v is None else f"{v:.1f} GiB"


def _failed(r: dict, width: int) -> str:
    return f"| {r['label']} | {r['error']} |" + " |" * (width - 2)


def _step_table(rows: list[dict], base_impl: str, base_name: str) -> list[str]:
    """One transformer step per row (bench/gpu_full_size.py worker); ratios against `base_impl` of each model."""
    out = [f"| row | 1 step | vs {base_name} | 4-step loop | TFLOP/s | VRAM peak | RAM peak | build |",
           "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            out.append(_failed(r, 8))
            continue
        base = next((x for x in rows if x.get("model") == r["model"] and x.get("impl") == base_impl
                     and "step_s" in x), None)
        ratio = f"{r['step_s'] / base['step_s']:.2f}×" if base else "—"
        label = r["label"] + ("" if r.get("finite", True) else " (output not finite)")
        out.append(f"| {label} | {_s(r['step_s'])} | {ratio} | {_s(r['loop4_s'])} | {r['tflops']:.1f} | "
                   f"{_gib(r['vram_peak_gib'])} | {_gib(r['ram_peak_gib'])} | {r['build_s']:.1f} s |")
    return out


def _t2i_table(rows: list[dict]) -> list[str]:
    out = ["| row | first image (cold) | second image | of which prompt encoding | VAE decode | rest (4 steps) "
           "| VRAM peak | build |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            out.append(_failed(r, 8))
            continue
        out.append(f"| {r['label']} ({r['size']}²) | {_s(r['first_s'])} | {_s(r['second_s'])} | {_s(r['encode_s'])} "
                   f"| {_s(r['decode_s'])} | {_s(r['denoise_s'])} | {_gib(r['vram_peak_gib'])} | {r['build_s']:.1f} s |")
    return out


def _parity_table(rows: list[dict]) -> list[str]:
    out = ["| row | dtype | max difference | mean difference | pixels > 2 levels | picture std | diffusers | ours |",
           "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            out.append(_failed(r, 8))
            continue
        out.append(f"| {r['label']} ({r['size']}², {r['steps']} steps) | {r['dtype']} | {r['max_diff']} levels | "
                   f"{r['mean_diff']:.3f} levels | {100 * r['share_over_2']:.2f} % | {r['ours_std']:.1f} | "
                   f"{_s(r['diffusers_s'])} | {_s(r['ours_s'])} |")
    return out


NOTES = {
    "klein": "Random weights; 4096 image + 512 text tokens; median of 3 forwards after a warm-up. fp8: every block "
             "Linear as float8_e4m3fn with one scale (what an fp8 file gives). ComfyUI core rows: not in this command.",
    "dev-block": "The whole [dev] transformer (32B parameters, 64 GB in bf16) leaves an 80 GB card no room for "
                 "activations and a second implementation; one block of each kind at full width gives the per-block "
                 "cost (the full model has 8 double + 48 single).",
    "offload": "`offload=blocks`: blocks stream from pinned host RAM on a copy stream, the next block copied while "
               "one computes (two on the GPU at most). Step time close to the resident row = the copies overlap.",
    "t2i": "Text encoder (Qwen3 4B), transformer and VAE at full size, random weights, bundled Qwen3 tokenizer; no "
           "cache between runs, so every image encodes its prompt.",
    "quant": "Every block Linear holds random bytes in the format's real layout and is de-quantised to bf16 each time "
             "it runs (GGUFLinear, NVFP4Linear: what a .gguf or an NVFP4 file gives); the VRAM peak shows what the "
             "format saves, the step time what de-quantising costs.",
    "parity": "diffusers' pipeline and this engine on the very same tensors (transformer converted to our layout as "
              "the loader converts a diffusers folder), the same prompt embedding, seed and schedule; 8-bit pixels.",
}


def render(meta: dict, sections) -> str:
    lines = ["# GPU benchmarks", ""]
    if meta["tiny"]:
        lines += ["**Rehearsal at tiny sizes on the CPU (`--tiny`): the numbers say nothing about a GPU.**", ""]
    lines += [f"Written by `comfyui-flux2 benchmark gpu{' --tiny' if meta['tiny'] else ''}` (bench/gpu.py), "
              f"started {meta['started']}, {meta.get('wall_s', 0):.0f} s of a {meta['budget_s']:.0f} s budget.",
              f"Device: {meta['device']}.",
              "Every weight is random at the real size, made on the device: nothing was downloaded.", "",
              "| section | limit | what ran | time |", "|---|---|---|---|"]
    lines += [f"| {s.key} | {s.limit_s:.0f} s | {s.status} | {s.seconds:.0f} s |" for s in sections]
    lines += ["", meta["not_yet"]]
    tables = {"klein": lambda r: _step_table(r, "diffusers-bf16", "diffusers"),
              "dev-block": lambda r: _step_table(r, "diffusers-bf16", "diffusers"),
              "offload": lambda r: _step_table(r, "ours-bf16", "resident"),
              "t2i": _t2i_table, "parity": _parity_table,
              "quant": lambda r: _step_table(r, "ours-bf16", "bf16")}
    for s in sections:
        lines += ["", f"## {s.title}", "", NOTES.get(s.key, ""), ""]
        lines += tables[s.key](s.rows) if s.rows else [f"Not run: {s.status}."]
    return "\n".join(lines) + "\n"
