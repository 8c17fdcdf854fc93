"""Request bodies are typed frozen dataclasses; what goes on the wire is what it was before they were.

`tests/data/request_bodies_golden.json` is the pack's own output, recorded from the code that built
the bodies as hand-written dicts (commit 3ec192c) -- not a provider artifact. It holds the exact JSON
text httpx sends (compact separators, key order included) for every model x provider x option set x
references x image of a batch, whole runs captured under httpx (uploads, a getResponse recovery, BFL
submits), and the dry-run plans. The provider-documented requests are checked separately, field for
field, in test_workflows_and_layering.py.
"""
from __future__ import annotations

import base64
import dataclasses
import io
import json
import re
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from comfyui_flux2.flux2.backend import GenerationRequest, run
from comfyui_flux2.flux2.images import ref_from_array
from comfyui_flux2.flux2.models import MODELS
from comfyui_flux2.flux2.remote.bfl import BflBackend
from comfyui_flux2.flux2.remote.bfl_request import BflRequest
from comfyui_flux2.flux2.remote.options import RemoteOptions
from comfyui_flux2.flux2.remote.runware import RunwareBackend
from comfyui_flux2.flux2.remote.runware_tasks import ImageInference
from comfyui_flux2.flux2.net.transport import Deadlines
from comfyui_flux2.flux2.run_context import RunContext

GOLDEN = json.loads((Path(__file__).parent / "data" / "request_bodies_golden.json").read_text())["bodies"]
UUID = re.compile(rb"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
FAST = Deadlines(retries=1, backoff_s=0.01, backoff_cap_s=0.02, total_s=10)
OPTIONS = {
    "default": RemoteOptions(),
    "jpeg-tuned": RemoteOptions(prompt_upsampling=True, safety_tolerance=5, output_format="JPEG", output_quality=80,
                                steps=30, guidance=4.0),
    "webp-strict": RemoteOptions(safety_tolerance=0, output_format="WEBP", output_quality=20, steps=1, guidance=1.5),
}
REFS = {"none": [], "one": ["https://example.com/a.png"],
        "three": ["https://example.com/a.png", "3f5c0e7e-7a1b-4b0e-9c1e-2f3a4b5c6d7e", "aGVsbG8="]}


def wire(body) -> str:
    """The bytes httpx sends for `json=body` (httpx 0.28: compact, UTF-8, no NaN)."""
    return json.dumps(body.to_json(), ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def built_bodies() -> dict[str, str]:
    out = {}
    request = GenerationRequest('a prompt with ünïcode "quotes"', 1536, 1024, 4294967290, batch=2)
    for name, spec in MODELS.items():
        for kind, cls in (("runware", RunwareBackend), ("bfl", BflBackend)):
            if kind not in spec.providers or spec.generation != 2:
                continue      # FLUX 3 bodies are new, checked field for field in test_flux3.py
            for oname, opts in OPTIONS.items():
                if kind == "bfl" and opts.output_format == "WEBP":
                    continue
                backend = cls(name, opts)
                for rname, refs in REFS.items():
                    for index in (0, 1):
                        if kind == "runware":
                            body = backend.inference_task(request, index, refs,
                                                          task_uuid="00000000-0000-4000-8000-000000000001")
                        else:
                            body = backend.request_body(request, index, refs)
                        out[f"{kind} {name} {oname} refs={rname} image={index}"] = wire(body)
    return out


def _png_b64(w, h) -> str:
    buf = io.BytesIO()
    Image.new("RGB", (w, h), (10, 20, 30)).save(buf, "PNG")
    return base64.b64encode(buf.getvalue()).decode()


def captured_runs(monkeypatch) -> dict[str, list[str]]:
    """Whole runs against providers answering as documented, every request body captured as sent."""
    monkeypatch.setenv("RUNWARE_API_KEY", "rw-key")
    monkeypatch.setenv("BFL_API_KEY", "bfl-key")
    sent = []
    lose_first = [True]

    def runware(request):
        sent.append(b"POST " + UUID.sub(b"<uuid>", request.content))
        data = []
        for t in json.loads(request.content):
            if t["taskType"] == "imageUpload":
                data.append({"taskType": "imageUpload", "taskUUID": t["taskUUID"],
                             "imageUUID": "11111111-2222-4333-8444-555555555555"})
            elif t["taskType"] == "imageInference" and t["seed"] == 7 and lose_first[0]:
                lose_first[0] = False
                raise httpx.ReadTimeout("lost", request=request)      # recovered with getResponse
            else:
                data.append({"taskType": "imageInference", "taskUUID": t["taskUUID"], "status": "success",
                             "imageBase64Data": _png_b64(64, 64), "seed": t.get("seed", 7), "cost": 0.03})
        return httpx.Response(200, json={"data": data})

    def bfl(request):
        if request.method == "POST":
            sent.append(b"POST " + request.url.path.encode() + b" " + request.content)
            seed = json.loads(request.content)["seed"]
            return httpx.Response(200, json={"id": f"task-{seed}-abcdef", "cost": 3,
                                             "polling_url": f"https://api.bfl.ai/v1/get_result?id=task-{seed}-abcdef"})
        if request.url.path == "/v1/get_result":
            return httpx.Response(200, json={"id": "x", "status": "Ready",
                                             "result": {"sample": "https://delivery.bfl.ai/s.png", "seed": 5}})
        return httpx.Response(200, content=base64.b64decode(_png_b64(64, 64)), headers={"content-type": "image/png"})

    pixels = ref_from_array(np.full((40, 24, 3), 9, np.uint8))
    runs = {}
    for name, backend, request in (
        ("runware pro refs", RunwareBackend("FLUX.2 [pro]", RemoteOptions(), FAST, httpx.MockTransport(runware)),
         GenerationRequest("p", 256, 256, 5, references=(pixels,), batch=2)),
        ("runware flex lost answer", RunwareBackend("FLUX.2 [flex]", RemoteOptions(steps=20, guidance=3.0), FAST,
                                                    httpx.MockTransport(runware)),
         GenerationRequest("p", 256, 256, 7)),
        ("bfl flex refs", BflBackend("FLUX.2 [flex]", RemoteOptions(steps=20, guidance=3.0), FAST,
                                     httpx.MockTransport(bfl)),
         GenerationRequest("p", 256, 256, 5, references=(pixels,), batch=2)),
    ):
        sent.clear()
        run(backend, request, RunContext())
        runs[name] = sorted(s.decode() for s in sent)
    return runs


def test_every_built_body_is_byte_for_byte_what_it_was():
    built = built_bodies()
    recorded = {k: v for k, v in GOLDEN.items() if k != "on the wire" and not k.endswith(" plan")}
    assert len(built) == len(recorded) == 204
    for case, text in recorded.items():
        assert built[case] == text, case


def test_whole_runs_send_the_same_bytes(monkeypatch):
    assert captured_runs(monkeypatch) == GOLDEN["on the wire"]


def test_dry_run_plans_show_the_same_bodies():
    pixels = ref_from_array(np.full((40, 24, 3), 9, np.uint8))
    request = GenerationRequest("p", 512, 768, 3, references=(pixels,), batch=2)
    for kind, cls in (("runware", RunwareBackend), ("bfl", BflBackend)):
        (call,) = cls("FLUX.2 [flex]", OPTIONS["jpeg-tuned"]).plan(request)
        assert json.dumps(call.payload, ensure_ascii=False) == GOLDEN[f"{kind} plan"]


def test_bodies_are_typed_frozen_and_never_send_null():
    request = GenerationRequest("p", 1024, 1024, 1)
    task = RunwareBackend("FLUX.2 [dev]").inference_task(request, 0, [])
    body = BflBackend("FLUX.2 [pro]").request_body(request, 0, [])
    assert isinstance(task, ImageInference) and isinstance(body, BflRequest)
    for typed in (task, body):
        with pytest.raises(dataclasses.FrozenInstanceError):
            typed.seed = 2
    # unused optional fields are left out, not sent as null (dev: no providerSettings, no inputs)
    assert "providerSettings" not in task.to_json() and "inputs" not in task.to_json()
    assert None not in task.to_json().values() and None not in body.to_json().values()
    assert "prompt_upsampling" not in body.to_json() and "input_image" not in body.to_json()
