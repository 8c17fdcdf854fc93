"""What BFL answers, parsed once into typed results (the bodies sent are typed in bfl_request.py).

- Submit: 200 `{id, polling_url, cost, input_mp, output_mp}`, `cost` in credits (FLUX 3: `{id, polling_url}`).
- Poll: `{id, status, result: {sample, prompt, seed, ...} | null, progress, details?}`; FLUX 3 adds a `cost`
  at the top level and in `result`.
- Errors: FastAPI's `{"detail": ...}` (a string or a list of {loc, msg, type}) or `{error, message}`.
Shapes: shared remote-api-facts and loopback/bfl_server.py. Fields BFL adds later are ignored. A value whose
check must wait until a paid image is kept (seed, cost) is held as sent and checked where it is used
(jobs.checked_seed, jobs.checked_cost): a malformed seed never loses the image it came with.
"""
from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass

import httpx

from ..errors import AuthError, BudgetError, Flux2Error, ProviderError
from ..net.transport import Garbled, json_body
from ..redaction import scrub
from .common import redact

log = logging.getLogger("comfyui_flux2.bfl")

KEY_ENV = "BFL_API_KEY"                     # named in an auth refusal; bfl.py reads the key by it
CONCURRENCY_ENV = "FLUX2_BFL_CONCURRENCY"   # named in a 429; bfl.py reads the concurrency by it
_ID_IN_TEXT = re.compile(r'"id"\s*:\s*"([0-9A-Za-z_-]{8,64})"')


def is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def usd_of(credits):
    """BFL's credits (1 credit = $0.01) -> USD; anything else passes as sent, so checked_cost names it."""
    return None if credits is None else (credits / 100 if is_number(credits) else credits)


def task_id_in(text: str) -> str | None:
    """The task id named in (part of) an answer that could not be read as a whole."""
    found = _ID_IN_TEXT.search(text)
    return found.group(1) if found else None


def is_task_id(value) -> bool:
    return isinstance(value, str) and bool(value) and bool(_ID_IN_TEXT.fullmatch(f'"id":"{value}"'))


@dataclass(frozen=True)
class SubmitAnswer:
    id: str
    polling_url: str | None = None   # None where absent or not a string: BFL's generic get_result form is polled
    cost: object = None              # credits as sent
    input_mp: float | None = None    # what BFL counted, where a number
    output_mp: float | None = None


@dataclass(frozen=True)
class PollAnswer:
    status: str | None               # None where absent or not a string (taken as not finished yet)
    sample: str | None = None        # result.sample: the signed URL of a Ready image
    prompt: str | None = None        # result.prompt (FLUX 3: the prompt as BFL expanded it)
    seed: object = None              # result.seed as sent
    cost: object = None              # credits as sent: result.cost, else the top-level cost (FLUX 3)
    progress: float | None = None    # 0..1 where a finite number
    details: str = ""                # BFL's reasons in one line: `details` (an Error's also `error` or `result`)


def json_or_text(response: httpx.Response, key: str | None = None):
    try:
        return response.json()
    except ValueError:
        return redact(response.text, key, 200)       # redact first, then cut


def detail_text(body) -> str:
    """FastAPI `detail` (a string or a list of {loc, msg, type}), BFL's {error, message}, or any other object
    (a moderated poll's `details`, e.g. {"Moderation Reasons": [...]}, as a client of BFL's reads it) -> one line."""
    detail = body
    if isinstance(body, dict):
        detail = next((body[k] for k in ("detail", "message", "error") if body.get(k) not in (None, "")), body)
    if isinstance(detail, list):
        parts = []
        for item in detail[:8]:
            if isinstance(item, dict):
                loc = [str(x) for x in item.get("loc") if x != "body"] if isinstance(item.get("loc"), list) else []
                parts.append(f"{'.'.join(loc) or 'body'}: {item.get('msg') or item.get('type') or 'invalid'}")
            else:
                parts.append(str(item))
        if len(detail) > 8:
            parts.append(f"and {len(detail) - 8} more")
        return scrub("; ".join(parts), 400)
    if isinstance(detail, dict):
        return scrub("; ".join(f"{k}: {', '.join(map(str, v)) if isinstance(v, list) else v}"
                               for k, v in list(detail.items())[:8]), 400)
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


def submit_answer(response: httpx.Response) -> SubmitAnswer:
    """The submit's 200 answer. An answer that cannot be read may still have started (and billed) a
    task: its id is searched for in the text so the task can still be polled."""
    try:
        body = json_body(response, "bfl")
    except Garbled:
        found = task_id_in(response.text)
        if not found:
            raise Garbled("bfl: the submit answer (HTTP 200) is not JSON and names no task id; the task may "
                          "have been billed - check dashboard.bfl.ai before running again (not resubmitted)",
                          status=200) from None
        log.warning("bfl: the submit answer is garbled; polling task %s found in it", found)
        return SubmitAnswer(found)
    if not isinstance(body, dict) or not is_task_id(body.get("id")):
        raise ProviderError("bfl: the submit answer (HTTP 200) carries no usable task id; the task may have been "
                            "billed - check dashboard.bfl.ai before running again (not resubmitted)")
    url, mp = body.get("polling_url"), [body.get(k) for k in ("input_mp", "output_mp")]
    return SubmitAnswer(body["id"], polling_url=url if isinstance(url, str) and url else None,
                        cost=body.get("cost"), input_mp=mp[0] if is_number(mp[0]) else None,
                        output_mp=mp[1] if is_number(mp[1]) else None)


def _fraction(value) -> float | None:
    try:
        return float(value) if is_number(value) and math.isfinite(value) else None
    except OverflowError:                # an integer past what a float holds
        return None


def parse_poll(body) -> PollAnswer | None:
    """A poll answer -> PollAnswer; None where it is not a JSON object."""
    if not isinstance(body, dict):
        return None
    status = body.get("status") if isinstance(body.get("status"), str) else None
    result = body.get("result") if isinstance(body.get("result"), dict) else {}
    # Reasons are read only where a task ended without an image: odd `details` beside a Ready (billed) or
    # pending answer must not cost the image.
    reasons = body.get("details") if status in ("Error", "Request Moderated", "Content Moderated") else None
    if status == "Error":
        # A `result` read for its reasons leaves out `sample`: a signed URL to a picture has no place in an error.
        reasons = reasons or body.get("error") or ({k: v for k, v in result.items() if k != "sample"} or None)
    cost = result.get("cost") if result.get("cost") is not None else body.get("cost")
    return PollAnswer(status=status, sample=result.get("sample") if isinstance(result.get("sample"), str) else None,
                      prompt=result.get("prompt") if isinstance(result.get("prompt"), str) else None,
                      seed=result.get("seed"), cost=cost, progress=_fraction(body.get("progress")),
                      details=detail_text(reasons) if reasons else "")
