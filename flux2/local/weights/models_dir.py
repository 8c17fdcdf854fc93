"""Find local weights in a ComfyUI-style models directory (no ComfyUI import: the node layer uses
`folder_paths` itself and hands us full paths).

Layout: <root>/diffusion_models/*.safetensors or *.gguf (older: unet/), <root>/text_encoders/ (older: clip/; also .gguf),
<root>/vae/, <root>/loras/, and diffusers folders (a directory with model_index.json) under <root>/diffusers/ or <root>.
The root comes from an explicit argument (CLI --models-dir) or FLUX2_MODELS_DIR. Names given by a workflow
are resolved inside the root only: `..`, absolute paths and symlinks leading outside are refused.
"""
from __future__ import annotations

import os
from pathlib import Path

from ...errors import ConfigError, InputError, ModelLoadError

ENV = "FLUX2_MODELS_DIR"
FOLDERS = {
    "diffusion_models": ("diffusion_models", "unet"),
    "text_encoders": ("text_encoders", "clip"),
    "vae": ("vae",),
    "loras": ("loras",),
    "diffusers": ("diffusers", "."),
}
WEIGHT_SUFFIXES = (".safetensors", ".sft")
GGUF_KINDS = ("diffusion_models", "text_encoders")     # ComfyUI-GGUF's unet / clip loaders read .gguf from these


def suffixes(kind: str) -> tuple[str, ...]:
    """Weight-file suffixes listed for a kind: .gguf beside safetensors for transformers and text encoders."""
    return WEIGHT_SUFFIXES + (".gguf",) if kind in GGUF_KINDS else WEIGHT_SUFFIXES


def models_root(explicit: str | os.PathLike | None = None) -> Path:
    raw = explicit or os.environ.get(ENV)
    if not raw:
        raise ConfigError(f"no models directory: set {ENV} or pass --models-dir")
    root = Path(raw).expanduser()
    if not root.is_dir():
        raise ConfigError(f"models directory {root} does not exist")
    return root.resolve()


def _inside(path: Path, root: Path) -> bool:
    try:
        path.resolve().relative_to(root.resolve())
        return True
    except ValueError:
        return False


def resolve(name: str, kind: str, root: Path) -> Path:
    """A file (or diffusers folder) name from a workflow -> its path inside root/<kind folder>."""
    if not name or not isinstance(name, str):
        raise InputError(f"no {kind} file selected")
    rel = Path(name)
    if rel.is_absolute() or ".." in rel.parts:
        raise InputError(f"{kind} name {name!r} must be relative to the models directory")
    for folder in FOLDERS[kind]:
        base = (root / folder).resolve()
        cand = base / rel
        if cand.exists():
            if not _inside(cand, root):
                raise InputError(f"{kind} {name!r} points outside the models directory")
            return cand.resolve()
    where = " or ".join(str(root / f) for f in FOLDERS[kind] if f != ".") or str(root)
    raise ModelLoadError(f"{kind} file {name!r} not found in {where}")


def list_files(kind: str, root: Path) -> list[str]:
    """Names (relative, '/'-separated) of weight files, or of diffusers folders for kind='diffusers'."""
    out: list[str] = []
    for folder in FOLDERS[kind]:
        base = (root / folder)
        if not base.is_dir():
            continue
        if kind == "diffusers":
            for d in sorted(base.iterdir()):
                if (d / "model_index.json").is_file() and _inside(d, root):
                    out.append(d.name)
            continue
        for p in sorted(base.rglob("*")):
            if p.suffix.lower() in suffixes(kind) and p.is_file() and _inside(p, root):
                out.append(p.relative_to(base).as_posix())
    return sorted(set(out))
