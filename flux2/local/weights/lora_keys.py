"""LoRA key formats: the adapter suffixes ComfyUI reads and every layer name (BFL, diffusers, kohya, PEFT, LyCORIS,
OneTrainer) mapped to a Linear of the FLUX.2 transformer and a row range of it. Sources: docs/loras.md."""
from __future__ import annotations

from dataclasses import dataclass

from ..model.params import TransformerParams

# (up, down) suffix pairs ComfyUI 0.3.75 reads (comfy/weight_adapter/lora.py, LoRAAdapter.load), most specific first.
LORA_PAIRS = ((".lora_up.weight", ".lora_down.weight"), ("_lora.up.weight", "_lora.down.weight"),
              (".lora_B.default.weight", ".lora_A.default.weight"), (".lora_B.weight", ".lora_A.weight"),
              (".lora.up.weight", ".lora.down.weight"),
              (".lora_linear_layer.up.weight", ".lora_linear_layer.down.weight"), (".lora_B", ".lora_A"))
LOKR = ("lokr_w1", "lokr_w2", "lokr_w1_a", "lokr_w1_b", "lokr_w2_a", "lokr_w2_b", "lokr_t2")
LOHA = ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", "hada_t1", "hada_t2")
# Per-layer extras (comfy/lora.py, load_lora). diff_b / set_weight / w_norm / b_norm target biases or norm
# weights the FLUX.2 Linears do not have (no biases) and are reported as unused.
SINGLE = ("alpha", "dora_scale", "lora_mid.weight", "diff", "diff_b", "set_weight", "w_norm", "b_norm",
          "reshape_weight") + LOKR + LOHA


@dataclass(frozen=True)
class Target:
    """Rows [start, start+rows) of our Linear `module`; swap: the delta's two row halves are in the other order
    (diffusers' norm_out is (scale, shift), BFL's final adaLN (shift, scale))."""

    module: str
    start: int
    rows: int
    swap: bool = False


def linear_shapes(p: TransformerParams) -> dict[str, tuple[int, int]]:
    """(out, in) of every Linear of transformer.Flux2Transformer, from its params (no module is built)."""
    h, inner, mlp = p.hidden, p.heads * p.head_dim, p.mlp_hidden
    s = {"img_in": (h, p.in_channels), "txt_in": (h, p.context_dim),
         "time_in.in_layer": (h, p.timestep_channels), "time_in.out_layer": (h, h),
         "double_stream_modulation_img.lin": (6 * h, h), "double_stream_modulation_txt.lin": (6 * h, h),
         "single_stream_modulation.lin": (3 * h, h),
         "final_layer.adaLN_modulation.1": (2 * h, h), "final_layer.linear": (p.in_channels, h)}
    if p.guidance_embed:
        s.update({"guidance_in.in_layer": (h, p.timestep_channels), "guidance_in.out_layer": (h, h)})
    for n in range(p.depth_double):
        for st in ("img", "txt"):
            s.update({f"double_blocks.{n}.{st}_attn.qkv": (3 * inner, h), f"double_blocks.{n}.{st}_attn.proj": (h, inner),
                      f"double_blocks.{n}.{st}_mlp.0": (2 * mlp, h), f"double_blocks.{n}.{st}_mlp.2": (h, mlp)})
    for n in range(p.depth_single):
        s.update({f"single_blocks.{n}.linear1": (3 * inner + 2 * mlp, h), f"single_blocks.{n}.linear2": (h, inner + mlp)})
    return s


def _diffusers_names(p: TransformerParams) -> dict[str, Target]:
    """diffusers module names -> our targets: FLUX.2's own names (diffusers' Flux2Transformer2DModel, what its
    trainers save) and the FLUX.1 names ComfyUI 0.3.75 maps for every Flux-derived model (comfy/utils.py,
    flux_to_diffusers) where FLUX.2 has the layer."""
    sh = linear_shapes(p)
    inner = p.heads * p.head_dim

    def full(m: str, swap: bool = False) -> Target:
        return Target(m, 0, sh[m][0], swap)

    d = {"x_embedder": full("img_in"), "context_embedder": full("txt_in"), "proj_out": full("final_layer.linear"),
         "norm_out.linear": full("final_layer.adaLN_modulation.1", swap=True),
         "double_stream_modulation_img.linear": full("double_stream_modulation_img.lin"),
         "double_stream_modulation_txt.linear": full("double_stream_modulation_txt.lin"),
         "single_stream_modulation.linear": full("single_stream_modulation.lin")}
    for emb in ("time_guidance_embed", "time_text_embed"):           # FLUX.2 / FLUX.1 names
        d[f"{emb}.timestep_embedder.linear_1"] = full("time_in.in_layer")
        d[f"{emb}.timestep_embedder.linear_2"] = full("time_in.out_layer")
        if p.guidance_embed:
            d[f"{emb}.guidance_embedder.linear_1"] = full("guidance_in.in_layer")
            d[f"{emb}.guidance_embedder.linear_2"] = full("guidance_in.out_layer")
    for n in range(p.depth_double):
        b, db = f"transformer_blocks.{n}", f"double_blocks.{n}"
        for i, (img, txt) in enumerate((("to_q", "add_q_proj"), ("to_k", "add_k_proj"), ("to_v", "add_v_proj"))):
            d[f"{b}.attn.{img}"] = Target(f"{db}.img_attn.qkv", i * inner, inner)
            d[f"{b}.attn.{txt}"] = Target(f"{db}.txt_attn.qkv", i * inner, inner)
        d[f"{b}.attn.to_qkv"] = full(f"{db}.img_attn.qkv")              # diffusers' fused projections (LoKr)
        d[f"{b}.attn.to_added_qkv"] = full(f"{db}.txt_attn.qkv")
        d[f"{b}.attn.to_out.0"] = full(f"{db}.img_attn.proj")
        d[f"{b}.attn.to_add_out"] = full(f"{db}.txt_attn.proj")
        for ff, st in (("ff", "img"), ("ff_context", "txt")):
            d[f"{b}.{ff}.linear_in"] = d[f"{b}.{ff}.net.0.proj"] = full(f"{db}.{st}_mlp.0")
            d[f"{b}.{ff}.linear_out"] = d[f"{b}.{ff}.net.2"] = full(f"{db}.{st}_mlp.2")
    for n in range(p.depth_single):
        b, sb = f"single_transformer_blocks.{n}", f"single_blocks.{n}"
        d[f"{b}.attn.to_qkv_mlp_proj"] = full(f"{sb}.linear1")
        d[f"{b}.attn.to_out"] = d[f"{b}.proj_out"] = full(f"{sb}.linear2")
        for i, name in enumerate(("to_q", "to_k", "to_v")):
            d[f"{b}.attn.{name}"] = Target(f"{sb}.linear1", i * inner, inner)
    return d


_tables: dict[TransformerParams, dict[str, Target]] = {}


def key_table(p: TransformerParams) -> dict[str, Target]:
    """Every LoRA layer name (file key without its adapter suffix) this model takes -> its target."""
    if p in _tables:
        return _tables[p]
    sh = linear_shapes(p)
    t: dict[str, Target] = {}
    for m, (out, _) in sh.items():
        tgt = Target(m, 0, out)
        t[f"diffusion_model.{m}"] = tgt                       # ComfyUI / ai-toolkit (BFL names)
        t[f"base_model.model.{m}"] = tgt                      # PEFT-saved BFL names (diffusers reads them)
        t["lora_unet_" + m.replace(".", "_")] = tgt           # kohya / sd-scripts
    inner = p.heads * p.head_dim
    for n in range(p.depth_single):                           # ComfyUI: LoRA on the qkv part of linear1 only
        t[f"diffusion_model.single_blocks.{n}.linear1_qkv"] = Target(f"single_blocks.{n}.linear1", 0, 3 * inner)
    for name, tgt in _diffusers_names(p).items():
        t[f"transformer.{name}"] = tgt                        # diffusers / PEFT
        t["lycoris_" + name.replace(".", "_")] = tgt          # SimpleTuner LyCORIS
        t["lora_transformer_" + name.replace(".", "_")] = tgt  # OneTrainer
        if name.startswith(("transformer_blocks.", "single_transformer_blocks.")):
            t[f"diffusion_model.{name}"] = tgt                # ai-toolkit files with expanded diffusers block names
    _tables[p] = t
    return t


def split_key(key: str) -> tuple[str, str] | None:
    """A file key -> (layer name, role); role is "up"/"down" for LoRA pairs, else the suffix (alpha, lokr_w1...)."""
    for up, down in LORA_PAIRS:
        if key.endswith(up):
            return key[: -len(up)], "up"
        if key.endswith(down):
            return key[: -len(down)], "down"
    for s in SINGLE:
        if key.endswith("." + s):
            return key[: -len(s) - 1], s
    return None
