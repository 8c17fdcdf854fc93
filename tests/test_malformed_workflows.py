"""Whatever a workflow file holds, the CLI answers with one line (or runs it), never a traceback."""
from __future__ import annotations

import copy
import json
import signal
from pathlib import Path

import pytest

from comfyui_flux2 import cli
from comfyui_flux2.cli import main

ROOT = Path(__file__).resolve().parents[1]
UI_CHAIN = json.loads((ROOT / "workflows" / "flux2_chain_edit.json").read_text())


def dry_run(tmp_path: Path, data, *extra: str) -> tuple[int, str]:
    path = tmp_path / "w.json"
    if isinstance(data, bytes):
        path.write_bytes(data)
    else:
        path.write_text(data if isinstance(data, str) else json.dumps(data))
    code = main(["run", str(path), "--dry-run", "--output-dir", str(tmp_path / "o"), *extra])
    return code, ""


def one_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err, err
    return err


def test_deeply_nested_json_is_one_line(tmp_path, capsys):
    assert dry_run(tmp_path, "[" * 100_000 + "]" * 100_000)[0] == 1
    assert "nested too deeply" in one_line(capsys)


def test_deeply_nested_input_value_is_one_line(tmp_path, capsys):
    data = {"1": {"class_type": "Flux2Seed", "inputs": {"seed": json.loads("[" * 900 + "]" * 900)}},
            "2": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}}}
    assert dry_run(tmp_path, data)[0] == 1
    one_line(capsys)


def seed_chain(length: int) -> dict:
    """Flux2Seed -> Flux2Seed -> ... -> text-to-image -> PreviewImage: `length` linked nodes."""
    data = {"0": {"class_type": "Flux2Seed", "inputs": {"seed": 5}}}
    for i in range(1, length):
        data[str(i)] = {"class_type": "Flux2Seed", "inputs": {"seed": [str(i - 1), 0]}}
    data["b"] = {"class_type": "Flux2RemoteBackend",
                 "inputs": {"provider": "runware", "model": "FLUX.2 [pro]", "prompt_upsampling": False,
                            "safety_tolerance": 2, "output_format": "PNG", "output_quality": 95, "steps": 0,
                            "guidance": 0.0, "on_moderation": "error"}}
    data["g"] = {"class_type": "Flux2TextToImage",
                 "inputs": {"backend": ["b", 0], "prompt": "x", "width": 512, "height": 512,
                            "seed": [str(length - 1), 0], "batch_size": 1}}
    data["p"] = {"class_type": "PreviewImage", "inputs": {"images": ["g", 0]}}
    return data


def test_a_3000_node_chain_is_planned_without_recursion(tmp_path, capsys):
    assert dry_run(tmp_path, seed_chain(3000))[0] == 0
    err = capsys.readouterr().err
    assert "3003 nodes, 1 generation call(s)" in err and "seed 5" in err


def test_a_3000_reroute_chain_in_ui_format_is_followed(tmp_path, capsys):
    ui = copy.deepcopy(UI_CHAIN)
    # Put 3000 Reroute nodes between the seed node (2) and the first generation node's seed input.
    seed_link = next(link for link in ui["links"] if link[1] == 2 and link[3] == 3)
    next_id, next_link, upstream = 10_000, 20_000, seed_link[0]
    for _ in range(3000):
        ui["nodes"].append({"id": next_id, "type": "Reroute", "mode": 0,
                            "inputs": [{"name": "", "type": "*", "link": upstream}], "outputs": []})
        ui["links"].append([next_link, next_id, 0, next_id + 1, 0, "INT"])
        upstream, next_id, next_link = next_link, next_id + 1, next_link + 1
    target = next(n for n in ui["nodes"] if n["id"] == 3)
    next(s for s in target["inputs"] if s.get("link") == seed_link[0])["link"] = upstream
    assert dry_run(tmp_path, ui)[0] == 0


def mutations():
    """(description, function that breaks a copy of the UI chain workflow)."""
    def node(ui, i=2):
        return ui["nodes"][i]

    def set_(path_fn, value):
        def apply(ui):
            target, key = path_fn(ui)
            target[key] = value
        return apply

    cases = [
        ("inputs []", set_(lambda ui: (node(ui), "inputs"), [])),
        ("inputs {}", set_(lambda ui: (node(ui), "inputs"), {})),
        ("inputs 5", set_(lambda ui: (node(ui), "inputs"), 5)),
        ("inputs [5]", set_(lambda ui: (node(ui), "inputs"), [5])),
        ("input slot without a name", set_(lambda ui: (node(ui)["inputs"][0], "name"), None)),
        ("input slot link a list", set_(lambda ui: (node(ui)["inputs"][0], "link"), [1, 2])),
        ("input slot link unknown", set_(lambda ui: (node(ui)["inputs"][0], "link"), 999)),
        ("link slot 'x'", set_(lambda ui: (ui["links"][0], 2), "x")),
        ("link slot -1", set_(lambda ui: (ui["links"][0], 2), -1)),
        ("link origin null", set_(lambda ui: (ui["links"][0], 1), None)),
        ("link origin a list", set_(lambda ui: (ui["links"][0], 1), [1])),
        ("link a string", set_(lambda ui: (ui["links"], 0), "1,2,3")),
        ("link too short", set_(lambda ui: (ui["links"], 0), [1, 2])),
        ("links 5", set_(lambda ui: (ui, "links"), 5)),
        ("links an object", set_(lambda ui: (ui, "links"), {"a": 1})),
        ("link id a list", set_(lambda ui: (ui["links"][0], 0), [1])),
        ("widgets_values 5", set_(lambda ui: (node(ui), "widgets_values"), 5)),
        ("widgets_values 'x'", set_(lambda ui: (node(ui), "widgets_values"), "x")),
        ("widgets_values null", set_(lambda ui: (node(ui), "widgets_values"), None)),
        ("widgets_values [[]]", set_(lambda ui: (node(ui), "widgets_values"), [[]])),
        ("widgets_values [{}]", set_(lambda ui: (node(ui), "widgets_values"), [{}])),
        ("widgets_values nan", set_(lambda ui: (node(ui), "widgets_values"), [float("nan")] * 8)),
        ("node id a list", set_(lambda ui: (node(ui), "id"), [3])),
        ("node id null", set_(lambda ui: (node(ui), "id"), None)),
        ("node id true", set_(lambda ui: (node(ui), "id"), True)),
        ("node id with a newline", set_(lambda ui: (node(ui), "id"), "3\n4")),
        ("type 5", set_(lambda ui: (node(ui), "type"), 5)),
        ("type a list", set_(lambda ui: (node(ui), "type"), ["SaveImage"])),
        ("mode 'x'", set_(lambda ui: (node(ui), "mode"), "x")),
        ("nodes 5", set_(lambda ui: (ui, "nodes"), [5, "x", None])),
        ("backend widgets 3 short", set_(lambda ui: (node(ui, 0), "widgets_values"), ["runware"])),
    ]
    return cases


@pytest.mark.parametrize("case", mutations(), ids=lambda c: c[0])
def test_malformed_ui_fields_give_one_line(tmp_path, capsys, case):
    ui = copy.deepcopy(UI_CHAIN)
    case[1](ui)
    code, _ = dry_run(tmp_path, ui)
    if code != 0:
        assert code == 1
        one_line(capsys)


@pytest.mark.parametrize("inputs", [[], [1], "x", 5, None, {"seed": {"a": 1}}, {"seed": ["1"]},
                                    {"seed": ["1", "x"]}, {"seed": ["1", -1]}, {"seed": [None, 0]}])
def test_malformed_api_fields_give_one_line(tmp_path, capsys, inputs):
    data = {"1": {"class_type": "Flux2Seed", "inputs": inputs},
            "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "x"}}}
    assert dry_run(tmp_path, data)[0] == 1
    one_line(capsys)


@pytest.mark.parametrize("body", [5, "x", None, [], {"class_type": 5}, {"class_type": ["SaveImage"]}])
def test_malformed_api_nodes_give_one_line(tmp_path, capsys, body):
    assert dry_run(tmp_path, {"1": body})[0] == 1
    one_line(capsys)


def test_an_image_given_as_the_workflow_is_one_line(tmp_path, capsys):
    png = next((ROOT / "workflows").rglob("*.png")).read_bytes()
    (tmp_path / "some.png").write_bytes(png)
    assert main(["run", str(tmp_path / "some.png")]) == 1
    assert "some.png is an image, not a workflow" in one_line(capsys)


def test_non_utf8_workflow_is_one_line(tmp_path, capsys):
    assert dry_run(tmp_path, b"\xff\xfe{\x00}")[0] == 1
    assert "not UTF-8" in one_line(capsys)


@pytest.mark.parametrize("url", ["http://127.0.0.1:abc/v1", "http://127.0.0.1:99999/v1", "http://:80/v1"])
def test_bad_port_in_the_provider_url_is_one_line(runware, tmp_path, capsys, monkeypatch, url):
    monkeypatch.setenv("RUNWARE_API_URL", url)
    wf = ROOT / "workflows" / "api" / "flux2_text_to_image.json"
    assert main(["run", str(wf), "--output-dir", str(tmp_path / "o")]) == 1
    assert "RUNWARE_API_URL" in one_line(capsys)
    assert runware.requests == []


@pytest.mark.parametrize("seed, batch, ok", [(2**32 - 2, 2, True), (2**32 - 2, 3, False), (2**32 - 1, 2, False)])
def test_batch_seeds_above_the_provider_range_are_refused_in_validation(runware, tmp_path, capsys, seed, batch, ok):
    data = seed_chain(1)
    data["0"]["inputs"]["seed"] = seed
    data["g"]["inputs"]["batch_size"] = batch
    code, _ = dry_run(tmp_path, data)
    if ok:
        assert code == 0
    else:
        assert code == 1 and "image i uses seed + i" in one_line(capsys)
    assert runware.requests == []


def test_ctrl_c_while_starting_up_is_one_line(monkeypatch, tmp_path, capsys):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(cli.run, "node_registry", interrupted)    # Ctrl-C while the node pack loads
    wf = ROOT / "workflows" / "api" / "flux2_text_to_image.json"
    assert main(["run", str(wf), "--dry-run"]) == 130
    one_line(capsys)
    monkeypatch.setattr(cli.app, "build_parser", interrupted)      # ... or before the arguments are read
    assert main(["models"]) == 130
    one_line(capsys)


def test_missing_key_warning_is_printed_once_for_all_nodes(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("RUNWARE_API_URL", "http://127.0.0.1:9/v1")
    assert main(["run", str(ROOT / "workflows" / "api" / "flux2_chain_edit.json"), "--dry-run"]) == 0
    err = capsys.readouterr().err
    assert err.count("no API key") == 1 and err.count("warning:") == 1 and "(nodes 3, 4, 5)" in err


def test_every_run_option_has_help(capsys):
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    text = capsys.readouterr().out
    assert "workflow JSON" in text and "where SaveImage writes" in text
    parser = cli.build_parser()
    for sub in parser._subparsers._group_actions[0].choices.values():
        for action in sub._actions:
            assert action.help, f"{sub.prog}: {action.dest} has no help text"


def test_usage_errors_are_one_line(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["run"])
    assert exit_.value.code == 2
    one_line(capsys)


def test_grouped_warnings_keep_warnings_that_name_no_single_node():
    from comfyui_flux2.flux2.run_context import RunContext
    ctx = RunContext()
    ctx.warn("3", "no API key: set X")
    ctx.warn("4", "no API key: set X")
    ctx.warnings.append("runware billed $0.05 where $0.04 was estimated")
    assert ctx.grouped_warnings() == ["no API key: set X (nodes 3, 4)", "runware billed $0.05 where $0.04 was estimated"]


def test_ctrl_c_while_the_cli_module_loads_is_one_line(monkeypatch, capsys):
    """`python -m comfyui_flux2`: a KeyboardInterrupt while comfyui_flux2.cli is imported."""
    import runpy
    import sys

    class Interrupting:
        def find_spec(self, name, path=None, target=None):
            if name == "comfyui_flux2.cli":
                raise KeyboardInterrupt
            return None

    monkeypatch.delitem(sys.modules, "comfyui_flux2.cli")
    monkeypatch.delitem(sys.modules, "comfyui_flux2.__main__", raising=False)
    monkeypatch.setattr(sys, "meta_path", [Interrupting(), *sys.meta_path])
    raised = None
    try:
        runpy.run_module("comfyui_flux2", run_name="__main__")
    except BaseException as exc:   # noqa: BLE001 - a KeyboardInterrupt escaping would stop the test session
        raised = exc
    assert isinstance(raised, SystemExit) and raised.code == 130, repr(raised)
    one_line(capsys)
