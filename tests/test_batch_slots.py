"""A batch item gives its provider slot back the moment the provider answers its task: the next item's task is
sent while the first one's image is still downloading (and decoding and saving)."""
from __future__ import annotations

import time

from comfyui_flux2.cli import node_registry
from comfyui_flux2.loopback.runware_server import RunwareLoopback
from comfyui_flux2.runner.batch import Batch

from test_batch import small_workflow

DOWNLOAD_DELAY_S = 2.0


class _Timed(list):
    """A server's record list that notes when each entry came."""

    def append(self, entry):
        super().append({**entry, "at": time.monotonic()})


def test_the_next_task_is_sent_while_the_first_image_downloads(tmp_path, monkeypatch):
    with RunwareLoopback(api_key="k", task_s=0.2) as server:
        monkeypatch.setenv("RUNWARE_API_URL", server.api_url)
        monkeypatch.setenv("RUNWARE_API_KEY", "k")
        server.requests, server.downloads = _Timed(), _Timed()
        server.faults.push(route="download", delay_s=DOWNLOAD_DELAY_S)      # the first image is slow to fetch
        b = Batch(small_workflow(tmp_path), registry=node_registry, output_dir=tmp_path / "o",
                  rows=[{"Make.prompt": "a"}, {"Make.prompt": "b"}], concurrency=1)
        results = list(b.run())
    assert [r.status for r in results] == ["ok", "ok"] and all(r.paths[0].is_file() for r in results)
    sent = [r["at"] for r in server.requests if any(t.get("taskType") == "imageInference" for t in r["body"])]
    first_download = server.downloads[0]["at"]
    assert len(sent) == 2 and sent[0] < first_download
    # Before: the slot came back only once the first image had arrived, DOWNLOAD_DELAY_S after its download began.
    assert sent[1] < first_download + DOWNLOAD_DELAY_S - 0.5
    assert server.peak_processing == 1            # still one task in flight at a time


def test_a_planned_cache_hit_that_is_gone_by_run_time_does_not_free_the_slot_early(tmp_path, monkeypatch):
    """The dry run counts a call the result cache will serve as free, so an item's slot came back once its other
    tasks answered. If that entry is gone by the time the call runs (deleted, damaged), the call sends a task of
    its own: with its slot already given to the next item, 2 tasks ran at once under --concurrency 1."""
    import json
    import shutil

    from comfyui_flux2.flux2.backend import GenerationRequest, run
    from comfyui_flux2.flux2.remote.runware import RunwareBackend
    from comfyui_flux2.flux2.result_cache import ResultCache
    from comfyui_flux2.flux2.run_context import RunContext

    cache_dir = tmp_path / "cache"
    monkeypatch.setenv("FLUX2_CACHE_DIR", str(cache_dir))
    with RunwareLoopback(api_key="k", task_s=0.4) as server:
        monkeypatch.setenv("RUNWARE_API_URL", server.api_url)
        monkeypatch.setenv("RUNWARE_API_KEY", "k")
        wf = json.loads(small_workflow(tmp_path).read_text())
        # A second generation node after the first, its request the same in every item: cached once beforehand.
        wf["5"] = {"class_type": "Flux2TextToImage", "_meta": {"title": "Shared"},
                   "inputs": {"backend": ["1", 0], "prompt": "a shared harbour", "width": 256, "height": 256,
                              "seed": 9, "batch_size": 1}}
        wf["6"] = {"class_type": "SaveImage", "inputs": {"images": ["5", 0], "filename_prefix": "shared"}}
        (tmp_path / "wf2.json").write_text(json.dumps(wf))
        run(RunwareBackend("FLUX.2 [pro]"), GenerationRequest("a shared harbour", 256, 256, 9),
            RunContext(cache=ResultCache(cache_dir)))
        b = Batch(tmp_path / "wf2.json", registry=node_registry, output_dir=tmp_path / "o",
                  rows=[{"Make.prompt": "a"}, {"Make.prompt": "b"}, {"Make.prompt": "c"}], concurrency=1)
        plan = b.prepare()
        assert all(item.provider_calls == 1 for item in plan.items)      # "Shared" planned as a cache hit
        shutil.rmtree(cache_dir)                                          # ... and gone before the run
        results = list(b.run())
    assert [r.status for r in results] == ["ok"] * 3
    assert server.peak_processing == 1
