"""Paid tasks an aborted batch left in flight, fetched on the next run instead of paid for again.

When a second Ctrl-C left a one-image Runware request unanswered, the manifest line of its item names the
task id and the result-cache key of the request (executors.ItemRun). Before the next run starts,
each such task is asked for by `getResponse` on its taskUUID (never submitted again); a finished task's
image goes into the result cache under that key, so the item's re-run is served from the cache at $0.
BFL tasks and requests of several images are named in the manifest but not recovered here.
"""
from __future__ import annotations

import logging
import re

from ...flux2.errors import Cancelled, Flux2Error
from ...flux2.run_context import RunContext

log = logging.getLogger("comfyui_flux2.batch")
# The manifest may come from elsewhere and its key names a file in the result cache: only a real key (sha256 hex).
_CACHE_KEY = re.compile(r"[0-9a-f]{64}")


def recover_tasks(entries: list[dict], cache, is_cancelled=None) -> dict[str, float | None]:
    """Fetch each entry's task ({provider, task, key}) into the cache; returns the keys that came back, each
    with what its task was billed to the earlier run (None: the provider did not say), for the manifest."""
    from ...flux2.remote.runware import RunwareBackend

    backend = RunwareBackend("FLUX.2 [pro]")      # getResponse names no model; only the host and key matter
    ctx = RunContext(is_cancelled=is_cancelled)
    recovered: dict[str, float | None] = {}
    for entry in entries:
        task, key = entry.get("task"), entry.get("key")
        if entry.get("provider") != "runware" or not isinstance(task, str) or not isinstance(key, str) \
                or not _CACHE_KEY.fullmatch(key):
            continue
        if cache.get(key) is not None:
            continue                                   # already there (an earlier resume, or another run)
        try:
            result = backend.fetch_task(task, ctx)
        except Cancelled:
            raise
        except Flux2Error as exc:
            log.warning("could not recover Runware task %s (%s); its item runs again", task, exc)
            continue
        if not result.seeds:
            log.warning("Runware task %s came back without its seed; its item runs again", task)
            continue
        cache.put(key, result.images, result.seeds, result.cost_usd, f"Runware task {task}, recovered",
                  files=result.files)
        log.warning("recovered Runware task %s from an earlier, aborted run (billed then: %s)", task,
                    "unknown" if result.cost_usd is None else f"${result.cost_usd:g}")
        recovered[key] = result.cost_usd
    return recovered
