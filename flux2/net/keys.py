"""API keys and provider hosts, from the environment only (never from workflow content)."""
from __future__ import annotations

import functools
import os
from pathlib import Path
from urllib.parse import urlsplit

import httpx

from ..errors import AuthError, ConfigError
from ..redaction import remember_secret


def read_key(env_name: str) -> str:
    """The key from `ENV_NAME`, or from the file named by `ENV_NAME_FILE` (e.g. a mounted secret)."""
    key = os.environ.get(env_name, "").strip()
    if not key:
        path = os.environ.get(env_name + "_FILE", "").strip()
        if path:
            try:
                key = Path(path).expanduser().read_text(encoding="utf-8").strip()
            except OSError as exc:
                raise AuthError(f"cannot read {env_name}_FILE ({exc.strerror})") from None
    if not key:
        raise AuthError(f"no API key: set {env_name} in the environment of ComfyUI or the CLI "
                        f"(or {env_name}_FILE to a file holding it)")
    if any(c.isspace() for c in key) or not key.isprintable():
        raise AuthError(f"{env_name} contains whitespace or control characters")
    remember_secret(key)
    return key


def base_url(env_name: str, default: str) -> str:
    """The provider URL from `env_name` (else `default`), checked; errors are one line that never
    repeats credentials the URL may carry."""
    return _checked_url(env_name, os.environ.get(env_name, "").strip() or default)


@functools.lru_cache(maxsize=64)
def _checked_url(env_name: str, url: str) -> str:
    """base_url's checks, kept per (variable, value): a batch asks for the URL a few times per task, and parsing
    it twice each time cost as much CPU as the request itself (a failing URL is not kept: it raises each time)."""
    key_env = env_name[: -len("_URL")] + "_KEY" if env_name.endswith("_URL") else "the key variable"
    if "@" in url.split("?")[0].split("#")[0]:
        # user:password@host: httpx would send it as Basic auth, the provider answers a misleading 401.
        raise ConfigError(f"{env_name} carries user info (user:password@ before the host); give the URL "
                          f"without it - the credentials go in {key_env}")
    try:
        parts = urlsplit(url)
        parts.port          # a port that is not a number ("abc") or out of range raises ValueError here
        # httpx parses it again when sending: what it cannot parse (http://[::1]x) must fail here, in one line.
        sent = httpx.URL(url)
    except (ValueError, httpx.InvalidURL) as exc:
        raise ConfigError(f"{env_name} is not a valid URL ({exc}): {url[:80]!r}") from None
    if (sent.host or "").lower() != (parts.hostname or "").lower():
        raise ConfigError(f"{env_name} is read two ways (host {sent.host!r} or {parts.hostname!r}): {url[:80]!r}")
    if parts.scheme not in ("https", "http") or not parts.netloc or not parts.hostname:
        raise ConfigError(f"{env_name} must be an http(s) URL, got {url[:80]!r}")
    if parts.scheme == "http" and parts.hostname not in ("127.0.0.1", "localhost", "::1"):
        # A key must never travel in clear text; plain http is only for loopback test servers.
        raise ConfigError(f"{env_name} must use https (plain http is allowed for loopback only)")
    return url.rstrip("/")


def origin(url: str) -> tuple[str, str, int | None]:
    parts = urlsplit(url)
    port = parts.port or {"https": 443, "http": 80}.get(parts.scheme)
    return parts.scheme, (parts.hostname or "").lower(), port
