"""Runware's answers parsed into typed results (flux2/remote/runware_replies.py): each field as the loopback
server sends it, malformed shapes refused in one line, fields Runware may add later ignored."""
from __future__ import annotations

import uuid

import httpx
import pytest

from comfyui_flux2.flux2.errors import AuthError, BudgetError, ModerationError, ProviderError
from comfyui_flux2.flux2.net.transport import Garbled
from comfyui_flux2.flux2.remote.runware_replies import (ErrorEntry, ImageResult, TaskDetails, parse_reply,
                                                        stored_outcome)
from comfyui_flux2.flux2.remote.runware_tasks import GetResponse, GetTaskDetails, ImageInference, ImageUpload
from comfyui_flux2.loopback.runware_server import NSFW_WORD


def post(server, tasks, key=None) -> httpx.Response:
    return httpx.post(server.api_url, json=[t.to_json() for t in tasks],
                      headers={"Authorization": f"Bearer {key or server.api_key}"}, timeout=30)


def inference(prompt="a salt cathedral", model="bfl:5@1", width=256, height=256, seed=7, **kw) -> ImageInference:
    return ImageInference(taskUUID=str(uuid.uuid4()), model=model, positivePrompt=prompt, width=width,
                          height=height, seed=seed, outputFormat="PNG", **kw)


def answer(status: int, body) -> httpx.Response:
    return httpx.Response(status, json=body)


def one_line(exc) -> str:
    text = str(exc.value)
    assert "\n" not in text and text.startswith("runware: ")
    return text


# -- the shapes the loopback server sends ---------------------------------------------------------------
@pytest.mark.parametrize("output_type, field", [("URL", "imageURL"), ("base64Data", "imageBase64Data"),
                                                 ("dataURI", "imageDataURI")])
def test_an_inference_result_keeps_every_field_it_was_sent(runware, output_type, field):
    task = inference(outputType=output_type)
    response = post(runware, [task])
    (raw,) = response.json()["data"]
    reply = parse_reply(response, [task], None)
    item = reply.items[task.taskUUID]
    assert isinstance(item, ImageResult) and reply.status == 200 and reply.errors == {}
    assert item.taskUUID == task.taskUUID and item.imageUUID == raw["imageUUID"]
    assert item.images() == [(field, raw[field])] and item.seed == 7 and item.NSFWContent is False
    assert item.cost == pytest.approx(0.03) and item.status == "" and item.tells_outcome()


def test_a_flux3_result_carries_the_providers_own_seed(runware):
    task = inference(model="bfl:flux@3-image", width=1024, height=1024, seed=None)
    response = post(runware, [task])
    item = parse_reply(response, [task], None).items[task.taskUUID]
    assert item.seed == response.json()["data"][0]["seed"] and isinstance(item.seed, int)
    assert item.cost == pytest.approx(0.048)


def test_an_upload_answers_its_image_uuid(runware, png_b64):
    task = ImageUpload(taskUUID=str(uuid.uuid4()), image=png_b64)
    item = parse_reply(post(runware, [task]), [task], None).items[task.taskUUID]
    assert uuid.UUID(item.imageUUID).version == 4 and item.imageURL.endswith(f"{item.imageUUID}.png")


def test_get_task_details_is_read_as_the_outcome_it_stores(runware):
    task = inference()
    sent = parse_reply(post(runware, [task]), [task], None).items[task.taskUUID]
    lookup = GetTaskDetails(taskUUID=task.taskUUID)
    found = parse_reply(post(runware, [lookup]), [lookup], None).items[task.taskUUID]
    assert isinstance(found, TaskDetails) and found.outcome == sent


def test_get_task_details_of_a_refused_task_is_its_error(runware):
    task = inference(prompt=f"a {NSFW_WORD} scene")
    refused = parse_reply(post(runware, [task]), [task], None)
    assert refused.items == {} and refused.errors[task.taskUUID].code == "contentPolicyViolation"
    lookup = GetTaskDetails(taskUUID=task.taskUUID)
    outcome = parse_reply(post(runware, [lookup]), [lookup], None).items[task.taskUUID].outcome
    assert isinstance(outcome, ErrorEntry) and outcome.code == "contentPolicyViolation"
    assert outcome.parameter == "positivePrompt" and outcome.taskUUID == task.taskUUID and outcome.cost is None


def test_a_lookup_of_an_unknown_task_is_an_error_of_that_task_not_a_refusal(runware):
    lookup = GetResponse(taskUUID=str(uuid.uuid4()))
    reply = parse_reply(post(runware, [lookup]), [lookup], None)
    assert reply.status == 400 and reply.items == {}
    assert reply.errors[lookup.taskUUID] == ErrorEntry("invalidParameter", "unknown taskUUID", "taskUUID",
                                                       lookup.taskUUID)


def test_a_wrong_key_is_refused_in_one_line(runware):
    task = inference()
    with pytest.raises(AuthError) as exc:
        parse_reply(post(runware, [task], key="wrong-key"), [task], "wrong-key")
    assert "[invalidApiKey]" in one_line(exc) and "check RUNWARE_API_KEY" in str(exc.value)


# -- shapes Runware may send ------------------------------------------------------------------------------
UUID_A = "1b4a6f3e-2c1d-4e5f-8a9b-0c1d2e3f4a5b"


def test_fields_runware_adds_later_are_ignored():
    body = {"data": [{"taskType": "imageInference", "taskUUID": UUID_A, "imageURL": "https://x/a.png", "seed": 3,
                      "cost": 0.03, "someNewField": {"nested": [1, 2]}, "imageUUID": UUID_A}],
            "meta": {"requestId": "r1"}}
    item = parse_reply(answer(200, body), [GetResponse(taskUUID=UUID_A)], None).items[UUID_A]
    assert item == ImageResult(UUID_A, imageUUID=UUID_A, imageURL="https://x/a.png", seed=3, cost=0.03)


def test_malformed_fields_are_held_as_sent_for_the_checks_that_keep_the_image():
    body = {"data": [{"taskUUID": UUID_A, "imageURL": ["x"], "seed": "abc", "cost": "free", "imageUUID": 5,
                      "status": 0, "NSFWContent": "maybe"}]}
    item = parse_reply(answer(200, body), [GetResponse(taskUUID=UUID_A)], None).items[UUID_A]
    assert (item.imageURL, item.seed, item.cost, item.NSFWContent) == (["x"], "abc", "free", "maybe")
    assert item.imageUUID is None and item.status == "" and item.images() == [("imageURL", ["x"])]


def test_a_bare_acknowledgement_tells_no_outcome_and_a_processing_status_does():
    body = {"data": [{"taskType": "imageInference", "taskUUID": UUID_A}]}
    assert not parse_reply(answer(200, body), [GetResponse(taskUUID=UUID_A)], None).items[UUID_A].tells_outcome()
    body["data"][0]["status"] = "processing"
    assert parse_reply(answer(200, body), [GetResponse(taskUUID=UUID_A)], None).items[UUID_A].status == "processing"


def test_an_upload_answered_as_a_bare_object_is_read():
    body = {"data": {"taskType": "imageUpload", "taskUUID": UUID_A, "imageUUID": UUID_A}}
    assert parse_reply(answer(200, body), [], None).items[UUID_A].imageUUID == UUID_A


def test_items_without_a_task_uuid_are_skipped_and_the_first_of_a_task_is_kept():
    body = {"data": ["x", {"seed": 1}, {"taskUUID": 7}, {"taskUUID": UUID_A, "seed": 2},
                     {"taskUUID": UUID_A, "seed": 3}]}
    items = parse_reply(answer(200, body), [GetResponse(taskUUID=UUID_A)], None).items
    assert list(items) == [UUID_A] and items[UUID_A].seed == 2


def test_an_error_item_inside_data_is_its_tasks_error_with_its_charge():
    body = {"data": [{"taskUUID": UUID_A, "status": "error", "cost": 0.01,
                      "error": {"code": "providerError", "message": "worker failed", "extra": 1}}]}
    reply = parse_reply(answer(200, body), [GetResponse(taskUUID=UUID_A)], None)
    assert reply.items == {}
    assert reply.errors[UUID_A] == ErrorEntry("providerError", "worker failed", "", UUID_A, 0.01)


def test_a_request_level_error_beside_results_keeps_the_paid_results():
    body = {"data": [{"taskUUID": UUID_A, "imageURL": "https://x/a.png"}],
            "errors": [{"code": "timeoutProvider", "message": "slow"}]}
    reply = parse_reply(answer(200, body), [GetResponse(taskUUID=UUID_A)], None)
    assert UUID_A in reply.items and reply.errors == {}


@pytest.mark.parametrize("status, body, kind, words", [
    (402, {"errors": [{"code": "insufficientCredits", "message": "Top up", "taskUUID": UUID_A}]}, BudgetError,
     "runware: Top up [insufficientCredits]"),
    (400, {"errors": [{"code": "invalidWidth", "message": "bad width", "parameter": "width"}]}, ProviderError,
     "runware: bad width (parameter width) [invalidWidth]"),
    (400, {"error": {"code": "contentPolicyViolation", "message": "flagged"}}, ModerationError,
     "runware: flagged [contentPolicyViolation]"),
    (400, {"errors": [{"code": "x", "message": "m", "taskUUID": ["not", "hashable"]}]}, ProviderError,
     "runware: m [x]"),
    (503, {}, ProviderError, "runware: HTTP 503"),
    (500, ["not", "an", "object"], ProviderError, "runware: HTTP 500 with an unexpected body"),
    (429, {"errors": [{"code": 429}]}, ProviderError, "runware: 429 [429]"),
])
def test_request_level_refusals_raise_in_one_line(status, body, kind, words):
    with pytest.raises(kind) as exc:
        parse_reply(answer(status, body), [GetResponse(taskUUID=UUID_A)], None)
    assert one_line(exc) == words


def test_a_200_that_is_not_an_object_is_a_lost_answer():
    with pytest.raises(Garbled) as exc:
        parse_reply(answer(200, [1, 2]), [], None)
    assert one_line(exc) == "runware: HTTP 200 with an answer that is not a JSON object"
    with pytest.raises(Garbled):
        parse_reply(httpx.Response(200, content=b"<html>502</html>"), [], None)


def test_the_key_is_never_echoed_in_a_refusal():
    body = {"errors": [{"code": "invalidApiKey", "message": "key sk-secret-123 is invalid"}]}
    with pytest.raises(AuthError) as exc:
        parse_reply(answer(401, body), [], "sk-secret-123")
    assert "sk-secret-123" not in str(exc.value)


# -- getTaskDetails' stored answer ------------------------------------------------------------------------
def test_stored_outcome_reads_a_list_of_envelopes_and_skips_other_tasks():
    other = str(uuid.uuid4())
    details = {"taskUUID": UUID_A, "response": [
        {"data": [{"taskUUID": other, "imageURL": "https://x/b.png"}]},
        {"data": [{"taskUUID": UUID_A, "taskType": "imageUpload", "imageUUID": UUID_A},
                  {"taskUUID": UUID_A, "taskType": "imageInference", "imageURL": "https://x/a.png", "seed": 4}]}]}
    assert stored_outcome(details, UUID_A) == ImageResult(UUID_A, imageURL="https://x/a.png", seed=4)


@pytest.mark.parametrize("response, expected", [
    ({"errors": [{"code": "c", "message": "m", "taskUUID": UUID_A, "cost": 0.02}]},
     ErrorEntry("c", "m", "", UUID_A, 0.02)),
    ({"error": {"code": "c", "message": "m"}}, ErrorEntry("c", "m")),
    ({"errors": [{"code": "c", "taskUUID": "another"}]}, None),
    ({"data": [{"taskUUID": UUID_A, "status": "error", "error": {"code": "c", "message": "m"}}]},
     ErrorEntry("c", "m", "", UUID_A)),
    (None, None),
    ("text", None),
])
def test_stored_outcome_of_a_failed_or_unknown_task(response, expected):
    assert stored_outcome({"taskUUID": UUID_A, "response": response}, UUID_A) == expected


@pytest.fixture
def png_b64() -> str:
    import base64
    import io

    import numpy as np
    from PIL import Image
    buf = io.BytesIO()
    Image.fromarray(np.full((64, 64, 3), 90, np.uint8)).save(buf, "PNG")
    return base64.b64encode(buf.getvalue()).decode()


@pytest.mark.parametrize("item_cost", [None, "absent"])
def test_a_failed_task_whose_item_cost_is_null_keeps_the_charge_its_error_reports(item_cost):
    """A stored (getTaskDetails) or direct error item `{"cost": null, "error": {..., "cost": 0.02}}`: the charge
    the error object reports is booked (before the typed replies the stored form booked it; a null must not hide
    it)."""
    item = {"taskUUID": UUID_A, "status": "error", "error": {"code": "c", "message": "m", "cost": 0.02}}
    if item_cost != "absent":
        item["cost"] = item_cost
    assert stored_outcome({"taskUUID": UUID_A, "response": {"data": [item]}}, UUID_A).cost == 0.02
    reply = parse_reply(answer(200, {"data": [item]}), [GetResponse(taskUUID=UUID_A)], None)
    assert reply.errors[UUID_A].cost == 0.02
