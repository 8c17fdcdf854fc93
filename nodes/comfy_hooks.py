"""The only place the node layer touches ComfyUI, imported lazily so nodes also run headless."""
from __future__ import annotations

from dataclasses import replace

from ..flux2.run_context import RunContext, current


def in_comfyui() -> bool:
    try:
        import comfy.utils  # noqa: F401
        import comfy.model_management  # noqa: F401
    except Exception:
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


def free_comfy_memory() -> None:
    """Inside ComfyUI, unload its cached models before our weights load (no-op elsewhere)."""
    if not in_comfyui():
        return
    import comfy.model_management as mm
    mm.unload_all_models()
    mm.soft_empty_cache()
