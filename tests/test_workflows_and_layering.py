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

ROOT = Path(__file__).resolve().parents[1]
UI_WORKFLOWS = sorted((ROOT / "workflows").glob("*.json"))
API_WORKFLOWS = sorted((ROOT / "workflows" / "api").glob("*.json"))
CORE_TYPES = {"LoadImage", "SaveImage", "PreviewImage", "Note", "MarkdownNote", "Reroute", "PrimitiveNode",
              "UNETLoader", "CLIPLoader", "VAELoader"}
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
        assert inp["link"] == link_id and inp["type"] == kind
    assert data["last_link_id"] == max(l[0] for l in data["links"])
    assert data["last_node_id"] == max(nodes)


@pytest.mark.parametrize("path", UI_WORKFLOWS + API_WORKFLOWS, ids=lambda p: p.name)
def test_workflows_hold_no_secret(path):
    assert not SECRET.search(path.read_text())


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


def test_engine_imports_without_comfyui_or_optional_extras():
    code = ("import sys; import comfyui_flux2.flux2.remote.runware, comfyui_flux2.flux2.backend; "
            "bad = [m for m in sys.modules if m.split('.')[0] in ('comfy', 'folder_paths', 'diffusers', 'transformers')]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)
