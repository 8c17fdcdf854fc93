"""Batch benchmark (nothing leaves 127.0.0.1; measures, asserts nothing).

1. Remote: N items against the loopback Runware server taking T s per task, concurrency C: throughput as a
   fraction of the ideal (C / T items per second), beside the peer - a raw httpx script doing the same
   requests, downloads and PNG saves - against the same server, alternating; the driver's CPU per item (the
   server runs in its own process, so it is not counted) and the driver's peak RSS.
2. Local: the tiny random demo model, M items in this process vs on 2 Ray actors (needs the ray extra).

    comfyui-flux2 benchmark batch [--items 500] [--task-s 0.5] [--concurrency 8] [--repeat 3] [--local-items 12]
                                 [--no-ray]
"""
from __future__ import annotations

import argparse
import io
import json
import multiprocessing
import os
import resource
import statistics
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


def ours(url: str, items: int, concurrency: int, tag: str) -> dict:
    """The pack's batch runner: N rows of the workflow above (dry run first, then the run)."""
    from ..nodes.registry import node_registry
    from ..runner.batch import Batch

    os.environ.update(RUNWARE_API_URL=url, RUNWARE_API_KEY=KEY)
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["FLUX2_CACHE_DIR"] = str(Path(tmp) / "cache")
        rows = [{"2.prompt": f"bench {tag} item {i}"} for i in range(items)]   # new prompts: no cache hits
        batch = Batch(_workflow(Path(tmp)), registry=node_registry, output_dir=Path(tmp) / "out", rows=rows,
                      concurrency=concurrency)
        t0, c0 = time.perf_counter(), time.process_time()
        plan = batch.prepare()
        t1, c1 = time.perf_counter(), time.process_time()
        statuses = [r.status for r in batch.run()]
        t2, c2 = time.perf_counter(), time.process_time()
    return {"ok": statuses.count("ok"), "planned": len(plan.items), "run_s": t2 - t1,
            "plan_ms_per_item": 1000 * (t1 - t0) / items, "plan_cpu_ms_per_item": 1000 * (c1 - c0) / items,
            "driver_cpu_ms_per_item": 1000 * (c2 - c1) / items}


def raw_httpx(url: str, items: int, concurrency: int, tag: str) -> dict:
    """The peer: what a hand-written script does with httpx alone - `concurrency` threads, each POSTing one
    documented imageInference task, GETting its imageURL, decoding it and saving a PNG (ComfyUI's compress
    level), then taking the next row. No dry run, cache, budget, manifest or lost-answer recovery."""
    import queue
    import threading
    import uuid

    import httpx
    from PIL import Image

    todo: queue.Queue = queue.Queue()
    for i in range(items):
        todo.put(i)
    ok = []
    with tempfile.TemporaryDirectory() as tmp, \
            httpx.Client(headers={"Authorization": f"Bearer {KEY}"}, timeout=60) as client:
        def worker() -> None:
            while True:
                try:
                    i = todo.get_nowait()
                except queue.Empty:
                    return
                task = {"taskType": "imageInference", "taskUUID": str(uuid.uuid4()), "model": "bfl:5@1",
                        "positivePrompt": f"bench {tag} item {i}", "width": 256, "height": 256, "seed": 1,
                        "outputFormat": "PNG", "includeCost": True,
                        "providerSettings": {"bfl": {"promptUpsampling": False, "safetyTolerance": 2}}}
                answer = client.post(url, json=[task])
                answer.raise_for_status()
                picture = client.get(answer.json()["data"][0]["imageURL"])
                picture.raise_for_status()
                Image.open(io.BytesIO(picture.content)).convert("RGB").save(
                    Path(tmp) / f"{i}.png", compress_level=4)
                ok.append(i)

        t0 = time.perf_counter()
        threads = [threading.Thread(target=worker) for _ in range(concurrency)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return {"ok": len(ok), "run_s": time.perf_counter() - t0}


def remote(items: int, task_s: float, concurrency: int, repeat: int = 1) -> dict:
    """Ours and the raw-httpx peer against one loopback server process, alternating, `repeat` times each;
    the medians of each and of the paired ratios."""
    ctx = multiprocessing.get_context("spawn")
    port_out = ctx.Queue()
    server = ctx.Process(target=_serve, args=(task_s, port_out), daemon=True)
    server.start()
    runs: dict[str, list] = {"ours": [], "peer": []}
    try:
        url = port_out.get(timeout=60)
        for k in range(repeat):
            # Alternate which goes first: a slow start of the machine or server must not favour one side.
            for side in (("ours", "peer") if k % 2 == 0 else ("peer", "ours")):
                runs[side].append((ours if side == "ours" else raw_httpx)(url, items, concurrency, f"{side}{k}"))
    finally:
        server.terminate()
    ideal = concurrency / task_s
    for side in runs.values():
        for r in side:
            r["fraction"] = items / r["run_s"] / ideal
    med = statistics.median
    return {"items": items, "ideal": ideal, "repeat": repeat, "runs": runs,
            "ours": med(r["fraction"] for r in runs["ours"]), "peer": med(r["fraction"] for r in runs["peer"]),
            "ratio": med(p["run_s"] / o["run_s"] for o, p in zip(runs["ours"], runs["peer"])),
            "ok": min(r["ok"] for r in runs["ours"]), "peer_ok": min(r["ok"] for r in runs["peer"]),
            "driver_cpu_ms_per_item": med(r["driver_cpu_ms_per_item"] for r in runs["ours"]),
            "plan_ms_per_item": med(r["plan_ms_per_item"] for r in runs["ours"]),
            "plan_cpu_ms_per_item": med(r["plan_cpu_ms_per_item"] for r in runs["ours"]),
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
    parser.add_argument("--repeat", type=int, default=3, help="runs of ours and of the raw-httpx peer, alternating")
    parser.add_argument("--local-items", type=int, default=12, help="tiny-model items (0: skip the local rows)")
    parser.add_argument("--no-ray", action="store_true", help="local rows in this process only")
    args = parser.parse_args(argv)
    r = remote(args.items, args.task_s, args.concurrency, args.repeat)
    runs = f"median of {args.repeat}, " if args.repeat > 1 else ""
    times = {side: " · ".join(f"{x['run_s']:.2f} s" for x in r["runs"][side]) for side in ("ours", "peer")}
    print(f"remote: {r['items']} items on loopback Runware, {args.task_s:g} s per task, concurrency {args.concurrency}, "
          f"ideal {r['ideal']:.2f} items/s ({runs}alternating with the peer)")
    print(f"  ours ({r['ok']}/{r['items']} ok): {times['ours']} "
          f"-> {r['ours']:.3f} of ideal (goal >= 0.95)")
    print(f"  raw httpx peer ({r['peer_ok']}/{r['items']} ok): "
          f"{times['peer']} -> {r['peer']:.3f} of ideal")
    print(f"  ours / peer throughput: {r['ratio']:.3f}")
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
