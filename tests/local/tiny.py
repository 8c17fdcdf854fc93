"""Tiny random FLUX.2 pipelines for parity tests: diffusers folders, BFL single files, local tokenizers.

Nothing is downloaded: models are built from tiny configs with a fixed torch seed and made *sensitive*
(image embedder x0.03, QK-norm x1.5, perturbed norms, random BatchNorm statistics) so that a one-token
prompt change or swapped references move the output by many 8-bit levels.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

CORPUS = ["a photo of a red cat sitting on a blue chair", "hello world the quick brown fox jumps",
          "make the sky green and add a dog", "portrait of an old man, oil painting, warm light",
          "a small house near a lake at sunset", "turn the car into a bicycle"] * 10

QWEN_SPECIALS = {"<|endoftext|>": 151643, "<|im_start|>": 151644, "<|im_end|>": 151645,
                 "<think>": 151667, "</think>": 151668}
MISTRAL_SPECIALS = {"<unk>": 0, "<s>": 1, "</s>": 2, "[INST]": 3, "[/INST]": 4, "<pad>": 11,
                    "[SYSTEM_PROMPT]": 17, "[/SYSTEM_PROMPT]": 18}

QWEN_TEMPLATE = ("{%- for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] "
                 "+ '<|im_end|>\\n' }}{%- endfor %}{%- if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}"
                 "{%- if enable_thinking is defined and enable_thinking is false %}{{ '<think>\\n\\n</think>\\n\\n' }}"
                 "{%- endif %}{%- endif %}")
MISTRAL_TEMPLATE = ("{{ bos_token }}{%- for message in messages %}{%- if message['role'] == 'system' %}"
                    "{{ '[SYSTEM_PROMPT]' + message['content'][0]['text'] + '[/SYSTEM_PROMPT]' }}"
                    "{%- elif message['role'] == 'user' %}{{ '[INST]' + message['content'][0]['text'] + '[/INST]' }}"
                    "{%- endif %}{%- endfor %}")


def _bpe(specials: dict[str, int], qwen: bool):
    from tokenizers import Regex, Tokenizer, decoders, normalizers, pre_tokenizers
    from tokenizers.models import BPE
    from tokenizers.trainers import BpeTrainer

    tok = Tokenizer(BPE())
    if qwen:   # the real Qwen2/3 pre-tokenizer (what transformers' Qwen2Tokenizer rebuilds)
        from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX
        tok.normalizer = normalizers.NFC()
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    else:
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = BpeTrainer(vocab_size=300, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), special_tokens=[],
                         show_progress=False)
    tok.train_from_iterator(CORPUS, trainer)
    d = json.loads(tok.to_str())
    base = 32 if not qwen else 0     # Mistral: ids 0..31 are control tokens, keep them free of BPE pieces
    vocab = {t: i + base for t, i in d["model"]["vocab"].items()}
    vocab.update(specials)
    d["model"]["vocab"] = vocab
    d["added_tokens"] = [{"id": i, "content": c, "single_word": False, "lstrip": False, "rstrip": False,
                          "normalized": False, "special": True} for c, i in specials.items()]
    return Tokenizer.from_str(json.dumps(d))


def make_tokenizer(kind: str):
    """A transformers fast tokenizer (what diffusers' pipelines take) around a small local BPE."""
    from transformers import PreTrainedTokenizerFast

    if kind == "qwen3":
        from transformers import Qwen2TokenizerFast

        tok = Qwen2TokenizerFast(tokenizer_object=_bpe(QWEN_SPECIALS, True), unk_token="<|endoftext|>",
                                 eos_token="<|im_end|>", pad_token="<|endoftext|>", padding_side="right")
        tok.chat_template = QWEN_TEMPLATE
    else:
        tok = PreTrainedTokenizerFast(tokenizer_object=_bpe(MISTRAL_SPECIALS, False), bos_token="<s>",
                                      eos_token="</s>", unk_token="<unk>", pad_token="<pad>", padding_side="left")
        tok.chat_template = MISTRAL_TEMPLATE
    return tok


def _perturb_(module: torch.nn.Module, gen: torch.Generator, names=("norm",)) -> None:
    for n, p in module.named_parameters():
        if any(s in n for s in names) and p.ndim == 1:
            with torch.no_grad():
                p.add_(0.3 * torch.randn(p.shape, generator=gen))


def make_transformer(family: str = "klein", hidden: int = 64, heads: int = 2, double: int = 2, single: int = 2,
                     text_hidden: int = 32, seed: int = 0):
    from diffusers import Flux2Transformer2DModel

    torch.manual_seed(seed)
    hd = hidden // heads
    q = hd // 4
    tr = Flux2Transformer2DModel(patch_size=1, in_channels=128, num_layers=double, num_single_layers=single,
                                 attention_head_dim=hd, num_attention_heads=heads, joint_attention_dim=3 * text_hidden,
                                 timestep_guidance_channels=256, mlp_ratio=3.0, axes_dims_rope=(q, q, q, hd - 3 * q),
                                 rope_theta=2000, guidance_embeds=family == "dev").eval()
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        tr.x_embedder.weight.mul_(0.03)
        for n, p in tr.named_parameters():
            if "norm_q" in n or "norm_k" in n or "norm_added" in n:
                p.mul_(1.5).add_(0.2 * torch.randn(p.shape, generator=gen))
    return tr


def make_vae(seed: int = 0, block_out=(32, 32, 32, 32)):
    from diffusers import AutoencoderKLFlux2

    torch.manual_seed(seed)
    n = len(block_out)
    vae = AutoencoderKLFlux2(down_block_types=("DownEncoderBlock2D",) * n, up_block_types=("UpDecoderBlock2D",) * n,
                             block_out_channels=block_out, layers_per_block=1, latent_channels=32,
                             norm_num_groups=min(32, min(block_out))).eval()
    gen = torch.Generator().manual_seed(seed + 2)
    _perturb_(vae, gen)
    with torch.no_grad():
        vae.bn.running_mean.copy_(0.2 * torch.randn(vae.bn.running_mean.shape, generator=gen))
        vae.bn.running_var.copy_(0.5 + torch.rand(vae.bn.running_var.shape, generator=gen))
    return vae


def make_text_encoder(kind: str = "qwen3", hidden: int = 32, layers: int | None = None, seed: int = 0):
    torch.manual_seed(seed)
    layers = layers or (31 if kind == "mistral" else 28)   # layer 30 / 27 must not be the last (final norm)
    if kind == "qwen3":
        from transformers import Qwen3Config, Qwen3ForCausalLM

        cfg = Qwen3Config(vocab_size=151936, hidden_size=hidden, intermediate_size=64, num_hidden_layers=layers,
                          num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=1024,
                          rope_theta=1_000_000.0, rms_norm_eps=1e-6, tie_word_embeddings=True)
        model = Qwen3ForCausalLM(cfg)
    else:
        from transformers import Mistral3Config, Mistral3ForConditionalGeneration, MistralConfig, PixtralVisionConfig

        text = MistralConfig(vocab_size=131072, hidden_size=hidden, intermediate_size=64, num_hidden_layers=layers,
                             num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=1024,
                             rope_theta=1_000_000_000.0, rms_norm_eps=1e-5, tie_word_embeddings=True)
        vision = PixtralVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                                     image_size=32, patch_size=16, head_dim=8)
        cfg = Mistral3Config(text_config=text, vision_config=vision, spatial_merge_size=1,
                             multimodal_projector_bias=False, projector_hidden_act="gelu")
        model = Mistral3ForConditionalGeneration(cfg)
    model = model.eval()
    gen = torch.Generator().manual_seed(seed + 3)
    _perturb_(model, gen, names=("layernorm", "q_norm", "k_norm"))
    return model


def make_scheduler():
    from diffusers import FlowMatchEulerDiscreteScheduler

    return FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=True,
                                           time_shift_type="exponential", base_shift=0.5, max_shift=1.15)


def make_pipeline(family: str = "klein", distilled: bool = True, seed: int = 0):
    """A diffusers Flux2KleinPipeline / Flux2Pipeline of tiny random float32 modules."""
    from diffusers import Flux2KleinPipeline, Flux2Pipeline

    kind = "mistral" if family == "dev" else "qwen3"
    parts = dict(scheduler=make_scheduler(), vae=make_vae(seed), text_encoder=make_text_encoder(kind, seed=seed),
                 tokenizer=make_tokenizer(kind), transformer=make_transformer(family, seed=seed))
    if family == "dev":
        return Flux2Pipeline(**parts)
    return Flux2KleinPipeline(**parts, is_distilled=distilled)


def save_diffusers(pipe, folder: Path) -> Path:
    pipe.save_pretrained(str(folder), safe_serialization=True)
    return folder


def save_single_files(pipe, folder: Path, comfy_prefix: bool = True) -> dict[str, Path]:
    """ComfyUI-style models dir: diffusion_models/ (BFL keys, fused qkv, swapped final adaLN),
    text_encoders/ (HF keys) + tokenizer.json beside it, vae/ (diffusers keys)."""
    from safetensors.torch import save_file

    from comfyui_flux2.flux2.local.weights.loading import diffusers_to_bfl

    folder = Path(folder)
    for sub in ("diffusion_models", "text_encoders", "vae"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    sd = diffusers_to_bfl({k: v.detach().clone() for k, v in pipe.transformer.state_dict().items()})
    if comfy_prefix:
        sd = {"model.diffusion_model." + k: v for k, v in sd.items()}
    tr = folder / "diffusion_models" / "flux2-tiny.safetensors"
    save_file({k: v.contiguous() for k, v in sd.items()}, str(tr))
    te_sd = {k: v.detach().clone().contiguous() for k, v in pipe.text_encoder.state_dict().items()
             if "lm_head" not in k}
    te = folder / "text_encoders" / "tiny-te.safetensors"
    save_file(te_sd, str(te))
    pipe.tokenizer.backend_tokenizer.save(str(folder / "text_encoders" / "tiny-te.tokenizer.json"))
    vae = folder / "vae" / "flux2-tiny-vae.safetensors"
    save_file({k: v.detach().clone().contiguous() for k, v in pipe.vae.state_dict().items()}, str(vae))
    return {"transformer": tr, "text_encoder": te, "vae": vae}
