"""Stand-ins for ComfyUI core's LoadImage / SaveImage / PreviewImage, for the headless runner.

Same class names, inputs and widget order as core, so a workflow saved in ComfyUI runs unchanged.
Every path stays inside its folder: names from a workflow cannot climb out with '..' or '/'.
"""
from __future__ import annotations

import contextvars
import glob
import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path, PureWindowsPath

from PIL.PngImagePlugin import PngInfo

from ..flux2.errors import InputError
from ..flux2.images import arrays_to_tensor, encode, load_image_file, tensor_to_arrays

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")


MAX_NAME_BYTES = 200        # per path part; leaves room for "_00001_.png" within a 255-byte file name


def _check_name_text(name, what: str) -> str:
    if not isinstance(name, str) or not name.strip():
        raise InputError(f"{what}: a file name is required, got {str(name)[:40]!r}")
    if any(ord(c) < 32 or ord(c) == 127 for c in name):
        raise InputError(f"{what}: {name[:40]!r} contains control characters")
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        raise InputError(f"{what}: {name[:40]!r} cannot be encoded as a file name") from None
    return name


def safe_join(root: Path, name: str, what: str) -> Path:
    """root/name, refusing anything that would resolve outside root (absolute paths, '..', symlinks)."""
    _check_name_text(name, what)
    root = root.resolve()
    candidate = Path(name)
    if candidate.is_absolute() or candidate.drive or name.startswith(("/", "\\")):
        raise InputError(f"{what}: {name!r} must be a name inside the folder, not an absolute path")
    path = (root / candidate).resolve()
    if path != root and root not in path.parents:
        raise InputError(f"{what}: {name!r} points outside its folder")
    return path


def save_target(root: Path, prefix: str, what: str = "SaveImage filename_prefix") -> Path:
    """Where SaveImage writes `<prefix>_00001_.png`: strictly inside root, every part a real name.

    Like ComfyUI a prefix may name subfolders ("flux2/cat"); unlike a plain join, ".", ".." and empty
    parts are refused, so "." or "flux2/.." cannot write next to the output folder instead of into it.
    """
    _check_name_text(prefix, what)
    parts = prefix.replace("\\", "/").split("/")
    # Windows forms too ("C:\\x", "C:x"), so a workflow cannot name a drive on any system.
    if prefix.startswith(("/", "\\")) or Path(prefix).is_absolute() or PureWindowsPath(prefix).drive:
        raise InputError(f"{what}: {prefix!r} must be a name inside the folder, not an absolute path")
    if ".." in parts:
        raise InputError(f"{what}: {prefix!r} points outside its folder ('..' is not allowed)")
    if any(p in ("", ".") or not p.strip() for p in parts):
        raise InputError(f"{what}: {prefix!r} has an empty or '.' part; give a name like 'flux2/cat'")
    long = [p for p in parts if len(p.encode("utf-8")) > MAX_NAME_BYTES]
    if long:
        raise InputError(f"{what}: a name part is {len(long[0].encode('utf-8'))} bytes long; "
                         f"at most {MAX_NAME_BYTES} (file systems cap a name at 255)")
    target = safe_join(root, prefix, what)
    if target == root.resolve():          # e.g. a symlink inside the folder that points at the folder
        raise InputError(f"{what}: {prefix!r} points outside its folder")
    return target


def check_output_folder(folder: Path, what: str) -> None:
    """Before any paid call: `folder` is a folder this process can write in, or one it can create.

    The nearest part of the path that exists must be a folder, and a file can be made in it (tried with a
    temporary file that is removed at once: permission bits say nothing for root, nor for a read-only
    or virtual file system such as /proc). Nothing is created otherwise, so a dry run leaves no trace."""
    folder = Path(folder)
    probe = folder
    while not probe.exists():
        if probe.is_symlink():
            raise InputError(f"{what} {folder}: {probe} is a broken symbolic link")
        if probe.parent == probe:
            break
        probe = probe.parent
    if not probe.is_dir():
        where = "is a file, not a folder" if probe == folder else f"cannot be made: {probe} is a file"
        raise InputError(f"{what} {folder} {where}")
    try:
        fd, name = tempfile.mkstemp(prefix=".flux2-write-check-", dir=probe)
        os.close(fd)
        os.unlink(name)
        if probe != folder:           # the first folder to create: can it be made here?
            test = Path(tempfile.mkdtemp(prefix=".flux2-write-check-", dir=probe))
            test.rmdir()
    except OSError as exc:
        raise InputError(f"{what} {folder} cannot be written"
                         + (f" ({probe}: {exc.strerror})" if exc.strerror else "")) from None


@dataclass
class RunFolders:
    """Where LoadImage reads and SaveImage writes during one run, and what it wrote."""

    input_dir: Path = Path(".")
    more_input_dirs: tuple[Path, ...] = ()   # searched after input_dir (the UI files' folder for api/ files)
    output_dir: Path = Path("output")
    save: bool = True                  # False in dry runs
    prompt_json: dict | None = None    # the graph, embedded in saved PNGs as ComfyUI does
    workflow_json: dict | None = None
    saved: list[Path] = field(default_factory=list)


# Node classes are instantiated without arguments (as ComfyUI does), so the run's folders reach them
# through a context variable that the executor sets for the duration of a run.
_folders: contextvars.ContextVar[RunFolders] = contextvars.ContextVar("flux2_run_folders", default=RunFolders())


def current_folders() -> RunFolders:
    return _folders.get()


def using_folders(folders: RunFolders):
    return _folders.set(folders)


def reset_folders(token) -> None:
    _folders.reset(token)


class LoadImage:
    CATEGORY = "image"
    RETURN_TYPES = ("IMAGE", "MASK")
    FUNCTION = "load_image"

    @classmethod
    def INPUT_TYPES(cls):
        # Core offers a list of the input folder's files; headless, a name is checked when it is loaded.
        return {"required": {"image": ("STRING", {"image_upload": True})}}

    def load_image(self, image, upload=None):
        folders = current_folders()
        roots = (folders.input_dir, *folders.more_input_dirs)
        path = next((p for p in (safe_join(r, image, "LoadImage") for r in roots) if p.is_file()), None)
        if path is None:
            raise InputError(f"LoadImage: {image!r} not found in {' or '.join(str(r) for r in roots)}")
        array = load_image_file(path, f"LoadImage {image!r}")
        tensor = arrays_to_tensor([array])                      # [1, H, W, 3]
        mask = tensor.new_zeros(tensor.shape[:3])               # [1, H, W]
        return (tensor, mask)


class LoadImageMask:
    """Core's LoadImageMask: one channel of an image file as a MASK [1, H, W]; for `alpha`, transparent = 1
    (core inverts alpha), as ComfyUI 0.3.75 does."""
    CATEGORY = "mask"
    RETURN_TYPES = ("MASK",)
    FUNCTION = "load_image"
    CHANNELS = ("alpha", "red", "green", "blue")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"image": ("STRING", {"image_upload": True}), "channel": (list(cls.CHANNELS),)}}

    def load_image(self, image, channel, upload=None):
        import numpy as np
        import torch
        from PIL import Image

        folders = current_folders()
        roots = (folders.input_dir, *folders.more_input_dirs)
        path = next((p for p in (safe_join(r, image, "LoadImageMask") for r in roots) if p.is_file()), None)
        if path is None:
            raise InputError(f"LoadImageMask: {image!r} not found in {' or '.join(str(r) for r in roots)}")
        if channel not in self.CHANNELS:
            raise InputError(f"LoadImageMask: channel must be one of {', '.join(self.CHANNELS)}")
        load_image_file(path, f"LoadImageMask {image!r}")          # the same checks as every image
        with Image.open(path) as img:
            rgba = np.asarray(img.convert("RGBA"), dtype=np.float32) / 255.0   # [H, W, 4]
        mask = rgba[..., self.CHANNELS.index(channel) - 1 if channel != "alpha" else 3]
        if channel == "alpha":
            mask = 1.0 - mask
        return (torch.from_numpy(np.ascontiguousarray(mask))[None],)        # [1, H, W]


class SaveImage:
    CATEGORY = "image"
    RETURN_TYPES = ()
    FUNCTION = "save_images"
    OUTPUT_NODE = True

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"images": ("IMAGE",), "filename_prefix": ("STRING", {"default": "ComfyUI"})}}

    def save_images(self, images, filename_prefix="ComfyUI"):
        arrays = tensor_to_arrays(images)
        folders = current_folders()
        # Checked in the dry run too, so a bad prefix fails before the first paid call of the graph.
        target = save_target(folders.output_dir, filename_prefix)
        if not folders.save:
            if target.parent != Path(folders.output_dir).resolve():     # a subfolder the prefix names
                check_output_folder(target.parent, f"SaveImage filename_prefix {filename_prefix!r}:")
            return {"ui": {"images": []}}
        target.parent.mkdir(parents=True, exist_ok=True)
        counter = _next_counter(target)
        meta = PngInfo()
        # Like ComfyUI: the graph travels in the PNG so it can be dragged back in. Both come from the
        # workflow file, which by construction holds no key.
        if folders.prompt_json is not None:
            meta.add_text("prompt", json.dumps(folders.prompt_json))
        if folders.workflow_json is not None:
            meta.add_text("workflow", json.dumps(folders.workflow_json))
        expanded = _expanded_prompts()
        if expanded:
            # FLUX 3 rewrites every prompt before generating: what it actually drew from, per node.
            meta.add_text("flux3_expanded_prompts", json.dumps(expanded))
        results = []
        for array in arrays:
            path, counter = write_new(lambda n: target.parent / f"{target.name}_{n:05}_.png", counter,
                                      encode(array, "PNG", pnginfo=meta))
            counter += 1
            folders.saved.append(path)
            results.append({"filename": path.name, "subfolder": str(path.parent), "type": "output"})
        return {"ui": {"images": results}}


def _expanded_prompts() -> dict:
    from ..flux2.run_context import current
    return dict(current().expanded_prompts)


class PreviewImage(SaveImage):
    """Headless there is no preview pane: the images are checked, not written."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"images": ("IMAGE",)}}

    def save_images(self, images, filename_prefix=None):
        tensor_to_arrays(images)
        return {"ui": {"images": []}}


def write_new(path_for, start: int, data: bytes, same_is_kept: bool = False) -> tuple[Path, int]:
    """Write `data` to `path_for(n)` for the first n >= start where no file is yet, never over one: another
    run saving into the same folder at the same moment has counted the same numbers as free (open "xb" is
    atomic, so one of the two writers takes the next). `same_is_kept`: a file there with exactly these bytes
    is this image, kept already (returned, not written again). Returns the path and its n."""
    n = start
    while True:
        path = path_for(n)
        try:
            with open(path, "xb") as f:
                f.write(data)
            return path, n
        except FileExistsError:
            if same_is_kept and path.is_file() and path.stat().st_size == len(data) and path.read_bytes() == data:
                return path, n
            n += 1


def _next_counter(target: Path) -> int:
    highest = 0
    if target.parent.is_dir():
        for p in target.parent.glob(f"{glob.escape(target.name)}_*_.png"):
            digits = p.name[len(target.name) + 1:-5]
            if digits.isdigit():
                highest = max(highest, int(digits))
    return highest + 1


CORE_NODES = {"LoadImage": LoadImage, "LoadImageMask": LoadImageMask, "SaveImage": SaveImage,
              "PreviewImage": PreviewImage}


def headless_registry(pack_nodes: dict) -> dict:
    """What a headless run can execute: the given pack's node classes plus these core stand-ins."""
    return {**CORE_NODES, **pack_nodes}
