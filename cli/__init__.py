"""`comfyui-flux2`: run workflows headless, try the pack offline, benchmark.

    comfyui-flux2 run WORKFLOW.json [--output-dir DIR] [--input-dir DIR] [--dry-run] [--budget USD] [--allow-unpriced]
    comfyui-flux2 batch WORKFLOW.json --table ROWS.csv|ROWS.jsonl [--seeds A-B] [--budget USD] [--concurrency N] ...
    comfyui-flux2 demo [--output-dir DIR]          # offline: loopback Runware server + example workflows
    comfyui-flux2 models                           # models, limits, prices
    comfyui-flux2 serve-loopback runware|bfl [--port N]
    comfyui-flux2 benchmark remote|local|load|batch|gpu [...]

Exit status: 0 success, 1 a clear one-line error, 2 usage, 130 cancelled.

One module per command (run, batch, demo, models, serve, benchmark); app.py reads the arguments and turns
every error into one line and an exit status; interrupts.py is Ctrl-C.
"""
from .app import build_parser, main
from .common import node_registry

__all__ = ["build_parser", "main", "node_registry"]
