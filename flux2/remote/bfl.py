"""Black Forest Labs API backend (api.bfl.ai): submit a task, poll its `polling_url`, download at once.

Protocol (docs.bfl.ai; verified in docs/provider-facts-check.md §3):
- `POST {base}/v1/flux-2-<model>` with header `x-key` and a JSON body; the answer is
  `{id, polling_url, cost, input_mp, output_mp}` with `cost` in credits (1 credit = $0.01).
- `GET polling_url` (x-key again) -> `{id, status, result, progress}` until `Ready`, then
  `result.sample` is a signed URL that expires in about 10 minutes, so it is fetched at once.
- Each image of a batch is its own task (seed + i), submitted concurrently.

Hosts, from the environment only: `BFL_API_URL` (a full base URL, e.g. https://api.eu.bfl.ai or a
loopback server) wins; otherwise `BFL_REGION` = global | eu | us picks api.bfl.ai / api.eu.bfl.ai /
api.us.bfl.ai. The key goes to that host and, because BFL hands out polling URLs on regional hosts
(api.eu2.bfl.ai, api.us3.bfl.ai...), to official https *.bfl.ai hosts - never anywhere else.
"""
from __future__ import annotations

import base64
import copy
import logging
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass
from urllib.parse import urljoin, urlsplit

import httpx
import numpy as np

from ..backend import GenerationRequest, GenerationResult, PlannedCall
from ..errors import (AuthError, BudgetError, Cancelled, ConfigError, Flux2Error, InputError, ModerationError,
                      ProviderError, ProviderTimeout)
from ..images import decode_provider_image, placeholder
from ..models import BFL
from ..pricing import Estimate, estimate, reference_sizes
from ..reference_urls import as_sent
from ..run_context import RunContext
from .common import RemoteBackend, redact
from .keys import base_url, origin, read_key
from .options import RemoteOptions
from .transport import GET_RETRY_STATUSES, Deadlines, LostResponse, Transport, json_body, sleep_with_cancel

log = logging.getLogger("comfyui_flux2.bfl")

DEFAULT_URL = "https://api.bfl.ai"
REGIONS = {"global": "https://api.bfl.ai", "eu": "https://api.eu.bfl.ai", "us": "https://api.us.bfl.ai"}
KEY_ENV, URL_ENV, REGION_ENV = "BFL_API_KEY", "BFL_API_URL", "BFL_REGION"
CONCURRENCY_ENV, GENERIC_CONCURRENCY_ENV = "FLUX2_BFL_CONCURRENCY", "FLUX2_CONCURRENCY"
DEFAULT_CONCURRENCY = 4
MAX_CONCURRENCY = 24            # BFL's default limit of active tasks per account
POLL_TRANSIENT_ROUNDS = 2       # polls whose transport retries all failed (5xx, connection) before giving up
NOT_FOUND_TOLERANCE = 5         # a just-submitted task may answer 404 / "Task not found" for a moment
OUTPUT_FORMATS = {"PNG": "png", "JPEG": "jpeg"}   # FLUX.2 endpoints document jpeg|png only
MODERATED = ("Request Moderated", "Content Moderated")


def resolve_base_url() -> str:
    """BFL_API_URL if set, else the BFL_REGION host, else the global host (no trailing /v1)."""
    if os.environ.get(URL_ENV, "").strip():
        url = base_url(URL_ENV, DEFAULT_URL)
        return url[:-3] if url.endswith("/v1") else url       # endpoints already start with /v1
    region = os.environ.get(REGION_ENV, "").strip().lower()
    if not region:
        return DEFAULT_URL
    if region not in REGIONS:
        raise ConfigError(f"{REGION_ENV} must be one of {', '.join(REGIONS)}, got {region!r}")
    return REGIONS[region]


def is_official_bfl_url(url: str) -> bool:
    """https on port 443 of bfl.ai or a subdomain, with no user info, parsed alike by urllib and httpx."""
    if not isinstance(url, str) or "\\" in url or not url.isprintable() or any(c.isspace() for c in url):
        return False
    try:
        parts = urlsplit(url)
        port = parts.port
        parsed = httpx.URL(url)
    except (ValueError, httpx.InvalidURL):
        return False
    host = (parts.hostname or "").lower()
    if parts.scheme != "https" or port not in (None, 443) or parts.username is not None or parts.password is not None:
        return False
    if not (host == "bfl.ai" or host.endswith(".bfl.ai")):
        return False
    return parsed.scheme == "https" and parsed.host.lower() == host


class BflTransport(Transport):
    """Transport whose key may also go to official https *.bfl.ai hosts (BFL's regional polling URLs)."""

    def may_authenticate(self, url: str) -> bool:
        try:
            return super().may_authenticate(url) or is_official_bfl_url(url)
        except ValueError:                    # e.g. a port that is not a number
            return False


def _json_or_text(response: httpx.Response):
    try:
        return response.json()
    except ValueError:
        return response.text[:200]


def detail_text(body) -> str:
    """FastAPI `detail` (a string or a list of {loc, msg, type}) or BFL's {error, message} -> one line."""
    detail = body
    if isinstance(body, dict):
        detail = next((body[k] for k in ("detail", "message", "error") if body.get(k) not in (None, "")), "")
    if isinstance(detail, list):
        parts = []
        for item in detail[:8]:
            if isinstance(item, dict):
                loc = [str(x) for x in (item.get("loc") or []) if x != "body"]
                parts.append(f"{'.'.join(loc) or 'body'}: {item.get('msg') or item.get('type') or 'invalid'}")
            else:
                parts.append(str(item))
        if len(detail) > 8:
            parts.append(f"and {len(detail) - 8} more")
        return "; ".join(parts)
    if isinstance(detail, dict):
        return "; ".join(f"{k}: {v}" for k, v in list(detail.items())[:8])[:400]
    return str(detail or "")[:400]


def http_error(status: int, body, key: str | None, what: str) -> Flux2Error:
    """An HTTP error answer of the BFL API -> the matching exception, one line, never the key."""
    detail = detail_text(body)
    text = redact(f"bfl: {what} answered HTTP {status}" + (f": {detail}" if detail else ""), key)
    if status in (401, 403):
        return AuthError(f"{text} - check {KEY_ENV}")
    if status == 402:
        return BudgetError(f"{text} (insufficient BFL credits; top up at dashboard.bfl.ai)")
    if status == 422:
        return ProviderError(f"{text} (BFL refused the request fields)", status=422, code="validation")
    if status == 429:
        return ProviderError(f"{text} (over BFL's limit of active tasks; lower {CONCURRENCY_ENV})",
                             status=429, retryable=True)
    return ProviderError(text, status=status, retryable=status in (500, 502, 503, 504))


def _reworded(exc: Flux2Error, message: str) -> Flux2Error:
    """The same exception (type, status, code) with another message."""
    new = copy.copy(exc)
    new.args = (" ".join(message.split()),)
    return new


def _tagged(exc: Flux2Error, tag: str) -> Flux2Error:
    """Name the image of a batch an error belongs to: "bfl: image 2/4 (seed 11): ..."."""
    text = str(exc)
    if not tag or isinstance(exc, Cancelled):
        return exc
    return _reworded(exc, f"bfl: {tag}{text[5:]}" if text.startswith("bfl: ") else f"{tag}{text}")


@dataclass
class _Task:
    """One image of a request: its submit body and what became of it."""

    index: int
    seed: int
    body: dict
    progress: float = 0.0           # 0..1, read by the reporting thread
    task_id: str | None = None
    polling_url: str | None = None
    credits: float | None = None
    charged: bool = False           # BFL bills a task that reached Ready (moderated ones are free)
    image: np.ndarray | None = None
    error: Flux2Error | None = None


class BflBackend(RemoteBackend):
    kind = BFL
    label = "BFL"
    takes_reference_urls = ("url",)             # input_image* take a URL (or base64)

    def __init__(self, model_name: str, options: RemoteOptions = RemoteOptions(),
                 deadlines: Deadlines = Deadlines(), http_transport: httpx.BaseTransport | None = None,
                 concurrency: int | None = None):
        super().__init__(model_name, options, deadlines, http_transport)
        self._concurrency = concurrency
        self._transport: BflTransport | None = None
        self._transport_base: str | None = None
        self._lock = threading.Lock()

    # -- Backend protocol ---------------------------------------------------------------------
    def host(self) -> str:
        return resolve_base_url()

    def validate_options(self) -> None:
        if self.options.output_format not in OUTPUT_FORMATS:
            # Refused rather than silently turned into PNG: the user asked for a format BFL does not make.
            raise InputError(f"output_format {self.options.output_format} is not offered by BFL's FLUX.2 API; "
                             "choose PNG or JPEG")

    def check_ready(self) -> None:
        resolve_base_url()
        read_key(KEY_ENV)
        self.concurrency()

    def concurrency(self) -> int:
        if self._concurrency is not None:
            return max(1, min(int(self._concurrency), MAX_CONCURRENCY))
        # FLUX2_BFL_CONCURRENCY, else the pack-wide FLUX2_CONCURRENCY (capped at BFL's account limit).
        for env in (CONCURRENCY_ENV, GENERIC_CONCURRENCY_ENV):
            raw = os.environ.get(env, "").strip()
            if not raw:
                continue
            try:
                n = int(raw)
            except ValueError:
                n = 0
            if n < 1 or (env == CONCURRENCY_ENV and n > MAX_CONCURRENCY):
                raise ConfigError(f"{env} must be an integer 1..{MAX_CONCURRENCY}, got {raw!r}")
            return min(n, MAX_CONCURRENCY)
        return DEFAULT_CONCURRENCY

    def estimate(self, request: GenerationRequest) -> Estimate:
        sizes, assumed = reference_sizes(request.references)
        return estimate(self.model, BFL, request.width, request.height, sizes, request.batch, assumed)

    def plan(self, request: GenerationRequest) -> list[PlannedCall]:
        url = resolve_base_url() + self.pm.model_id
        refs = [as_sent(r) or f"<png {r.width}x{r.height} sha256:{r.sha256[:12]}>" for r in request.references]
        bodies = [self.request_body(request, i, refs) for i in range(request.batch)]
        summary = (f"{request.width}x{request.height} seed {request.seed}"
                   + (f" x{request.batch} (one task each, seeds +i)" if request.batch > 1 else "")
                   + (f", {len(refs)} reference(s)" if refs else ""))
        return [PlannedCall(BFL, f"POST {url}", summary, {"requests": bodies})]

    # -- request building ---------------------------------------------------------------------
    def request_body(self, request: GenerationRequest, index: int, references: list[str]) -> dict:
        opts, pm = self.options, self.pm
        body = {
            "prompt": request.prompt,
            "width": request.width,
            "height": request.height,
            # Each image of a batch is its own task with its own seed, so every image is reproducible.
            "seed": request.seed + index,
            "safety_tolerance": int(opts.safety_tolerance),
            "output_format": OUTPUT_FORMATS.get(opts.output_format, "png"),
        }
        if self.model.family == "flex":
            # flex upsamples by default at BFL: always say what the user chose (off keeps edits faithful).
            body["prompt_upsampling"] = bool(opts.prompt_upsampling)
        elif pm.takes_upsampling and opts.prompt_upsampling:
            # Not in BFL's published pro/max schema (ComfyUI sends it): only sent when asked for.
            body["prompt_upsampling"] = True
        if pm.takes_steps and opts.steps:
            body["steps"] = int(opts.steps)
        if pm.takes_guidance and opts.guidance:
            body["guidance"] = float(opts.guidance)
        for i, ref in enumerate(references):
            body["input_image" if i == 0 else f"input_image_{i + 1}"] = ref
        return body

    # -- execution ----------------------------------------------------------------------------
    def _client(self) -> tuple[BflTransport, str, str]:
        base = resolve_base_url()
        key = read_key(KEY_ENV)
        with self._lock:
            if self._transport is None or self._transport_base != base:
                self._transport = BflTransport("bfl", [base], lambda: {"x-key": read_key(KEY_ENV)},
                                               self.deadlines, self._http_transport)
                self._transport_base = base
            return self._transport, base, key

    def generate(self, request: GenerationRequest, ctx: RunContext) -> GenerationResult:
        self.validate(request)
        transport, base, key = self._client()
        url = base + self.pm.model_id
        refs = [as_sent(r) or base64.b64encode(r.png).decode("ascii") for r in request.references]
        tasks = [_Task(i, request.seed + i, self.request_body(request, i, refs)) for i in range(request.batch)]
        node, total = request.node_id, float(request.batch)
        stop = threading.Event()        # set when a submit is refused: the others would be refused too
        ctx.report(node, 0, total, f"submitting to {self.describe()}")
        pool = ThreadPoolExecutor(max_workers=min(request.batch, self.concurrency()), thread_name_prefix="flux2-bfl")
        futures = [pool.submit(self._run_task, t, transport, url, key, request, ctx, stop) for t in tasks]
        cancelled_at = None
        last = -1.0
        pending = set(futures)
        try:
            # Progress is reported from this (the caller's) thread only; workers just update numbers.
            while pending:
                _, pending = wait(pending, timeout=0.05)
                done = round(sum(t.progress for t in tasks), 3)
                if done != last:
                    ready = sum(1 for t in tasks if t.image is not None)
                    ctx.report(node, done, total, f"{self.describe()}: {ready}/{request.batch} ready")
                    last = done
                if cancelled_at is None and ctx.is_cancelled is not None and ctx.is_cancelled():
                    cancelled_at = time.monotonic()
                    stop.set()
                if cancelled_at is not None and time.monotonic() - cancelled_at > 0.3:
                    break               # a worker stuck in a network call must not hold the cancel back
        finally:
            pool.shutdown(wait=not pending, cancel_futures=True)
        for f in futures:
            if f.done() and not f.cancelled() and f.exception() is not None:
                raise f.exception()     # a bug, not a provider answer
        if pending:
            for t in tasks:
                if t.image is None and t.error is None:
                    # A submitted task goes on at BFL: say which, so the user can find it there.
                    t.error = Cancelled("cancelled by the user" + (
                        f"; BFL task {t.task_id} was already submitted and may still finish and be billed"
                        if t.task_id else ""))
        return self._collect(request, tasks, ctx)

    def _run_task(self, t: _Task, transport: BflTransport, url: str, key: str, request: GenerationRequest,
                  ctx: RunContext, stop: threading.Event) -> None:
        tag = f"image {t.index + 1}/{request.batch} (seed {t.seed}): " if request.batch > 1 else ""
        try:
            if stop.is_set():
                if ctx.is_cancelled is not None and ctx.is_cancelled():
                    raise Cancelled("cancelled by the user")
                return                  # not submitted: an earlier submit was refused
            try:
                self._submit(t, transport, url, key, ctx)
            except Flux2Error:
                stop.set()
                raise
            t.progress = 0.05
            result = self._poll(t, transport, key, ctx)
            t.image = self._download(t, result, transport, ctx)
            t.progress = 1.0
        except ModerationError as exc:
            if self.options.on_moderation == "placeholder":
                log.warning("%s; returning a placeholder image", exc)
                t.image = placeholder(request.width, request.height)
                t.progress = 1.0
            else:
                t.error = _tagged(exc, tag)
        except Flux2Error as exc:
            t.error = _tagged(exc, tag)
        except httpx.HTTPError as exc:  # e.g. a malformed URL in an answer
            t.error = ProviderError(f"bfl: {tag}{type(exc).__name__} talking to BFL")

    def _submit(self, t: _Task, transport: BflTransport, url: str, key: str, ctx: RunContext) -> None:
        try:
            response = transport.submit(url, t.body, is_cancelled=ctx.is_cancelled)
        except LostResponse as exc:
            # BFL has no idempotency key and gives no task id before it answers: sending again could
            # start (and bill) a second task, and the first one cannot be looked up.
            raise LostResponse(f"{exc}; BFL gives no task id before it answers, so the task cannot be "
                               "recovered and may have been billed - check dashboard.bfl.ai before running "
                               "again (not resubmitted)") from None
        except ProviderError as exc:
            if exc.retryable and exc.status is None:
                raise _reworded(exc, f"{exc} - check {URL_ENV}/{REGION_ENV} and the network") from None
            raise
        if response.status_code != 200:
            raise http_error(response.status_code, _json_or_text(response), key, "submit")
        body = json_body(response, "bfl")
        if not isinstance(body, dict) or not isinstance(body.get("id"), str) or not body["id"]:
            raise ProviderError("bfl: the submit answer carries no task id")
        t.task_id = body["id"]
        polling_url = body.get("polling_url")
        if not isinstance(polling_url, str) or not polling_url:
            polling_url = f"{resolve_base_url()}/v1/get_result?id={t.task_id}"   # BFL's documented generic form
        polling_url = urljoin(url, polling_url)          # absolute URLs pass unchanged
        if not transport.may_authenticate(polling_url):
            try:
                scheme, host, port = origin(polling_url)
                where = f"{scheme}://{host}:{port}"
            except ValueError:
                where = "an unparseable URL"
            raise ConfigError(f"bfl: task {t.task_id} gave a polling URL on {where}, which is neither the "
                              f"configured host ({URL_ENV}/{REGION_ENV}) nor an official https *.bfl.ai host; "
                              f"refusing to send {KEY_ENV} there (the task may still run and be billed)")
        t.polling_url = polling_url
        cost = body.get("cost")
        t.credits = float(cost) if isinstance(cost, (int, float)) and not isinstance(cost, bool) else None
        log.info("bfl: task %s accepted (%s credits)", t.task_id, "?" if t.credits is None else f"{t.credits:g}")

    def _poll(self, t: _Task, transport: BflTransport, key: str, ctx: RunContext) -> dict:
        """Poll until a terminal status; returns the `result` object of a Ready task."""
        d = self.deadlines
        started = time.monotonic()
        delay = d.backoff_s
        not_found = transient = 0
        while True:
            sleep_with_cancel(delay, ctx.is_cancelled)
            delay = min(delay * 1.5, d.backoff_cap_s)
            if time.monotonic() - started > d.total_s:
                raise ProviderTimeout(f"bfl: task {t.task_id} did not finish within {d.total_s:g}s; it may "
                                      "still finish and be billed")
            try:
                response = transport.get(t.polling_url, keyed=True, is_cancelled=ctx.is_cancelled)
            except ProviderError as exc:
                # The transport already retried; a paid task deserves a few more rounds at poll pace.
                transient += 1
                if transient > POLL_TRANSIENT_ROUNDS:
                    raise _reworded(exc, f"{exc} while polling task {t.task_id}; it may still finish and be "
                                         "billed") from None
                continue
            body = _json_or_text(response)
            if response.status_code in GET_RETRY_STATUSES:
                transient += 1
                if transient > POLL_TRANSIENT_ROUNDS:
                    err = http_error(response.status_code, body, key, f"polling task {t.task_id}")
                    raise _reworded(err, f"{err} (still failing after {transient} rounds of retries); the task "
                                         "may still finish and be billed") from None
                continue
            transient = 0
            status = body.get("status") if isinstance(body, dict) else None
            if response.status_code == 404 or status == "Task not found":
                not_found += 1
                if not_found > NOT_FOUND_TOLERANCE:
                    raise ProviderError(f"bfl: task {t.task_id}: Task not found (unknown or expired)",
                                        status=response.status_code, code="Task not found")
                continue
            not_found = 0
            if response.status_code == 202:
                continue
            if response.status_code != 200:
                raise http_error(response.status_code, body, key, f"polling task {t.task_id}")
            if not isinstance(body, dict):
                raise ProviderError(f"bfl: polling task {t.task_id} answered something that is not a JSON object")
            if status == "Ready":
                t.charged = True
                result = body.get("result")
                if not isinstance(result, dict) or not isinstance(result.get("sample"), str):
                    raise ProviderError(f"bfl: task {t.task_id} is Ready but carries no result.sample URL")
                return result
            if status in MODERATED:
                what = "the prompt or a reference" if status == "Request Moderated" else "the generated image"
                reasons = detail_text(body.get("details")) if body.get("details") else ""
                raise ModerationError(
                    f"bfl: {status} - moderated (not charged): BFL's safety filter refused {what}"
                    + (f" ({reasons})" if reasons else "")
                    + f"; safety_tolerance is {self.options.safety_tolerance} (0 strictest .. 5 most permissive)",
                    code=status)
            if status == "Error":
                reason = detail_text(body.get("details") or body.get("error") or body.get("result") or "")
                raise ProviderError(f"bfl: task {t.task_id} failed (status Error)" + (f": {reason}" if reason else ""),
                                    code="Error")
            # Pending, and statuses this client does not know (Reasoning, Generating...): not yet.
            progress = body.get("progress")
            if isinstance(progress, (int, float)) and not isinstance(progress, bool):
                t.progress = max(t.progress, 0.05 + 0.85 * min(max(float(progress), 0.0), 1.0))

    def _download(self, t: _Task, result: dict, transport: BflTransport, ctx: RunContext) -> np.ndarray:
        what = f"result of task {t.task_id}"
        t.progress = max(t.progress, 0.9)
        try:
            data = transport.download(result["sample"], what)
        except ProviderError as exc:
            raise _reworded(exc, f"{exc} (downloading the {what}, which was billed)") from None
        seed = result.get("seed")
        if isinstance(seed, int) and not isinstance(seed, bool):
            t.seed = seed
        return decode_provider_image(data, f"BFL {what}")

    def _collect(self, request: GenerationRequest, tasks: list[_Task], ctx: RunContext) -> GenerationResult:
        images = [t.image for t in tasks if t.image is not None]
        seeds = [t.seed for t in tasks if t.image is not None]
        charged = [t for t in tasks if t.charged]
        cost = None if any(t.credits is None for t in charged) else round(sum(t.credits for t in charged) / 100, 6)
        result = GenerationResult(images=images, seeds=seeds, cost_usd=cost,
                                  info={"provider": "bfl", "tasks": [t.task_id for t in tasks],
                                        "credits": None if cost is None else round(cost * 100, 4)})
        errors = [t.error for t in tasks if t.error is not None]
        if not errors and len(images) < len(tasks):
            errors = [ProviderError("bfl: some images of the batch were not submitted")]
        if errors:
            failure = next((e for e in errors if isinstance(e, Cancelled)), errors[0])
            # What was paid for is handed over (and booked) before the error surfaces, so it is not lost.
            if images or cost:
                ctx.ledger.add_billed(request.node_id, cost)
            if images:
                ctx.on_result(request, result)
            raise failure
        return result
