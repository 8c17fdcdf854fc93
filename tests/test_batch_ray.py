"""`--executor ray` on a local Ray cluster of 2 CPU actors with the tiny demo model: the same images, bit
for bit, as the in-process run for the same seeds; an actor killed mid-batch loses nothing."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from comfyui_flux2.cli import node_registry
from comfyui_flux2.demo import FILES, write_tiny_models
from comfyui_flux2.runner.batch import Batch

pytestmark = pytest.mark.slow

PROMPTS = ["a red fox", "a hare at dusk", "a lighthouse", "a teapot", "a snail", "a boat"]


def tiny_workflow(folder):
    prompt = {
        "1": {"class_type": "Flux2LocalBackend", "inputs": {
            "model": "auto", "diffusion_model": FILES["diffusion_models"], "text_encoder": FILES["text_encoders"],
            "vae": FILES["vae"], "diffusers_folder": "(none)", "dtype": "fp32", "device": "cpu", "steps": 2,
            "guidance": 0.0, "offload": "none", "vae_tiling": "auto"}},
        "2": {"class_type": "Flux2TextToImage", "_meta": {"title": "Make"},
              "inputs": {"backend": ["1", 0], "prompt": "x", "width": 64, "height": 64, "seed": 0, "batch_size": 1}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "tiny"}},
    }
    path = folder / "tiny.json"
    path.write_text(json.dumps(prompt))
    return path


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    import ray as ray_module
    models = write_tiny_models(tmp_path_factory.mktemp("tiny-models"))
    ray_module.init(num_cpus=2, include_dashboard=False, log_to_driver=False, object_store_memory=256 * 2**20,
                    configure_logging=False,
                    runtime_env={"env_vars": {"FLUX2_MODELS_DIR": str(models)}})
    try:
        yield models
    finally:
        ray_module.shutdown()


def pixels(result) -> list[np.ndarray]:
    out = []
    for path in result.paths:
        with Image.open(path) as img:
            out.append(np.asarray(img.convert("RGB")))
    return out


def run(tmp_path, models, monkeypatch, executor, on_result=None, name="out"):
    monkeypatch.setenv("FLUX2_MODELS_DIR", str(models))
    batch = Batch(tiny_workflow(tmp_path), registry=node_registry, output_dir=tmp_path / name,
                  rows=[{"Make.prompt": p} for p in PROMPTS], seeds=[3, 4], executor=executor)
    results = {}
    for result in batch.run():
        results[result.item.id] = result
        if on_result is not None:
            on_result(batch, result)
    return batch, results


def test_ray_actors_make_the_in_process_images_bit_for_bit(cluster, tmp_path, monkeypatch):
    _, local = run(tmp_path, cluster, monkeypatch, "local", name="local")
    batch, remote = run(tmp_path, cluster, monkeypatch, "ray", name="ray")
    assert sorted(local) == sorted(remote) and len(local) == 12
    workers = {r.outcome.worker for r in remote.values()}
    assert len(workers) == 2 and all(w.startswith("ray:") for w in workers)       # both actors took items
    for item_id, result in local.items():
        assert result.status == remote[item_id].status == "ok"
        (a,), (b,) = pixels(result), pixels(remote[item_id])
        assert a.shape == (64, 64, 3) and np.array_equal(a, b), item_id
    manifest = [json.loads(line) for line in (tmp_path / "ray" / "manifest.jsonl").read_text().splitlines()]
    assert sorted(r["item"] for r in manifest) == sorted(local)


def test_an_actor_killed_mid_batch_loses_nothing(cluster, tmp_path, monkeypatch):
    import ray as ray_module
    killed = []
    batch_actor_pids = []

    def kill_a_busy_actor(batch, result):
        pool = batch._ray
        if not batch_actor_pids:
            batch_actor_pids.extend(actor.pid.remote() for actor in pool.actors)
        if killed or not pool.busy:
            return
        index = next(iter(pool.busy))
        killed.append((index, pool.busy[index]))
        ray_module.kill(pool.actors[index], no_restart=True)

    batch, results = run(tmp_path, cluster, monkeypatch, "ray", on_result=kill_a_busy_actor)
    assert killed, "no actor was busy after the first item"
    assert sorted(results) == sorted(f"r{r}-s{s}" for r in range(1, 7) for s in (3, 4))
    assert all(r.status == "ok" for r in results.values())
    index, victim = killed[0]
    survivor = ray_module.get(batch_actor_pids[1 - index])
    assert results[victim].outcome.worker.endswith(f":{survivor}")                  # re-run on the other actor
    manifest = [json.loads(line) for line in (tmp_path / "out" / "manifest.jsonl").read_text().splitlines()]
    assert sorted(r["item"] for r in manifest) == sorted(results) and all(r["status"] == "ok" for r in manifest)
    _, local = run(tmp_path, cluster, monkeypatch, "local", name="local")
    assert np.array_equal(pixels(results[victim])[0], pixels(local[victim])[0])
