"""Inside ComfyUI: the example workflows' reference images, provided in ComfyUI's input folder.

The examples' LoadImage nodes name `flux2_example_ref_N.png`, files that lie beside the workflows in
`workflows/`. On load the pack copies them to the top of ComfyUI's input folder, so a template opens
and queues without copying by hand. They go to the top, not to a subfolder of the pack's own, because
core LoadImage offers only the input folder's own files and newer frontends (1.58 with Nodes 2.0) flag
a value missing from that list as "Select image…". The names carry the pack's prefix, and a file
already there is never replaced, whoever wrote it.
"""
from __future__ import annotations

import logging
from pathlib import Path

log = logging.getLogger("comfyui_flux2")

EXAMPLE_IMAGES = "flux2_example_ref_*.png"
SOURCE = Path(__file__).resolve().parents[1] / "workflows"


def provide_example_images(input_dir: Path | None = None) -> list[Path]:
    """Copy missing example images into input_dir (default: ComfyUI's input folder); returns the files
    written. Outside ComfyUI, without an input_dir, it does nothing."""
    if input_dir is None:
        from .comfy_hooks import input_directory

        input_dir = input_directory()
        if input_dir is None:
            return []
    target = Path(input_dir)
    written = []
    for source in sorted(SOURCE.glob(EXAMPLE_IMAGES)):
        destination = target / source.name
        if destination.exists() or destination.is_symlink():
            continue
        try:
            target.mkdir(parents=True, exist_ok=True)
            with open(destination, "xb") as fh:          # "x": a file that appeared meanwhile is kept
                fh.write(source.read_bytes())
        except FileExistsError:
            continue
        except OSError as exc:
            log.warning("FLUX.2 examples: cannot provide %s in %s (%s)", source.name, target, exc.strerror)
            return written
        written.append(destination)
    if written:
        log.info("FLUX.2 examples: copied %d reference image(s) to %s", len(written), target)
    return written
