"""A loopback server speaking Runware's HTTP task API as documented.

- `POST /v1` with a JSON array of tasks; auth by `Authorization: Bearer <key>` or a leading
  `{"taskType": "authentication", "apiKey": ...}` task.
- `imageInference` (sync, or async: acknowledged at once), `imageUpload`, `getResponse` (async tasks only,
  as documented), `getTaskDetails` (any executed task); results matched by `taskUUID`.
- Answers `{"data": [...]}` and/or `{"errors": [{code, message, parameter, taskType, taskUUID}]}`
  with the documented HTTP statuses (400 bad parameter, 401 key, 402 balance, 429/503 capacity).
- Result images are served from this server (`imageURL`) and expire after `url_ttl_s`; their
  imageUUIDs, like uploads', work as references.
- An https reference URL is taken as Runware takes it, but not fetched (this server is offline): a
  stand-in picture, billed as one reference MP, as Runware billed the documented example (our guess for
  larger files).
Prices and limits here are this server's own table (Runware's published ones), deliberately not
imported from the pack, so the client's estimate is checked against an independent source.
"""
from __future__ import annotations

import base64
import binascii
import io
import json
import re
import time
import uuid

import numpy as np
from PIL import Image

from . import flux3
from .base import JsonHandler, LoopbackServer, encode, render, url_stand_in
from .runware_checks import MODELS, UUID4, TaskError, _err, _mp, check_inference

UNPRICED_COST = 0.0038
NSFW_WORD = "forbidden-content"       # a prompt containing this is refused, like a real safety filter


class RunwareHandler(JsonHandler):
    def do_GET(self):
        m = re.match(r"^/image/([0-9a-f-]+)\.\w+$", self.path)
        if not m:
            self.send_json(404, {"errors": [_err("notFound", "Not found")]})
            return
        with self.app.lock:
            self.app.downloads.append({"path": self.path, "auth_header": bool(self.headers.get("authorization"))})
        handled, fault = self.apply_fault("download")
        if handled:
            return
        with self.app.lock:
            born = self.app.image_born.get(m.group(1), 0)
        if time.time() - born > self.app.url_ttl_s:
            self.send_json(404, {"errors": [_err("notFound", "Image expired")]})
            return
        self.serve_image(m.group(1), truncate=bool(fault and fault.get("truncate")), fault=fault)

    def do_POST(self):
        try:
            self.handle_post()
        except Exception as exc:  # a bug here must look like a provider 500, not a dropped connection
            self.send_json(500, {"errors": [_err("internalServerError", f"{type(exc).__name__}")]})

    def handle_post(self):
        if self.path.rstrip("/") != "/v1":
            self.send_json(404, {"errors": [_err("notFound", f"Unknown path {self.path}")]})
            return
        raw = self.read_body()
        try:
            tasks = json.loads(raw or b"null")
        except ValueError:
            self.send_json(400, {"errors": [_err("invalidJSON", "Request body is not valid JSON")]})
            return
        auth = self.headers.get("authorization", "")
        self.app.record({"path": self.path, "auth_header": bool(auth),
                         "auth_ok": auth == f"Bearer {self.app.api_key}", "body": tasks})
        if not isinstance(tasks, list) or not tasks:
            self.send_json(400, {"errors": [_err("invalidRequestBody", "The request body must be a non-empty array of tasks")]})
            return
        if isinstance(tasks[0], dict) and tasks[0].get("taskType") == "authentication":
            api_key = tasks.pop(0).get("apiKey")
            authed = api_key == self.app.api_key
        else:
            authed = auth == f"Bearer {self.app.api_key}"
        if not authed:
            self.send_json(401, {"errors": [_err("invalidApiKey", "Invalid API key. Get one at https://my.runware.ai",
                                                  {"taskType": "authentication"})]})
            return
        route = "upload" if all(t.get("taskType") == "imageUpload" for t in tasks if isinstance(t, dict)) else (
            "poll" if all(t.get("taskType") in ("getResponse", "getTaskDetails") for t in tasks if isinstance(t, dict))
            else "submit")
        inference = [t for t in tasks if isinstance(t, dict) and t.get("taskType") == "imageInference"
                     and isinstance(t.get("taskUUID"), str)]
        with self.app.lock:     # received (and, once run, billed): "processing" until it finishes
            self.app.processing.update(t["taskUUID"] for t in inference)
            self.app.async_tasks.update(t["taskUUID"] for t in inference if t.get("deliveryMethod") == "async")
            self.app.peak_processing = max(self.app.peak_processing, len(self.app.processing))
        handled, fault = self.apply_fault(route)
        if handled:
            return
        if fault and fault.get("error_code") == "insufficientCredits":
            self.send_json(402, {"errors": [_err("insufficientCredits", "Insufficient credits to run this task",
                                                  tasks[0])]})
            return
        data, errors = self.run_tasks(tasks, fault)
        if fault and fault.get("patch"):
            data = [dict(d, **fault["patch"]) for d in data]     # a malformed field in the answer only
        body = {}
        if data:
            body["data"] = data
        if errors:
            body["errors"] = errors
        status = 200 if data or not errors else errors[0].pop("_status", 400)
        for e in errors:
            e.pop("_status", None)
        self.answer(status, body, fault)

    # -- tasks ----------------------------------------------------------------------------------
    def run_tasks(self, tasks: list, fault) -> tuple[list, list]:
        """Every task of one request -> (data items, error objects)."""
        data, errors = [], []
        for task in tasks:
            inference = isinstance(task, dict) and task.get("taskType") == "imageInference"
            try:
                items = self.run_task(task, fault)
                if inference and task.get("deliveryMethod") == "async":
                    # Documented: an async task is acknowledged at once; its result is fetched by getResponse.
                    items = [{"taskType": "imageInference", "taskUUID": task["taskUUID"]}]
                data.extend(items)
            except TaskError as exc:
                if inference:
                    with self.app.lock:         # kept for getTaskDetails, like a finished task
                        self.app.task_log[task.get("taskUUID")] = (task, {"errors": [dict(exc.error)]})
                        self.app.processing.discard(task.get("taskUUID"))
                errors.append(exc.error)
        return data, errors

    def run_task(self, task, fault) -> list[dict]:
        if not isinstance(task, dict):
            raise TaskError(_err("invalidTask", "Each task must be an object"))
        kind = task.get("taskType")
        if not isinstance(task.get("taskUUID"), str) or not UUID4.match(task["taskUUID"]):
            raise TaskError(_err("invalidTaskUUID", "taskUUID must be a UUID v4", task, "taskUUID"))
        if kind == "imageInference":
            return self.image_inference(task, fault)
        if kind == "imageUpload":
            return [self.image_upload(task)]
        if kind == "getResponse":
            return self.get_response(task)
        if kind == "getTaskDetails":
            return self.get_task_details(task)
        raise TaskError(_err("invalidTaskType", f"Unknown taskType {kind!r}", task, "taskType"))

    def image_upload(self, task) -> dict:
        arr = self.decode_image(task.get("image"), task, "image")
        image_uuid = str(uuid.uuid4())
        arr = _limit_long_side(arr, 2048)
        with self.app.lock:
            self.app.uploads[image_uuid] = arr
            self.app.upload_ids[task["taskUUID"]] = image_uuid
        return {"taskType": "imageUpload", "taskUUID": task["taskUUID"], "imageUUID": image_uuid,
                "imageURL": f"{self.app.origin}/image/{image_uuid}.png"}

    def get_response(self, task) -> list[dict]:
        """Documented for async tasks only ("checks active operations, finds the running async task"):
        a sync task is unknown here unless `get_response_finds_sync` (an assumption some clients make).
        The error for an unknown taskUUID is the one a peer server answered (issue 21); Runware's own is
        not documented."""
        uuid_ = task["taskUUID"]
        with self.app.lock:
            done = self.app.results.get(uuid_)
            running = uuid_ in self.app.processing
            known = uuid_ in self.app.async_tasks or self.app.get_response_finds_sync
        if not known or (done is None and not running):
            raise TaskError(_err("invalidParameter", "unknown taskUUID", task, "taskUUID"))
        if done is None:
            return [{"taskType": "imageInference", "taskUUID": uuid_, "status": "processing"}]
        return [dict(done, status="success")]

    def get_task_details(self, task) -> list[dict]:
        """Documented (platform/task-details): the original request and the whole response envelope of
        any previously executed task, sync or async (`data` on success, `errors` on failure). A task still
        running has not been executed yet: unknown, like a taskUUID never sent (this error is our own)."""
        uuid_ = task["taskUUID"]
        with self.app.lock:
            found = self.app.task_log.get(uuid_) if self.app.task_details else None
        if found is None:
            raise TaskError(_err("invalidParameter", "unknown taskUUID", task, "taskUUID"))
        request, response = found
        return [{"taskType": "getTaskDetails", "taskUUID": uuid_, "request": [request],
                 "response": json.loads(json.dumps(response))}]

    def decode_image(self, value, task, parameter) -> np.ndarray:
        if not isinstance(value, str) or not value:
            raise TaskError(_err("invalidImage", "Image must be a string: UUID, URL, data URI or base64", task, parameter))
        if UUID4.match(value):
            with self.app.lock:
                arr = self.app.uploads.get(value)
            if arr is None:
                raise TaskError(_err("invalidImageUUID", f"Unknown imageUUID {value}", task, parameter))
            return arr
        if value.startswith(("http://", "https://")):
            raise TaskError(_err("invalidImageURL", "This loopback server cannot fetch remote URLs", task, parameter))
        b64 = value.split(",", 1)[1] if value.startswith("data:") else value
        try:
            raw = base64.b64decode(b64, validate=True)
            with Image.open(io.BytesIO(raw)) as img:
                if img.format not in ("PNG", "JPEG", "WEBP"):
                    raise ValueError(img.format)
                return np.asarray(img.convert("RGB"))
        except (ValueError, binascii.Error, OSError):
            raise TaskError(_err("invalidImage", "Image could not be decoded (PNG, JPG or WEBP expected)",
                                 task, parameter)) from None

    def fetch_loopback(self, url: str, task) -> np.ndarray:
        import urllib.request
        try:
            opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
            with opener.open(url, timeout=10) as response:
                raw = response.read(64 * 2**20)
            return np.asarray(Image.open(io.BytesIO(raw)).convert("RGB"))
        except (OSError, ValueError):
            raise TaskError(_err("invalidImageURL", f"Could not fetch an image from {url}", task,
                                 "inputs.referenceImages")) from None

    def image_inference(self, task, fault) -> list[dict]:
        started = time.monotonic()
        model = task.get("model")
        if model == flux3.RUNWARE_AIR:
            return self.flux3_inference(task)
        if model not in MODELS or model in self.app.retired:
            raise TaskError(_err("invalidModel", f"Model {model!r} does not exist", task, "model"))
        w, h, seed, n, fmt, out_type, loras = check_inference(task, model)
        refs, ref_mp = self.references(task, model)
        prompt = task["positivePrompt"]
        if NSFW_WORD in prompt:
            raise TaskError(_err("contentPolicyViolation", "The prompt was flagged by the content policy", task,
                                 "positivePrompt", _status=400))
        # A LoRA changes the picture (rendered from the prompt and the LoRAs), so a test sees it was applied.
        drawn = prompt + "".join(f" <lora:{m}:{wt:g}>" for m, wt in loras)
        pictures = [render(drawn, seed + i, w, h, refs) for i in range(n)]          # each [H, W, 3]
        encoded = [encode(arr, fmt) for arr in pictures]
        if self.app.task_s:
            # A provider's generation time, drawing included: a task takes task_s in all, so a benchmark's
            # ideal (concurrency / task_s) is what a client losing no time between tasks reaches.
            time.sleep(max(0.0, self.app.task_s - (time.monotonic() - started)))
        cost = UNPRICED_COST
        price = MODELS[model][3]
        if price:
            first, extra, ref = price
            cost = round(first + extra * (_mp(w, h) - 1) + ref * sum(ref_mp), 6)
        if self.app.charge_usd is not None:
            cost = self.app.charge_usd              # a provider whose price is not the published one
        results = [self.deliver(task, arr, data, seed + i, fmt, out_type, cost)
                   for i, (arr, data) in enumerate(zip(pictures, encoded))]
        with self.app.lock:
            self.app.task_log[task["taskUUID"]] = (task, {"data": results})
        return results

    def references(self, task, model: str) -> tuple[list[np.ndarray], list[int]]:
        """The task's reference images -> (pictures, each one's billed MP)."""
        max_refs = MODELS[model][2]
        refs_in = (task.get("inputs") or {}).get("referenceImages", [])
        if not isinstance(refs_in, list) or len(refs_in) > max_refs:
            raise TaskError(_err("invalidReferenceImages", f"At most {max_refs} reference images for {model}", task,
                                 "inputs.referenceImages"))
        refs, ref_mp = [], []
        for r in refs_in:
            if isinstance(r, str) and r.startswith(("http://127.0.0.1:", "https://127.0.0.1:")):
                arr = self.fetch_loopback(r, task)     # a test's asset server: fetched, as Runware would
                refs.append(arr)
                ref_mp.append(_mp(arr.shape[1], arr.shape[0]))
            elif isinstance(r, str) and r.startswith("https://"):
                # Runware fetches public URLs itself; offline, this server cannot. It bills such a reference
                # as its documented example does ($0.09 = 1.5 MP output + three references of <= 1 MP).
                refs.append(url_stand_in(r))
                ref_mp.append(1)
            else:
                arr = self.decode_image(r, task, "inputs.referenceImages")
                refs.append(arr)
                ref_mp.append(_mp(arr.shape[1], arr.shape[0]))
        return refs, ref_mp

    def deliver(self, task, arr: np.ndarray, encoded: tuple[bytes, str], image_seed: int, fmt: str, out_type: str,
                cost: float) -> dict:
        """One result picture [H, W, 3] and its (bytes, mime) as the answer's item (URL, base64 or data URI),
        billed."""
        data, mime = encoded
        image_uuid = str(uuid.uuid4())
        item = {"taskType": "imageInference", "taskUUID": task["taskUUID"], "imageUUID": image_uuid,
                "seed": image_seed, "NSFWContent": False}
        if out_type == "URL":
            self.app.store_image(image_uuid, data, mime)
            with self.app.lock:
                self.app.image_born[image_uuid] = time.time()
            item["imageURL"] = f"{self.app.origin}/image/{image_uuid}.{fmt.lower()}"
        elif out_type == "base64Data":
            item["imageBase64Data"] = base64.b64encode(data).decode()
        else:
            item["imageDataURI"] = f"data:{mime};base64," + base64.b64encode(data).decode()
        if task.get("includeCost"):
            item["cost"] = cost
        with self.app.lock:
            self.app.uploads[image_uuid] = arr      # a generated image's imageUUID works as a reference too
            self.app.billed += cost
            self.app.billed_tasks.append(task["taskUUID"])
            self.app.results[task["taskUUID"]] = item
            self.app.processing.discard(task["taskUUID"])
        return item

    def flux3_inference(self, task) -> list[dict]:
        """FLUX 3 Image: a size from its table, no seed; the result reports the provider's seed."""
        problem = flux3.runware_problem(task)
        if problem:
            raise TaskError(_err(problem[0], problem[1], task, problem[2]))
        prompt = task.get("positivePrompt")
        if not isinstance(prompt, str) or not 1 <= len(prompt) <= 15000:
            raise TaskError(_err("invalidPositivePrompt", "positivePrompt must be 1-15000 characters", task,
                                 "positivePrompt"))
        refs_in = (task.get("inputs") or {}).get("referenceImages", [])
        if not isinstance(refs_in, list) or len(refs_in) > 10:
            raise TaskError(_err("invalidReferenceImages", "At most 10 reference images", task, "inputs.referenceImages"))
        refs = [self.decode_image(r, task, "inputs.referenceImages") for r in refs_in]
        w, h, seed = task["width"], task["height"], flux3.provider_seed()
        data, mime = encode(render(prompt, seed, w, h, refs), task.get("outputFormat", "JPG"))
        image_uuid = str(uuid.uuid4())
        self.app.store_image(image_uuid, data, mime)
        item = {"taskType": "imageInference", "taskUUID": task["taskUUID"], "imageUUID": image_uuid, "seed": seed,
                "imageURL": f"{self.app.origin}/image/{image_uuid}.{task.get('outputFormat', 'JPG').lower()}",
                "NSFWContent": False}
        cost = flux3.runware_cost(w, h)
        if task.get("includeCost"):
            item["cost"] = cost
        with self.app.lock:
            self.app.image_born[image_uuid] = time.time()
            self.app.uploads[image_uuid] = render(prompt, seed, w, h, refs)
            self.app.billed += cost
            self.app.billed_tasks.append(task["taskUUID"])
            self.app.results[task["taskUUID"]] = item
            self.app.processing.discard(task["taskUUID"])
            self.app.task_log[task["taskUUID"]] = (task, {"data": [item]})     # getTaskDetails finds it too
        return [item]


def _limit_long_side(arr: np.ndarray, limit: int) -> np.ndarray:
    h, w = arr.shape[:2]
    if max(h, w) <= limit:
        return arr
    s = limit / max(h, w)
    return np.asarray(Image.fromarray(arr).resize((round(w * s), round(h * s)), Image.LANCZOS))


class RunwareLoopback(LoopbackServer):
    handler_class = RunwareHandler

    def __init__(self, port: int = 0, api_key: str = "loopback-key", url_ttl_s: float = 600.0, task_s: float = 0.0,
                 charge_usd: float | None = None, retired: tuple = ()):
        super().__init__(port, api_key)
        self.retired = set(retired)           # AIR ids answered like an unknown model (invalidModel)
        self.url_ttl_s = url_ttl_s
        # Bill (and report) this per task instead of the price table: a price change the client has not heard of.
        self.charge_usd = charge_usd
        self.task_s = task_s                  # seconds each imageInference task takes (0: as fast as it renders)
        self.peak_processing = 0              # most imageInference tasks in progress at once
        self.uploads: dict[str, np.ndarray] = {}
        self.upload_ids: dict[str, str] = {}
        self.results: dict[str, dict] = {}
        self.processing: set[str] = set()     # imageInference tasks received and not yet finished
        self.billed_tasks: list[str] = []     # taskUUIDs billed, in order
        self.downloads: list[dict] = []       # result downloads: path, whether a key header came along
        self.image_born: dict[str, float] = {}
        self.billed = 0.0
        self.async_tasks: set[str] = set()   # taskUUIDs sent with deliveryMethod "async"
        self.task_log: dict[str, tuple] = {}  # taskUUID -> (request, response envelope): getTaskDetails
        self.get_response_finds_sync = False  # True: getResponse also answers for sync tasks (undocumented)
        self.task_details = True              # False: getTaskDetails knows no task (recovery must fail)

    @property
    def api_url(self) -> str:
        return f"{self.origin}/v1"

    def uploads_by_sha(self, sha256: str) -> str | None:
        """The imageUUID this server gave an upload whose PNG bytes have this sha256."""
        import hashlib
        for req in self.requests:
            for t in req["body"] if isinstance(req["body"], list) else []:
                if isinstance(t, dict) and t.get("taskType") == "imageUpload":
                    raw = base64.b64decode(t["image"].split(",", 1)[-1])
                    if hashlib.sha256(raw).hexdigest() == sha256:
                        return self.upload_ids.get(t["taskUUID"])
        return None

    def tasks(self, task_type: str | None = None) -> list[dict]:
        """Every task received so far (optionally of one type), in arrival order."""
        out = []
        for req in self.requests:
            if isinstance(req["body"], list):
                out += [t for t in req["body"] if isinstance(t, dict) and (task_type is None or t.get("taskType") == task_type)]
        return out
