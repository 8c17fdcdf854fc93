"""Prompt -> token ids with the `tokenizers` library and the chat templates diffusers renders.

klein (Qwen3): user turn + empty thinking block, right-padded with <|endoftext|>.
dev (Mistral): one <s>, BFL's system prompt, user turn; left-padded with <pad>.
Both truncate to 512 tokens; the rendered string already holds every special token.
"""
from __future__ import annotations

import base64
import functools
import json
from pathlib import Path

import torch

from ...errors import ModelLoadError
from .params import TextEncoderParams

# BFL's system prompt for FLUX.2 [dev] (black-forest-labs/flux2, also in diffusers' system_messages.py).
DEV_SYSTEM_MESSAGE = ("You are an AI that reasons about image descriptions. You give structured responses focusing on "
                      "object relationships, object\nattribution and actions without speculation.")

QWEN_PAD, MISTRAL_PAD = "<|endoftext|>", "<pad>"
QWEN_PAD_ID, MISTRAL_PAD_ID = 151643, 11

# Qwen2/2.5/3 byte-level BPE (vocab.json + merges.txt, Apache-2.0; see qwen3_tokenizer/NOTICE), shipped so
# that klein runs from a single text-encoder file.
QWEN_DIR = Path(__file__).resolve().parent / "qwen3_tokenizer"
# Qwen3's pre-tokenizer (transformers' Qwen2Tokenizer.PRETOKENIZE_REGEX; also in Qwen3's tokenizer.json).
QWEN_PATTERN = (r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"""
                r"""\s*[\r\n]+|\s+(?!\S)|\s+""")
# Qwen3's added tokens (tokenizer_config.json `added_tokens_decoder` of Qwen3-4B): (id, content, special).
QWEN3_ADDED_TOKENS = (
    (151643, "<|endoftext|>", True), (151644, "<|im_start|>", True), (151645, "<|im_end|>", True),
    (151646, "<|object_ref_start|>", True), (151647, "<|object_ref_end|>", True), (151648, "<|box_start|>", True),
    (151649, "<|box_end|>", True), (151650, "<|quad_start|>", True), (151651, "<|quad_end|>", True),
    (151652, "<|vision_start|>", True), (151653, "<|vision_end|>", True), (151654, "<|vision_pad|>", True),
    (151655, "<|image_pad|>", True), (151656, "<|video_pad|>", True), (151657, "<tool_call>", False),
    (151658, "</tool_call>", False), (151659, "<|fim_prefix|>", False), (151660, "<|fim_middle|>", False),
    (151661, "<|fim_suffix|>", False), (151662, "<|fim_pad|>", False), (151663, "<|repo_name|>", False),
    (151664, "<|file_sep|>", False), (151665, "<tool_response>", False), (151666, "</tool_response>", False),
    (151667, "<think>", False), (151668, "</think>", False),
)
TEKKEN_KEY = "tekken_model"


def render(prompt: str, kind: str) -> str:
    if kind == "qwen3":
        return f"<|im_start|>user\n{prompt}<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
    if kind == "mistral":
        return f"<s>[SYSTEM_PROMPT]{DEV_SYSTEM_MESSAGE}[/SYSTEM_PROMPT][INST]{prompt.replace('[IMG]', '')}[/INST]"
    raise ValueError(f"unknown text encoder kind {kind!r}")


class PromptTokenizer:
    def __init__(self, tokenizer, params: TextEncoderParams, source: str = "tokenizer"):
        self.tok = tokenizer
        self.tok.no_padding()
        self.tok.no_truncation()
        self.p = params
        self.source = source
        pad_tok, pad_default = (MISTRAL_PAD, MISTRAL_PAD_ID) if params.kind == "mistral" else (QWEN_PAD, QWEN_PAD_ID)
        pad = self.tok.token_to_id(pad_tok)
        self.pad_id = pad if pad is not None else pad_default

    @classmethod
    def from_file(cls, path: str | Path, params: TextEncoderParams) -> "PromptTokenizer":
        from tokenizers import Tokenizer

        try:
            tok = Tokenizer.from_file(str(path))
        except Exception as exc:  # tokenizers raises a bare Exception on bad JSON
            raise ModelLoadError(f"tokenizer file {Path(path).name} is not a valid tokenizer.json "
                                 f"({type(exc).__name__})") from None
        return cls(tok, params, str(path))

    @classmethod
    def bundled_qwen3(cls, params: TextEncoderParams) -> "PromptTokenizer":
        return cls(qwen3_tokenizer(), params, "bundled Qwen3 tokenizer")

    @classmethod
    def from_tekken(cls, data, params: TextEncoderParams, source: str = "tekken") -> "PromptTokenizer":
        return cls(tekken_tokenizer(data, source), params, source)

    def __call__(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """-> input_ids [B, 512] int64, attention_mask [B, 512] int64."""
        L = self.p.max_length
        ids_rows, mask_rows = [], []
        for prompt in prompts:
            ids = self.tok.encode(render(prompt, self.p.kind), add_special_tokens=False).ids[:L]
            pad = [self.pad_id] * (L - len(ids))
            if self.p.pad_left:
                ids_rows.append(pad + ids)
                mask_rows.append([0] * len(pad) + [1] * len(ids))
            else:
                ids_rows.append(ids + pad)
                mask_rows.append([1] * len(ids) + [0] * len(pad))
        return torch.tensor(ids_rows, dtype=torch.long), torch.tensor(mask_rows, dtype=torch.long)


# ------------------------------------------------------------------------------------ tokenizer builders

@functools.lru_cache(maxsize=1)
def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character map used by byte-level BPE vocabularies."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("\xa1"), ord("\xac") + 1)) \
        + list(range(ord("\xae"), ord("\xff") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def _byte_level(pattern: str, normalize_nfc: bool):
    from tokenizers import Regex, decoders, normalizers, pre_tokenizers

    pre = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(pattern), behavior="isolated", invert=False),
                                   pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    return (normalizers.NFC() if normalize_nfc else None), pre, decoders.ByteLevel()


@functools.lru_cache(maxsize=1)
def _qwen3_tokenizer_json() -> str:
    from tokenizers import AddedToken, Tokenizer
    from tokenizers.models import BPE

    vocab, merges = QWEN_DIR / "vocab.json", QWEN_DIR / "merges.txt"
    if not (vocab.is_file() and merges.is_file()):
        raise ModelLoadError(f"the bundled Qwen tokenizer is missing from {QWEN_DIR} (broken install?)")
    tok = Tokenizer(BPE.from_file(str(vocab), str(merges), dropout=None, unk_token=None, continuing_subword_prefix="",
                                  end_of_word_suffix="", fuse_unk=False, byte_fallback=False))
    tok.normalizer, tok.pre_tokenizer, tok.decoder = _byte_level(QWEN_PATTERN, True)
    for id_, content, special in QWEN3_ADDED_TOKENS:      # appended in id order: ids 151643.. as in Qwen3
        tok.add_special_tokens([AddedToken(content, special=special, normalized=False)])
        if tok.token_to_id(content) != id_:
            raise ModelLoadError(f"bundled Qwen tokenizer: {content} got id {tok.token_to_id(content)}, not {id_}")
    return tok.to_str()


def qwen3_tokenizer():
    """Qwen3's tokenizer (as in Qwen3's tokenizer.json) from the shipped vocab.json + merges.txt."""
    from tokenizers import Tokenizer

    return Tokenizer.from_str(_qwen3_tokenizer_json())


def read_tekken(paths) -> bytes | None:
    """The Mistral Tekken tokenizer JSON ComfyUI embeds in [dev] text-encoder files (uint8 tensor `tekken_model`)."""
    from safetensors import safe_open

    for path in ([paths] if isinstance(paths, (str, Path)) else paths):
        try:
            with safe_open(str(path), framework="pt", device="cpu") as f:
                if TEKKEN_KEY in f.keys():
                    return f.get_tensor(TEKKEN_KEY).numpy().tobytes()
        except Exception:       # unreadable files are reported by the weight loader with a clear message
            return None
    return None


def tekken_tokenizer(data, source: str = "tekken"):
    """Tekken JSON (bytes, str or dict) -> `tokenizers.Tokenizer` with Mistral's ids.

    Tekken is tiktoken-style BPE: `vocab` lists byte strings by rank, and merging is "lowest rank of the merged
    piece first". Merges are derived from the ranks (every split of a token into two lower-ranked tokens, ordered by
    the token's rank), as transformers' MistralConverter and mistral-common do. Ids: special tokens take ranks
    0..n_special-1 (missing ones filled with <SPECIAL_i>), vocab token of rank r gets id r + n_special, and the vocab
    is cut to `default_vocab_size`."""
    from tokenizers import AddedToken, Tokenizer
    from tokenizers.models import BPE

    try:
        d = data if isinstance(data, dict) else json.loads(data)
        cfg = d["config"]
        pattern = cfg["pattern"]
        specials = sorted((int(s["rank"]), str(s["token_str"])) for s in d.get("special_tokens") or [])
        ranked = sorted((int(v["rank"]), base64.b64decode(v["token_bytes"])) for v in d["vocab"])
    except (ValueError, KeyError, TypeError) as exc:
        raise ModelLoadError(f"{source}: not a Tekken tokenizer ({type(exc).__name__}: {exc})"[:200]) from None
    if not specials:
        raise ModelLoadError(f"{source}: Tekken tokenizer without special_tokens (old format) is not supported")
    if [r for r, _ in specials] != list(range(len(specials))):
        raise ModelLoadError(f"{source}: Tekken special token ranks are not 0..{len(specials) - 1}")
    n_special = int(cfg.get("default_num_special_tokens") or len(specials))
    if [r for r, _ in ranked] != list(range(len(ranked))):
        raise ModelLoadError(f"{source}: Tekken vocab ranks are not contiguous")
    if cfg.get("default_vocab_size"):
        ranked = ranked[: int(cfg["default_vocab_size"]) - n_special]
    ranks = {b: r for r, b in ranked}
    enc = _bytes_to_unicode()

    def s(b: bytes) -> str:
        return "".join(enc[x] for x in b)

    vocab: dict[str, int] = {s(b): r + n_special for b, r in ranks.items()}
    merges = []
    for b, r in ranks.items():
        if len(b) < 2:
            continue
        local = [(ranks[b[:i]], ranks[b[i:]], b[:i], b[i:]) for i in range(1, len(b))
                 if b[:i] in ranks and b[i:] in ranks]
        merges.extend((r, lr, rr, left, right) for lr, rr, left, right in local)
    merges.sort(key=lambda m: m[:3])
    names = [t for _, t in specials] + [f"<SPECIAL_{i}>" for i in range(len(specials), n_special)]
    for i, name in enumerate(names):
        vocab[name] = i
    tok = Tokenizer(BPE(vocab, [(s(m[3]), s(m[4])) for m in merges], fuse_unk=False, ignore_merges=True))
    _, tok.pre_tokenizer, tok.decoder = _byte_level(pattern, False)
    tok.add_special_tokens([AddedToken(n, special=True, normalized=False) for n in names])
    return tok
