"""Every file name a workflow decides (SaveImage prefixes, LoadImage names, node ids in rescued file
names) stays inside its folder, and is checked in the dry-run pass, before the first paid call."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from comfyui_flux2.cli import main

BACKEND = {"class_type": "Flux2RemoteBackend",
           "inputs": {"provider": "runware", "model": "FLUX.2 [pro]", "prompt_upsampling": False,
                      "safety_tolerance": 2, "output_format": "PNG", "output_quality": 95, "steps": 0,
                      "guidance": 0.0, "on_moderation": "error"}}


def chain(first_id: str = "3", prefix: str = "flux2/edit", second_prompt: str = "make it blue") -> dict:
    """backend -> text-to-image (id `first_id`) -> edit -> SaveImage(edit): the first image is paid for but
    only reaches a SaveImage through the edit, so if the edit fails it is rescued under its node id."""
    return {
        "1": BACKEND,
        first_id: {"class_type": "Flux2TextToImage",
                   "inputs": {"backend": ["1", 0], "prompt": "a teapot", "width": 512, "height": 512,
                              "seed": 7, "batch_size": 1}},
        "5": {"class_type": "Flux2Edit",
              "inputs": {"backend": ["1", 0], "prompt": second_prompt, "reference_1": [first_id, 0],
                         "width": 0, "height": 0, "seed": 7, "batch_size": 1}},
        "9": {"class_type": "SaveImage", "inputs": {"images": ["5", 0], "filename_prefix": prefix}},
    }


def run(tmp_path: Path, workflow: dict, *extra: str) -> int:
    work = out_dir(tmp_path).parent
    work.mkdir(parents=True, exist_ok=True)
    path = work / "w.json"
    path.write_text(json.dumps(workflow))
    return main(["run", str(path), "--output-dir", str(work / "out"), *extra])


def out_dir(tmp_path: Path) -> Path:
    """Three levels below the test's folder, so an escape of a few '..' still lands where we look."""
    return tmp_path / "d1" / "d2" / "work" / "out"


def pngs_outside(tmp_path: Path) -> list[Path]:
    out = out_dir(tmp_path)
    return [p for p in tmp_path.rglob("*.png") if out not in p.parents]


@pytest.mark.parametrize("node_id", ["../../elsewhere/ESCAPED", "../../../elsewhere/ESCAPED", "a/b", "..",
                                     "12:5", "x\\..\\..\\y"])
def test_rescued_image_of_any_node_id_stays_in_the_output_folder(runware, tmp_path, capsys, node_id):
    """The edit fails at the provider after the first image was paid for: the rescue keeps it, confined."""
    assert run(tmp_path, chain(node_id, second_prompt="forbidden-content")) == 1
    err = capsys.readouterr().err
    assert "kept 1 paid image(s)" in err and "Traceback" not in err
    (kept,) = (out_dir(tmp_path) / "flux2-unsaved").iterdir()
    assert kept.name.startswith("node") and kept.name.endswith("_seed7.png")
    assert pngs_outside(tmp_path) == []
    assert len(runware.tasks("imageInference")) == 2


def test_two_node_ids_that_clean_up_alike_do_not_overwrite_each_other():
    from comfyui_flux2.runner.executor import file_token
    assert file_token("a/b") != file_token("a_b") and file_token("3") == "3"
    assert all(c.isalnum() or c in "_-" for c in file_token("../../elsewhere/ESCAPED"))


@pytest.mark.parametrize("prefix, message", [
    (".", "empty or '.' part"),
    ("flux2/..", "outside its folder"),
    ("../x", "outside its folder"),
    ("/tmp/abs", "absolute path"),
    ("C:\\Users\\x", "absolute path"),
    ("C:rel", "absolute path"),
    ("\\\\server\\share\\x", "absolute path"),
    ("", "a file name is required"),
    ("   ", "a file name is required"),
    ("a\x00b", "control characters"),
    ("x" * 300, "bytes long"),
    ("a//b", "empty or '.' part"),
    ("bad\ud800", "cannot be encoded"),
])
def test_bad_save_prefix_fails_in_the_dry_run_before_any_call(runware, tmp_path, capsys, prefix, message):
    assert run(tmp_path, chain(prefix=prefix)) == 1
    err = capsys.readouterr().err.strip()
    assert message in err and err.count("\n") == 0 or err.splitlines()[-1].startswith("error: ")
    assert message in err.splitlines()[-1]
    assert runware.requests == []                     # refused before the first (paid) call of the chain
    assert pngs_outside(tmp_path) == [] and not (out_dir(tmp_path)).exists()


def test_dry_run_flag_also_refuses_a_bad_prefix(tmp_path, capsys):
    assert run(tmp_path, chain(prefix="flux2/.."), "--dry-run") == 1
    assert "outside its folder" in capsys.readouterr().err


def test_prefix_through_a_symlink_to_the_output_folder_itself_is_refused(runware, tmp_path, capsys):
    out = out_dir(tmp_path)
    out.mkdir(parents=True)
    (out / "loop").symlink_to(out, target_is_directory=True)
    assert run(tmp_path, chain(prefix="loop")) == 1
    assert "outside its folder" in capsys.readouterr().err
    assert runware.requests == []


def test_good_prefix_with_subfolders_saves_inside(runware, tmp_path):
    assert run(tmp_path, chain(prefix="flux2/teapots/[blue]")) == 0
    saved = list((out_dir(tmp_path)).rglob("*.png"))
    assert [p.relative_to(out_dir(tmp_path)).as_posix() for p in saved] == ["flux2/teapots/[blue]_00001_.png"]
    # The counter treats glob characters in the prefix literally.
    assert run(tmp_path, chain(prefix="flux2/teapots/[blue]"), "--no-cache") == 0
    assert sorted(p.name for p in (out_dir(tmp_path) / "flux2" / "teapots").iterdir()) == [
        "[blue]_00001_.png", "[blue]_00002_.png"]


def test_prompt_that_cannot_be_encoded_fails_before_the_first_paid_call(runware, tmp_path, capsys):
    workflow = chain(second_prompt="make it \ud83d blue")      # a lone surrogate in the second node
    assert run(tmp_path, workflow) == 1
    err = capsys.readouterr().err
    assert "node 5 (Flux2Edit): prompt cannot be encoded as UTF-8" in err
    assert runware.requests == []
