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
from functools import partial
from urllib.parse import urljoin, urlsplit

import httpx

from ..backend import GenerationRequest, GenerationResult, PlannedCall, validated
from ..errors import Cancelled, ConfigError, Flux2Error, InputError, ModerationError, ProviderError
from ..images import placeholder, provider_file
from ..models import BFL
from ..pricing import Estimate, estimate, reference_sizes
from ..reference_urls import as_sent
from ..run_context import RunContext
from ..redaction import scrub
from .common import RemoteBackend, concurrency_from_env
from ..net.keys import base_url, origin, read_key
from .bfl_flux3 import flux3_body, mask_b64, summary as flux3_summary
from .bfl_poll import poll
from .bfl_replies import (CONCURRENCY_ENV, KEY_ENV, PollAnswer, SubmitAnswer, http_error, is_task_id, json_or_text,
                          submit_answer, task_id_in, usd_of)
from .bfl_request import BflRequest
from .retired import retired_error
from .options import RemoteOptions
from .jobs import (Job, JobControl, cached_image, checked_cost, checked_seed, book_recovered, note_sent, run_jobs,
                   sent_earlier, settle, store_arrived)
from ..net.transport import Deadlines, LostResponse, NotSent, Transport

log = logging.getLogger("comfyui_flux2.bfl")

DEFAULT_URL = "https://api.bfl.ai"
REGIONS = {"global": "https://api.bfl.ai", "eu": "https://api.eu.bfl.ai", "us": "https://api.us.bfl.ai"}
URL_ENV, REGION_ENV = "BFL_API_URL", "BFL_REGION"   # KEY_ENV, CONCURRENCY_ENV: bfl_replies (refusals name them)
GENERIC_CONCURRENCY_ENV = "FLUX2_CONCURRENCY"
DEFAULT_CONCURRENCY = 4
MAX_CONCURRENCY = 24            # BFL's default limit of active tasks per account
CANCEL_GRACE_S = 0.3            # after a cancel, how long a poll in flight may take before it is left behind
OUTPUT_FORMATS = {"PNG": "png", "JPEG": "jpeg"}   # FLUX.2 endpoints document jpeg|png only


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

    def _late_cost(self, job: Job, answer: PollAnswer, estimate_one: float | None) -> None:
        """FLUX 3's submit may carry no cost; its poll answer does (top level or in result), in credits."""
        if job.cost_usd is not None or answer.cost is None:
            return
        try:
            checked_cost(job, usd_of(answer.cost), "bfl", estimate_one)
        except ProviderError as exc:
            log.warning("%s", exc)

    def _poll(self, job: Job, transport: BflTransport, key: str, ctx: RunContext, submitted: float) -> PollAnswer:
        """Poll the task until it ends (bfl_poll); the answer of a Ready task."""
        safety = (f"safety_tolerance is {self.options.safety_tolerance} (0 strictest .. "
                  f"{4 if self.model.generation == 3 else 5} most permissive)")
        return poll(job, transport, key, ctx, self.deadlines, submitted, safety)

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
            answer = self._poll(job, transport, key, ctx, submitted)
            self._late_cost(job, answer, estimate_one)
            if answer.prompt is not None and self.model.generation == 3:
                expanded[job.index] = scrub(answer.prompt, 20000)
            self._download(job, answer, transport)
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
                or not is_task_id(task) \
                or not isinstance(locator, str) or not transport.may_authenticate(locator):
            return False
        probe = Job(job.index, job.seed, job.body, task_id=task, locator=locator, sent=True)
        try:
            answer = self._poll(probe, transport, key, ctx, time.monotonic())
            self._late_cost(probe, answer, None)          # FLUX 3: the charge comes with the poll
            self._download(probe, answer, transport)
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
            found = task_id_in(exc.partial.decode("utf-8", "replace"))
            if not found:
                raise LostResponse(f"{exc}; BFL gives no task id before it answers, so the task cannot be "
                                   "recovered and may have been billed - check dashboard.bfl.ai before running "
                                   "again (not resubmitted)") from None
            log.warning("bfl: the submit answer was cut short; polling task %s named in what arrived", found)
            response, answer = None, SubmitAnswer(found)
        except Cancelled:
            job.sent = False
            raise
        if response is not None and response.status_code != 200:
            job.settled = response.status_code < 500        # refused; after a 5xx nobody knows
            if response.status_code in (404, 410):
                # The endpoint is gone (or never was): say what to use instead, and do not retry.
                raise retired_error(self.model, "bfl", f"POST {self.pm.model_id} answered HTTP "
                                    f"{response.status_code}", response.status_code)
            raise http_error(response.status_code, json_or_text(response, key), key, "submit")
        if response is not None:
            answer = submit_answer(response)
        self._take_submit_answer(job, answer, transport, url, estimate_one)

    def _take_submit_answer(self, job: Job, answer: SubmitAnswer, transport: BflTransport, url: str,
                            estimate_one: float | None) -> None:
        """The accepted task's id, where to poll it (only where the key may go) and its charge."""
        job.task_id = answer.id
        # BFL's documented generic form where the answer names no polling URL
        polling_url = answer.polling_url or f"{resolve_base_url()}/v1/get_result?id={job.task_id}"
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
        try:
            checked_cost(job, usd_of(answer.cost), "bfl", estimate_one)
        except ProviderError as exc:
            log.warning("%s", exc)               # the task runs anyway; its cost is just not known
        if job.notes and (answer.input_mp is not None or answer.output_mp is not None):
            job.notes[-1] += f" (BFL counted {answer.output_mp} output MP, {answer.input_mp} input MP)"
        log.info("bfl: task %s accepted (%s credits)", job.task_id,
                 "?" if answer.cost is None else scrub(str(answer.cost), 20))

    def _download(self, job: Job, answer: PollAnswer, transport: BflTransport) -> None:
        what = f"result of task {job.task_id}"
        job.progress = max(job.progress, 0.9)
        try:
            data = transport.download(answer.sample, what)
        except ProviderError as exc:
            raise _reworded(exc, f"{exc} (downloading the {what}, which was billed)") from None
        job.file = provider_file(data, f"BFL {what}")
        job.image = job.file.image
        checked_seed(job, answer.seed, "bfl")       # after the image is kept: a bad seed loses nothing

