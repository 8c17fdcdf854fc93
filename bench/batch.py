"""Batch benchmark (nothing leaves 127.0.0.1; measures, asserts nothing).

1. Remote: N items against the loopback Runware server taking T s per task, concurrency C: throughput as a
   fraction of the ideal (C / T items per second), the driver's CPU per item (the server runs in its own
   process, so it is not counted) and the driver's peak RSS.
2. Local: the tiny random demo model, M items in this process vs on 2 Ray actors (needs the ray extra).

    comfyui-flux2 benchmark batch [--items 500] [--task-s 0.5] [--concurrency 8] [--local-items 12] [--no-ray]
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import resource
import tempfile
import time
from pathlib import Path

KEY = "bench-key"


def _serve(task_s: float, port_out) -> None:
    from ..loopback.runware_server import RunwareLoopback
    server = RunwareLoopback(api_key=KEY, task_s=task_s).start()
    port_out.put(server.api_url)
    while True:
        time.sleep(3600)


def _workflow(folder: Path) -> Path:
    prompt = {
        "1": {"class_type": "Flux2RemoteBackend", "inputs": {
            "provider": "runware", "model": "FLUX.2 [pro]", "prompt_upsampling": False, "safety_tolerance": 2,
            "output_format": "PNG", "output_quality": 95, "steps": 0, "guidance": 0.0, "on_moderation": "error"}},
        "2": {"class_type": "Flux2TextToImage", "inputs": {"backend": ["1", 0], "prompt": "x", "width": 256,
                                                           "height": 256, "seed": 1, "batch_size": 1}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "bench"}},
    }
    path = folder / "remote.json"
    path.write_text(json.dumps(prompt))
    return path


def remote(items: int, task_s: float, concurrency: int) -> dict:
    from ..nodes.registry import node_registry
    from ..runner.batch import Batch

    ctx = multiprocessing.get_context("spawn")
    port_out = ctx.Queue()
    server = ctx.Process(target=_serve, args=(task_s, port_out), daemon=True)
    server.start()
    try:
        url = port_out.get(timeout=60)
        os.environ.update(RUNWARE_API_URL=url, RUNWARE_API_KEY=KEY)
        with tempfile.TemporaryDirectory() as tmp:
            os.environ["FLUX2_CACHE_DIR"] = str(Path(tmp) / "cache")
            rows = [{"2.prompt": f"bench item {i}"} for i in range(items)]
            batch = Batch(_workflow(Path(tmp)), registry=node_registry, output_dir=Path(tmp) / "out", rows=rows,
                          concurrency=concurrency)
            t0, c0 = time.perf_counter(), time.process_time()
            plan = batch.prepare()
            t1, c1 = time.perf_counter(), time.process_time()
            statuses = [r.status for r in batch.run()]
            t2, c2 = time.perf_counter(), time.process_time()
    finally:
        server.terminate()
    ideal = concurrency / task_s
    return {"items": items, "ok": statuses.count("ok"), "planned": len(plan.items),
            "plan_ms_per_item": 1000 * (t1 - t0) / items, "run_s": t2 - t1, "throughput": items / (t2 - t1),
            "ideal": ideal, "fraction": items / (t2 - t1) / ideal,
            "driver_cpu_ms_per_item": 1000 * (c2 - c1) / items, "plan_cpu_ms_per_item": 1000 * (c1 - c0) / items,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def local(items: int, use_ray: bool) -> dict:
    from ..demo import FILES, write_tiny_models
    from ..nodes.registry import node_registry
    from ..runner.batch import Batch

    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        models = write_tiny_models(Path(tmp) / "models")
        os.environ["FLUX2_MODELS_DIR"] = str(models)
        prompt = {
            "1": {"class_type": "Flux2LocalBackend", "inputs": {
                "model": "auto", "diffusion_model": FILES["diffusion_models"], "text_encoder": FILES["text_encoders"],
                "vae": FILES["vae"], "diffusers_folder": "(none)", "dtype": "fp32", "device": "cpu", "steps": 4,
                "guidance": 0.0, "offload": "none", "vae_tiling": "auto"}},
            "2": {"class_type": "Flux2TextToImage", "inputs": {"backend": ["1", 0], "prompt": "x", "width": 128,
                                                               "height": 128, "seed": 1, "batch_size": 1}},
            "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "tiny"}},
        }
        wf = Path(tmp) / "local.json"
        wf.write_text(json.dumps(prompt))
        rows = [{"2.prompt": f"tiny item {i}"} for i in range(items)]
        for executor in ("local", "ray") if use_ray else ("local",):
            batch = Batch(wf, registry=node_registry, output_dir=Path(tmp) / executor, rows=rows, executor=executor)
            batch.prepare()
            t0 = time.perf_counter()
            first = None
            for result in batch.run():
                first = first or time.perf_counter()
                assert result.status == "ok", result.outcome.error
            out[executor] = {"wall_s": time.perf_counter() - t0, "first_item_s": first - t0}
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="comfyui-flux2 benchmark batch")
    parser.add_argument("--items", type=int, default=500)
    parser.add_argument("--task-s", type=float, default=0.5, help="loopback server seconds per task")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--local-items", type=int, default=12, help="tiny-model items (0: skip the local rows)")
    parser.add_argument("--no-ray", action="store_true", help="local rows in this process only")
    args = parser.parse_args(argv)
    r = remote(args.items, args.task_s, args.concurrency)
    print(f"remote: {r['items']} items ({r['ok']} ok) on loopback Runware, {args.task_s:g} s per task, concurrency "
          f"{args.concurrency}: {r['run_s']:.1f} s = {r['throughput']:.2f} items/s of an ideal {r['ideal']:.2f} "
          f"-> {r['fraction']:.2f} (goal >= 0.95)")
    print(f"  driver CPU per item while running: {r['driver_cpu_ms_per_item']:.1f} ms; dry run before sending: "
          f"{r['plan_ms_per_item']:.1f} ms wall, {r['plan_cpu_ms_per_item']:.1f} ms CPU per item; "
          f"driver peak RSS {r['peak_rss_mb']:.0f} MB")
    if args.local_items:
        lo = local(args.local_items, not args.no_ray)
        print(f"local tiny model, {args.local_items} items of 128x128, 4 steps: in-process {lo['local']['wall_s']:.1f} s "
              f"(first item {lo['local']['first_item_s']:.1f} s)")
        if "ray" in lo:
            ray = lo["ray"]
            print(f"  2 Ray actors: {ray['wall_s']:.1f} s (first item {ray['first_item_s']:.1f} s: cluster, actors and "
                  f"model loads) -> speedup {lo['local']['wall_s'] / ray['wall_s']:.2f}x; after the first item "
                  f"{(ray['wall_s'] - ray['first_item_s']):.1f} s vs {(lo['local']['wall_s'] - lo['local']['first_item_s']):.1f} s")
    return 0
