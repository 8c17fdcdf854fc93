"""BFL backend under faults: HTTP errors, lost answers, flaky polls, expired results, cancel, foreign hosts."""
from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from comfyui_flux2.flux2.backend import GenerationRequest, run
from comfyui_flux2.flux2.errors import (AuthError, BudgetError, Cancelled, ConfigError, ProviderError,
                                        ProviderTimeout)
from comfyui_flux2.flux2.images import ref_from_array
from comfyui_flux2.flux2.remote.bfl import BflBackend
from comfyui_flux2.flux2.remote.options import RemoteOptions
from comfyui_flux2.flux2.net.transport import Deadlines, LostResponse
from comfyui_flux2.flux2.run_context import RunContext

BFL_TEST_KEY = "bfl-test-key-8d41e7c2"   # the key conftest's `serve_bfl` servers expect
FAST = Deadlines(retries=3, backoff_s=0.01, backoff_cap_s=0.05, total_s=10)
REQ = GenerationRequest("x", 256, 256, 1)


@pytest.fixture
def bfl(serve_bfl):
    return serve_bfl()


def pro(deadlines=FAST, **opts) -> BflBackend:
    return BflBackend("FLUX.2 [pro]", RemoteOptions(**opts), deadlines=deadlines)


# -- submit: HTTP errors ---------------------------------------------------------------------------
def test_missing_key_names_the_variable(bfl, ctx, monkeypatch):
    monkeypatch.delenv("BFL_API_KEY")
    with pytest.raises(AuthError, match="BFL_API_KEY"):
        run(pro(), REQ, ctx)
    assert bfl.requests == []


def test_wrong_key_403_is_an_auth_error(bfl, ctx, monkeypatch):
    monkeypatch.setenv("BFL_API_KEY", "wrong-key-77e2d0c4")
    with pytest.raises(AuthError) as err:
        run(pro(), REQ, ctx)
    assert "HTTP 403" in str(err.value) and "BFL_API_KEY" in str(err.value)
    assert "wrong-key-77e2d0c4" not in str(err.value)
    assert len(bfl.submits()) == 1 and bfl.tasks() == []


def test_401_is_an_auth_error(bfl, ctx):
    bfl.faults.push(route="submit", status=401, body={"detail": "Not authenticated"})
    with pytest.raises(AuthError, match=r"HTTP 401: Not authenticated - check BFL_API_KEY"):
        run(pro(), REQ, ctx)


def test_402_insufficient_credits(serve_bfl, ctx):
    server = serve_bfl(credits=1.0)
    with pytest.raises(BudgetError, match="HTTP 402.*insufficient BFL credits"):
        run(pro(), REQ, ctx)
    assert server.tasks() == [] and ctx.ledger.billed_total == 0


def test_refused_submit_stops_the_rest_of_the_batch(serve_bfl, ctx, monkeypatch):
    server = serve_bfl(credits=0.0)
    monkeypatch.setenv("FLUX2_BFL_CONCURRENCY", "1")
    with pytest.raises(BudgetError):
        run(pro(), GenerationRequest("x", 256, 256, 1, batch=4), ctx)
    assert len(server.submits()) == 1                    # not four refusals in a row


def test_422_shows_the_fastapi_field_names(bfl, ctx):
    backend = BflBackend("FLUX.2 [klein] 4B", deadlines=FAST)
    # Pretend the client allowed 5 references on klein: the provider's own check must come through.
    backend.pm = type(backend.pm)("/v1/flux-2-klein-4b", max_refs=8, min_side=64, price=None, takes_upsampling=False)
    rng = np.random.default_rng(1)
    refs = tuple(ref_from_array(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)) for _ in range(5))
    with pytest.raises(ProviderError) as err:
        run(backend, GenerationRequest("x", 512, 512, 1, references=refs), ctx)
    assert err.value.status == 422
    assert "input_image_5: Extra inputs are not permitted" in str(err.value) and "\n" not in str(err.value)


def test_422_with_a_string_detail(bfl, ctx):
    bfl.faults.push(route="submit", status=422, body={"detail": "prompt must not be empty"})
    with pytest.raises(ProviderError, match="HTTP 422: prompt must not be empty"):
        run(pro(), REQ, ctx)


def test_429_with_retry_after_then_success(bfl, ctx):
    bfl.faults.push(route="submit", status=429, retry_after=0.2, body={"detail": "Too many active tasks"})
    started = time.monotonic()
    result = run(pro(), REQ, ctx)
    assert time.monotonic() - started >= 0.2             # Retry-After was honoured
    assert len(result.images) == 1
    assert len(bfl.submits()) == 2 and len(bfl.tasks()) == 1   # refused, then accepted once


def test_429_every_time_is_a_clear_error(bfl, ctx):
    for _ in range(FAST.retries + 1):
        bfl.faults.push(route="submit", status=429, retry_after=0, body={"detail": "Too many active tasks"})
    with pytest.raises(ProviderError, match="over BFL's limit of active tasks; lower FLUX2_BFL_CONCURRENCY"):
        run(pro(), REQ, ctx)
    assert bfl.tasks() == []


def test_over_the_account_limit_is_waited_out(serve_bfl, ctx):
    server = serve_bfl(max_active=2, task_delay_s=0.1)
    backend = pro(Deadlines(retries=8, backoff_s=0.01, backoff_cap_s=0.05, total_s=10))
    result = run(backend, GenerationRequest("x", 256, 256, 30, batch=4), ctx)
    assert result.seeds == [30, 31, 32, 33]
    assert len(server.tasks()) == 4 and len(server.submits()) > 4    # some were refused with 429 first
    assert result.cost_usd == pytest.approx(0.12) == server.billed_usd   # each image billed once


def test_500_on_submit_is_not_retried(bfl, ctx):
    bfl.faults.push(route="submit", status=500, body={"detail": "Internal Server Error"})
    with pytest.raises(ProviderError, match="submit answered HTTP 500"):
        run(pro(), REQ, ctx)
    assert len(bfl.submits()) == 1


def test_503_on_submit_is_retried(bfl, ctx):
    bfl.faults.push(route="submit", status=503, retry_after=0, body={"detail": "Service Unavailable"})
    assert len(run(pro(), REQ, ctx).images) == 1
    assert len(bfl.submits()) == 2 and len(bfl.tasks()) == 1


def test_connection_refused_is_one_clear_line(monkeypatch, ctx):
    monkeypatch.setenv("BFL_API_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("BFL_API_KEY", BFL_TEST_KEY)
    with pytest.raises(ProviderError, match=r"cannot connect to 127.0.0.1 .* check BFL_API_URL"):
        run(pro(), REQ, ctx)


def test_dropped_submit_answer_is_not_resubmitted(bfl, ctx):
    bfl.faults.push(route="submit", drop=True)
    with pytest.raises(LostResponse) as err:
        run(pro(), REQ, ctx)
    message = str(err.value)
    assert "may have been billed" in message and "not resubmitted" in message and "\n" not in message
    assert len(bfl.submits()) == 1                       # exactly one submit: a second could bill twice
    assert len(bfl.tasks()) == 1 and bfl.polls() == []


# -- polling ---------------------------------------------------------------------------------------
def test_poll_5xx_is_transient(bfl, ctx):
    bfl.faults.push(route="poll", status=500, body={"detail": "Internal Server Error"})
    bfl.faults.push(route="poll", status=503, body={"detail": "Service Unavailable"})
    bfl.faults.push(route="poll", status=202, body={"id": "x", "status": "Pending"})
    bfl.faults.push(route="poll", drop=True)
    result = run(pro(), REQ, ctx)
    assert len(result.images) == 1 and len(bfl.submits()) == 1
    assert len(bfl.polls()) == 2 + 4


def test_poll_failures_are_tolerated_up_to_the_task_deadline(bfl, ctx):
    # Three rounds of transport retries used to end the task (~30 s at real pace); a paid task is
    # polled on until its deadline (BFL documents 600 s).
    for _ in range(3 * (FAST.retries + 1)):
        bfl.faults.push(route="poll", status=503, body={"detail": "Service Unavailable"})
    for _ in range(3 * (FAST.retries + 1)):
        bfl.faults.push(route="poll", drop=True)
    result = run(pro(), REQ, ctx)
    assert len(result.images) == 1 and len(bfl.submits()) == 1
    assert len(bfl.polls()) > 6 * (FAST.retries + 1)


def test_poll_failures_past_the_deadline_name_the_task(bfl, ctx):
    for _ in range(1000):
        bfl.faults.push(route="poll", status=503, body={"detail": "Service Unavailable"})
    # 2 s: the deadline counts from the submit, which alone can take 0.5 s on a loaded machine; there the last
    # poll can also be a read the deadline cut short (ReadTimeout, seen under `pytest -n 2` at load ~5)
    short = Deadlines(retries=1, backoff_s=0.01, backoff_cap_s=0.02, total_s=2)
    with pytest.raises(ProviderTimeout, match=r"task [0-9a-f-]+ did not finish within 2s \(last poll: .*(HTTP 503|deadline has passed|ReadTimeout)"
                                              r".*\); it may still finish and be billed") as err:
        run(pro(short), REQ, ctx)
    assert len(bfl.submits()) == 1
    (task,) = bfl.tasks()
    assert err.value.maybe_billed == (f"bfl task {task.id} ({bfl.origin}/v1/get_result?id={task.id})",)


def test_polling_deadline(serve_bfl, ctx):
    serve_bfl(polls_until_ready=10_000)
    with pytest.raises(ProviderTimeout, match=r"task [0-9a-f-]+ did not finish within 1s"):
        run(pro(Deadlines(retries=1, backoff_s=0.01, backoff_cap_s=0.02, total_s=1)), REQ, ctx)


def test_cancel_during_polling_stops_at_once(serve_bfl):
    server = serve_bfl(polls_until_ready=10_000)
    set_at = []
    flag = threading.Event()

    def cancel():
        set_at.append(time.monotonic())
        flag.set()

    threading.Timer(1.5, cancel).start()      # after both submits, with room for a loaded machine
    # Real poll backoff (1 s x1.5, cap 10 s): the cancel must not wait for the next poll.
    with pytest.raises(Cancelled):
        run(pro(Deadlines()), GenerationRequest("x", 256, 256, 1, batch=2), RunContext(is_cancelled=flag.is_set))
    latency = time.monotonic() - set_at[0]
    assert latency < 0.5, f"cancel took {latency:.2f}s"
    assert len(server.tasks()) == 2
    polls_before = len(server.polls())
    time.sleep(0.3)
    assert len(server.polls()) == polls_before           # nothing keeps polling in the background


def test_foreign_polling_url_never_gets_the_key(serve_bfl, ctx):
    foreign = serve_bfl()
    home = serve_bfl(polling_origin=foreign.origin)       # hands out polling URLs on another port
    assert home.origin != foreign.origin
    with pytest.raises(ConfigError, match=r"polling URL on http://127.0.0.1:\d+, which is neither .* "
                                          r"refusing to send BFL_API_KEY there"):
        run(pro(), REQ, ctx)
    assert foreign.requests == []                        # not contacted at all, so no key sent
    assert len(home.submits()) == 1 and home.polls() == []


# -- results ---------------------------------------------------------------------------------------
def test_truncated_download_once_is_retried(bfl, ctx):
    bfl.faults.push(route="download", truncate=True)
    result = run(pro(), REQ, ctx)
    assert result.images[0].shape == (256, 256, 3)
    assert len([r for r in bfl.requests if r["route"] == "download"]) == 2
    assert not any(r["x_key_sent"] for r in bfl.requests if r["route"] == "download")   # no key on downloads


def test_truncated_download_every_time_is_a_clear_error(bfl, ctx):
    for _ in range(FAST.retries + 1):
        bfl.faults.push(route="download", truncate=True)
    with pytest.raises(ProviderError, match=r"failed after 4 tries .*downloading the result of task .*billed"):
        run(pro(), REQ, ctx)
    assert len(bfl.submits()) == 1
    assert ctx.ledger.billed_total == pytest.approx(0.03)    # Ready was billed even though the file was lost


def test_expired_result_url(serve_bfl, ctx):
    serve_bfl(url_ttl_s=-1)
    with pytest.raises(ProviderError, match=r"HTTP 403 \(expired or removed\)"):
        run(pro(), REQ, ctx)


def test_corrupt_result_is_a_clear_error(bfl, ctx):
    bfl.faults.push(route="download", status=200, body={"not": "an image"})
    with pytest.raises(ProviderError, match="not a readable PNG/JPEG/WebP image"):
        run(pro(), REQ, ctx)
