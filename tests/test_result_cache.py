"""The result cache under concurrency: whole entries or none, verified reads, one provider call for
identical requests made at the same time (threads of one process, or two processes)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from comfyui_flux2.flux2.backend import GenerationRequest, run
from comfyui_flux2.flux2.remote.options import RemoteOptions
from comfyui_flux2.flux2.remote.runware import RunwareBackend
from comfyui_flux2.flux2.result_cache import ResultCache
from comfyui_flux2.flux2.run_context import RunContext

ROOT = Path(__file__).resolve().parents[1]
PACKAGE_PARENT = str(Path(sys.modules["comfyui_flux2"].__file__).resolve().parent.parent)

WRITER = """
import sys, numpy as np
from comfyui_flux2.flux2.result_cache import ResultCache
cache, key, shade, rounds = ResultCache(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
# Each writer stores 3 images of its own shade, with its own seeds: a mixed entry would show.
images = [np.full((96, 96 + 16 * i, 3), shade, np.uint8) for i in range(3)]
for _ in range(rounds):
    cache.put(key, images, [shade, shade, shade], 0.01, "writer %d" % shade)
"""


@pytest.mark.slow   # subprocesses / whole benchmark runs: over 4 s; CI runs it (--run-slow)
def test_three_concurrent_writer_processes_never_leave_a_mixed_or_partial_entry(tmp_path):
    """Three processes rewrite one entry while this one reads: every read is a miss or one writer's whole entry."""
    key = "ab" + "0" * 62
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(PACKAGE_PARENT))] + sys.path)}
    writers = [subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path), key, str(shade), "40"], env=env)
               for shade in (40, 120, 200)]
    cache = ResultCache(tmp_path)
    hits = 0
    while any(w.poll() is None for w in writers) or hits == 0:
        got = cache.get(key)
        if got is None:
            continue
        images, seeds, billed, _ = got
        hits += 1
        shade = seeds[0]
        assert seeds == [shade] * 3 and billed == 0.01
        assert [im.shape for im in images] == [(96, 96, 3), (96, 112, 3), (96, 128, 3)]
        assert all((im == shade).all() for im in images), "images from different writers in one entry"
    assert [w.wait() for w in writers] == [0, 0, 0]
    assert hits > 0
    assert not list(tmp_path.rglob("*.tmp"))           # no temporary file left behind


def test_truncated_or_altered_entries_are_misses(tmp_path):
    cache = ResultCache(tmp_path)
    key = "cd" + "1" * 62
    cache.put(key, [np.zeros((32, 32, 3), np.uint8)], [1], 0.03, "x")
    (entry,) = tmp_path.rglob("*.result")
    whole = entry.read_bytes()
    assert cache.get(key) is not None
    for broken in (whole[:-1], whole + b"x", whole[:40], b"", whole.replace(b'"seeds": [1]', b'"seeds": [1, 2]')):
        entry.write_bytes(broken)
        assert cache.get(key) is None


def pro() -> RunwareBackend:
    return RunwareBackend("FLUX.2 [pro]", RemoteOptions())


def test_identical_requests_at_the_same_time_make_one_call(runware, tmp_path):
    """Three threads, one request: the provider sees it once, the other two are served from the cache."""
    cache = ResultCache(tmp_path / "cache")
    runware.faults.push(route="submit", delay_s=1)        # keep the first call in flight while the others arrive
    request = GenerationRequest("a teapot", 256, 256, 11)
    contexts = [RunContext(cache=cache) for _ in range(3)]
    results = [None] * 3

    def go(i):
        results[i] = run(pro(), request, contexts[i])

    threads = [threading.Thread(target=go, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(runware.tasks("imageInference")) == 1
    assert sorted(bool(r.info.get("cached")) for r in results) == [False, True, True]
    assert sum(c.ledger.billed_total for c in contexts) == pytest.approx(0.03)
    assert all((r.images[0] == results[0].images[0]).all() for r in results)


def test_different_requests_at_the_same_time_do_not_wait_for_each_other(runware, tmp_path):
    cache = ResultCache(tmp_path / "cache")
    done = []
    threads = [threading.Thread(target=lambda s=s: done.append(run(pro(), GenerationRequest("x", 256, 256, s),
                                                                      RunContext(cache=cache))))
               for s in (1, 2, 3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(done) == 3 and len(runware.tasks("imageInference")) == 3


@pytest.mark.slow   # subprocesses / whole benchmark runs: over 4 s; CI runs it (--run-slow)
def test_two_processes_with_the_same_request_bill_once(runware, tmp_path):
    """Two CLI runs of one workflow at once, sharing the cache folder: the second waits and is not billed."""
    wf = tmp_path / "w.json"
    data = json.loads((ROOT / "workflows" / "api" / "flux2_text_to_image.json").read_text())
    wf.write_text(json.dumps(data))
    # The first call stays in flight long enough for the second process to start and reach the same request.
    runware.faults.push(route="submit", delay_s=6)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "comfyui_flux2", "run", str(wf)]
    first = subprocess.Popen(cmd + ["--output-dir", str(tmp_path / "a")], env=env, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not runware.tasks("imageInference") and time.monotonic() < deadline:
        time.sleep(0.05)
    second = subprocess.Popen(cmd + ["--output-dir", str(tmp_path / "b")], env=env, stderr=subprocess.PIPE, text=True)
    errs = [p.communicate(timeout=120)[1] for p in (first, second)]
    assert [first.returncode, second.returncode] == [0, 0], errs
    assert len(runware.tasks("imageInference")) == 1
    assert "billed $0.045" in errs[0] and "billed $0" in errs[1] and "billed $0.045" not in errs[1]
    assert len(list((tmp_path / "a").rglob("*.png"))) == len(list((tmp_path / "b").rglob("*.png"))) == 1


def test_the_run_sink_has_the_result_before_the_cache_encodes_it(runware, tmp_path):
    """A batch frees the item's provider slot in the sink: the cache's PNG encoding must not come first
    (it held the slot ≈ 6 ms of CPU per item, more under load; issue 25), and an interrupt during the cache write loses no paid image."""
    order = []

    class Watched(ResultCache):
        def put(self, *args, **kwargs):
            order.append("cache")
            return super().put(*args, **kwargs)

    cache = Watched(tmp_path / "cache")
    ctx = RunContext(cache=cache, result_sink=lambda request, result: order.append("sink"))
    request = GenerationRequest("a kettle", 256, 256, 5)
    run(pro(), request, ctx)
    assert order == ["sink", "cache"]
    assert run(pro(), request, RunContext(cache=cache)).info.get("cached")     # still stored


def _stored_files(folder: Path) -> list[bytes]:
    from comfyui_flux2.flux2.result_cache import unpack_entry
    return [blob for entry in sorted(folder.rglob("*.result")) for blob in unpack_entry(entry.read_bytes())[0]]


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
@pytest.mark.parametrize("batch", [1, 2])
def test_a_providers_file_is_cached_as_it_came(runware, tmp_path, fmt, batch):
    """No second encode (issue 25, batch throughput): the cache keeps the very bytes the provider served - a JPEG
    stays that JPEG - and serves the same pixels the first run had. Batch 1 is cached by backend.run, each image
    of a larger batch the moment it arrives (jobs.store_arrived)."""
    cache = ResultCache(tmp_path / "cache")
    backend = RunwareBackend("FLUX.2 [pro]", RemoteOptions(output_format=fmt))
    request = GenerationRequest("a lighthouse", 256, 256, 21, batch=batch)
    first = run(backend, request, RunContext(cache=cache))
    served = {data for data, _ in runware.images.values()}
    stored = _stored_files(tmp_path / "cache")
    # A batch of 2: each image under its own key, and the batch under the request's key.
    assert len(stored) == (1 if batch == 1 else 4) and set(stored) <= served
    assert all(blob.startswith(b"\xff\xd8" if fmt == "JPEG" else b"\x89PNG") for blob in stored)
    again = run(backend, request, RunContext(cache=cache))
    assert again.info.get("cached") or again.info.get("cached_images") == batch
    assert len(runware.tasks("imageInference")) == batch                   # nothing sent the second time
    assert all((a == b).all() for a, b in zip(first.images, again.images))


def test_a_bfl_file_is_cached_as_it_came(bfl, tmp_path):
    from comfyui_flux2.flux2.remote.bfl import BflBackend
    cache = ResultCache(tmp_path / "cache")
    request = GenerationRequest("a harbour", 256, 256, 8)
    first = run(BflBackend("FLUX.2 [pro]", RemoteOptions()), request, RunContext(cache=cache))
    (stored,) = _stored_files(tmp_path / "cache")
    assert stored in {data for data, _ in bfl.images.values()}
    again = run(BflBackend("FLUX.2 [pro]", RemoteOptions()), request, RunContext(cache=cache))
    assert again.info.get("cached") and (again.images[0] == first.images[0]).all()


def test_a_file_is_stored_only_for_the_very_image_it_decodes_to(tmp_path):
    """The cache pairs a provider's file with its image by identity: an image that is not that array (changed
    after decoding, or another one) is encoded from its own pixels, never stored as the file's bytes."""
    from comfyui_flux2.flux2.images import ProviderFile, encode
    cache = ResultCache(tmp_path)
    image = np.full((16, 16, 3), 7, np.uint8)
    other = np.full((16, 16, 3), 9, np.uint8)
    jpeg = encode(image, "JPEG")
    key = "ef" + "2" * 62
    cache.put(key, [image, other], [1, 2], None, "x", files=[ProviderFile(jpeg, image), ProviderFile(jpeg, image.copy())])
    first, second = _stored_files(tmp_path)
    assert first == jpeg and second.startswith(b"\x89PNG")
    images, seeds, _, _ = cache.get(key)
    assert (images[1] == 9).all() and seeds == [1, 2]
