"""Prompt -> token ids with the `tokenizers` library and the chat templates diffusers renders.

klein (Qwen3): user turn + empty thinking block, right-padded with <|endoftext|>.
dev (Mistral): one <s>, BFL's system prompt, user turn; left-padded with <pad>.
Both truncate to 512 tokens; the rendered string already holds every special token.
"""
from __future__ import annotations

from pathlib import Path

import torch

from ..errors import ModelLoadError
from .params import TextEncoderParams

# BFL's system prompt for FLUX.2 [dev] (black-forest-labs/flux2, also in diffusers' system_messages.py).
DEV_SYSTEM_MESSAGE = ("You are an AI that reasons about image descriptions. You give structured responses focusing on "
                      "object relationships, object\nattribution and actions without speculation.")

QWEN_PAD, MISTRAL_PAD = "<|endoftext|>", "<pad>"
QWEN_PAD_ID, MISTRAL_PAD_ID = 151643, 11


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
