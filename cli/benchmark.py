"""`comfyui-flux2 benchmark remote|local|load|batch|gpu [...]`: hands the rest of the arguments to bench/."""
from __future__ import annotations


def add_parser(sub) -> None:
    bench = sub.add_parser("benchmark", help="client overhead (remote), step time/memory (local) or pack load time (load)")
    bench.add_argument("target", choices=("remote", "local", "load", "batch", "gpu"),
                       help="remote: client overhead on loopback servers; local: transformer step time/memory; "
                            "load: the pack's import time; batch: batch throughput and Ray; gpu: the prepared run for a lent "
                            "GPU, writing docs/benchmarks-gpu.md (more options: comfyui-flux2 benchmark TARGET --help)")
    bench.set_defaults(handler=command, takes_rest=True)


def command(args) -> int:
    if args.target == "remote":
        from ..bench.remote import main as bench_main
    elif args.target == "load":
        from ..bench.load import main as bench_main
    elif args.target == "batch":
        from ..bench.batch import main as bench_main
    elif args.target == "gpu":
        from ..bench.gpu import main as bench_main
    else:
        from ..bench.local import main as bench_main
    return bench_main(args.rest)
