"""Socket-level guards under httpx: an overall deadline per request, and public addresses for results.

httpx's timeouts bound each single read, so a server that dribbles one byte every few seconds holds a
request forever. Here every socket read, write, TLS handshake and connect of a request gets at most
the time left until that request's overall deadline, so the deadline holds whatever the peer does.

Result downloads name hosts the provider chose. Their addresses are checked at connect time (after
DNS, on the address actually dialled, so a name that resolves to a private address is refused even
if it resolved to a public one a moment earlier).

The limits ride on a thread-local: httpx's sync client does all socket work of a request in the
calling thread, so `limits(...)` around the call applies to exactly that request.
"""
from __future__ import annotations

import contextlib
import ipaddress
import os
import socket
import threading
import time

import httpcore
import httpx

_local = threading.local()


class PrivateAddress(httpcore.ConnectError):
    """A result host resolved to a loopback, private, link-local or otherwise non-public address."""


@contextlib.contextmanager
def limits(deadline_s: float | None, public_only: bool = False):
    """Within the block, this thread's requests end by `deadline_s` from now and (optionally) dial
    public addresses only."""
    saved = getattr(_local, "deadline", None), getattr(_local, "public_only", False)
    _local.deadline = None if deadline_s is None else time.monotonic() + deadline_s
    _local.public_only = public_only
    try:
        yield
    finally:
        _local.deadline, _local.public_only = saved


def _clamp(timeout: float | None, error: type[Exception]) -> float | None:
    deadline = getattr(_local, "deadline", None)
    if deadline is None:
        return timeout
    left = deadline - time.monotonic()
    if left <= 0:
        raise error("the request's overall deadline has passed")
    return left if timeout is None else min(timeout, left)


def is_public_address(address: str) -> bool:
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast


class _GuardedStream(httpcore.NetworkStream):
    def __init__(self, inner: httpcore.NetworkStream):
        self._inner = inner

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._inner.read(max_bytes, _clamp(timeout, httpcore.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._inner.write(buffer, _clamp(timeout, httpcore.WriteTimeout))

    def close(self) -> None:
        self._inner.close()

    def start_tls(self, ssl_context, server_hostname=None, timeout=None) -> httpcore.NetworkStream:
        return _GuardedStream(self._inner.start_tls(ssl_context, server_hostname,
                                                    _clamp(timeout, httpcore.ConnectTimeout)))

    def get_extra_info(self, info: str):
        return self._inner.get_extra_info(info)


class _GuardedBackend(httpcore.NetworkBackend):
    def __init__(self):
        self._inner = httpcore.SyncBackend()

    def connect_tcp(self, host, port, timeout=None, local_address=None, socket_options=None):
        timeout = _clamp(timeout, httpcore.ConnectTimeout)
        if getattr(_local, "public_only", False):
            try:
                infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
            except (OSError, UnicodeError) as exc:
                raise httpcore.ConnectError(f"cannot resolve {host} ({type(exc).__name__})") from None
            addresses = [info[4][0] for info in infos]
            if not addresses or not all(is_public_address(a) for a in addresses):
                raise PrivateAddress(f"{host} resolves to a non-public address")
            host = addresses[0]          # dial the address that was checked, not a fresh lookup
        return _GuardedStream(self._inner.connect_tcp(host, port, timeout, local_address, socket_options))

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)


_ssl_lock = threading.Lock()
_ssl_contexts: dict[tuple, object] = {}


def shared_ssl_context():
    """httpx's default verifying context, built once per process (per SSL_CERT_FILE/SSL_CERT_DIR, which httpx
    reads). Loading the CA store costs ~30 ms of CPU; each provider thread's transport loaded it twice, 0.5 s
    at the start of every batch (issue 25). A context is safe to share between pools and threads."""
    key = (os.environ.get("SSL_CERT_FILE"), os.environ.get("SSL_CERT_DIR"))
    with _ssl_lock:
        if key not in _ssl_contexts:
            _ssl_contexts[key] = httpx.create_ssl_context()
        return _ssl_contexts[key]


def guarded_transport() -> httpx.HTTPTransport:
    """httpx's own transport, its connection pool dialling through the guards above."""
    ssl_context = shared_ssl_context()
    transport = httpx.HTTPTransport(verify=ssl_context)
    # httpx builds its pool in __init__ with no way to pass a network backend; replace the pool with
    # an identical one that has it (the test suite checks that the guard is in place).
    transport._pool = httpcore.ConnectionPool(ssl_context=ssl_context, max_connections=100,
                                              max_keepalive_connections=20, keepalive_expiry=5.0,
                                              network_backend=_GuardedBackend())
    return transport
