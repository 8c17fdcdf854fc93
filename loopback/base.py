"""Shared machinery of the loopback provider servers: threaded HTTP server, fault queue, images."""
from __future__ import annotations

import hashlib
import io
import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
from PIL import Image


def render(prompt: str, seed: int, width: int, height: int, refs: list[np.ndarray] = ()) -> np.ndarray:
    """A deterministic picture for (prompt, seed, size, refs): a colour field plus the references' mean.

    Different prompts/seeds give visibly different images; a reference visibly tints the result, so a
    chained edit shows that its references arrived.
    """
    digest = hashlib.sha256(f"{prompt}\x00{seed}".encode()).digest()
    c0 = np.frombuffer(digest[0:3], dtype=np.uint8).astype(np.float32)
    c1 = np.frombuffer(digest[3:6], dtype=np.uint8).astype(np.float32)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    t = ((xx / max(width - 1, 1)) + (yy / max(height - 1, 1))) / 2.0            # [H, W]
    img = c0[None, None, :] * (1 - t[..., None]) + c1[None, None, :] * t[..., None]  # [H, W, 3]
    rings = (np.sin((xx + yy * (1 + digest[6] / 255)) / (8 + digest[7] % 24)) * 24)[..., None]
    img = img + rings
    if len(refs):
        mixed = np.zeros((height, width, 3), np.float32)
        for ref in refs:
            mixed += np.asarray(Image.fromarray(ref).resize((width, height)), dtype=np.float32)
        img = 0.5 * img + 0.5 * mixed / len(refs)
    return np.clip(img, 0, 255).astype(np.uint8)


def url_stand_in(url: str) -> np.ndarray:
    """A small flat picture standing in for a public URL a loopback server cannot fetch offline
    (same URL, same colour). [64, 64, 3] uint8."""
    digest = hashlib.sha256(url.encode()).digest()
    return np.broadcast_to(np.frombuffer(digest[:3], dtype=np.uint8), (64, 64, 3)).copy()


def encode(array: np.ndarray, fmt: str) -> tuple[bytes, str]:
    fmt = {"JPG": "JPEG"}.get(fmt.upper(), fmt.upper())
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, fmt)
    return buf.getvalue(), {"PNG": "image/png", "JPEG": "image/jpeg", "WEBP": "image/webp"}[fmt]


class Faults:
    """A queue of faults for the next requests to a route: tests push, handlers pop."""

    def __init__(self):
        self._lock = threading.Lock()
        self._queue: list[dict] = []

    def push(self, **fault) -> None:
        """fault: route ('submit'|'poll'|'download'|'upload'|'any'), status, body, retry_after,
        delay_s (wait before the work), error_code, and faults that strike after the work is done
        (and billed): drop (close without answering), garble (a 200 whose body is this text),
        cut_json (a 200 whose JSON is cut in half), truncate_at (the whole length announced, this many
        bytes sent, connection closed), huge_bytes (a 200 JSON answer this long; -1 endless), hold_s
        (answer only after this long), dribble_s (send the answer one byte per dribble_s), patch
        (fields merged into each result item).
        Downloads also take: truncate, endless (an endless body), claim_bytes (a content-length of
        this many bytes, then an endless body), redirect (answer 302 to this location)."""
        with self._lock:
            self._queue.append(fault)

    def pop(self, route: str) -> dict | None:
        with self._lock:
            for i, fault in enumerate(self._queue):
                if fault.get("route", "any") in (route, "any"):
                    return self._queue.pop(i)
        return None

    def clear(self) -> None:
        with self._lock:
            self._queue.clear()


class _Server(ThreadingHTTPServer):
    # socketserver listens with a backlog of 5: a client opening more connections at once (a batch's
    # first round) has the rest of its SYNs dropped and retried a second later (Linux), which no real
    # provider's server does. 128 is Linux's usual somaxconn floor.
    request_queue_size = 128


class LoopbackServer:
    """Owns a ThreadingHTTPServer on 127.0.0.1 in a daemon thread. Subclasses set `handler_class`."""

    handler_class: type[BaseHTTPRequestHandler]

    def __init__(self, port: int = 0, api_key: str = "loopback-key"):
        self.api_key = api_key
        self.faults = Faults()
        self.requests: list[dict] = []        # what arrived: path, headers of interest, body
        self.images: dict[str, tuple[bytes, str]] = {}
        self.endless_bytes_sent = 0           # what `endless` download faults wrote before the client left
        self.lock = threading.Lock()
        handler = type("Handler", (self.handler_class,), {"app": self})
        self.httpd = _Server(("127.0.0.1", port), handler)
        self.httpd.handle_error = self._handle_error
        self.httpd.daemon_threads = True
        self._thread: threading.Thread | None = None

    def _handle_error(self, request, client_address) -> None:
        """A client that hung up on a held or endless answer is part of the test, not a server fault."""
        import sys
        if not isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError)):
            ThreadingHTTPServer.handle_error(self.httpd, request, client_address)

    @property
    def port(self) -> int:
        return self.httpd.server_address[1]

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "LoopbackServer":
        # A short poll interval makes stop() quick (the default 0.5 s adds up over a test suite).
        self._thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        name=type(self).__name__, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    def record(self, entry: dict) -> None:
        with self.lock:
            self.requests.append(entry)

    def store_image(self, image_id: str, data: bytes, mime: str) -> None:
        with self.lock:
            self.images[image_id] = (data, mime)


class JsonHandler(BaseHTTPRequestHandler):
    app: LoopbackServer
    protocol_version = "HTTP/1.1"

    def setup(self) -> None:
        super().setup()
        # Headers and body go out in two writes; without TCP_NODELAY, Nagle + delayed ACK add ~40 ms
        # to every answer, which would swamp what the benchmarks measure.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, *args) -> None:  # quiet: tests read app.requests instead
        pass

    def read_body(self) -> bytes:
        length = int(self.headers.get("content-length") or 0)
        return self.rfile.read(length) if length else b""

    def send_json(self, status: int, body, headers: dict | None = None) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def drop(self) -> None:
        """Close the connection without an answer (the work is already done: a lost response)."""
        self.close_connection = True
        try:
            self.connection.shutdown(2)
        except OSError:
            pass

    def apply_fault(self, route: str) -> tuple[bool, dict | None]:
        """Returns (handled, fault). A fault with `drop` is returned for the handler to act on later."""
        fault = self.app.faults.pop(route)
        if not fault:
            return False, None
        if fault.get("delay_s"):
            time.sleep(fault["delay_s"])
        if fault.get("status"):
            headers = {"retry-after": str(fault["retry_after"])} if "retry_after" in fault else None
            self.send_json(fault["status"], fault.get("body", {}), headers)
            return True, fault
        return False, fault

    def answer(self, status: int, body, fault: dict | None) -> None:
        """send_json, unless a fault that strikes after the work (drop, garble, cut_json, hold_s,
        dribble_s) says otherwise."""
        fault = fault or {}
        if fault.get("hold_s"):
            time.sleep(fault["hold_s"])
        if fault.get("drop"):
            self.drop()          # the work is done (and billed) but the answer never arrives
            return
        if fault.get("truncate_at") is not None:
            # Cut short on the wire: the whole length announced, `truncate_at` bytes sent, connection closed.
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data[: fault["truncate_at"]])
            self.wfile.flush()
            self.drop()
            return
        if fault.get("huge_bytes"):
            # An answer of this many bytes (JSON that never ends: a string of spaces), or endless if -1.
            self.huge_answer(fault["huge_bytes"])
            return
        if fault.get("garble") is not None or fault.get("cut_json"):
            text = json.dumps(body)
            data = (text[: len(text) // 2] if fault.get("cut_json") else str(fault["garble"])).encode()
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
            return
        if fault.get("dribble_s"):
            data = json.dumps(body).encode()
            head = (f"HTTP/1.1 {status} OK\r\ncontent-type: application/json\r\n"
                    f"content-length: {len(data)}\r\n\r\n").encode()
            self.dribble(head + data, fault["dribble_s"])
            return
        self.send_json(status, body)

    def huge_answer(self, size: int) -> None:
        """A 200 JSON answer of `size` bytes (-1: endless, no content-length), written until the client
        hangs up; counts what went out in `endless_bytes_sent`."""
        self.close_connection = True
        self.send_response(200)
        self.send_header("content-type", "application/json")
        if size >= 0:
            self.send_header("content-length", str(size))
        self.end_headers()
        chunk, sent = b" " * (1 << 20), 0
        try:
            self.wfile.write(b'{"data": [], "pad": "')
            while size < 0 or sent < size:
                self.wfile.write(chunk)
                sent += len(chunk)
                with self.app.lock:
                    self.app.endless_bytes_sent += len(chunk)
        except OSError:
            pass

    def dribble(self, data: bytes, every_s: float) -> None:
        """Write one byte every `every_s` seconds until done or the client goes away."""
        self.close_connection = True
        try:
            for i in range(len(data)):
                self.wfile.write(data[i:i + 1])
                self.wfile.flush()
                time.sleep(every_s)
        except OSError:
            pass

    def endless(self, claim_bytes: int | None) -> None:
        """An endless body (an 'image' of many GB), written until the client hangs up; counts what went out."""
        self.close_connection = True
        self.send_response(200)
        self.send_header("content-type", "image/png")
        if claim_bytes:
            self.send_header("content-length", str(claim_bytes))
        self.end_headers()
        chunk = b"\0" * (1 << 20)
        try:
            while True:
                self.wfile.write(chunk)
                with self.app.lock:
                    self.app.endless_bytes_sent += len(chunk)
        except OSError:
            pass

    def serve_image(self, image_id: str, truncate: bool = False, fault: dict | None = None) -> None:
        fault = fault or {}
        if fault.get("redirect"):
            self.send_response(302)
            self.send_header("location", fault["redirect"])
            self.send_header("content-length", "0")
            self.end_headers()
            return
        if fault.get("endless") or fault.get("claim_bytes"):
            self.endless(fault.get("claim_bytes"))
            return
        found = self.app.images.get(image_id)
        if not found:
            self.send_json(404, {"detail": "Not Found"})
            return
        data, mime = found
        if fault.get("dribble_s"):
            head = f"HTTP/1.1 200 OK\r\ncontent-type: {mime}\r\ncontent-length: {len(data)}\r\n\r\n".encode()
            self.dribble(head + data, fault["dribble_s"])
            return
        self.send_response(200)
        self.send_header("content-type", mime)
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data[: len(data) // 2] if truncate else data)
        if truncate:
            self.drop()
