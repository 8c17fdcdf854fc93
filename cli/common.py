"""What several commands print or read the same way: one-line errors, progress, the budget cap, paid images."""
from __future__ import annotations

import sys
from pathlib import Path


def err(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)


def progress_printer(stream=sys.stderr):
    last = {}

    def progress(node: str, done: float, total: float, message: str) -> None:
        key = (node, message)
        if last.get(node) == key and done < total:
            return
        last[node] = key
        pct = int(100 * done / total) if total else 0
        print(f"  [node {node}] {pct:3d}% {message}".rstrip(), file=stream, flush=True)
    return progress


def node_registry() -> dict:
    """What a headless run executes (nodes/registry.py); named here too, as the batch API's docs show it."""
    from ..nodes.registry import node_registry as registry
    return registry()


def budget_cap(budget, allow_unpriced: bool = False):
    """--budget wins over FLUX2_BUDGET_USD; both are validated (finite, >= 0) by flux2.budget."""
    from ..flux2.budget import Cap, allow_unpriced_from_env, cap_from_env, parse_usd
    allow = allow_unpriced or allow_unpriced_from_env()
    if budget is not None:
        return Cap(parse_usd(budget, "--budget"), "the budget cap", allow)
    cap = cap_from_env("the budget cap")
    return Cap(cap.usd, cap.name, allow) if cap else None


def keep_paid(pending: list, executor, output_dir: Path, out) -> None:
    from ..runner.executor import save_unsaved_results
    kept = save_unsaved_results([(q, r) for q, r in list(pending) if not executor.saved_by_graph(q.node_id)],
                                output_dir)
    if kept:
        print(f"kept {len(kept)} paid image(s) the graph did not save: {kept[0].parent}", file=out)


def keep_unkept(pending: list, executor, output_dir: Path, out) -> None:
    """After a run that succeeded: paid images that reach no SaveImage (a generation node feeding only
    PreviewImage) are kept in flux2-unsaved/, with one line saying so (headless, a preview shows nothing)."""
    from ..runner.executor import save_unsaved_results
    unkept = [(q, r) for q, r in list(pending) if not executor.reaches_save(q.node_id)]
    kept = save_unsaved_results(unkept, output_dir)
    if kept:
        nodes = ", ".join(dict.fromkeys(str(q.node_id) for q, _ in unkept))
        print(f"kept {len(kept)} paid image(s) that no SaveImage keeps (node {nodes}): {kept[0].parent}", file=out)


def whole_number(text: str) -> int:
    """argparse type for counts: plain digits, maybe signed (int() also reads "1_0" as 10, and
    non-ASCII digits); the range is checked where the count is used."""
    import argparse
    import re
    if not re.fullmatch(r"-?[0-9]+", str(text).strip()):
        raise argparse.ArgumentTypeError(f"expected a whole number, got {str(text)[:20]!r}")
    return int(text)


def may_be_billed(error: BaseException | None) -> list[str]:
    """Provider tasks that were sent and not answered, so may still be billed: the provider clients name
    them on the error they raise (`maybe_billed`: Runware taskUUIDs, BFL task ids / polling URLs)."""
    return [str(task) for task in getattr(error, "maybe_billed", None) or ()]


def set_models_dir(args) -> None:
    """--models-dir: the local weights folder, for this process (the engine reads FLUX2_MODELS_DIR)."""
    import os
    if getattr(args, "models_dir", None):
        os.environ["FLUX2_MODELS_DIR"] = str(args.models_dir)
