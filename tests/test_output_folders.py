"""Output folders are checked before anything is paid for, and a paid image no SaveImage keeps is kept anyway
(issue 21.4). Against the loopback Runware server."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from comfyui_flux2.cli import main
from test_batch import batch, records, write_csv
from test_budget import t2i
from test_malformed_workflows import one_line

ROOT = Path(__file__).resolve().parents[1]


def write(tmp_path: Path, data: dict) -> Path:
    path = tmp_path / "w.json"
    path.write_text(json.dumps(data))
    return path


def pro(batch_size: int = 1) -> dict:
    return t2i("FLUX.2 [pro]", batch=batch_size)


def bad_folders(tmp_path: Path) -> dict:
    (tmp_path / "a-file").write_text("x")
    return {"an existing file": (tmp_path / "a-file", "is a file, not a folder"),
            "a folder under a file": (tmp_path / "a-file" / "out", "cannot be made:"),
            "a folder on /proc": (Path("/proc/flux2-no-such/out"), "cannot be written")}


@pytest.mark.parametrize("case", ["an existing file", "a folder under a file", "a folder on /proc"])
@pytest.mark.parametrize("dry", [True, False])
def test_run_refuses_an_output_folder_it_cannot_write_before_any_call(runware, tmp_path, capsys, case, dry):
    """Before: the images were paid for, then SaveImage failed with a traceback."""
    folder, words = bad_folders(tmp_path)[case]
    code = main(["run", str(write(tmp_path, pro())), "--output-dir", str(folder), *(["--dry-run"] if dry else [])])
    assert code == 1
    err = one_line(capsys)
    assert err.startswith(f"error: --output-dir {folder}") and words in err
    assert runware.requests == []


def test_a_save_prefix_whose_folder_is_a_file_is_refused_in_the_dry_run(runware, tmp_path, capsys):
    data = pro()
    data["3"]["inputs"]["filename_prefix"] = "cat/item"
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "cat").write_text("not a folder")
    assert main(["run", str(write(tmp_path, data)), "--output-dir", str(tmp_path / "o")]) == 1
    assert "SaveImage filename_prefix 'cat/item':" in one_line(capsys)
    assert runware.requests == []


def test_a_dry_run_leaves_no_trace_in_the_output_folder(runware, tmp_path, capsys):
    out = tmp_path / "o"
    out.mkdir()
    assert main(["run", str(write(tmp_path, pro())), "--output-dir", str(out / "new" / "deeper"), "--dry-run"]) == 0
    assert list(out.iterdir()) == []


@pytest.mark.parametrize("case", ["an existing file", "a folder on /proc"])
def test_batch_refuses_an_output_folder_it_cannot_write_before_any_call(runware, tmp_path, capsys, case):
    folder, words = bad_folders(tmp_path)[case]
    table = write_csv(tmp_path, "Make.prompt\na\nb\n")
    assert batch(write(tmp_path, pro()), "--table", table, "--output-dir", folder) == 1
    err = one_line(capsys)
    assert words in err and runware.requests == []


def preview_only(batch_size: int = 2) -> dict:
    data = pro(batch_size)
    data["3"] = {"class_type": "PreviewImage", "inputs": {"images": ["2", 0]}}
    return data


def test_a_paid_image_only_previewed_is_kept_with_a_note(runware, tmp_path, capsys):
    """Before: billed, exit 0, no file and no word (headless, PreviewImage shows nothing)."""
    out = tmp_path / "o"
    assert main(["run", str(write(tmp_path, preview_only())), "--output-dir", str(out)]) == 0
    err = capsys.readouterr().err
    kept = sorted(p.name for p in (out / "flux2-unsaved").iterdir())
    assert kept == ["node2_seed1.png", "node2_seed2.png"] and len(runware.billed_tasks) == 2
    assert f"kept 2 paid image(s) that no SaveImage keeps (node 2): {out / 'flux2-unsaved'}" in err


def test_an_image_saved_through_a_later_edit_is_not_kept_twice(runware, tmp_path, capsys):
    out = tmp_path / "o"
    assert main(["run", str(ROOT / "workflows" / "api" / "flux2_chain_edit.json"), "--output-dir", str(out)]) == 0
    assert not (out / "flux2-unsaved").exists() and "no SaveImage keeps" not in capsys.readouterr().err


def test_a_batch_item_only_previewed_keeps_its_paid_image(runware, tmp_path, capsys):
    out = tmp_path / "o"
    table = write_csv(tmp_path, "Make.prompt\na\n")
    data = preview_only(1)
    data["2"]["_meta"] = {"title": "Make"}
    assert batch(write(tmp_path, data), "--table", table, "--output-dir", out) == 0
    assert records(out)["r1"]["outputs"] == ["flux2-unsaved/r1_node2_seed1.png"]
    assert (out / "flux2-unsaved" / "r1_node2_seed1.png").is_file()
    assert "kept 1 paid image(s) that no SaveImage keeps" in capsys.readouterr().err


def test_an_edited_batch_row_does_not_overwrite_the_kept_image_of_its_first_run(runware, tmp_path, capsys):
    """A batch item keeps its paid images the way `run` does (runner/run.py's GraphRun): before, the re-run of
    an edited row (the same item id, another prompt) wrote flux2-unsaved/r1_node2_seed1.png over the first
    run's paid image. Now both are kept, and the manifest names the new one."""
    out = tmp_path / "o"
    data = preview_only(1)
    data["2"]["_meta"] = {"title": "Make"}
    workflow = write(tmp_path, data)
    assert batch(workflow, "--table", write_csv(tmp_path, "Make.prompt\na\n"), "--output-dir", out) == 0
    first = (out / "flux2-unsaved" / "r1_node2_seed1.png").read_bytes()
    assert batch(workflow, "--table", write_csv(tmp_path, "Make.prompt\na kettle\n"), "--output-dir", out) == 0
    assert records(out)["r1"]["outputs"] == ["flux2-unsaved/r1_node2_seed1_2.png"]
    assert (out / "flux2-unsaved" / "r1_node2_seed1.png").read_bytes() == first
    assert (out / "flux2-unsaved" / "r1_node2_seed1_2.png").read_bytes() != first
    assert len(runware.billed_tasks) == 2


def test_a_later_run_does_not_overwrite_an_earlier_runs_kept_image(runware, tmp_path, capsys):
    """The same preview-only graph run twice with another prompt into one folder: before, the second run wrote
    flux2-unsaved/node2_seed1.png over the first run's paid image. Now both are kept; an identical image (the
    same result again) is not written twice."""
    out = tmp_path / "o"
    first, second = preview_only(1), preview_only(1)
    second["2"]["inputs"]["prompt"] = "a kettle"
    assert main(["run", str(write(tmp_path, first)), "--output-dir", str(out)]) == 0
    kept_first = (out / "flux2-unsaved" / "node2_seed1.png").read_bytes()
    assert main(["run", str(write(tmp_path, second)), "--output-dir", str(out)]) == 0
    assert main(["run", str(write(tmp_path, second)), "--output-dir", str(out)]) == 0     # served by the cache
    files = sorted((out / "flux2-unsaved").iterdir())
    assert [p.name for p in files] == ["node2_seed1.png", "node2_seed1_2.png"] and len(runware.billed_tasks) == 2
    assert files[0].read_bytes() == kept_first and files[1].read_bytes() != kept_first


def test_save_image_never_writes_over_a_file_another_run_wrote_meanwhile(runware, tmp_path, monkeypatch):
    """Two runs saving into one folder at the same moment both counted b_00001_ as free: before, the later
    write replaced the other run's paid image (two runs of 8: 16 billed, 9 files). Played here by a counter
    that still says 1 after another run wrote b_00001_.png."""
    import comfyui_flux2.runner.core_nodes as core_nodes
    out = tmp_path / "o"
    out.mkdir()
    (out / "b_00001_.png").write_bytes(b"another run's image")
    monkeypatch.setattr(core_nodes, "_next_counter", lambda target: 1)
    assert main(["run", str(write(tmp_path, pro(2))), "--output-dir", str(out)]) == 0
    assert (out / "b_00001_.png").read_bytes() == b"another run's image"
    assert sorted(p.name for p in out.glob("*.png")) == ["b_00001_.png", "b_00002_.png", "b_00003_.png"]
