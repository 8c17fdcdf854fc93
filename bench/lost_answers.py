"""Lost answers (nothing leaves 127.0.0.1; measures, asserts nothing): billed vs kept vs named when one answer of
a batch of 8 is lost after the provider billed its task, a `run` killed with SIGKILL and run again, hanging BFL
polls against the task deadline, a 300 MB API answer (issue 21, items 1, 2, 5).

    python -m comfyui_flux2.bench.lost_answers     # one line per case

Each case gets a fresh loopback server (Runware's or BFL's documented protocol; `task_details = False`
plays a provider where no lookup finds the task). "billed" is counted on the server side.
"""
from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from ..flux2.backend import GenerationRequest, run
from ..flux2.errors import Flux2Error
from ..flux2.net.transport import Deadlines
from ..flux2.remote.bfl import BflBackend
from ..flux2.remote.options import RemoteOptions
from ..flux2.remote.runware import RunwareBackend
from ..flux2.run_context import RunContext
from ..loopback.bfl_server import BflLoopback
from ..loopback.runware_server import RunwareLoopback

SHORT = Deadlines(retries=3, backoff_s=0.01, backoff_cap_s=0.05, total_s=12, request_s=4, lookup_s=0.4)
LOST = {"dropped": {"drop": True}, "garbage 200": {"garble": "<html>502</html>"},
        "truncated on the wire": {"truncate_at": 40}, "half JSON": {"cut_json": True},
        "another taskUUID": {"patch": {"taskUUID": str(uuid.uuid4())}},
        "dribbled past request_s": {"dribble_s": 0.05}, "32 MiB answer": {"huge_bytes": 32 << 20}}


def _env(server, provider: str) -> None:
    os.environ[f"{provider}_API_URL"], os.environ[f"{provider}_API_KEY"] = server.api_url, server.api_key


def batch_case(server, backend, fault: dict) -> str:
    """One fault on the first submit of a batch of 8 -> 'billed / kept / named'."""
    with server:
        server.faults.push(route="submit", **fault)
        try:
            result = run(backend, GenerationRequest("x", 256, 256, 100, batch=8, node_id="5"), RunContext())
            kept, named = len(result.images), 0
        except Flux2Error as exc:
            kept, named = (len(exc.salvaged.images) if exc.salvaged else 0), len(exc.maybe_billed)
        billed = len(server.billed_tasks) if hasattr(server, "billed_tasks") else len(server.tasks())
    return f"{billed} / {kept} / {named}"


def runware(task_details: bool = True) -> RunwareLoopback:
    server = RunwareLoopback(api_key="bench-key")
    server.task_details = task_details
    _env(server, "RUNWARE")
    return server


def bfl() -> BflLoopback:
    server = BflLoopback(api_key="bench-key")
    _env(server, "BFL")
    return server


def kill_9_case(tmp: Path) -> str:
    """`run`, concurrency 4, 8 images; SIGKILL once 4 arrived (the other 4 billed, answers held); run again."""
    wf = {"1": {"class_type": "Flux2RemoteBackend", "inputs": {
              "provider": "runware", "model": "FLUX.2 [pro]", "prompt_upsampling": False, "safety_tolerance": 2,
              "output_format": "PNG", "output_quality": 95, "steps": 0, "guidance": 0.0, "on_moderation": "error"}},
          "3": {"class_type": "Flux2TextToImage", "inputs": {"backend": ["1", 0], "prompt": "a lighthouse",
                                                              "width": 256, "height": 256, "seed": 5, "batch_size": 8}},
          "4": {"class_type": "SaveImage", "inputs": {"images": ["3", 0], "filename_prefix": "k/item"}}}
    (tmp / "wf.json").write_text(json.dumps(wf))
    with RunwareLoopback(api_key="bench-key") as server:
        for _ in range(4):
            server.faults.push(route="submit")
        for _ in range(4):
            server.faults.push(route="submit", hold_s=30)
        env = {**os.environ, "FLUX2_CONCURRENCY": "4", "FLUX2_CACHE_DIR": str(tmp / "cache"),
               "RUNWARE_API_URL": server.api_url, "RUNWARE_API_KEY": server.api_key}
        cmd = [sys.executable, "-m", "comfyui_flux2", "run", str(tmp / "wf.json"), "--output-dir", str(tmp / "o")]
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        end = time.monotonic() + 60
        while not (len(server.downloads) >= 4 and len(server.billed_tasks) == 8) and time.monotonic() < end:
            time.sleep(0.05)
        time.sleep(1.0)                     # a second for the client to keep what arrived
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        server.faults.clear()
        again = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
        pngs = len(list((tmp / "o").rglob("*.png")))
        return f"{len(server.billed_tasks)} billed in all, {pngs} PNGs, re-run exit {again.returncode}"


def hanging_polls_case() -> str:
    with bfl() as server:
        for _ in range(50):
            server.faults.push(route="poll", hold_s=4)
        deadlines = Deadlines(retries=4, backoff_s=0.01, backoff_cap_s=0.05, total_s=2, request_s=3, read_s=3)
        started = time.monotonic()
        try:
            run(BflBackend("FLUX.2 [pro]", RemoteOptions(), deadlines=deadlines), GenerationRequest("x", 256, 256, 1),
                RunContext())
        except Flux2Error:
            pass
        return f"ended after {time.monotonic() - started:.1f} s"


def huge_answer_case() -> str:
    with runware() as server:
        server.faults.push(route="submit", huge_bytes=300 << 20)
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        try:
            kept = len(run(RunwareBackend("FLUX.2 [pro]", RemoteOptions(), deadlines=SHORT),
                           GenerationRequest("x", 256, 256, 1), RunContext()).images)
        except Flux2Error:
            kept = 0
        grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
        return f"peak RSS +{grown:.0f} MiB, {server.endless_bytes_sent >> 20} MiB sent, {kept} kept"


def main() -> None:
    os.environ["FLUX2_RESULT_CACHE"] = "0"
    huge = huge_answer_case()                 # first: peak RSS is a high-water mark
    print("case: billed / kept / named")
    rw = lambda: RunwareBackend("FLUX.2 [pro]", RemoteOptions(), deadlines=SHORT)      # noqa: E731
    for name, fault in LOST.items():
        print(f"runware, lookups find it, {name}: {batch_case(runware(), rw(), fault)}")
    for name in ("dropped", "garbage 200", "another taskUUID"):
        print(f"runware, no lookup finds it, {name}: {batch_case(runware(False), rw(), LOST[name])}")
    for name, cut in (("cut after the id", 50), ("cut before the id", 20)):
        print(f"bfl, submit answer {name}: "
              f"{batch_case(bfl(), BflBackend('FLUX.2 [pro]', RemoteOptions(), deadlines=SHORT), {'truncate_at': cut})}")
    print(f"hanging BFL polls, task deadline 2 s (request_s 3 s, 5 tries): {hanging_polls_case()}")
    print(f"one 300 MB Runware submit answer: {huge}")
    os.environ.pop("FLUX2_RESULT_CACHE")
    with tempfile.TemporaryDirectory() as tmp:
        print(f"kill -9 of run after 4 of 8 arrived, then the same run: {kill_9_case(Path(tmp))}")


if __name__ == "__main__":
    main()
