"""ComfyUI's services as the node layer uses them, each imported lazily so the nodes also run headless:
is ComfyUI there, progress bars and interrupt, freeing its memory, its model folders, its sampler names
and its web server. Besides this file only nodes/comfy_backend.py imports ComfyUI: it drives ComfyUI's
sampling API (comfy.sample, comfy.samplers, latent_preview, node_helpers) exactly as the core graph does.
"""
from __future__ import annotations

import logging
import sys
from dataclasses import replace
from pathlib import Path

from ..flux2.run_context import RunContext, current

log = logging.getLogger("comfyui_flux2")
DEFAULT_SAMPLERS = ["euler"]


def in_comfyui() -> bool:
    try:
        import comfy.utils  # noqa: F401
        import comfy.model_management  # noqa: F401
    except ImportError:      # headless: the answer, not a fault
        return False
    except Exception as exc:  # ComfyUI is there but broken: say so, then run as headless
        log.warning("ComfyUI's modules failed to import (%s: %s); running as headless", type(exc).__name__, exc)
        return False
    return True


def node_context() -> RunContext:
    """The run context for one node execution.

    Under the CLI runner the runner's context already carries progress/cancel hooks. Inside ComfyUI
    we add ProgressBar and interrupt checks, sharing the process-wide ledger and upload cache.
    """
    ctx = current()
    if ctx.progress is not None or not in_comfyui():
        return ctx
    import comfy.model_management as mm
    import comfy.utils

    bars: dict[str, object] = {}

    def progress(node: str, done: float, total: float, message: str) -> None:
        scale = 100
        bar = bars.get(node)
        if bar is None:
            bar = bars[node] = comfy.utils.ProgressBar(int(total * scale))
        bar.update_absolute(int(done * scale), int(total * scale))

    return replace(ctx, progress=progress, is_cancelled=mm.processing_interrupted)


def running_prompt_id() -> str | None:
    """The id of the queued prompt ComfyUI is executing (its queue worker sets it before each run), or None."""
    try:
        from server import PromptServer  # type: ignore  # ComfyUI only
    except ImportError:
        return None
    prompt_id = getattr(getattr(PromptServer, "instance", None), "last_prompt_id", None)
    return str(prompt_id) if prompt_id else None


def free_comfy_memory() -> None:
    """Inside ComfyUI, unload its cached models before our weights load (no-op elsewhere)."""
    if not in_comfyui():
        return
    import comfy.model_management as mm
    mm.unload_all_models()
    mm.soft_empty_cache()


def folder_paths():
    """ComfyUI's folder_paths module (its model folders), or None headless."""
    try:
        import folder_paths as fp  # type: ignore  # ComfyUI only
    except ImportError:
        return None
    return fp


def input_directory() -> Path | None:
    """ComfyUI's input folder (where LoadImage reads), or None headless."""
    fp = folder_paths()
    return Path(fp.get_input_directory()) if fp is not None else None


def sampler_names() -> list[str]:
    """ComfyUI's sampler names (KSamplerSelect's list); ['euler'] headless."""
    try:
        import comfy.samplers  # type: ignore  # ComfyUI only
    except ImportError:
        return DEFAULT_SAMPLERS
    return list(comfy.samplers.KSampler.SAMPLERS)


def prompt_server():
    """ComfyUI's PromptServer instance, or None outside a ComfyUI server process.

    main.py imports ``server`` before it loads custom nodes; outside ComfyUI we import nothing (a
    random top-level ``server`` module of another program must not be touched)."""
    if "comfy" not in sys.modules and "server" not in sys.modules:
        return None
    try:
        from server import PromptServer  # type: ignore[import-not-found]
    except ImportError as exc:      # e.g. comfy imported by a script, with no server: no routes to add
        log.debug("no ComfyUI server to add the editor routes to: %s", exc)
        return None
    return getattr(PromptServer, "instance", None)
