"""Which tokenizer a text encoder gets: a tokenizer.json beside it, the Tekken one inside it, or the bundled Qwen3."""
from __future__ import annotations

from pathlib import Path

from ...errors import ModelLoadError
from ..model.params import TextEncoderParams


def find_tokenizer(text_encoder_file: Path) -> Path | None:
    """tokenizer.json for a single text-encoder file: `<stem>.tokenizer.json`, `<stem>/tokenizer.json` or
    `tokenizer.json` beside it."""
    f = Path(text_encoder_file)
    for cand in (f.with_name(f.stem + ".tokenizer.json"), f.with_suffix("") / "tokenizer.json",
                 f.parent / "tokenizer.json"):
        if cand.is_file():
            return cand
    return None


def tokenizer_for(text_encoder, params: TextEncoderParams, tokenizer: Path | None = None):
    """The prompt tokenizer for a text encoder, first found of: the given tokenizer.json; one beside the
    text-encoder file (find_tokenizer); the Tekken tokenizer ComfyUI embeds in [dev] text-encoder files
    (`tekken_model`); for Qwen3 (klein) the bundled Qwen3 tokenizer."""
    from ..model.tokenizer import PromptTokenizer, read_tekken

    files = [Path(p) for p in ([text_encoder] if isinstance(text_encoder, (str, Path)) else text_encoder)]
    tokenizer = tokenizer or find_tokenizer(files[0])
    if tokenizer is not None:
        return PromptTokenizer.from_file(tokenizer, params)
    if params.kind == "mistral":
        data = read_tekken(files)
        if data is not None:
            return PromptTokenizer.from_tekken(data, params, f"Tekken tokenizer in {files[0].name}")
        raise ModelLoadError(f"no tokenizer for text encoder {files[0].name}: it carries no Tekken tokenizer "
                             f"(`tekken_model`); put its tokenizer.json next to it as {files[0].stem}.tokenizer.json")
    return PromptTokenizer.bundled_qwen3(params)
