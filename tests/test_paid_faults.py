"""Faults after money was spent: nothing paid is lost, no key is shown, every wait has a deadline.

Each test injects one fault into the loopback servers (which speak the providers' documented
protocols) and checks three things where they apply: every image the provider billed is returned or
handed over (`exc.salvaged`, the run's result sink, the ledger), tasks that may still be billed are
named (`exc.maybe_billed`), and no key appears in any message.
"""
from __future__ import annotations

import _thread
import logging
import math
import threading

import httpx
import pytest

from comfyui_flux2.flux2.backend import GenerationRequest, run
from comfyui_flux2.flux2.errors import AuthError, Cancelled, Flux2Error, ModerationError, ProviderError, ProviderTimeout
from comfyui_flux2.flux2.redaction import scrub
from comfyui_flux2.flux2.net import netguard
from comfyui_flux2.flux2.remote.bfl import BflBackend
from comfyui_flux2.flux2.remote.options import RemoteOptions
from comfyui_flux2.flux2.remote.runware import RunwareBackend
from comfyui_flux2.flux2.net.transport import MAX_DOWNLOAD_BYTES, Deadlines, LostResponse, Transport
from comfyui_flux2.flux2.result_cache import ResultCache
from comfyui_flux2.flux2.run_context import RunContext
from comfyui_flux2.loopback import bfl_server

RUNWARE_TEST_KEY = "rw-test-key-5f2c9a"
BFL_TEST_KEY = "bfl-test-key-8d41e7c2"
FAST = Deadlines(retries=3, backoff_s=0.01, backoff_cap_s=0.05, total_s=5, lookup_s=1)   # a task no lookup finds: named after 1 s
PRO_USD = 0.03                         # one 256x256 [pro] image, both providers


def runware_pro(deadlines=FAST, **opts) -> RunwareBackend:
    return RunwareBackend("FLUX.2 [pro]", RemoteOptions(**opts), deadlines=deadlines)


def bfl_pro(deadlines=FAST, **opts) -> BflBackend:
    return BflBackend("FLUX.2 [pro]", RemoteOptions(**opts), deadlines=deadlines)


def sink_ctx(**kw) -> tuple[RunContext, list]:
    saved = []
    return RunContext(result_sink=lambda req, res: saved.append(res), **kw), saved


def batch(n: int, seed: int = 100) -> GenerationRequest:
    return GenerationRequest("x", 256, 256, seed, batch=n, node_id="5")


def fail(backend, request, ctx, error=Flux2Error) -> Flux2Error:
    with pytest.raises(error) as err:
        run(backend, request, ctx)
    message = str(err.value)
    assert "\n" not in message and RUNWARE_TEST_KEY not in message and BFL_TEST_KEY not in message
    return err.value


def kept_everything_billed(exc: Flux2Error, saved: list, ctx: RunContext, billed_images: int) -> None:
    """The error carries every billed image, the sink got them, the ledger counts their cost."""
    assert exc.salvaged is not None and len(exc.salvaged.images) == billed_images
    assert [len(r.images) for r in saved] == [billed_images]
    assert exc.salvaged.cost_usd == pytest.approx(billed_images * PRO_USD)
    assert ctx.ledger.billed_total == pytest.approx(billed_images * PRO_USD)


# -- issue 17.1: a batch where one task fails keeps the paid ones ------------------------------------
def test_runware_http_500_in_a_batch_keeps_the_other_seven(runware):
    runware.faults.push(route="submit", status=500, body={"errors": [{"code": "internalServerError", "message": "boom"}]})
    ctx, saved = sink_ctx()
    exc = fail(runware_pro(), batch(8), ctx, ProviderError)
    assert "boom" in str(exc) and "7 of 8 image(s) kept" in str(exc)
    assert len(runware.billed_tasks) == 7
    kept_everything_billed(exc, saved, ctx, 7)
    # Which task failed is named: after a 5xx nobody knows whether it ran.
    (failed,) = set(t["taskUUID"] for t in runware.tasks("imageInference")) - set(runware.billed_tasks)
    assert exc.maybe_billed == (f"runware task {failed}",)


def test_runware_401_in_a_batch_keeps_the_others(runware):
    # The 401 answers after a moment, so the other tasks are sent and paid first (as when one of several
    # keys is revoked mid-batch): without it, a 401 that wins the race stops the batch before any is billed.
    runware.faults.push(route="submit", status=401, delay_s=0.5,
                        body={"errors": [{"code": "invalidApiKey", "message": "bad key"}]})
    ctx, saved = sink_ctx()
    exc = fail(runware_pro(), batch(8), ctx, AuthError)
    billed = len(runware.billed_tasks)
    assert billed == len(runware.tasks("imageInference")) - 1
    kept_everything_billed(exc, saved, ctx, billed)


def test_runware_dropped_answers_in_a_batch_are_recovered_not_resent(runware):
    for _ in range(3):
        runware.faults.push(route="submit", drop=True)
    result = run(runware_pro(), batch(8), RunContext())
    assert len(result.images) == 8 and result.seeds == list(range(100, 108))
    assert len(runware.tasks("imageInference")) == 8          # none sent twice
    assert len(runware.tasks("getResponse")) >= 3
    assert result.cost_usd == pytest.approx(8 * PRO_USD)


@pytest.mark.parametrize("patch, message", [
    ({"seed": "x"}, "reported seed 'x', not an integer"),
    ({"cost": "abc"}, "reported cost 'abc', not a number"),
])
def test_runware_malformed_field_keeps_the_image(runware, patch, message):
    runware.faults.push(route="submit", patch=patch)
    ctx, saved = sink_ctx()
    exc = fail(runware_pro(), batch(8), ctx, ProviderError)
    assert message in str(exc) and "8 of 8 image(s) kept" in str(exc)
    assert len(exc.salvaged.images) == 8 and [len(r.images) for r in saved] == [8]
    if "cost" in patch:      # the charge of the one image is unknown: the other seven are counted
        assert exc.salvaged.cost_usd == pytest.approx(7 * PRO_USD) and exc.salvaged.info["cost_unknown_tasks"] == 1
    else:
        assert exc.salvaged.cost_usd == pytest.approx(8 * PRO_USD)


def test_runware_image_url_of_the_wrong_type(runware):
    runware.faults.push(route="submit", patch={"imageURL": ["http://127.0.0.1:1/a.png"]})
    ctx, saved = sink_ctx()
    exc = fail(runware_pro(), batch(4), ctx, ProviderError)
    assert "answered imageURL as a list, not a string; no image" in str(exc)
    assert len(exc.salvaged.images) == 3
    assert exc.salvaged.cost_usd == pytest.approx(4 * PRO_USD)   # billed all four: the provider said so


@pytest.mark.parametrize("cost", [-0.03, float("nan"), 250.0])
def test_runware_implausible_cost_is_flagged_not_added(runware, cost):
    runware.faults.push(route="submit", patch={"cost": cost})
    ctx = RunContext()
    result = run(runware_pro(), batch(2), ctx)
    assert len(result.images) == 2
    assert result.cost_usd == pytest.approx(PRO_USD)
    (note,) = result.info["price_notes"]
    assert "implausible cost" in note and ctx.warnings == [f"node 5: {note}"]


def test_runware_rerun_after_a_partial_failure_pays_only_for_what_was_lost(runware, tmp_path):
    runware.faults.push(route="submit", status=500, body={"errors": [{"code": "internalServerError", "message": "boom"}]})
    cache = ResultCache(tmp_path / "cache")
    exc = fail(runware_pro(), batch(4), RunContext(cache=cache), ProviderError)
    assert len(exc.salvaged.images) == 3
    again = run(runware_pro(), batch(4), RunContext(cache=ResultCache(tmp_path / "cache")))
    assert len(again.images) == 4 and again.seeds == [100, 101, 102, 103]
    assert again.info["cached_images"] == 3 and again.cost_usd == pytest.approx(PRO_USD)
    assert len(runware.billed_tasks) == 4                       # 3 + the one that failed, nothing twice


def test_bfl_partial_batch_keeps_the_paid_images_and_names_the_unknown(serve_bfl, monkeypatch):
    bfl = serve_bfl()
    monkeypatch.setenv("FLUX2_BFL_CONCURRENCY", "1")
    bfl.faults.push(route="poll", patch_answer={"status": "Ready", "result": {"sample": 5}})
    ctx, saved = sink_ctx()
    exc = fail(bfl_pro(), batch(3), ctx, ProviderError)
    assert "is Ready (and billed) but carries no result.sample URL" in str(exc)
    assert len(exc.salvaged.images) == 2 and [len(r.images) for r in saved] == [2]
    # The broken one said Ready: it was billed, and its cost is counted with the others.
    assert exc.salvaged.cost_usd == pytest.approx(3 * PRO_USD) == ctx.ledger.billed_total


# -- issue 17.2: keys are never shown ------------------------------------------------------------
def test_bfl_error_details_with_the_key_are_redacted(bfl, ctx):
    bfl.faults.push(route="submit", final_status="Error", details=f"worker said key={BFL_TEST_KEY} was used")
    exc = fail(bfl_pro(), GenerationRequest("x", 256, 256, 1), ctx, ProviderError)
    assert "worker said key=*** was used" in str(exc)


def test_bfl_moderation_details_as_a_string_are_redacted(bfl, ctx):
    bfl.faults.push(route="submit", final_status="Content Moderated", details=f"flagged; x-key {BFL_TEST_KEY}")
    exc = fail(bfl_pro(), GenerationRequest("x", 256, 256, 1), ctx, ModerationError)
    assert "flagged; x-key ***" in str(exc)


@pytest.mark.parametrize("pad", [385, 390, 395, 399])
def test_bfl_redacts_before_it_cuts(bfl, ctx, pad):
    bfl.faults.push(route="submit", status=422, body={"detail": "p" * pad + BFL_TEST_KEY})
    exc = fail(bfl_pro(), GenerationRequest("x", 256, 256, 1), ctx, ProviderError)
    assert BFL_TEST_KEY[:6] not in str(exc)


@pytest.mark.parametrize("pad", [290, 295, 299])
def test_runware_redacts_before_it_cuts(runware, ctx, pad):
    runware.faults.push(route="submit", status=400,
                        body={"errors": [{"code": "x", "message": "m" * pad + RUNWARE_TEST_KEY}]})
    exc = fail(runware_pro(), GenerationRequest("x", 256, 256, 1), ctx, ProviderError)
    assert RUNWARE_TEST_KEY[:6] not in str(exc)


def test_a_key_read_from_a_file_is_scrubbed_too(monkeypatch, tmp_path):
    monkeypatch.setenv("BFL_API_KEY_FILE", str(tmp_path / "k"))
    (tmp_path / "k").write_text("file-key-0123456789\n")
    assert scrub("echo file-key-0123456789 done") == "echo *** done"
    assert str(ProviderError("x file-key-0123456789 y")) == "x *** y"


# -- issue 17.4: abort at once and name what may still be billed --------------------------------------
def test_runware_abort_returns_at_once_keeps_finished_images_and_names_the_rest(runware, monkeypatch, default_sigint):
    monkeypatch.setenv("FLUX2_CONCURRENCY", "2")
    runware.faults.push(route="submit", delay_s=30)               # one task of two takes (too) long
    ctx, saved = sink_ctx()

    def progress(node, done, total, message):
        if "1/2 ready" in message:
            _thread.interrupt_main()                               # the second Ctrl-C, once one image is in

    ctx.progress = progress
    exc = fail(runware_pro(), batch(2), ctx, Cancelled)
    assert "aborted by the user" in str(exc) and "1 of 2 image(s) kept" in str(exc)
    (slow,) = runware.processing                                   # still running at the provider
    assert exc.maybe_billed == (f"runware task {slow}",) and slow in str(exc)
    assert len(exc.salvaged.images) == 1 and [len(r.images) for r in saved] == [1]


def test_bfl_cancel_names_the_submitted_tasks(serve_bfl):
    bfl = serve_bfl(polls_until_ready=10_000)
    # The first Ctrl-C, once both tasks are being polled (so both ids are known here).
    cancelled = lambda: len({p["id"] for p in bfl.polls()}) == 2          # noqa: E731
    exc = fail(bfl_pro(Deadlines(backoff_s=0.05, backoff_cap_s=0.1)), batch(2), RunContext(is_cancelled=cancelled),
               Cancelled)
    ids = sorted(t.id for t in bfl.tasks())
    assert len(ids) == 2 and all(i in str(exc) for i in ids)
    assert sorted(exc.maybe_billed) == sorted(f"bfl task {i} ({bfl.origin}/v1/get_result?id={i})" for i in ids)


# -- issue 17.5: deadlines that hold ----------------------------------------------------------------
def test_dribbled_submit_answer_is_abandoned_at_the_deadline_and_recovered(runware):
    runware.faults.push(route="submit", dribble_s=0.3)           # ~500 bytes: two and a half minutes
    backend = runware_pro(Deadlines(retries=3, backoff_s=0.01, backoff_cap_s=0.05, total_s=10, request_s=1))
    result = run(backend, GenerationRequest("x", 256, 256, 1), RunContext())
    assert len(result.images) == 1 and len(runware.tasks("imageInference")) == 1
    assert len(runware.tasks("getResponse")) >= 1              # the dribbled answer was given up on


def test_dribbled_download_is_cut_at_the_deadline_and_fetched_again(runware):
    runware.faults.push(route="download", dribble_s=0.3)
    backend = runware_pro(Deadlines(retries=3, backoff_s=0.01, backoff_cap_s=0.05, total_s=10, download_s=3))
    result = run(backend, GenerationRequest("x", 256, 256, 1), RunContext())
    assert len(result.images) == 1


@pytest.mark.parametrize("fault", [{"endless": True}, {"claim_bytes": 10 * 1024 ** 3}])
def test_an_endless_or_huge_result_stops_at_the_size_limit(runware, fault):
    runware.faults.push(route="download", **fault)
    ctx, _ = sink_ctx()
    exc = fail(runware_pro(), GenerationRequest("x", 256, 256, 1), ctx, ProviderError)
    assert "larger than 64 MiB; not downloaded" in str(exc)
    assert runware.endless_bytes_sent < MAX_DOWNLOAD_BYTES + 16 * 1024 * 1024
    assert ctx.ledger.billed_total == pytest.approx(PRO_USD)     # billed although the file was refused


def test_bfl_polls_through_a_garbled_poll_answer(bfl, ctx):
    bfl.faults.push(route="poll", garble="<html>502 Bad Gateway</html>")
    bfl.faults.push(route="poll", cut_json=True)
    assert len(run(bfl_pro(), GenerationRequest("x", 256, 256, 1), ctx).images) == 1


# -- issue 17.8: answers are not trusted blindly ---------------------------------------------------------
@pytest.mark.parametrize("fault", [{"garble": "<html>oops</html>"}, {"cut_json": True}])
def test_runware_garbled_200_is_recovered_by_task_id(runware, fault):
    runware.faults.push(route="submit", **fault)
    result = run(runware_pro(), GenerationRequest("x", 256, 256, 1), RunContext())
    assert len(result.images) == 1 and result.cost_usd == pytest.approx(PRO_USD)
    assert len(runware.tasks("imageInference")) == 1 and len(runware.tasks("getResponse")) >= 1


def test_runware_post_never_answered_ends_with_its_task_id(runware):
    runware.faults.push(route="submit", delay_s=30)
    backend = runware_pro(Deadlines(retries=1, backoff_s=0.05, backoff_cap_s=0.1, total_s=1.5, request_s=0.5))
    exc = fail(backend, GenerationRequest("x", 256, 256, 1), RunContext(), ProviderTimeout)
    (task,) = runware.tasks("imageInference")
    assert task["taskUUID"] in str(exc) and "may still finish and be billed" in str(exc)
    assert exc.maybe_billed == (f"runware task {task['taskUUID']}",)


def test_bfl_garbled_submit_with_an_id_is_polled(bfl, ctx):
    bfl.faults.push(route="submit", cut_json=True)                # '{"id": "…", "polling_url": "htt'
    result = run(bfl_pro(), GenerationRequest("x", 256, 256, 1), ctx)
    assert len(result.images) == 1 and len(bfl.submits()) == 1


def test_bfl_garbled_submit_without_an_id_says_it_may_be_billed(bfl, ctx):
    bfl.faults.push(route="submit", garble="<html>upstream reset</html>")
    exc = fail(bfl_pro(), GenerationRequest("x", 256, 256, 1), ctx, LostResponse)
    assert "may have been billed" in str(exc) and "not resubmitted" in str(exc)
    assert len(bfl.submits()) == 1 and len(exc.maybe_billed) == 1


def test_bfl_ready_with_a_bad_seed_keeps_the_image(bfl):
    bfl.faults.push(route="poll", patch={"seed": "abc"})     # the first poll is Pending: nothing to patch
    bfl.faults.push(route="poll", patch={"seed": "abc"})
    ctx, saved = sink_ctx()
    exc = fail(bfl_pro(), GenerationRequest("x", 256, 256, 1), ctx, ProviderError)
    assert "reported seed 'abc', not an integer" in str(exc)
    assert len(exc.salvaged.images) == 1 and exc.salvaged.seeds == [1] and len(saved) == 1


def test_bfl_implausible_submit_cost_is_flagged(bfl):
    bfl.faults.push(route="submit", patch={"cost": -300})
    ctx = RunContext()
    result = run(bfl_pro(), GenerationRequest("x", 256, 256, 1), ctx)
    assert "implausible cost" in result.info["price_notes"][0]


# -- issue 17.9: result URLs -----------------------------------------------------------------------
@pytest.mark.parametrize("where", ["http://127.0.0.3:{port}/image/x.png", "http://127.0.0.1:22/image/x.png",
                                   "https://10.0.0.7/image/x.png", "ftp://127.0.0.1:{port}/x"])
def test_result_url_off_the_provider_origin_is_refused_without_a_request(runware, where):
    url = where.format(port=runware.port)
    runware.faults.push(route="submit", patch={"imageURL": url})
    ctx, _ = sink_ctx()
    exc = fail(runware_pro(), GenerationRequest("x", 256, 256, 1), ctx, ProviderError)
    assert "refused" in str(exc) or "only https" in str(exc) or "only port 443" in str(exc)
    assert runware.downloads == []                                  # nothing was fetched


def test_redirect_to_another_address_is_refused(runware):
    runware.faults.push(route="download", redirect="http://127.0.0.2:9/steal")
    exc = fail(runware_pro(), GenerationRequest("x", 256, 256, 1), RunContext(), ProviderError)
    assert "only https" in str(exc)


@pytest.mark.parametrize("url, ok", [
    ("https://im.runware.ai/image/x.png", True),
    ("https://delivery-eu1.bfl.ai/results/x/sample.png?sig=1", True),
    ("http://im.runware.ai/image/x.png", False),
    ("https://127.0.0.1/x.png", False),
    ("https://10.1.2.3/x.png", False),
    ("https://[::1]/x.png", False),
    ("https://169.254.169.254/latest/meta-data", False),
    ("https://localhost/x.png", False),
    ("https://cdn.example.com:8443/x.png", False),
    ("https://user:pw@cdn.example.com/x.png", False),
    ("https://cdn.example.com\\@10.0.0.1/x.png", False),
])
def test_result_url_rules_in_production_mode(url, ok):
    t = Transport("runware", ["https://api.runware.ai/v1"], lambda: {"Authorization": "Bearer k"})
    try:
        if ok:
            assert t.check_result_url(url, "result") == url
        else:
            with pytest.raises(ProviderError):
                t.check_result_url(url, "result")
    finally:
        t.close()


def test_a_public_name_that_resolves_to_a_private_address_is_not_dialled(monkeypatch):
    dialled = []
    monkeypatch.setattr(netguard.socket, "getaddrinfo",
                        lambda host, port, **kw: [(2, 1, 6, "", ("10.0.0.5", port))])
    monkeypatch.setattr(netguard.httpcore.SyncBackend, "connect_tcp", lambda *a, **kw: dialled.append(a))
    t = Transport("runware", ["https://api.runware.ai/v1"], lambda: {"Authorization": "Bearer k"})
    try:
        with pytest.raises(ProviderError, match="resolves to a private address; refused"):
            t.download("https://cdn.example.com/x.png", "result")
    finally:
        t.close()
    assert dialled == []


def test_the_network_guard_is_in_place():
    """httpx builds its pool privately; if an httpx update drops the replacement, this fails."""
    t = Transport("runware", ["https://api.runware.ai/v1"], lambda: {})
    try:
        pool = t._client._transport._pool
        assert isinstance(pool._network_backend, netguard._GuardedBackend)
    finally:
        t.close()


def test_transports_share_one_verifying_ssl_context(monkeypatch):
    """Each provider thread has its own transport; the CA store is loaded once, not twice per transport
    (0.5 s of CPU at the start of each batch, issue 25), and still follows SSL_CERT_FILE as httpx does."""
    import ssl
    pools = [netguard.guarded_transport()._pool for _ in range(3)]
    contexts = {id(p._ssl_context) for p in pools}
    assert len(contexts) == 1
    context = pools[0]._ssl_context
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    import certifi                                                       # httpx's own dependency
    monkeypatch.setenv("SSL_CERT_FILE", certifi.where())
    assert netguard.guarded_transport()._pool._ssl_context is not context


def test_downloads_never_carry_the_key(runware):
    run(runware_pro(), GenerationRequest("x", 256, 256, 1), RunContext())
    assert runware.downloads and not any(d["auth_header"] for d in runware.downloads)
    seen = []
    mock = httpx.MockTransport(lambda req: seen.append(req) or httpx.Response(200, content=b"x"))
    t = Transport("runware", ["https://api.runware.ai/v1"], lambda: {"Authorization": "Bearer K"}, transport=mock)
    t.download("https://api.runware.ai/image/x.png", "result")       # even on the API host itself
    assert "authorization" not in seen[-1].headers


# -- issue 17.12: prices -------------------------------------------------------------------------------
def test_flex_on_bfl_is_estimated_at_five_cents_per_megapixel(bfl, ctx):
    # Issue 23 re-check: BFL's pricing page ("from $0.05") and BFL's skills repository (5c first MP, 5c each
    # further) give $0.05/MP now; the FLUX.2 overview's $0.06 was older.
    backend = BflBackend("FLUX.2 [flex]", deadlines=FAST)
    request = GenerationRequest("x", 1024, 1024, 1)
    assert backend.estimate(request).usd == pytest.approx(0.05)
    result = run(backend, request, ctx)
    assert result.cost_usd == pytest.approx(0.05) and "price_notes" not in result.info


def test_a_charge_that_differs_from_the_estimate_is_reported(serve_bfl, monkeypatch):
    monkeypatch.setitem(bfl_server.ENDPOINTS, "/v1/flux-2-pro", (8, (4.0, 1.5, 1.5), {"prompt_upsampling"}))
    serve_bfl()
    ctx = RunContext()
    result = run(bfl_pro(), GenerationRequest("x", 256, 256, 1), ctx)
    (note,) = result.info["price_notes"]
    assert "charged $0.0400, the estimate was $0.0300" in note and "BFL counted" in note
    assert ctx.warnings == [f"node ?: {note}"] and result.cost_usd == pytest.approx(0.04)


def test_runware_charge_that_differs_from_the_estimate_is_reported(runware, caplog):
    caplog.set_level(logging.WARNING)
    runware.faults.push(route="submit", patch={"cost": 0.05})
    result = run(runware_pro(), GenerationRequest("x", 256, 256, 1), RunContext())
    assert "charged $0.0500, the estimate was $0.0300" in result.info["price_notes"][0]
    assert "price table may be out of date" in caplog.text
    assert not math.isnan(result.cost_usd)


def test_runware_answer_with_an_inline_copy_keeps_the_image_when_its_url_fails(runware):
    """An answer carrying imageBase64Data beside imageURL: the inline copy is the image, so a download that
    fails (here every attempt answers 500) cannot lose the paid picture. Before, only the URL was tried."""
    import base64
    import io

    import numpy as np
    from PIL import Image

    picture = np.full((256, 256, 3), (12, 200, 90), np.uint8)
    png = io.BytesIO()
    Image.fromarray(picture).save(png, format="PNG")
    runware.faults.push(route="submit", patch={"imageBase64Data": base64.b64encode(png.getvalue()).decode()})
    for _ in range(8):
        runware.faults.push(route="download", status=500, body={"errors": [{"code": "internalServerError"}]})
    result = run(runware_pro(), GenerationRequest("x", 256, 256, 1), RunContext())
    assert np.array_equal(np.asarray(result.images[0]), picture) and result.cost_usd == pytest.approx(PRO_USD)
    assert runware.downloads == []
