"""Tiny twins of the FLUX.2 files users download: same key names, dtypes, scale tensors and metadata as the
published files, tiny widths. Facts and their sources: docs/model-files.md.

    python tests/local/twins.py OUT_DIR      # writes every twin (ComfyUI-style models dir) from tiny random weights

Each writer takes the state dict of a tiny diffusers module (tiny.py) and writes one layout, so every twin of
the same module holds the same weights (up to the file's own dtype / quantisation).
"""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))

F8 = torch.float8_e4m3fn


def _save(sd: dict[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None) -> Path:
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().contiguous() for k, v in sd.items()}, str(path), metadata=metadata)
    return path


def _cast(sd: dict[str, torch.Tensor], dtype: torch.dtype) -> dict[str, torch.Tensor]:
    return {k: v.to(dtype) if v.is_floating_point() else v for k, v in sd.items()}


def comfy_quant(fmt: str) -> torch.Tensor:
    """ComfyUI's per-layer quantisation marker: the JSON settings as a uint8 tensor `<layer>.comfy_quant`."""
    return torch.tensor(list(json.dumps({"format": fmt}).encode()), dtype=torch.uint8)


# ------------------------------------------------------------------------------------------ quantisers

def quantize_fp8_scalar(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-tensor scaled float8_e4m3fn, as ComfyUI's TensorCoreFP8Layout.quantize: scale = amax / 448 (float32),
    q = (w * (1 / scale)).to(fp8)."""
    scale = (w.float().abs().amax() / torch.finfo(F8).max).to(torch.float32)
    return (w.float() * (1.0 / scale)).clamp(-448, 448).to(F8), scale


def to_blocked(scales: torch.Tensor) -> torch.Tensor:
    """[rows, cols] block scales -> cuBLAS' 128x4-tiled layout [roundup(rows,128), roundup(cols,4)]
    (the layout comfy_kitchen's quantize_nvfp4 writes; an independent re-statement of it)."""
    rows, cols = scales.shape
    R, C = -(-rows // 128) * 128, -(-cols // 4) * 4
    padded = torch.zeros(R, C, dtype=scales.dtype)
    padded[:rows, :cols] = scales
    blocks = padded.view(R // 128, 128, C // 4, 4).permute(0, 2, 1, 3)          # [rt, ct, 128, 4]
    tiles = blocks.reshape(-1, 4, 32, 4).transpose(1, 2).reshape(-1, 32, 16)     # row r -> (r%32, r//32)
    return tiles.reshape(R, C)


E2M1 = torch.tensor([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0])


def quantize_nvfp4(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """NVFP4 as comfy_kitchen's eager quantize_nvfp4: per-tensor scale = amax / (448 * 6); block scale (16 columns)
    = amax_block / 6 / per_tensor, rounded to fp8; codes = nearest E2M1 of w / (per_tensor * block_scale);
    packed two a byte, the even column in the high nibble. Returns (uint8 [R, C/2], fp8 blocked scales, f32 [])."""
    w = w.float()
    rows, cols = w.shape
    per_tensor = (w.abs().amax() / (448.0 * 6.0)).to(torch.float32)
    blocks = w.view(rows, cols // 16, 16)
    bs = (blocks.abs().amax(-1) / 6.0 / per_tensor).clamp(max=448.0).to(F8)
    total = per_tensor * bs.float()
    total = torch.where(total == 0, torch.ones_like(total), total)
    x = (blocks / total[..., None]).clamp(-6, 6)
    mag = (x.abs()[..., None] - E2M1).abs().argmin(-1)                          # nearest magnitude code 0..7
    code = (mag + 8 * (x < 0)).to(torch.uint8).view(rows, cols)
    packed = (code[:, 0::2] << 4) | code[:, 1::2]
    return packed.to(torch.uint8), to_blocked(bs), per_tensor


# ---------------------------------------------------------------------------------------- transformer

def bfl_transformer(diffusers_sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """BFL key layout (flux2 repo `model.py`: fused qkv, `final_layer.adaLN_modulation.1` as (shift, scale))."""
    from comfyui_flux2.flux2.local.weights.loading import diffusers_to_bfl

    return diffusers_to_bfl({k: v.detach().clone() for k, v in diffusers_sd.items()})


def _block_linear(key: str) -> bool:
    return bool(re.match(r"(double|single)_blocks\.\d+\..*\.weight$", key)) and "norm" not in key


def write_bfl_transformer(diffusers_sd, path: Path, dtype=torch.bfloat16) -> Path:
    """BFL `flux2-dev.safetensors` / `flux-2-klein-4b.safetensors`: BFL keys, no prefix, bf16."""
    return _save(_cast(bfl_transformer(diffusers_sd), dtype), path)


def _mlp_linear(key: str) -> bool:
    """The Linears ComfyUI's `flux2_dev_fp8mixed` stores in fp8: the double blocks' MLPs and the single blocks'
    linear1 / linear2 (8 x 4 + 48 x 2 = 128 for [dev]); the double blocks' attention qkv / proj stay bf16."""
    return bool(re.match(r"double_blocks\.\d+\.(img|txt)_mlp\.[02]\.weight$", key)
                or re.match(r"single_blocks\.\d+\.linear[12]\.weight$", key))


def write_comfy_fp8mixed_transformer(diffusers_sd, path: Path) -> Path:
    """ComfyUI `flux2_dev_fp8mixed.safetensors`: BFL keys; the MLP Linears (`_mlp_linear`) float8_e4m3fn with float32
    scalar `weight_scale` and `input_scale`; everything else bf16; the quantised layers listed in the header metadata
    `_quantization_metadata` (ComfyUI 0.3.75 `model_detection.detect_layer_quantization`; its QUANT_ALGOS
    float8_e4m3fn parameters are weight_scale and input_scale). Which layers, and the counts (555 tensors: BF16 171,
    F32 256, F8_E4M3 128): a public loader that reads the real file (docs/model-files.md). The real `input_scale`
    values are not known (1.0 here; only fp8 matrix multiplication would use them)."""
    sd, layers = {}, {}
    for k, v in bfl_transformer(diffusers_sd).items():
        if _mlp_linear(k):
            q, s = quantize_fp8_scalar(v)
            base = k[: -len(".weight")]
            sd[f"model.diffusion_model.{k}"] = q
            sd[f"model.diffusion_model.{base}.weight_scale"] = s
            sd[f"model.diffusion_model.{base}.input_scale"] = torch.ones((), dtype=torch.float32)
            layers[base] = {"format": "float8_e4m3fn"}
        else:
            sd[f"model.diffusion_model.{k}"] = v.to(torch.bfloat16)
    meta = {"_quantization_metadata": json.dumps({"format_version": "1.0", "layers": layers})}
    return _save(sd, path, meta)


def write_comfy_quant_fp8_transformer(diffusers_sd, path: Path) -> Path:
    """fp8 single file with per-layer `comfy_quant` markers (newer ComfyUI quantised files, e.g. the [klein]
    `-fp8` releases): block weights float8_e4m3fn + scalar `weight_scale` + `input_scale` + `comfy_quant`."""
    sd = {}
    for k, v in bfl_transformer(diffusers_sd).items():
        if _block_linear(k):
            q, s = quantize_fp8_scalar(v)
            base = k[: -len(".weight")]
            sd[k], sd[f"{base}.weight_scale"] = q, s
            sd[f"{base}.input_scale"] = torch.ones((), dtype=torch.float32)
            sd[f"{base}.comfy_quant"] = comfy_quant("float8_e4m3fn")
        else:
            sd[k] = v.to(torch.bfloat16)
    return _save(sd, path)


def write_comfy_nvfp4_transformer(diffusers_sd, path: Path) -> Path:
    """NVFP4 single file in ComfyUI's layout (BFL's FLUX.2-dev-NVFP4 / klein NVFP4 releases are published for
    ComfyUI): block Linears as uint8 codes + float8 `weight_scale` (128x4 tiled) + float32 `weight_scale_2` and
    `input_scale`, listed in `_quantization_metadata` with format "nvfp4"; everything else bf16. Which layers BFL
    quantises is not known (docs/model-files.md: low); any split loads."""
    sd, layers = {}, {}
    for k, v in bfl_transformer(diffusers_sd).items():
        if _block_linear(k):
            base = k[: -len(".weight")]
            sd[k], sd[f"{base}.weight_scale"], sd[f"{base}.weight_scale_2"] = quantize_nvfp4(v)
            sd[f"{base}.input_scale"] = torch.ones((), dtype=torch.float32)
            layers[base] = {"format": "nvfp4"}
        else:
            sd[k] = v.to(torch.bfloat16)
    meta = {"_quantization_metadata": json.dumps({"format_version": "1.0", "layers": layers})}
    return _save(sd, path, meta)


def write_klein_kv_fp8_transformer(diffusers_sd, path: Path) -> Path:
    """BFL `flux-2-klein-9b-kv-fp8.safetensors` (the [klein] 9B KV variant, the file ComfyUI's
    `image_flux2_klein_9b_kv_image_edit` template loads): the [klein] 9B keys and fp8 encoding of BFL's other
    [klein] `-fp8` files; nothing in the keys marks the KV variant (diffusers loads the same architecture,
    `Flux2Transformer2DModel`), so its name tells. No header metadata is written: none is known."""
    return write_comfy_quant_fp8_transformer(diffusers_sd, path)


def write_klein_kv_diffusers(klein_pipe, folder: Path) -> Path:
    """BFL's `FLUX.2-klein-9b-kv` diffusers folder: a klein folder whose model_index.json names
    `Flux2KleinKVPipeline` (diffusers' `save_pretrained` of that pipeline writes exactly this)."""
    from diffusers import Flux2KleinKVPipeline

    kv = Flux2KleinKVPipeline(scheduler=klein_pipe.scheduler, vae=klein_pipe.vae, text_encoder=klein_pipe.text_encoder,
                              tokenizer=klein_pipe.tokenizer, transformer=_kv_safe_copy(klein_pipe.transformer))
    kv.save_pretrained(str(folder), safe_serialization=True)
    return Path(folder)


def _kv_safe_copy(transformer):
    """Flux2KleinKVPipeline swaps the transformer's attention processors: give it its own copy."""
    import copy

    return copy.deepcopy(transformer)


# ------------------------------------------------------------------------------------------------ VAE

def diffusers_vae_to_bfl(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """diffusers AutoencoderKLFlux2 keys -> BFL `ae.safetensors` keys (flux2 repo `autoencoder.py`): quant convs
    inside encoder / decoder, 1x1-conv attention, `bn.num_batches_tracked` kept."""
    n_dec = 1 + max(int(k.split(".")[2]) for k in sd if k.startswith("decoder.up_blocks."))
    out = {}
    for k, v in sd.items():
        nk = k
        nk = re.sub(r"^encoder\.down_blocks\.(\d+)\.resnets\.", r"encoder.down.\1.block.", nk)
        nk = re.sub(r"^encoder\.down_blocks\.(\d+)\.downsamplers\.0\.", r"encoder.down.\1.downsample.", nk)
        if m := re.match(r"^decoder\.up_blocks\.(\d+)\.(resnets|upsamplers\.0)\.(.*)$", nk):
            i = n_dec - 1 - int(m.group(1))
            nk = f"decoder.up.{i}.block.{m.group(3)}" if m.group(2) == "resnets" else f"decoder.up.{i}.upsample.{m.group(3)}"
        nk = re.sub(r"\.mid_block\.resnets\.(\d)\.", lambda m: f".mid.block_{int(m.group(1)) + 1}.", nk)
        if ".mid_block.attentions.0." in nk:
            nk = nk.replace(".mid_block.attentions.0.", ".mid.attn_1.")
            nk = nk.replace(".group_norm.", ".norm.").replace(".to_out.0.", ".proj_out.")
            nk = re.sub(r"\.to_(q|k|v)\.", r".\1.", nk)
            if v.ndim == 2:
                v = v[:, :, None, None]
        nk = nk.replace("conv_shortcut", "nin_shortcut")
        nk = re.sub(r"^(encoder|decoder)\.conv_norm_out\.", r"\1.norm_out.", nk)
        nk = {"quant_conv.weight": "encoder.quant_conv.weight", "quant_conv.bias": "encoder.quant_conv.bias",
              "post_quant_conv.weight": "decoder.post_quant_conv.weight",
              "post_quant_conv.bias": "decoder.post_quant_conv.bias"}.get(nk, nk)
        out[nk] = v.detach().clone()
    return out


def write_bfl_vae(diffusers_sd, path: Path, dtype=torch.float32) -> Path:
    """BFL `ae.safetensors` / `full_encoder_small_decoder.safetensors` (and, as reported, ComfyUI's klein
    `flux2-vae.safetensors`): BFL keys; BatchNorm statistics and num_batches_tracked (int64) kept."""
    return _save(_cast(diffusers_vae_to_bfl(diffusers_sd), dtype), path)


def write_toplevel_quant_vae(diffusers_sd, path: Path, dtype=torch.bfloat16) -> Path:
    """The other ComfyUI `flux2-vae.safetensors` variant: LDM keys with `quant_conv` / `post_quant_conv` at the top
    level (what ComfyUI's own conversion produces, comfy/sd.py VAE.__init__)."""
    sd = diffusers_vae_to_bfl(diffusers_sd)
    sd = {re.sub(r"^(encoder\.quant_conv|decoder\.post_quant_conv)\.",
                 lambda m: m.group(1).split(".")[1] + ".", k): v for k, v in sd.items()}
    return _save(_cast(sd, dtype), path)


# --------------------------------------------------------------------------------------- text encoder

def hf_text_encoder(model) -> dict[str, torch.Tensor]:
    """ComfyUI text-encoder files keep Hugging Face names under `model.` (`model.layers.N.self_attn.q_proj`),
    no LM head, no vision tower (comfy/sd.py detect_te_model reads `model.layers.0.post_attention_layernorm`)."""
    sd = {}
    for k, v in model.state_dict().items():
        if "lm_head" in k or "vision" in k or "multi_modal_projector" in k:
            continue
        k = k.replace("model.language_model.", "model.")
        sd[k] = v.detach().clone()
    return sd


def _te_linear(key: str) -> bool:
    return bool(re.match(r"model\.layers\.\d+\.(self_attn|mlp)\.\w+_proj\.weight$", key))


def write_text_encoder(model, path: Path, quant: str = "bf16", tekken: dict | None = None) -> Path:
    """quant: bf16 (`qwen_3_4b`, `qwen_3_8b`, `mistral_3_small_flux2_bf16`); fp8mixed (`qwen_3_8b_fp8mixed`,
    `mistral_3_small_flux2_fp8`: layer linears fp8 + scalar weight_scale + comfy_quant); nvfp4
    (`qwen_3_4b_fp4_flux2`: every layer linear NVFP4); fp4mixed (`mistral_3_small_flux2_fp4_mixed`: attention
    NVFP4, MLP fp8). tekken: the Mistral tokenizer JSON embedded as uint8 `tekken_model` (ComfyUI [dev] files)."""
    sd = {}
    for k, v in hf_text_encoder(model).items():
        base = k[: -len(".weight")]
        fmt = None
        if _te_linear(k):
            fmt = {"bf16": None, "fp8mixed": "float8_e4m3fn", "nvfp4": "nvfp4",
                   "fp4mixed": "nvfp4" if ".self_attn." in k else "float8_e4m3fn"}[quant]
        if fmt == "float8_e4m3fn":
            sd[k], sd[f"{base}.weight_scale"] = quantize_fp8_scalar(v)
            sd[f"{base}.comfy_quant"] = comfy_quant(fmt)
        elif fmt == "nvfp4":
            sd[k], sd[f"{base}.weight_scale"], sd[f"{base}.weight_scale_2"] = quantize_nvfp4(v)
            sd[f"{base}.comfy_quant"] = comfy_quant(fmt)
        else:
            sd[k] = v.to(torch.bfloat16)
    if tekken is not None:
        raw = json.dumps(tekken).encode()
        sd["tekken_model"] = torch.frombuffer(bytearray(raw), dtype=torch.uint8)
    return _save(sd, path)


# ---------------------------------------------------------------------------------------------- all

def write_comfy_klein_models(klein_pipe, models: Path) -> None:
    """The ComfyUI [klein] 4B set as downloaded, in ComfyUI's own model folders under `models`."""
    write_bfl_transformer(klein_pipe.transformer.state_dict(), models / "diffusion_models" / "flux-2-klein-4b.safetensors")
    write_text_encoder(klein_pipe.text_encoder, models / "text_encoders" / "qwen_3_4b.safetensors")
    write_bfl_vae(klein_pipe.vae.state_dict(), models / "vae" / "flux2-vae.safetensors", torch.bfloat16)


def small_decoder_vae(seed: int = 0):
    """A tiny diffusers AutoencoderKLFlux2 whose decoder is narrower than its encoder (BFL's small decoder:
    encoder (128, 256, 512, 512), decoder (96, 192, 384, 384))."""
    from diffusers import AutoencoderKLFlux2

    torch.manual_seed(seed)
    vae = AutoencoderKLFlux2(down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                             block_out_channels=(32, 64, 64, 64), decoder_block_out_channels=(32, 32, 32, 32),
                             layers_per_block=1, latent_channels=32, norm_num_groups=32).eval()
    with torch.no_grad():
        g = torch.Generator().manual_seed(seed + 5)
        vae.bn.running_mean.copy_(0.2 * torch.randn(vae.bn.running_mean.shape, generator=g))
        vae.bn.running_var.copy_(0.5 + torch.rand(vae.bn.running_var.shape, generator=g))
    return vae


def write_all(root: Path, klein_pipe, dev_pipe=None, tekken: dict | None = None) -> dict[str, Path]:
    """Every twin into a ComfyUI-style models dir; returns {published file name: twin path}."""
    root = Path(root)
    dm, te, va = root / "diffusion_models", root / "text_encoders", root / "vae"
    ksd = klein_pipe.transformer.state_dict()
    out = {
        "flux-2-klein-4b.safetensors": write_bfl_transformer(ksd, dm / "flux-2-klein-4b.safetensors"),
        "flux-2-klein-4b-fp8.safetensors": write_comfy_quant_fp8_transformer(ksd, dm / "flux-2-klein-4b-fp8.safetensors"),
        "flux-2-klein-9b-kv-fp8.safetensors": write_klein_kv_fp8_transformer(
            ksd, dm / "flux-2-klein-9b-kv-fp8.safetensors"),
        "ae.safetensors": write_bfl_vae(klein_pipe.vae.state_dict(), va / "ae.safetensors"),
        "flux2-vae.safetensors": write_bfl_vae(klein_pipe.vae.state_dict(), va / "flux2-vae.safetensors", torch.bfloat16),
        "flux2-vae (top-level quant convs)": write_toplevel_quant_vae(klein_pipe.vae.state_dict(),
                                                                      va / "flux2-vae-toplevel.safetensors"),
        "full_encoder_small_decoder.safetensors": write_bfl_vae(small_decoder_vae().state_dict(),
                                                                va / "full_encoder_small_decoder.safetensors"),
        "qwen_3_4b.safetensors": write_text_encoder(klein_pipe.text_encoder, te / "qwen_3_4b.safetensors"),
        "qwen_3_8b_fp8mixed.safetensors": write_text_encoder(klein_pipe.text_encoder,
                                                             te / "qwen_3_8b_fp8mixed.safetensors", "fp8mixed"),
        "qwen_3_4b_fp4_flux2.safetensors": write_text_encoder(klein_pipe.text_encoder,
                                                              te / "qwen_3_4b_fp4_flux2.safetensors", "nvfp4"),
    }
    if dev_pipe is not None:
        dsd = dev_pipe.transformer.state_dict()
        out["flux2-dev.safetensors"] = write_bfl_transformer(dsd, dm / "flux2-dev.safetensors")
        out["flux2_dev_fp8mixed.safetensors"] = write_comfy_fp8mixed_transformer(dsd, dm / "flux2_dev_fp8mixed.safetensors")
        for name, q in (("mistral_3_small_flux2_bf16", "bf16"), ("mistral_3_small_flux2_fp8", "fp8mixed"),
                        ("mistral_3_small_flux2_fp4_mixed", "fp4mixed")):
            out[f"{name}.safetensors"] = write_text_encoder(dev_pipe.text_encoder, te / f"{name}.safetensors", q,
                                                            tekken=tekken)
    return out


def main(argv: list[str]) -> int:
    import tiny
    from test_tokenizers import synthetic_tekken

    root = Path(argv[0] if argv else "twins")
    klein = tiny.make_pipeline("klein", True)
    dev = tiny.make_pipeline("dev", False)
    tiny.save_diffusers(klein, root / "diffusers" / "flux2-klein-tiny")
    for name, path in write_all(root, klein, dev, synthetic_tekken()).items():
        print(f"{name:45s} -> {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))


# ------------------------------------------------------------------ real-size headers (sparse files, no data)

_ST_DTYPE = {torch.bfloat16: "BF16", torch.float32: "F32", F8: "F8_E4M3", torch.uint8: "U8", torch.int64: "I64"}
_ST_BYTES = {"BF16": 2, "F16": 2, "F32": 4, "F8_E4M3": 1, "U8": 1, "I64": 8}


def write_sparse(path: Path, table: dict[str, tuple[str, tuple[int, ...]]], metadata: dict | None = None) -> Path:
    """A real-size safetensors file holding the exact header and zero data (sparse: no disk used)."""
    header, off = {}, 0
    for k, (dt, shape) in table.items():
        n = _ST_BYTES[dt]
        for d in shape:
            n *= d
        header[k] = {"dtype": dt, "shape": list(shape), "data_offsets": [off, off + n]}
        off += n
    if metadata:
        header["__metadata__"] = metadata
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        f.write(len(raw).to_bytes(8, "little") + raw)
        f.truncate(8 + len(raw) + off)
    return path


def bfl_transformer_table(p, dtype: str = "BF16", fp8_blocks: bool = False, prefix: str = "") -> dict:
    """BFL key names and shapes of a FLUX.2 transformer (flux2 repo model.py) for TransformerParams p."""
    H, M, hd, ctx = p.hidden, p.mlp_hidden, p.head_dim, p.context_dim
    t: dict[str, tuple[int, ...]] = {"img_in.weight": (H, p.in_channels), "txt_in.weight": (H, ctx),
                                     "time_in.in_layer.weight": (H, 256), "time_in.out_layer.weight": (H, H),
                                     "double_stream_modulation_img.lin.weight": (6 * H, H),
                                     "double_stream_modulation_txt.lin.weight": (6 * H, H),
                                     "single_stream_modulation.lin.weight": (3 * H, H),
                                     "final_layer.linear.weight": (p.in_channels, H),
                                     "final_layer.adaLN_modulation.1.weight": (2 * H, H)}
    if p.guidance_embed:
        t.update({"guidance_in.in_layer.weight": (H, 256), "guidance_in.out_layer.weight": (H, H)})
    for i in range(p.depth_double):
        for s in ("img", "txt"):
            b = f"double_blocks.{i}.{s}_"
            t.update({b + "attn.qkv.weight": (3 * H, H), b + "attn.proj.weight": (H, H),
                      b + "attn.norm.query_norm.scale": (hd,), b + "attn.norm.key_norm.scale": (hd,),
                      b + "mlp.0.weight": (2 * M, H), b + "mlp.2.weight": (H, M)})
    for i in range(p.depth_single):
        b = f"single_blocks.{i}."
        t.update({b + "linear1.weight": (3 * H + 2 * M, H), b + "linear2.weight": (H, H + M),
                  b + "norm.query_norm.scale": (hd,), b + "norm.key_norm.scale": (hd,)})
    out = {}
    for k, shape in t.items():
        if fp8_blocks and _block_linear(k):
            out[prefix + k] = ("F8_E4M3", shape)
            out[prefix + k[: -len("weight")] + "weight_scale"] = ("F32", ())
        else:
            out[prefix + k] = (dtype, shape)
    return out


def text_encoder_table(p, layers: int, dtype: str = "BF16", quant: str = "bf16") -> dict:
    """ComfyUI text-encoder key names and shapes (`model.` + Hugging Face names) for TextEncoderParams p."""
    D, hd = p.hidden, p.head_dim
    out = {"model.embed_tokens.weight": (dtype, (p.vocab, D)), "model.norm.weight": (dtype, (D,))}
    for i in range(layers):
        b = f"model.layers.{i}."
        lin = {"self_attn.q_proj": (p.heads * hd, D), "self_attn.k_proj": (p.kv_heads * hd, D),
               "self_attn.v_proj": (p.kv_heads * hd, D), "self_attn.o_proj": (D, p.heads * hd),
               "mlp.gate_proj": (p.intermediate, D), "mlp.up_proj": (p.intermediate, D),
               "mlp.down_proj": (D, p.intermediate)}
        for name, (o, i_) in lin.items():
            if quant == "fp8":
                out[f"{b}{name}.weight"] = ("F8_E4M3", (o, i_))
                out[f"{b}{name}.weight_scale"] = ("F32", ())
                out[f"{b}{name}.comfy_quant"] = ("U8", (26,))
            elif quant == "nvfp4":
                out[f"{b}{name}.weight"] = ("U8", (o, i_ // 2))
                out[f"{b}{name}.weight_scale"] = ("F8_E4M3", (-(-o // 128) * 128, -(-(i_ // 16) // 4) * 4))
                out[f"{b}{name}.weight_scale_2"] = ("F32", ())
                out[f"{b}{name}.comfy_quant"] = ("U8", (18,))
            else:
                out[f"{b}{name}.weight"] = (dtype, (o, i_))
        out[f"{b}input_layernorm.weight"] = (dtype, (D,))
        out[f"{b}post_attention_layernorm.weight"] = (dtype, (D,))
        if p.qk_norm:
            out[f"{b}self_attn.q_norm.weight"] = (dtype, (hd,))
            out[f"{b}self_attn.k_norm.weight"] = (dtype, (hd,))
    return out


def vae_table(vp, dtype: str = "F32") -> dict:
    """BFL `ae.safetensors` key names and shapes for VAEParams vp (from our module on the meta device)."""
    from comfyui_flux2.flux2.local.model.autoencoder import AutoencoderFlux2

    with torch.device("meta"):
        sd = dict(AutoencoderFlux2(vp).state_dict())
    sd["bn.num_batches_tracked"] = torch.empty((), dtype=torch.int64, device="meta")
    return {k: ("I64" if v.dtype == torch.int64 else dtype, tuple(v.shape))
            for k, v in diffusers_vae_to_bfl(sd).items()}
