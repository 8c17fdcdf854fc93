"""Runware backend against the loopback server speaking Runware's documented protocol."""
from __future__ import annotations

import uuid

import numpy as np
import pytest

from comfyui_flux2.flux2.backend import GenerationRequest, run
from comfyui_flux2.flux2.errors import AuthError, BudgetError, InputError, ModerationError, ProviderError
from comfyui_flux2.flux2.images import ref_from_array
from comfyui_flux2.flux2.remote.options import RemoteOptions
from comfyui_flux2.flux2.remote.runware import RunwareBackend
from comfyui_flux2.flux2.net.transport import Deadlines
from comfyui_flux2.flux2.run_context import RunContext

SALT = "Wind-Carved Salt Cathedral"
FAST = Deadlines(retries=3, backoff_s=0.01, backoff_cap_s=0.05, total_s=5)


def pro(**opts) -> RunwareBackend:
    return RunwareBackend("FLUX.2 [pro]", RemoteOptions(**opts), deadlines=FAST)


def refs(n: int, size=(512, 512)) -> tuple:
    rng = np.random.default_rng(7)
    return tuple(ref_from_array(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)) for _ in range(n))


def test_seed_example_request_is_exact(runware, ctx):
    result = run(pro(prompt_upsampling=True, safety_tolerance=2), GenerationRequest(SALT, 1536, 1024, 73410), ctx)
    (request,) = runware.requests
    assert request["auth_ok"]
    (task,) = request["body"]
    assert uuid.UUID(task.pop("taskUUID")).version == 4
    assert task == {
        "taskType": "imageInference", "model": "bfl:5@1", "positivePrompt": SALT, "width": 1536, "height": 1024,
        "seed": 73410, "numberResults": 1, "outputType": "URL", "outputFormat": "PNG", "includeCost": True,
        "deliveryMethod": "sync", "providerSettings": {"bfl": {"promptUpsampling": True, "safetyTolerance": 2}},
    }
    assert result.images[0].shape == (1024, 1536, 3) and result.images[0].dtype == np.uint8
    assert result.seeds == [73410]


def test_task_uuids_are_fresh(runware, ctx):
    backend = pro()
    run(backend, GenerationRequest("a", 256, 256, 1), ctx)
    run(backend, GenerationRequest("a", 256, 256, 1), ctx)
    ids = [t["taskUUID"] for t in runware.tasks("imageInference")]
    assert len(set(ids)) == 2


def test_estimate_and_billed_cost_match_published_prices(runware, ctx):
    backend = pro()
    plain = GenerationRequest(SALT, 1536, 1024, 73410)
    assert backend.estimate(plain).usd == pytest.approx(0.045)
    assert run(backend, plain, ctx).cost_usd == pytest.approx(0.045)
    edit = GenerationRequest("combine", 1536, 1024, 27270, references=refs(3))
    assert backend.estimate(edit).usd == pytest.approx(0.09)
    assert run(backend, edit, ctx).cost_usd == pytest.approx(0.09)
    assert ctx.ledger.billed_total == pytest.approx(0.135)
    assert ctx.ledger.estimated_total == pytest.approx(0.135)


def test_references_keep_node_order_and_upload_once_per_content(runware, ctx):
    a, b, c = refs(3)
    run(pro(), GenerationRequest("edit", 1024, 1024, 5, references=(a, b, c)), ctx)
    uploads = runware.tasks("imageUpload")
    assert len(uploads) == 3
    uuids = [runware.uploads_by_sha(r.sha256) for r in (a, b, c)]
    (task,) = runware.tasks("imageInference")
    assert task["inputs"]["referenceImages"] == uuids
    # Same content in a later node of the same run: no second upload.
    run(pro(), GenerationRequest("again", 1024, 1024, 6, references=(c, a)), ctx)
    assert len(runware.tasks("imageUpload")) == 3
    assert runware.tasks("imageInference")[-1]["inputs"]["referenceImages"] == [uuids[2], uuids[0]]


def test_result_image_is_decoded_and_provider_seed_surfaced(runware, ctx):
    result = run(pro(), GenerationRequest("x", 512, 768, 99), ctx)
    assert result.images[0].shape == (768, 512, 3)
    # The picture is what the server rendered for this prompt/seed (not a placeholder).
    assert result.images[0].std() > 5
    assert result.seeds == [99]


def test_batch_uses_consecutive_seeds(runware, ctx):
    result = run(pro(), GenerationRequest("x", 256, 256, 10, batch=3), ctx)
    assert result.seeds == [10, 11, 12]
    assert sorted(t["seed"] for t in runware.tasks("imageInference")) == [10, 11, 12]
    assert result.cost_usd == pytest.approx(0.09)


@pytest.mark.parametrize("request_, message", [
    (GenerationRequest("x", 1000, 1024, 1), "not a multiple of 16"),
    (GenerationRequest("x", 2048, 4096, 1), "outside 256..2048"),
    (GenerationRequest("x", 128, 1024, 1), "outside 256..2048"),
    (GenerationRequest("   ", 1024, 1024, 1), "prompt is empty"),
    (GenerationRequest("x", 1024, 1024, -1), "seed"),
    (GenerationRequest("x", 1024, 1024, 1, references=refs(9)), "at most 8"),
])
def test_bad_input_fails_before_any_request(runware, ctx, request_, message):
    with pytest.raises(InputError, match=message):
        run(pro(), request_, ctx)
    assert runware.requests == []


def test_model_limits_differ_per_model(runware, ctx):
    dev = RunwareBackend("FLUX.2 [dev]", deadlines=FAST)
    with pytest.raises(InputError, match="takes at most 4"):
        run(dev, GenerationRequest("x", 1024, 1024, 1, references=refs(5)), ctx)
    with pytest.raises(InputError, match="outside 512..2048"):
        run(dev, GenerationRequest("x", 256, 1024, 1), ctx)
    assert runware.requests == []


def test_missing_key_names_the_variable(runware, ctx, monkeypatch):
    monkeypatch.delenv("RUNWARE_API_KEY")
    with pytest.raises(AuthError, match="RUNWARE_API_KEY"):
        run(pro(), GenerationRequest("x", 1024, 1024, 1), ctx)
    assert runware.requests == []


def test_wrong_key_is_an_auth_error_without_the_key(runware, ctx, monkeypatch):
    monkeypatch.setenv("RUNWARE_API_KEY", "wrong-key-123")
    with pytest.raises(AuthError) as err:
        run(pro(), GenerationRequest("x", 1024, 1024, 1), ctx)
    assert "invalidApiKey" in str(err.value) and "wrong-key-123" not in str(err.value)


def test_insufficient_credits(runware, ctx):
    runware.faults.push(route="submit", error_code="insufficientCredits")
    with pytest.raises(BudgetError, match="insufficientCredits"):
        run(pro(), GenerationRequest("x", 1024, 1024, 1), ctx)


def test_moderation_error_and_placeholder(runware, ctx):
    with pytest.raises(ModerationError, match="contentPolicyViolation"):
        run(pro(), GenerationRequest("forbidden-content here", 512, 512, 1), ctx)
    result = run(pro(on_moderation="placeholder"), GenerationRequest("forbidden-content here", 512, 512, 1), ctx)
    assert result.images[0].shape == (512, 512, 3) and result.images[0].std() == 0


def test_provider_parameter_error_is_one_line(runware, ctx):
    backend = pro()
    backend.pm = type(backend.pm)("bfl:999@1", 8, 256, None)   # a model id the provider does not know
    with pytest.raises(ProviderError) as err:
        run(backend, GenerationRequest("x", 512, 512, 1), ctx)
    assert "invalidModel" in str(err.value) and "parameter model" in str(err.value) and "\n" not in str(err.value)


def test_429_is_retried_then_succeeds(runware, ctx):
    runware.faults.push(route="submit", status=429, retry_after=0,
                        body={"errors": [{"code": "tooManyRequests", "message": "Queue capacity reached"}]})
    result = run(pro(), GenerationRequest("x", 256, 256, 1), ctx)
    assert len(result.images) == 1
    assert len(runware.tasks("imageInference")) == 2   # the refused one and the accepted one


def test_500_on_submit_is_not_retried(runware, ctx):
    runware.faults.push(route="submit", status=500, body={"errors": [{"code": "internalServerError", "message": "boom"}]})
    with pytest.raises(ProviderError, match="boom"):
        run(pro(), GenerationRequest("x", 256, 256, 1), ctx)
    assert len(runware.tasks("imageInference")) == 1


def test_lost_answer_is_recovered_without_resubmitting(runware, ctx):
    runware.faults.push(route="submit", drop=True)
    result = run(pro(), GenerationRequest("x", 256, 256, 3), ctx)
    assert len(result.images) == 1
    assert len(runware.tasks("imageInference")) == 1       # never sent twice: it could bill twice
    assert len(runware.tasks("getResponse")) >= 1
    assert result.cost_usd == pytest.approx(0.03)


def test_truncated_download_is_retried(runware, ctx):
    runware.faults.push(route="download", truncate=True)
    result = run(pro(), GenerationRequest("x", 256, 256, 1), ctx)
    assert result.images[0].shape == (256, 256, 3)


def test_truncated_download_every_time_is_a_clear_error(runware, ctx):
    for _ in range(FAST.retries + 1):
        runware.faults.push(route="download", truncate=True)
    with pytest.raises(ProviderError, match="GET 127.0.0.1 failed after 4 tries"):
        run(pro(), GenerationRequest("x", 256, 256, 1), ctx)
    assert len(runware.tasks("imageInference")) == 1


def test_expired_result_url(runware, ctx):
    runware.url_ttl_s = -1
    with pytest.raises(ProviderError, match="expired"):
        run(pro(), GenerationRequest("x", 256, 256, 1), ctx)


def test_connection_refused_is_one_line(monkeypatch, ctx):
    monkeypatch.setenv("RUNWARE_API_URL", "http://127.0.0.1:9/v1")
    monkeypatch.setenv("RUNWARE_API_KEY", "k")
    with pytest.raises(ProviderError, match="cannot connect to 127.0.0.1"):
        run(pro(), GenerationRequest("x", 256, 256, 1), ctx)


def test_dry_run_plans_without_network(runware):
    ctx = RunContext(dry_run=True)
    result = run(pro(), GenerationRequest("x", 1536, 1024, 73410, references=refs(3)), ctx)
    assert runware.requests == []
    (call, est), = ctx.planned
    assert est.usd == pytest.approx(0.09)
    assert "imageInference bfl:5@1" in call.target
    assert result.info["dry_run"]


def test_identical_rerun_is_served_from_the_result_cache(runware, tmp_path):
    from comfyui_flux2.flux2.result_cache import ResultCache
    cache = ResultCache(tmp_path / "cache")
    request = GenerationRequest("x", 512, 512, 1, references=refs(1))
    first = run(pro(), request, RunContext(cache=cache))
    assert first.cost_usd == pytest.approx(0.045)
    # A new process would build a new context and cache object over the same folder.
    again_ctx = RunContext(cache=ResultCache(tmp_path / "cache"))
    again = run(pro(), request, again_ctx)
    assert again.info["cached"] and again.cost_usd == 0 and again_ctx.ledger.billed_total == 0
    assert (again.images[0] == first.images[0]).all()
    assert len(runware.tasks("imageInference")) == 1
    # Any change of the request is a miss: seed, option, reference content.
    run(pro(), GenerationRequest("x", 512, 512, 2, references=refs(1)), RunContext(cache=cache))
    run(pro(safety_tolerance=3), request, RunContext(cache=cache))
    assert len(runware.tasks("imageInference")) == 3


def test_damaged_cache_entry_is_a_miss(runware, tmp_path):
    from comfyui_flux2.flux2.result_cache import ResultCache
    cache = ResultCache(tmp_path / "cache")
    request = GenerationRequest("x", 256, 256, 1)
    run(pro(), request, RunContext(cache=cache))
    (entry,) = (tmp_path / "cache").rglob("*.result")
    data = bytearray(entry.read_bytes())
    data[-100] ^= 0xFF                        # one flipped byte inside the stored PNG
    entry.write_bytes(bytes(data))
    assert not run(pro(), request, RunContext(cache=cache)).info.get("cached")
    assert len(runware.tasks("imageInference")) == 2


def test_batch_tasks_run_concurrently_within_the_limit(runware, monkeypatch):
    import threading
    import time as _time
    in_flight, peak, lock = [0], [0], threading.Lock()
    handler = runware.httpd.RequestHandlerClass
    orig_inference = handler.image_inference

    def tracked(self, task, fault):
        with lock:
            in_flight[0] += 1
            peak[0] = max(peak[0], in_flight[0])
        _time.sleep(0.2)
        try:
            return orig_inference(self, task, fault)
        finally:
            with lock:
                in_flight[0] -= 1

    monkeypatch.setattr(handler, "image_inference", tracked)
    monkeypatch.setenv("FLUX2_CONCURRENCY", "3")
    result = run(pro(), GenerationRequest("x", 256, 256, 1, batch=6), RunContext())
    assert result.seeds == [1, 2, 3, 4, 5, 6]          # order kept whatever finished first
    assert peak[0] == 3


def test_a_generated_image_used_as_a_reference_is_sent_as_its_image_uuid(runware, ctx):
    from comfyui_flux2.flux2.images import arrays_to_tensor, tensor_to_arrays
    first = run(pro(), GenerationRequest("a", 512, 512, 1), ctx)
    (task,) = runware.tasks("imageInference")
    generated_uuid = runware.results[task["taskUUID"]]["imageUUID"]
    # The image comes back through an IMAGE socket (float tensor) as the next node's reference.
    back = ref_from_array(tensor_to_arrays(arrays_to_tensor(first.images))[0])
    edit = run(pro(), GenerationRequest("edit", 512, 512, 2, references=(back,)), ctx)
    assert runware.tasks("imageUpload") == []                      # not uploaded again
    assert runware.tasks("imageInference")[-1]["inputs"]["referenceImages"] == [generated_uuid]
    assert edit.images[0].std() > 5
    other = refs(1)[0]                                             # any other picture is still uploaded
    run(pro(), GenerationRequest("edit", 512, 512, 3, references=(other,)), ctx)
    assert len(runware.tasks("imageUpload")) == 1
