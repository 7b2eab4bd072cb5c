"""Nothing lost, nothing hangs: runs that share one database at once, and the processes they leave.

- Three runs write to one database at the same time (two `cli.py run`, one `cli.py worker`
  for an experiment stored as the page stores it) while a reader polls it as the live page
  does: every round lands exactly once with all its clients, and the reader never errs nor
  sees a count go backwards. SQLite, and PostgreSQL when FPL_TEST_POSTGRES_URL names a server
  (`postgresql+psycopg://user@127.0.0.1:5432/db`; the test gets a schema of its own). A run
  that finishes just as the page checks its worker keeps its status.
- A run with trainer processes that is stopped, one that fails to load its data, one whose
  trainers die and one whose worker is killed leave no process of their tree behind, and
  end with their status and reason.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import psutil
import pytest
from sqlalchemy import make_url

import cli
from runs.workers import launch_worker, pid_alive
from conftest import REPO
from database import FINAL_STATUSES, ExperimentStore
from experiment_config import ExperimentConfig

POSTGRES_URL = os.environ.get("FPL_TEST_POSTGRES_URL")
ROUNDS, CLIENTS = 4, 3
SMALL = [
    "model.name=mlp", "data.max_train_examples=600", "data.max_test_examples=500",
    f"federation.num_clients={CLIENTS}", f"federation.clients_per_round={CLIENTS}", f"federation.rounds={ROUNDS}",
    "system.num_workers=1", "privacy.audit_examples=0",
]  # fmt: skip
STATUS_ORDER = {"queued": 0, "running": 1, **dict.fromkeys(FINAL_STATUSES, 2)}


@pytest.fixture
def shared_db_url(every_db_url: str) -> str:
    """SQLite, and PostgreSQL when FPL_TEST_POSTGRES_URL names a server (conftest.every_db_url)."""
    return every_db_url


@pytest.fixture
def started() -> Iterator[list[subprocess.Popen]]:
    """Processes a test starts; any still running when it ends (a failed test) are killed with their children."""
    processes: list[subprocess.Popen] = []
    yield processes
    for process in processes:
        if process.poll() is None:
            try:
                tree = [*psutil.Process(process.pid).children(recursive=True), psutil.Process(process.pid)]
            except psutil.NoSuchProcess:
                tree = []
            for member in tree:
                try:
                    member.kill()
                except psutil.NoSuchProcess:
                    pass
            process.wait(timeout=30)


def _session_members(session_id: int) -> list[psutil.Process]:
    """Live (non-zombie) processes in the session a worker leads (`launch_worker` starts a new one)."""
    members = []
    for process in psutil.process_iter():
        try:
            if os.getsid(process.pid) == session_id and process.status() != psutil.STATUS_ZOMBIE:
                members.append(process)
        except (ProcessLookupError, psutil.NoSuchProcess):
            continue
    return members


def _alive(processes: list[psutil.Process]) -> list[psutil.Process]:
    alive = []
    for process in processes:
        try:
            if process.is_running() and process.status() != psutil.STATUS_ZOMBIE:
                alive.append(process)
        except psutil.NoSuchProcess:
            continue
    return alive


def _cli_run(url: str, name: str) -> subprocess.Popen:
    settings = [arg for assignment in SMALL for arg in ("--set", assignment)]
    return subprocess.Popen(
        [sys.executable, str(REPO / "cli.py"), "run", "--json", "--db", url, "--name", name, *settings],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
    )  # fmt: skip


@dataclass
class Reader:
    """Polls the store as the live page does, recording what it saw and any error or regression."""

    store: ExperimentStore
    stop: threading.Event = field(default_factory=threading.Event)
    polls: int = 0
    errors: list[str] = field(default_factory=list)
    regressions: list[str] = field(default_factory=list)
    max_running: int = 0
    seen: dict[int, tuple[int, int, int]] = field(default_factory=dict)  # id: (status rank, rounds_done, rows)

    def run(self) -> None:
        while True:
            last = self.stop.is_set()  # one more poll after the writers are done
            try:
                self.poll()
            except Exception as error:  # "database is locked" and the like: the page would show it
                self.errors.append(f"{type(error).__name__}: {error}")
            if last:
                return
            time.sleep(0.02)

    def poll(self) -> None:
        if marked := self.store.mark_interrupted_if_dead(pid_alive):  # as the page does before it lists
            self.regressions.append(f"experiments {marked} marked interrupted while their workers ran")
        experiments = self.store.list_experiments()
        rounds = self.store.rounds_frame([e.id for e in experiments])
        self.polls += 1
        self.max_running = max(self.max_running, sum(e.status == "running" for e in experiments))
        for experiment in experiments:
            numbers = rounds.loc[rounds["experiment_id"] == experiment.id, "round"].tolist()
            clients = self.store.client_rounds_frame(experiment.id)
            now = (STATUS_ORDER[experiment.status], experiment.rounds_done, len(numbers))
            before = self.seen.get(experiment.id, (0, 0, 0))
            if any(a < b for a, b in zip(now, before)):
                self.regressions.append(f"experiment {experiment.id}: (status, rounds_done, rows) {before} -> {now}")
            if numbers != list(range(1, len(numbers) + 1)):
                self.regressions.append(f"experiment {experiment.id}: rounds {numbers}")
            per_round = clients.groupby("round")["client_id"].count()
            if (per_round != CLIENTS).any():  # a round is committed with its clients, or not at all
                self.regressions.append(f"experiment {experiment.id}: clients per round {per_round.to_dict()}")
            self.seen[experiment.id] = tuple(max(a, b) for a, b in zip(now, before))


def _overlap(store: ExperimentStore) -> int:
    """The most runs that were running at one moment, from their stored start and finish times."""
    events = []
    for experiment in store.list_experiments():
        events += [(experiment.started_at, 1), (experiment.finished_at, -1)]
    running, most = 0, 0
    for _, change in sorted(events, key=lambda event: (event[0], event[1])):
        running += change
        most = max(most, running)
    return most


def test_three_runs_and_a_reader_share_one_database(shared_db_url, started):
    # Two CLI runs race to create and migrate the empty database; the page's store does too.
    started += [_cli_run(shared_db_url, "cli-a"), _cli_run(shared_db_url, "cli-b")]
    store = ExperimentStore(shared_db_url)
    config = ExperimentConfig().with_overrides(SMALL)
    page_id = store.create_experiment(config.to_dict(), name="page")
    started.append(launch_worker(store, page_id))
    reader = Reader(store)
    polling = threading.Thread(target=reader.run, name="page-reader")
    polling.start()

    outputs = {}
    for process in started:
        if process.stdout is not None:
            out, err = process.communicate(timeout=120)
            assert process.returncode == 0, err
            *printed, final = [json.loads(line) for line in out.splitlines()]
            outputs[final["experiment_id"]] = printed
    assert started[-1].wait(timeout=120) == 0
    reader.stop.set()
    polling.join(timeout=60)

    assert not polling.is_alive()
    assert reader.errors == [] and reader.regressions == []
    assert reader.polls >= 10 and reader.max_running >= 1  # it read while the runs wrote
    experiments = store.list_experiments()
    assert sorted(e.name for e in experiments) == ["cli-a", "cli-b", "page"]
    assert {e.status for e in experiments} == {"completed"} and {e.rounds_done for e in experiments} == {ROUNDS}
    rounds = store.rounds_frame([e.id for e in experiments])
    for experiment in experiments:
        stored = rounds[rounds["experiment_id"] == experiment.id]
        assert stored["round"].tolist() == list(range(1, ROUNDS + 1))  # each once, none missing
        assert (stored["num_clients"] == CLIENTS).all()
        clients = store.client_rounds_frame(experiment.id)
        assert sorted(zip(clients["round"], clients["client_id"])) == [
            (number, client) for number in range(1, ROUNDS + 1) for client in range(CLIENTS)
        ]
        assert experiment.final_accuracy == stored["accuracy"].iloc[-1]
        if experiment.id in outputs:  # what the CLI printed is what was stored
            assert stored["accuracy"].tolist() == [row["accuracy"] for row in outputs[experiment.id]]
    assert reader.seen == {e.id: (2, ROUNDS, ROUNDS) for e in experiments}
    assert _overlap(store) >= 2, "the runs did not overlap: nothing concurrent was tested"
    print(f"\n{reader.polls} reader polls; at most {reader.max_running} running at once as the reader saw "
          f"({_overlap(store)} by their stored start and finish times)")


def test_a_run_that_finishes_while_the_page_checks_its_worker_keeps_its_status(shared_db_url):
    store = ExperimentStore(shared_db_url)
    experiment_id = store.create_experiment(ExperimentConfig().with_overrides(SMALL).to_dict())
    store.mark_running(experiment_id, pid=os.getpid())
    worker = ExperimentStore(shared_db_url)  # the worker's own connection

    def finishes_then_exits(pid: int) -> bool:
        # Between the page's look-up and its check, the worker commits its result and exits.
        worker.finish(experiment_id, "completed", final={"accuracy": 0.5})
        return False

    marked = store.mark_interrupted_if_dead(finishes_then_exits)

    experiment = store.get_experiment(experiment_id)
    assert marked == [] and (experiment.status, experiment.error) == ("completed", None)
    assert experiment.final_accuracy == 0.5


# -- the processes a run leaves behind --------------------------------------------------------

TRAINERS = 2  # system.num_workers: client trainer processes the worker forks
POOLED = [*SMALL, f"system.num_workers={TRAINERS}", "federation.clients_per_round=2", "federation.rounds=500"]


def _launch(store: ExperimentStore, started: list[subprocess.Popen], *overrides: str) -> tuple[int, subprocess.Popen]:
    experiment_id = store.create_experiment(ExperimentConfig().with_overrides([*POOLED, *overrides]).to_dict())
    worker = launch_worker(store, experiment_id)
    started.append(worker)
    return experiment_id, worker


def _trainers_once_training(
    store: ExperimentStore, experiment_id: int, worker: subprocess.Popen
) -> list[psutil.Process]:
    """The worker's child processes, once a round has been stored (its trainers are up)."""
    deadline = time.monotonic() + 120
    while store.get_experiment(experiment_id).rounds_done < 1:
        assert worker.poll() is None, f"the worker exited with {worker.returncode} before a round"
        assert time.monotonic() < deadline, "no round within 120 s"
        time.sleep(0.05)
    children = psutil.Process(worker.pid).children(recursive=True)
    assert len(children) >= TRAINERS  # else there is nothing to leave behind
    return children


def _gone_within(processes: list[psutil.Process], seconds: float) -> float:
    """Seconds until none of `processes` is alive; fails after `seconds`."""
    begun = time.monotonic()
    while alive := _alive(processes):
        assert time.monotonic() - begun < seconds, f"still alive after {seconds} s: {[p.pid for p in alive]}"
        time.sleep(0.1)
    return time.monotonic() - begun


def test_a_stopped_run_leaves_no_process_behind(db_url, started):
    store = ExperimentStore(db_url)
    experiment_id, worker = _launch(store, started)
    children = _trainers_once_training(store, experiment_id, worker)

    store.request_stop(experiment_id)  # the page's Stop button
    assert worker.wait(timeout=60) == 0

    assert _alive(children) == [] and _session_members(worker.pid) == []
    experiment = store.get_experiment(experiment_id)
    assert experiment.status == "stopped" and experiment.stop_reason == "stopped on request"
    assert 1 <= experiment.rounds_done < 500


def test_a_run_that_fails_to_load_its_data_leaves_no_process_behind(db_url, started, tmp_path):
    not_a_folder = tmp_path / "not-a-folder"
    not_a_folder.write_text("MNIST is not here")  # nor can it be downloaded here, online or not
    store = ExperimentStore(db_url)
    experiment_id, worker = _launch(store, started, f"data.data_dir={not_a_folder}")

    assert worker.wait(timeout=60) == cli.EXIT_FAILED

    assert _session_members(worker.pid) == []
    experiment = store.get_experiment(experiment_id)
    assert experiment.status == "failed" and "MNIST not found" in experiment.error


# A task carries its client's example indices (int64): 200 of them, or 10,000 (80 kB, more than a pipe holds).
LARGE_TASKS = ["data.max_train_examples=20000", "federation.num_clients=2"]


# Large tasks once hung the worker: tasks for dead trainers blocked the queue's feeder thread at exit.
@pytest.mark.parametrize("overrides", [[], LARGE_TASKS], ids=["small-tasks", "large-tasks"])
def test_trainers_that_die_between_rounds_fail_the_run_instead_of_hanging_it(db_url, started, overrides):
    store = ExperimentStore(db_url)
    experiment_id, worker = _launch(store, started, *overrides)
    children = _trainers_once_training(store, experiment_id, worker)

    with _write_lock(db_url):  # the worker blocks storing its next round: its trainers go idle
        _wait_until_idle(children)
        for child in children:
            child.kill()  # the OOM killer, say
    exit_code = worker.wait(timeout=15)  # the next round finds them dead within a second or two

    assert exit_code == cli.EXIT_FAILED
    assert _alive(children) == [] and _session_members(worker.pid) == []
    experiment = store.get_experiment(experiment_id)
    assert experiment.status == "failed" and "client trainer process" in experiment.error
    assert "died" in experiment.error


@contextmanager
def _write_lock(db_url: str) -> Iterator[None]:
    """Hold a SQLite database's write lock: writers wait (busy timeout), readers go on."""
    connection = sqlite3.connect(make_url(db_url).database, isolation_level=None)
    try:
        connection.execute("BEGIN IMMEDIATE")
        yield
        connection.execute("ROLLBACK")
    finally:
        connection.close()


def _wait_until_idle(processes: list[psutil.Process], *, quiet_seconds: float = 1.0, within: float = 60) -> None:
    """Until the processes have used no CPU time for `quiet_seconds`."""
    deadline = time.monotonic() + within
    used = None
    while (now := sum(sum(p.cpu_times()[:2]) for p in processes)) != used:
        assert time.monotonic() < deadline, f"still busy after {within} s"
        used = now
        time.sleep(quiet_seconds)


def test_a_killed_worker_is_marked_interrupted_and_its_trainers_exit(db_url, started):
    store = ExperimentStore(db_url)
    experiment_id, worker = _launch(store, started)
    children = _trainers_once_training(store, experiment_id, worker)

    worker.send_signal(signal.SIGKILL)  # no handler runs: nothing is recorded, nothing closed
    worker.wait(timeout=30)
    marked = store.mark_interrupted_if_dead(pid_alive)  # what the page does on its next poll

    assert marked == [experiment_id]
    experiment = store.get_experiment(experiment_id)
    assert experiment.status == "interrupted" and "ended without finishing" in experiment.error
    # Orphaned trainers notice their parent is gone (they poll for it every 5 s) and exit.
    seconds = _gone_within(children, 30)
    assert _session_members(worker.pid) == []
    print(f"\norphaned trainers exited {seconds:.1f} s after the worker was killed")
