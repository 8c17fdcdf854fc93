"""The one scrubber: every text that may carry a provider's words passes here before a user sees it.

Provider answers are echoed into exceptions and logs (error messages, moderation reasons, a body that
is not JSON). A provider that echoes the request - or a proxy that does - could put the API key into
that text, so every key this process has read, or could read from its environment, is replaced by
`***` first, and only then is the text cut to length (cutting first could leave a key's first
characters just before the cut, where a later redaction no longer recognises it).
"""
from __future__ import annotations

import os
import threading
from pathlib import Path

REDACTED = "***"
KEY_ENVS = ("RUNWARE_API_KEY", "BFL_API_KEY")
MIN_SECRET_CHARS = 8        # a shorter "key" (a typo, a test value) protects nothing and would mangle text

_seen: set[str] = set()
_lock = threading.Lock()


def remember_secret(value: str) -> None:
    """Called by whatever reads a key (e.g. from a *_FILE), so the scrubber knows it from then on."""
    if isinstance(value, str) and len(value) >= MIN_SECRET_CHARS:
        with _lock:
            _seen.add(value)


def _env_secrets() -> set[str]:
    found = set()
    for name in KEY_ENVS:
        value = os.environ.get(name, "").strip()
        if value:
            found.add(value)
        path = os.environ.get(name + "_FILE", "").strip()
        if path:
            try:
                value = Path(path).expanduser().read_text(encoding="utf-8").strip()
            except (OSError, ValueError):
                value = ""
            if value:
                found.add(value)
    return found


def known_secrets() -> list[str]:
    with _lock:
        secrets = set(_seen)
    secrets |= _env_secrets()
    # Longest first: a key that contains another key is replaced whole.
    return sorted((s for s in secrets if len(s) >= MIN_SECRET_CHARS), key=len, reverse=True)


def scrub(text, limit: int | None = None, extra: tuple[str | None, ...] = ()) -> str:
    """`text` as one string with every known key replaced by ***, THEN cut to `limit` characters."""
    text = text if isinstance(text, str) else str(text)
    for secret in sorted({s for s in extra if s and len(s) >= MIN_SECRET_CHARS}, key=len, reverse=True):
        text = text.replace(secret, REDACTED)
    for secret in known_secrets():
        if secret in text:
            text = text.replace(secret, REDACTED)
    if limit is not None and len(text) > limit:
        text = text[: max(limit - 1, 0)] + "…"
    return text


def log_unexpected(log, message: str, *args) -> None:
    """log.exception's job for a bug caught on purpose, with the traceback scrubbed: the exception's
    text (and any chained one's) may quote a request or a provider answer that carries a key."""
    import traceback

    log.error(message + "\n%s", *args, scrub(traceback.format_exc().rstrip()))
