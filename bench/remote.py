"""Client benchmark against the loopback Runware server (nothing leaves 127.0.0.1).

1. Per-request overhead: our backend (validate, build task, POST, download, decode) versus raw httpx
   doing the same two HTTP calls and the same PNG decode, on the same server, interleaved.
2. Batch: 8 images versus 1 when the server takes a constant time per task.
3. Reference upload de-duplication across a chain that reuses its references.

    comfyui-flux2 benchmark remote [--requests 200] [--task-delay 0.25]
"""
from __future__ import annotations

import argparse
import io
import os
import statistics
import time
import uuid

import httpx
import numpy as np
from PIL import Image

from ..flux2.backend import GenerationRequest, run
from ..flux2.images import ref_from_array
from ..flux2.remote.runware import RunwareBackend
from ..flux2.run_context import RunContext
from ..loopback.runware_server import RunwareLoopback

KEY = "bench-key"


def raw_httpx_call(client: httpx.Client, url: str, size: int) -> None:
    task = {"taskType": "imageInference", "taskUUID": str(uuid.uuid4()), "model": "bfl:5@1",
            "positivePrompt": "bench", "width": size, "height": size, "seed": 1, "numberResults": 1,
            "outputType": "URL", "outputFormat": "PNG", "includeCost": True, "deliveryMethod": "sync"}
    body = client.post(url, json=[task], headers={"Authorization": f"Bearer {KEY}"}).json()
    png = client.get(body["data"][0]["imageURL"]).content
    with Image.open(io.BytesIO(png)) as img:
        np.asarray(img.convert("RGB"))


def measure_overhead(server: RunwareLoopback, n: int, size: int) -> tuple[list[float], list[float]]:
    backend = RunwareBackend("FLUX.2 [pro]")
    ctx = RunContext()
    ours, raw = [], []
    with httpx.Client() as client:
        for i in range(n + 5):
            t0 = time.perf_counter()
            raw_httpx_call(client, server.api_url, size)
            t1 = time.perf_counter()
            run(backend, GenerationRequest("bench", size, size, 1 + i), ctx)
            t2 = time.perf_counter()
            if i >= 5:              # warm-up: connection set-up, imports
                raw.append(t1 - t0)
                ours.append(t2 - t1)
    return ours, raw


def measure_batch(server: RunwareLoopback, delay: float) -> tuple[float, float]:
    handler = server.httpd.RequestHandlerClass
    original = handler.image_inference

    def slow(self, task, fault):
        time.sleep(delay)
        return original(self, task, fault)

    handler.image_inference = slow
    try:
        backend = RunwareBackend("FLUX.2 [pro]")
        t0 = time.perf_counter()
        run(backend, GenerationRequest("batch", 256, 256, 1, batch=1), RunContext())
        one = time.perf_counter() - t0
        t0 = time.perf_counter()
        run(backend, GenerationRequest("batch", 256, 256, 100, batch=8), RunContext())
        eight = time.perf_counter() - t0
    finally:
        handler.image_inference = original
    return one, eight


def measure_uploads(server: RunwareLoopback) -> tuple[int, int]:
    rng = np.random.default_rng(0)
    refs = [ref_from_array(rng.integers(0, 255, (512, 512, 3), dtype=np.uint8)) for _ in range(3)]
    backend = RunwareBackend("FLUX.2 [pro]")
    ctx = RunContext()
    before = len(server.tasks("imageUpload"))
    for step in range(4):   # a 4-step chain that keeps the same three references
        run(backend, GenerationRequest(f"step {step}", 512, 512, step, references=tuple(refs)), ctx)
    return 4 * len(refs), len(server.tasks("imageUpload")) - before


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="comfyui-flux2 benchmark remote")
    parser.add_argument("--requests", type=int, default=100)
    parser.add_argument("--size", type=int, default=256, help="image side in pixels")
    parser.add_argument("--task-delay", type=float, default=0.25, help="server seconds per task (batch test)")
    args = parser.parse_args(argv)
    os.environ.setdefault("FLUX2_RESULT_CACHE", "0")
    with RunwareLoopback(api_key=KEY) as server:
        os.environ["RUNWARE_API_URL"] = server.api_url
        os.environ["RUNWARE_API_KEY"] = KEY
        ours, raw = measure_overhead(server, args.requests, args.size)
        one, eight = measure_batch(server, args.task_delay)
        naive, sent = measure_uploads(server)
    med_ours, med_raw = statistics.median(ours), statistics.median(raw)
    print(f"loopback Runware, {args.requests} requests of {args.size}x{args.size} PNG (median):")
    print(f"  raw httpx (POST + GET + decode): {med_raw * 1000:7.2f} ms")
    print(f"  comfyui-flux2 backend          : {med_ours * 1000:7.2f} ms")
    print(f"  overhead                       : {(med_ours - med_raw) * 1000:+7.2f} ms per request "
          f"(ratio {med_ours / med_raw:.2f}x; goal <= +5 ms)")
    print(f"batch, server {args.task_delay:.2f} s per task: 1 image {one:.2f} s, 8 images {eight:.2f} s "
          f"-> {eight / one:.2f}x (goal <= 1.5x; FLUX2_CONCURRENCY={os.environ.get('FLUX2_CONCURRENCY', '8')})")
    print(f"reference uploads in a 4-step chain reusing 3 references: {sent} sent instead of {naive}")
    return 0
