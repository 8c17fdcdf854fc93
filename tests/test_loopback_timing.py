"""The loopback Runware server's task time: `task_s` in all, drawing the picture included, so the batch benchmark's
ideal (concurrency / task_s) is what a client that loses no time between tasks reaches."""
from __future__ import annotations

import time

from comfyui_flux2.flux2.backend import GenerationRequest, run
from comfyui_flux2.flux2.remote.runware import RunwareBackend
from comfyui_flux2.loopback import runware_server


def test_a_slow_drawing_is_part_of_the_task_time_not_added_to_it(runware, ctx, monkeypatch):
    real = runware_server.render

    def slow_render(*args, **kwargs):
        time.sleep(0.4)                 # a picture that takes long to draw
        return real(*args, **kwargs)

    monkeypatch.setattr(runware_server, "render", slow_render)
    runware.task_s = 0.6
    t0 = time.monotonic()
    result = run(RunwareBackend("FLUX.2 [pro]"), GenerationRequest("a fox", 256, 256, 1), ctx)
    elapsed = time.monotonic() - t0
    assert result.images[0].shape == (256, 256, 3)
    assert 0.6 <= elapsed < 0.9         # drawing, then the rest of task_s; not task_s and then drawing (>= 1.0)


def test_a_fast_task_still_takes_task_s(runware, ctx):
    runware.task_s = 0.3
    t0 = time.monotonic()
    run(RunwareBackend("FLUX.2 [pro]"), GenerationRequest("a hare", 256, 256, 1), ctx)
    assert time.monotonic() - t0 >= 0.3


def test_many_connections_at_once_are_all_accepted():
    """A batch's first round opens `concurrency` connections at once. socketserver's listen backlog of 5 let the
    kernel drop the other SYNs, and those connections came a second later (Linux's SYN retry), which made one
    task of the first round take 1.5 s in `benchmark batch`; no real provider's server does that. Here nothing
    accepts yet (the server is not started): every connect must still complete, queued by the kernel."""
    import socket

    server = runware_server.RunwareLoopback()          # listening, not accepting
    socks = []
    try:
        for _ in range(16):
            s = socket.socket()
            s.settimeout(0.5)                               # a dropped SYN is retried only after 1 s
            s.connect(("127.0.0.1", server.port))
            socks.append(s)
        assert len(socks) == 16
    finally:
        for s in socks:
            s.close()
        server.httpd.server_close()
