"""DIR/manifest.jsonl: one JSON line per batch item, written the moment the item ends.

A re-run of the same batch reads it back: the last line of an item wins. Finished items are skipped,
failed ones run again only when asked (--retry-failed), cancelled and interrupted ones run again (their
paid images come back from the result cache, recovered tasks included, so they are not paid twice).
An item whose graph changed (an edited row or workflow: another fingerprint) is a new item.
"""
from __future__ import annotations

import json
import logging
import threading
import time
from pathlib import Path

from ...flux2.errors import InputError

log = logging.getLogger("comfyui_flux2.batch")

MANIFEST = "manifest.jsonl"
OK, FAILED, CANCELLED, INTERRUPTED = "ok", "failed", "cancelled", "interrupted"
# cancelled: the first Ctrl-C stopped it between nodes; interrupted: the second Ctrl-C left it in flight


class Manifest:
    def __init__(self, folder: Path):
        self.path = Path(folder) / MANIFEST
        self._lock = threading.Lock()
        self._file = None

    def load(self) -> dict[str, dict]:
        """item id -> its last record. A line cut short by a crash is skipped (that item runs again)."""
        records: dict[str, dict] = {}
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return records
        except (OSError, UnicodeDecodeError) as exc:
            raise InputError(f"cannot read {self.path}: {getattr(exc, 'strerror', None) or exc}") from None
        torn = 0
        for line in text.splitlines():
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                torn += 1
                continue
            if isinstance(record, dict) and isinstance(record.get("item"), str):
                records[record["item"]] = record
        if torn:
            log.warning("%s: %d unreadable line(s) skipped (a run ended while writing); those items run again",
                        self.path.name, torn)
        return records

    def append(self, record: dict) -> None:
        line = json.dumps(record, ensure_ascii=False, default=str) + "\n"
        with self._lock:
            if self._file is None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._file = open(self.path, "a", encoding="utf-8")
            self._file.write(line)
            self._file.flush()          # the line is the OS's once the item ends: a crash after it loses nothing

    def close(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None


def decide(previous: dict | None, fingerprint: str, retry_failed: bool) -> str:
    """'run', 'done' (finished earlier) or 'failed' (failed earlier, not retried)."""
    if previous is None or previous.get("fingerprint") != fingerprint:
        return "run"
    status = previous.get("status")
    if status == OK:
        return "done"
    if status == FAILED and not retry_failed:
        return "failed"
    return "run"


def record(item, outcome) -> dict:
    """The manifest line of an item that ended."""
    return {
        "item": item.id, "row": item.row, "seed": item.seed, "inputs": item.inputs,
        "status": outcome.status, "error": outcome.error,
        "outputs": outcome.outputs, "seeds": outcome.seeds, "tasks": outcome.tasks,
        "billed_usd": outcome.billed_usd, "billed_earlier_usd": outcome.billed_earlier_usd,
        "estimate_usd": item.estimate_usd, "cached": outcome.cached,
        "maybe_billed": outcome.maybe_billed, "recover": outcome.recover,
        "prompts": item.prompts, "fingerprint": item.fingerprint, "worker": outcome.worker,
        "seconds": round(outcome.seconds, 3), "ended": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
