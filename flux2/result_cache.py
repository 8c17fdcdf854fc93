"""Disk cache of paid results, keyed by the full request.

An identical re-run (same provider, host, model, prompt, size, seed, batch, options and reference
content) is served from disk and costs nothing, also after a restart. Results are written the moment
they arrive -- each image of a batch as it arrives, not when the batch settles -- so an image that was
paid for survives a failure later in the graph, a crash or kill -9. A task sent and not yet answered is
noted beside its entry (`note_sent`), so a run after a kill asks the provider for it instead of paying again.
Disable with FLUX2_RESULT_CACHE=0 (or the CLI's --no-cache); move it with FLUX2_CACHE_DIR.

Concurrency:
- an entry is one file, written to a temporary name and renamed into place, so a reader sees a
  complete entry or none, never a mix of two writers;
- a read checks every image against the sha256 in the entry's header; anything wrong is a miss;
- `claim(key)` lets one caller at a time make a given request: other threads of this process and other
  processes sharing the folder (a lock file, POSIX flock / Windows msvcrt) wait, then find the result
  in the cache instead of paying for it again. If the first caller fails, the next one calls itself.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import tempfile
import threading
import time
from pathlib import Path

log = logging.getLogger("comfyui_flux2.cache")
FORMAT_VERSION = 2
MAGIC = b"FLUX2-RESULT 2\n"
# Longer than any one provider call may take (the remote deadline is 600 s): then go on without the lock.
CLAIM_WAIT_S = 900.0


def default_dir() -> Path:
    env = os.environ.get("FLUX2_CACHE_DIR", "").strip()
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME", "").strip() or Path.home() / ".cache"
    return Path(base) / "comfyui-flux2" / "results"


def enabled_by_env() -> bool:
    return os.environ.get("FLUX2_RESULT_CACHE", "1").strip().lower() not in ("0", "false", "no", "off")


def key_of(identity: dict) -> str:
    canonical = json.dumps({"v": FORMAT_VERSION, **identity}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def pack_entry(pngs: list[bytes], seeds, billed_usd, describe: str) -> bytes:
    """MAGIC, one JSON header line (seeds, cost, per-image length and sha256), then the image files back to back
    (PNG, or the provider's own PNG/JPEG/WebP file)."""
    header = {"seeds": [int(s) for s in seeds], "billed_usd": billed_usd, "created": time.time(),
              "backend": describe,
              "images": [{"bytes": len(p), "sha256": hashlib.sha256(p).hexdigest()} for p in pngs]}
    return MAGIC + json.dumps(header).encode() + b"\n" + b"".join(pngs)


def unpack_entry(data: bytes) -> tuple[list[bytes], dict]:
    """(PNG bytes per image, header); ValueError for anything incomplete or altered."""
    if not data.startswith(MAGIC):
        raise ValueError("not a result cache entry")
    end = data.index(b"\n", len(MAGIC))
    header = json.loads(data[len(MAGIC):end])
    pngs, offset = [], end + 1
    for image in header["images"]:
        blob = data[offset:offset + int(image["bytes"])]
        if len(blob) != image["bytes"] or hashlib.sha256(blob).hexdigest() != image["sha256"]:
            raise ValueError("image does not match its checksum")
        pngs.append(blob)
        offset += len(blob)
    if offset != len(data) or len(header["seeds"]) != len(pngs):
        raise ValueError("entry length or seed count is off")
    return pngs, header


class _KeyLocks:
    """One lock per key for the threads of this process, dropped when nobody holds or waits for it."""

    def __init__(self):
        self._guard = threading.Lock()
        self._locks: dict[str, list] = {}      # key -> [lock, users]

    @contextlib.contextmanager
    def hold(self, key: str, is_cancelled, deadline: float):
        with self._guard:
            entry = self._locks.setdefault(key, [threading.Lock(), 0])
            entry[1] += 1
        acquired = False
        try:
            while not (acquired := entry[0].acquire(timeout=0.1)):
                _check_cancelled(is_cancelled)
                if time.monotonic() > deadline:
                    log.warning("result cache: still waiting for an identical request after %.0fs; "
                                "going on without waiting", CLAIM_WAIT_S)
                    break
            yield
        finally:
            if acquired:
                entry[0].release()
            with self._guard:
                entry[1] -= 1
                if entry[1] == 0:
                    self._locks.pop(key, None)


_key_locks = _KeyLocks()


def _check_cancelled(is_cancelled) -> None:
    if is_cancelled is not None and is_cancelled():
        from .errors import Cancelled
        raise Cancelled("cancelled by the user")


def _try_lock(fd: int) -> bool:
    """Non-blocking exclusive lock on an open file; released by the OS if the process dies."""
    try:
        import fcntl
    except ImportError:                       # Windows
        import msvcrt
        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
            return True
        except OSError:
            return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False


def _unlock(fd: int) -> None:
    try:
        import fcntl
        fcntl.flock(fd, fcntl.LOCK_UN)
    except ImportError:
        import msvcrt
        os.lseek(fd, 0, os.SEEK_SET)
        msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)


@contextlib.contextmanager
def _file_lock(path: Path, is_cancelled, deadline: float):
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as exc:                     # read-only folder: the cache cannot be shared anyway
        log.warning("result cache: no lock file at %s (%s)", path.parent, exc.strerror)
        yield
        return
    locked = False
    try:
        while True:
            try:
                locked = _try_lock(fd)
            except OSError as exc:             # a file system without locks (some network mounts)
                log.warning("result cache: cannot lock %s (%s); identical runs may both call", path.name, exc.strerror)
                break
            if locked:
                break
            _check_cancelled(is_cancelled)
            if time.monotonic() > deadline:
                log.warning("result cache: another process holds %s for over %.0fs; going on", path.name, CLAIM_WAIT_S)
                break
            time.sleep(0.05)
        yield
    finally:
        if locked:
            _unlock(fd)
        os.close(fd)


class ResultCache:
    def __init__(self, folder: Path | None = None):
        self._folder = Path(folder) if folder else None

    @property
    def folder(self) -> Path:
        # Resolved at use, not at import: the process-wide cache must follow FLUX2_CACHE_DIR as set now.
        return self._folder or default_dir()

    def _entry(self, key: str) -> Path:
        return self.folder / key[:2] / f"{key}.result"

    @contextlib.contextmanager
    def claim(self, key: str, is_cancelled=None):
        """Hold while checking the cache and, on a miss, making the request and storing its result."""
        deadline = time.monotonic() + CLAIM_WAIT_S
        with _key_locks.hold(key, is_cancelled, deadline):
            with _file_lock(self._entry(key).with_suffix(".lock"), is_cancelled, deadline):
                yield

    def get(self, key: str):
        """(images, seeds, billed_usd, created) or None; a missing, partial or altered entry is a miss."""
        from .images import decode
        path = self._entry(key)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            log.warning("cannot read cache entry %s (%s)", path.name[:12], exc.strerror)
            return None
        try:
            pngs, header = unpack_entry(data)
            images = [decode(png, f"cached image {i}") for i, png in enumerate(pngs)]
            return images, [int(s) for s in header["seeds"]], header.get("billed_usd"), header.get("created", 0)
        except Exception as exc:  # noqa: BLE001 - any damage means "not cached", never a failed run
            log.warning("ignoring damaged cache entry %s (%s)", path.name[:12], type(exc).__name__)
            return None

    # -- tasks sent and not yet answered (a run killed with kill -9 leaves them here) ----------------
    def note_sent(self, key: str, task: dict) -> None:
        """Before a paid task is sent: which provider task will make the image of `key` ({provider, host,
        task}). A later run finding it (and no image) asks the provider for that task instead of paying
        again; removed once the image is cached or the provider refused the task."""
        path = self._entry(key).with_suffix(".sent")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{key[:16]}-", suffix=".tmp")
            with os.fdopen(fd, "w") as f:
                json.dump(task, f)
            os.replace(tmp, path)
        except OSError as exc:
            log.warning("could not note a sent task in the result cache (%s)", exc.strerror)

    def sent(self, key: str) -> dict | None:
        try:
            task = json.loads(self._entry(key).with_suffix(".sent").read_text())
        except (OSError, ValueError):
            return None
        return task if isinstance(task, dict) else None

    def forget_sent(self, key: str) -> None:
        with contextlib.suppress(OSError):
            self._entry(key).with_suffix(".sent").unlink()

    def put(self, key: str, images, seeds, billed_usd, describe: str, files=()) -> None:
        """`files`: images.ProviderFile of images that came as a provider's file: those bytes are stored as they
        came (they decode to that very array); any other image is encoded as PNG."""
        from .images import encode
        path = self._entry(key)
        as_sent = {id(f.image): f.data for f in files}
        try:
            blob = pack_entry([as_sent.get(id(image)) or encode(image, "PNG") for image in images], seeds,
                              billed_usd, describe)
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{key[:16]}-", suffix=".tmp")
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(blob)
                os.replace(tmp, path)             # atomic: readers see the old entry or the new, whole
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                raise
        except OSError as exc:
            log.warning("could not write the result cache at %s (%s)", self.folder, exc.strerror)
