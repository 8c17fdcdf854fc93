"""A loopback server speaking Black Forest Labs' FLUX.2 API as documented (docs.bfl.ai).

- `POST /v1/flux-2-pro|max|flex|klein-4b|klein-9b`, header `x-key` (401 when missing, 403 when wrong,
  both `{"detail": ...}`). The body is checked like BFL's FastAPI models: a bad field answers 422
  `{"detail": [{"type", "loc": ["body", field], "msg"}]}` (sizes ×16, ≥ 64, ≤ 4 MP; references up to
  the endpoint's limit; safety_tolerance 0-5; steps/guidance only on flex; unknown fields refused).
- The submit answers `{id, polling_url, cost, input_mp, output_mp}`; `cost` is in credits (1 credit =
  $0.01). `polling_url` points at `/v1/get_result?id=...` on this server (or on `polling_origin`).
- `GET /v1/get_result?id=...` (x-key) answers `{id, status, result, progress}`: `Pending` with a
  progress fraction for `polls_until_ready` polls (and at least `task_delay_s`), then `Ready` with
  `result.sample`, a URL on this server that expires `url_ttl_s` after the task finished. A prompt
  containing "forbidden-content" ends as `Content Moderated` (not charged); an unknown id answers
  `Task not found`.
- Faults (shared `Faults` queue, routes submit/poll/download): status (+ retry_after, body), drop,
  delay_s, truncate (download) and the after-the-work faults of `Faults.push` (garble, cut_json,
  hold_s, dribble_s, patch; downloads: endless, claim_bytes, redirect); on submit also `final_status`
  (the task ends with that status, e.g. "Error" or "Request Moderated"), `details` (the `details` of
  that final answer), `pending_polls` (this task stays Pending for that many polls) and `forget`
  (accepted, then unknown to polls); on poll `patch_answer`.
- FLUX 3 Image / FLUX 3.1 Image (`/v1/flux-3-image`, `/v1/flux-3.1-image`): their closed schemas,
  statuses Pending -> Reasoning -> Generating -> Ready and the expanded prompt and provider seed in the
  result, in `loopback/flux3.py`. `retired=(path, ...)`: endpoints answering 410 Gone.
Prices are this server's own table (BFL's published ones), not imported from the pack, so the
client's estimate is checked against an independent source.
"""
from __future__ import annotations

import base64
import binascii
import io
import json
import math
import re
import time
import uuid
from dataclasses import dataclass, field
from urllib.parse import parse_qs, urlsplit

import numpy as np
from PIL import Image

from . import flux3
from .base import JsonHandler, LoopbackServer, render, url_stand_in

# endpoint -> (max references, (first MP, each extra output MP, each reference MP) in credits,
#              fields beyond the common ones)
ENDPOINTS = {
    "/v1/flux-2-pro": (8, (3.0, 1.5, 1.5), {"prompt_upsampling"}),
    "/v1/flux-2-max": (8, (7.0, 3.0, 3.0), {"prompt_upsampling"}),
    # [flex]: 5 credits per MP in and out (BFL's skills repository, model-selection-guide.md; docs.bfl.ai pricing)
    "/v1/flux-2-flex": (8, (5.0, 5.0, 5.0), {"prompt_upsampling", "steps", "guidance"}),
    "/v1/flux-2-klein-4b": (4, (1.4, 0.1, 0.1), set()),
    "/v1/flux-2-klein-9b": (4, (1.5, 0.2, 0.2), set()),
}
COMMON_FIELDS = {"prompt", "seed", "width", "height", "safety_tolerance", "output_format",
                 "webhook_url", "webhook_secret"}
MAX_PIXELS = 4 * 1024 * 1024
NSFW_WORD = "forbidden-content"       # a prompt containing this ends "Content Moderated"
MODERATED = ("Request Moderated", "Content Moderated")


def _encode(array: np.ndarray, fmt: str) -> tuple[bytes, str]:
    """PNG at low compression: the server answers fast and the pixels are the same."""
    buf = io.BytesIO()
    if fmt == "PNG":
        Image.fromarray(array).save(buf, "PNG", compress_level=1)
        return buf.getvalue(), "image/png"
    Image.fromarray(array).save(buf, "JPEG", quality=92)
    return buf.getvalue(), "image/jpeg"


def _mp(w: int, h: int) -> int:
    return max(1, math.ceil(w * h / (1024 * 1024) - 1e-9))


def _ref_field(i: int) -> str:
    return "input_image" if i == 0 else f"input_image_{i + 1}"


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _problem(kind: str, field_: str | None, msg: str) -> dict:
    return {"type": kind, "loc": ["body"] + ([field_] if field_ else []), "msg": msg}


@dataclass
class Task:
    id: str
    endpoint: str
    body: dict
    width: int
    height: int
    refs: list
    cost: float
    created: float
    final_status: str | None = None      # forced by a fault
    polls: int = 0
    status: str = "Pending"
    finished: float | None = None
    answer: dict | None = None           # the terminal answer, repeated on later polls
    meta: dict = field(default_factory=dict)


class BflHandler(JsonHandler):
    def do_GET(self):
        try:
            self.handle_get()
        except Exception as exc:  # a bug here must look like a provider 500, not a dropped connection
            self.send_json(500, {"detail": f"Internal Server Error ({type(exc).__name__})"})

    def do_POST(self):
        try:
            self.handle_post()
        except Exception as exc:
            self.send_json(500, {"detail": f"Internal Server Error ({type(exc).__name__})"})

    # -- auth ---------------------------------------------------------------------------------
    def key_state(self) -> tuple[bool, bool]:
        key = self.headers.get("x-key")
        return key is not None, key == self.app.api_key

    def refuse_auth(self, sent: bool, ok: bool) -> bool:
        if not sent:
            self.send_json(401, {"detail": "Not authenticated: missing x-key header"})
            return True
        if not ok:
            self.send_json(403, {"detail": "Invalid or expired API key"})
            return True
        return False

    # -- submit -------------------------------------------------------------------------------
    def handle_post(self):
        raw = self.read_body()
        path = urlsplit(self.path).path.rstrip("/")
        sent, ok = self.key_state()
        try:
            body = json.loads(raw or b"null")
        except ValueError:
            body = None
        self.app.record({"route": "submit", "path": path, "x_key_sent": sent, "x_key_ok": ok,
                         "body": body, "at": time.monotonic()})
        if path in self.app.retired:             # an endpoint BFL stopped serving: 410 Gone
            self.send_json(410, {"detail": f"{path} has been retired"})
            return
        if path not in ENDPOINTS and path not in flux3.ENDPOINTS:
            self.send_json(404, {"detail": "Not Found"})
            return
        if self.refuse_auth(sent, ok):
            return
        handled, fault = self.apply_fault("submit")
        if handled:
            return
        fault = fault or {}
        problems, refs, width, height, cost = self.checked(path, body)
        if problems:
            self.send_json(422, {"detail": problems})
            return
        app = self.app
        with app.lock:
            refused = 429 if len(app.active) >= app.max_active else (
                402 if app.credits is not None and app.credits < cost else 0)
            if not refused:
                task = Task(id=str(uuid.uuid4()), endpoint=path, body=body, width=width, height=height,
                            refs=refs, cost=cost, created=time.monotonic(), final_status=fault.get("final_status"),
                            meta={k: fault[k] for k in ("details", "pending_polls") if k in fault})
                if not fault.get("forget"):
                    app.task_map[task.id] = task
                app.accepted.append(task)
                app.active.add(task.id)
                app.max_in_flight = max(app.max_in_flight, len(app.active))
                if app.credits is not None:
                    app.credits -= cost          # reserved now; refunded when moderated
        if refused == 402:
            self.send_json(402, {"detail": "Insufficient credits. Top up at https://dashboard.bfl.ai"})
            return
        if refused:
            self.send_json(429, {"detail": f"Too many active tasks (limit {app.max_active}); retry later"},
                           {"retry-after": "1"})
            return
        poll_origin = app.polling_origin or app.origin
        answer = {
            "id": task.id,
            "polling_url": f"{poll_origin}/v1/get_result?id={task.id}",
            "cost": cost,
            "input_mp": round(sum(r.shape[0] * r.shape[1] for r in refs) / (1024 * 1024), 4),
            "output_mp": round(width * height / (1024 * 1024), 4),
        }
        if path in flux3.ENDPOINTS:          # FLUX 3 answers {id, polling_url}; the cost comes with the poll
            answer = {"id": task.id, "polling_url": answer["polling_url"]}
        # drop / garble / cut_json / hold_s / dribble_s: accepted (and billed) but the answer is lost.
        self.answer(200, dict(answer, **fault.get("patch", {})), fault)

    def checked(self, path: str, body) -> tuple[list[dict], list, int, int, float]:
        """(422 problems, references, output width, height, cost in credits) of a submit body."""
        if path in flux3.ENDPOINTS:
            problems, refs, _mask, (width, height) = flux3.check(path, body, self.decode_image)
            return problems, refs, width, height, (flux3.credits(path, body, width, height) if not problems else 0)
        problems, refs = self.check_body(path, body)
        if problems:
            return problems, refs, 0, 0, 0
        width, height = self.output_size(body, refs)
        _, (first, extra, per_ref), _ = ENDPOINTS[path]
        cost = round(first + extra * (_mp(width, height) - 1)
                     + per_ref * sum(_mp(r.shape[1], r.shape[0]) for r in refs), 4)
        return problems, refs, width, height, cost

    def check_body(self, path: str, body) -> tuple[list[dict], list]:
        if not isinstance(body, dict):
            return [_problem("model_attributes_type", None,
                             "Input should be a valid dictionary or object to extract fields from")], []
        max_refs, _, extra_fields = ENDPOINTS[path]
        allowed = COMMON_FIELDS | extra_fields | {_ref_field(i) for i in range(max_refs)}
        problems = [_problem("extra_forbidden", k, "Extra inputs are not permitted") for k in body if k not in allowed]
        prompt = body.get("prompt")
        if prompt is None:
            problems.append(_problem("missing", "prompt", "Field required"))
        elif not isinstance(prompt, str) or not prompt:
            problems.append(_problem("string_type", "prompt", "Input should be a non-empty string"))
        for side in ("width", "height"):
            v = body.get(side)
            if v is None or v == 0:
                continue                     # 0 / omitted: follow the first input (or 1024)
            if not _is_int(v):
                problems.append(_problem("int_type", side, "Input should be a valid integer"))
            elif v < 64:
                problems.append(_problem("greater_than_equal", side, "Input should be greater than or equal to 64"))
            elif v % 16:
                problems.append(_problem("multiple_of", side, "Input should be a multiple of 16"))
        w, h = body.get("width"), body.get("height")
        if _is_int(w) and _is_int(h) and w * h > MAX_PIXELS:
            problems.append(_problem("value_error", None, "Value error, width x height must be at most 4 megapixels"))
        seed = body.get("seed")
        if seed is not None and (not _is_int(seed) or seed < 0):
            problems.append(_problem("int_type", "seed", "Input should be a valid non-negative integer"))
        tol = body.get("safety_tolerance", 2)
        if not _is_int(tol) or not 0 <= tol <= 5:
            problems.append(_problem("less_than_equal", "safety_tolerance", "Input should be an integer from 0 to 5"))
        fmt = body.get("output_format", "jpeg")
        if fmt is not None and fmt not in ("jpeg", "png"):
            problems.append(_problem("enum", "output_format", "Input should be 'jpeg' or 'png'"))
        if "steps" in body and (not _is_int(body["steps"]) or not 1 <= body["steps"] <= 50):
            problems.append(_problem("less_than_equal", "steps", "Input should be an integer from 1 to 50"))
        if "guidance" in body and (not _is_number(body["guidance"]) or not 1.5 <= body["guidance"] <= 10):
            problems.append(_problem("less_than_equal", "guidance", "Input should be a number from 1.5 to 10"))
        if "prompt_upsampling" in body and not isinstance(body["prompt_upsampling"], bool):
            problems.append(_problem("bool_type", "prompt_upsampling", "Input should be a valid boolean"))
        refs = []
        for i in range(max_refs):
            value = body.get(_ref_field(i))
            if value is None:
                continue
            arr = self.decode_image(value)
            if arr is None:
                problems.append(_problem("value_error", _ref_field(i),
                                         "Value error, could not decode the image (base64 PNG/JPEG/WebP expected)"))
            else:
                refs.append(arr)
        return problems, refs

    @staticmethod
    def decode_image(value) -> np.ndarray | None:
        if isinstance(value, str) and value.startswith("https://"):
            # BFL fetches an input URL itself; offline, this server cannot: a stand-in picture (same URL,
            # same colour), counted as one reference MP.
            return url_stand_in(value)
        if not isinstance(value, str) or not value or value.startswith("http://"):
            return None
        b64 = value.split(",", 1)[1] if value.startswith("data:") else value
        try:
            raw = base64.b64decode(b64, validate=True)
            with Image.open(io.BytesIO(raw)) as img:
                if img.format not in ("PNG", "JPEG", "WEBP"):
                    return None
                return np.asarray(img.convert("RGB"))
        except (ValueError, binascii.Error, OSError):
            return None

    @staticmethod
    def output_size(body: dict, refs: list) -> tuple[int, int]:
        w, h = body.get("width") or 0, body.get("height") or 0
        if w and h:
            return w, h
        if refs:                              # auto: follow the first input, snapped to 16, ≤ 4 MP
            rh, rw = refs[0].shape[:2]
            s = min(1.0, math.sqrt(MAX_PIXELS / (rw * rh)))
            return max(64, int(rw * s) // 16 * 16), max(64, int(rh * s) // 16 * 16)
        return 1024, 1024

    # -- polling and results ------------------------------------------------------------------
    def handle_get(self):
        parts = urlsplit(self.path)
        if parts.path == "/v1/get_result":
            self.get_result(parse_qs(parts.query).get("id", [""])[0])
            return
        m = re.match(r"^/results/([0-9a-f-]+)/sample\.(png|jpeg)$", parts.path)
        if m:
            self.get_sample(m.group(1))
            return
        self.send_json(404, {"detail": "Not Found"})

    def get_result(self, task_id: str):
        sent, ok = self.key_state()
        self.app.record({"route": "poll", "path": self.path, "x_key_sent": sent, "x_key_ok": ok,
                         "id": task_id, "at": time.monotonic()})
        if self.refuse_auth(sent, ok):
            return
        handled, fault = self.apply_fault("poll")
        if handled:
            return
        if fault and fault.get("drop"):
            self.drop()                          # a lost poll: the task does not move on
            return
        with self.app.lock:
            task = self.app.task_map.get(task_id)
        if task is None:
            self.answer(200, {"id": task_id, "status": "Task not found", "result": None, "progress": None}, fault)
            return
        answer = self.app.advance(task)
        if fault and fault.get("patch") and isinstance(answer.get("result"), dict):
            answer = dict(answer, result=dict(answer["result"], **fault["patch"]))
        elif fault and fault.get("patch_answer"):
            answer = dict(answer, **fault["patch_answer"])
        self.answer(200, answer, fault)

    def get_sample(self, task_id: str):
        app = self.app
        with app.lock:
            task = app.task_map.get(task_id)
        app.record({"route": "download", "path": self.path, "x_key_sent": self.key_state()[0], "id": task_id})
        handled, fault = self.apply_fault("download")
        if handled:
            return
        if task is None or task.finished is None or time.monotonic() - task.finished > app.url_ttl_s:
            # BFL's delivery URLs are signed and expire; the storage then answers 403.
            self.send_json(403, {"detail": "Signature expired or resource not found"})
            return
        self.serve_image(task_id, truncate=bool(fault and fault.get("truncate")), fault=fault)


class BflLoopback(LoopbackServer):
    """BFL's API on 127.0.0.1. Put `api_url` in BFL_API_URL and the key in BFL_API_KEY."""

    handler_class = BflHandler

    def __init__(self, port: int = 0, api_key: str = "loopback-key", polls_until_ready: int = 2,
                 task_delay_s: float = 0.0, url_ttl_s: float = 600.0, max_active: int = 24,
                 credits: float | None = None, polling_origin: str | None = None, retired: tuple = ()):
        super().__init__(port, api_key)
        self.retired = set(retired)           # endpoint paths answering 410 Gone (a model BFL stopped serving)
        self.polls_until_ready = polls_until_ready
        self.task_delay_s = task_delay_s
        self.url_ttl_s = url_ttl_s
        self.max_active = max_active          # BFL's default limit of active tasks per account
        self.credits = credits                # None: unlimited; else a balance that 402s when short
        self.polling_origin = polling_origin  # hand out polling URLs on another host (tests)
        self.task_map: dict[str, Task] = {}
        self.accepted: list[Task] = []
        self.active: set[str] = set()
        self.max_in_flight = 0
        self.billed_credits = 0.0

    @property
    def api_url(self) -> str:
        """The base URL (BFL_API_URL); endpoints are `{api_url}/v1/flux-2-...`."""
        return self.origin

    # -- accessors for tests ------------------------------------------------------------------
    def submits(self, endpoint: str | None = None) -> list[dict]:
        """Every submit body received (accepted or not), in arrival order."""
        return [r["body"] for r in self.requests
                if r["route"] == "submit" and (endpoint is None or r["path"] == endpoint)]

    def polls(self, task_id: str | None = None) -> list[dict]:
        return [r for r in self.requests if r["route"] == "poll" and (task_id is None or r["id"] == task_id)]

    def tasks(self) -> list[Task]:
        """Every accepted task, in acceptance order (status, polls, cost in credits...)."""
        with self.lock:
            return list(self.accepted)

    @property
    def billed_usd(self) -> float:
        return round(self.billed_credits / 100, 6)

    # -- task progression ---------------------------------------------------------------------
    def flux3_ready(self, task: Task) -> dict:
        """FLUX 3's Ready answer: the provider's own seed, the expanded prompt, times and the cost."""
        seed, prompt = flux3.provider_seed(), flux3.expand(task.body["prompt"])
        data, mime = _encode(render(prompt, seed, task.width, task.height, task.refs), "JPEG")
        self.store_image(task.id, data, mime)
        now = time.time()
        result = {"sample": f"{self.origin}/results/{task.id}/sample.jpeg", "prompt": prompt, "seed": seed,
                  "start_time": round(now - 1.0, 3), "end_time": round(now, 3), "duration": 1.0, "cost": task.cost}
        return {"id": task.id, "status": "Ready", "result": result, "progress": 1.0, "cost": task.cost}

    def advance(self, task: Task) -> dict:
        with self.lock:
            task.polls += 1
            if task.answer is not None:
                return task.answer
            elapsed = time.monotonic() - task.created
            needed = task.meta.get("pending_polls", self.polls_until_ready)    # a fault may slow one task
            if task.polls < needed or elapsed < self.task_delay_s:
                frac = task.polls / max(needed, 1)
                if self.task_delay_s > 0:
                    frac = min(frac, elapsed / self.task_delay_s)
                status = flux3.stage(task.polls, self.polls_until_ready) if task.endpoint in flux3.ENDPOINTS \
                    else "Pending"
                return {"id": task.id, "status": status, "result": None, "progress": round(min(frac, 0.99), 3)}
            status = task.final_status or ("Content Moderated" if NSFW_WORD in task.body.get("prompt", "") else "Ready")
        answer = {"id": task.id, "status": status, "result": None, "progress": None}
        if status == "Ready" and task.endpoint in flux3.ENDPOINTS:
            answer = self.flux3_ready(task)
        elif status == "Ready":
            seed = task.body.get("seed")
            seed = seed if seed is not None else 0
            fmt = "PNG" if task.body.get("output_format") == "png" else "JPEG"
            data, mime = _encode(render(task.body["prompt"], seed, task.width, task.height, task.refs), fmt)
            self.store_image(task.id, data, mime)
            answer["result"] = {"sample": f"{self.origin}/results/{task.id}/sample.{fmt.lower()}",
                                "prompt": task.body["prompt"], "seed": seed}
            answer["progress"] = 1.0
        elif status == "Error":
            answer["details"] = task.meta.get("details", {"error": "Generation failed on the worker"})
        elif "details" in task.meta:
            answer["details"] = task.meta["details"]
        with self.lock:
            task.status, task.finished, task.answer = status, time.monotonic(), answer
            self.active.discard(task.id)
            if status == "Ready":
                self.billed_credits += task.cost
            elif status in MODERATED and self.credits is not None:
                self.credits += task.cost         # moderated tasks are not charged
        return answer
