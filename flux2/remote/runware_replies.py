"""What Runware answers, parsed once into typed results (the tasks sent are typed in runware_tasks.py).

An answer is `{"data": [...]}` and/or `{"errors": [...]}`, results matched to tasks by taskUUID, never by
position (shared remote-api-facts; the shapes loopback/runware_server.py sends). Field names are Runware's;
fields Runware adds later are ignored. Request-level refusals raise here, in one line. A value whose check
must wait until a paid image is kept (seed, cost, the image fields) is held as sent and checked where it is
used (jobs.checked_seed, jobs.checked_cost, RunwareBackend._image_of): a malformed seed never loses the
image it came with.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

from ..errors import AuthError, BudgetError, Flux2Error, ModerationError, ProviderError
from ..net.transport import Garbled, json_body
from .common import redact
from .runware_tasks import RunwareTask

KEY_ENV = "RUNWARE_API_KEY"      # named in an auth refusal; runware.py reads the key by it
IMAGE_FIELDS = ("imageURL", "imageBase64Data", "imageDataURI")
_MODERATION_HINTS = ("contentpolicy", "moderat", "nsfw", "safety")
_BUDGET_HINTS = ("credit", "balance", "quota", "payment")


@dataclass(frozen=True)
class ErrorEntry:
    """One `errors[]` object `{code, message, parameter, taskType, taskUUID, ...}`, or an error item inside
    `data` (`{status: "error", error: {code, message}}`)."""

    code: str = ""
    message: str = ""
    parameter: str = ""
    taskUUID: str | None = None     # None: names no task; "" where it names one in a form no task has
    cost: object = None             # as sent: a failed task Runware says it billed (USD)


@dataclass(frozen=True)
class ImageResult:
    """One result item of imageInference, getResponse or imageUpload: `{taskType, taskUUID, imageUUID,
    imageURL | imageBase64Data | imageDataURI, seed, cost?, NSFWContent?}` (getResponse adds `status`)."""

    taskUUID: str
    imageUUID: str | None = None    # None where absent or not a string
    imageURL: object = None         # the image fields as sent: a non-string is refused once the charge is booked
    imageBase64Data: object = None
    imageDataURI: object = None
    seed: object = None             # as sent (FLUX 3 reports the provider's own): checked once the image is kept
    cost: object = None             # USD as sent (includeCost)
    NSFWContent: object = None      # True: withheld by the content filter
    status: str = ""                # getResponse: processing / success ...; "" where absent

    def images(self) -> list[tuple[str, object]]:
        """(field, value) of each image field present, in IMAGE_FIELDS order."""
        return [(f, getattr(self, f)) for f in IMAGE_FIELDS if getattr(self, f) not in (None, "")]

    def tells_outcome(self) -> bool:
        """Whether a lookup's item says how the task ended (a bare acknowledgement does not)."""
        return bool(self.status) or self.NSFWContent is not None or bool(self.images())


@dataclass(frozen=True)
class TaskDetails:
    """A getTaskDetails item: the task's own outcome read from the stored answer, None where it holds none."""

    taskUUID: str
    outcome: ImageResult | ErrorEntry | None


@dataclass(frozen=True)
class Reply:
    status: int
    items: dict[str, ImageResult | TaskDetails]     # by taskUUID
    errors: dict[str, ErrorEntry]                   # by taskUUID, our tasks' only


def runware_error(status: int, err: ErrorEntry, key: str | None) -> Flux2Error:
    """One error entry (plus the HTTP status) -> the matching exception, one line."""
    code = redact(err.code, key, 60)
    message = redact(err.message or code or f"HTTP {status}", key, 300)
    param = redact(err.parameter, key, 80)
    text = f"runware: {message}" + (f" (parameter {param})" if param else "") + (f" [{code}]" if code else "")
    low = code.lower()
    if status in (401, 403) or low in ("invalidapikey", "missingapikey", "unauthorized"):
        return AuthError(text + f" - check {KEY_ENV}")
    if status == 402 or any(h in low for h in _BUDGET_HINTS):
        return BudgetError(text)
    if any(h in low for h in _MODERATION_HINTS):
        return ModerationError(text, status=status, code=code)
    return ProviderError(text, status=status, code=code, retryable=status in (429, 500, 502, 503, 504))


def _text(value) -> str:
    return str(value or "")


def error_entry(obj: dict) -> ErrorEntry:
    uuid_ = obj.get("taskUUID")
    return ErrorEntry(code=_text(obj.get("code")), message=_text(obj.get("message")),
                      parameter=_text(obj.get("parameter")),
                      taskUUID=uuid_ if uuid_ is None or isinstance(uuid_, str) else "", cost=obj.get("cost"))


def _data_error(item: dict) -> ErrorEntry | None:
    """A data item that reports a failure (`status: "error"` or an `error` object), else None. The item's
    own `cost`, where it has one, says whether the failed task was billed (else the error object's: a null
    beside it says nothing)."""
    if item.get("status") != "error" and not isinstance(item.get("error"), dict):
        return None
    inner = item["error"] if isinstance(item.get("error"), dict) else item
    return replace(error_entry(inner), taskUUID=item["taskUUID"],
                   cost=item["cost"] if item.get("cost") is not None else inner.get("cost"))


def image_result(item: dict) -> ImageResult:
    image_uuid = item.get("imageUUID")
    return ImageResult(taskUUID=item["taskUUID"], imageUUID=image_uuid if isinstance(image_uuid, str) else None,
                       imageURL=item.get("imageURL"), imageBase64Data=item.get("imageBase64Data"),
                       imageDataURI=item.get("imageDataURI"), seed=item.get("seed"), cost=item.get("cost"),
                       NSFWContent=item.get("NSFWContent"), status=_text(item.get("status")))


def _errors_of(envelope: dict) -> list[dict]:
    """`errors[]` objects and the singular `error` the docs also show."""
    errors = envelope.get("errors") if isinstance(envelope.get("errors"), list) else []
    found = [e for e in errors if isinstance(e, dict)]
    return found + ([envelope["error"]] if isinstance(envelope.get("error"), dict) else [])


def parse_reply(response, tasks: list[RunwareTask], key: str | None) -> Reply:
    """A Runware answer to `tasks` -> results and errors by taskUUID. Request-level refusals (auth,
    balance, capacity, malformed body) raise; an error that names one of our tasks is returned per task.
    A getTaskDetails task's item is read as the outcome it stores."""
    status = response.status_code
    body = json_body(response, "runware")       # a 200 that is not JSON raises Garbled (a LostResponse)
    if not isinstance(body, dict):
        if status == 200:
            raise Garbled("runware: HTTP 200 with an answer that is not a JSON object", status=200)
        raise runware_error(status, ErrorEntry(message=f"HTTP {status} with an unexpected body"), key)
    ours = {t.taskUUID for t in tasks}
    details = {t.taskUUID for t in tasks if t.taskType == "getTaskDetails"}
    errors = [error_entry(e) for e in _errors_of(body)]
    data = body.get("data") or []
    if isinstance(data, dict):   # imageUpload has been seen answering a bare object
        data = [data]
    items = {}
    for d in data if isinstance(data, list) else []:
        if not isinstance(d, dict) or not isinstance(d.get("taskUUID"), str):
            continue
        failed = _data_error(d)
        if failed is not None:
            errors.append(failed)
        elif d["taskUUID"] not in items:
            uuid_ = d["taskUUID"]
            items[uuid_] = TaskDetails(uuid_, stored_outcome(d, uuid_)) if uuid_ in details else image_result(d)
    request_level = [e for e in errors if e.taskUUID not in ours]
    # A request-level error with results beside it must not discard the (paid) results.
    if status in (401, 402, 403) or (request_level and not items):
        first = request_level[0] if request_level else (errors[0] if errors else ErrorEntry())
        raise runware_error(status, first, key)
    if status >= 400 and not items and not errors:
        raise runware_error(status, ErrorEntry(message=f"HTTP {status}"), key)
    return Reply(status, items, {e.taskUUID: e for e in errors if e.taskUUID in ours})


def stored_outcome(details: dict, task_uuid: str) -> ImageResult | ErrorEntry | None:
    """A getTaskDetails item -> the task's own result, or the error the stored answer reports, or None
    where it holds neither. `response` is the whole answer envelope as documented ({data} or {errors});
    Runware's JS SDK types it as a list of envelopes: both are read."""
    response = details.get("response")
    envelopes = [env for env in (response if isinstance(response, list) else [response]) if isinstance(env, dict)]
    data = [d for env in envelopes for d in (env.get("data") if isinstance(env.get("data"), list) else [])]
    for item in data:
        if isinstance(item, dict) and item.get("taskUUID") == task_uuid \
                and item.get("taskType", "imageInference") == "imageInference":
            return _data_error(item) or image_result(item)
    for err in (e for env in envelopes for e in _errors_of(env)):
        if err.get("taskUUID") in (task_uuid, None):
            return error_entry(err)
    return None
