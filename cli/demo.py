"""`comfyui-flux2 demo`: an offline tour against loopback Runware and BFL servers (FLUX.2, then FLUX 3 Image and
FLUX 3.1 Image), or (--local) a tiny local model."""
from __future__ import annotations

import os
import sys
from pathlib import Path

from .run import run_workflow

WORKFLOWS = Path(__file__).resolve().parents[1] / "workflows"
TOUR = ("flux2_text_to_image.json", "flux2_multi_reference_edit.json", "flux2_local_references_edit.json",
        "flux2_chain_edit.json")
FLUX3_TOUR = ("flux3_text_to_image.json", "flux3_1_masked_edit.json", "flux3_layout.json")


def add_parser(sub) -> None:
    demo = sub.add_parser("demo", help="offline tour against loopback Runware and BFL servers (FLUX.2, FLUX 3)")
    demo.add_argument("--output-dir", default="output", help="where the demo's images go (default: ./output)")
    demo.add_argument("--local", action="store_true",
                      help="run a tiny random local model instead of the loopback provider (CPU, seconds)")
    demo.add_argument("--models-dir", default=None,
                      help="with --local: where to write the tiny weights (default OUTPUT/flux2-tiny-models)")
    demo.set_defaults(handler=command)


def command(args) -> int:
    """Offline tour: a loopback Runware server stands in for the provider (no key, no network);
    with --local, a tiny random FLUX.2 [klein] runs through the local engine on the CPU instead."""
    if args.local:
        from ..demo import run_local_demo
        models = Path(args.models_dir) if args.models_dir else Path(args.output_dir) / "flux2-tiny-models"
        print(f"tiny random FLUX.2 [klein] weights in {models} (random weights: the pictures are noise; "
              "the point is the local path end to end)", file=sys.stderr)
        for path in run_local_demo(Path(args.output_dir), models):
            print(f"saved {path}")
        return 0
    from ..loopback.runware_server import RunwareLoopback

    with RunwareLoopback(api_key="demo-key") as server:
        os.environ["RUNWARE_API_URL"] = server.api_url
        os.environ["RUNWARE_API_KEY"] = "demo-key"
        print(f"loopback Runware server on {server.api_url} (the demo never leaves this machine)", file=sys.stderr)
        tour(TOUR, Path(args.output_dir))
    demo_flux3(Path(args.output_dir))
    return 0


def demo_flux3(output_dir: Path) -> None:
    """FLUX 3 Image and FLUX 3.1 Image against a loopback BFL server speaking their closed schemas."""
    from ..loopback.bfl_server import BflLoopback

    with BflLoopback(api_key="demo-key") as server:
        os.environ["BFL_API_URL"] = server.api_url
        os.environ["BFL_API_KEY"] = "demo-key"
        print(f"\nloopback BFL server on {server.api_url} (FLUX 3 Image / FLUX 3.1 Image)", file=sys.stderr)
        tour(FLUX3_TOUR, output_dir)


def tour(names, output_dir: Path) -> None:
    """Each example workflow as a user would try it: a dry run (nothing sent), then the run."""
    for name in names:
        print(f"\n== {name} (dry run, then run)", file=sys.stderr)
        run_workflow(WORKFLOWS / name, output_dir=output_dir, dry_run=True, quiet=True)
        run_workflow(WORKFLOWS / name, output_dir=output_dir)
