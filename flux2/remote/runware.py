"""Runware `imageInference` backend (HTTP API, task arrays, `data` / `errors` envelopes)."""
from __future__ import annotations

import logging
import re
import time
import uuid
from functools import partial

import httpx

from ..backend import GenerationRequest, GenerationResult, PlannedCall, validated
from ..errors import AuthError, BudgetError, Cancelled, Flux2Error, InputError, ModerationError, ProviderError
from ..images import ProviderFile, data_uri_file, pixel_digest, placeholder, provider_file
from ..models import RUNWARE
from ..pricing import Estimate, estimate, reference_sizes
from ..reference_urls import as_sent
from ..rules import REMOTE_MAX_BATCH
from ..run_context import RunContext
from .common import RemoteBackend, concurrency_from_env, redact
from ..net.keys import base_url, read_key
from .options import RemoteOptions
from .retired import is_model_gone, retired_error
from .runware_recovery import recover
from .runware_replies import KEY_ENV, ErrorEntry, ImageResult, Reply, parse_reply, runware_error
from .runware_tasks import (BflSettings, GetResponse, ImageInference, ImageUpload, Inputs, Lora, ProviderSettings,
                            RunwareTask)
from .jobs import (Job, JobControl, cached_image, checked_cost, checked_seed, book_recovered, note_sent, run_jobs,
                   sent_earlier, settle, store_arrived)
from ..net.transport import Deadlines, LostResponse, NotSent, Transport

log = logging.getLogger("comfyui_flux2.runware")

DEFAULT_URL = "https://api.runware.ai/v1"
URL_ENV = "RUNWARE_API_URL"       # the key's: runware_replies.KEY_ENV (an auth refusal names it)
UPLOAD_TTL_S = 7 * 24 * 3600         # Runware keeps uploads 30 days after last use; stay well inside
EARLIER_TASK_PATIENCE_S = 10.0   # a task of an earlier run that no lookup knows this long is not coming back
MAX_INLINE_CHARS = 90 * 1024 * 1024   # base64 of the 64 MiB download limit
AIR_RE = re.compile(r"^[A-Za-z0-9_-]+:[A-Za-z0-9_.-]+@[A-Za-z0-9_.-]+$")   # source:model@version
UUID_RE = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")


def concurrency() -> int:
    """Tasks in flight per node (FLUX2_CONCURRENCY, default the largest batch, so a batch goes out at
    once; a 429 backs off only the request it hit. Lower it for accounts with small queue limits)."""
    n = concurrency_from_env("FLUX2_CONCURRENCY")
    return REMOTE_MAX_BATCH if n is None else n


class RunwareBackend(RemoteBackend):
    kind = RUNWARE
    takes_reference_urls = ("url", "uuid")     # sent as is in inputs.referenceImages

    def __init__(self, model_name: str, options: RemoteOptions = RemoteOptions(),
                 deadlines: Deadlines = Deadlines(), http_transport: httpx.BaseTransport | None = None):
        super().__init__(model_name, options, deadlines, http_transport)
        self._transport: Transport | None = None
        self.loras: tuple[tuple[str, float], ...] = ()     # (AIR id, weight) added by Flux2LoRA, in chain order

    @property
    def takes_loras(self) -> str:
        return "air" if self.pm.takes_lora else ""          # else with_lora says which models do

    def with_lora(self, air: str, weight: float) -> "RunwareBackend":
        """This backend with one more LoRA (Flux2LoRA); refused in one line where the model takes none."""
        import copy

        from ..errors import InputError

        if not self.pm.takes_lora:
            raise InputError(f"Flux2LoRA: {self.model_name} on Runware takes no LoRA (Runware's FLUX.2 [dev] and "
                             f"[klein] models do)")
        if not AIR_RE.match(air or ""):
            raise InputError(f"Flux2LoRA: on Runware give the LoRA's Runware model id (AIR, e.g. "
                             f"civitai:120096@135931) in runware_lora, got {air[:80]!r}")
        new = copy.copy(self)
        new.loras = self.loras + ((air, float(weight)),)
        return new

    def cache_identity(self) -> dict:
        ident = super().cache_identity()
        if self.sent_loras():
            ident["loras"] = [list(x) for x in self.sent_loras()]
        return ident

    def sent_loras(self) -> tuple[tuple[str, float], ...]:
        """The LoRAs the request carries: weight 0 is no LoRA, so it is not sent."""
        return tuple((air, w) for air, w in self.loras if w != 0)

    # -- Backend protocol ---------------------------------------------------------------------
    def host(self) -> str:
        return base_url(URL_ENV, DEFAULT_URL)

    def check_ready(self) -> None:
        base_url(URL_ENV, DEFAULT_URL)
        read_key(KEY_ENV)
        concurrency()

    def validate_options(self) -> None:
        if self.model.generation == 3 and self.options.grounding != "default":
            # Runware's FLUX 3 pages we could read name no grounding setting (docs/flux3.md).
            raise InputError(f"grounding is not established for {self.model_name} on Runware; set it to default "
                             "or use provider bfl")

    def estimate(self, request: GenerationRequest) -> Estimate:
        sizes, assumed = reference_sizes(request.references)
        return estimate(self.model, RUNWARE, request.width, request.height, sizes, request.batch, assumed)

    def plan(self, request: GenerationRequest) -> list[PlannedCall]:
        url = base_url(URL_ENV, DEFAULT_URL)
        refs = [as_sent(r) or f"<upload {r.width}x{r.height} sha256:{r.sha256[:12]}>" for r in request.references]
        tasks = [self.inference_task(request, i, refs, task_uuid="<uuid4>") for i in range(request.batch)]
        seed = (f" seed {request.seed}" if self.model.generation == 2
                else " (no seed: the provider picks and reports one)")
        summary = (f"{request.width}x{request.height}{seed}"
                   + (f" x{request.batch}" if request.batch > 1 else "")
                   + (f", {len(refs)} reference(s)" if refs else "")
                   + ("".join(f", LoRA {air} x{w:g}" for air, w in self.sent_loras())))
        return [PlannedCall(RUNWARE, f"POST {url} imageInference {self.pm.model_id}", summary,
                            {"tasks": [t.to_json() for t in tasks]})]

    # -- request building ---------------------------------------------------------------------
    def inference_task(self, request: GenerationRequest, index: int, references: list[str],
                       task_uuid: str | None = None) -> ImageInference:
        opts, pm = self.options, self.pm
        if self.model.generation == 3:
            return self.flux3_task(request, references, task_uuid)
        return ImageInference(
            taskUUID=task_uuid or str(uuid.uuid4()),
            model=pm.model_id,
            positivePrompt=request.prompt,
            width=request.width,
            height=request.height,
            # Each image of a batch is its own task with its own seed, so every image is reproducible.
            seed=request.seeds[index],
            outputFormat=opts.output_format,
            outputQuality=opts.output_quality if opts.output_format != "PNG" else None,
            steps=opts.steps if pm.takes_steps and opts.steps else None,
            CFGScale=opts.guidance if pm.takes_guidance and opts.guidance else None,
            lora=tuple(Lora(air, w) for air, w in self.sent_loras()) or None,
            providerSettings=ProviderSettings(BflSettings(bool(opts.prompt_upsampling), int(opts.safety_tolerance)))
            if pm.model_id.startswith("bfl:") else None,
            inputs=Inputs(tuple(references)) if references else None,
        )

    def flux3_task(self, request: GenerationRequest, references: list[str], task_uuid: str | None) -> ImageInference:
        """FLUX 3 Image on Runware (`bfl:flux@3-image`): the delivered width x height from FLUX 3's size
        table (flux2/flux3.py), no seed (the result reports one), the layout appended to the prompt as BFL
        documents it, and only safetyTolerance among BFL's settings."""
        from .. import flux3
        from .bfl_flux3 import prompt_with_layout
        width, height = flux3.deliver(request.width, request.height)
        opts = self.options
        return ImageInference(
            taskUUID=task_uuid or str(uuid.uuid4()), model=self.pm.model_id,
            positivePrompt=prompt_with_layout(request), width=width, height=height, seed=None,
            outputFormat=opts.output_format,
            outputQuality=opts.output_quality if opts.output_format != "PNG" else None,
            providerSettings=ProviderSettings(BflSettings(None, int(opts.safety_tolerance))),
            inputs=Inputs(tuple(references)) if references else None)

    # -- execution ----------------------------------------------------------------------------
    def _client(self) -> tuple[Transport, str, str]:
        url = base_url(URL_ENV, DEFAULT_URL)
        key = read_key(KEY_ENV)
        if self._transport is None or not self._transport.may_authenticate(url):
            self._transport = Transport("runware", [url], lambda: {"Authorization": f"Bearer {read_key(KEY_ENV)}"},
                                        self.deadlines, self._http_transport)
        return self._transport, url, key

    def _post_tasks(self, tasks: list[RunwareTask], ctx: RunContext, deadline: float | None = None) -> Reply:
        """POST a task array and parse the answer (request-level refusals raise here); no exchange
        passes `deadline` (time.monotonic(): the task's own)."""
        transport, url, key = self._client()
        response = transport.submit(url, [t.to_json() for t in tasks], is_cancelled=ctx.is_cancelled, deadline=deadline)
        return parse_reply(response, tasks, key)

    def upload_reference(self, ref, ctx: RunContext) -> str:
        """Upload a reference once per content hash; later uses (any node, this run) reuse the imageUUID."""
        url = base_url(URL_ENV, DEFAULT_URL)
        cache_key = f"runware {url}"
        cached = ctx.cached_upload(cache_key, ref.sha256) or (
            ctx.cached_upload(f"runware generated {url}", ref.pixels_sha256) if ref.pixels_sha256 else None)
        if cached:
            return cached
        task = ImageUpload(taskUUID=str(uuid.uuid4()), image=ref.data_uri)
        task_uuid = task.taskUUID
        try:
            reply = self._post_tasks([task], ctx)
        except LostResponse:
            reply = self._post_tasks([task], ctx)    # an upload costs nothing, so sending it again is safe
        item = reply.items.get(task_uuid) or (next(iter(reply.items.values())) if len(reply.items) == 1 else None)
        image_uuid = item.imageUUID if isinstance(item, ImageResult) else None
        if not image_uuid:
            err = reply.errors.get(task_uuid) or ErrorEntry(message="imageUpload returned no imageUUID")
            raise runware_error(reply.status, err, None)
        ctx.remember_upload(cache_key, ref.sha256, image_uuid, UPLOAD_TTL_S)
        return image_uuid

    def generate(self, request: GenerationRequest, ctx: RunContext) -> GenerationResult:
        request = validated(self, request)      # trusted when run() already checked it
        node = request.node_id
        ctx.report(node, 0, request.batch, "uploading references" if request.references else "submitting")
        refs = [as_sent(r) or self.upload_reference(r, ctx) for r in request.references]
        jobs = []
        for i, seed in enumerate(request.seeds):
            body = self.inference_task(request, i, refs)
            jobs.append(Job(i, seed, body, task_id=body.taskUUID))
        estimate_one = self.estimate_one(request)
        cache_key = partial(self.image_cache_key, request)

        def work(job: Job, control: JobControl) -> None:
            note_sent(job, ctx, cache_key, {"provider": RUNWARE, "host": self.host(), "task": job.task_id})
            try:
                answer = self._run_task(job, ctx)
                ctx.on_answer()               # the task is done at Runware; its image is fetched from its URL
                self._take_item(job, answer, ctx, estimate_one)
            except (AuthError, BudgetError) as exc:
                control.stop_new(exc)         # every other task would be refused the same way
                raise
            except ModerationError as exc:
                if self.options.on_moderation != "placeholder":
                    raise
                log.warning("%s; returning a placeholder image", exc)
                job.image, job.placeholder = placeholder(request.width, request.height), True
            except ProviderError as exc:
                if not is_model_gone(exc):
                    raise
                gone = retired_error(self.model, "runware", f"model {self.pm.model_id}: {exc}", exc.status)
                control.stop_new(gone)
                raise gone from None
            finally:
                store_arrived(job, ctx, cache_key, self.describe(), request.batch)

        # One task per HTTP request, several in flight: a slow image does not hold the others back,
        # and a 429 backs off only the request it hit. A cancel lets a request in flight finish (its
        # answer carries the paid image); an abort leaves at once and names the tasks in flight.
        outcome = run_jobs(jobs, work, ctx=ctx, node=node, label=self.describe(), concurrency=concurrency(),
                           cancel_grace_s=None, unit_usd=estimate_one,
                           cached=lambda job: cached_image(job, ctx, cache_key, request.batch)
                           or self._fetch_earlier(job, ctx, cache_key, request.batch))
        return settle(jobs, request, ctx, provider="runware", describe=self.describe(), cache_key=cache_key,
                      outcome=outcome)

    def _fetch_earlier(self, job: Job, ctx: RunContext, cache_key, batch: int) -> bool:
        """An earlier run sent this image's task and never heard back (killed): ask Runware for that task
        (getResponse, getTaskDetails) instead of paying again. False where there is none or it is not found
        (then the image is made anew)."""
        earlier = sent_earlier(job, ctx, cache_key)
        task = earlier.get("task") if earlier else None
        if not earlier or earlier.get("provider") != RUNWARE or earlier.get("host") != self.host() \
                or not isinstance(task, str) or not UUID_RE.match(task):
            return False
        try:
            found = self.fetch_task(task, ctx)
        except Cancelled:
            raise
        except Flux2Error as exc:
            log.warning("runware: task %s of an earlier run was not found again (%s); making the image anew", task, exc)
            return False
        job.image, job.settled = found.images[0], True
        job.result_seed = found.seeds[0] if found.seeds else None
        book_recovered(job, found.cost_usd, "runware", task, ctx, cache_key, self.describe(), batch)
        return True

    def _run_task(self, job: Job, ctx: RunContext) -> ImageResult | ErrorEntry:
        """Send one inference task; returns its result (or, recovered by a lookup where the answer was
        lost, the error the task ended with)."""
        started = time.monotonic()
        job.sent = True
        try:
            reply = self._post_tasks([job.body], ctx, started + self.deadlines.total_s)
        except NotSent:
            job.sent = False
            raise
        except LostResponse as exc:
            log.warning("runware: %s; recovering task %s with getResponse", exc, job.task_id)
            return self._recover(job, ctx, started, str(exc))
        except Cancelled:
            job.sent = False                 # stopped before sending (or while backing off after a 429)
            raise
        except Flux2Error as exc:
            # An answer came: a refusal (4xx, bad key, no credits) settles the task; after a 5xx nobody knows.
            job.settled = not isinstance(exc, ProviderError) or (exc.status is not None and exc.status < 500)
            raise
        item, err = reply.items.get(job.task_id), reply.errors.get(job.task_id)
        if item is None and err is None:
            # A 200 that does not mention our task is as good as lost: ask for it rather than send again.
            log.warning("runware: the answer does not mention task %s; recovering it with getResponse", job.task_id)
            return self._recover(job, ctx, started, "the answer did not mention the task")
        if item is None:
            job.settled = reply.status < 500
            raise runware_error(reply.status, err, None)
        return item

    def fetch_task(self, task_uuid: str, ctx: RunContext) -> GenerationResult:
        """The result of a task an earlier process sent and never heard back from (an aborted batch, a
        killed run), by getResponse / getTaskDetails on its taskUUID; never a second submit. Raises
        ProviderError when Runware no longer knows the task or it failed."""
        job = Job(0, 0, GetResponse(taskUUID=task_uuid), task_id=task_uuid, sent=True)
        # An earlier run's task has long finished or never will: a short wait for the lookups to know it.
        item = self._recover(job, ctx, time.monotonic(), "an earlier run stopped waiting",
                             patience_s=min(self.deadlines.lookup_s, EARLIER_TASK_PATIENCE_S))
        self._take_item(job, item, ctx, None)
        seeds = [job.result_seed] if job.result_seed is not None else []
        return GenerationResult(images=[job.image], seeds=seeds, cost_usd=job.cost_usd, info={"tasks": [task_uuid]},
                                files=[job.file] if job.file is not None else [])

    def _recover(self, job: Job, ctx: RunContext, started: float, cause: str,
                 patience_s: float | None = None) -> ImageResult | ErrorEntry:
        """The submit's answer was lost (dropped, garbled, cut short, not naming the task, past its
        deadline): look the task up (runware_recovery) instead of submitting it again."""
        return recover(job, ctx, self._post_tasks, self.deadlines, started, cause, patience_s)

    def _take_item(self, job: Job, item: ImageResult | ErrorEntry, ctx: RunContext,
                   estimate_one: float | None) -> None:
        """A task's result -> the job's image, seed and cost. A malformed field fails the job,
        but only after the image that did arrive is kept."""
        job.settled = True                   # the provider has answered for this task
        if isinstance(item, ErrorEntry):
            if item.cost is not None:
                job.charged = True           # a failed task the provider says it billed
                checked_cost(job, item.cost, "runware", None)
            raise runware_error(200, item, None)
        # A result that carries an image was billed, whether or not the image then arrives here.
        job.charged = bool(item.images()) or item.cost is not None
        problems = []
        try:
            checked_cost(job, item.cost, "runware", estimate_one)
        except ProviderError as exc:
            problems.append(exc)
        try:
            checked_seed(job, item.seed, "runware")
        except ProviderError as exc:
            problems.append(exc)
        job.file = self._image_of(item, job)
        job.image = job.file.image
        job.charged = True
        self._remember_generated(item, job.image, ctx)
        if problems:
            raise problems[0]

    def _remember_generated(self, item: ImageResult, image, ctx: RunContext) -> None:
        """Runware keeps what it generated under its imageUUID: a later edit in this run that takes this
        image as a reference sends that imageUUID instead of uploading the picture again."""
        if item.imageUUID and UUID_RE.match(item.imageUUID):
            ctx.remember_upload(f"runware generated {base_url(URL_ENV, DEFAULT_URL)}", pixel_digest(image),
                                item.imageUUID, UPLOAD_TTL_S)

    def _image_of(self, item: ImageResult, job: Job) -> ProviderFile:
        what = f"Runware result of task {job.task_id}"
        present = dict(item.images())
        for name, value in present.items():
            if not isinstance(value, str):
                raise ProviderError(f"runware: task {job.task_id} answered {name} as a "
                                    f"{type(value).__name__}, not a string; no image")
        # An inline copy already in the answer is used first: no download that could fail and lose a paid image.
        inline = [present[n] for n in ("imageBase64Data", "imageDataURI") if n in present]
        if inline and len(inline[0]) <= MAX_INLINE_CHARS:
            return data_uri_file(inline[0], what)
        if "imageURL" in present:
            transport, _, _ = self._client()
            return provider_file(transport.download(present["imageURL"], what), what)
        if inline:
            raise ProviderError(f"runware: task {job.task_id} answered an inline image over the size limit")
        if item.NSFWContent is True:
            raise ModerationError("runware: the result was withheld by the content filter (NSFWContent)")
        raise ProviderError(f"runware: task {job.task_id} answered without an image (refused or filtered)")
