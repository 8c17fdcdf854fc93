"""Disk cache of paid results, keyed by the full request.

An identical re-run (same provider, host, model, prompt, size, seed, batch, options and reference
content) is served from disk and costs nothing, also after a restart. Results are written the moment
they arrive, so an image that was paid for survives a failure later in the graph or a crash.
Disable with FLUX2_RESULT_CACHE=0 (or the CLI's --no-cache); move it with FLUX2_CACHE_DIR.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from pathlib import Path

from .images import decode, encode

log = logging.getLogger("comfyui_flux2.cache")
FORMAT_VERSION = 1


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


class ResultCache:
    def __init__(self, folder: Path | None = None):
        self._folder = Path(folder) if folder else None

    @property
    def folder(self) -> Path:
        # Resolved at use, not at import: the process-wide cache must follow FLUX2_CACHE_DIR as set now.
        return self._folder or default_dir()

    def _entry(self, key: str) -> Path:
        return self.folder / key[:2] / key

    def get(self, key: str):
        """(images, seeds, billed_usd, created) or None; a damaged entry counts as a miss."""
        entry = self._entry(key)
        meta_path = entry / "meta.json"
        if not meta_path.is_file():
            return None
        try:
            meta = json.loads(meta_path.read_text())
            images = [decode((entry / name).read_bytes(), f"cached {name}") for name in meta["files"]]
            return images, [int(s) for s in meta["seeds"]], meta.get("billed_usd"), meta.get("created", 0)
        except Exception as exc:  # noqa: BLE001 - any damage means "not cached", never a failed run
            log.warning("ignoring damaged cache entry %s (%s)", entry.name[:12], type(exc).__name__)
            return None

    def put(self, key: str, images, seeds, billed_usd, describe: str) -> None:
        entry = self._entry(key)
        try:
            entry.mkdir(parents=True, exist_ok=True)
            files = []
            for i, image in enumerate(images):
                name = f"{i:02}.png"
                (entry / name).write_bytes(encode(image, "PNG"))
                files.append(name)
            meta = {"files": files, "seeds": list(seeds), "billed_usd": billed_usd, "created": time.time(),
                    "backend": describe}
            tmp = entry / "meta.json.tmp"
            tmp.write_text(json.dumps(meta))
            tmp.replace(entry / "meta.json")      # meta last: a half-written entry is never read as a hit
        except OSError as exc:
            log.warning("could not write the result cache at %s (%s)", self.folder, exc.strerror)
