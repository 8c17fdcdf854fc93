"""Provider URLs from the environment: checked once per value, and a change of the variable is seen at once."""
from __future__ import annotations

import pytest

from comfyui_flux2.flux2.errors import ConfigError
from comfyui_flux2.flux2.net.keys import base_url


def test_a_changed_variable_is_read_again(monkeypatch):
    monkeypatch.setenv("RUNWARE_API_URL", "http://127.0.0.1:9/v1/")
    assert base_url("RUNWARE_API_URL", "https://api.runware.ai/v1") == "http://127.0.0.1:9/v1"
    monkeypatch.setenv("RUNWARE_API_URL", "http://127.0.0.1:10/v1")
    assert base_url("RUNWARE_API_URL", "https://api.runware.ai/v1") == "http://127.0.0.1:10/v1"
    monkeypatch.delenv("RUNWARE_API_URL")
    assert base_url("RUNWARE_API_URL", "https://api.runware.ai/v1") == "https://api.runware.ai/v1"


def test_a_bad_url_is_refused_every_time(monkeypatch):
    monkeypatch.setenv("RUNWARE_API_URL", "http://example.com/v1")       # clear text off loopback
    for _ in range(2):
        with pytest.raises(ConfigError, match="must use https"):
            base_url("RUNWARE_API_URL", "https://api.runware.ai/v1")
