"""Repository rules: example workflows are valid and secret-free; the engine never imports ComfyUI."""
from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from comfyui_flux2 import NODE_CLASS_MAPPINGS
from comfyui_flux2.cli import main

ROOT = Path(__file__).resolve().parents[1]
UI_WORKFLOWS = sorted((ROOT / "workflows").glob("*.json"))
API_WORKFLOWS = sorted((ROOT / "workflows" / "api").glob("*.json"))
CORE_TYPES = {"LoadImage", "LoadImageMask", "SaveImage", "PreviewImage", "Note", "MarkdownNote", "Reroute",
              "PrimitiveNode", "UNETLoader", "CLIPLoader", "VAELoader"}
# Runware's documentation of FLUX.2 [pro], its two example requests and answers, verbatim.
DOCUMENTED = json.loads((ROOT / "tests" / "data" / "runware_flux2_pro_examples.json").read_text())["examples"]
# What the pack sends beyond the documented request, and why (listed in the README).
PACK_ADDED = {"numberResults": 1, "outputType": "URL", "outputFormat": "PNG", "includeCost": True,
              "deliveryMethod": "sync"}
SECRET = re.compile(r'"(api_?key|x-key|authorization|token)"|Bearer [A-Za-z0-9]|sk-[A-Za-z0-9]{8}', re.I)


def test_there_are_example_workflows():
    assert len(UI_WORKFLOWS) >= 3 and len(API_WORKFLOWS) == len(UI_WORKFLOWS)


@pytest.mark.parametrize("path", UI_WORKFLOWS, ids=lambda p: p.name)
def test_ui_workflow_links_are_consistent(path):
    data = json.loads(path.read_text())
    nodes = {n["id"]: n for n in data["nodes"]}
    for node in nodes.values():
        assert node["type"] in NODE_CLASS_MAPPINGS or node["type"] in CORE_TYPES, node["type"]
    for link_id, src, src_slot, dst, dst_slot, kind in data["links"]:
        out = nodes[src]["outputs"][src_slot]
        assert link_id in out["links"] and out["type"] == kind
        inp = nodes[dst]["inputs"][dst_slot]
        # an input may take a union of types ("IMAGE,FLUX2_REFERENCE"): the link's type is one of them
        assert inp["link"] == link_id and kind in inp["type"].split(",")
    assert data["last_link_id"] == max(l[0] for l in data["links"])
    assert data["last_node_id"] == max(nodes)


@pytest.mark.parametrize("path", UI_WORKFLOWS + API_WORKFLOWS, ids=lambda p: p.name)
def test_workflows_hold_no_secret(path):
    assert not SECRET.search(path.read_text())


@pytest.mark.slow   # subprocesses / whole benchmark runs: over 4 s; CI runs it (--run-slow)
def test_workflow_files_are_what_the_generator_writes(tmp_path):
    before = {p: p.read_bytes() for p in UI_WORKFLOWS + API_WORKFLOWS}
    subprocess.run([sys.executable, str(ROOT / "scripts" / "make_workflows.py")], check=True, capture_output=True)
    after = {p: p.read_bytes() for p in before}
    assert before == after, "workflows/ is stale: run python scripts/make_workflows.py"


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("path", sorted((ROOT / "flux2").rglob("*.py")), ids=lambda p: str(p.relative_to(ROOT)))
def test_engine_never_imports_comfyui(path):
    assert not _imports(path) & {"comfy", "comfy_api", "comfy_extras", "folder_paths", "server", "nodes", "execution"}


@pytest.mark.slow   # fast suite < 2 min; CI runs it (--run-slow)
def test_engine_imports_without_comfyui_or_optional_extras():
    code = ("import sys; import comfyui_flux2.flux2.remote.runware, comfyui_flux2.flux2.backend; "
            "bad = [m for m in sys.modules if m.split('.')[0] in ('comfy', 'folder_paths', 'diffusers', 'transformers')]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("fmt", ["", "api/"], ids=["ui", "api"])
@pytest.mark.parametrize("name, index, approximate", [("flux2_text_to_image", 0, False),
                                                      ("flux2_multi_reference_edit", 1, True)])
def test_examples_send_the_documented_requests(runware, tmp_path, capsys, fmt, name, index, approximate):
    """Each example, run as shipped through the runner, sends Runware's documented request field for field."""
    documented = DOCUMENTED[index]
    cost = f"${documented['response']['cost']:g}"               # $0.045, $0.09
    path = ROOT / "workflows" / f"{fmt}{name}.json"
    assert main(["run", str(path), "--dry-run"]) == 0
    err = capsys.readouterr().err
    assert f"estimated cost: {cost}" in err and ("(approximate" in err) == approximate, err
    assert runware.requests == []
    assert main(["run", str(path), "--output-dir", str(tmp_path / "out")]) == 0
    assert f"billed {cost}" in capsys.readouterr().err
    (task,) = runware.tasks("imageInference")
    assert runware.tasks("imageUpload") == []                  # URL references are sent, not uploaded
    sent = {k: v for k, v in task.items() if k != "taskUUID"}
    doc = {k: v for k, v in documented["request"].items() if k != "taskUUID"}
    diff = {k: (doc.get(k), sent.get(k)) for k in doc.keys() | sent.keys() if doc.get(k) != sent.get(k)}
    assert diff == {k: (None, v) for k, v in PACK_ADDED.items()}, diff
    assert re.fullmatch(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}", task["taskUUID"])


def test_readme_lists_the_fields_the_pack_adds():
    readme = (ROOT / "README.md").read_text()
    section = readme.split("Fields the pack adds to the documented requests", 1)[1].split("\n\n", 2)[1]
    for field, value in PACK_ADDED.items():
        assert f"`{field}`" in section and f"`{json.dumps(value).strip(chr(34))}`" in section, field


def test_example_images_are_provided_to_comfyui_input_without_replacing_a_file(tmp_path, monkeypatch):
    import types

    from comfyui_flux2.nodes.example_inputs import EXAMPLE_IMAGES, provide_example_images

    assert provide_example_images() == []                   # outside ComfyUI: nothing to do
    monkeypatch.setitem(sys.modules, "folder_paths", types.SimpleNamespace(get_input_directory=lambda: str(tmp_path)))
    mine = tmp_path / "flux2_example_ref_2.png"
    mine.write_bytes(b"the user's own picture")
    written = provide_example_images()
    assert sorted(p.name for p in written) == ["flux2_example_ref_1.png", "flux2_example_ref_3.png",
                                               "flux2_example_ref_mask.png"]
    assert mine.read_bytes() == b"the user's own picture"
    source = ROOT / "workflows"
    assert (tmp_path / "flux2_example_ref_1.png").read_bytes() == (source / "flux2_example_ref_1.png").read_bytes()
    assert provide_example_images() == []                   # the next start finds them there
    # every image an example names is one the pack provides
    named = {n["inputs"]["image"] for p in API_WORKFLOWS for n in json.loads(p.read_text()).values()
             if n["class_type"] in ("LoadImage", "LoadImageMask")}
    # ... by a plain file name: core LoadImage lists only the input folder's own files, and newer
    # frontends flag a value missing from that list
    assert named and named <= {p.name for p in source.glob(EXAMPLE_IMAGES)}
