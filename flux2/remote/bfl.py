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
import math
import os
import re
import threading
import time
from functools import partial
from urllib.parse import urljoin, urlsplit

import httpx

from ..backend import GenerationRequest, GenerationResult, PlannedCall, validated
from ..errors import (AuthError, BudgetError, Cancelled, ConfigError, Flux2Error, InputError, ModerationError,
                      ProviderError, ProviderTimeout)
from ..images import decode_provider_image, placeholder
from ..models import BFL
from ..pricing import Estimate, estimate, reference_sizes
from ..reference_urls import as_sent
from ..run_context import RunContext
from ..redaction import scrub
from .common import RemoteBackend, concurrency_from_env, redact
from ..net.keys import base_url, origin, read_key
from .bfl_flux3 import flux3_body, mask_b64, summary as flux3_summary
from .bfl_request import BflRequest
from .retired import retired_error
from .options import RemoteOptions
from .jobs import (Job, JobControl, Transient, cached_image, checked_cost, checked_seed, book_recovered, note_sent,
                   poll_until, run_jobs, sent_earlier, settle, store_arrived)
from ..net.transport import GET_RETRY_STATUSES, Deadlines, Garbled, LostResponse, NotSent, Transport, json_body

log = logging.getLogger("comfyui_flux2.bfl")

DEFAULT_URL = "https://api.bfl.ai"
REGIONS = {"global": "https://api.bfl.ai", "eu": "https://api.eu.bfl.ai", "us": "https://api.us.bfl.ai"}
KEY_ENV, URL_ENV, REGION_ENV = "BFL_API_KEY", "BFL_API_URL", "BFL_REGION"
CONCURRENCY_ENV, GENERIC_CONCURRENCY_ENV = "FLUX2_BFL_CONCURRENCY", "FLUX2_CONCURRENCY"
DEFAULT_CONCURRENCY = 4
MAX_CONCURRENCY = 24            # BFL's default limit of active tasks per account
CANCEL_GRACE_S = 0.3            # after a cancel, how long a poll in flight may take before it is left behind
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


def _json_or_text(response: httpx.Response, key: str | None = None):
    try:
        return response.json()
    except ValueError:
        return redact(response.text, key, 200)       # redact first, then cut


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
        return scrub("; ".join(parts), 400)
    if isinstance(detail, dict):
        return scrub("; ".join(f"{k}: {v}" for k, v in list(detail.items())[:8]), 400)
    return scrub(str(detail or ""), 400)


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


class BflBackend(RemoteBackend):
    kind = BFL
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
        if self.model.generation == 3:
            return                              # FLUX 3 has no output_format field: BFL picks the format
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
        n = concurrency_from_env(CONCURRENCY_ENV, MAX_CONCURRENCY)
        if n is None:
            n = concurrency_from_env(GENERIC_CONCURRENCY_ENV)
        return DEFAULT_CONCURRENCY if n is None else min(n, MAX_CONCURRENCY)

    def estimate(self, request: GenerationRequest) -> Estimate:
        sizes, assumed = reference_sizes(request.references)
        return estimate(self.model, BFL, request.width, request.height, sizes, request.batch, assumed,
                        mode=self.options.mode)

    def plan(self, request: GenerationRequest) -> list[PlannedCall]:
        url = resolve_base_url() + self.pm.model_id
        refs = [as_sent(r) or f"<png {r.width}x{r.height} sha256:{r.sha256[:12]}>" for r in request.references]
        mask = f"<png mask {request.mask.width}x{request.mask.height}>" if request.mask is not None else None
        bodies = [self.request_body(request, i, refs, mask).to_json() for i in range(request.batch)]
        if self.model.generation == 3:
            return [PlannedCall(BFL, f"POST {url}", flux3_summary(self.model, request, len(refs)),
                                {"requests": bodies})]
        summary = (f"{request.width}x{request.height} seed {request.seed}"
                   + (f" x{request.batch} (one task each, seeds +i)" if request.batch > 1 else "")
                   + (f", {len(refs)} reference(s)" if refs else ""))
        return [PlannedCall(BFL, f"POST {url}", summary, {"requests": bodies})]

    # -- request building ---------------------------------------------------------------------
    def request_body(self, request: GenerationRequest, index: int, references: list[str],
                     mask: str | None = None):
        opts, pm = self.options, self.pm
        if self.model.generation == 3:
            # No seed field: each image of a batch is its own task and BFL reports the seed it used.
            return flux3_body(self.model, opts, request, references, mask)
        if self.model.family == "flex":
            # flex upsamples by default at BFL: always say what the user chose (off keeps edits faithful).
            upsampling = bool(opts.prompt_upsampling)
        else:
            # Not in BFL's published pro/max schema (ComfyUI sends it): only sent when asked for.
            upsampling = True if pm.takes_upsampling and opts.prompt_upsampling else None
        return BflRequest(
            prompt=request.prompt,
            width=request.width,
            height=request.height,
            # Each image of a batch is its own task with its own seed, so every image is reproducible.
            seed=request.seeds[index],
            safety_tolerance=int(opts.safety_tolerance),
            output_format=OUTPUT_FORMATS.get(opts.output_format, "png"),
            prompt_upsampling=upsampling,
            steps=int(opts.steps) if pm.takes_steps and opts.steps else None,
            guidance=float(opts.guidance) if pm.takes_guidance and opts.guidance else None,
            input_images=tuple(references),
        )

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
        request = validated(self, request)      # trusted when run() already checked it
        transport, base, key = self._client()
        url = base + self.pm.model_id
        refs = [as_sent(r) or base64.b64encode(r.png).decode("ascii") for r in request.references]
        mask = mask_b64(request)
        jobs = [Job(i, seed, self.request_body(request, i, refs, mask)) for i, seed in enumerate(request.seeds)]
        expanded: dict[int, str] = {}           # FLUX 3: the prompt as BFL expanded it, per image
        estimate_one = self.estimate_one(request)
        cache_key = partial(self.image_cache_key, request)
        ctx.report(request.node_id, 0, float(request.batch), f"submitting to {self.describe()}")

        def work(job: Job, control: JobControl) -> None:
            try:
                self._work(job, control, transport, url, key, ctx, estimate_one, request, cache_key, expanded)
            finally:
                store_arrived(job, ctx, cache_key, self.describe(), request.batch)

        # Polling stops within a moment of a cancel (polls are free and the task ids are named);
        # an abort leaves at once.
        outcome = run_jobs(jobs, work, ctx=ctx, node=request.node_id, label=self.describe(),
                           concurrency=self.concurrency(), cancel_grace_s=CANCEL_GRACE_S, unit_usd=estimate_one,
                           cached=lambda job: cached_image(job, ctx, cache_key, request.batch)
                           or self._fetch_earlier(job, transport, key, ctx, cache_key, request.batch))
        charged = [j for j in jobs if j.charged]
        credits = None if any(j.cost_usd is None for j in charged) else round(sum(j.cost_usd for j in charged) * 100, 4)
        info = {"credits": credits}
        if expanded:
            info["expanded_prompts"] = [expanded.get(j.index) for j in jobs if j.image is not None]
        return settle(jobs, request, ctx, provider="bfl", describe=self.describe(), cache_key=cache_key,
                      outcome=outcome, info=info)

    def _late_cost(self, job: Job, result: dict, estimate_one: float | None) -> None:
        """FLUX 3's submit may carry no cost; its poll answer does (top level or in result), in credits."""
        credits = result.get("cost")
        if job.cost_usd is not None or credits is None:
            return
        try:
            checked_cost(job, credits / 100 if _is_number(credits) else credits, "bfl", estimate_one)
        except ProviderError as exc:
            log.warning("%s", exc)

    def _work(self, job: Job, control: JobControl, transport: BflTransport, url: str, key: str, ctx: RunContext,
              estimate_one: float | None, request: GenerationRequest, cache_key, expanded: dict) -> None:
        """One image: submit, note the task (a run after a kill polls it instead of paying again), poll
        until `total_s` from the submit, download. FLUX 3: its cost comes with the poll, and the prompt
        BFL expanded goes into `expanded` (by image index)."""
        tag = f"image {job.index + 1}/{request.batch} (seed {job.seed}): " if request.batch > 1 else ""
        try:
            submitted = time.monotonic()     # the task's deadline counts from here, whatever the polls do
            try:
                self._submit(job, transport, url, key, ctx, estimate_one)
            except LostResponse:
                raise                        # one answer lost says nothing about the other images
            except Flux2Error as exc:
                control.stop_new(exc)        # a refused submit: the others would be refused too
                raise
            # The submit answer's charge goes with it: a later run recovering the task books it (billed then).
            note_sent(job, ctx, cache_key, {"provider": BFL, "host": resolve_base_url(), "task": job.task_id,
                                            "locator": job.locator, "cost_usd": job.cost_usd})
            job.progress = 0.05
            result = self._poll(job, transport, key, ctx, submitted)
            self._late_cost(job, result, estimate_one)
            if isinstance(result.get("prompt"), str) and self.model.generation == 3:
                expanded[job.index] = scrub(result["prompt"], 20000)
            self._download(job, result, transport)
        except ModerationError as exc:
            if self.options.on_moderation != "placeholder":
                raise _tagged(exc, tag) from None
            log.warning("%s; returning a placeholder image", exc)
            job.image, job.placeholder = placeholder(request.width, request.height), True
        except Flux2Error as exc:
            raise _tagged(exc, tag) from None
        except httpx.HTTPError as exc:      # e.g. a malformed URL in an answer
            raise ProviderError(f"bfl: {tag}{type(exc).__name__} talking to BFL") from None

    def _fetch_earlier(self, job: Job, transport: BflTransport, key: str, ctx: RunContext, cache_key,
                       batch: int) -> bool:
        """An earlier run submitted this image's task, got its id, and never got the image (killed): poll
        that task and download its result instead of paying again. False where there is none, or it is
        unknown, expired, moderated or failed at BFL (then the image is made anew)."""
        earlier = sent_earlier(job, ctx, cache_key)
        task, locator = (earlier.get("task"), earlier.get("locator")) if earlier else (None, None)
        if not earlier or earlier.get("provider") != BFL or earlier.get("host") != resolve_base_url() \
                or not isinstance(task, str) or not _ID_IN_TEXT.fullmatch(f'"id":"{task}"') \
                or not isinstance(locator, str) or not transport.may_authenticate(locator):
            return False
        probe = Job(job.index, job.seed, job.body, task_id=task, locator=locator, sent=True)
        try:
            result = self._poll(probe, transport, key, ctx, time.monotonic())
            self._late_cost(probe, result, None)          # FLUX 3: the charge comes with the poll
            self._download(probe, result, transport)
        except Cancelled:
            raise
        except (Flux2Error, httpx.HTTPError) as exc:
            log.warning("bfl: task %s of an earlier run did not come back (%s); making the image anew", task, exc)
            return False
        job.image, job.result_seed, job.settled = probe.image, probe.result_seed, True
        book_recovered(job, probe.cost_usd if probe.cost_usd is not None else earlier.get("cost_usd"), "bfl", task,
                       ctx, cache_key, self.describe(), batch)
        return True

    def _submit(self, job: Job, transport: BflTransport, url: str, key: str, ctx: RunContext,
                estimate_one: float | None) -> None:
        job.sent = True
        try:
            response = transport.submit(url, job.body.to_json(), is_cancelled=ctx.is_cancelled)
        except NotSent as exc:
            job.sent = False
            raise _reworded(exc, f"{exc} - check {URL_ENV}/{REGION_ENV} and the network") from None
        except LostResponse as exc:
            # BFL has no idempotency key and gives no task id before it answers: sending again could
            # start (and bill) a second task. An answer cut short may still name it: then it is polled.
            found = _ID_IN_TEXT.search(exc.partial.decode("utf-8", "replace"))
            if not found:
                raise LostResponse(f"{exc}; BFL gives no task id before it answers, so the task cannot be "
                                   "recovered and may have been billed - check dashboard.bfl.ai before running "
                                   "again (not resubmitted)") from None
            log.warning("bfl: the submit answer was cut short; polling task %s named in what arrived", found.group(1))
            response, body = None, {"id": found.group(1)}
        except Cancelled:
            job.sent = False
            raise
        if response is not None and response.status_code != 200:
            job.settled = response.status_code < 500        # refused; after a 5xx nobody knows
            if response.status_code in (404, 410):
                # The endpoint is gone (or never was): say what to use instead, and do not retry.
                raise retired_error(self.model, "bfl", f"POST {self.pm.model_id} answered HTTP "
                                    f"{response.status_code}", response.status_code)
            raise http_error(response.status_code, _json_or_text(response, key), key, "submit")
        if response is not None:
            body = submit_answer(response, key)
        job.task_id = body["id"]
        polling_url = body.get("polling_url")
        if not isinstance(polling_url, str) or not polling_url:
            polling_url = f"{resolve_base_url()}/v1/get_result?id={job.task_id}"   # BFL's documented generic form
        polling_url = urljoin(url, polling_url)          # absolute URLs pass unchanged
        job.locator = polling_url
        if not transport.may_authenticate(polling_url):
            try:
                scheme, host, port = origin(polling_url)
                where = f"{scheme}://{host}:{port}"
            except ValueError:
                where = "an unparseable URL"
            job.locator = None                   # not shown: it is not a URL the user should trust
            raise ConfigError(f"bfl: task {job.task_id} gave a polling URL on {where}, which is neither the "
                              f"configured host ({URL_ENV}/{REGION_ENV}) nor an official https *.bfl.ai host; "
                              f"refusing to send {KEY_ENV} there (the task may still run and be billed)")
        credits = body.get("cost")
        try:
            checked_cost(job, None if credits is None else (credits / 100 if _is_number(credits) else credits),
                         "bfl", estimate_one)
        except ProviderError as exc:
            log.warning("%s", exc)               # the task runs anyway; its cost is just not known
        if job.notes and (_is_number(body.get("input_mp")) or _is_number(body.get("output_mp"))):
            job.notes[-1] += f" (BFL counted {body.get('output_mp')} output MP, {body.get('input_mp')} input MP)"
        log.info("bfl: task %s accepted (%s credits)", job.task_id, "?" if credits is None else scrub(str(credits), 20))

    def _poll(self, job: Job, transport: BflTransport, key: str, ctx: RunContext, submitted: float) -> dict:
        """Poll until a terminal status; returns the `result` object of a Ready task. Failing polls
        (5xx, dropped connections, garbled answers) are retried until the task's deadline: `total_s`
        from `submitted` (BFL's documented 600 s), which no poll, hanging or retried, may pass."""
        not_found = [0]
        deadline = submitted + self.deadlines.total_s

        def fetch():
            try:
                response = transport.get(job.locator, keyed=True, is_cancelled=ctx.is_cancelled, deadline=deadline)
            except Cancelled:
                raise
            except ProviderTimeout:
                return None                  # the task's deadline: poll_until says so, with the last poll's fault
            except ProviderError as exc:
                raise Transient(str(exc)) from None
            body = _json_or_text(response, key)
            if response.status_code in GET_RETRY_STATUSES:
                raise Transient(str(http_error(response.status_code, body, key, f"polling task {job.task_id}")))
            status = body.get("status") if isinstance(body, dict) else None
            if response.status_code == 404 or status == "Task not found":
                not_found[0] += 1
                if not_found[0] > NOT_FOUND_TOLERANCE:
                    job.settled = True          # unknown or expired at BFL: nothing more will come
                    raise ProviderError(f"bfl: task {job.task_id}: Task not found (unknown or expired)",
                                        status=response.status_code, code="Task not found")
                return None
            not_found[0] = 0
            if response.status_code == 202:
                return None
            if response.status_code != 200:
                raise http_error(response.status_code, body, key, f"polling task {job.task_id}")
            if not isinstance(body, dict):
                raise Transient(f"polling task {job.task_id} answered something that is not a JSON object")
            return self._poll_status(job, body, key)

        return poll_until(fetch, deadlines=self.deadlines, started=submitted, is_cancelled=ctx.is_cancelled,
                          what=f"bfl: task {job.task_id}")

    def _poll_status(self, job: Job, body: dict, key: str) -> dict | None:
        """One poll answer -> the Ready result, None while pending, or the terminal error."""
        status = body.get("status")
        if status == "Ready":
            job.charged = job.settled = True
            result = body.get("result")
            if not isinstance(result, dict) or not isinstance(result.get("sample"), str):
                raise ProviderError(f"bfl: task {job.task_id} is Ready (and billed) but carries no result.sample URL")
            if result.get("cost") is None and body.get("cost") is not None:
                result = {**result, "cost": body["cost"]}
            return result
        if status in MODERATED:
            job.settled = True
            what = "the prompt or a reference" if status == "Request Moderated" else "the generated image"
            reasons = redact(detail_text(body.get("details")), key, 300) if body.get("details") else ""
            raise ModerationError(
                f"bfl: {status} - moderated (not charged): BFL's safety filter refused {what}"
                + (f" ({reasons})" if reasons else "")
                + f"; safety_tolerance is {self.options.safety_tolerance} (0 strictest .. "
                + f"{4 if self.model.generation == 3 else 5} most permissive)",
                code=status)
        if status == "Error":
            job.settled = True
            reason = redact(detail_text(body.get("details") or body.get("error") or body.get("result") or ""), key, 300)
            raise ProviderError(f"bfl: task {job.task_id} failed (status Error)" + (f": {reason}" if reason else ""),
                                code="Error")
        # Pending, and statuses this client does not know (Reasoning, Generating...): not yet.
        progress = body.get("progress")
        if _is_number(progress) and math.isfinite(progress):
            job.progress = max(job.progress, 0.05 + 0.85 * min(max(float(progress), 0.0), 1.0))
        return None

    def _download(self, job: Job, result: dict, transport: BflTransport) -> None:
        what = f"result of task {job.task_id}"
        job.progress = max(job.progress, 0.9)
        try:
            data = transport.download(result["sample"], what)
        except ProviderError as exc:
            raise _reworded(exc, f"{exc} (downloading the {what}, which was billed)") from None
        job.image = decode_provider_image(data, f"BFL {what}")
        checked_seed(job, result.get("seed"), "bfl")       # after the image is kept: a bad seed loses nothing


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


_ID_IN_TEXT = re.compile(r'"id"\s*:\s*"([0-9A-Za-z_-]{8,64})"')


def submit_answer(response: httpx.Response, key: str | None) -> dict:
    """The submit's 200 answer, parsed in one place. An answer that cannot be read may still have
    started (and billed) a task: its id is searched for in the text so the task can still be polled."""
    try:
        body = json_body(response, "bfl")
    except Garbled:
        found = _ID_IN_TEXT.search(response.text)
        if not found:
            raise Garbled("bfl: the submit answer (HTTP 200) is not JSON and names no task id; the task may "
                          "have been billed - check dashboard.bfl.ai before running again (not resubmitted)",
                          status=200) from None
        log.warning("bfl: the submit answer is garbled; polling task %s found in it", found.group(1))
        return {"id": found.group(1)}
    if not isinstance(body, dict) or not isinstance(body.get("id"), str) or not body["id"] \
            or not _ID_IN_TEXT.fullmatch(f'"id":"{body["id"]}"'):
        raise ProviderError("bfl: the submit answer (HTTP 200) carries no usable task id; the task may have been "
                            "billed - check dashboard.bfl.ai before running again (not resubmitted)")
    return body
