"""`--executor ray`: local-weights batch items on Ray actors, one per GPU, each keeping its model loaded.

Ray is an optional extra (`pip install 'comfyui-flux2[ray]'`), imported only here. The driver (this
process) keeps the manifest, the budget and the files: an actor runs an item's graph exactly as the
in-process executor does (`ItemRun`, in a scratch folder of its own machine) and sends back the outcome
and the bytes of the files it wrote, which the driver puts under the batch folder. An actor that dies
(killed, out of memory, its machine gone) loses only the item it was running: that item goes to another
actor. Items of remote providers never go to Ray: they wait on the network, not on a GPU.

Cluster: `ray start --head` on one machine, `ray start --address HEAD:6379` on the others, then
`comfyui-flux2 batch ... --executor ray --ray-address HEAD:6379` (or RAY_ADDRESS); without an address a
local cluster is started for the batch. Every machine needs this pack and the model files
(FLUX2_MODELS_DIR is passed on to the actors).
"""
from __future__ import annotations

import logging
import os
import queue
import shutil
import tempfile
import threading
from pathlib import Path, PurePosixPath

from ...flux2.errors import ConfigError
from ...flux2.redaction import scrub
from .executors import ItemEnv, ItemOutcome, ItemRun
from .manifest import FAILED, INTERRUPTED

log = logging.getLogger("comfyui_flux2.batch")
DEFAULT_CPU_ACTORS = 2          # a cluster without GPUs (tests, CPU machines)
_POLL_S = 0.2                   # ray.get in slices, so a Ctrl-C reaches the waiting thread


def _ray():
    try:
        import ray
    except ImportError:
        raise ConfigError("--executor ray needs Ray: pip install 'comfyui-flux2[ray]'") from None
    return ray


class ItemWorker:
    """The actor: builds the node registry once and runs items; the models stay loaded between items
    (flux2/local/backend.py keeps the engine process-wide, and backend nodes are shared)."""

    def __init__(self, registry_factory, env_vars: dict, input_dir: str, more_input_dirs: tuple):
        os.environ.update(env_vars)
        from .items import shared_backends
        self.registry = shared_backends(registry_factory())
        self.input_dir, self.more_input_dirs = Path(input_dir), tuple(Path(p) for p in more_input_dirs)
        self.scratch = Path(tempfile.mkdtemp(prefix="flux2-batch-actor-"))
        self.name = f"ray:{os.uname().nodename}:{os.getpid()}"

    def pid(self) -> int:
        return os.getpid()

    def run(self, item) -> tuple[ItemOutcome, dict]:
        folder = Path(tempfile.mkdtemp(dir=self.scratch))
        try:
            env = ItemEnv(self.registry, self.input_dir, folder, self.more_input_dirs, cache=None)
            outcome = ItemRun(item, env, worker=self.name).run()
            files = {rel: (folder / rel).read_bytes() for rel in outcome.outputs if (folder / rel).is_file()}
            return outcome, files
        finally:
            shutil.rmtree(folder, ignore_errors=True)


class RayPool:
    """The actors and which of them are free. `size` is how many local items may run at once."""

    def __init__(self, registry_factory, env: ItemEnv, *, address: str | None = None, actors: int | None = None):
        ray = self.ray = _ray()
        self.env = env
        self.started_cluster = False
        if not ray.is_initialized():
            address = address or os.environ.get("RAY_ADDRESS") or None
            if address is None:
                cpus = max(os.cpu_count() or 1, actors or DEFAULT_CPU_ACTORS)
                ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False,
                         object_store_memory=256 * 2**20, configure_logging=False)
                self.started_cluster = True
            else:
                ray.init(address=address, log_to_driver=False, configure_logging=False)
        gpus = int(ray.cluster_resources().get("GPU", 0))
        count = actors or gpus or DEFAULT_CPU_ACTORS
        options = {"num_gpus": 1, "num_cpus": 1} if gpus else {"num_cpus": 1}
        env_vars = {k: v for k, v in os.environ.items() if k.startswith("FLUX2_")}   # never provider keys
        remote = ray.remote(ItemWorker)
        self.actors = [remote.options(**options).remote(registry_factory, env_vars, str(env.input_dir),
                                                        tuple(str(p) for p in env.more_input_dirs))
                       for _ in range(count)]
        self.idle: queue.Queue = queue.Queue()
        for actor in self.actors:
            self.idle.put(actor)
        self.alive = len(self.actors)
        self.busy: dict[int, str] = {}            # index of the actor -> item id it runs
        self._lock = threading.Lock()
        self.size = count

    def take(self):
        """A free actor, or None when every actor is gone."""
        while True:
            with self._lock:
                if self.alive == 0:
                    return None
            try:
                return self.idle.get(timeout=_POLL_S)
            except queue.Empty:
                continue

    def lost(self, actor) -> None:
        with self._lock:
            self.alive -= 1
        log.warning("a Ray actor died; %d left; its item runs again on another", self.alive)

    def item_run(self, item, is_cancelled=None, ticket=None) -> "RayItemRun":
        return RayItemRun(self, item, ticket)

    def close(self) -> None:
        for actor in self.actors:
            try:
                self.ray.kill(actor)
            except Exception:  # noqa: BLE001 - already gone
                pass
        if self.started_cluster:
            self.ray.shutdown()


class RayItemRun:
    """One local item on the pool: the same interface as ItemRun for the scheduler."""

    def __init__(self, pool: RayPool, item, ticket=None):
        """`ticket`: the item's budget Ticket; the actor's tasks run where it cannot see them, so what they
        were billed is booked on it when the item comes back."""
        self.pool, self.item, self.ticket = pool, item, ticket
        self.aborted = False
        self.thread: threading.Thread | None = None
        self._ref = None

    def run(self) -> ItemOutcome:
        ray = self.pool.ray
        self.thread = threading.current_thread()
        while True:
            actor = self.pool.take()
            if actor is None:
                return self.ended(FAILED, RuntimeError("no Ray actor is left to run it"))
            index = self.pool.actors.index(actor)
            self.pool.busy[index] = self.item.id
            try:
                self._ref = actor.run.remote(self.item)
                while not ray.wait([self._ref], timeout=_POLL_S)[0]:
                    pass
                outcome, files = ray.get(self._ref)
            except ray.exceptions.RayActorError:
                self.pool.busy.pop(index, None)
                self.pool.lost(actor)
                continue                                  # the item was not finished: another actor runs it
            except KeyboardInterrupt:
                ray.cancel(self._ref, force=True)
                return self.ended(INTERRUPTED, KeyboardInterrupt())
            except ray.exceptions.RayError as exc:
                self.pool.busy.pop(index, None)
                self.pool.idle.put(actor)
                return self.ended(FAILED, exc)
            self.pool.busy.pop(index, None)
            self.pool.idle.put(actor)
            if self.ticket is not None:
                self.ticket.book_outside(outcome.billed_usd)
            outcome.outputs = self._write(files)
            return outcome

    def _write(self, files: dict) -> list[str]:
        """The actor's files under the batch folder, at the same relative names (which stay inside it)."""
        root = self.pool.env.output_dir.resolve()
        written = []
        for rel, data in files.items():
            path = PurePosixPath(rel)
            if path.is_absolute() or ".." in path.parts:
                log.error("item %s: an actor named a file outside the batch folder (%r); not written", self.item.id, rel)
                continue
            target = root / Path(*path.parts)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
            written.append(path.as_posix())
        return written

    def ended(self, status: str, error: BaseException | None = None) -> ItemOutcome:
        message = "aborted by the user" if isinstance(error, KeyboardInterrupt) else (
            f"{type(error).__name__}: {scrub(str(error), 300)}" if error is not None else None)
        return ItemOutcome(self.item.id, status, error=message, worker="ray")
