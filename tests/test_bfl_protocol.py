"""BFL backend against the loopback server speaking BFL's documented protocol: bodies, costs, statuses."""
from __future__ import annotations

import base64
import json
import logging
import time

import numpy as np
import pytest

from comfyui_flux2.flux2.backend import GenerationRequest, run
from comfyui_flux2.flux2.errors import ConfigError, InputError, ModerationError, ProviderError
from comfyui_flux2.flux2.images import ref_from_array
from comfyui_flux2.flux2.remote.bfl import BflBackend, BflTransport, resolve_base_url
from comfyui_flux2.flux2.remote.factory import make_remote_backend
from comfyui_flux2.flux2.remote.options import RemoteOptions
from comfyui_flux2.flux2.net.transport import Deadlines
from comfyui_flux2.flux2.run_context import RunContext

BFL_TEST_KEY = "bfl-test-key-8d41e7c2"   # the key conftest's `bfl` / `serve_bfl` servers expect
SALT = "Wind-Carved Salt Cathedral"
FAST = Deadlines(retries=3, backoff_s=0.01, backoff_cap_s=0.05, total_s=10)


def backend(model="FLUX.2 [pro]", **opts) -> BflBackend:
    return BflBackend(model, RemoteOptions(**opts), deadlines=FAST)


def refs(n: int, size=(512, 512)) -> tuple:
    """n distinct smooth pictures (smooth: cheap to encode, and so is the server's blend of them)."""
    w, h = size
    ramp = np.linspace(0, 1, w, dtype=np.float32)[None, :, None] * np.linspace(0, 1, h, dtype=np.float32)[:, None, None]
    return tuple(ref_from_array((ramp * np.array([37 * i % 256, 255 - 53 * i % 256, 90 + i], np.float32))
                                .astype(np.uint8)) for i in range(n))


def b64(ref) -> str:
    return base64.b64encode(ref.png).decode("ascii")


# -- request bodies ----------------------------------------------------------------------------
def test_seed_example_request_is_exact(bfl, ctx):
    result = run(backend(), GenerationRequest(SALT, 1536, 1024, 73410), ctx)
    (submit,) = [r for r in bfl.requests if r["route"] == "submit"]
    assert submit["path"] == "/v1/flux-2-pro" and submit["x_key_ok"]
    assert submit["body"] == {"prompt": SALT, "width": 1536, "height": 1024, "seed": 73410,
                              "safety_tolerance": 2, "output_format": "png"}
    assert all(p["x_key_ok"] for p in bfl.polls())       # the key rides on the polls too
    assert result.images[0].shape == (1024, 1536, 3) and result.images[0].dtype == np.uint8
    assert result.images[0].std() > 5                    # the server's picture, not a placeholder
    assert result.seeds == [73410]
    assert result.info["tasks"] == [bfl.tasks()[0].id]


def test_references_go_in_node_order(bfl, ctx):
    a, b, c = refs(3)
    run(backend(prompt_upsampling=True, safety_tolerance=4),
        GenerationRequest("combine", 1536, 1024, 73410, references=(a, b, c)), ctx)
    (body,) = bfl.submits()
    assert body == {"prompt": "combine", "width": 1536, "height": 1024, "seed": 73410, "safety_tolerance": 4,
                    "output_format": "png", "prompt_upsampling": True,
                    "input_image": b64(a), "input_image_2": b64(b), "input_image_3": b64(c)}


def test_flex_sends_steps_guidance_and_upsampling_off(bfl, ctx):
    run(backend("FLUX.2 [flex]", steps=28, guidance=3.5, output_format="JPEG"),
        GenerationRequest("x", 1024, 768, 5, references=refs(1)), ctx)
    (body,) = bfl.submits("/v1/flux-2-flex")
    assert body["steps"] == 28 and body["guidance"] == 3.5 and body["output_format"] == "jpeg"
    assert body["prompt_upsampling"] is False            # flex defaults to true at BFL: say it explicitly


def test_klein_never_gets_flex_fields(bfl, ctx):
    run(backend("FLUX.2 [klein] 4B", steps=8, guidance=3.0, prompt_upsampling=True),
        GenerationRequest("x", 512, 512, 5), ctx)
    (body,) = bfl.submits("/v1/flux-2-klein-4b")
    assert set(body) == {"prompt", "width", "height", "seed", "safety_tolerance", "output_format"}


def test_webp_is_refused_before_any_request(bfl, ctx):
    with pytest.raises(InputError, match="WEBP is not offered by BFL"):
        run(backend(output_format="WEBP"), GenerationRequest("x", 512, 512, 1), ctx)
    assert bfl.requests == []


@pytest.mark.parametrize("model, n, size, message", [
    ("FLUX.2 [pro]", 9, (1024, 1024), "at most 8"),
    ("FLUX.2 [klein] 9B", 5, (1024, 1024), "at most 4"),
    ("FLUX.2 [pro]", 0, (1000, 1024), "multiple of 16"),
    ("FLUX.2 [max]", 0, (48, 1024), "outside 64..2048"),
])
def test_bad_input_fails_before_any_request(bfl, ctx, model, n, size, message):
    with pytest.raises(InputError, match=message):
        run(backend(model), GenerationRequest("x", *size, 1, references=refs(n, (64, 64))), ctx)
    assert bfl.requests == []


def test_factory_builds_bfl_backend():
    b = make_remote_backend("bfl", "FLUX.2 [max]", RemoteOptions())
    assert isinstance(b, BflBackend) and b.kind == "bfl" and b.rules().max_refs == 8
    assert repr(b) == "BflBackend('FLUX.2 [max]')"


# -- cost ----------------------------------------------------------------------------------------
def test_estimate_matches_billed_cost(bfl, ctx):
    pro = backend()
    plain = GenerationRequest(SALT, 1536, 1024, 73410)
    assert pro.estimate(plain).usd == pytest.approx(0.045)
    assert run(pro, plain, ctx).cost_usd == pytest.approx(0.045)
    edit = GenerationRequest("combine", 1536, 1024, 27270, references=refs(3))
    assert pro.estimate(edit).usd == pytest.approx(0.09)
    result = run(pro, edit, ctx)
    assert result.cost_usd == pytest.approx(0.09) and result.info["credits"] == pytest.approx(9.0)
    assert [t.cost for t in bfl.tasks()] == [4.5, 9.0]   # the server's own table, in credits
    assert ctx.ledger.billed_total == pytest.approx(0.135) == bfl.billed_usd
    assert ctx.ledger.estimated_total == pytest.approx(0.135)


@pytest.mark.parametrize("model, size, n_refs", [
    ("FLUX.2 [max]", (1024, 1024), 2), ("FLUX.2 [flex]", (1920, 1088), 1),
    ("FLUX.2 [klein] 4B", (1024, 1024), 4), ("FLUX.2 [klein] 9B", (1024, 1536), 0),
])
def test_estimate_matches_billed_cost_per_model(bfl, ctx, model, size, n_refs):
    b = backend(model)
    req = GenerationRequest("x", *size, 3, references=refs(n_refs, (96, 96)))
    assert run(b, req, ctx).cost_usd == pytest.approx(b.estimate(req).usd)


# -- statuses -----------------------------------------------------------------------------------
def test_pending_then_ready_reports_progress(monkeypatch, ctx, serve_bfl):
    server = serve_bfl(polls_until_ready=6)
    seen = []
    ctx.progress = lambda node, done, total, msg: seen.append((done, total))
    result = run(backend(), GenerationRequest("x", 256, 256, 1, node_id="7"), ctx)
    assert len(result.images) == 1
    assert len(server.polls()) == 6
    dones = [d for d, _ in seen]
    assert dones == sorted(dones) and dones[-1] == 1.0 and all(t == 1.0 for _, t in seen)
    assert any(0.05 < d < 0.9 for d in dones)            # the server's progress fraction came through


def test_unknown_status_is_treated_as_pending(bfl, ctx):
    bfl.faults.push(route="poll", status=200, body={"id": "x", "status": "Reasoning", "result": None, "progress": 0.1})
    assert len(run(backend(), GenerationRequest("x", 256, 256, 1), ctx).images) == 1


def test_content_moderated_is_an_error_not_charged(bfl, ctx):
    with pytest.raises(ModerationError, match=r"Content Moderated - moderated \(not charged\).*safety_tolerance is 2"):
        run(backend(), GenerationRequest("a forbidden-content prompt", 512, 512, 1), ctx)
    assert bfl.billed_usd == 0 and ctx.ledger.billed_total == 0


def test_request_moderated_placeholder_mode(bfl, ctx):
    bfl.faults.push(route="submit", final_status="Request Moderated")
    result = run(backend(on_moderation="placeholder"), GenerationRequest("x", 512, 256, 1), ctx)
    assert result.images[0].shape == (256, 512, 3) and result.images[0].std() == 0
    assert result.cost_usd == 0


def test_error_status_is_a_provider_error_with_task_id(bfl, ctx):
    bfl.faults.push(route="submit", final_status="Error")
    with pytest.raises(ProviderError, match=r"task [0-9a-f-]+ failed \(status Error\)"):
        run(backend(), GenerationRequest("x", 256, 256, 1), ctx)


def test_task_not_found(bfl, ctx):
    bfl.faults.push(route="submit", forget=True)
    with pytest.raises(ProviderError, match="Task not found"):
        run(backend(), GenerationRequest("x", 256, 256, 1), ctx)
    assert len(bfl.polls()) == 6                         # a few not-found answers are tolerated first


def test_poll_404_just_after_submit_then_ready(bfl, ctx):
    for _ in range(3):
        bfl.faults.push(route="poll", status=404, body={"detail": "Not Found"})
    result = run(backend(), GenerationRequest("x", 256, 256, 1), ctx)
    assert len(result.images) == 1 and len(bfl.submits()) == 1


# -- batch ----------------------------------------------------------------------------------------
def test_batch_runs_concurrently_in_order(monkeypatch, ctx, serve_bfl):
    server = serve_bfl(task_delay_s=0.4)
    started = time.monotonic()
    result = run(backend(), GenerationRequest("x", 256, 256, 10, batch=4), ctx)
    wall = time.monotonic() - started
    assert result.seeds == [10, 11, 12, 13]
    # In order: image i is the one the server rendered for seed 10 + i.
    by_seed = {t.body["seed"]: t for t in server.tasks()}
    assert sorted(by_seed) == [10, 11, 12, 13]
    firsts = [img[0, 0].tolist() for img in result.images]
    assert len({tuple(f) for f in firsts}) == 4
    assert server.max_in_flight >= 2, f"tasks did not overlap (wall {wall:.2f}s)"
    assert result.cost_usd == pytest.approx(0.12)
    print(f"batch of 4 x 0.4 s tasks: {wall:.2f} s wall, {server.max_in_flight} in flight at most")


def test_concurrency_is_bounded_by_env(monkeypatch, ctx, serve_bfl):
    server = serve_bfl(task_delay_s=0.05)
    monkeypatch.setenv("FLUX2_BFL_CONCURRENCY", "1")
    result = run(backend(), GenerationRequest("x", 256, 256, 1, batch=3), ctx)
    assert result.seeds == [1, 2, 3] and server.max_in_flight == 1


def test_pack_wide_concurrency_env_is_honoured(bfl, monkeypatch):
    monkeypatch.setenv("FLUX2_CONCURRENCY", "100")
    assert backend().concurrency() == 24                 # capped at BFL's account limit
    monkeypatch.setenv("FLUX2_BFL_CONCURRENCY", "2")
    assert backend().concurrency() == 2                  # the BFL-specific one wins


def test_bad_concurrency_env_is_a_config_error(bfl, ctx, monkeypatch):
    monkeypatch.setenv("FLUX2_BFL_CONCURRENCY", "lots")
    with pytest.raises(ConfigError, match="FLUX2_BFL_CONCURRENCY"):
        run(backend(), GenerationRequest("x", 256, 256, 1), ctx)
    assert bfl.requests == []


def test_partial_batch_failure_hands_over_paid_images(bfl, monkeypatch):
    monkeypatch.setenv("FLUX2_BFL_CONCURRENCY", "1")      # tasks run in order: the first one fails
    bfl.faults.push(route="submit", final_status="Error")
    saved = []
    ctx = RunContext(result_sink=lambda req, res: saved.append(res))
    with pytest.raises(ProviderError, match=r"image 1/3 \(seed 20\): task .* failed \(status Error\)"):
        run(backend(), GenerationRequest("x", 256, 256, 20, batch=3, node_id="4"), ctx)
    (partial,) = saved
    assert partial.seeds == [21, 22] and len(partial.images) == 2
    assert partial.cost_usd == pytest.approx(0.06) == ctx.ledger.billed_total


# -- plan, hosts, secrets -----------------------------------------------------------------------------
def test_plan_elides_images_and_never_holds_the_key(bfl):
    a, b = refs(2)
    ctx = RunContext(dry_run=True)
    run(backend(), GenerationRequest("x", 1024, 1024, 9, references=(a, b), batch=2), ctx)
    assert bfl.requests == []
    ((call, est),) = ctx.planned
    assert call.backend == "bfl" and call.target == f"POST {bfl.api_url}/v1/flux-2-pro"
    assert [body["seed"] for body in call.payload["requests"]] == [9, 10]
    assert call.payload["requests"][0]["input_image_2"] == f"<png 512x512 sha256:{b.sha256[:12]}>"
    text = json.dumps(call.payload) + call.summary + call.target + repr(call)
    assert BFL_TEST_KEY not in text and b64(a)[:40] not in text
    assert est.usd == pytest.approx(2 * (0.03 + 2 * 0.015))


def test_region_comes_from_the_environment(monkeypatch):
    monkeypatch.delenv("BFL_API_URL", raising=False)
    monkeypatch.delenv("BFL_REGION", raising=False)
    assert resolve_base_url() == "https://api.bfl.ai"
    monkeypatch.setenv("BFL_REGION", "eu")
    assert resolve_base_url() == "https://api.eu.bfl.ai"
    monkeypatch.setenv("BFL_REGION", "US")
    assert resolve_base_url() == "https://api.us.bfl.ai"
    monkeypatch.setenv("BFL_API_URL", "https://api.eu.bfl.ai/v1/")     # the full URL wins; /v1 tolerated
    assert resolve_base_url() == "https://api.eu.bfl.ai"
    monkeypatch.delenv("BFL_API_URL")
    monkeypatch.setenv("BFL_REGION", "mars")
    with pytest.raises(ConfigError, match="BFL_REGION"):
        resolve_base_url()
    monkeypatch.setenv("BFL_API_URL", "http://api.bfl.ai")
    with pytest.raises(ConfigError, match="https"):
        resolve_base_url()


@pytest.mark.parametrize("url, allowed", [
    ("https://api.bfl.ai/v1/get_result?id=1", True),
    ("https://api.eu2.bfl.ai/v1/get_result?id=1", True),
    ("https://api.us3.bfl.ai:443/v1/get_result?id=1", True),
    ("http://api.eu2.bfl.ai/v1/get_result?id=1", False),          # clear text
    ("https://api.bfl.ai:8443/v1/get_result?id=1", False),
    ("https://api.bfl.ai.evil.example/v1/get_result", False),
    ("https://evilbfl.ai/v1/get_result", False),
    ("https://user@api.bfl.ai/v1/get_result", False),
    ("https://evil.example\\@api.bfl.ai/v1/get_result", False),
    ("https://evil.example/#.bfl.ai", False),
    ("http://127.0.0.1:8123/v1/get_result?id=1", True),           # the configured host
    ("http://127.0.0.1:8124/v1/get_result?id=1", False),          # same host, other port
])
def test_key_goes_only_to_configured_or_official_hosts(url, allowed):
    t = BflTransport("bfl", ["http://127.0.0.1:8123"], lambda: {"x-key": "k"})
    try:
        assert t.may_authenticate(url) is allowed
    finally:
        t.close()


def test_key_never_in_errors_logs_or_repr(bfl, ctx, caplog, monkeypatch):
    caplog.set_level(logging.DEBUG)
    b = backend()
    texts = [repr(b), b.describe()]
    run(b, GenerationRequest("x", 256, 256, 1), ctx)
    for prompt in ("forbidden-content", "x"):
        bfl.faults.push(route="submit", final_status="Error")
        with pytest.raises(ProviderError) as err:
            run(b, GenerationRequest(prompt, 256, 256, 1), ctx)
        texts.append(str(err.value))
    bfl.faults.push(route="submit", status=422, body={"detail": f"echoing {BFL_TEST_KEY}"})
    with pytest.raises(ProviderError) as err:
        run(b, GenerationRequest("x", 256, 256, 1), ctx)
    texts.append(str(err.value))
    assert "***" in texts[-1]                            # a provider echoing the key is redacted
    monkeypatch.setenv("BFL_API_KEY", "wrong-key-6c1d0e9a")
    with pytest.raises(ConfigError) as err:
        run(b, GenerationRequest("x", 256, 256, 1), ctx)
    texts.append(str(err.value))
    joined = "\n".join(texts) + caplog.text
    assert BFL_TEST_KEY not in joined and "wrong-key-6c1d0e9a" not in joined
    assert "BFL_API_KEY" in texts[-1]
