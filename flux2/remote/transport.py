"""One HTTP helper for every provider: deadlines, safe retries, key-to-host binding, downloads.

Retry rules (why each one cannot bill twice):
- connection refused / connect timeout: the request never reached the provider, so any call retries;
- HTTP 429, 503, 504 on a submit: the provider refused the task for capacity before running it;
- GET (poll, download) is free and idempotent, so it also retries on read timeouts and 500/502.
A submit that was sent but whose answer was lost (read timeout, dropped connection) is NOT re-sent:
the caller recovers by task id (Runware getResponse, BFL polling URL) or reports the task id.
"""
from __future__ import annotations

import email.utils
import logging
import random
import time
from dataclasses import dataclass
from typing import Callable

import httpx

from ..errors import Cancelled, ConfigError, ProviderError, ProviderTimeout
from .keys import origin

log = logging.getLogger("comfyui_flux2.remote")

USER_AGENT = "comfyui-flux2/0.1 (+https://github.com/comfyui-flux2)"
SUBMIT_RETRY_STATUSES = frozenset({429, 503, 504})
GET_RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
MAX_DOWNLOAD_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True)
class Deadlines:
    connect_s: float = 10.0
    read_s: float = 180.0        # a synchronous FLUX.2 [max] task with references can take minutes
    download_s: float = 60.0
    total_s: float = 600.0       # overall deadline for one task, polling included
    retries: int = 4
    backoff_s: float = 1.0
    backoff_cap_s: float = 10.0


class LostResponse(ProviderError):
    """The submit was sent but its answer was lost; the provider may have accepted (and billed) it."""


def sleep_with_cancel(seconds: float, is_cancelled: Callable[[], bool] | None) -> None:
    end = time.monotonic() + seconds
    while True:
        left = end - time.monotonic()
        if left <= 0:
            return
        if is_cancelled is not None and is_cancelled():
            raise Cancelled("cancelled by the user")
        time.sleep(min(left, 0.1))


def retry_after_s(response: httpx.Response, fallback: float, cap: float) -> float:
    value = response.headers.get("retry-after")
    if value:
        try:
            return min(max(float(value), 0.0), cap * 6)
        except ValueError:
            parsed = email.utils.parsedate_to_datetime(value) if value else None
            if parsed is not None:
                return min(max(parsed.timestamp() - time.time(), 0.0), cap * 6)
    return fallback


class Transport:
    """httpx client bound to one provider: the key header goes only to `auth_origins`."""

    def __init__(self, provider: str, auth_origins: list[str], auth_headers: Callable[[], dict[str, str]],
                 deadlines: Deadlines = Deadlines(), transport: httpx.BaseTransport | None = None):
        self.provider = provider
        self._auth_origins = {origin(u) for u in auth_origins}
        self._auth_headers = auth_headers
        self.deadlines = deadlines
        timeout = httpx.Timeout(deadlines.read_s, connect=deadlines.connect_s)
        # Redirects are never followed for keyed calls: a redirect could carry a custom key header
        # (x-key) to another host. Downloads follow redirects but carry no key.
        self._client = httpx.Client(transport=transport, timeout=timeout, follow_redirects=False,
                                    headers={"User-Agent": USER_AGENT})

    def close(self) -> None:
        self._client.close()

    def may_authenticate(self, url: str) -> bool:
        return origin(url) in self._auth_origins

    def _keyed_headers(self, url: str) -> dict[str, str]:
        if not self.may_authenticate(url):
            raise ConfigError(f"refusing to send the {self.provider} key to {origin(url)[1]}: "
                              "not the configured provider host")
        return self._auth_headers()

    def _backoff(self, attempt: int) -> float:
        d = self.deadlines
        return min(d.backoff_s * (1.5 ** attempt), d.backoff_cap_s) * (0.8 + 0.4 * random.random())

    def submit(self, url: str, body, is_cancelled=None) -> httpx.Response:
        """POST a billable task. Retries only where the provider cannot have accepted it."""
        headers = self._keyed_headers(url)
        for attempt in range(self.deadlines.retries + 1):
            if is_cancelled is not None and is_cancelled():
                raise Cancelled("cancelled by the user")
            try:
                response = self._client.post(url, json=body, headers=headers)
            except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
                if attempt == self.deadlines.retries:
                    raise ProviderError(f"{self.provider}: cannot connect to {origin(url)[1]} "
                                        f"({type(exc).__name__})", retryable=True) from None
                sleep_with_cancel(self._backoff(attempt), is_cancelled)
                continue
            except (httpx.ReadTimeout, httpx.WriteTimeout, httpx.RemoteProtocolError, httpx.ReadError,
                    httpx.WriteError, httpx.PoolTimeout) as exc:
                raise LostResponse(f"{self.provider}: the request was sent but no answer came "
                                   f"({type(exc).__name__})") from None
            if response.status_code in SUBMIT_RETRY_STATUSES and attempt < self.deadlines.retries:
                wait = retry_after_s(response, self._backoff(attempt), self.deadlines.backoff_cap_s)
                log.info("%s answered %s; retrying in %.1fs", self.provider, response.status_code, wait)
                sleep_with_cancel(wait, is_cancelled)
                continue
            return response
        raise AssertionError("unreachable")

    def get(self, url: str, *, keyed: bool, is_cancelled=None, timeout_s: float | None = None,
            retry_statuses=GET_RETRY_STATUSES) -> httpx.Response:
        """Idempotent GET (poll or download) with retries on transient faults."""
        headers = self._keyed_headers(url) if keyed else {}
        timeout = httpx.Timeout(timeout_s or self.deadlines.read_s, connect=self.deadlines.connect_s)
        last = "no attempt"
        for attempt in range(self.deadlines.retries + 1):
            if is_cancelled is not None and is_cancelled():
                raise Cancelled("cancelled by the user")
            try:
                response = self._client.get(url, headers=headers, timeout=timeout, follow_redirects=not keyed)
                if response.status_code in retry_statuses and attempt < self.deadlines.retries:
                    last = f"HTTP {response.status_code}"
                    sleep_with_cancel(retry_after_s(response, self._backoff(attempt), self.deadlines.backoff_cap_s),
                                      is_cancelled)
                    continue
                return response
            except httpx.TransportError as exc:
                last = type(exc).__name__
                if attempt == self.deadlines.retries:
                    break
                sleep_with_cancel(self._backoff(attempt), is_cancelled)
        raise ProviderError(f"{self.provider}: GET {origin(url)[1]} failed after "
                            f"{self.deadlines.retries + 1} tries ({last})", retryable=True)

    def download(self, url: str, what: str) -> bytes:
        """Fetch a result file at once (provider URLs expire). No key is sent; size is bounded.

        Not cancellable: the image is already paid for, and fetching it takes a moment, while a
        cancelled download would lose it (its URL expires within minutes)."""
        scheme = origin(url)[0]
        if scheme not in ("https", "http"):
            raise ProviderError(f"{self.provider}: {what} has an unsupported URL scheme {scheme!r}")
        response = self.get(url, keyed=False, timeout_s=self.deadlines.download_s)
        if response.status_code in (403, 404, 410):
            raise ProviderError(f"{self.provider}: {what} URL answered HTTP {response.status_code} "
                                "(expired or removed)", status=response.status_code)
        if response.status_code != 200:
            raise ProviderError(f"{self.provider}: downloading {what} failed with HTTP {response.status_code}",
                                status=response.status_code)
        data = response.content
        if len(data) > MAX_DOWNLOAD_BYTES:
            raise ProviderError(f"{self.provider}: {what} is larger than {MAX_DOWNLOAD_BYTES >> 20} MiB")
        expected = response.headers.get("content-length")
        if expected is not None and expected.isdigit() and int(expected) != len(data):
            raise ProviderError(f"{self.provider}: {what} download was cut short "
                                f"({len(data)} of {expected} bytes)", retryable=True)
        return data


def json_body(response: httpx.Response, provider: str):
    try:
        return response.json()
    except ValueError:
        raise ProviderError(f"{provider}: HTTP {response.status_code} with a body that is not JSON",
                            status=response.status_code) from None


def deadline_check(started: float, total_s: float, provider: str, what: str) -> None:
    if time.monotonic() - started > total_s:
        raise ProviderTimeout(f"{provider}: {what} did not finish within {total_s:.0f}s")
