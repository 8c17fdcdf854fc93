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
