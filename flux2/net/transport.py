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
import ipaddress
import logging
import random
import time
from dataclasses import dataclass
from typing import Callable

import httpx

from ..errors import Cancelled, ConfigError, ProviderError, ProviderTimeout
from .keys import origin
from .netguard import PrivateAddress, guarded_transport, is_public_address, limits

log = logging.getLogger("comfyui_flux2.remote")

USER_AGENT = "comfyui-flux2/0.1 (+https://github.com/comfyui-flux2)"
SUBMIT_RETRY_STATUSES = frozenset({429, 503, 504})
GET_RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
MAX_DOWNLOAD_BYTES = 64 * 1024 * 1024
# An API answer (submit, poll, lookup) is read streaming and given up past this size. Neither provider
# documents a size for its JSON answers; the pack asks for results as URLs (outputType "URL"; BFL always
# answers with a result.sample URL), so an answer is a few hundred bytes per task, and 8 MiB still holds
# a 4 MP image inline as base64 (about 5.6 MB for a 4 MP JPEG) should a provider send one anyway.
MAX_ANSWER_BYTES = 8 * 1024 * 1024
MAX_REDIRECTS = 5


@dataclass(frozen=True)
class Deadlines:
    connect_s: float = 10.0
    read_s: float = 180.0        # longest silence within one answer
    request_s: float = 300.0     # overall deadline of one HTTP exchange: a synchronous FLUX.2 [max] task
                                 # with references can take minutes, a peer dribbling bytes cannot hold longer
    download_s: float = 60.0     # overall deadline of one download attempt, redirects included (retries: more attempts)
    total_s: float = 600.0       # overall deadline for one task counted from its submit, polling and recovery
                                 # included, whatever each poll does (BFL documents 600 s)
    lookup_s: float = 120.0      # after a lost answer: how long the task may stay unknown to every lookup
                                 # (Runware getResponse, getTaskDetails) before it is named "may still be billed"
    retries: int = 4
    backoff_s: float = 1.0
    backoff_cap_s: float = 10.0


class LostResponse(ProviderError):
    """The submit was sent but its answer was lost; the provider may have accepted (and billed) it.
    `partial`: the bytes of the answer that did arrive before it was cut (they may name the task)."""

    partial: bytes = b""


class Garbled(LostResponse):
    """HTTP 200 whose body cannot be read (not JSON, cut short): as good as lost, and as billable."""


class NotSent(ProviderError):
    """The request never reached the provider (connection refused, connect timeout): nothing billed."""


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


def is_loopback_host(host: str) -> bool:
    host = (host or "").lower().strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class Transport:
    """httpx client bound to one provider: the key header goes only to `auth_origins`.

    Every request has an overall deadline (`Deadlines.request_s`, downloads `download_s`) enforced at
    the socket level (netguard), on top of httpx's per-read timeout.
    """

    def __init__(self, provider: str, auth_origins: list[str], auth_headers: Callable[[], dict[str, str]],
                 deadlines: Deadlines = Deadlines(), transport: httpx.BaseTransport | None = None):
        self.provider = provider
        self._auth_origins = {origin(u) for u in auth_origins}
        # Loopback (test) mode: the provider itself is on this machine. Then, and only then, result
        # URLs may point at loopback - and only at the configured provider origin itself.
        self._loopback_origins = {o for o in self._auth_origins if is_loopback_host(o[1])}
        self._auth_headers = auth_headers
        self.deadlines = deadlines
        timeout = httpx.Timeout(deadlines.read_s, connect=deadlines.connect_s)
        # Redirects are never followed automatically: a keyed call must not carry its key (x-key) to
        # another host, and each hop of a download is checked like the first URL (download()).
        self._client = httpx.Client(transport=transport or guarded_transport(), timeout=timeout,
                                    follow_redirects=False, headers={"User-Agent": USER_AGENT})

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

    def _window(self, deadline: float | None, what: str) -> float:
        """Seconds this exchange may take: `request_s`, cut to what is left of the task's deadline."""
        if deadline is None:
            return self.deadlines.request_s
        left = deadline - time.monotonic()
        if left <= 0:
            raise ProviderTimeout(f"{self.provider}: {what}: the task's deadline has passed")
        return min(self.deadlines.request_s, left)

    def _exchange(self, method: str, url: str, headers: dict, window: float, body=None) -> httpx.Response:
        """One request whose answer is read streaming, all within `window` seconds, and stopped past
        MAX_ANSWER_BYTES (a huge or endless answer is never held whole). Returns a response with the
        whole (decoded) body; a read cut short raises the httpx error with the bytes read so far in
        `partial` (a cut submit answer may still name its task)."""
        request = self._client.build_request(method, url, json=body, headers=headers)
        chunks: list[bytes] = []
        with limits(window):
            response = self._client.send(request, stream=True)
            try:
                size = 0
                for chunk in response.iter_bytes():
                    size += len(chunk)
                    if size > MAX_ANSWER_BYTES:
                        raise _TooLarge(f"{self.provider}: the answer is larger than {MAX_ANSWER_BYTES >> 20} MiB; "
                                        "not read")
                    chunks.append(chunk)
            except httpx.TransportError as exc:
                exc.partial = b"".join(chunks)
                raise
            finally:
                response.close()
        headers_out = [(k, v) for k, v in response.headers.multi_items()
                       if k.lower() not in ("content-encoding", "content-length", "transfer-encoding")]
        return httpx.Response(response.status_code, headers=headers_out, content=b"".join(chunks), request=request)

    def submit(self, url: str, body, is_cancelled=None, deadline: float | None = None) -> httpx.Response:
        """POST a billable task. Retries only where the provider cannot have accepted it. `deadline`
        (time.monotonic()): the task's own deadline, which no exchange may pass."""
        headers = self._keyed_headers(url)
        for attempt in range(self.deadlines.retries + 1):
            if is_cancelled is not None and is_cancelled():
                raise Cancelled("cancelled by the user")
            window = self._window(deadline, "submit")
            try:
                response = self._exchange("POST", url, headers, window, body)
            except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
                if attempt == self.deadlines.retries:
                    raise NotSent(f"{self.provider}: cannot connect to {origin(url)[1]} "
                                  f"({type(exc).__name__})", retryable=True) from None
                sleep_with_cancel(self._backoff(attempt), is_cancelled)
                continue
            except (httpx.ReadTimeout, httpx.WriteTimeout, httpx.RemoteProtocolError, httpx.ReadError,
                    httpx.WriteError, httpx.PoolTimeout) as exc:
                lost = LostResponse(f"{self.provider}: the request was sent but no whole answer came "
                                    f"({type(exc).__name__}, deadline {window:g}s)")
                lost.partial = getattr(exc, "partial", b"")
                raise lost from None
            except _TooLarge as exc:
                raise Garbled(str(exc), status=200) from None     # the task may have run: as good as lost
            if response.status_code in SUBMIT_RETRY_STATUSES and attempt < self.deadlines.retries:
                wait = retry_after_s(response, self._backoff(attempt), self.deadlines.backoff_cap_s)
                log.info("%s answered %s; retrying in %.1fs", self.provider, response.status_code, wait)
                sleep_with_cancel(wait, is_cancelled)
                continue
            return response
        raise AssertionError("unreachable")

    def get(self, url: str, *, keyed: bool, is_cancelled=None, retry_statuses=GET_RETRY_STATUSES,
            deadline: float | None = None) -> httpx.Response:
        """Idempotent keyed GET (a poll) with retries on transient faults; never follows a redirect.
        Every attempt, and the retries together, end by `deadline` (the task's, time.monotonic())."""
        headers = self._keyed_headers(url) if keyed else {}
        last, tries = "no attempt", 0
        for attempt in range(self.deadlines.retries + 1):
            if is_cancelled is not None and is_cancelled():
                raise Cancelled("cancelled by the user")
            if tries and deadline is not None and time.monotonic() >= deadline:
                break                          # the task's deadline: say what the last try met
            window = self._window(deadline, "poll")
            tries += 1
            try:
                response = self._exchange("GET", url, headers, window)
                if response.status_code in retry_statuses and attempt < self.deadlines.retries:
                    last = f"HTTP {response.status_code}"
                    sleep_with_cancel(retry_after_s(response, self._backoff(attempt), self.deadlines.backoff_cap_s),
                                      is_cancelled)
                    continue
                return response
            except _TooLarge as exc:
                last = str(exc)
                break                          # the same answer would come again
            except httpx.TransportError as exc:
                last = type(exc).__name__
                if attempt == self.deadlines.retries:
                    break
                sleep_with_cancel(self._backoff(attempt), is_cancelled)
        raise ProviderError(f"{self.provider}: GET {origin(url)[1]} failed after {tries} tries ({last})",
                            retryable=True)

    # -- result downloads ---------------------------------------------------------------------
    def check_result_url(self, url, what: str) -> str:
        """A result URL must be https on the default port of a public host; in loopback (test) mode
        also the configured provider origin itself. Anything else is refused before any connection."""
        if not isinstance(url, str) or not url or not url.isprintable() or any(c.isspace() for c in url) \
                or "\\" in url:
            raise ProviderError(f"{self.provider}: {what} has no usable URL")
        try:
            parsed = httpx.URL(url)
            scheme, host, port = origin(url)
        except (ValueError, httpx.InvalidURL):
            raise ProviderError(f"{self.provider}: {what} has an unparseable URL") from None
        if (scheme, host, port) in self._loopback_origins and parsed.host.lower() == host:
            return url
        if parsed.userinfo:
            raise ProviderError(f"{self.provider}: {what} URL carries user info; refused")
        if scheme != "https":
            raise ProviderError(f"{self.provider}: {what} URL uses {scheme or 'no'} scheme; only https is fetched")
        if port != 443 or parsed.host.lower() != host or not host:
            raise ProviderError(f"{self.provider}: {what} URL is on {host or '?'}:{port}; only port 443 is fetched")
        literal = host.strip("[]")
        if host == "localhost" or host.endswith((".localhost", ".local", ".internal")) or \
                (_is_ip(literal) and not is_public_address(literal)):
            raise ProviderError(f"{self.provider}: {what} URL points at a private address ({host}); refused")
        return url

    def download(self, url: str, what: str) -> bytes:
        """Fetch a result file at once (provider URLs expire). No key is sent; each redirect hop is
        checked like the first URL; the body is streamed and dropped the moment it passes the size
        limit; each attempt (redirects included) ends by `download_s`, and there are `retries` + 1.

        Not cancellable: the image is already paid for, and fetching it takes a moment, while a
        cancelled download would lose it (its URL expires within minutes)."""
        d = self.deadlines
        last = "no attempt"
        for attempt in range(d.retries + 1):
            try:
                # Loopback (test) mode dials the local server; check_result_url allows only its origin there.
                with limits(d.download_s, public_only=not self._loopback_origins):
                    status, data = self._fetch_following_redirects(url, what)
            except httpx.TransportError as exc:
                if isinstance(exc.__cause__, PrivateAddress):
                    raise ProviderError(f"{self.provider}: {what} URL host resolves to a private address; "
                                        "refused") from None
                last = type(exc).__name__
            except _CutShort as exc:
                last = str(exc)
            else:
                if status in GET_RETRY_STATUSES:
                    last = f"HTTP {status}"
                elif status in (403, 404, 410):
                    raise ProviderError(f"{self.provider}: {what} URL answered HTTP {status} "
                                        "(expired or removed)", status=status)
                elif status != 200:
                    raise ProviderError(f"{self.provider}: downloading {what} failed with HTTP {status}",
                                        status=status)
                else:
                    return data
            if attempt < d.retries:
                time.sleep(self._backoff(attempt))
        raise ProviderError(f"{self.provider}: GET {origin(url)[1]} failed after "
                            f"{d.retries + 1} tries ({last})", retryable=True)

    def _fetch_following_redirects(self, url: str, what: str) -> tuple[int, bytes]:
        for _ in range(MAX_REDIRECTS + 1):
            self.check_result_url(url, what)
            with self._client.stream("GET", url) as response:
                if response.is_redirect:
                    location = response.headers.get("location", "")
                    url = str(response.url.join(location))
                    continue
                if response.status_code != 200:
                    return response.status_code, b""
                return 200, self._read_bounded(response, what)
        raise ProviderError(f"{self.provider}: {what} redirects more than {MAX_REDIRECTS} times")

    def _read_bounded(self, response: httpx.Response, what: str) -> bytes:
        expected = response.headers.get("content-length")
        expected = int(expected) if expected is not None and expected.isdigit() else None
        too_big = ProviderError(f"{self.provider}: {what} is larger than {MAX_DOWNLOAD_BYTES >> 20} MiB; "
                                "not downloaded")
        if expected is not None and expected > MAX_DOWNLOAD_BYTES:
            raise too_big
        chunks, size = [], 0
        for chunk in response.iter_bytes():     # decoded: a compressed bomb is stopped by size too
            size += len(chunk)
            if size > MAX_DOWNLOAD_BYTES:
                raise too_big                 # stop reading now: never hold more than the limit
            chunks.append(chunk)
        data = b"".join(chunks)
        # content-length counts the bytes on the wire: the decoded size unless the body is compressed.
        received = response.num_bytes_downloaded if response.headers.get("content-encoding") else len(data)
        if expected is not None and expected != received:
            raise _CutShort(f"cut short: {received} of {expected} bytes")
        return data


class _CutShort(Exception):
    """A download ended before its announced length (retried like a dropped connection)."""


class _TooLarge(Exception):
    """An API answer past MAX_ANSWER_BYTES: dropped unread."""


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
        return True
    except ValueError:
        return False


def json_body(response: httpx.Response, provider: str):
    """The answer's JSON; a 200 that is not JSON (garbage, cut short) is Garbled: the task may have run."""
    try:
        return response.json()
    except ValueError:
        if response.status_code == 200:
            raise Garbled(f"{provider}: HTTP 200 with a body that is not JSON (garbled or cut short)",
                          status=200) from None
        raise ProviderError(f"{provider}: HTTP {response.status_code} with a body that is not JSON",
                            status=response.status_code,
                            retryable=response.status_code in GET_RETRY_STATUSES) from None

