"""Polling a submitted BFL task at its `polling_url` until it ends: Ready (and billed), moderated (not
charged), failed, or unknown to BFL.

Statuses: `Pending` (FLUX 3 also `Reasoning`, `Generating`; any status this client does not know is taken as
not finished yet), `Ready`, `Request Moderated` / `Content Moderated`, `Error`, `Task not found`. A task just
submitted may answer 404 / "Task not found" for a moment; 5xx polls are transient (shared remote-api-facts).
"""
from __future__ import annotations

from ..errors import Cancelled, ModerationError, ProviderError, ProviderTimeout
from ..net.transport import GET_RETRY_STATUSES, Deadlines, Transport
from ..run_context import RunContext
from .bfl_replies import PollAnswer, http_error, json_or_text, parse_poll
from .common import redact
from .jobs import Job, Transient, poll_until

NOT_FOUND_TOLERANCE = 5         # a just-submitted task may answer 404 / "Task not found" for a moment
MODERATED = ("Request Moderated", "Content Moderated")


def poll(job: Job, transport: Transport, key: str, ctx: RunContext, deadlines: Deadlines, submitted: float,
         safety: str) -> PollAnswer:
    """Poll until a terminal status; returns the answer of a Ready task (its sample URL checked). Failing
    polls (5xx, dropped connections, garbled answers) are retried until the task's deadline: `total_s` from
    `submitted` (BFL's documented 600 s), which no poll, hanging or retried, may pass. `safety` describes
    the safety setting for a moderation message."""
    not_found = [0]
    deadline = submitted + deadlines.total_s

    def fetch():
        try:
            response = transport.get(job.locator, keyed=True, is_cancelled=ctx.is_cancelled, deadline=deadline)
        except Cancelled:
            raise
        except ProviderTimeout:
            return None                  # the task's deadline: poll_until says so, with the last poll's fault
        except ProviderError as exc:
            raise Transient(str(exc)) from None
        body = json_or_text(response, key)
        if response.status_code in GET_RETRY_STATUSES:
            raise Transient(str(http_error(response.status_code, body, key, f"polling task {job.task_id}")))
        answer = parse_poll(body)
        if response.status_code == 404 or (answer is not None and answer.status == "Task not found"):
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
        if answer is None:
            raise Transient(f"polling task {job.task_id} answered something that is not a JSON object")
        return poll_status(job, answer, key, safety)

    return poll_until(fetch, deadlines=deadlines, started=submitted, is_cancelled=ctx.is_cancelled,
                      what=f"bfl: task {job.task_id}")


def poll_status(job: Job, answer: PollAnswer, key: str, safety: str) -> PollAnswer | None:
    """One poll answer -> itself where Ready, None while pending, or the terminal error."""
    if answer.status == "Ready":
        job.charged = job.settled = True
        if answer.sample is None:
            raise ProviderError(f"bfl: task {job.task_id} is Ready (and billed) but carries no result.sample URL")
        return answer
    reasons = redact(answer.details, key, 300) if answer.details else ""
    if answer.status in MODERATED:
        job.settled = True
        what = "the prompt or a reference" if answer.status == "Request Moderated" else "the generated image"
        raise ModerationError(
            f"bfl: {answer.status} - moderated (not charged): BFL's safety filter refused {what}"
            + (f" ({reasons})" if reasons else "") + f"; {safety}", code=answer.status)
    if answer.status == "Error":
        job.settled = True
        raise ProviderError(f"bfl: task {job.task_id} failed (status Error)" + (f": {reasons}" if reasons else ""),
                            code="Error")
    # Pending, and statuses this client does not know (Reasoning, Generating...): not yet.
    if answer.progress is not None:
        job.progress = max(job.progress, 0.05 + 0.85 * min(max(answer.progress, 0.0), 1.0))
    return None
