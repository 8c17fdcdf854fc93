"""BFL's answers parsed into typed results (flux2/remote/bfl_replies.py): the submit answer and each poll,
every field as the loopback server sends it, malformed shapes refused in one line, fields BFL may add later
ignored."""
from __future__ import annotations

import httpx
import pytest

from comfyui_flux2.flux2.errors import AuthError, BudgetError, ProviderError
from comfyui_flux2.flux2.net.transport import Garbled
from comfyui_flux2.flux2.remote.bfl_replies import (PollAnswer, SubmitAnswer, detail_text, http_error, parse_poll,
                                                    submit_answer, usd_of)

TASK = "4f1c2a9e-8b7d-4c3e-9a1b-2d3e4f5a6b7c"


def submit(server, path="/v1/flux-2-pro", **body) -> httpx.Response:
    return httpx.post(server.api_url + path, json={"prompt": "a salt cathedral", **body},
                      headers={"x-key": server.api_key}, timeout=30)


def polls_until_ready(server, url: str) -> list[dict]:
    """Every poll answer of a task, Ready last."""
    answers = []
    while not answers or answers[-1]["status"] != "Ready":
        answers.append(httpx.get(url, headers={"x-key": server.api_key}, timeout=30).json())
        assert len(answers) < 20
    return answers


# -- the shapes the loopback server sends ---------------------------------------------------------------
def test_a_flux2_submit_answer_keeps_every_field(serve_bfl):
    server = serve_bfl()
    response = submit(server, width=1024, height=1024, seed=3)
    raw = response.json()
    answer = submit_answer(response)
    assert answer == SubmitAnswer(raw["id"], raw["polling_url"], raw["cost"], raw["input_mp"], raw["output_mp"])
    assert answer.cost == 3.0 and usd_of(answer.cost) == pytest.approx(0.03) and answer.output_mp == 1.0


def test_a_flux2_task_polls_pending_then_ready_with_its_sample_and_seed(serve_bfl):
    server = serve_bfl(polls_until_ready=3)
    answer = submit_answer(submit(server, width=512, height=512, seed=11))
    pending, *_, ready = [parse_poll(a) for a in polls_until_ready(server, answer.polling_url)]
    assert pending.status == "Pending" and 0 < pending.progress < 1 and pending.sample is None
    assert ready.status == "Ready" and ready.sample.endswith(f"/results/{answer.id}/sample.jpeg")
    assert (ready.seed, ready.prompt, ready.cost, ready.progress) == (11, "a salt cathedral", None, 1.0)


def test_flux3_brings_its_cost_expanded_prompt_and_seed_with_the_poll(serve_bfl):
    server = serve_bfl(polls_until_ready=3)
    response = submit(server, "/v1/flux-3-image", aspect_ratio="1:1", resolution="1k")
    answer = submit_answer(response)
    assert answer.cost is None and answer.input_mp is None and answer.polling_url == response.json()["polling_url"]
    raw = polls_until_ready(server, answer.polling_url)
    statuses = [parse_poll(a).status for a in raw]
    assert statuses[0] == "Pending" and statuses[-1] == "Ready" and set(statuses) <= {
        "Pending", "Reasoning", "Generating", "Ready"}
    ready = parse_poll(raw[-1])
    assert ready.cost == 4.8 and ready.seed == raw[-1]["result"]["seed"] and isinstance(ready.seed, int)
    assert ready.prompt.startswith("a salt cathedral. ") and ready.prompt != "a salt cathedral"


def test_a_moderated_task_carries_its_reasons(serve_bfl):
    server = serve_bfl(polls_until_ready=1)
    server.faults.push(route="submit", final_status="Request Moderated", details={"message": "flagged: minor"})
    answer = submit_answer(submit(server))
    moderated = parse_poll(httpx.get(answer.polling_url, headers={"x-key": server.api_key}).json())
    assert moderated == PollAnswer("Request Moderated", details="flagged: minor")


def test_an_error_task_carries_its_reasons(serve_bfl):
    server = serve_bfl(polls_until_ready=1)
    server.faults.push(route="submit", final_status="Error")
    answer = submit_answer(submit(server))
    failed = parse_poll(httpx.get(answer.polling_url, headers={"x-key": server.api_key}).json())
    assert failed.status == "Error" and failed.details == "Generation failed on the worker"


def test_a_refused_submit_is_one_line_naming_the_fields(serve_bfl):
    server = serve_bfl()
    response = submit(server, width=100, colour="red")
    exc = http_error(response.status_code, response.json(), server.api_key, "submit")
    assert isinstance(exc, ProviderError) and exc.status == 422 and "\n" not in str(exc)
    assert str(exc) == ("bfl: submit answered HTTP 422: colour: Extra inputs are not permitted; width: Input should "
                        "be a multiple of 16 (BFL refused the request fields)")


# -- shapes BFL may send --------------------------------------------------------------------------------
def test_fields_bfl_adds_later_are_ignored():
    body = {"id": TASK, "polling_url": "https://api.eu2.bfl.ai/v1/get_result?id=x", "cost": 4, "input_mp": 0,
            "output_mp": 1, "region": "eu2", "new": {"a": 1}}
    assert submit_answer(httpx.Response(200, json=body)) == SubmitAnswer(TASK, body["polling_url"], 4, 0, 1)
    poll = {"id": TASK, "status": "Ready", "progress": 1, "preview": "x", "result": {
        "sample": "https://delivery/x.jpeg", "prompt": "p", "seed": 5, "start_time": 1.0, "duration": 2.0}}
    assert parse_poll(poll) == PollAnswer("Ready", "https://delivery/x.jpeg", "p", 5, None, 1.0)


@pytest.mark.parametrize("body, expected", [
    ({"id": TASK, "polling_url": ""}, SubmitAnswer(TASK)),
    ({"id": TASK, "polling_url": 7, "input_mp": "1", "output_mp": True}, SubmitAnswer(TASK)),
    ({"id": TASK, "cost": "lots"}, SubmitAnswer(TASK, cost="lots")),
])
def test_submit_fields_of_the_wrong_type_are_left_out_or_held_for_the_cost_check(body, expected):
    assert submit_answer(httpx.Response(200, json=body)) == expected


@pytest.mark.parametrize("body", [{"polling_url": "https://api.bfl.ai/x"}, {"id": 12345678}, {"id": "short"},
                                  {"id": f"{TASK}/../x"}, [TASK], "text"])
def test_a_submit_answer_without_a_usable_id_is_refused_in_one_line(body):
    with pytest.raises(ProviderError) as exc:
        submit_answer(httpx.Response(200, json=body))
    assert str(exc.value) == ("bfl: the submit answer (HTTP 200) carries no usable task id; the task may have been "
                              "billed - check dashboard.bfl.ai before running again (not resubmitted)")


def test_a_garbled_submit_answer_is_polled_by_the_id_it_names():
    cut = f'{{"id": "{TASK}", "polling_url": "https://api.bfl.ai/v1/get_res'.encode()
    assert submit_answer(httpx.Response(200, content=cut)) == SubmitAnswer(TASK)
    with pytest.raises(Garbled) as exc:
        submit_answer(httpx.Response(200, content=b"<html>502 Bad Gateway</html>"))
    assert "\n" not in str(exc.value) and "names no task id" in str(exc.value)


@pytest.mark.parametrize("body, expected", [
    ({"status": 3, "progress": 0.5}, PollAnswer(None, progress=0.5)),
    ({"status": "Pending", "progress": float("nan")}, PollAnswer("Pending")),
    ({"status": "Pending", "progress": 10 ** 400}, PollAnswer("Pending")),
    ({"status": "Pending", "progress": True}, PollAnswer("Pending")),
    ({"status": "Ready", "result": "https://x/a.png"}, PollAnswer("Ready")),
    ({"status": "Ready", "result": {"sample": ["x"], "prompt": 5, "seed": "abc"}}, PollAnswer("Ready", seed="abc")),
    ({"status": "Ready", "cost": 4.8, "result": {"sample": "u"}}, PollAnswer("Ready", "u", cost=4.8)),
    ({"status": "Ready", "cost": 4.8, "result": {"sample": "u", "cost": 5}}, PollAnswer("Ready", "u", cost=5)),
    ({"status": "Error", "error": "out of memory"}, PollAnswer("Error", details="out of memory")),
    ({"status": "Error", "result": {"message": "worker lost"}}, PollAnswer("Error", details="worker lost")),
    # A `result` taken for its reasons leaves its signed sample URL out of the error text.
    ({"status": "Error", "result": {"sample": "https://delivery.bfl.ai/r/x.jpeg?sig=abc", "stage": "upscale"}},
     PollAnswer("Error", "https://delivery.bfl.ai/r/x.jpeg?sig=abc", details="stage: upscale")),
    ({"status": "Error", "result": {"sample": "https://delivery.bfl.ai/r/x.jpeg?sig=abc"}},
     PollAnswer("Error", "https://delivery.bfl.ai/r/x.jpeg?sig=abc")),
    ({"status": "Content Moderated", "error": "not a reason here"}, PollAnswer("Content Moderated")),
    ({"status": "Content Moderated", "details": [{"loc": ["body", "image"], "msg": "nsfw"}]},
     PollAnswer("Content Moderated", details="image: nsfw")),
])
def test_poll_answers_of_every_shape_are_read_without_raising(body, expected):
    assert parse_poll(body) == expected


@pytest.mark.parametrize("body", [None, "Internal Server Error", [1, 2]])
def test_a_poll_answer_that_is_not_an_object_is_none(body):
    assert parse_poll(body) is None


@pytest.mark.parametrize("status, kind, words", [
    (401, AuthError, "bfl: polling answered HTTP 401: Not authenticated - check BFL_API_KEY"),
    (402, BudgetError, "bfl: polling answered HTTP 402: Not authenticated (insufficient BFL credits; top up at "
                       "dashboard.bfl.ai)"),
    (429, ProviderError, "bfl: polling answered HTTP 429: Not authenticated (over BFL's limit of active tasks; lower "
                         "FLUX2_BFL_CONCURRENCY)"),
])
def test_http_errors_are_one_line(status, kind, words):
    exc = http_error(status, {"detail": "Not authenticated"}, None, "polling")
    assert type(exc) is kind and str(exc) == words


def test_detail_text_cuts_long_lists_and_never_shows_the_key():
    detail = [{"loc": ["body", f"f{i}"], "msg": "bad"} for i in range(10)]
    assert detail_text({"detail": detail}).endswith("f7: bad; and 2 more")
    exc = http_error(400, {"message": "key bfl-secret-9 refused"}, "bfl-secret-9", "submit")
    assert "bfl-secret-9" not in str(exc)


def test_moderation_reasons_under_a_key_of_their_own_are_shown():
    """A moderated poll's `details` as a BFL client reads it ({"Moderation Reasons": [...]}); before, a dict
    without detail/message/error gave an empty reason."""
    answer = parse_poll({"id": "t", "status": "Content Moderated", "result": None,
                         "details": {"Moderation Reasons": ["Derivative Works", "Public Figure"]}})
    assert answer.details == "Moderation Reasons: Derivative Works, Public Figure"
    assert detail_text({}) == ""


@pytest.mark.parametrize("details", [[{"loc": 5, "msg": "x"}], [{"loc": True}]])
def test_a_ready_task_with_details_of_an_odd_shape_keeps_its_paid_image(serve_bfl, details):
    """`details` is only read for a moderated or failed task: a Ready (billed) answer whose details this client
    cannot read still gives its image (parsing them on every poll raised TypeError and lost it)."""
    from comfyui_flux2.flux2.backend import GenerationRequest, run
    from comfyui_flux2.flux2.remote.bfl import BflBackend
    from comfyui_flux2.flux2.run_context import RunContext
    server = serve_bfl(polls_until_ready=1)
    server.faults.push(route="poll", patch_answer={"details": details})
    result = run(BflBackend("FLUX.2 [pro]"), GenerationRequest("x", 256, 256, 1), RunContext())
    assert len(result.images) == 1 and result.cost_usd == pytest.approx(server.billed_usd)
    assert parse_poll({"status": "Pending", "details": details}) == PollAnswer("Pending")


def test_a_moderated_task_with_an_odd_loc_is_still_one_line():
    answer = parse_poll({"status": "Content Moderated", "details": [{"loc": 5, "msg": "nsfw"}]})
    assert answer == PollAnswer("Content Moderated", details="body: nsfw")
