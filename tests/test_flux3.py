"""FLUX 3 Image and FLUX 3.1 Image (issue 23): sizes, rules, prices, layout boxes, masks, and both providers
against the loopback servers that speak FLUX 3's closed schemas."""
from __future__ import annotations

import base64

import numpy as np
import pytest

from comfyui_flux2.flux2 import flux3
from comfyui_flux2.flux2.backend import GenerationRequest, run
from comfyui_flux2.flux2.errors import InputError, ProviderError
from comfyui_flux2.flux2.images import ref_from_array
from comfyui_flux2.flux2.layout import parse_layout
from comfyui_flux2.flux2.models import get_model
from comfyui_flux2.flux2.pricing import estimate
from comfyui_flux2.flux2.remote.bfl import BflBackend
from comfyui_flux2.flux2.remote.factory import make_remote_backend
from comfyui_flux2.flux2.remote.options import RemoteOptions
from comfyui_flux2.flux2.remote.runware import RunwareBackend
from comfyui_flux2.flux2.net.transport import Deadlines
from comfyui_flux2.flux2.rules import delivered_size, remote_rules, validate_request
from comfyui_flux2.flux2.run_context import RunContext
from comfyui_flux2.loopback.bfl_server import BflLoopback

FAST = Deadlines(retries=3, backoff_s=0.01, backoff_cap_s=0.05, total_s=10)
F3, F31 = "FLUX 3 Image", "FLUX 3.1 Image"


def bfl_backend(model=F3, **opts) -> BflBackend:
    return BflBackend(model, RemoteOptions(**opts), deadlines=FAST)


def picture(w=512, h=384, tint=1) -> object:
    ramp = np.linspace(0, 1, w, dtype=np.float32)[None, :, None] * np.linspace(0, 1, h, dtype=np.float32)[:, None, None]
    return ref_from_array((ramp * np.array([40 * tint % 256, 200, 90], np.float32)).astype(np.uint8))


def mask_of(w=512, h=384):
    arr = np.zeros((h, w, 3), np.uint8)
    arr[h // 4: h // 2, w // 4: w // 2] = 255
    return ref_from_array(arr)


def b64(ref) -> str:
    return base64.b64encode(ref.png).decode("ascii")


# -- sizes: W x H -> aspect ratio x resolution tier ----------------------------------------------
@pytest.mark.parametrize("aspect,tier,size", [
    ("16:9", "1k", (1360, 768)), ("4:3", "1k", (1184, 880)), ("16:9", "1.5k", (2048, 1152)),
    ("1:1", "2k", (2048, 2048)), ("16:9", "4k", (5456, 3072)), ("21:9", "2k", (3136, 1344))])
def test_delivered_sizes_match_the_published_samples(aspect, tier, size):
    assert flux3.delivered(aspect, tier) == size


def test_every_delivered_size_maps_to_itself():
    for aspect in flux3.ASPECTS:
        for tier in flux3.TIERS:
            assert flux3.nearest(*flux3.delivered(aspect, tier)) == (aspect, tier)


def test_a_requested_size_becomes_the_delivered_one():
    rules = remote_rules(get_model(F3), "bfl")
    assert delivered_size(rules, 1920, 1080) == (2048, 1152)      # 16:9, 2 MP -> 1.5k
    assert delivered_size(rules, 1024, 1024) == (1024, 1024)
    assert delivered_size(remote_rules(get_model("FLUX.2 [pro]"), "bfl"), 1920, 1088) == (1920, 1088)


# -- prices ---------------------------------------------------------------------------------------
def test_flux3_price_is_per_image_by_tier_and_references_are_free():
    m = get_model(F3)
    assert estimate(m, "bfl", 1360, 768).usd == 0.048
    assert estimate(m, "bfl", 5456, 3072, [(2048, 2048)] * 3, batch=2).usd == pytest.approx(1.214)
    assert estimate(m, "bfl", 768, 768).usd == 0.041
    assert estimate(m, "runware", 1024, 1024).usd is None         # Runware publishes no price of its own


def test_flux31_estimate_is_marked_approximate():
    est = estimate(get_model(F31), "bfl", 1024, 1024, mode="fast")
    assert est.usd == 0.015 and est.approximate
    assert estimate(get_model(F31), "bfl", 4096, 4096).usd == 0.28


def test_flex_on_bfl_is_priced_as_bfl_publishes_now():
    assert estimate(get_model("FLUX.2 [flex]"), "bfl", 1024, 1024).usd == 0.05
    assert estimate(get_model("FLUX.2 [flex]"), "bfl", 1536, 1024, [(1024, 1024)]).usd == 0.15


# -- rules: seeds, references, masks, layouts ------------------------------------------------------
def test_reference_limits():
    rules = remote_rules(get_model(F3), "bfl")
    validate_request(GenerationRequest("x", 1024, 1024, 0, references=(picture(),) * 10), rules)
    with pytest.raises(InputError, match="at most 10 reference"):
        validate_request(GenerationRequest("x", 1024, 1024, 0, references=(picture(),) * 11), rules)
    with pytest.raises(InputError, match="reference 1 is 200x300.*at least 256x256"):
        validate_request(GenerationRequest("x", 1024, 1024, 0, references=(picture(200, 300),)), rules)


def test_mask_is_refused_in_one_line_where_not_taken():
    req = GenerationRequest("x", 1024, 768, 0, references=(picture(),), mask=mask_of())
    from comfyui_flux2.flux2.rules import comfy_rules, local_rules
    for rules in (remote_rules(get_model(F3), "bfl"), remote_rules(get_model("FLUX.2 [pro]"), "runware"),
                  local_rules("FLUX.2 [klein] 4B", 4), comfy_rules("FLUX.2 [dev]")):
        with pytest.raises(InputError, match="takes no mask") as exc:
            validate_request(req, rules)
        assert "\n" not in str(exc.value)
    validate_request(req, remote_rules(get_model(F31), "bfl"))


def test_mask_needs_reference_1s_aspect_and_leaves_room_for_it():
    rules = remote_rules(get_model(F31), "bfl")
    with pytest.raises(InputError, match="aspect ratio of reference 1"):
        validate_request(GenerationRequest("x", 1024, 768, 0, references=(picture(),), mask=mask_of(512, 512)), rules)
    with pytest.raises(InputError, match="at most 9 reference images with a mask"):
        validate_request(GenerationRequest("x", 1024, 768, 0, references=(picture(),) * 10, mask=mask_of()), rules)


LAYOUT = "sun | 0.05 0.70 0.30 0.95 | a pale yellow sun\nboat | 0.6 0.1 0.9 0.5 | a red sailing boat"


def test_layout_rows_parse_and_convert():
    layout = parse_layout(LAYOUT)
    assert layout.field()[0] == {"id": "sun", "bbox": [0.05, 0.7, 0.3, 0.95], "desc": "a pale yellow sun"}
    assert layout.prompt_suffix().startswith('[{"id": "sun", "bbox": [50, 700, 300, 950]')
    moved = parse_layout("cup | from ref_image_0 0.5 0.1 0.8 0.3 -> 0.5 0.6 0.8 0.8 | the red cup")
    assert moved.field() == [{"id": "cup", "from": "ref_image_0", "src_bbox": [0.5, 0.1, 0.8, 0.3],
                              "tgt_bbox": [0.5, 0.6, 0.8, 0.8], "desc": "the red cup"}]
    for bad, why in (("a | 0.5 0.5 0.2 0.9 | x", "top < bottom"), ("a | 0 0 1 | x", "four numbers"),
                     ("a | from target 0 0 .5 .5 -> 0 0 1 1 | x", "takes no source box"), ("", "no boxes")):
        with pytest.raises(InputError, match=why):
            parse_layout(bad)


def test_layout_is_refused_by_flux2_models():
    req = GenerationRequest("x", 1024, 1024, 0, layout=parse_layout(LAYOUT))
    with pytest.raises(InputError, match="takes no layout boxes"):
        validate_request(req, remote_rules(get_model("FLUX.2 [max]"), "bfl"))


def test_options_belong_to_their_models():
    with pytest.raises(InputError, match="takes no grounding"):
        make_remote_backend("bfl", "FLUX.2 [pro]", RemoteOptions(grounding="on"))
    with pytest.raises(InputError, match="takes no mode"):
        make_remote_backend("bfl", F3, RemoteOptions(mode="fast"))
    with pytest.raises(InputError, match="grounding off or on"):
        make_remote_backend("bfl", F3, RemoteOptions(grounding="force"))
    with pytest.raises(InputError, match="safety_tolerance 0..4"):
        make_remote_backend("bfl", F3, RemoteOptions(safety_tolerance=5))
    with pytest.raises(InputError, match="not offered by runware"):
        make_remote_backend("runware", F31, RemoteOptions())


# -- BFL, against the loopback server ---------------------------------------------------------------
def test_flux3_text_to_image_body_and_result(bfl, ctx):
    result = run(bfl_backend(grounding="off"), GenerationRequest("a lighthouse", 1920, 1080, 7), ctx)
    (submit,) = [r for r in bfl.requests if r["route"] == "submit"]
    assert submit["path"] == "/v1/flux-3-image"
    assert submit["body"] == {"prompt": "a lighthouse", "aspect_ratio": "16:9", "resolution": "1.5k",
                              "grounding": False, "safety_tolerance": 2}          # no seed, no width/height
    assert result.images[0].shape == (1152, 2048, 3)
    (task,) = bfl.tasks()
    answer = task.answer
    assert result.seeds == [answer["result"]["seed"]]                             # the provider's seed
    assert result.info["expanded_prompts"] == [answer["result"]["prompt"]] != ["a lighthouse"]
    assert result.cost_usd == pytest.approx(0.07)                                 # billed with the poll


def test_flux3_statuses_pass_through_reasoning_and_generating(serve_bfl, ctx):
    import httpx
    server = serve_bfl(polls_until_ready=4)
    key = {"x-key": "bfl-test-key-8d41e7c2"}
    answer = httpx.post(f"{server.api_url}/v1/flux-3-image", headers=key, json={"prompt": "a"}).json()
    assert set(answer) == {"id", "polling_url"}                    # the cost comes with the poll
    polls = [httpx.get(answer["polling_url"], headers=key).json() for _ in range(4)]
    assert [p["status"] for p in polls] == ["Pending", "Reasoning", "Generating", "Ready"]
    assert set(polls[-1]["result"]) == {"sample", "prompt", "seed", "start_time", "end_time", "duration", "cost"}
    # and the client waits through them (unknown statuses are "not yet")
    result = run(bfl_backend(), GenerationRequest("b", 1024, 1024, 0), ctx)
    assert server.tasks()[-1].polls == 4 and result.images[0].shape == (1024, 1024, 3)


def test_flux3_edit_sends_images_and_the_layout_in_the_prompt(bfl, ctx):
    a, b = picture(), picture(tint=3)
    run(bfl_backend(), GenerationRequest("put <sun_1> over image 1", 1184, 880, 0, references=(a, b),
                                          layout=parse_layout(LAYOUT)), ctx)
    (body,) = bfl.submits("/v1/flux-3-image")
    assert body["images"] == [b64(a), b64(b)]
    assert body["prompt"].startswith("put <sun_1> over image 1 [{")
    assert '"bbox": [600, 100, 900, 500]' in body["prompt"]


def test_flux31_masked_edit_body(bfl, ctx):
    a, m = picture(), mask_of()
    result = run(bfl_backend(F31, mode="fast", grounding="auto"),
                 GenerationRequest("make the window blue", 1024, 768, 0, references=(a,), mask=m,
                                   layout=parse_layout(LAYOUT)), ctx)
    (body,) = bfl.submits("/v1/flux-3.1-image")
    assert body == {"prompt": "make the window blue", "images": [b64(a)], "mask": b64(m), "width": 1024,
                    "height": 768, "bounding_boxes": parse_layout(LAYOUT).field(), "grounding": "auto",
                    "mode": "fast"}
    assert result.images[0].shape == (768, 1024, 3)


def test_the_loopback_refuses_unknown_fields_like_bfl(bfl):
    import httpx
    r = httpx.post(f"{bfl.api_url}/v1/flux-3-image", headers={"x-key": "bfl-test-key-8d41e7c2"},
                   json={"prompt": "x", "seed": 3, "width": 1024})
    assert r.status_code == 422
    assert {d["loc"][-1] for d in r.json()["detail"]} == {"seed", "width"}


def test_dry_run_shows_the_delivered_size_and_no_seed(bfl):
    ctx = RunContext(dry_run=True)
    result = run(bfl_backend(), GenerationRequest("x", 1400, 1000, 5), ctx)
    (call, est), = ctx.planned
    assert "7:5 x 1k -> delivers 1216x864" in call.summary and "no seed" in call.summary
    assert call.payload["requests"][0] == {"prompt": "x", "aspect_ratio": "7:5", "resolution": "1k",
                                           "safety_tolerance": 2}
    assert est.usd == 0.048 and not bfl.requests


def test_retired_endpoint_names_the_successor_without_retrying(serve_bfl, ctx):
    server = serve_bfl(retired=("/v1/flux-2-pro",))
    with pytest.raises(ProviderError) as exc:
        run(BflBackend("FLUX.2 [pro]", deadlines=FAST), GenerationRequest("x", 1024, 1024, 0), ctx)
    assert "its successor is FLUX 3 Image" in str(exc.value) and "\n" not in str(exc.value)
    assert len(server.submits()) == 1


# -- Runware ----------------------------------------------------------------------------------------
def test_runware_flux3_sends_the_delivered_size_and_no_seed(runware, ctx):
    backend = RunwareBackend(F3, RemoteOptions(safety_tolerance=3), deadlines=FAST)
    result = run(backend, GenerationRequest("a", 1920, 1080, 11, layout=parse_layout(LAYOUT)), ctx)
    (task,) = runware.tasks("imageInference")
    assert task["model"] == "bfl:flux@3-image" and (task["width"], task["height"]) == (2048, 1152)
    assert "seed" not in task and task["providerSettings"] == {"bfl": {"safetyTolerance": 3}}
    assert task["positivePrompt"].startswith('a [{"id": "sun"')
    assert result.images[0].shape == (1152, 2048, 3) and result.seeds[0] != 11
    assert result.cost_usd == pytest.approx(0.07)


def test_runware_unknown_model_names_the_successor(monkeypatch, ctx):
    from comfyui_flux2.loopback.runware_server import RunwareLoopback
    with RunwareLoopback(api_key="k", retired=("bfl:5@1",)) as server:
        monkeypatch.setenv("RUNWARE_API_URL", server.api_url)
        monkeypatch.setenv("RUNWARE_API_KEY", "k")
        with pytest.raises(ProviderError, match="its successor is FLUX 3 Image"):
            run(RunwareBackend("FLUX.2 [pro]", deadlines=FAST), GenerationRequest("x", 1024, 1024, 0, batch=2), ctx)
        assert len(server.tasks("imageInference")) <= 2


# -- nodes, workflows, the demo ----------------------------------------------------------------------
def test_old_ui_workflows_load_with_the_new_optional_widgets_at_their_defaults():
    import json
    from pathlib import Path

    from comfyui_flux2.nodes import NODE_CLASS_MAPPINGS
    from comfyui_flux2.nodes.backend_nodes import Flux2RemoteBackend
    from comfyui_flux2.runner.core_nodes import headless_registry
    from comfyui_flux2.runner.graph import from_ui

    root = Path(__file__).resolve().parents[1] / "workflows"
    saved = json.loads((root / "flux2_chain_edit.json").read_text())        # written before grounding/mode
    (backend_node,) = [n for n in saved["nodes"] if n["type"] == "Flux2RemoteBackend"]
    assert len(backend_node["widgets_values"]) == 9
    nodes = from_ui(saved, headless_registry(NODE_CLASS_MAPPINGS))
    inputs = nodes[str(backend_node["id"])].inputs
    assert "grounding" not in inputs and inputs["on_moderation"] == "error"
    (b,) = Flux2RemoteBackend().build(**inputs)
    assert (b.options.grounding, b.options.mode) == ("default", "default")
    new = json.loads((root / "flux3_1_masked_edit.json").read_text())
    (backend_node,) = [n for n in new["nodes"] if n["type"] == "Flux2RemoteBackend"]
    assert backend_node["widgets_values"][-2:] == ["default", "fast"]


def test_flux2size_with_a_flux3_backend_outputs_the_delivered_size():
    from comfyui_flux2.nodes.util_nodes import Flux2Size
    out = Flux2Size().size("16:9", 2.0, 0, 0, backend=make_remote_backend("bfl", F3, RemoteOptions()))
    assert out["result"] == (2048, 1152) and "what the model delivers for 1936x1088" in out["ui"]["text"][0]


def test_edit_node_refuses_a_mask_on_a_model_without_one(bfl):
    import torch
    from comfyui_flux2.nodes.generate_nodes import Flux2Edit
    image = torch.rand(1, 384, 512, 3)
    with pytest.raises(InputError, match="takes no mask"):
        Flux2Edit().edit(make_remote_backend("bfl", "FLUX.2 [pro]", RemoteOptions()), "x", image, 0, 0, 0,
                         mask=torch.ones(1, 384, 512))
    assert not bfl.requests


def test_edit_node_sends_the_mask_to_flux31(bfl):
    import torch
    from comfyui_flux2.nodes.generate_nodes import Flux2Edit
    image, mask = torch.rand(1, 384, 512, 3), torch.zeros(1, 384, 512)
    mask[:, 100:200, 100:300] = 1.0
    out = Flux2Edit().edit(make_remote_backend("bfl", F31, RemoteOptions()), "x", image, 0, 0, 3, mask=mask)
    (body,) = bfl.submits("/v1/flux-3.1-image")
    from PIL import Image
    import io
    sent = np.asarray(Image.open(io.BytesIO(base64.b64decode(body["mask"]))).convert("L"))
    assert sent.shape == (384, 512) and sent[150, 200] == 255 and sent[10, 10] == 0
    assert out["result"][1] == bfl.tasks()[0].answer["result"]["seed"]                # the provider's seed
    assert out["ui"]["flux2"][0]["expanded_prompts"][0].startswith("x")


def test_layout_node_output_plugs_into_text_to_image(bfl):
    from comfyui_flux2.nodes.generate_nodes import Flux2TextToImage
    from comfyui_flux2.nodes.layout_node import Flux2Layout
    out = Flux2Layout().layout(LAYOUT)
    assert out["ui"]["flux2_layout"][0] == {"id": "sun", "box": [0.05, 0.7, 0.3, 0.95], "moved": False}
    (layout,) = out["result"]
    Flux2TextToImage().generate(make_remote_backend("bfl", F31, RemoteOptions()), "x", 1024, 1024, 0, layout=layout)
    assert bfl.submits()[0]["bounding_boxes"] == layout.field()
    with pytest.raises(InputError, match="takes no layout"):
        Flux2TextToImage().generate(make_remote_backend("bfl", "FLUX.2 [pro]", RemoteOptions()), "x", 1024, 1024, 0,
                                    layout=layout)


@pytest.mark.slow   # the demo writes three 2-3 MP PNGs: ~10 s; CI runs it (--run-slow)
def test_demo_runs_the_flux3_workflows_and_keeps_the_expanded_prompt(tmp_path, monkeypatch, capsys):
    from PIL import Image

    from comfyui_flux2.cli.demo import demo_flux3
    monkeypatch.setenv("BFL_API_URL", "http://unused")
    monkeypatch.setenv("BFL_API_KEY", "unused")
    demo_flux3(tmp_path)
    saved = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*.png"))
    assert saved == ["flux3/layout_00001_.png", "flux3/lighthouse_00001_.png", "flux3/masked_edit_00001_.png"]
    with Image.open(tmp_path / "flux3/lighthouse_00001_.png") as img:
        assert img.size == (2048, 1152)
        expanded = img.info["flux3_expanded_prompts"]
    assert "a lighthouse on a basalt cliff" in expanded and "Rendered with" in expanded
    assert "expanded prompt (node 3): a lighthouse on a basalt cliff" in capsys.readouterr().err


def test_the_editor_preview_draws_layout_boxes_and_shows_flux3_delivered_sizes():
    from comfyui_flux2.flux2.preview import preview
    items = preview({"items": [
        {"id": 1, "kind": "layout", "boxes": LAYOUT},
        {"id": 2, "kind": "layout", "boxes": "sun | 0.5 0.5 0.2 0.9 | x"},
        {"id": 3, "kind": "generate", "backend": {"type": "Flux2RemoteBackend", "provider": "bfl", "model": F3},
         "size": {"width": 1920, "height": 1080}, "references": [], "batch": 1}]})["items"]
    assert items[0]["boxes"][1] == {"id": "boat", "box": [0.6, 0.1, 0.9, 0.5], "source_box": None, "moved": False}
    assert "top < bottom" in items[1]["error"]
    assert (items[2]["width"], items[2]["height"], items[2]["cost"]) == (2048, 1152, "$0.07")
    assert items[2]["note"] == "delivers 16:9 x 1.5k = 2048x1152"
    b31 = {"type": "Flux2RemoteBackend", "provider": "bfl", "model": F31, "mode": "fast"}
    b3 = {"type": "Flux2RemoteBackend", "provider": "bfl", "model": F3}
    size, fast = preview({"items": [
        {"id": 1, "kind": "size", "size": {"flux2_size": {"aspect_ratio": "16:9", "megapixels": 2.0, "width": 0,
                                                          "height": 0, "backend": b3}}},
        {"id": 2, "kind": "generate", "backend": b31, "size": {"width": 1024, "height": 1024}, "references": [],
         "batch": 1}]})["items"]
    assert (size["width"], size["height"]) == (2048, 1152)            # what Flux2Size outputs with that backend
    assert fast["usd"] == 0.015


def test_flux3_moderated_is_not_charged_and_error_is_one_line(serve_bfl, ctx):
    from comfyui_flux2.flux2.errors import ModerationError
    server = serve_bfl(credits=100.0)
    with pytest.raises(ModerationError, match=r"moderated \(not charged\).*0 strictest \.\. 4"):
        run(bfl_backend(), GenerationRequest("forbidden-content", 1024, 1024, 0), ctx)
    assert server.credits == 100.0 and server.billed_usd == 0
    server.faults.push(route="submit", final_status="Error")
    with pytest.raises(ProviderError, match="failed \\(status Error\\)"):
        run(bfl_backend(), GenerationRequest("fine", 1024, 1024, 0), RunContext())


def flux31_workflow(folder) -> "Path":
    """FLUX 3.1 Image on BFL, fast mode, text to image with no references at all (API format)."""
    import json
    backend = {"provider": "bfl", "model": F31, "prompt_upsampling": False, "safety_tolerance": 2,
               "output_format": "PNG", "output_quality": 95, "steps": 0, "guidance": 0.0,
               "on_moderation": "error", "grounding": "default", "mode": "fast"}
    prompt = {"1": {"class_type": "Flux2RemoteBackend", "inputs": backend},
              "2": {"class_type": "Flux2TextToImage", "_meta": {"title": "Make"},
                    "inputs": {"backend": ["1", 0], "prompt": "a lighthouse", "width": 1024, "height": 1024,
                               "seed": 0, "batch_size": 1}},
              "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "f31"}}}
    path = folder / "f31.json"
    path.write_text(json.dumps(prompt))
    return path


def test_flux31_estimates_name_the_unpublished_formula_not_url_references(bfl, tmp_path, capsys):
    """No URL reference anywhere: `run` and `batch` say why the estimate is approximate, and it is 3.1's
    unpublished formula (the old text blamed URL references of unknown size)."""
    from comfyui_flux2.cli import main
    wf = flux31_workflow(tmp_path)
    table = tmp_path / "rows.csv"
    table.write_text("Make.prompt\na\nb\n")
    assert main(["run", str(wf), "--dry-run"]) == 0
    run_err = capsys.readouterr().err
    assert main(["batch", str(wf), "--table", str(table), "--output-dir", str(tmp_path / "o"), "--dry-run"]) == 0
    batch_err = capsys.readouterr().err
    for err in (run_err, batch_err):
        line = next(x for x in err.splitlines() if x.startswith("estimated cost:"))
        assert line.endswith("(approximate: FLUX 3.1's price formula is not published "
                             "(linear reading between its published prices))"), line
        assert "URL references" not in err
    assert not bfl.requests


def test_every_reason_an_estimate_is_approximate_is_named_once():
    from comfyui_flux2.flux2.pricing import URL_REFERENCES_ASSUMED, Estimate, approximate_note
    from comfyui_flux2.flux2.run_context import Ledger
    ledger = Ledger()
    ledger.add_estimate("1", estimate(get_model(F31), "bfl", 1024, 1024, mode="fast"))
    ledger.add_estimate("2", estimate(get_model("FLUX.2 [pro]"), "bfl", 1024, 1024, [(1024, 1024)],
                                      assumed_references=1))
    ledger.add_estimate("3", estimate(get_model(F31), "bfl", 2048, 2048))
    ledger.add_estimate("4", estimate(get_model(F3), "bfl", 1024, 1024))
    assert approximate_note(ledger.approximate_reasons) == (
        " (approximate: FLUX 3.1's price formula is not published (linear reading between its published "
        f"prices); {URL_REFERENCES_ASSUMED})")
    assert approximate_note(Ledger().approximate_reasons) == ""
    # Estimates made the old way (no reason given) still say they are approximate
    assert approximate_note([*Ledger(estimates={"1": Estimate(0.1, "x", approximate=True)}).approximate_reasons]) \
        == " (approximate: priced on an assumption)"
