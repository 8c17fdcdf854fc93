"""A Runware task whose submit answer was lost, looked up by its taskUUID instead of being sent again.

No idempotency key is documented, so a second submit could bill twice (shared remote-api-facts, Retries).
Each round asks getResponse (documented for async tasks; Runware's SDKs also ask it for sync ones), then
getTaskDetails (documented for any executed task). A lookup's own error ("unknown taskUUID") is never taken
as the task's outcome.
"""
from __future__ import annotations

import time
from typing import Callable

from ..errors import AuthError, BudgetError, Cancelled, Flux2Error, ProviderError, ProviderTimeout
from ..net.transport import Deadlines
from ..run_context import RunContext
from .jobs import Job, poll_until
from .runware_replies import ErrorEntry, ImageResult, Reply, TaskDetails, runware_error
from .runware_tasks import GetResponse, GetTaskDetails, RunwareTask

PENDING = ("processing", "pending", "queued", "running")
_PENDING = object()              # a lookup's "still processing"

# (tasks, ctx, deadline) -> the parsed answer: RunwareBackend._post_tasks
Post = Callable[[list[RunwareTask], RunContext, float], Reply]


def recover(job: Job, ctx: RunContext, post: Post, deadlines: Deadlines, started: float, cause: str,
            patience_s: float | None = None) -> ImageResult | ErrorEntry:
    """The task's outcome, by lookups until the task's deadline (`total_s` from `started`). A task no
    lookup knows for `patience_s` (default `lookup_s`) fails with job.settled False, so it is named as may
    still be billed."""
    patience = deadlines.lookup_s if patience_s is None else patience_s
    unknown_since, last = [time.monotonic()], ["none answered"]
    deadline = started + deadlines.total_s

    def fetch():
        found = lookup(job, ctx, post, GetResponse, last, deadline)
        if found is None:
            found = lookup(job, ctx, post, GetTaskDetails, last, deadline)
        if found is _PENDING:
            unknown_since[0] = time.monotonic()      # known and running: wait for it until the deadline
            return None
        if found is not None:
            return found
        if time.monotonic() - unknown_since[0] > patience:
            raise ProviderError(f"runware: the answer to task {job.task_id} was lost ({cause}) and no lookup "
                                f"finds the task after {patience:g}s (last lookup: {last[0]})")
        return None

    return poll_until(fetch, deadlines=deadlines, started=started, is_cancelled=ctx.is_cancelled,
                      what=f"runware: task {job.task_id} (answer lost: {cause})")


def lookup(job: Job, ctx: RunContext, post: Post, kind, last: list, deadline: float):
    """One lookup of a task: its outcome (a result or the error it ended with), _PENDING while it runs, or
    None where this lookup does not know it (its error is kept in `last` for the message, never raised as
    the task's outcome)."""
    try:
        reply = post([kind(taskUUID=job.task_id)], ctx, deadline)
    except (AuthError, BudgetError, Cancelled):
        raise                             # every other call would be refused the same way
    except ProviderTimeout:
        return None                       # the task's deadline: poll_until says so
    except Flux2Error as exc:             # lost, not sent, 4xx/5xx of the lookup itself
        last[0] = f"{kind.taskType}: {str(exc)[:160]}"
        return None
    item, err = reply.items.get(job.task_id), reply.errors.get(job.task_id)
    if isinstance(item, TaskDetails):
        return item.outcome
    if isinstance(item, ImageResult) and item.status.lower() in PENDING:
        return _PENDING
    if isinstance(item, ImageResult) and item.tells_outcome():
        return item
    if item is not None:                  # a bare acknowledgement says nothing of the outcome
        last[0] = f"{kind.taskType}: an item without status or image"
    elif err is not None:
        last[0] = f"{kind.taskType}: {str(runware_error(reply.status, err, None))[:160]}"
    return None
