"""References by URL: the node, what each backend receives, the checks before any paid call, the fetch.

An asset server on 127.0.0.1 stands in for a public image host; the tests' loopback mode
(FLUX2_ALLOW_LOOPBACK_REFERENCES=1) lets the pack reach it. Outside that mode loopback, private and
link-local addresses are refused, which the tests check too.
"""
from __future__ import annotations

import io
import ipaddress
import json
import socket
import struct
import threading
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpcore
import numpy as np
import pytest
from PIL import Image

from comfyui_flux2.cli import main
from comfyui_flux2.flux2 import reference_urls
from comfyui_flux2.flux2.backend import GenerationRequest, GenerationResult, run
from comfyui_flux2.flux2.errors import InputError
from comfyui_flux2.flux2.images import ref_from_array
from comfyui_flux2.flux2.pricing import Estimate
from comfyui_flux2.flux2.reference_urls import UrlReference, fetch, parse_reference, prepare_references, probe
from comfyui_flux2.flux2.remote.bfl import BflBackend
from comfyui_flux2.flux2.remote.options import RemoteOptions
from comfyui_flux2.flux2.remote.runware import RunwareBackend
from comfyui_flux2.flux2.net.transport import Deadlines
from comfyui_flux2.flux2.run_context import RunContext
from comfyui_flux2.nodes import NODE_CLASS_MAPPINGS

FAST = Deadlines(retries=2, backoff_s=0.01, backoff_cap_s=0.05, total_s=10)
DOC_URL = "https://assets.runware.ai/assets/inputs/bdaeb71c-ebf0-49de-b3da-590fae66fb93.jpg"
RUNWARE_UUID = "1a3551a7-b095-42a3-8e6e-9fffe584e0f3"


def png_bytes(w=300, h=200, colour=(200, 40, 90)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (w, h), colour).save(buf, "PNG")
    return buf.getvalue()


def bomb_png(side=10_000) -> bytes:
    """A PNG whose header claims side x side pixels (a few bytes on the wire, 300 MB decoded)."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


class AssetServer:
    """A public image host stand-in: counts hits per path."""

    def __init__(self):
        self.hits: dict[str, int] = {}
        self.ranged: list[str] = []           # paths asked for with a Range header (the pack's probe)
        self.files = {"/ok.png": ("image/png", png_bytes()), "/page.html": ("text/html", b"<html>hello</html>" * 20),
                      "/bomb.png": ("image/png", bomb_png()), "/small.png": ("image/png", png_bytes(40, 30))}
        self.redirects = {"/to-private": "https://10.1.2.3/x.png"}
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_GET(self):
                server.hits[self.path] = server.hits.get(self.path, 0) + 1
                if self.headers.get("range"):
                    server.ranged.append(self.path)
                if self.path == "/huge.png":      # claims 30 MiB; the pack must stop at the header
                    self.send_response(200)
                    self.send_header("content-type", "image/png")
                    self.send_header("content-length", str(30 * 2**20))
                    self.end_headers()
                    try:
                        self.wfile.write(png_bytes()[:1024])
                    except OSError:
                        pass
                    return
                if self.path in server.redirects:
                    self.send_response(302)
                    self.send_header("location", server.redirects[self.path])
                    self.send_header("content-length", "0")
                    self.end_headers()
                    return
                found = server.files.get(self.path)
                if not found:
                    self.send_response(404)
                    self.send_header("content-length", "0")
                    self.end_headers()
                    return
                mime, data = found
                self.send_response(200)
                self.send_header("content-type", mime)
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}{path}"

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(autouse=True)
def _fresh_caches():
    reference_urls.clear_caches()
    yield
    reference_urls.clear_caches()


@pytest.fixture
def assets(monkeypatch):
    monkeypatch.setenv(reference_urls.LOOPBACK_ENV, "1")
    server = AssetServer()
    yield server
    server.stop()


# -- the node and the form of a reference ---------------------------------------------------------
def test_node_output_plugs_into_edit_reference_sockets():
    node = NODE_CLASS_MAPPINGS["Flux2ReferenceURL"]
    edit = NODE_CLASS_MAPPINGS["Flux2Edit"].INPUT_TYPES()
    sockets = [edit["required"]["reference_1"][0]] + [spec[0] for name, spec in edit["optional"].items()
                                                       if name.startswith("reference_")]
    for socket in sockets:
        accepted = socket.split(",")
        assert node.RETURN_TYPES[0] in accepted and "IMAGE" in accepted   # chained IMAGE outputs still fit
    (ref,) = node().reference(DOC_URL)
    assert ref == UrlReference(DOC_URL, "url")
    (by_uuid,) = node().reference(RUNWARE_UUID.upper())
    assert (by_uuid.kind, by_uuid.value) == ("uuid", RUNWARE_UUID)


@pytest.mark.parametrize("url, why", [
    ("http://example.com/a.png", "only https URLs"),
    ("ftp://example.com/a.png", "only https URLs"),
    ("https://127.0.0.1/a.png", "loopback address"),
    ("https://localhost/a.png", "localhost"),
    ("https://10.0.0.7/a.png", "private or reserved"),
    ("https://100.64.0.1/a.png", "private or reserved"),           # shared (CGNAT) space: not public either
    ("https://[::ffff:192.168.1.9]/a.png", "private or reserved"),
    ("https://169.254.169.254/latest/meta-data", "link-local"),
    ("https://user:pw@example.com/a.png", "user names or passwords"),
    ("example.com/a.png", "not a URL with a host"),
    ("", "empty"),
])
def test_malformed_or_private_urls_are_refused_by_name(url, why):
    with pytest.raises(InputError) as err:
        parse_reference(url)
    assert why in str(err.value) and (url[:20] in str(err.value)) and "\n" not in str(err.value)
    # ComfyUI asks VALIDATE_INPUTS before it runs any node: the same line, before anything is sent
    assert why in NODE_CLASS_MAPPINGS["Flux2ReferenceURL"].VALIDATE_INPUTS(url)


# -- what the remote providers receive --------------------------------------------------------------
def test_runware_gets_urls_and_uuids_as_they_are(runware, ctx):
    backend = RunwareBackend("FLUX.2 [pro]", RemoteOptions(), deadlines=FAST)
    first = run(backend, GenerationRequest("a harbour", 1024, 1024, 1), ctx)
    generated = runware.tasks("imageInference")[0]
    stored = runware.results[generated["taskUUID"]]["imageUUID"]      # an image Runware keeps
    local = ref_from_array(np.full((256, 256, 3), 40, np.uint8))
    refs = (UrlReference(DOC_URL, "url"), parse_reference(stored), local)
    result = run(backend, GenerationRequest("edit", 1024, 1024, 2, references=refs), ctx)
    task = runware.tasks("imageInference")[-1]
    upload = runware.tasks("imageUpload")
    assert len(upload) == 1                                   # only the image given by pixels is uploaded
    assert task["inputs"]["referenceImages"] == [DOC_URL, stored, runware.uploads_by_sha(local.sha256)]
    assert first.images and result.cost_usd == pytest.approx(0.03 + 3 * 0.015)


def test_bfl_gets_urls_in_its_input_image_fields_and_refuses_uuids(bfl, ctx):
    backend = BflBackend("FLUX.2 [pro]", RemoteOptions(), deadlines=FAST)
    run(backend, GenerationRequest("edit", 1024, 1024, 3, references=(UrlReference(DOC_URL, "url"),)), ctx)
    (body,) = bfl.submits()
    assert body["input_image"] == DOC_URL and "input_image_2" not in body
    with pytest.raises(InputError, match=f"reference {RUNWARE_UUID}: a Runware imageUUID"):
        run(backend, GenerationRequest("edit", 1024, 1024, 3, references=(parse_reference(RUNWARE_UUID),)),
            RunContext(dry_run=True))
    assert len(bfl.submits()) == 1


def test_url_reference_of_unknown_size_is_priced_as_one_megapixel_and_marked_approximate():
    backend = RunwareBackend("FLUX.2 [pro]")
    url = GenerationRequest("x", 1536, 1024, 1, references=(UrlReference(DOC_URL, "url"),) * 3)
    est = backend.estimate(url)
    assert est.usd == pytest.approx(0.09) and est.approximate and "priced as <= 1 MP" in est.detail
    pixels = GenerationRequest("x", 1536, 1024, 1, references=(ref_from_array(np.zeros((512, 512, 3), np.uint8)),) * 3)
    assert backend.estimate(pixels).usd == pytest.approx(0.09) and not backend.estimate(pixels).approximate
    assert BflBackend("FLUX.2 [pro]").estimate(url).approximate


# -- bad URLs: one line naming the URL, before any paid call ---------------------------------------
def _workflow_with_reference(tmp_path: Path, url: str) -> Path:
    wf = {"1": {"class_type": "Flux2RemoteBackend", "inputs": {
              "provider": "runware", "model": "FLUX.2 [pro]", "prompt_upsampling": False, "safety_tolerance": 2,
              "output_format": "PNG", "output_quality": 95, "steps": 0, "guidance": 0.0, "on_moderation": "error"}},
          "2": {"class_type": "Flux2TextToImage", "inputs": {"backend": ["1", 0], "prompt": "a paid first step",
                                                             "width": 1024, "height": 1024, "seed": 1, "batch_size": 1}},
          "3": {"class_type": "Flux2ReferenceURL", "inputs": {"url": url}},
          "4": {"class_type": "Flux2Edit", "inputs": {"backend": ["1", 0], "prompt": "edit", "reference_1": ["2", 0],
                                                      "reference_2": ["3", 0], "width": 1024, "height": 1024,
                                                      "seed": 1, "batch_size": 1}},
          "5": {"class_type": "SaveImage", "inputs": {"images": ["4", 0], "filename_prefix": "x"}}}
    path = tmp_path / "w.json"
    path.write_text(json.dumps(wf))
    return path


@pytest.mark.parametrize("path, why", [
    ("/missing.png", "unreachable (HTTP 404)"),
    ("closed-port", "unreachable (ConnectError)"),
    ("/page.html", "not a PNG, JPEG or WebP image"),
    ("/huge.png", "30.0 MiB, larger than the 20 MiB"),
    ("/bomb.png", "10000x10000, larger than this pack accepts"),
    ("/to-private", "(redirects to https://10.1.2.3/x.png): 10.1.2.3 is a private or reserved address"),
    ("http://example.com/a.png", "only https URLs"),
])
def test_bad_reference_url_fails_in_one_line_before_any_paid_call(runware, assets, tmp_path, capsys, path, why):
    url = (path if path.startswith("http") else "http://127.0.0.1:9/a.png" if path == "closed-port"
           else assets.url(path))
    # The graph's first node is a paid text-to-image; the bad URL is only used after it.
    assert main(["run", str(_workflow_with_reference(tmp_path, url)), "--output-dir", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and url in err and why in err, err
    assert runware.requests == []


def test_probe_reads_the_head_once_and_sends_the_url_as_is(runware, assets, tmp_path, capsys):
    url = assets.url("/ok.png")
    assert main(["run", str(_workflow_with_reference(tmp_path, url)), "--output-dir", str(tmp_path / "o")]) == 0
    # the pack read the file's head once (pre-flight, then cached by URL); the provider fetched it once
    assert assets.ranged == ["/ok.png"] and assets.hits == {"/ok.png": 2}
    sent = runware.tasks("imageInference")[-1]["inputs"]["referenceImages"]
    assert sent[1] == url
    # the chained IMAGE was generated by Runware in this run: sent as its imageUUID, not uploaded
    first = runware.tasks("imageInference")[0]["taskUUID"]
    assert sent[0] == runware.results[first]["imageUUID"] and runware.tasks("imageUpload") == []


def test_probe_is_skipped_only_for_a_loopback_provider_outside_loopback_mode(runware, tmp_path):
    """The offline demo and the documented example send URLs nothing here can reach: no probe."""
    ctx = RunContext(dry_run=True, strict=True)
    request = GenerationRequest("x", 1024, 1024, 1, references=(UrlReference(DOC_URL, "url"),))
    assert prepare_references(RunwareBackend("FLUX.2 [pro]"), request, ctx) is request


# -- local backends: fetched once, cached by URL ---------------------------------------------------------
class PixelBackend:
    """A backend that needs pixels (as the local ones do): records what it was given."""

    kind, model_name = "local", "test"
    takes_reference_urls = ()
    takes_loras = ""

    def __init__(self):
        self.seen = []

    def describe(self):
        return "pixels"

    def host(self):
        return ""

    def cache_identity(self):
        return None

    def check_ready(self):
        pass

    def validate(self, request):
        pass

    def with_lora(self, lora, strength):
        raise InputError("Flux2LoRA: pixels takes no LoRA")

    def plan(self, request):
        return []

    def estimate(self, request):
        return Estimate(0.0, "free")

    def generate(self, request, ctx):
        self.seen.append(request.references)
        return GenerationResult(images=[np.zeros((16, 16, 3), np.uint8)], seeds=[request.seed], cost_usd=0.0)


def test_local_backend_gets_the_fetched_pixels_once_per_url(assets):
    backend = PixelBackend()
    url = assets.url("/ok.png")
    request = GenerationRequest("x", 64, 64, 1, references=(parse_reference(url),))
    run(backend, request, RunContext(dry_run=True))           # a plain dry run touches no network
    assert assets.hits == {}
    run(backend, request, RunContext())
    run(backend, request, RunContext())
    (ref,) = backend.seen[0]
    assert (ref.width, ref.height) == (300, 200) and ref.png.startswith(b"\x89PNG")
    assert backend.seen[1][0] is ref and assets.hits == {"/ok.png": 1}


def test_fetched_pixels_are_checked_even_when_the_request_was_checked_before_the_fetch(assets):
    """A node checks its request before the budget (the URL's size unknown then); the fetched pixels make a new
    request, which the backend's rules check on the real size."""
    from comfyui_flux2.flux2.backend import validated
    from comfyui_flux2.flux2.local.backend import LocalBackend, LocalFiles
    from comfyui_flux2.flux2.local.model.params import tiny_preset

    local = LocalBackend("FLUX.2 [klein] 4B", LocalFiles(), preset=tiny_preset("klein", True))
    small = parse_reference(assets.url("/small.png"))
    checked = validated(local, GenerationRequest("x", 64, 64, 1, references=(small,)))
    with pytest.raises(InputError, match="reference 1 is 40x30; both sides must be >= 64"):
        run(local, checked, RunContext(dry_run=True, strict=True))
    assert assets.hits == {"/small.png": 1}


def test_local_backend_refuses_a_runware_uuid():
    request = GenerationRequest("x", 64, 64, 1, references=(parse_reference(RUNWARE_UUID),))
    with pytest.raises(InputError, match="only be sent to the Runware backend"):
        run(PixelBackend(), request, RunContext(dry_run=True))


@pytest.mark.parametrize("path, why", [("/huge.png", "larger than the 20 MiB"),
                                       ("/bomb.png", "10000x10000, larger than this pack decodes"),
                                       ("/page.html", "not a readable PNG/JPEG/WebP image")])
def test_fetch_applies_the_size_cap_and_the_bomb_guard(assets, path, why):
    with pytest.raises(InputError) as err:
        fetch(assets.url(path))
    assert why in str(err.value) and assets.url(path) in str(err.value)


def test_outside_loopback_mode_a_name_resolving_to_a_private_address_is_not_fetched(monkeypatch):
    monkeypatch.delenv(reference_urls.LOOPBACK_ENV, raising=False)
    monkeypatch.setattr(socket, "getaddrinfo",
                        lambda host, port, **kw: [(2, 1, 6, "", ("192.168.4.4", port))])
    with pytest.raises(InputError, match="internal.example.com resolves to a private or reserved address"):
        fetch("https://internal.example.com/a.png")
    with pytest.raises(InputError, match="resolves to a private"):
        probe("https://internal.example.com/a.png")
    with pytest.raises(InputError, match="127.0.0.1 is a loopback address"):
        fetch("http://127.0.0.1:9/a.png")                 # loopback only in the tests' mode


def test_a_linked_url_is_checked_when_it_arrives():
    """ComfyUI validates a linked input without its value (None); the node checks it when it runs."""
    node = NODE_CLASS_MAPPINGS["Flux2ReferenceURL"]
    assert node.VALIDATE_INPUTS(None) is True
    with pytest.raises(InputError, match="only https"):
        node().reference("http://example.com/a.png")


# -- production mode against a fake network: the check is on the address actually dialled -----------
PUBLIC_CDN = "93.184.216.34"        # a global address the fake resolver hands out; never dialled for real


class _NoTls(httpcore.NetworkStream):
    """A plain connection that answers start_tls as if TLS were up: lets an https URL reach a local
    plain-HTTP server standing in for a public host (certificates are not what these tests check)."""

    def __init__(self, inner):
        self._inner = inner

    def read(self, max_bytes, timeout=None):
        return self._inner.read(max_bytes, timeout)

    def write(self, buffer, timeout=None):
        self._inner.write(buffer, timeout)

    def close(self):
        self._inner.close()

    def start_tls(self, ssl_context, server_hostname=None, timeout=None):
        return self

    def get_extra_info(self, info):
        return self._inner.get_extra_info(info)


class FakeNetwork:
    """Production mode (no loopback allowance) with nothing leaving this machine.

    The resolver answers per host from `answers` (one answer per lookup, the last one repeating), as a
    DNS name under an attacker's control can. The dialler does what the OS's create_connection does --
    a name is resolved through that same resolver, then the address is dialled -- and records every
    address dialled: PUBLIC_CDN is routed to the asset server with TLS left out, a loopback address
    is dialled for real, anything else has no route."""

    def __init__(self, monkeypatch, assets):
        self.answers: dict[str, list[str]] = {}
        self.dialled: list[str] = []
        self.routes = {PUBLIC_CDN: assets.httpd.server_address[1]}
        real_connect = httpcore.SyncBackend.connect_tcp

        def getaddrinfo(host, port, *args, **kwargs):
            try:
                address = str(ipaddress.ip_address(host))
            except ValueError:
                queue = self.answers.get(host)
                if not queue:
                    raise socket.gaierror(socket.EAI_NONAME, "Name or service not known") from None
                address = queue.pop(0) if len(queue) > 1 else queue[0]
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, port))]

        def connect_tcp(backend, host, port, timeout=None, local_address=None, socket_options=None):
            address = getaddrinfo(host, port)[0][4][0]
            self.dialled.append(address)
            if address in self.routes:
                return _NoTls(real_connect(backend, "127.0.0.1", self.routes[address], timeout))
            if ipaddress.ip_address(address).is_loopback:
                return real_connect(backend, address, port, timeout)
            raise httpcore.ConnectError("no route to host (test network)")

        monkeypatch.delenv(reference_urls.LOOPBACK_ENV, raising=False)
        monkeypatch.setattr(reference_urls, "READ_S", 2.0)      # a stray connection fails the test quickly
        monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
        monkeypatch.setattr(httpcore.SyncBackend, "connect_tcp", connect_tcp)


@pytest.fixture
def network(monkeypatch):
    server = AssetServer()
    yield FakeNetwork(monkeypatch, server), server
    server.stop()


def test_the_fake_network_serves_a_public_https_host(network):
    """The stand-in works: a public name is fetched from the asset server through https."""
    net, _ = network
    net.answers["cdn.example.com"] = [PUBLIC_CDN]
    ref = fetch("https://cdn.example.com/ok.png")
    assert (ref.width, ref.height) == (300, 200) and net.dialled == [PUBLIC_CDN]


def test_a_name_in_shared_cgnat_space_is_refused_before_any_connection(network):
    net, _ = network
    net.answers["cgnat.example.com"] = ["100.64.7.7"]
    for read in (fetch, probe):
        with pytest.raises(InputError, match=r"reference https://cgnat.example.com/a.png: cgnat.example.com "
                                             "resolves to a private or reserved address"):
            read("https://cgnat.example.com/a.png")
    assert net.dialled == []


def test_a_rebinding_name_never_reaches_the_loopback_socket(network):
    """Public to the first lookup, 127.0.0.1 to the next: the address checked is the address dialled."""
    net, _ = network
    listener = socket.create_server(("127.0.0.1", 0))
    try:
        port = listener.getsockname()[1]
        net.answers["rebind.example.com"] = [PUBLIC_CDN, "127.0.0.1"]
        try:
            fetch(f"https://rebind.example.com:{port}/ok.png")
        except InputError:
            pass                      # whether the fetch succeeds is not the point; where it went is
        listener.setblocking(False)
        with pytest.raises(BlockingIOError):
            listener.accept()         # nobody connected to the loopback socket
        assert "127.0.0.1" not in net.dialled and net.dialled == [PUBLIC_CDN]
    finally:
        listener.close()


def test_every_redirect_hop_is_checked_where_it_is_dialled(network):
    net, assets = network
    net.answers["cdn.example.com"] = [PUBLIC_CDN]
    net.answers["cgnat.example.com"] = ["100.64.7.7"]
    assets.redirects["/to-cgnat"] = "https://cgnat.example.com/x.png"
    with pytest.raises(InputError) as err:
        probe("https://cdn.example.com/to-cgnat")
    assert ("https://cdn.example.com/to-cgnat (redirects to https://cgnat.example.com/x.png): cgnat.example.com "
            "resolves to a private or reserved address") in str(err.value)
    assert net.dialled == [PUBLIC_CDN]
