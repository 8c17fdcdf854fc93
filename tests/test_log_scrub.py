"""Unexpected exceptions are logged with their traceback, and that text goes through the one scrubber:
an exception's message (or a chained one's) can quote a request or a provider answer carrying a key."""
from __future__ import annotations

import ast
import logging
from pathlib import Path

from comfyui_flux2.flux2.redaction import log_unexpected
from comfyui_flux2.flux2.remote.jobs import Job, run_jobs
from comfyui_flux2.flux2.remote.runware_tasks import GetResponse
from comfyui_flux2.flux2.run_context import RunContext

KEY = "rw-live-0123456789abcdef0123456789abcdef"
ROOT = Path(__file__).resolve().parent.parent


def test_a_logged_traceback_has_the_key_replaced(monkeypatch, caplog):
    monkeypatch.setenv("RUNWARE_API_KEY", KEY)
    log = logging.getLogger("comfyui_flux2.test")
    try:
        try:
            raise ValueError(f"provider said: bad header Authorization: Bearer {KEY}")
        except ValueError as inner:
            raise RuntimeError(f"while sending {{'apiKey': '{KEY}'}}") from inner
    except RuntimeError:
        with caplog.at_level(logging.ERROR):
            log_unexpected(log, "item %s failed", "r1")
    assert "item r1 failed" in caplog.text
    assert "RuntimeError" in caplog.text and "ValueError" in caplog.text   # the traceback is still there
    assert KEY not in caplog.text and "***" in caplog.text


def test_a_bug_in_a_provider_job_is_logged_without_the_key(monkeypatch, caplog):
    monkeypatch.setenv("RUNWARE_API_KEY", KEY)

    def work(job, control):
        raise KeyError(f"unexpected field in {{'apiKey': '{KEY}'}}")

    jobs = [Job(index=0, seed=1, body=GetResponse(taskUUID="t"))]
    with caplog.at_level(logging.ERROR):
        run_jobs(jobs, work, ctx=RunContext(), node="1", label="Runware", concurrency=1, cancel_grace_s=None)
    assert jobs[0].error is not None
    assert "job 0 failed unexpectedly" in caplog.text and "KeyError" in caplog.text
    assert KEY not in caplog.text


def test_no_module_logs_an_exception_around_the_scrubber():
    """`log.exception(...)` would print the exception's text as it is; the pack uses log_unexpected."""
    offenders = []
    sources = [ROOT / "__init__.py", ROOT / "demo.py",
               *[p for d in ("flux2", "nodes", "runner", "cli") for p in (ROOT / d).rglob("*.py")]]
    for path in sources:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "exception":
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}")
            if isinstance(node, ast.keyword) and node.arg == "exc_info":
                offenders.append(f"{path.relative_to(ROOT)}:{node.value.lineno} (exc_info)")
    assert not offenders, offenders
