"""Input that used to pass silently or fail misleadingly is refused in one line before any call (issue 21.7):
references beyond Flux2Edit's sockets, duplicate node ids, provider URLs with user info or broken brackets,
numbers Python reads differently from how they were written (`-0`, `1_0`)."""
from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from comfyui_flux2.cli import main
from comfyui_flux2.flux2.models import MAX_REFS_ANY
from test_batch import batch, small_workflow, write_csv
from test_budget import backend, t2i
from test_malformed_workflows import UI_CHAIN, dry_run, one_line

ROOT = Path(__file__).resolve().parents[1]


def edit_with_references(folder: Path, count: int, model: str = "FLUX.2 [pro]") -> dict:
    Image.fromarray(np.full((64, 64, 3), 90, np.uint8)).save(folder / "ref.png")
    data = {"1": backend(model), "9": {"class_type": "LoadImage", "inputs": {"image": "ref.png"}},
            "2": {"class_type": "Flux2Edit", "inputs": {"backend": ["1", 0], "prompt": "blend", "width": 512,
                                                         "height": 512, "seed": 1, "batch_size": 1}},
            "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "e"}}}
    for i in range(1, count + 1):
        data["2"]["inputs"][f"reference_{i}"] = ["9", 0]
    return data


@pytest.mark.parametrize("dry", [True, False])
def test_references_beyond_the_sockets_are_refused_naming_the_limit(runware, tmp_path, capsys, dry):
    """Before: a reference linked past Flux2Edit's last socket was dropped without a word and the others were
    sent (and paid for). The sockets stop at the most any model takes (MAX_REFS_ANY)."""
    extra = MAX_REFS_ANY + 1
    data = edit_with_references(tmp_path, extra)
    path = tmp_path / "w.json"
    path.write_text(json.dumps(data))
    code = main(["run", str(path), "--output-dir", str(tmp_path / "o"), *(["--dry-run"] if dry else [])])
    assert code == 1
    err = one_line(capsys)
    assert (f"node 2 (Flux2Edit): {extra} references linked (reference_{extra} beyond its sockets); it takes at "
            f"most {MAX_REFS_ANY}") in err
    assert runware.requests == []


def test_more_references_than_the_model_takes_are_refused_naming_its_limit(runware, tmp_path, capsys):
    assert dry_run(tmp_path, edit_with_references(tmp_path, 9))[0] == 1
    assert "9 reference images; FLUX.2 [pro] on Runware (bfl:5@1) takes at most 8" in one_line(capsys)
    assert runware.requests == []


def test_eight_references_still_run(runware, tmp_path, capsys):
    assert dry_run(tmp_path, edit_with_references(tmp_path, 8))[0] == 0


def test_a_link_into_an_input_the_node_lacks_is_refused(tmp_path, capsys):
    data = t2i("FLUX.2 [pro]", batch=1)
    data["2"]["inputs"]["negative_prompt"] = ["1", 0]
    assert dry_run(tmp_path, data)[0] == 1
    assert "input 'negative_prompt' is linked, but the node has no such input" in one_line(capsys)


@pytest.mark.parametrize("same", [lambda i: i, str])       # 5 twice, and 5 beside "5"
def test_duplicate_node_ids_in_a_ui_workflow_are_refused(tmp_path, capsys, same):
    """Before: the second node silently replaced the first."""
    data = copy.deepcopy(UI_CHAIN)
    twin = copy.deepcopy(data["nodes"][0])
    twin["id"] = same(data["nodes"][1]["id"])
    data["nodes"].append(twin)
    assert dry_run(tmp_path, data)[0] == 1
    assert f"two nodes with id {data['nodes'][1]['id']}; node ids must be unique" in one_line(capsys)


def _twice(text: str, old: str, extra: str) -> str:
    """`text` (JSON) with `extra` written right after `old`: a key given twice in one object."""
    assert text.count(old) == 1
    return text.replace(old, old + extra)


@pytest.mark.parametrize("case", ["node id", "input name"])
def test_a_key_given_twice_in_an_api_workflow_is_refused(runware, tmp_path, capsys, case):
    """Before: JSON's last value silently won - a second node "2" replaced the first, a second "prompt"
    replaced the first prompt - and the run went on (and was paid for) with half the file."""
    text = json.dumps(t2i("FLUX.2 [pro]", batch=1))
    if case == "node id":
        other = {"class_type": "Flux2TextToImage", "inputs": {"backend": ["1", 0], "prompt": "another", "width": 512,
                                                               "height": 512, "seed": 9, "batch_size": 1}}
        text = text[:-1] + ', "2": ' + json.dumps(other) + "}"
        words = "'2' twice"
    else:
        text = _twice(text, '"prompt": "a teapot"', ', "prompt": "a cat"')
        words = "'prompt' twice"
    path = tmp_path / "w.json"
    path.write_text(text)
    assert main(["run", str(path), "--output-dir", str(tmp_path / "o")]) == 1
    err = one_line(capsys)
    assert "w.json" in err and words in err and "must be unique" in err
    assert runware.requests == []


@pytest.mark.parametrize("env, workflow", [("RUNWARE_API_URL", "flux2_text_to_image.json"),
                                           ("BFL_API_URL", None)])
def test_a_provider_url_with_user_info_is_refused_without_repeating_it(runware, bfl, tmp_path, capsys, monkeypatch,
                                                                       env, workflow):
    """Before: sent, and answered with a misleading 401 (httpx turns user:password@ into Basic auth)."""
    origin = (runware if env.startswith("RUNWARE") else bfl).api_url.replace("http://", "")
    monkeypatch.setenv(env, f"http://me:hunter2pass@{origin}")
    if workflow:
        path = ROOT / "workflows" / "api" / workflow
    else:
        data = t2i("FLUX.2 [pro]", batch=1)
        data["1"]["inputs"]["provider"] = "bfl"
        path = tmp_path / "w.json"
        path.write_text(json.dumps(data))
    assert main(["run", str(path), "--output-dir", str(tmp_path / "o")]) == 1
    err = one_line(capsys)
    key_env = env.replace("_URL", "_KEY")
    assert f"{env} carries user info" in err and f"the credentials go in {key_env}" in err
    assert "hunter2pass" not in err and "me:" not in err
    assert runware.requests == [] and bfl.requests == []


@pytest.mark.parametrize("url", ["http://[::1/v1", "https://[fe80::1%zz/v1", "http://[::1]x/v1"])
def test_a_provider_url_with_broken_brackets_is_one_line(runware, tmp_path, capsys, monkeypatch, url):
    """Before: `http://[::1/v1` ended in a ValueError traceback."""
    monkeypatch.setenv("RUNWARE_API_URL", url)
    assert main(["run", str(ROOT / "workflows" / "api" / "flux2_text_to_image.json"),
                 "--output-dir", str(tmp_path / "o")]) == 1
    assert "RUNWARE_API_URL" in one_line(capsys)
    assert runware.requests == []


@pytest.mark.parametrize("value", ["-0", "1_0", "+1", "1e1", "0x10", " 1 0 ", "١٠"])
def test_a_budget_written_unlike_a_plain_number_is_refused(tmp_path, capsys, monkeypatch, value):
    """Before: -0 was shown as "$-0" and 1_0 taken as $10."""
    assert dry_run(tmp_path, t2i("FLUX.2 [pro]", batch=1), f"--budget={value}")[0] == 1
    err = one_line(capsys)
    assert "--budget must be a number of US dollars written plainly" in err and "$-0" not in err
    monkeypatch.setenv("FLUX2_BUDGET_USD", value)
    assert dry_run(tmp_path, t2i("FLUX.2 [pro]", batch=1))[0] == 1
    assert "FLUX2_BUDGET_USD must be a number of US dollars" in one_line(capsys)


@pytest.mark.parametrize("value", ["0", "0.40", "5", ".5", "12."])
def test_plain_budgets_are_taken(runware, tmp_path, capsys, value):
    code = dry_run(tmp_path, t2i("FLUX.2 [pro]", batch=1), f"--budget={value}")[0]
    assert code == (1 if float(value) < 0.03 else 0)


def test_counts_with_digit_separators_are_usage_errors(tmp_path, capsys, runware):
    table = write_csv(tmp_path, "Make.prompt\na fox\n")
    with pytest.raises(SystemExit) as exit_:
        batch(small_workflow(tmp_path), "--table", table, "--output-dir", tmp_path / "o", "--concurrency", "1_0")
    assert exit_.value.code == 2 and "expected a whole number, got '1_0'" in one_line(capsys)


def test_a_table_number_with_digit_separators_is_a_bad_row(tmp_path, capsys, runware):
    wf = json.loads(small_workflow(tmp_path).read_text())
    wf["1"]["inputs"]["model"] = "FLUX.2 [flex]"
    wf["1"]["inputs"]["guidance"] = 4.0
    (tmp_path / "wf.json").write_text(json.dumps(wf))
    table = write_csv(tmp_path, "Backend.guidance\n1_0\n")
    assert batch(tmp_path / "wf.json", "--table", table, "--output-dir", tmp_path / "o", "--dry-run") == 1
    assert "must be a number, got '1_0'" in capsys.readouterr().err
    assert runware.requests == []
