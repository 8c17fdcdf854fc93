"""FLUX2_CONCURRENCY is read the same way by both providers: a bad value is one ConfigError line naming it,
already when the backend is checked (dry run), so no provider silently runs with another number."""
from __future__ import annotations

import pytest

from comfyui_flux2.flux2.errors import ConfigError
from comfyui_flux2.flux2.remote.bfl import DEFAULT_CONCURRENCY, BflBackend
from comfyui_flux2.flux2.remote.runware import RunwareBackend, concurrency
from comfyui_flux2.flux2.rules import REMOTE_MAX_BATCH


@pytest.fixture
def keys(monkeypatch):
    monkeypatch.setenv("RUNWARE_API_KEY", "rw-test-key")
    monkeypatch.setenv("BFL_API_KEY", "bfl-test-key")


@pytest.mark.parametrize("raw", ["lots", "0", "-3", "2.5"])
@pytest.mark.parametrize("make", [lambda: RunwareBackend("FLUX.2 [pro]"), lambda: BflBackend("FLUX.2 [pro]")],
                         ids=["runware", "bfl"])
def test_a_bad_pack_wide_concurrency_is_refused_by_both_providers(keys, monkeypatch, raw, make):
    monkeypatch.setenv("FLUX2_CONCURRENCY", raw)
    with pytest.raises(ConfigError, match="FLUX2_CONCURRENCY must be an integer") as refused:
        make().check_ready()
    assert "\n" not in str(refused.value) and repr(raw) in str(refused.value)


def test_a_good_value_is_taken_by_both(keys, monkeypatch):
    monkeypatch.setenv("FLUX2_CONCURRENCY", " 3 ")
    assert concurrency() == 3 and BflBackend("FLUX.2 [pro]").concurrency() == 3
    monkeypatch.delenv("FLUX2_CONCURRENCY")
    assert concurrency() == REMOTE_MAX_BATCH and BflBackend("FLUX.2 [pro]").concurrency() == DEFAULT_CONCURRENCY
