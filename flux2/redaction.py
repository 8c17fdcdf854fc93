"""The one scrubber: every text that may carry a provider's words passes here before a user sees it.

Provider answers are echoed into exceptions and logs (error messages, moderation reasons, a body that
is not JSON). A provider that echoes the request - or a proxy that does - could put the API key into
that text, so every key this process has read, or could read from its environment, is replaced by
`***` first, and only then is the text cut to length (cutting first could leave a key's first
characters just before the cut, where a later redaction no longer recognises it).
"""
from __future__ import annotations

import functools
import os
import re
import threading
from pathlib import Path

REDACTED = "***"
KEY_ENVS = ("RUNWARE_API_KEY", "BFL_API_KEY")
# A run of this many consecutive characters of a key (in any case) is key material: a provider or proxy
# that echoes only part of the key, or upper-cases it, still gets it replaced. 8 characters of a random
# key (Runware's 32 alphanumerics, BFL's UUIDs) turn up by chance in other text about once in 16^8 to
# 36^8 positions, so the false positives are words a made-up key shares with the text (a test key
# "rw-test-key-..." takes "test-key" with it).
FRAGMENT_CHARS = 8
# Characters that can be part of a key: a key shorter than FRAGMENT_CHARS is replaced where it stands
# alone (no such character on either side), in any case; inside a longer word it is left, or a 4-letter
# "key" would cut every word that contains it.
_KEY_CHAR = r"[A-Za-z0-9_\-]"
_SEPARATORS = re.compile(r"[-_]")

_seen: set[str] = set()
_lock = threading.Lock()


def remember_secret(value: str) -> None:
    """Called by whatever reads a key (e.g. from a *_FILE), so the scrubber knows it from then on."""
    if isinstance(value, str) and value.strip():
        with _lock:
            _seen.add(value.strip())


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
    return sorted(secrets, key=len, reverse=True)


@functools.lru_cache(maxsize=16)
def _pattern(secret: str) -> re.Pattern:
    """Long key: a match at every position where FRAGMENT_CHARS characters of the key start (a lookahead,
    so overlapping windows all match; a longer run is a chain of them). Short key: the key standing alone.
    Either way in any case, and on the text as it is (lower-casing can change a text's length)."""
    n = FRAGMENT_CHARS
    if len(secret) >= n:
        # Windows of the key as written, and of the key without separators with any separator (or none)
        # between its characters: an echo that reformats a UUID-style key (BFL's) as 32 bare hex digits,
        # or with underscores, carries runs that straddle where the hyphens were.
        # (A window without a separator is one of the loose ones too: kept once, in the loose form, which
        # halves the alternatives for a key without separators such as Runware's.)
        literal = {w for i in range(len(secret) - n + 1) if _SEPARATORS.search(w := secret[i:i + n].lower())}
        bare = _SEPARATORS.sub("", secret).lower()
        loose = {"[-_]?".join(map(re.escape, bare[i:i + n])) for i in range(len(bare) - n + 1)}
        windows = sorted(map(re.escape, literal)) + sorted(loose)
        return re.compile("(?=(" + "|".join(windows) + "))", re.IGNORECASE)
    return re.compile(rf"(?<!{_KEY_CHAR})({re.escape(secret)})(?!{_KEY_CHAR})", re.IGNORECASE)


def _redact(text: str, secrets) -> str:
    spans = sorted(m.span(1) for secret in secrets for m in _pattern(secret).finditer(text))
    if not spans:
        return text
    out, last = [], 0
    for start, end in spans:
        if start < last:                       # overlaps the one before (windows of one run, two keys)
            last = max(last, end)
            continue
        out.append(text[last:start])
        out.append(REDACTED)
        last = end
    out.append(text[last:])
    return "".join(out)


def _redact_head(text: str, secrets: set, limit: int | None) -> str:
    """_redact on as much of `text` as `limit` needs (a huge answer body stays cheap): a head that, once
    redacted, is still a key's length longer than `limit`, so a key cut where the head ends lies past
    what is shown."""
    if limit is None:
        return _redact(text, secrets)
    longest = max(map(len, secrets))
    window = limit + longest + 1
    while True:
        head = _redact(text[:window], secrets)
        if window >= len(text) or len(head) >= limit + longest:
            return head
        window *= 2


def scrub(text, limit: int | None = None, extra: tuple[str | None, ...] = ()) -> str:
    """`text` as one string with every known key (and any run of 8+ of its characters, in any case)
    replaced by ***, THEN cut to `limit` characters."""
    text = text if isinstance(text, str) else str(text)
    secrets = {s for s in extra if s} | set(known_secrets())
    if secrets:
        text = _redact_head(text, secrets, limit)
    if limit is not None and len(text) > limit:
        text = text[: max(limit - 1, 0)] + "…"
    return text


def log_unexpected(log, message: str, *args) -> None:
    """log.exception's job for a bug caught on purpose, with the traceback scrubbed: the exception's
    text (and any chained one's) may quote a request or a provider answer that carries a key."""
    import traceback

    log.error(message + "\n%s", *args, scrub(traceback.format_exc().rstrip()))
