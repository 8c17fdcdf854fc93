"""tests/comfy_server.py reads which ComfyUI and which bundled frontend are under test, never assumes them
(the web tests label screenshots with it; ComfyUI 0.3.75 ships frontend 1.32.9, 0.33 ships 1.49.6)."""
from __future__ import annotations

import sys

import pytest

from comfy_server import Installation, comfyui_version, installed_frontend_version


def _fake_install(tmp_path, frontend: str | None) -> Installation:
    comfy = tmp_path / "ComfyUI"
    comfy.mkdir()
    (comfy / "comfyui_version.py").write_text('# generated\n__version__ = "0.33.0"\n')
    site = tmp_path / "site"
    if frontend:   # what pip leaves for an installed distribution: its dist-info METADATA
        info = site / f"comfyui_frontend_package-{frontend}.dist-info"
        info.mkdir(parents=True)
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: comfyui-frontend-package\nVersion: {frontend}\n")
    python = tmp_path / "python"   # the server's interpreter: sees only its own site folder
    python.write_text(f'#!/bin/sh\nPYTHONPATH={site} exec {sys.executable} -S "$@"\n')   # -S: no site-packages
    python.chmod(0o755)
    return Installation(comfy, python)


def test_the_bundled_frontend_version_comes_from_the_servers_interpreter(tmp_path):
    install = _fake_install(tmp_path, "1.49.6")
    assert installed_frontend_version(install) == "1.49.6"
    assert comfyui_version(install) == "0.33.0"


def test_a_server_without_a_frontend_package_is_one_clear_error(tmp_path):
    with pytest.raises(RuntimeError, match="no comfyui-frontend-package"):
        installed_frontend_version(_fake_install(tmp_path, None))
