"""Shared fixtures: loopback providers with the environment pointed at them, slow-test switch;
the repository root collected as a plain folder."""
from __future__ import annotations

import os
import signal

# One CPU thread per test process (and the subprocesses tests start), unless the caller sets it. The tests run
# tiny models: with torch's default of one OpenMP thread per core, on a small machine that other processes keep
# busy, every tiny op waits for threads parked on busy cores. Measured on this project's 2-core machine under a
# load of ~7: tests/local/test_parity.py took 311 s wall / 77 s user with the default, 90 s / 20 s with 1 thread.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]) or torch.get_num_threads())

from comfyui_flux2.flux2.run_context import RunContext  # noqa: E402
from comfyui_flux2.loopback.bfl_server import BflLoopback  # noqa: E402
from comfyui_flux2.loopback.runware_server import RunwareLoopback  # noqa: E402

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


class _PackRootIsAFolder:
    """Collect the repository root as a plain folder (``pytest.Dir``), not as a ``pytest.Package``.

    The root holds the pack's ``__init__.py`` (ComfyUI imports the folder as a package), so pytest
    (8+) would collect it as a Package and import that ``__init__.py`` before every test. In a folder
    whose name is not a Python identifier -- the usual ``comfyui-flux2``, also in
    ``custom_nodes/`` -- pytest imports it as a top-level module and its relative imports fail, so
    every test errors. The tests import the pack as ``comfyui_flux2`` (installed or on PYTHONPATH)
    and need nothing from the root package. Documented hook: "Using a custom directory collector"
    (pytest_collect_directory). It has to be a global plugin: a conftest's own hooks only see
    paths at or below its folder, and the root is collected through its parent's hooks.
    """

    @pytest.hookimpl(tryfirst=True)
    def pytest_collect_directory(self, path, parent):
        if path == parent.config.rootpath and (path / "__init__.py").is_file():
            return pytest.Dir.from_parent(parent, path=path)
        return None


def pytest_configure(config):
    if not config.pluginmanager.has_plugin("comfyui-flux2-pack-root"):
        config.pluginmanager.register(_PackRootIsAFolder(), "comfyui-flux2-pack-root")


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
def default_sigint():
    """Ctrl-C raises KeyboardInterrupt: a CLI test that ran earlier in the same process may have left its own
    handler, and `_thread.interrupt_main` then reaches that handler instead (which process runs which test
    differs under `pytest -n 2`, so a test cannot rely on the order)."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


@pytest.fixture
def ctx():
    return RunContext()
