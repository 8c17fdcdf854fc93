"""References given by URL (or by a Runware imageUUID) instead of by pixels.

Remote providers fetch a public URL themselves, so Runware gets the string as is and BFL gets it in
`input_image*`; nothing is downloaded or uploaded for them. Before a paid call the URL is probed
(a bounded read of the file's head: reachable, an image, under the size cap) unless the provider is
a loopback test server, which fetches nothing. Local backends need the pixels: the file is fetched
once per URL (https only, public addresses only, size cap, the pack's decompression-bomb guard) and
cached by URL for the life of the process.

Which addresses are public is netguard's rule (`is_public_address`: globally routable, so private,
loopback, link-local, shared CGNAT and reserved ranges are all refused). A URL naming a literal address
is refused before any connection; a host name is checked where it is dialled (netguard's guarded
transport resolves once and connects to the very address it checked, on every redirect hop), so a name
that answers public to one lookup and private to the next cannot slip through.

`FLUX2_ALLOW_LOOPBACK_REFERENCES=1` (tests only, environment only) also admits http and https URLs on
127.0.0.1 / ::1 / localhost, so the fetch path can be tested against a server on this machine; in that
mode host names are not checked at connect time (as the provider transport's loopback mode), while
literal private and link-local addresses are still refused.
"""
from __future__ import annotations

import hashlib
import io
import ipaddress
import os
import re
import threading
from collections import OrderedDict
from dataclasses import dataclass, replace
from urllib.parse import urljoin, urlsplit

from .errors import InputError

MAX_REFERENCE_BYTES = 20 * 1024 * 1024    # BFL's documented input limit (20 MB); Runware's is not stated
PROBE_BYTES = 256 * 1024                   # enough for the header (size, format) of PNG/JPEG/WebP files
MAX_URL_CHARS = 2048
MAX_REDIRECTS = 3
ASSUMED_SIDE = 1024                        # a URL reference of unknown size is priced and planned as 1 MP
LOOPBACK_ENV = "FLUX2_ALLOW_LOOPBACK_REFERENCES"
CONNECT_S, READ_S = 10.0, 30.0
FETCH_S = 60.0                             # overall deadline of one fetch or probe, redirects included
_CACHE_SIZE = 32

RUNWARE_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$", re.I)


@dataclass(frozen=True)
class UrlReference:
    """A reference image named by an https URL (kind "url") or a Runware imageUUID (kind "uuid").

    width/height are an assumption (1 MP) until someone fetches the file: pricing and memory plans use
    them and say so (`size_known` is False)."""

    value: str
    kind: str                        # "url" | "uuid"
    width: int = ASSUMED_SIDE
    height: int = ASSUMED_SIDE
    size_known: bool = False

    @property
    def sha256(self) -> str:
        # Identifies the request (result cache): what is sent is the URL, so the URL is the identity.
        return hashlib.sha256(f"{self.kind}:{self.value}".encode()).hexdigest()

    def __str__(self) -> str:
        return self.value


def loopback_mode() -> bool:
    return os.environ.get(LOOPBACK_ENV, "").strip() == "1"


def _refused_literal(ip: ipaddress._BaseAddress, allow_loopback: bool) -> str | None:
    """Why a literal address may not be fetched from, or None. The rule is netguard's; this only
    names the kind of address for the message (and lets loopback through in the tests' mode)."""
    from .net import netguard          # lazily: it brings httpx, which loading the pack must not import

    if netguard.is_public_address(str(ip)):
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip.is_loopback:
        return None if allow_loopback else "a loopback address"
    if ip.is_link_local:
        return "a link-local address"
    return "a private or reserved address"


def parse_reference(text: str) -> UrlReference:
    """The text of a reference-by-URL node -> UrlReference; one line naming the value when it is bad.

    Checks what needs no network: the form, the scheme, credentials, and literal addresses."""
    value = text.strip() if isinstance(text, str) else ""
    if not value:
        raise InputError("reference URL is empty: give an https URL of an image or a Runware imageUUID")
    if RUNWARE_UUID.match(value):
        return UrlReference(value.lower(), "uuid")
    check_url(value)
    return UrlReference(value, "url")


def check_url(url: str, named: str | None = None) -> None:
    """Form, scheme and literal-address checks (no DNS); raises InputError naming the URL (or, for a
    redirect target, the URL the user gave and where it redirects)."""
    shown = url if len(url) <= 200 else url[:200] + "..."
    if named is not None and named != url:
        shown = f"{named} (redirects to {shown})"
    if len(url) > MAX_URL_CHARS or not url.isprintable() or any(c.isspace() for c in url) or "\\" in url:
        raise InputError(f"reference {shown!r} is not a valid URL")
    try:
        parts = urlsplit(url)
        parts.port                                            # raises on a bad port
    except ValueError:
        raise InputError(f"reference {shown}: not a valid URL") from None
    host = (parts.hostname or "").lower()
    loop = loopback_mode()
    if not host:
        raise InputError(f"reference {shown}: not a URL with a host (give an https URL or a Runware imageUUID)")
    if parts.username is not None or parts.password is not None:
        raise InputError(f"reference {shown}: URLs with user names or passwords are refused")
    if host == "localhost" or host.endswith(".localhost"):
        if not loop:
            raise InputError(f"reference {shown}: points at this machine (localhost); only public https URLs are fetched")
    else:
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            ip = None
        if ip is not None:
            why = _refused_literal(ip, loop)
            if why:
                raise InputError(f"reference {shown}: {host} is {why}; only public https URLs are allowed")
    is_loopback_host = host in ("localhost", "127.0.0.1", "::1") or host.endswith(".localhost")
    if parts.scheme != "https" and not (loop and parts.scheme == "http" and is_loopback_host):
        raise InputError(f"reference {shown}: only https URLs are accepted, not {parts.scheme or 'no scheme'}")


def _read(url: str, limit: int, *, whole: bool) -> tuple[bytes, int | None]:
    """GET url (following up to 3 redirects, each re-checked), reading at most `limit` bytes.

    whole=True: the body must fit under `limit`; False: a head of up to `limit` bytes is enough.
    Returns (bytes read, total size when the server tells it)."""
    import httpx

    from .net import netguard

    current = url
    with httpx.Client(transport=netguard.guarded_transport(), timeout=httpx.Timeout(READ_S, connect=CONNECT_S),
                      follow_redirects=False, headers={"User-Agent": "comfyui-flux2"}) as client, \
            netguard.limits(FETCH_S, public_only=not loopback_mode()):
        for _ in range(MAX_REDIRECTS + 1):
            check_url(current, url)
            shown = url if current == url else f"{url} (redirects to {current})"
            headers = {} if whole else {"Range": f"bytes=0-{limit - 1}"}
            try:
                with client.stream("GET", current, headers=headers) as response:
                    if response.is_redirect and response.headers.get("location"):
                        current = urljoin(current, response.headers["location"])
                        continue
                    if response.status_code not in (200, 206):
                        raise InputError(f"reference {url}: unreachable (HTTP {response.status_code})")
                    total = _total_size(response)
                    if total is not None and total > MAX_REFERENCE_BYTES:
                        raise InputError(f"reference {url}: {total / 2**20:.1f} MiB, larger than the "
                                         f"{MAX_REFERENCE_BYTES >> 20} MiB this pack accepts")
                    data = bytearray()
                    for chunk in response.iter_bytes():
                        data += chunk
                        if len(data) > limit:
                            if whole:
                                raise InputError(f"reference {url}: larger than the {MAX_REFERENCE_BYTES >> 20} "
                                                 "MiB this pack accepts")
                            break
                    return bytes(data[:limit]), total
            except httpx.HTTPError as exc:
                if isinstance(exc.__cause__, netguard.PrivateAddress):
                    host = urlsplit(current).hostname
                    raise InputError(f"reference {shown}: {host} resolves to a private or reserved address; "
                                     "only public addresses are fetched") from None
                raise InputError(f"reference {shown}: unreachable ({type(exc).__name__})") from None
    raise InputError(f"reference {url}: more than {MAX_REDIRECTS} redirects")


def _total_size(response) -> int | None:
    span = response.headers.get("content-range", "")          # "bytes 0-262143/1234567"
    if response.status_code == 206 and "/" in span and span.rsplit("/", 1)[1].isdigit():
        return int(span.rsplit("/", 1)[1])
    length = response.headers.get("content-length", "")
    return int(length) if response.status_code == 200 and length.isdigit() else None


class _Lru:
    def __init__(self, size: int):
        self._items: OrderedDict = OrderedDict()
        self._size = size
        self._lock = threading.Lock()

    def get(self, key):
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
            return None

    def put(self, key, value) -> None:
        with self._lock:
            self._items[key] = value
            while len(self._items) > self._size:
                self._items.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()


_fetched = _Lru(_CACHE_SIZE)     # url -> RefImage
_probed = _Lru(256)              # url -> (width, height)


def clear_caches() -> None:
    _fetched.clear()
    _probed.clear()


def fetch(url: str):
    """The reference's pixels as a RefImage, fetched once per URL (local backends)."""
    from .images import decode, ref_from_array

    hit = _fetched.get(url)
    if hit is not None:
        return hit
    data, _ = _read(url, MAX_REFERENCE_BYTES, whole=True)
    ref = ref_from_array(decode(data, f"reference {url}"))
    _fetched.put(url, ref)
    return ref


def probe(url: str) -> tuple[int, int]:
    """Reachable, an image, not too large: checked from the head of the file only (remote providers)."""
    from PIL import Image, UnidentifiedImageError

    from .images import MAX_DECODE_PIXELS

    hit = _probed.get(url)
    if hit is not None:
        return hit
    head, total = _read(url, PROBE_BYTES, whole=False)
    try:
        with Image.open(io.BytesIO(head)) as img:       # reads the header only, decodes no pixels
            fmt, size = img.format, img.size
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        raise InputError(f"reference {url}: not a PNG, JPEG or WebP image") from None
    if fmt not in ("PNG", "JPEG", "WEBP", "MPO"):
        raise InputError(f"reference {url}: a {fmt} file; PNG, JPEG or WebP expected")
    if size[0] * size[1] > MAX_DECODE_PIXELS:
        raise InputError(f"reference {url}: {size[0]}x{size[1]}, larger than this pack accepts")
    _probed.put(url, size)
    return size


def _is_loopback_host(base_url: str) -> bool:
    host = (urlsplit(base_url).hostname or "").lower()
    return host in ("127.0.0.1", "localhost", "::1")


def prepare_references(backend, request, ctx):
    """Before a backend sees a request: URL references checked (and fetched where pixels are needed).

    - a form the backend cannot send (a Runware imageUUID anywhere but Runware) fails at once, also in
      a dry run;
    - nothing touches the network in a plain dry run; a real run, and the runner's strict pre-flight
      of a real run, check every URL before the first paid call of the graph;
    - a backend that sends URLs (`takes_reference_urls`) gets them as they are, after a probe unless its
      provider is a loopback server; any other backend gets the fetched pixels instead.
    The checks here are on the fetched bytes (size cap, format, decode), not the request's rules: a request
    with fetched pixels is a new one, which backend.run() hands to validated() (flux2/backend.py)."""
    urls = [r for r in request.references if isinstance(r, UrlReference)]
    if not urls:
        return request
    takes = backend.takes_reference_urls
    for r in urls:
        if r.kind == "uuid" and "uuid" not in takes:
            raise InputError(f"reference {r.value}: a Runware imageUUID can only be sent to the Runware backend")
    if ctx.dry_run and not ctx.strict:
        return request
    if "url" in takes:
        host = backend.host()
        # A loopback provider (demo, tests) fetches nothing, so there is nothing to protect, and the
        # documented example's URLs are unreachable offline; loopback mode probes anyway (tests).
        if not _is_loopback_host(host) or loopback_mode():
            for r in urls:
                if r.kind == "url":
                    probe(r.value)
        return request
    fetched = tuple(fetch(r.value) if isinstance(r, UrlReference) else r for r in request.references)
    return replace(request, references=fetched)


def as_sent(ref) -> str | None:
    """What a provider that takes URLs gets for this reference (the URL or imageUUID as given), or
    None for a reference given by pixels (to be uploaded or encoded)."""
    return ref.value if isinstance(ref, UrlReference) else None
