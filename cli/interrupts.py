"""Ctrl-C: the first asks a run to stop at its next check, the second aborts at once (paid images kept)."""
from __future__ import annotations

import signal
import sys
import threading

# Set when a second Ctrl-C abandoned a run whose worker threads still wait on the network: the
# process must then exit without joining them (`main` does, when it is the process's entry point).
abandoned = threading.Event()


class CancelFlag:
    """First Ctrl-C asks the run to stop at the next check (polling stops at once); a second one aborts
    at once: the main thread stops waiting for the run, keeps the paid images in hand, names the tasks
    that may still be billed and exits 130."""

    def __init__(self):
        self.set = False
        self._previous = None

    def install(self):
        def handler(signum, frame):
            if self.set:
                raise KeyboardInterrupt
            self.set = True
            print("\ncancelling: no new task starts; a task in flight finishes so its paid image is kept "
                  "(Ctrl-C again to abort at once)", file=sys.stderr)
        try:
            self._previous = signal.signal(signal.SIGINT, handler)
        except ValueError:   # not the main thread (embedded use): rely on the caller
            pass
        return self

    def restore(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)

    def __call__(self) -> bool:
        return self.set


# After a second Ctrl-C the run gets this long to take its own abort path (keep what was paid, name the
# tasks that may be billed) before it is left behind.
ABORT_GRACE_S = 1.0


class Aborted(Exception):
    """Second Ctrl-C. `error`: what the run raised when it took its abort path (may carry `salvaged` and
    `maybe_billed`); `left_behind`: the run did not stop within ABORT_GRACE_S (stuck in a network read)."""

    def __init__(self, error: BaseException | None, left_behind: bool):
        super().__init__("aborted")
        self.error = error
        self.left_behind = left_behind


def interrupt(thread: threading.Thread) -> None:
    """Raise KeyboardInterrupt inside `thread` at its next Python instruction (CPython's
    PyThreadState_SetAsyncExc): provider code waiting in Python (job fan-out, polling) then takes its
    abort path, as it would in the main thread. A thread blocked inside one C call gets it only after."""
    import ctypes
    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread.ident), ctypes.py_object(KeyboardInterrupt))


def run_in_worker(executor, ctx):
    """Run the graph on a worker thread so the main thread can stop waiting at a second Ctrl-C.

    Returns the RunReport; raises the run's own error; raises Aborted on the second Ctrl-C."""
    outcome: dict = {}
    finished = threading.Event()

    def work():
        try:
            outcome["report"] = executor.run(ctx)
        except BaseException as exc:  # noqa: BLE001 - handed to the main thread as is
            outcome["error"] = exc
        finally:
            finished.set()

    worker = threading.Thread(target=work, name="flux2-run", daemon=True)
    worker.start()
    # An Event, not Thread.join: a join interrupted by Ctrl-C marks the thread stopped while it still
    # runs (CPython 3.11, Thread._wait_for_tstate_lock).
    try:
        while not finished.wait(0.2):   # interruptible: the SIGINT handler runs in this thread
            pass
    except KeyboardInterrupt:
        interrupt(worker)
        finished.wait(ABORT_GRACE_S)
        raise Aborted(outcome.get("error"), not finished.is_set()) from None
    if "error" in outcome:
        raise outcome["error"]
    return outcome["report"]
