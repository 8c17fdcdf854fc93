"""Inside ComfyUI: the example workflows' reference images, provided in ComfyUI's input folder.

The examples' LoadImage nodes name `flux2_examples/flux2_ref_N.png`; on load the pack copies its
`workflows/flux2_examples/` files into `<input>/flux2_examples/` (its own subfolder, as ComfyUI's own
`pasted/` and `clipspace/` are), so a template opens and queues without copying by hand. A file
already there is never replaced, whoever wrote it.
"""
from __future__ import annotations

import logging
from pathlib import Path

log = logging.getLogger("comfyui_flux2")

EXAMPLE_IMAGES = "flux2_examples"
SOURCE = Path(__file__).resolve().parents[1] / "workflows" / EXAMPLE_IMAGES


def provide_example_images(input_dir: Path | None = None) -> list[Path]:
    """Copy missing example images into input_dir/flux2_examples (default: ComfyUI's input folder);
    returns the files written. Outside ComfyUI, without an input_dir, it does nothing."""
    if input_dir is None:
        try:
            import folder_paths  # ComfyUI only
        except ImportError:
            return []
        input_dir = Path(folder_paths.get_input_directory())
    target = Path(input_dir) / EXAMPLE_IMAGES
    written = []
    for source in sorted(SOURCE.glob("*.png")):
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
