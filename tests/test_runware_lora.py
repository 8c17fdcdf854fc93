"""LoRAs on Runware: Flux2LoRA -> `lora: [{"model": AIR, "weight": w}]` in imageInference, as Runware documents it
(runware.ai/docs/learn/loras), only on the models whose parameters list `lora` (docs/loras.md)."""
from __future__ import annotations

import uuid

import httpx
import numpy as np
import pytest

from comfyui_flux2.flux2.backend import GenerationRequest, run
from comfyui_flux2.flux2.errors import InputError
from comfyui_flux2.flux2.models import MODELS, RUNWARE
from comfyui_flux2.flux2.remote.options import RemoteOptions
from comfyui_flux2.flux2.remote.runware import RunwareBackend
from comfyui_flux2.flux2.net.transport import Deadlines
from comfyui_flux2.flux2.run_context import RunContext
from comfyui_flux2.nodes.lora_node import Flux2LoRA

FAST = Deadlines(retries=3, backoff_s=0.01, backoff_cap_s=0.05, total_s=5)
PIXEL_ART, LOGO = "civitai:120096@135931", "civitai:124609@177492"     # the AIR ids of Runware's LoRA guide


def dev() -> RunwareBackend:
    return RunwareBackend("FLUX.2 [dev]", RemoteOptions(), deadlines=FAST)


def with_loras(backend, *loras):
    for air, weight in loras:
        (backend,) = Flux2LoRA().apply(backend, "(none)", weight, air)
    return backend


def test_the_lora_field_is_sent_as_documented(runware, ctx):
    base = dev()
    backend = with_loras(base, (PIXEL_ART, 1.0), (LOGO, 0.7))
    assert base.loras == ()                                  # the node returns a new backend; the old one is unchanged
    run(backend, GenerationRequest("supercar", 1024, 1024, 11), ctx)
    (request,) = runware.requests
    (task,) = request["body"]
    assert uuid.UUID(task.pop("taskUUID")).version == 4
    assert task == {"taskType": "imageInference", "model": "runware:400@1", "positivePrompt": "supercar",
                    "width": 1024, "height": 1024, "seed": 11, "numberResults": 1, "outputType": "URL",
                    "outputFormat": "PNG", "includeCost": True, "deliveryMethod": "sync",
                    "lora": [{"model": PIXEL_ART, "weight": 1.0}, {"model": LOGO, "weight": 0.7}]}


def test_a_lora_changes_the_image_and_weight_zero_sends_none(runware):
    req = GenerationRequest("supercar", 512, 512, 3)
    plain = run(dev(), req, RunContext()).images[0]
    styled = run(with_loras(dev(), (PIXEL_ART, 1.0)), req, RunContext()).images[0]
    off = run(with_loras(dev(), (PIXEL_ART, 0.0)), req, RunContext()).images[0]
    assert not np.array_equal(plain, styled) and np.array_equal(plain, off)
    assert [("lora" in t) for t in runware.tasks("imageInference")] == [False, True, False]


def test_plan_and_result_cache_key_carry_the_loras():
    backend = with_loras(dev(), (PIXEL_ART, 0.5))
    (call,) = backend.plan(GenerationRequest("supercar", 1024, 1024, 1))
    assert "LoRA civitai:120096@135931 x0.5" in call.summary
    assert call.payload["tasks"][0]["lora"] == [{"model": PIXEL_ART, "weight": 0.5}]
    assert backend.cache_identity()["loras"] == [[PIXEL_ART, 0.5]] and "loras" not in dev().cache_identity()


def test_models_without_lora_and_bad_ids_are_refused_in_one_line():
    takes = {m.name for m in MODELS.values() if RUNWARE in m.providers and m.on(RUNWARE).takes_lora}
    assert takes == {"FLUX.2 [dev]", "FLUX.2 [klein] 4B", "FLUX.2 [klein] 9B", "FLUX.2 [klein] 4B Base",
                     "FLUX.2 [klein] 9B Base"}
    for name in ("FLUX.2 [pro]", "FLUX.2 [flex]", "FLUX.2 [max]"):
        with pytest.raises(InputError, match=rf"{name.replace('[', '.').replace(']', '.')} on Runware takes no LoRA"):
            with_loras(RunwareBackend(name), (PIXEL_ART, 1.0))
    for bad in ("", "my-lora.safetensors", "civitai:120096"):
        with pytest.raises(InputError, match="give the LoRA's Runware model id") as exc:
            with_loras(dev(), (bad, 1.0))
        assert "\n" not in str(exc.value)


def test_loopback_takes_lora_only_where_runware_lists_it(runware):
    """The fake server follows the documented parameter: refused on a bfl: model, malformed items refused."""
    def post(task):
        task = {"taskType": "imageInference", "taskUUID": str(uuid.uuid4()), "positivePrompt": "x", "width": 512,
                "height": 512, **task}
        return httpx.post(runware.api_url, json=[task], headers={"Authorization": f"Bearer {runware.api_key}"})

    ok = post({"model": "runware:400@4", "lora": [{"model": LOGO, "weight": -0.5}]})
    assert ok.status_code == 200 and ok.json()["data"][0]["imageURL"]
    for task, param in (({"model": "bfl:5@1", "lora": [{"model": LOGO, "weight": 1}]}, "lora"),
                        ({"model": "runware:400@1", "lora": [{"model": "x", "weight": 1}]}, "lora[0].model"),
                        ({"model": "runware:400@1", "lora": [{"model": LOGO, "weight": "1"}]}, "lora[0].weight")):
        r = post(task)
        assert r.status_code == 400 and r.json()["errors"][0]["parameter"] == param
