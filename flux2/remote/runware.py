"""Runware `imageInference` backend (HTTP API, task arrays, `data` / `errors` envelopes)."""
from __future__ import annotations

import logging
import os
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import httpx

from ..backend import GenerationRequest, GenerationResult, PlannedCall
from ..errors import AuthError, BudgetError, Flux2Error, ModerationError, ProviderError
from ..images import decode_data_uri, decode_provider_image, placeholder
from ..models import RUNWARE
from ..pricing import Estimate, estimate, reference_sizes
from ..reference_urls import as_sent
from ..run_context import RunContext
from .common import RemoteBackend, redact
from .keys import base_url, read_key
from .options import RemoteOptions
from .transport import Deadlines, LostResponse, Transport, json_body, sleep_with_cancel

log = logging.getLogger("comfyui_flux2.runware")

DEFAULT_URL = "https://api.runware.ai/v1"
KEY_ENV, URL_ENV = "RUNWARE_API_KEY", "RUNWARE_API_URL"
UPLOAD_TTL_S = 7 * 24 * 3600         # Runware keeps uploads 30 days after last use; stay well inside
IMAGE_FIELDS = ("imageURL", "imageBase64Data", "imageDataURI")
_MODERATION_HINTS = ("contentpolicy", "moderat", "nsfw", "safety")
_BUDGET_HINTS = ("credit", "balance", "quota", "payment")


def concurrency() -> int:
    """Tasks in flight per node (FLUX2_CONCURRENCY, default 8 = the largest batch, so a batch goes out at
    once; a 429 backs off only the request it hit. Lower it for accounts with small queue limits)."""
    try:
        return max(1, int(os.environ.get("FLUX2_CONCURRENCY", "8")))
    except ValueError:
        return 8


def runware_error(status: int, err: dict, key: str | None) -> Flux2Error:
    """One `errors[]` item (plus the HTTP status) -> the matching exception, one line."""
    code = str(err.get("code") or "")
    message = str(err.get("message") or code or f"HTTP {status}")
    param = err.get("parameter")
    text = redact(f"runware: {message}" + (f" (parameter {param})" if param else "") + (f" [{code}]" if code else ""), key)
    low = code.lower()
    if status in (401, 403) or low in ("invalidapikey", "missingapikey", "unauthorized"):
        return AuthError(text + f" - check {KEY_ENV}")
    if status == 402 or any(h in low for h in _BUDGET_HINTS):
        return BudgetError(text)
    if any(h in low for h in _MODERATION_HINTS):
        return ModerationError(text, status=status, code=code)
    return ProviderError(text, status=status, code=code, retryable=status in (429, 500, 502, 503, 504))


class RunwareBackend(RemoteBackend):
    kind = RUNWARE
    label = "Runware"
    takes_reference_urls = ("url", "uuid")     # sent as is in inputs.referenceImages

    def __init__(self, model_name: str, options: RemoteOptions = RemoteOptions(),
                 deadlines: Deadlines = Deadlines(), http_transport: httpx.BaseTransport | None = None):
        super().__init__(model_name, options, deadlines, http_transport)
        self._transport: Transport | None = None

    # -- Backend protocol ---------------------------------------------------------------------
    def host(self) -> str:
        return base_url(URL_ENV, DEFAULT_URL)

    def check_ready(self) -> None:
        base_url(URL_ENV, DEFAULT_URL)
        read_key(KEY_ENV)

    def estimate(self, request: GenerationRequest) -> Estimate:
        sizes, assumed = reference_sizes(request.references)
        return estimate(self.model, RUNWARE, request.width, request.height, sizes, request.batch, assumed)

    def plan(self, request: GenerationRequest) -> list[PlannedCall]:
        url = base_url(URL_ENV, DEFAULT_URL)
        refs = [as_sent(r) or f"<upload {r.width}x{r.height} sha256:{r.sha256[:12]}>" for r in request.references]
        tasks = [self.inference_task(request, i, refs, task_uuid="<uuid4>") for i in range(request.batch)]
        summary = (f"{request.width}x{request.height} seed {request.seed}"
                   + (f" x{request.batch}" if request.batch > 1 else "")
                   + (f", {len(refs)} reference(s)" if refs else ""))
        return [PlannedCall(RUNWARE, f"POST {url} imageInference {self.pm.model_id}", summary, {"tasks": tasks})]

    # -- request building ---------------------------------------------------------------------
    def inference_task(self, request: GenerationRequest, index: int, references: list[str],
                       task_uuid: str | None = None) -> dict:
        opts, pm = self.options, self.pm
        task = {
            "taskType": "imageInference",
            "taskUUID": task_uuid or str(uuid.uuid4()),
            "model": pm.model_id,
            "positivePrompt": request.prompt,
            "width": request.width,
            "height": request.height,
            # Each image of a batch is its own task with its own seed, so every image is reproducible.
            "seed": request.seed + index,
            "numberResults": 1,
            "outputType": "URL",
            "outputFormat": opts.output_format,
            "includeCost": True,
            "deliveryMethod": "sync",
        }
        if opts.output_format != "PNG":
            task["outputQuality"] = opts.output_quality
        if pm.takes_steps and opts.steps:
            task["steps"] = opts.steps
        if pm.takes_guidance and opts.guidance:
            task["CFGScale"] = opts.guidance
        if pm.model_id.startswith("bfl:"):
            task["providerSettings"] = {"bfl": {"promptUpsampling": bool(opts.prompt_upsampling),
                                                "safetyTolerance": int(opts.safety_tolerance)}}
        if references:
            task["inputs"] = {"referenceImages": list(references)}
        return task

    # -- execution ----------------------------------------------------------------------------
    def _client(self) -> tuple[Transport, str, str]:
        url = base_url(URL_ENV, DEFAULT_URL)
        key = read_key(KEY_ENV)
        if self._transport is None or not self._transport.may_authenticate(url):
            self._transport = Transport("runware", [url], lambda: {"Authorization": f"Bearer {read_key(KEY_ENV)}"},
                                        self.deadlines, self._http_transport)
        return self._transport, url, key

    def _post_tasks(self, tasks: list[dict], ctx: RunContext) -> tuple[dict, list]:
        """POST a task array; returns ({taskUUID: data item}, task-level errors).

        Request-level failures (auth, balance, capacity, malformed body) raise here; an error that
        names one of our tasks is returned so the caller can decide per task (e.g. moderation).
        """
        transport, url, key = self._client()
        response = transport.submit(url, tasks, is_cancelled=ctx.is_cancelled)
        body = json_body(response, "runware")
        if not isinstance(body, dict):
            raise ProviderError(f"runware: HTTP {response.status_code} with an unexpected body")
        errors = [e for e in (body.get("errors") or []) if isinstance(e, dict)]
        if isinstance(body.get("error"), dict):          # the singular form the docs also show
            errors.append(body["error"])
        data = body.get("data") or []
        if isinstance(data, dict):   # imageUpload has been seen answering a bare object
            data = [data]
        items = {}
        for d in data:
            if not isinstance(d, dict):
                continue
            if d.get("status") == "error" or isinstance(d.get("error"), dict):
                # Error items inside `data`: {status: "error", error: {code, message}}.
                inner = d.get("error") if isinstance(d.get("error"), dict) else d
                errors.append({**inner, "taskUUID": d.get("taskUUID")})
                continue
            items[d.get("taskUUID")] = d
        ours = {t.get("taskUUID") for t in tasks}
        request_level = [e for e in errors if e.get("taskUUID") not in ours]
        # A request-level error with results beside it must not discard the (paid) results.
        if response.status_code in (401, 402, 403) or (request_level and not items):
            first = request_level[0] if request_level else (errors[0] if errors else {})
            raise runware_error(response.status_code, first, key)
        for e in errors:
            e.setdefault("_status", response.status_code)
        return items, errors

    def upload_reference(self, ref, ctx: RunContext) -> str:
        """Upload a reference once per content hash; later uses (any node, this run) reuse the imageUUID."""
        url = base_url(URL_ENV, DEFAULT_URL)
        cache_key = f"runware {url}"
        cached = ctx.cached_upload(cache_key, ref.sha256)
        if cached:
            return cached
        task_uuid = str(uuid.uuid4())
        try:
            items, errors = self._post_tasks(
                [{"taskType": "imageUpload", "taskUUID": task_uuid, "image": ref.data_uri}], ctx)
        except LostResponse:
            # An upload costs nothing, so sending it again is safe.
            items, errors = self._post_tasks(
                [{"taskType": "imageUpload", "taskUUID": task_uuid, "image": ref.data_uri}], ctx)
        item = items.get(task_uuid) or (next(iter(items.values())) if len(items) == 1 else None)
        if not item or not item.get("imageUUID"):
            err = errors[0] if errors else {"message": "imageUpload returned no imageUUID"}
            raise runware_error(200, err, None)
        ctx.remember_upload(cache_key, ref.sha256, item["imageUUID"], UPLOAD_TTL_S)
        return item["imageUUID"]

    def _recover(self, task_uuids: list[str], ctx: RunContext, started: float) -> tuple[dict, list]:
        """The submit's answer was lost: ask for the tasks' results instead of submitting again."""
        items: dict = {}
        errors: list = []
        delay = 1.0
        while time.monotonic() - started < self.deadlines.total_s:
            pending = [u for u in task_uuids if u not in items]
            got, errs = self._post_tasks([{"taskType": "getResponse", "taskUUID": u} for u in pending], ctx)
            for u, item in got.items():
                if item.get("status") in (None, "success") and any(item.get(f) for f in IMAGE_FIELDS):
                    items[u] = item
                elif item.get("status") == "error":
                    errors.append({"taskUUID": u, "message": item.get("message") or "task failed"})
                    items[u] = item
            if errs and not got:
                raise ProviderError("runware: the answer to a submitted task was lost and the task cannot be "
                                    f"found again; it may have been billed (taskUUID {pending[0]})")
            if all(u in items for u in task_uuids):
                return items, errors
            sleep_with_cancel(delay, ctx.is_cancelled)
            delay = min(delay * 1.5, 10.0)
        raise ProviderError(f"runware: lost answer not recovered within {self.deadlines.total_s:.0f}s; "
                            f"the task may have been billed (taskUUID {task_uuids[0]})")

    def generate(self, request: GenerationRequest, ctx: RunContext) -> GenerationResult:
        self.validate(request)
        node = request.node_id
        total = request.batch + 1
        ctx.report(node, 0, total, "uploading references" if request.references else "submitting")
        refs = [as_sent(r) or self.upload_reference(r, ctx) for r in request.references]
        tasks = [self.inference_task(request, i, refs) for i in range(request.batch)]
        ctx.report(node, 0.5, total, f"generating {self.describe()}")
        items: dict = {}
        errors: list = []
        # One task per HTTP request, several in flight: a slow image does not hold the others back,
        # and a 429 backs off only the request it hit.
        with ThreadPoolExecutor(max_workers=min(concurrency(), len(tasks))) as pool:
            for got, errs in pool.map(lambda t: self._submit_one(t, ctx), tasks):
                items.update(got)
                errors.extend(errs)
        ctx.report(node, 1, total, "downloading")
        return self._collect(request, tasks, items, errors, ctx)

    def _submit_one(self, task: dict, ctx: RunContext) -> tuple[dict, list]:
        started = time.monotonic()
        try:
            return self._post_tasks([task], ctx)
        except LostResponse:
            log.warning("runware: answer lost; recovering task %s with getResponse", task["taskUUID"])
            return self._recover([task["taskUUID"]], ctx, started)

    def _collect(self, request, tasks, items, errors, ctx: RunContext) -> GenerationResult:
        transport, _, key = self._client()
        errors_by_task = {e.get("taskUUID"): e for e in errors}
        images, seeds, cost, failure, placeholders = [], [], 0.0, None, False
        for i, task in enumerate(tasks):
            u = task["taskUUID"]
            item = items.get(u)
            try:
                if item is None:
                    err = errors_by_task.get(u) or (errors[0] if errors else {"message": "no result for the task"})
                    raise runware_error(err.get("_status", 200), err, key)
                if item.get("status") == "error":
                    raise runware_error(200, item, key)
                if item.get("cost") is not None:
                    cost += float(item["cost"])
                images.append(self._image_of(item, transport, ctx))
                seeds.append(int(item.get("seed", task["seed"])))
            except ModerationError as exc:
                if self.options.on_moderation != "placeholder":
                    failure = failure or exc
                    continue
                log.warning("%s; returning a placeholder image", exc)
                images.append(placeholder(request.width, request.height))
                placeholders = True
                seeds.append(task["seed"])
            except Flux2Error as exc:
                failure = failure or exc
            ctx.report(request.node_id, 1 + (i + 1) / len(tasks) * (request.batch), request.batch + 1, "")
        result = GenerationResult(images=images, seeds=seeds, cost_usd=round(cost, 6),
                                  info={"tasks": [t["taskUUID"] for t in tasks], "provider": "runware",
                                        "placeholders": placeholders})
        if failure is not None:
            # What was paid for is handed over before the error surfaces, so it is saved, not lost.
            if images:
                ctx.ledger.add_billed(request.node_id, result.cost_usd)
                ctx.on_result(request, result)
            raise failure
        return result

    def _image_of(self, item: dict, transport: Transport, ctx: RunContext):
        what = f"Runware result {item.get('imageUUID') or item.get('taskUUID')}"
        if item.get("imageURL"):
            return decode_provider_image(transport.download(item["imageURL"], what), what)
        if item.get("imageBase64Data"):
            return decode_data_uri(item["imageBase64Data"], what)
        if item.get("imageDataURI"):
            return decode_data_uri(item["imageDataURI"], what)
        if item.get("NSFWContent"):
            raise ModerationError("runware: the result was withheld by the content filter (NSFWContent)")
        raise ProviderError("runware: the result carries no image (refused or filtered)")
