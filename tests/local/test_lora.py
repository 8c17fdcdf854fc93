"""LoRA on local weights (flux2/local/weights/lora.py): key layouts, parity with diffusers' `load_lora_weights`, strength,
stacking, refusals, switching without a reload, fp8 and block offload, memory plan and dry run.

Parity runs a tiny random FLUX.2 [klein] with a tiny random LoRA in each layout (tests/local/lora_twins.py) through
LocalBackend and through diffusers' Flux2KleinPipeline with the same LoRA loaded; 2 steps, float32, CPU."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from comfyui_flux2.flux2.backend import GenerationRequest, run
from comfyui_flux2.flux2.errors import ModelLoadError
from comfyui_flux2.flux2.local import backend as lb
from comfyui_flux2.flux2.local.weights import lora
from comfyui_flux2.flux2.local.model import params
from comfyui_flux2.flux2.run_context import RunContext

import lora_twins as tw

TINY = params.tiny_preset("klein", True)
SHAPES = lora.linear_shapes(TINY.transformer)
NOT_ADALN = lambda m: m != "final_layer.adaLN_modulation.1"      # noqa: E731  (see test_final_adaln_...)
REQ = dict(prompt="a red cat", width=80, height=64, seed=5)


def backend(root, *specs, **kw):
    files = lb.LocalFiles(diffusers_dir=root / "diffusers" / "flux2-tiny")
    return lb.LocalBackend("FLUX.2 [klein] 4B", files, dtype="fp32", device="cpu", preset=TINY, steps=2,
                           loras=tuple(lora.LoRASpec(p, s) for p, s in specs), **kw)


def ours(root, *specs) -> np.ndarray:
    return run(backend(root, *specs), GenerationRequest(**REQ), RunContext()).images[0]


def diffusers_image(root, sd) -> np.ndarray:
    """A fresh pipeline from the saved folder each time: loading a LoKr makes diffusers fuse the model's q/k/v
    projections, which unload_lora_weights leaves fused."""
    pytest.importorskip("peft")                     # diffusers' LoRA loading needs it (test extra)
    from diffusers import Flux2KleinPipeline

    pipe = Flux2KleinPipeline.from_pretrained(str(root / "diffusers" / "flux2-tiny"))
    pipe.load_lora_weights(dict(sd))
    out = pipe(prompt=REQ["prompt"], width=REQ["width"], height=REQ["height"], num_inference_steps=2,
               generator=torch.Generator("cpu").manual_seed(REQ["seed"]), output_type="np").images[0]
    return (out * 255).round().astype(np.uint8)


def levels(a, b) -> int:
    return int(np.abs(a.astype(np.int32) - b.astype(np.int32)).max())


# ------------------------------------------------------------------------------------------- key layouts

def test_linear_shapes_are_the_modules():
    from comfyui_flux2.flux2.local.model.transformer import Flux2Transformer

    for p in (TINY.transformer, params.tiny_preset("dev").transformer, params.get_preset("FLUX.2 [dev]").transformer):
        with torch.device("meta"):
            tr = Flux2Transformer(p)
        real = {n: tuple(m.weight.shape) for n, m in tr.named_modules() if isinstance(m, torch.nn.Linear)}
        assert lora.linear_shapes(p) == real


LAYOUTS = {
    "ai_toolkit": lambda lo: tw.ai_toolkit(lo),
    "comfy_updown": lambda lo: tw.comfy_updown(lo),
    "kohya": lambda lo: tw.kohya(lo),
    "peft": lambda lo: tw.peft(lo, TINY.transformer.hidden),
}


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_every_layout_maps_to_the_same_deltas(layout, tmp_path):
    """One random LoRA written in each layout gives the same ΔW on every layer (fused qkv from split q/k/v, the
    swapped final adaLN from diffusers' norm_out, alpha/rank from kohya / ComfyUI files)."""
    lo = tw.RandomLoRA.make(SHAPES, seed=1)
    path = tw.save(LAYOUTS[layout](lo), tmp_path / f"{layout}.safetensors")
    lf = lora.inspect_lora(path, TINY.transformer)
    assert not lf.unused and {lay.target.module for lay in lf.layers} == set(SHAPES)
    patches = lora.build_patches([(lora.load_deltas(lf), 1.0)], SHAPES, torch.float64, "cpu")
    for m in SHAPES:
        torch.testing.assert_close(patches[m].delta_weight().double(), lo.delta(m).double(), rtol=1e-5, atol=1e-6)


def test_comfyui_only_names_map_too(tmp_path):
    """linear1_qkv (ComfyUI), FLUX.1 diffusers names ComfyUI maps for FLUX.2 (ff.net.0.proj, proj_out of a single
    block, time_text_embed), PEFT `base_model.model.`, OneTrainer / LyCORIS underscore names."""
    t = lora.key_table(TINY.transformer)
    h = TINY.transformer.hidden
    assert t["diffusion_model.single_blocks.1.linear1_qkv"] == lora.Target("single_blocks.1.linear1", 0, 3 * h)
    assert t["transformer.transformer_blocks.0.ff.net.0.proj"].module == "double_blocks.0.img_mlp.0"
    assert t["transformer.single_transformer_blocks.1.proj_out"].module == "single_blocks.1.linear2"
    assert t["transformer.single_transformer_blocks.1.attn.to_k"] == lora.Target("single_blocks.1.linear1", h, h)
    assert t["transformer.time_text_embed.timestep_embedder.linear_1"].module == "time_in.in_layer"
    assert t["base_model.model.double_blocks.1.txt_attn.qkv"].module == "double_blocks.1.txt_attn.qkv"
    assert t["lora_transformer_transformer_blocks_0_attn_add_v_proj"] == lora.Target(
        "double_blocks.0.txt_attn.qkv", 2 * h, h)
    assert t["lycoris_single_transformer_blocks_0_attn_to_qkv_mlp_proj"].module == "single_blocks.0.linear1"
    # ComfyUI's other LoRA suffixes: `.lora.up/.down`, `_lora.up/.down`, `.lora_B/.lora_A` (no .weight)
    down, up = torch.randn(2, h), torch.randn(3 * h, 2)
    sd = {"diffusion_model.single_blocks.0.linear1_qkv.lora.down.weight": down,
          "diffusion_model.single_blocks.0.linear1_qkv.lora.up.weight": up,
          "diffusion_model.double_blocks.0.img_attn.qkv_lora.down.weight": down,
          "diffusion_model.double_blocks.0.img_attn.qkv_lora.up.weight": up,
          "transformer.transformer_blocks.1.attn.to_v.lora_A": down,
          "transformer.transformer_blocks.1.attn.to_v.lora_B": up[:h]}
    lf = lora.inspect_lora(tw.save(sd, tmp_path / "mixed.safetensors"), TINY.transformer)
    assert len(lf.layers) == 3 and not lf.unused
    patches = lora.build_patches([(lora.load_deltas(lf), 1.0)], SHAPES, torch.float64, "cpu")
    w = patches["single_blocks.0.linear1"].delta_weight()
    torch.testing.assert_close(w[:3 * h], up @ down)
    assert not w[3 * h:].any()
    w = patches["double_blocks.1.img_attn.qkv"].delta_weight()
    torch.testing.assert_close(w[2 * h:], up[:h] @ down)
    assert not w[:2 * h].any()


def test_lokr_and_loha_factored_forms_equal_comfyui_arithmetic():
    """LoHa as a rank r1·r2 LoRA and LoKr (second factor low rank) as a rank in1·r LoRA give exactly ComfyUI's ΔW:
    (w1a·w1b) ⊙ (w2a·w2b) · alpha/r1 and kron(w1, w2a·w2b) · alpha/r2."""
    g = torch.Generator().manual_seed(0)
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)      # noqa: E731
    tgt = lora.Target("img_in", 0, 12)
    t = {"hada_w1_a": r(12, 3), "hada_w1_b": r(3, 10), "hada_w2_a": r(12, 2), "hada_w2_b": r(2, 10),
         "alpha": torch.tensor(1.5)}
    d = lora.layer_delta(lora.Layer("loha", tgt, ()), t)
    want = (t["hada_w1_a"] @ t["hada_w1_b"]) * (t["hada_w2_a"] @ t["hada_w2_b"]) * 1.5 / 3
    assert d.down.shape[0] == 6
    torch.testing.assert_close((d.up @ d.down * d.scale).double(), want, rtol=1e-6, atol=1e-6)
    t = {"lokr_w1": r(3, 2), "lokr_w2_a": r(4, 2), "lokr_w2_b": r(2, 5), "alpha": torch.tensor(4.0)}
    d = lora.layer_delta(lora.Layer("lokr", tgt, ()), t)
    want = torch.kron(t["lokr_w1"], t["lokr_w2_a"] @ t["lokr_w2_b"]) * 4.0 / 2
    assert d.dense is None and d.down.shape == (4, 10)
    torch.testing.assert_close((d.up @ d.down * d.scale).double(), want, rtol=1e-6, atol=1e-6)


# ------------------------------------------------------------------------------------------- parity

@pytest.mark.parametrize("layout", ["ai_toolkit", "kohya", "peft", "lokr"])
def test_same_image_as_diffusers_load_lora_weights(klein, tmp_path, layout):
    """The file diffusers reads, as it reads it: within one 8-bit level of diffusers' image, and far from no LoRA.
    ai-toolkit without the final adaLN (diffusers maps it unswapped, see below); kohya on the layers diffusers'
    kohya conversion reads; PEFT on all; LoKr (diffusers fuses q/k/v for it) without the final adaLN."""
    _, root, _ = klein
    lo = tw.RandomLoRA.make(SHAPES, seed=2, only=NOT_ADALN if layout == "ai_toolkit" else
                            (lambda m: any(s in m for s in tw.KOHYA_LAYERS)) if layout == "kohya" else None)
    sd = tw.lokr(SHAPES, seed=4, only=NOT_ADALN) if layout == "lokr" else LAYOUTS[layout](lo)
    path = tw.save(sd, tmp_path / f"{layout}.safetensors")
    lb.clear_cache()
    a, ref, base = ours(root, (path, 1.0)), diffusers_image(root, sd), ours(root)
    print(f"{layout}: vs diffusers {levels(a, ref)} levels, LoRA moved the image {levels(a, base)} levels")
    assert levels(a, ref) <= 1
    assert levels(a, base) > 50


def test_comfyui_layouts_equal_their_diffusers_twin(klein, tmp_path):
    """Layouts diffusers does not read (ComfyUI `lora_up/down` + alpha under diffusion_model., LoHa) against the
    same update written as a layout it does read (ai-toolkit lora_A/B; LoHa's ΔW as a full-rank LoRA)."""
    _, root, _ = klein
    lo = tw.RandomLoRA.make(SHAPES, seed=6, only=NOT_ADALN)
    up_down = tw.save(tw.comfy_updown(lo), tmp_path / "updown.safetensors")
    assert levels(ours(root, (up_down, 1.0)), diffusers_image(root, tw.ai_toolkit(lo))) <= 1
    ha = tw.loha(SHAPES, seed=7, only=lambda m: m.startswith(("double_blocks.0", "single_blocks.1")))
    ha_path = tw.save(ha, tmp_path / "loha.safetensors")
    lf = lora.inspect_lora(ha_path, TINY.transformer)
    full = {}
    for d in lora.load_deltas(lf):                 # ΔW = I·ΔW: a LoRA of rank `in` that diffusers reads
        w = ha[f"diffusion_model.{d.target.module}.hada_w1_a"] @ ha[f"diffusion_model.{d.target.module}.hada_w1_b"] \
            * (ha[f"diffusion_model.{d.target.module}.hada_w2_a"] @ ha[f"diffusion_model.{d.target.module}.hada_w2_b"])
        full[f"diffusion_model.{d.target.module}.lora_A.weight"] = torch.eye(w.shape[1])
        full[f"diffusion_model.{d.target.module}.lora_B.weight"] = w      # alpha = rank: scale 1
    a = ours(root, (ha_path, 1.0))
    assert levels(a, diffusers_image(root, full)) <= 1
    assert levels(a, ours(root)) > 20


def test_final_adaln_follows_the_file_layout_not_diffusers_converter(klein, tmp_path):
    """A BFL-named LoRA on final_layer.adaLN_modulation.1 is applied to that layer as ComfyUI does; its diffusers
    twin is `norm_out.linear` with the two row halves exchanged (diffusers' norm_out is (scale, shift)).
    diffusers 0.42.1's ai-toolkit conversion maps it to norm_out without the exchange (docs/loras.md)."""
    _, root, _ = klein
    lo = tw.RandomLoRA.make(SHAPES, seed=8, scale=3.0, only=lambda m: m == "final_layer.adaLN_modulation.1")
    path = tw.save(tw.ai_toolkit(lo), tmp_path / "adaln.safetensors")
    a = ours(root, (path, 1.0))
    assert levels(a, diffusers_image(root, tw.peft(lo, TINY.transformer.hidden))) <= 1
    assert levels(a, ours(root)) > 10


# ------------------------------------------------------------------------------------------- strength, stacking

def test_strength_zero_is_no_lora_bit_for_bit_and_two_halves_are_one_whole(klein, tmp_path):
    _, root, _ = klein
    lo = tw.RandomLoRA.make(SHAPES, seed=9)
    path = tw.save(tw.ai_toolkit(lo), tmp_path / "a.safetensors")
    base = ours(root)
    assert np.array_equal(ours(root, (path, 0.0)), base)
    whole, halves = ours(root, (path, 1.0)), ours(root, (path, 0.5), (path, 0.5))
    assert levels(whole, base) > 50 and levels(whole, halves) <= 1


def test_two_loras_stacked_equal_their_sum(klein, tmp_path):
    """LoRA X then LoRA Y == one file holding X and Y concatenated along the rank (the sum of their updates)."""
    _, root, _ = klein
    x, y = tw.RandomLoRA.make(SHAPES, seed=10), tw.RandomLoRA.make(SHAPES, seed=11, rank=3)
    def cat(m):
        (dx, ux, ax), (dy, uy, ay) = x.layers[m], y.layers[m]
        return torch.cat((dx, dy)), torch.cat((ux * ax / dx.shape[0], uy * ay / dy.shape[0]), 1), 7.0
    both = tw.RandomLoRA({m: cat(m) for m in SHAPES})         # rank 4 + 3, alpha 7: scale 1
    px = tw.save(tw.kohya(x), tmp_path / "x.safetensors")
    py = tw.save(tw.peft(y, TINY.transformer.hidden), tmp_path / "y.safetensors")
    psum = tw.save(tw.ai_toolkit(both), tmp_path / "sum.safetensors")
    stacked = ours(root, (px, 1.0), (py, 1.0))
    assert levels(stacked, ours(root, (psum, 1.0))) <= 1
    assert levels(stacked, ours(root, (px, 1.0))) > 20


# ------------------------------------------------------------------------------------------- refusals

def test_wrong_architecture_is_refused_in_one_line(tmp_path):
    other = lora.linear_shapes(params.tiny_preset("klein", hidden=128, heads=4).transformer)
    cases = {
        "klein-other-size.safetensors": (tw.ai_toolkit(tw.RandomLoRA.make(other)),
                                         r"is for another FLUX.2 size or architecture: \d+ of \d+ keys fit"),
        "flux1.safetensors": ({"diffusion_model.double_blocks.0.img_mod.lin.lora_A.weight": torch.zeros(2, 64),
                               "diffusion_model.double_blocks.0.img_mod.lin.lora_B.weight": torch.zeros(384, 2)},
                              r"matches no layer of this FLUX.2 model: 0 of 2 keys matched \(it looks like FLUX.1"),
        "sdxl.safetensors": ({"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": torch.zeros(2, 8),
                              "lora_unet_down_blocks_0_attentions_0_proj_in.lora_up.weight": torch.zeros(8, 2),
                              "lora_unet_down_blocks_0_attentions_0_proj_in.alpha": torch.tensor(2.0)},
                             r"0 of 3 keys matched \(it looks like an SD / SDXL UNet LoRA\)"),
        "rank-mismatch.safetensors": ({"diffusion_model.img_in.lora_A.weight": torch.zeros(4, 128),
                                       "diffusion_model.img_in.lora_B.weight": torch.zeros(64, 2)},
                                      r"0 of 2 keys fit this model \(1 layers do not; first: diffusion_model.img_in is \?"),
        "dora.safetensors": ({**tw.ai_toolkit(tw.RandomLoRA.make(SHAPES, only=lambda m: m == "img_in")),
                              "diffusion_model.img_in.dora_scale": torch.ones(1, 128)}, r"is DoRA"),
    }
    for name, (sd, pattern) in cases.items():
        with pytest.raises(ModelLoadError, match=pattern) as exc:
            lora.inspect_lora(tw.save(sd, tmp_path / name), TINY.transformer)
        msg = str(exc.value)
        assert "\n" not in msg and name in msg, msg


def test_dry_run_refuses_a_wrong_lora_and_plans_a_right_one(klein, tmp_path):
    _, root, _ = klein
    good = tw.save(tw.ai_toolkit(tw.RandomLoRA.make(SHAPES, rank=8)), tmp_path / "good.safetensors")
    extra = tw.ai_toolkit(tw.RandomLoRA.make(SHAPES, only=lambda m: m == "img_in"))
    extra["diffusion_model.img_in.diff_b"] = torch.zeros(64)      # a bias update: FLUX.2 Linears have no bias
    partial = tw.save(extra, tmp_path / "partial.safetensors")
    ctx = RunContext(dry_run=True)
    b = backend(root, (good, 0.8), (partial, 1.0))
    run(b, GenerationRequest(**REQ), ctx)
    call = ctx.planned[0][0]
    assert "LoRA good.safetensors x0.8 (" in call.summary and "partial.safetensors x1 (1 layers, 1 keys unused)" \
        in call.summary
    assert call.payload["loras"][0] == {"file": "good.safetensors", "strength": 0.8, "layers": len(SHAPES),
                                        "unused_keys": 0}
    bad = tw.save(tw.ai_toolkit(tw.RandomLoRA.make(
        lora.linear_shapes(params.tiny_preset("klein", hidden=128, heads=4).transformer))), tmp_path / "bad.safetensors")
    with pytest.raises(ModelLoadError, match="LoRA bad.safetensors is for another FLUX.2 size"):
        run(backend(root, (bad, 1.0)), GenerationRequest(**REQ), RunContext(dry_run=True))


def test_memory_plan_counts_the_lora_patches(klein, tmp_path):
    _, root, _ = klein
    lo = tw.RandomLoRA.make(SHAPES, rank=8)
    path = tw.save(tw.ai_toolkit(lo), tmp_path / "m.safetensors")
    req = GenerationRequest(**REQ)
    plain, with_lora = backend(root).memory_plan(req), backend(root, (path, 1.0)).memory_plan(req)
    expected = sum(8 * (o + i) for o, i in SHAPES.values()) * 4          # fp32
    assert with_lora.weights - plain.weights == expected
    assert backend(root, (path, 0.0)).memory_plan(req).weights == plain.weights


# ------------------------------------------------------------------------------------------- application

def test_switching_loras_reuses_the_loaded_model(klein, tmp_path, monkeypatch):
    from comfyui_flux2.flux2.local.weights import loading

    _, root, _ = klein
    a = tw.save(tw.ai_toolkit(tw.RandomLoRA.make(SHAPES, seed=12)), tmp_path / "a.safetensors")
    b = tw.save(tw.ai_toolkit(tw.RandomLoRA.make(SHAPES, seed=13)), tmp_path / "b.safetensors")
    lb.clear_cache()
    loads = []
    real = loading.load_modules
    monkeypatch.setattr(loading, "load_modules", lambda *x, **k: loads.append(1) or real(*x, **k))
    base = ours(root)
    img_a, img_b, img_a2, again = ours(root, (a, 1.0)), ours(root, (b, 1.0)), ours(root, (a, 1.0)), ours(root)
    assert len(loads) == 1
    assert levels(img_a, img_b) > 20 and np.array_equal(img_a, img_a2)
    assert np.array_equal(again, base)                 # hooks removed: the base model is untouched


def _hooks(module) -> int:
    return sum(len(m._forward_hooks) for m in module.modules())


@pytest.mark.parametrize("layout", ["diffusers folder", "BFL single file"])
def test_float_weights_take_the_lora_merged_and_get_their_exact_originals_back_from_the_file(klein, tmp_path, layout):
    """bf16/fp16/fp32 Linears: the LoRA is merged when the set is attached (no hook, no per-step cost) and undone,
    bit for bit, by reading the merged weights again from the model file: no copy of them is kept meanwhile."""
    from comfyui_flux2.flux2.local.weights import loading

    _, root, files = klein
    paths = (loading.shard_files(root / "diffusers" / "flux2-tiny" / "transformer", "diffusion_pytorch_model")
             if layout == "diffusers folder" else files["transformer"])
    for dtype in (torch.float32, torch.bfloat16):
        tr = loading.load_transformer(paths, TINY, dtype)
        before = {k: v.clone() for k, v in tr.state_dict().items()}
        reads = []
        restore = lambda names: reads.append(list(names)) or loading.reread_linear_weights(paths, dtype, names)  # noqa: E731
        applied = lora.AppliedLoRAs(tr, restore=restore)
        lo = tw.RandomLoRA.make(SHAPES, seed=15)
        deltas = [lora.Delta(lora.Target(m, 0, SHAPES[m][0]), down=d, up=u * a / d.shape[0])
                  for m, (d, u, a) in lo.layers.items()]
        applied.use(("a",), lambda: lora.build_patches([(deltas, 1.0)], SHAPES, dtype, "cpu"))
        assert _hooks(tr) == 0 and applied.bytes == 0 and applied.merged == sorted(SHAPES)
        qkv = "double_blocks.0.img_attn.qkv"
        merged = before[qkv + ".weight"].float() + lo.layers[qkv][1] * lo.layers[qkv][2] / 4 @ lo.layers[qkv][0]
        torch.testing.assert_close(tr.get_submodule(qkv).weight.float(), merged, rtol=0, atol=0.02)
        applied.use(("b",), lambda: lora.build_patches([(deltas, -1.0)], SHAPES, dtype, "cpu"))   # switch sets
        applied.use((), lambda: {})
        assert reads == [sorted(SHAPES)] * 2 and applied.merged == [] and _hooks(tr) == 0
        after = tr.state_dict()
        assert all(torch.equal(after[k], v) for k, v in before.items()), f"{layout} {dtype}: not restored exactly"


def test_quantised_weights_and_streamed_blocks_keep_the_lora_on_the_fly():
    """A ScaledFP8Linear beside a plain Linear: the plain one merged, the fp8 one hooked (its weight stays float8);
    without a restorer (offload=blocks) every layer is hooked and no weight changes."""
    from comfyui_flux2.flux2.local.weights.quant import FP8_DTYPES, ScaledFP8Linear

    if not FP8_DTYPES:
        pytest.skip("this torch has no float8")
    torch.manual_seed(0)
    host = torch.nn.Module()
    host.add_module("plain", torch.nn.Linear(16, 24, bias=False))
    fp8 = ScaledFP8Linear(16, 24, False, torch.float32)
    fp8.weight.data = (torch.randn(24, 16) * 0.5).to(FP8_DTYPES[0])
    fp8.weight_scale.data = torch.tensor(0.7)
    host.add_module("fp8", fp8)
    original = host.plain.weight.detach().clone()
    patches = lambda: {m: lora.Patch(down=torch.randn(3, 16), up=torch.randn(24, 3)) for m in ("plain", "fp8")}  # noqa: E731
    applied = lora.AppliedLoRAs(host, restore=lambda names: {"plain": original})
    applied.use(("x",), patches)
    assert applied.merged == ["plain"] and _hooks(host) == 1 and len(host.fp8._forward_hooks) == 1
    assert host.fp8.weight.dtype == FP8_DTYPES[0] and not torch.equal(host.plain.weight, original)
    applied.use((), dict)
    assert torch.equal(host.plain.weight, original) and _hooks(host) == 0
    streamed = lora.AppliedLoRAs(host, restore=None)
    streamed.use(("x",), patches)
    assert streamed.merged == [] and _hooks(host) == 2 and torch.equal(host.plain.weight, original)


def test_fp8_weights_stay_fp8_under_a_lora():
    from comfyui_flux2.flux2.local.weights.quant import FP8_DTYPES, ScaledFP8Linear

    if not FP8_DTYPES:
        pytest.skip("this torch has no float8")
    torch.manual_seed(0)
    lin = ScaledFP8Linear(16, 24, False, torch.float32)
    lin.weight.data = (torch.randn(24, 16) * 0.5).to(FP8_DTYPES[0])
    lin.weight_scale.data = torch.tensor(0.7)
    host = torch.nn.Module()
    host.add_module("layer", lin)
    down, up = torch.randn(3, 16), torch.randn(24, 3)
    patches = {"layer": lora.Patch(down=down, up=up)}
    x = torch.randn(2, 5, 16)
    handles = lora.attach(host, patches)
    y = lin(x)
    lora.detach(handles)
    assert lin.weight.dtype == FP8_DTYPES[0]
    torch.testing.assert_close(y, x @ (lin.dequantized(torch.float32) + up @ down).T, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(lin(x), x @ lin.dequantized(torch.float32).T)


def test_block_offload_streams_blocks_with_the_lora_resident():
    """offload=blocks moves each block's own weights per step (offload.py); the LoRA patches are not block
    parameters and stay where they were built, so the streamed model gives the same output."""
    from comfyui_flux2.flux2.local import offload
    from comfyui_flux2.flux2.local.model.sampling import image_ids, text_ids
    from comfyui_flux2.flux2.local.model.transformer import Flux2Transformer

    torch.manual_seed(0)
    tr = Flux2Transformer(TINY.transformer).eval()
    lo = tw.RandomLoRA.make(SHAPES, seed=14)
    deltas = [lora.Delta(lora.Target(m, 0, SHAPES[m][0]), down=d, up=u * a / d.shape[0])
              for m, (d, u, a) in lo.layers.items()]
    patches = lora.build_patches([(deltas, 1.0)], SHAPES, torch.float32, "cpu")
    img, txt = torch.randn(1, 20, 128), torch.randn(1, 8, TINY.transformer.context_dim)
    args = (img, image_ids(4, 5), txt, text_ids(8), torch.tensor([0.5]))
    with torch.no_grad():
        plain = tr(*args)
        handles = lora.attach(tr, patches)
        with_lora = tr(*args)
        offload.offload_transformer(tr, torch.device("cpu"))
        moved = []
        real_call = tr.block_hook.__call__
        tr.block_hook = type("Spy", (), {"__call__": lambda s, b: moved.append(b) or real_call(b),
                                         "release": lambda s: None})()
        streamed = tr(*args)
    lora.detach(handles)
    assert len(moved) == TINY.transformer.depth_double + TINY.transformer.depth_single
    assert (with_lora - plain).abs().max() > 1e-3
    assert torch.equal(streamed, with_lora)


# ------------------------------------------------------------------------------------------- node, workflow

def test_node_lists_chains_and_confines_lora_files(klein, tmp_path, monkeypatch):
    from comfyui_flux2.flux2.errors import InputError
    from comfyui_flux2.nodes.lora_node import Flux2LoRA

    _, root, _ = klein
    models = tmp_path / "models"
    a = tw.save(tw.ai_toolkit(tw.RandomLoRA.make(SHAPES, seed=15)), models / "loras" / "style" / "a.safetensors")
    b = tw.save(tw.kohya(tw.RandomLoRA.make(SHAPES, seed=16)), models / "loras" / "b.safetensors")
    (tmp_path / "outside.safetensors").write_bytes(a.read_bytes())
    monkeypatch.setenv("FLUX2_MODELS_DIR", str(models))
    spec = Flux2LoRA.INPUT_TYPES()["required"]["lora_name"]
    assert spec[0] == ["(none)", "b.safetensors", "style/a.safetensors"]       # ComfyUI-style relative names
    base = backend(root)
    (one,) = Flux2LoRA().apply(base, "style/a.safetensors", 0.7)
    (two,) = Flux2LoRA().apply(one, "b.safetensors", -0.25)
    assert base.loras == () and [(s.path, s.strength) for s in two.loras] == [(a.resolve(), 0.7), (b.resolve(), -0.25)]
    assert two.files == base.files and two.preset is base.preset
    for bad in ("../outside.safetensors", str(tmp_path / "outside.safetensors")):
        with pytest.raises(InputError, match="must be relative to the models directory"):
            Flux2LoRA().apply(base, bad, 1.0)
    with pytest.raises(InputError, match="choose a LoRA file"):
        Flux2LoRA().apply(base, "(none)", 1.0)


def test_node_refuses_backends_that_take_no_lora_in_one_line():
    from comfyui_flux2.flux2.errors import InputError
    from comfyui_flux2.flux2.remote.factory import make_remote_backend
    from comfyui_flux2.flux2.remote.options import RemoteOptions
    from comfyui_flux2.nodes.comfy_backend import ComfyCoreBackend
    from comfyui_flux2.nodes.lora_node import Flux2LoRA

    for provider, model in (("bfl", "FLUX.2 [pro]"), ("bfl", "FLUX.2 [klein] 4B")):
        with pytest.raises(InputError, match=r"takes no LoRA \(LoRAs work on Flux2LocalBackend") as exc:
            Flux2LoRA().apply(make_remote_backend(provider, model, RemoteOptions()), "(none)", 1.0, "civitai:1@2")
        assert "\n" not in str(exc.value)
    comfy = ComfyCoreBackend.__new__(ComfyCoreBackend)
    with pytest.raises(InputError, match="LoraLoaderModelOnly"):
        Flux2LoRA().apply(comfy, "x.safetensors", 1.0)


def _turbo_workflow(tmp_path, dev_root, strength: float):
    """The shipped [dev] + Turbo LoRA workflow on tiny stand-ins: the tiny [dev] diffusers folder and a random LoRA
    under the Turbo LoRA's file name (its real key layout is not established: docs/loras.md)."""
    import json
    import shutil
    from pathlib import Path

    models = tmp_path / "models"
    if not (models / "diffusers" / "flux2-tiny").exists():
        shutil.copytree(dev_root / "diffusers" / "flux2-tiny", models / "diffusers" / "flux2-tiny")
        shapes = lora.linear_shapes(params.tiny_preset("dev").transformer)
        tw.save(tw.ai_toolkit(tw.RandomLoRA.make(shapes, seed=17)), models / "loras" / "Flux_2-Turbo-LoRA_comfyui.safetensors")
    workflows = Path(__file__).resolve().parents[2] / "workflows"
    prompt = json.loads((workflows / "api" / "flux2_dev_turbo_lora.json").read_text())
    assert prompt["1"]["inputs"]["steps"] == 8 and prompt["2"]["inputs"]["strength"] == 1.0
    prompt["1"]["inputs"].update(diffusion_model="(none)", text_encoder="(from diffusers folder)",
                                 vae="(from diffusers folder)", diffusers_folder="flux2-tiny", dtype="fp32", device="cpu")
    prompt["2"]["inputs"]["strength"] = strength
    prompt["3"]["inputs"].update(width=80, height=64)
    wf = tmp_path / f"turbo-{strength}.json"
    wf.write_text(json.dumps(prompt))
    return wf, models


def test_dev_turbo_lora_workflow_runs_through_the_cli(dev, tmp_path, monkeypatch, capsys):
    from PIL import Image

    from comfyui_flux2 import cli

    monkeypatch.delenv("FLUX2_MODELS_DIR", raising=False)
    lb.clear_cache()
    images = {}
    for strength in (1.0, 0.0):
        wf, models = _turbo_workflow(tmp_path, dev[1], strength)
        out = tmp_path / f"out-{strength}"
        assert cli.main(["run", str(wf), "--models-dir", str(models), "--output-dir", str(out), "--dry-run"]) == 0
        printed = capsys.readouterr().err
        assert f"LoRA Flux_2-Turbo-LoRA_comfyui.safetensors x{strength:g} (" in printed and "8 steps" in printed
        assert cli.main(["run", str(wf), "--models-dir", str(models), "--output-dir", str(out)]) == 0
        (png,) = out.rglob("*.png")
        with Image.open(png) as img:
            images[strength] = np.asarray(img.convert("RGB"))
    assert images[1.0].shape == (64, 80, 3)
    assert levels(images[1.0], images[0.0]) > 20


@pytest.mark.slow
def test_turbo_workflow_runs_inside_comfyui_with_the_lora_from_its_loras_folder(klein, tmp_path):
    """The real ComfyUI 0.3.75 server: Flux2LoRA lists the files of ComfyUI's own models/loras (folder_paths), and
    the shipped [dev] + Turbo LoRA workflow, pointed at tiny [klein] twins and a LoRA under the Turbo LoRA's name,
    saves its picture."""
    import json
    import urllib.request
    from pathlib import Path

    from comfy_server import run_workflow, start_server
    import twins

    pipe = klein[0]
    base = tmp_path / "comfy"
    models = base / "models"
    twins.write_comfy_klein_models(pipe, models)
    tw.save(tw.ai_toolkit(tw.RandomLoRA.make(SHAPES, seed=18)), models / "loras" / "Flux_2-Turbo-LoRA_comfyui.safetensors")
    prompt = json.loads((Path(__file__).resolve().parents[2] / "workflows" / "api" / "flux2_dev_turbo_lora.json")
                        .read_text())
    prompt["1"]["inputs"].update(diffusion_model="flux-2-klein-4b.safetensors", text_encoder="qwen_3_4b.safetensors",
                                 dtype="fp32", device="cpu", steps=2)
    prompt["3"]["inputs"].update(width=80, height=64)
    server = start_server(base_dir=base)
    try:
        with urllib.request.urlopen(f"{server.url}/object_info/Flux2LoRA", timeout=60) as resp:
            names = json.load(resp)["Flux2LoRA"]["input"]["required"]["lora_name"][0]
        assert names == ["(none)", "Flux_2-Turbo-LoRA_comfyui.safetensors"]
        entry = run_workflow(server, prompt, timeout=600)
        (img,) = [img for out in entry["outputs"].values() for img in out.get("images", [])]
        assert (server.output_dir / img["subfolder"] / img["filename"]).is_file()
    finally:
        server.stop()
