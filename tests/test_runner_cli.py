"""The headless runner and CLI: both workflow formats, dry runs, bad graphs, saved outputs."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from PIL import Image

from comfyui_flux2.cli import main, node_registry
from comfyui_flux2.runner.executor import Executor
from comfyui_flux2.runner.graph import load_workflow

ROOT = Path(__file__).resolve().parents[1]
WORKFLOWS = ROOT / "workflows"
NAMES = ["flux2_text_to_image", "flux2_multi_reference_edit", "flux2_local_references_edit", "flux2_chain_edit"]


def copy_workflows(tmp_path: Path) -> Path:
    dest = tmp_path / "wf"
    shutil.copytree(WORKFLOWS, dest)
    return dest


@pytest.mark.parametrize("name", NAMES)
def test_ui_and_api_format_give_the_same_graph(name):
    ui = Executor(load_workflow(WORKFLOWS / f"{name}.json"), registry=node_registry(), input_dir=WORKFLOWS,
                  output_dir=Path("unused"))
    api = Executor(load_workflow(WORKFLOWS / "api" / f"{name}.json"), registry=node_registry(), input_dir=WORKFLOWS,
                   output_dir=Path("unused"))
    strip = lambda p: {k: {"class_type": v["class_type"], "inputs": {n: x for n, x in v["inputs"].items() if n != "upload"}}
                       for k, v in p.items()}
    assert strip(ui.api_prompt) == strip(api.api_prompt)
    assert ui.order == api.order


def test_dry_run_prints_plan_and_cost_without_network(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("RUNWARE_API_KEY", raising=False)
    monkeypatch.setenv("RUNWARE_API_URL", "http://127.0.0.1:9/v1")   # nothing listens: any call would fail
    wf = copy_workflows(tmp_path)
    code = main(["run", str(wf / "flux2_multi_reference_edit.json"), "--dry-run", "--output-dir", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 0
    assert "imageInference bfl:5@1: 1536x1024 seed 27270, 3 reference(s) - est. $0.09" in err
    assert "estimated cost: $0.09" in err
    assert "RUNWARE_API_KEY" in err          # warned, since a real run would need it
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("fmt", ["", "api/"])
def test_seed_example_runs_end_to_end(runware, tmp_path, capsys, fmt):
    wf = copy_workflows(tmp_path)
    out = tmp_path / "out"
    assert main(["run", str(wf / f"{fmt}flux2_text_to_image.json"), "--output-dir", str(out)]) == 0
    (png,) = list(out.rglob("*.png"))
    assert png.name == "salt_cathedral_00001_.png"
    with Image.open(png) as img:
        assert img.size == (1536, 1024)
        assert "prompt" in img.text
    (task,) = runware.tasks("imageInference")
    assert (task["seed"], task["width"], task["height"]) == (73410, 1536, 1024)
    assert task["providerSettings"] == {"bfl": {"promptUpsampling": True, "safetyTolerance": 2}}
    assert "billed $0.045" in capsys.readouterr().err


@pytest.mark.parametrize("fmt", ["", "api/"])
def test_local_reference_images_are_found_from_either_folder(runware, tmp_path, fmt):
    """The API-format file in workflows/api/ finds the images that sit beside the UI files."""
    wf = copy_workflows(tmp_path)
    assert main(["run", str(wf / f"{fmt}flux2_local_references_edit.json"), "--output-dir", str(tmp_path / "o")]) == 0
    (task,) = runware.tasks("imageInference")
    assert len(task["inputs"]["referenceImages"]) == 3 and len(runware.tasks("imageUpload")) == 3
    assert [p.name for p in (tmp_path / "o").rglob("*.png")] == ["local_references_edit_00001_.png"]


def test_only_a_folder_named_api_looks_one_folder_up(tmp_path, capsys):
    wf = copy_workflows(tmp_path)
    elsewhere = wf / "other"
    elsewhere.mkdir()
    shutil.copy(wf / "api" / "flux2_local_references_edit.json", elsewhere)
    assert main(["run", str(elsewhere / "flux2_local_references_edit.json"), "--dry-run"]) == 1
    assert f"'flux2_example_ref_1.png' not found in {elsewhere}" in capsys.readouterr().err


def test_chain_sends_each_intermediate_as_its_image_uuid(runware, tmp_path):
    wf = copy_workflows(tmp_path)
    assert main(["run", str(wf / "flux2_chain_edit.json"), "--output-dir", str(tmp_path / "o")]) == 0
    assert len(list((tmp_path / "o").rglob("*.png"))) == 3
    inference = runware.tasks("imageInference")
    # Each edit's reference is the previous node's output, which Runware generated: it goes as the
    # imageUUID Runware gave it, nothing is uploaded (what the chain promises, at no upload cost).
    assert len(inference) == 3 and runware.tasks("imageUpload") == []
    for earlier, later in zip(inference, inference[1:]):
        assert later["inputs"]["referenceImages"] == [runware.results[earlier["taskUUID"]]["imageUUID"]]


def test_missing_key_fails_before_any_call(runware, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("RUNWARE_API_KEY")
    wf = copy_workflows(tmp_path)
    assert main(["run", str(wf / "flux2_chain_edit.json"), "--output-dir", str(tmp_path / "o")]) == 1
    assert "error: node" in capsys.readouterr().err
    assert runware.requests == []


def test_budget_cap_refuses_before_the_first_call(runware, tmp_path, capsys):
    wf = copy_workflows(tmp_path)
    code = main(["run", str(wf / "flux2_chain_edit.json"), "--budget", "0.1", "--output-dir", str(tmp_path / "o")])
    assert code == 1
    assert "over the budget cap $0.1" in capsys.readouterr().err
    assert runware.requests == []


def test_bad_size_anywhere_fails_before_any_call(runware, tmp_path, capsys):
    wf = copy_workflows(tmp_path)
    path = wf / "api" / "flux2_chain_edit.json"
    data = json.loads(path.read_text())
    data["3"]["inputs"]["width"] = 1000
    path.write_text(json.dumps(data))
    assert main(["run", str(path), "--output-dir", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err
    assert "not a multiple of 16" in err and err.count("\n") == 1 + err.count("wf/api")  # one error line
    assert runware.requests == []


def write(tmp_path, data) -> Path:
    path = tmp_path / "w.json"
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return path


@pytest.mark.parametrize("data, message", [
    ("{not json", "not valid JSON"),
    ({"1": {"class_type": "NoSuchNode", "inputs": {}}}, "unknown node type 'NoSuchNode'"),
    ((ROOT / "workflows" / "api" / "flux2_core_models.json").read_text(), "ComfyUI node, so this workflow runs inside "
                                                                         "ComfyUI only"),
    ({"1": {"class_type": "Flux2Seed", "inputs": {"seed": 1}}}, "no output node"),
    ({"1": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "x"}}},
     "linked to node 2, which does not exist"),
    ({"1": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "x"}},
      "2": {"class_type": "Flux2Seed", "inputs": {"seed": 1}}}, "expects IMAGE, but node 2 (Flux2Seed) gives INT"),
    ({"1": {"class_type": "SaveImage", "inputs": {"filename_prefix": "x"}}}, "required input 'images' is missing"),
    ({"1": {"class_type": "Flux2RemoteBackend", "inputs": {"provider": "runware", "model": "FLUX.3", "prompt_upsampling": False,
      "safety_tolerance": 2, "output_format": "PNG", "output_quality": 95, "steps": 0, "guidance": 0, "on_moderation": "error"}},
      "2": {"class_type": "PreviewImage", "inputs": {"images": ["3", 0]}},
      "3": {"class_type": "Flux2TextToImage", "inputs": {"backend": ["1", 0], "prompt": "x", "width": 1024, "height": 1024,
                                                         "seed": 1, "batch_size": 1}}}, "model = 'FLUX.3' is not one of"),
])
def test_malformed_workflows_get_one_clear_line(tmp_path, capsys, data, message):
    assert main(["run", str(write(tmp_path, data)), "--dry-run"]) == 1
    err = capsys.readouterr().err.strip()
    assert message in err and err.startswith("error: ") and "\n" not in err


@pytest.mark.parametrize("name", ["../secret.png", "/etc/passwd", "images/../../x.png"])
def test_load_image_cannot_leave_the_input_folder(tmp_path, capsys, name):
    (tmp_path / "secret.png").write_bytes(b"")
    inner = tmp_path / "inner"
    inner.mkdir()
    wf = {"1": {"class_type": "LoadImage", "inputs": {"image": name}},
          "2": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}}}
    assert main(["run", str(write(inner, wf)), "--dry-run"]) == 1
    err = capsys.readouterr().err
    assert "outside its folder" in err or "absolute path" in err


def test_save_prefix_cannot_leave_the_output_folder(tmp_path, capsys):
    wf = {"1": {"class_type": "LoadImage", "inputs": {"image": "flux2_example_ref_1.png"}},
          "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "../../escape"}}}
    shutil.copy(WORKFLOWS / "flux2_example_ref_1.png", tmp_path)
    assert main(["run", str(write(tmp_path, wf)), "--output-dir", str(tmp_path / "out")]) == 1
    assert "outside its folder" in capsys.readouterr().err
    assert not list(tmp_path.parent.glob("escape*"))


def test_corrupt_reference_image_is_named(tmp_path, capsys, runware):
    wf = copy_workflows(tmp_path)
    (wf / "flux2_example_ref_2.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    assert main(["run", str(wf / "flux2_local_references_edit.json"), "--output-dir", str(tmp_path / "o")]) == 1
    assert ("LoadImage 'flux2_example_ref_2.png' is not a readable PNG/JPEG/WebP image"
            in capsys.readouterr().err)
    assert runware.requests == []


def test_failure_after_a_paid_result_keeps_the_image(runware, tmp_path, capsys):
    wf = copy_workflows(tmp_path)
    path = wf / "api" / "flux2_chain_edit.json"
    data = json.loads(path.read_text())
    # Make the second edit fail at the provider (after the first two were paid for).
    data["5"]["inputs"]["prompt"] = "forbidden-content"
    path.write_text(json.dumps(data))
    assert main(["run", str(path), "--output-dir", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err
    assert "contentPolicyViolation" in err and "billed $0.075" in err
    # Both paid images exist once: SaveImage saved them, so nothing lands in flux2-unsaved.
    assert sorted(p.name for p in (tmp_path / "o").rglob("*.png")) == ["chain_1_teapot_00001_.png",
                                                                       "chain_2_cobalt_00001_.png"]


def test_paid_result_whose_save_never_ran_is_kept(runware, tmp_path, capsys):
    wf = copy_workflows(tmp_path)
    path = wf / "api" / "flux2_chain_edit.json"
    data = json.loads(path.read_text())
    data["5"]["inputs"]["prompt"] = "forbidden-content"
    data["7"]["inputs"]["images"] = ["3", 0]      # edit 1 is only consumed by edit 2, which fails
    path.write_text(json.dumps(data))
    assert main(["run", str(path), "--output-dir", str(tmp_path / "o")]) == 1
    assert "kept 1 paid image(s)" in capsys.readouterr().err
    assert [p.name for p in (tmp_path / "o" / "flux2-unsaved").iterdir()] == ["node4_seed5150.png"]


@pytest.mark.slow   # subprocesses / whole benchmark runs: over 4 s; CI runs it (--run-slow)
def test_ctrl_c_stops_the_run_and_keeps_the_paid_image(runware, tmp_path):
    """SIGINT while a task is in flight: the run stops before the next node, the paid image is kept."""
    import os
    import signal
    import subprocess
    import sys
    import time

    wf = copy_workflows(tmp_path)
    runware.faults.push(route="submit", delay_s=4)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "comfyui_flux2", "run", str(wf / "flux2_chain_edit.json"),
                             "--output-dir", str(tmp_path / "o")], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not runware.tasks("imageInference") and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "cancelled by the user" in err
    assert len(runware.tasks("imageInference")) == 1          # nothing submitted after the interrupt
    kept = list((tmp_path / "o").rglob("*.png"))
    assert [p.name for p in kept] == ["node3_seed5150.png"]


@pytest.mark.slow   # fast suite < 2 min; CI runs it (--run-slow)
def test_second_ctrl_c_aborts_at_once_and_keeps_the_paid_image(runware, tmp_path):
    """Node 3 is paid, node 4's request hangs at the provider: a second SIGINT does not wait for it; the paid
    image of node 3 (which no SaveImage had taken yet) is kept, and the node still in flight is named."""
    import os
    import signal
    import subprocess
    import sys
    import time

    wf = copy_workflows(tmp_path)
    path = wf / "api" / "flux2_chain_edit.json"
    data = json.loads(path.read_text())
    data["6"]["inputs"]["images"] = ["4", 0]       # node 3's image reaches no SaveImage before node 4 runs
    path.write_text(json.dumps(data))
    runware.faults.push(route="submit")                  # node 3: answered normally
    runware.faults.push(route="submit", delay_s=90)      # node 4: the provider keeps it (far past the wait below)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "comfyui_flux2", "run", str(path),
                             "--output-dir", str(tmp_path / "o")], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while len(runware.tasks("imageInference")) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=45)              # it would take 90 s if it waited for node 4
    assert proc.returncode == 130, err
    assert "aborted at once" in err and "Traceback" not in err
    # Named by its task id where the provider client keeps it on its error, else by the node left waiting.
    billed_line = next(line for line in err.splitlines() if "may still be billed" in line)
    assert "runware task " in billed_line or billed_line.startswith("node 4 was still waiting")
    assert "billed $0.03" in err                         # node 3, paid and counted
    kept = sorted(p.name for p in (tmp_path / "o").rglob("*.png"))
    assert kept == ["node3_seed5150.png"]


def _second_ctrl_c_soon():
    """What a second Ctrl-C does to the CLI's main thread: KeyboardInterrupt there, a moment from now."""
    import _thread
    import threading
    threading.Timer(0.3, _thread.interrupt_main).start()


def test_second_ctrl_c_lets_a_run_waiting_in_python_take_its_abort_path(monkeypatch, default_sigint):
    """A provider client waiting in Python (job fan-out, polling) gets the KeyboardInterrupt in the run's
    thread, keeps what was paid and names the tasks that may be billed; the CLI reads them from the error."""
    import time

    from comfyui_flux2.cli import interrupts
    from comfyui_flux2.runner.run import may_be_billed
    from comfyui_flux2.flux2.errors import Cancelled

    class WaitsInPython:
        def run(self, ctx):
            try:
                while True:
                    time.sleep(0.02)
            except KeyboardInterrupt:
                error = Cancelled("aborted")
                error.maybe_billed = ("task-7f3a",)
                raise error from None

    _second_ctrl_c_soon()
    with pytest.raises(interrupts.Aborted) as aborted:
        interrupts.run_in_worker(WaitsInPython(), ctx=None)
    assert not aborted.value.left_behind and aborted.value.error.maybe_billed == ("task-7f3a",)
    assert may_be_billed(aborted.value.error) == ["task-7f3a"]


def test_second_ctrl_c_leaves_a_run_stuck_in_one_call_behind(monkeypatch, default_sigint):
    import threading

    from comfyui_flux2.cli import interrupts

    monkeypatch.setattr(interrupts, "ABORT_GRACE_S", 0.5)
    stuck, release = threading.Event(), threading.Event()

    class StuckInACall:
        def run(self, ctx):
            stuck.set()
            release.wait()            # one C-level wait: the KeyboardInterrupt cannot land before it returns

    _second_ctrl_c_soon()
    try:
        with pytest.raises(interrupts.Aborted) as aborted:
            interrupts.run_in_worker(StuckInACall(), ctx=None)
        assert stuck.is_set() and aborted.value.left_behind
    finally:
        release.set()
