"""Tokenizers for single-file text encoders: the shipped Qwen3 BPE (klein) and the Tekken tokenizer ComfyUI
embeds in FLUX.2 [dev] text-encoder files. Each is checked against a tokenizer built another way."""
from __future__ import annotations

import base64
import json
import shutil

import pytest
import torch
from safetensors.torch import save_file

from comfyui_flux2.flux2.errors import ModelLoadError
from comfyui_flux2.flux2.local.weights import loading
from comfyui_flux2.flux2.local.model import params
from comfyui_flux2.flux2.local.model import tokenizer as T

PROMPTS = [
    "a photo of a red cat sitting on a blue chair",
    "",
    "Don't stop: I'll  be   there\tat 10:45pm, 2024-05-17 (3.14159) #42 $1,000,000!!",
    "Überraschung: café, naïve, Ångström, e\u0301 (combining), ß, İstanbul",
    "日本語のテキスト、中文字符和한국어 문장; Ελληνικά; русский текст; עברית; العربية",
    "emoji 🐱🐶 family 👨‍👩‍👧‍👦 flags 🇫🇷🇯🇵 skin 👍🏽 keycap 1️⃣ ✨🔥",
    "line one\nline two\r\n\n  indented\n\n\nend   ",
    "literal specials <|im_end|> and <think> inside the prompt",
    "portrait of an old man, oil painting, warm light " * 60,   # truncated at 512 tokens
]
QWEN_ADDED = {"<|endoftext|>": 151643, "<|im_start|>": 151644, "<|im_end|>": 151645, "<think>": 151667,
              "</think>": 151668}


# ------------------------------------------------------------------------------------------------ Qwen3

@pytest.fixture(scope="module")
def hf_qwen(tmp_path_factory):
    """transformers' Qwen2Tokenizer built from the same vocab.json / merges.txt (its own Qwen2 regex and
    byte-level setup), with Qwen3's added tokens from a tokenizer_config.json as Qwen3 ships it."""
    pytest.importorskip("transformers")
    from transformers import Qwen2Tokenizer

    import tiny

    d = tmp_path_factory.mktemp("qwen-ref")
    for name in ("vocab.json", "merges.txt"):
        shutil.copy(T.QWEN_DIR / name, d / name)
    added = {str(i): {"content": c, "lstrip": False, "normalized": False, "rstrip": False, "single_word": False,
                      "special": sp} for i, c, sp in T.QWEN3_ADDED_TOKENS}
    (d / "tokenizer_config.json").write_text(json.dumps({
        "added_tokens_decoder": added, "bos_token": None, "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>",
        "unk_token": None, "tokenizer_class": "Qwen2Tokenizer", "add_prefix_space": False,
        "split_special_tokens": False, "model_max_length": 262144}))
    tok = Qwen2Tokenizer.from_pretrained(str(d))
    tok.chat_template = tiny.QWEN_TEMPLATE
    return tok


def test_shipped_qwen_files_are_qwens():
    import hashlib

    sums = {n: hashlib.sha256((T.QWEN_DIR / n).read_bytes()).hexdigest() for n in ("vocab.json", "merges.txt")}
    assert sums == {"vocab.json": "ca10d7e9fb3ed18575dd1e277a2579c16d108e32f27439684afa0e10b1440910",
                    "merges.txt": "8831e4f1a044471340f7c0a83d7bd71306a5b867e95fd870f74d0c5308a904d5"}
    notice = (T.QWEN_DIR / "NOTICE").read_text()
    assert "Apache License, Version 2.0" in notice and "ComfyUI" in notice
    assert "Apache License" in (T.QWEN_DIR / "LICENSE").read_text()


def test_qwen3_special_tokens_at_real_ids():
    tok = T.qwen3_tokenizer()
    assert tok.get_vocab_size() == 151669
    for content, id_ in QWEN_ADDED.items():
        assert tok.token_to_id(content) == id_
    assert [tok.token_to_id(c) for _, c, _ in T.QWEN3_ADDED_TOKENS] == list(range(151643, 151669))


def test_qwen3_encodes_like_transformers(hf_qwen):
    ours = T.qwen3_tokenizer()
    for prompt in PROMPTS:
        ref = hf_qwen.encode(prompt, add_special_tokens=False)
        got = ours.encode(prompt, add_special_tokens=False).ids
        assert got == ref, prompt
        assert ours.decode(got, skip_special_tokens=False) == hf_qwen.decode(ref, skip_special_tokens=False)


def test_qwen3_chat_template_and_padding_like_diffusers(hf_qwen):
    """What diffusers' Flux2KleinPipeline feeds Qwen3: chat template (thinking off), right-padded to 512."""
    pt = T.PromptTokenizer.bundled_qwen3(params.QWEN3_4B)
    ids, mask = pt(PROMPTS)
    for i, prompt in enumerate(PROMPTS):
        text = hf_qwen.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                           add_generation_prompt=True, enable_thinking=False)
        assert text == T.render(prompt, "qwen3")
        ref = hf_qwen(text, padding="max_length", max_length=512, truncation=True, add_special_tokens=False)
        assert ids[i].tolist() == ref["input_ids"], prompt
        assert mask[i].tolist() == ref["attention_mask"]
    assert ids[0, :3].tolist() == [151644, 872, 198]            # <|im_start|> user \n
    assert ids[-1].tolist().count(151643) == 0 and mask[-1].all()   # the long prompt fills all 512


def test_single_qwen3_file_needs_no_tokenizer(klein, tmp_path):
    """A klein text encoder alone in its folder uses the bundled tokenizer; generation runs."""
    from comfyui_flux2.flux2.local.pipeline import Flux2Engine

    _, _, files = klein
    lonely = tmp_path / "qwen3.safetensors"
    lonely.write_bytes(files["text_encoder"].read_bytes())
    tok = loading.tokenizer_for(lonely, params.tiny_preset("klein").text_encoder)
    assert tok.source == "bundled Qwen3 tokenizer"
    m = loading.load_modules(params.tiny_preset("klein"), transformer=files["transformer"], text_encoder=lonely,
                             vae=files["vae"], dtype=torch.float32)
    img = Flux2Engine(m).generate("a red cat", 32, 32, [1], 1, 0.0)[0]
    assert img.shape == (32, 32, 3)
    # a tokenizer.json beside the file still wins
    assert loading.tokenizer_for(files["text_encoder"], params.tiny_preset("klein").text_encoder).source.endswith(
        "tiny-te.tokenizer.json")


# ----------------------------------------------------------------------------------------------- Tekken

# Mistral's Tekken pre-tokenizer (tekken.json `config.pattern` of Mistral Small 3.x).
TEKKEN_PATTERN = (r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+|[^\r\n\p{L}\p{N}]?"
                  r"[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|"
                  r"\s*[\r\n]+|\s+(?!\S)|\s+")
TEKKEN_SPECIALS = ["<unk>", "<s>", "</s>", "[INST]", "[/INST]", "[AVAILABLE_TOOLS]", "[/AVAILABLE_TOOLS]",
                   "[TOOL_RESULTS]", "[/TOOL_RESULTS]", "[TOOL_CALLS]", "[IMG]", "<pad>", "[IMG_BREAK]",
                   "[IMG_END]", "[PREFIX]", "[MIDDLE]", "[SUFFIX]", "[SYSTEM_PROMPT]", "[/SYSTEM_PROMPT]",
                   "[TOOL_CONTENT]"]
N_SPECIAL = 1000
CORPUS = [T.DEV_SYSTEM_MESSAGE] + PROMPTS[:-1] * 3 + [
    "The quick brown fox jumps over the lazy dog. THE QUICK BROWN FOX! CamelCaseWords and snake_case_words",
    "make the sky green and add a dog; turn the car into a bicycle; https://example.com/a/b?c=1"] * 5


def synthetic_tekken() -> dict:
    """A small rank table with Tekken's layout: ranks 0..255 are the single bytes, then pieces learned by BPE
    on a small corpus (each the merge of two lower-ranked pieces), plus 3 ranks beyond default_vocab_size."""
    from tokenizers import Regex, Tokenizer, pre_tokenizers
    from tokenizers.models import BPE
    from tokenizers.trainers import BpeTrainer

    tok = Tokenizer(BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(TEKKEN_PATTERN), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.train_from_iterator(CORPUS, BpeTrainer(vocab_size=700, show_progress=False, special_tokens=[],
                                               initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    dec = {c: b for b, c in T._bytes_to_unicode().items()}
    merges = json.loads(tok.to_str())["model"]["merges"]
    pieces = [bytes([i]) for i in range(256)]
    seen = set(pieces)
    for m in merges:
        left, right = m if isinstance(m, list) else m.split(" ")
        b = bytes(dec[c] for c in left + right)
        if b not in seen:
            seen.add(b)
            pieces.append(b)
    extra = [b"zzqx", b"qxzz", b"xq"]          # beyond default_vocab_size: must be dropped
    vocab = [{"rank": r, "token_bytes": base64.b64encode(b).decode(), "token_str": None}
             for r, b in enumerate(pieces + extra)]
    return {"config": {"pattern": TEKKEN_PATTERN, "num_vocab_tokens": len(vocab),
                       "default_vocab_size": N_SPECIAL + len(pieces), "default_num_special_tokens": N_SPECIAL,
                       "version": "v7"},
            "vocab": vocab,
            "special_tokens": [{"rank": i, "token_str": s, "is_control": True} for i, s in enumerate(TEKKEN_SPECIALS)]}


def tiktoken_reference(text: str, tek: dict) -> list[int]:
    """Plain tiktoken algorithm (lowest-rank adjacent pair first), special tokens matched in the text."""
    import re

    import regex

    n = tek["config"]["default_num_special_tokens"]
    ranks = {base64.b64decode(v["token_bytes"]): v["rank"] for v in tek["vocab"]
             if v["rank"] < tek["config"]["default_vocab_size"] - n}
    specials = {s["token_str"]: s["rank"] for s in tek["special_tokens"]}
    out: list[int] = []
    split = re.compile("(" + "|".join(re.escape(s) for s in sorted(specials, key=len, reverse=True)) + ")")
    for seg in split.split(text):
        if seg in specials:
            out.append(specials[seg])
            continue
        for m in regex.finditer(tek["config"]["pattern"], seg):
            piece = m.group().encode()
            if piece in ranks:
                out.append(ranks[piece] + n)
                continue
            parts = [bytes([b]) for b in piece]
            while len(parts) > 1:
                best = min(range(len(parts) - 1), key=lambda i: ranks.get(parts[i] + parts[i + 1], 1 << 62))
                if parts[best] + parts[best + 1] not in ranks:
                    break
                parts[best:best + 2] = [parts[best] + parts[best + 1]]
            out.extend(ranks[p] + n for p in parts)
    return out


@pytest.fixture(scope="module")
def tekken():
    return synthetic_tekken()


def test_tekken_matches_tiktoken_algorithm(tekken):
    tok = T.tekken_tokenizer(json.dumps(tekken).encode())
    assert tok.token_to_id("<s>") == 1 and tok.token_to_id("<pad>") == 11 and tok.token_to_id("[INST]") == 3
    assert tok.token_to_id("<SPECIAL_999>") == 999 and tok.token_to_id("<SPECIAL_20>") == 20
    assert tok.get_vocab_size() == tekken["config"]["default_vocab_size"]        # the 3 extra ranks dropped
    texts = PROMPTS + [T.render(p, "mistral") for p in PROMPTS[:4]] + CORPUS[-2:]
    for text in texts:
        ids = tok.encode(text, add_special_tokens=False).ids
        assert ids == tiktoken_reference(text, tekken), text
        assert tok.decode(ids, skip_special_tokens=False) == text
    assert max(tok.encode(texts[-1], add_special_tokens=False).ids) > 256 + N_SPECIAL   # merges really used


def test_tekken_matches_transformers_converter(tekken, tmp_path):
    pytest.importorskip("transformers")
    from transformers.integrations.mistral.tokenizer import MistralConverter

    path = tmp_path / "tekken.json"
    path.write_text(json.dumps(tekken))
    ref = MistralConverter(vocab_file=str(path)).converted()
    ours = T.tekken_tokenizer(path.read_bytes())
    assert ours.get_vocab() == ref.get_vocab()
    for text in PROMPTS + [T.render(p, "mistral") for p in PROMPTS]:
        assert ours.encode(text, add_special_tokens=False).ids == ref.encode(text, add_special_tokens=False).ids


def test_tekken_from_text_encoder_file(tekken, tmp_path):
    """ComfyUI's [dev] text-encoder single file: the Tekken JSON as a uint8 tensor `tekken_model`."""
    from comfyui_flux2.flux2.local.model.text_encoder import TextEncoder

    p = params.tiny_preset("dev").text_encoder
    torch.manual_seed(0)
    sd = {k: v.contiguous() for k, v in TextEncoder(p).state_dict().items()}
    raw = json.dumps(tekken).encode()
    sd["tekken_model"] = torch.frombuffer(bytearray(raw), dtype=torch.uint8)
    f = tmp_path / "mistral_3_small_flux2_tiny.safetensors"
    save_file(sd, str(f))
    pt = loading.tokenizer_for(f, p)
    assert pt.source == f"Tekken tokenizer in {f.name}"
    ids, mask = pt(["a red cat"])
    rendered = tiktoken_reference(T.render("a red cat", "mistral"), tekken)
    assert ids[0, -len(rendered):].tolist() == rendered and rendered[:2] == [1, 17]       # <s> [SYSTEM_PROMPT]
    assert ids[0, :512 - len(rendered)].eq(11).all() and mask[0].sum() == len(rendered)   # left-padded <pad>
    te = loading.load_text_encoder(f, p, torch.float32)          # the tokenizer tensor is not a weight
    assert te(ids, mask).shape == (1, 512, p.out_dim)
    # without the embedded tokenizer and with no tokenizer.json: one clear error
    del sd["tekken_model"]
    g = tmp_path / "plain.safetensors"
    save_file(sd, str(g))
    with pytest.raises(ModelLoadError, match="no tokenizer for text encoder plain.safetensors"):
        loading.tokenizer_for(g, p)
    with pytest.raises(ModelLoadError, match="not a Tekken tokenizer"):
        T.tekken_tokenizer(b'{"vocab": []}', "x")


@pytest.mark.slow   # fast suite < 2 min; CI runs it (--run-slow)
def test_tekken_reader_equals_mistral_common_on_a_real_rank_table(tmp_path):
    """mistral-common ships Mistral's real Tekken rank table (tekken_240911.json: 150k ranks cut to 131072 ids,
    the pattern of Mistral Small 3.x). That file predates the `special_tokens` list, so the list Mistral Small 3.x
    files carry is added; the 131k learned ranks and the pattern are Mistral's own. Mistral's own Tekkenizer
    (tiktoken underneath) is the reference."""
    import re
    from pathlib import Path

    import mistral_common
    from mistral_common.tokens.tokenizers.tekken import Tekkenizer

    real = json.loads((Path(mistral_common.__file__).parent / "data" / "tekken_240911.json").read_text())
    assert len(real["vocab"]) == 150000 and real["config"]["default_vocab_size"] == 131072
    real["special_tokens"] = [{"rank": i, "token_str": s, "is_control": True} for i, s in enumerate(TEKKEN_SPECIALS)]
    real["config"]["version"] = "v7"
    path = tmp_path / "tekken.json"
    path.write_text(json.dumps(real))
    ref = Tekkenizer.from_file(str(path))
    ours = T.tekken_tokenizer(path.read_bytes(), path.name)
    assert ours.get_vocab_size() == ref.n_words == 131072

    for text in PROMPTS + CORPUS[-2:]:
        ids = ours.encode(text, add_special_tokens=False).ids
        assert ids == ref.encode(text, bos=False, eos=False), text
        assert ours.decode(ids, skip_special_tokens=False) == text
    # the whole [dev] prompt: control tokens where the template puts them, Mistral's BPE in between
    specials = "(" + "|".join(re.escape(s) for s in TEKKEN_SPECIALS) + ")"
    for prompt in PROMPTS[:5]:
        rendered = T.render(prompt, "mistral")
        expected = []
        for part in re.split(specials, rendered):
            if part in TEKKEN_SPECIALS:
                expected.append(ref.get_special_token(part))
            elif part:
                expected += ref.encode(part, bos=False, eos=False)
        assert ours.encode(rendered, add_special_tokens=False).ids == expected, prompt
