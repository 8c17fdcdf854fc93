"""What ComfyUI-Manager and the Comfy Registry read: requirements.txt, LICENSE, pyproject's [tool.comfy].

(The slow tests in test_comfyui_server.py install the pack the way Manager does and run ComfyUI's own
pyproject parser on it.)
"""
from __future__ import annotations

import re
import tomllib
import xml.etree.ElementTree as ET
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
# what ComfyUI's requirements.txt already installs at versions this pack accepts (ComfyUI 0.3.75:
# torch, numpy>=1.25.0, Pillow, tqdm); a ComfyUI-Manager install must never touch torch
COMFYUI_PROVIDES = {"torch", "numpy", "pillow", "tqdm"}


def test_requirements_txt_lists_the_dependencies_comfyui_lacks():
    lines = (REPO / "requirements.txt").read_text().splitlines()
    # Manager installs line by line (`pip install <line>`; older versions did not skip comments):
    # one plain requirement per line, nothing else
    assert lines and all(line == line.strip() and line and not line.startswith(("#", "-")) for line in lines), lines
    reqs = [Requirement(line) for line in lines]
    deps = {canonicalize_name(Requirement(d).name): d for d in PYPROJECT["project"]["dependencies"]}
    for req in reqs:
        assert deps.get(canonicalize_name(req.name)) == str(req), f"{req} differs from pyproject's dependencies"
    assert {canonicalize_name(r.name) for r in reqs} | COMFYUI_PROVIDES == set(deps)
    assert not {canonicalize_name(r.name) for r in reqs} & {"torch", "torchvision", "torchaudio"}


def test_license_file_is_the_apache_2_text_pyproject_names():
    text = (REPO / "LICENSE").read_text()
    assert PYPROJECT["project"]["license"] == {"text": "Apache-2.0"}
    assert text.split()[:4] == ["Apache", "License", "Version", "2.0,"]
    assert "TERMS AND CONDITIONS FOR USE, REPRODUCTION, AND DISTRIBUTION" in text
    assert "END OF TERMS AND CONDITIONS" in text and len(text.splitlines()) > 190


def test_registry_icon_is_a_raw_url_of_a_square_svg_in_the_repo():
    comfy = PYPROJECT["tool"]["comfy"]
    repo_url = PYPROJECT["project"]["urls"]["Repository"]
    owner_repo = re.fullmatch(r"https://github\.com/([^/]+/[^/]+)", repo_url).group(1)
    m = re.fullmatch(rf"https://raw\.githubusercontent\.com/{re.escape(owner_repo)}/main/(.+)", comfy["Icon"])
    assert m, comfy["Icon"]
    icon = REPO / m.group(1)
    root = ET.parse(icon).getroot()
    assert root.tag == "{http://www.w3.org/2000/svg}svg"
    width, height = int(root.get("width")), int(root.get("height"))
    assert width == height <= 400      # the Registry's icon limits
    assert comfy["PublisherId"] and comfy["DisplayName"]
    assert comfy["requires-comfyui"] == ">=0.3.75"
