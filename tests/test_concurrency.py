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
- Two resumes of one run at once: exactly one runs it, the other is refused by name (the claim
  itself 20 times, and real `cli.py resume` pairs after a SIGKILL); a worker paused with SIGSTOP
  on this host is never taken for dead, a silent one on another host is.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta

import psutil
import pytest
from sqlalchemy import delete, make_url, select

import cli
import database
from runs.workers import launch_worker, pid_alive
from conftest import REPO
from database import FINAL_STATUSES, Checkpoint, ClientRound, Experiment, ExperimentStore, Round, utcnow
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


# -- issue 18: one resume at a time, and liveness by PID on this host -------------------------

CLAIMER = """
import json, sys, time
from database import ExperimentStore
store, experiment_id = ExperimentStore(sys.argv[1]), int(sys.argv[2])
print("ready", flush=True)
for line in sys.stdin:  # "go AT": claim the run at time.time() == AT, as the other claimer does
    at = float(line.split()[1])
    while time.time() < at:
        pass
    started = time.time()
    try:
        outcome = {"won": store.reopen(experiment_id)}
    except ValueError as error:
        outcome = {"lost": str(error)}
    print(json.dumps({**outcome, "started": started, "ended": time.time()}), flush=True)
"""
LOSER_LINE = r"experiment {id} is already (being resumed|running) \(by PID {pid} on [^)]+\): cannot resume it"


def _fabricated_interrupted_run(store: ExperimentStore, rounds: int = 3) -> int:
    """A run that was killed after round 2 of `rounds` (its rows as a worker leaves them), interrupted."""
    config = ExperimentConfig().with_overrides([*SMALL, f"federation.rounds={rounds}"])
    experiment_id = store.create_experiment(config.to_dict())
    store.mark_running(experiment_id, pid=os.getpid())
    clients = [{"id": c, "num_examples": 200, "steps": 4, "loss": 0.5} for c in range(CLIENTS)]
    for number in (1, 2):
        row = {"round": number, "accuracy": 0.5, "loss": 1.0, "seconds": 1.0, "bytes_up": 1, "bytes_down": 1,
               "clients": clients}  # fmt: skip
        store.record_round(experiment_id, row, checkpoint=f"after round {number}".encode(), worker_pid=os.getpid())
    store.finish(experiment_id, "interrupted", error="killed")
    return experiment_id


def test_two_claims_of_one_run_at_the_same_moment_have_exactly_one_winner_twenty_times(shared_db_url, started):
    """The claim itself (`ExperimentStore.reopen`, which `cli.py resume` and the page's Resume call),
    20 times, by two processes with their own connections released at the same instant: exactly
    one wins each time, the other is told who has the run, and nothing else changes. (The full
    `cli.py resume` race, with training, is the next test.)"""
    store = ExperimentStore(shared_db_url)
    experiment_id = _fabricated_interrupted_run(store)
    claimers = [
        subprocess.Popen([sys.executable, "-c", CLAIMER, shared_db_url, str(experiment_id)], cwd=REPO, text=True,
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for _ in range(2)
    ]  # fmt: skip
    started.extend(claimers)
    for claimer in claimers:
        assert claimer.stdout.readline() == "ready\n", claimer.stderr.read()
    overlapped = 0
    for _ in range(20):
        at = time.time() + 0.2
        for claimer in claimers:
            claimer.stdin.write(f"go {at}\n")
            claimer.stdin.flush()
        answers = [json.loads(claimer.stdout.readline()) for claimer in claimers]

        winners = [(claimer.pid, a) for claimer, a in zip(claimers, answers) if "won" in a]
        losers = [(claimer.pid, a) for claimer, a in zip(claimers, answers) if "lost" in a]
        assert len(winners) == 1 and len(losers) == 1, answers
        (winner, won), (_, lost) = winners[0], losers[0]
        assert won["won"] == 2
        assert re.fullmatch(LOSER_LINE.format(id=experiment_id, pid=winner), lost["lost"]), lost["lost"]
        claimed = store.get_experiment(experiment_id)
        assert (claimed.status, claimed.worker_pid, claimed.rounds_done) == ("queued", winner, 2)
        overlapped += max(a["started"] for a in answers) < min(a["ended"] for a in answers)
        store.finish(experiment_id, "interrupted", error="killed")  # as it was, for the next pair
    for claimer in claimers:
        claimer.stdin.close()
        claimer.wait(timeout=30)
    assert store.rounds_frame([experiment_id])["round"].tolist() == [1, 2]
    assert overlapped >= 1, "no two claims overlapped in time: nothing concurrent was tested"
    print(f"\n20 pairs of claims: 20 with one winner; {overlapped} pairs overlapped in time")


RESUME_RACE = [*SMALL, "federation.rounds=3"]


def _killed_after_round_two(url: str, started: list[subprocess.Popen]) -> int:
    """`cli.py run` of 3 rounds, killed with SIGKILL as soon as it has printed round 2."""
    settings = [arg for assignment in RESUME_RACE for arg in ("--set", assignment)]
    worker = subprocess.Popen(
        [sys.executable, str(REPO / "cli.py"), "run", "--json", "--db", url, *settings],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO, start_new_session=True,
    )  # fmt: skip
    started.append(worker)
    for line in worker.stdout:
        if json.loads(line).get("round") == 2:
            os.kill(worker.pid, signal.SIGKILL)
            break
    worker.wait(timeout=30)
    assert worker.returncode == -signal.SIGKILL, worker.stderr.read()
    (experiment,) = ExperimentStore(url).list_experiments()
    assert (experiment.status, experiment.rounds_done) == ("running", 2), "round 3 ended before the kill"
    return experiment.id


def _back_to_killed(store: ExperimentStore, experiment_id: int, checkpoint: bytes) -> None:
    """The rows as the kill left them: rounds 1-2, the checkpoint after round 2, interrupted."""
    with store.sessions.begin() as session:
        later = select(Round.id).where(Round.experiment_id == experiment_id, Round.round > 2)
        session.execute(delete(ClientRound).where(ClientRound.round_id.in_(later)))
        session.execute(delete(Round).where(Round.experiment_id == experiment_id, Round.round > 2))
        session.merge(Checkpoint(experiment_id=experiment_id, round=2, state=checkpoint,
                                 sha256=hashlib.sha256(checkpoint).hexdigest(), created_at=utcnow()))  # fmt: skip
    store.finish(experiment_id, "interrupted", error="killed")


def test_two_cli_resumes_at_once_one_runs_the_other_refuses(shared_db_url, started):
    """Two real `cli.py resume` processes started together after a run was killed with SIGKILL
    after round 2 of 3, FPL_RESUME_RACE_REPETITIONS times (3 by default; each pair trains a
    round): exactly one runs round 3 and completes, the other exits 1 with one clear line on
    stderr; every round is stored once. The run goes back to its killed state between pairs."""
    repetitions = int(os.environ.get("FPL_RESUME_RACE_REPETITIONS", "3"))
    experiment_id = _killed_after_round_two(shared_db_url, started)
    store = ExperimentStore(shared_db_url)
    assert store.mark_interrupted_if_dead(pid_alive) == [experiment_id]
    killed_checkpoint = store.load_checkpoint(experiment_id)[1]
    finals = []
    for repetition in range(repetitions):
        if repetition:
            _back_to_killed(store, experiment_id, killed_checkpoint)
        command = [sys.executable, str(REPO / "cli.py"), "resume", str(experiment_id), "--db", shared_db_url, "--json"]
        pair = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
                for _ in range(2)]  # fmt: skip
        started.extend(pair)
        outputs = [process.communicate(timeout=300) for process in pair]

        codes = sorted(process.returncode for process in pair)
        assert codes == [0, 1], [(p.returncode, err[-500:]) for p, (_, err) in zip(pair, outputs)]
        (winner, (out, _)), (_, (_, refusal)) = sorted(zip(pair, outputs), key=lambda item: item[0].returncode)
        assert re.fullmatch(f"error: {LOSER_LINE.format(id=experiment_id, pid=winner.pid)}\n", refusal), refusal
        final = json.loads(out.splitlines()[-1])
        assert (final["status"], final["rounds"]) == ("completed", 3)
        experiment = store.get_experiment(experiment_id)
        assert (experiment.status, experiment.error) == ("completed", None)
        assert store.rounds_frame([experiment_id])["round"].tolist() == [1, 2, 3]  # each once
        assert len(store.client_rounds_frame(experiment_id)) == 3 * CLIENTS
        finals.append(final["accuracy"])
    assert len(set(finals)) == 1  # every winner resumed from the same checkpoint to the same end
    print(f"\n{repetitions} pairs of `cli.py resume`: each time one completed and one refused")


def test_a_stopped_local_worker_is_never_marked_but_a_silent_one_elsewhere_is(db_url, started, monkeypatch):
    """A worker paused with SIGSTOP (or too busy to beat) is alive: its PID decides on this host,
    however old its heartbeat. A row of another host is judged by its heartbeat alone. The stale
    limit is cut to 0.5 s so that 4 s of checks are 8 stale limits."""
    monkeypatch.setattr(database, "STALE_HEARTBEAT_SECONDS", 0.5)
    store = ExperimentStore(db_url)
    worker = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    started.append(worker)
    local, elsewhere = (store.create_experiment({}) for _ in range(2))
    for experiment_id in (local, elsewhere):
        store.mark_running(experiment_id, pid=worker.pid)
    store._update(elsewhere, worker_host=f"not-{socket.gethostname()}")  # the same PID on another machine
    os.kill(worker.pid, signal.SIGSTOP)  # it beats no more: both heartbeats age from here
    marked = []
    try:
        deadline = time.monotonic() + 4
        while time.monotonic() < deadline:
            marked += store.mark_interrupted_if_dead(pid_alive)
            time.sleep(0.2)
        assert psutil.Process(worker.pid).status() == psutil.STATUS_STOPPED
    finally:
        os.kill(worker.pid, signal.SIGCONT)

    assert marked == [elsewhere]
    assert store.get_experiment(local).status == "running"
    with store.sessions() as session:  # its heartbeat was stale for most of those 4 s
        assert session.get(Experiment, local).heartbeat_at < utcnow() - timedelta(seconds=3)
    assert "heartbeat" in store.get_experiment(elsewhere).error
    worker.kill()
    worker.wait(timeout=30)
    assert store.mark_interrupted_if_dead(pid_alive) == [local]  # gone: marked at the first look
