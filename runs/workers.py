"""Worker processes and their signals: launch `cli.py worker ID ...` for the page, tell whether a
local PID is alive, stop on SIGINT/SIGTERM, and beat a run's heartbeat while it works.

    process = launch_worker(store, experiment_id)      # runs it in its own session
    with beating(store, experiment_id):                 # heartbeat_at touched every few seconds
        ...
"""

from __future__ import annotations

import functools
import os
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from database import HEARTBEAT_SECONDS, ExperimentStore

REPO_ROOT = Path(__file__).resolve().parents[1]  # the worker's working directory
WORKER_SCRIPT = REPO_ROOT / "cli.py"


def launch_worker(store: ExperimentStore, *experiment_ids: int) -> subprocess.Popen[bytes]:
    """Start one `cli.py worker ID [ID ...]` in its own session (it outlives page reruns).

    The worker runs the experiments in the order given; its PID is recorded on every one
    of them, so a worker that dies leaves none of them `queued` forever.
    """
    if not experiment_ids:
        raise ValueError("launch_worker needs at least one experiment id")
    suffix = f"{experiment_ids[0]}" if len(experiment_ids) == 1 else f"{experiment_ids[0]}-{experiment_ids[-1]}"
    log_path = Path(tempfile.gettempdir()) / f"fpl-worker-{suffix}.log"
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            [sys.executable, str(WORKER_SCRIPT), "worker", *map(str, experiment_ids), "--db", store.url],
            cwd=REPO_ROOT,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=log,
            start_new_session=True,
        )
    for experiment_id in experiment_ids:
        store.set_worker(experiment_id, process.pid)
    return process


def pid_alive(pid: int) -> bool:
    """Whether a process with this PID exists on this machine and is not a zombie."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True


class StopSignals:
    """SIGINT/SIGTERM for a process that runs one or more experiments in turn.

    The first signal stops the current run after its round and keeps later runs from
    starting (`received`); a second one aborts at once. A stop asked for through the
    database ends only its own run: each run gets its own event from `new_run`. `handle=False`:
    install no handlers (a process whose signals belong to someone else: Flower's ServerApp).
    """

    def __init__(self, *, handle: bool = True) -> None:
        self.received = threading.Event()
        self.current = threading.Event()
        if handle and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, self._handle)
            signal.signal(signal.SIGTERM, self._handle)

    def new_run(self) -> threading.Event:
        self.current = threading.Event()
        if self.received.is_set():
            self.current.set()
        return self.current

    def _handle(self, _signum: int, _frame: Any) -> None:
        if self.received.is_set():
            raise KeyboardInterrupt
        self.received.set()
        self.current.set()
        print("stopping after the current round (interrupt again to abort)", file=sys.stderr)


@contextmanager
def beating(store: ExperimentStore, experiment_id: int, interval: float = HEARTBEAT_SECONDS) -> Iterator[None]:
    """Touch the run's heartbeat every `interval` seconds from a thread while the block runs
    (rounds can take minutes; readers call a run dead after `database.STALE_HEARTBEAT_SECONDS`
    of silence)."""
    done = threading.Event()

    def beat() -> None:
        while not done.wait(interval):
            try:
                store.heartbeat(experiment_id)
            except Exception as error:  # a busy or unreachable database: the next beat tries again
                print(f"warning: heartbeat of experiment {experiment_id} failed: {error}", file=sys.stderr)

    thread = threading.Thread(target=beat, name=f"heartbeat-{experiment_id}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()


@functools.lru_cache(maxsize=1)
def code_version() -> str:
    """The git commit of this checkout (asked once per process), or `unknown`."""
    try:
        result = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return result.stdout.strip() or "unknown"
