"""Shared fixtures: loopback providers with the environment pointed at them, slow-test switch."""
from __future__ import annotations

import pytest

from comfyui_flux2.flux2.run_context import RunContext
from comfyui_flux2.loopback.bfl_server import BflLoopback
from comfyui_flux2.loopback.runware_server import RunwareLoopback

RUNWARE_TEST_KEY = "rw-test-key-5f2c9a"
BFL_TEST_KEY = "bfl-test-key-8d41e7c2"
PROVIDER_ENV = ("RUNWARE_API_URL", "RUNWARE_API_KEY", "RUNWARE_API_KEY_FILE", "BFL_API_URL", "BFL_API_KEY",
                "BFL_API_KEY_FILE", "BFL_REGION", "FLUX2_BFL_CONCURRENCY", "FLUX2_CONCURRENCY", "FLUX2_BUDGET_USD")


@pytest.fixture(autouse=True)
def _clean_provider_env(monkeypatch):
    """The developer's own keys, hosts and limits must not leak into the tests."""
    for name in PROVIDER_ENV:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(autouse=True)
def _isolated_result_cache(tmp_path_factory, monkeypatch):
    """Each test gets an empty result cache, so no test is served by another's results."""
    monkeypatch.setenv("FLUX2_CACHE_DIR", str(tmp_path_factory.mktemp("result-cache")))


def pytest_addoption(parser):
    parser.addoption("--run-slow", action="store_true", default=False,
                     help="also run tests marked slow (real ComfyUI server, full parity); CI always does")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--run-slow"):
        return
    skip = pytest.mark.skip(reason="slow: run with --run-slow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def runware(monkeypatch):
    """A loopback Runware server; RUNWARE_API_URL/KEY point at it for the test's duration."""
    with RunwareLoopback(api_key=RUNWARE_TEST_KEY) as server:
        monkeypatch.setenv("RUNWARE_API_URL", server.api_url)
        monkeypatch.setenv("RUNWARE_API_KEY", RUNWARE_TEST_KEY)
        yield server


@pytest.fixture
def serve_bfl(monkeypatch):
    """`serve_bfl(**settings)` starts a loopback BFL server and points BFL_API_URL/KEY at it."""
    servers = []

    def start(**kwargs) -> BflLoopback:
        server = BflLoopback(api_key=BFL_TEST_KEY, **kwargs).start()
        servers.append(server)
        monkeypatch.setenv("BFL_API_URL", server.api_url)
        monkeypatch.setenv("BFL_API_KEY", BFL_TEST_KEY)
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def bfl(serve_bfl):
    """A loopback BFL server with default settings."""
    return serve_bfl()


@pytest.fixture
def ctx():
    return RunContext()
