"""Flower on this machine: a SuperLink and one SuperNode per client on loopback, started as
child processes, the apps (`flower_runtime/server_app.py`, `client_app.py`) run on them, and exactly those processes stopped
by PID afterwards, whatever happens (`insecure` mode: loopback only).

    from flower_runtime.deployment import run_local_deployment
    experiment_id = run_local_deployment(config, db_url="sqlite:///experiments.db")

The multi-machine recipe (TLS, SuperNode authentication) is in `flower_runtime`'s docstring.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psutil

from experiment_config import ExperimentConfig
from flower_runtime.messages import POLL_SECONDS, REPO, RUNTIME, RunOptions, check_supported
from flower_runtime.site_data import at_sites, write_sites

if TYPE_CHECKING:
    from database import ExperimentStore



def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def flower_command(name: str) -> str:
    """A Flower console script of this interpreter's installation (not some other Python's)."""
    beside = Path(sys.executable).parent / name
    found = str(beside) if beside.exists() else shutil.which(name)
    if found is None:
        raise RuntimeError(f"{name} not found: install the pinned flwr (pip install -r requirements.txt)")
    return found


class LocalDeployment:
    """A SuperLink and `num_supernodes` SuperNodes on loopback (insecure: loopback only),
    child processes of this one, stopped by PID in `close` (also on Ctrl-C: use `with`).

    SuperNode i hosts client i (`--node-config "partition-id=i num-partitions=N"`, and with
    `data_paths` its own training file, `data-path=data_paths[i]`: `flower_data`). With
    `simulation`, the SuperLink runs Flower's simulation engine instead (Ray, from
    `flwr[simulation]`) with N virtual SuperNodes, and no SuperNode process is started.
    Each started process and its descendants carry `FPL_FLOWER_LAUNCHER=<this pid>` and
    `FPL_FLOWER_DEPLOYMENT=<a token>` in their environment: what a launcher started can be
    found in the process table, and `close` finds its stragglers there too.
    """

    def __init__(
        self, num_supernodes: int, *, work_dir: Path, simulation: bool = False, start_timeout_s: float = 60.0,
        data_paths: Sequence[str] = (), site_privacy: str = "",
    ) -> None:  # fmt: skip
        if num_supernodes < 1:
            raise ValueError(f"num_supernodes must be >= 1, got {num_supernodes}")
        if data_paths and (simulation or len(data_paths) != num_supernodes):
            raise ValueError(f"data_paths: one per SuperNode ({num_supernodes}), and no simulation (its virtual "
                             f"nodes have no node config), got {len(data_paths)}")  # fmt: skip
        self.num_supernodes, self.work_dir, self.start_timeout_s = num_supernodes, work_dir, start_timeout_s
        self.simulation, self.data_paths = simulation, list(data_paths)
        self.site_privacy = site_privacy  # node-config keys every site sets for itself (`site_privacy_config`)
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self.port = 0
        self.token = f"{os.getpid()}-{time.time_ns()}"
        self.env = dict(os.environ)
        self.env.update({
            "FLWR_HOME": str(work_dir / "flwr-home"), "FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1",
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
            "PYTHONUNBUFFERED": "1", "FPL_FLOWER_LAUNCHER": str(os.getpid()), "FPL_FLOWER_DEPLOYMENT": self.token,
        })  # fmt: skip

    def __enter__(self) -> LocalDeployment:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def start(self) -> None:
        (self.work_dir / "logs").mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self._spawn("superlink", [
            flower_command("flower-superlink"), "--insecure", "--host", "127.0.0.1", "--port", str(self.port),
            "--disable-runtime-dependency-installation", *(["--simulation"] if self.simulation else []),
        ])  # fmt: skip
        self._wait_for_port()
        threads = max(1, (os.cpu_count() or 1) // self.num_supernodes)  # the nodes share this machine's cores
        for i in range(0 if self.simulation else self.num_supernodes):
            node_config = f"partition-id={i} num-partitions={self.num_supernodes} num-threads={threads}"
            if self.data_paths:
                node_config += f" data-path={json.dumps(self.data_paths[i])}"  # a quoted TOML string
            if self.site_privacy:
                node_config += f" {self.site_privacy}"
            self._spawn(f"supernode-{i}", [
                flower_command("flower-supernode"), "--insecure", "--superlink", f"127.0.0.1:{self.port}",
                "--port", str(free_port()), "--node-config", node_config,
            ])  # fmt: skip
        home = self.work_dir / "flwr-home"
        home.mkdir(parents=True, exist_ok=True)
        (home / "config.toml").write_text(
            f'[superlink]\ndefault = "local"\n\n[superlink.local]\naddress = "127.0.0.1:{self.port}"\ninsecure = true\n'
        )

    def _spawn(self, name: str, command: list[str]) -> None:
        with open(self.work_dir / "logs" / f"{name}.log", "wb") as log_file:  # the child keeps its own handle
            # Its own session: Ctrl-C reaches only us, and we stop it (in `close`).
            self.processes[name] = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT, env=self.env,
                cwd=self.work_dir, start_new_session=True,
            )  # fmt: skip

    def _wait_for_port(self) -> None:
        deadline = time.monotonic() + self.start_timeout_s
        while time.monotonic() < deadline:
            if self.processes["superlink"].poll() is not None:
                raise RuntimeError(f"flower-superlink exited at start: {self.log_tail('superlink')}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), timeout=1.0):
                return
            time.sleep(0.2)
        raise RuntimeError(f"flower-superlink did not listen on port {self.port} within {self.start_timeout_s:.0f} s")

    def log_tail(self, name: str, chars: int = 2000) -> str:
        path = self.work_dir / "logs" / f"{name}.log"
        return path.read_text(errors="replace")[-chars:] if path.exists() else ""

    def flwr(self, *args: str, timeout_s: float = 120.0) -> subprocess.CompletedProcess[str]:
        """Run the `flwr` CLI against this deployment's SuperLink (connection "local")."""
        return subprocess.run([flower_command("flwr"), *args], capture_output=True, text=True, env=self.env,
                              cwd=self.work_dir, timeout=timeout_s, check=False)  # fmt: skip

    def start_run(self, options: RunOptions, *, app_dir: Path | None = None) -> int:
        """`flwr run` this repository's app (`staged_app`, unless `app_dir`) with `options` as its run
        config; returns the run id."""
        import tomli_w  # a dependency of flwr

        app_dir = app_dir or staged_app(REPO, self.work_dir / "app")
        run_config = self.work_dir / "run-config.toml"
        run_config.write_text(tomli_w.dumps(options.to_run_config()))
        simulation = ["--federation-config", f"num-supernodes={self.num_supernodes}"] if self.simulation else []
        done = self.flwr("run", str(app_dir), "local", "--run-config", str(run_config), *simulation, "--format", "json")
        try:
            return int(json.loads(done.stdout)["run-id"])
        except (ValueError, KeyError) as error:
            raise RuntimeError(f"flwr run failed ({error}): {done.stdout[-2000:]} {done.stderr[-2000:]}") from None

    def run_status(self, run_id: int) -> str:
        """The SuperLink's status of a run ("running", "finished:completed", ...), "" if unknown."""
        done = self.flwr("ls", "local", "--run-id", str(run_id), "--format", "json", timeout_s=60.0)
        with contextlib.suppress(ValueError, KeyError, IndexError):
            return str(json.loads(done.stdout)["runs"][0]["status"])
        return ""

    def kill_supernode(self, index: int) -> None:
        """SIGKILL SuperNode `index` and its ClientApp processes (a site that vanished)."""
        process = self.processes[f"supernode-{index}"]
        _signal_all(_with_descendants([process.pid]), signal.SIGKILL)
        process.wait(timeout=10)

    def close(self, grace_s: float = 10.0) -> None:
        """Stop every process started here and each of their descendants, by PID: SIGTERM,
        then SIGKILL for what is left after `grace_s`."""
        if not self.processes:
            return
        started = [p.pid for p in self.processes.values() if p.poll() is None]
        family = _with_descendants(started)  # before they go: orphans are not anyone's children
        _signal_all(family, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        for process in self.processes.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=max(deadline - time.monotonic(), 0.1))
        _signal_all(_alive(family | _with_descendants(started) | self._stragglers()), signal.SIGKILL)
        for process in self.processes.values():
            process.wait()
        self.processes.clear()

    def _stragglers(self) -> set[int]:
        """Live processes with this deployment's token: descendants that outlived their parents."""
        found = set()
        for process in psutil.process_iter():
            with contextlib.suppress(psutil.Error):
                if process.environ().get("FPL_FLOWER_DEPLOYMENT") == self.token:
                    found.add(process.pid)
        return found


def _with_descendants(pids: list[int]) -> set[int]:
    import psutil

    family = set()
    for pid in pids:
        with contextlib.suppress(psutil.NoSuchProcess):
            family |= {pid, *(child.pid for child in psutil.Process(pid).children(recursive=True))}
    return family


def _alive(pids: set[int]) -> set[int]:
    import psutil

    alive = set()
    for pid in pids:
        with contextlib.suppress(psutil.NoSuchProcess):
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                alive.add(pid)
    return alive


def _signal_all(pids: set[int], signum: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signum)


def run_local_deployment(
    config: ExperimentConfig,
    *,
    db_url: str,
    num_supernodes: int | None = None,
    timeout_s: float = 3600.0,
    round_timeout_s: float = 600.0,
    work_dir: str | Path | None = None,
    simulation: bool = False,
    on_started: Any = None,
    experiment_id: int | None = None,
    on_poll: Callable[[], None] | None = None,
) -> int:
    """Run `config` on a local Flower deployment; returns the experiment id.

    Starts `flower-superlink` and one `flower-supernode` per client (`num_supernodes` must
    equal `federation.num_clients`; None: that many) on loopback, runs this app with
    `flwr run`, waits until the ServerApp has finished the experiment in `db_url`, and stops
    exactly the processes it started, by PID, in any case (also on Ctrl-C). A run still
    going after `timeout_s` seconds is stopped and recorded failed, and TimeoutError is
    raised. `on_started(deployment, experiment_id)` (tests) is called once the run started.
    Logs go to `work_dir` (default: a temporary directory, removed afterwards). `simulation`:
    Flower's simulation engine (Ray; `pip install "flwr[simulation]"`) instead of SuperNodes.
    Imported NGSS data (`data.dataset = "csv"`) is split first into one training file per school
    in `work_dir`, each SuperNode given its own (`data-path`), and the server's test file: the
    ServerApp never opens the training rows (`flower_data`).
    SIGTERM, when nothing else handles it, is treated like Ctrl-C. `experiment_id`: record into
    this stored (queued) experiment instead of creating one (the page and `cli.py worker`).
    `on_poll()` is called each time the database is polled while the run goes (it reports the
    rounds the ServerApp stored meanwhile).
    """
    from sqlalchemy import make_url

    from database import FINAL_STATUSES, ExperimentStore

    check_supported(config)
    num_supernodes = config.federation.num_clients if num_supernodes is None else num_supernodes
    if num_supernodes != config.federation.num_clients:
        raise ValueError(f"one SuperNode per client: num_supernodes ({num_supernodes}) must equal "
                         f"federation.num_clients ({config.federation.num_clients})")  # fmt: skip
    url = make_url(db_url)
    if url.get_backend_name() == "sqlite" and url.database and url.database != ":memory:":
        db_url = url.set(database=str(Path(url.database).expanduser().resolve())).render_as_string(hide_password=False)
    store = ExperimentStore(db_url)
    if experiment_id is None:
        experiment_id = store.create_experiment(config.to_dict(), runtime=RUNTIME)
    else:
        store.set_runtime(experiment_id, RUNTIME)
    if simulation and at_sites(config):
        raise ValueError("data.dataset 'csv' needs one SuperNode per school with its own file: no simulation")
    deadline = time.monotonic() + timeout_s
    with contextlib.ExitStack() as stack:
        stack.enter_context(_sigterm_as_interrupt())
        if work_dir is None:
            work_dir = stack.enter_context(tempfile.TemporaryDirectory(prefix="fpl-flower-"))
        try:
            run_config, data_paths = _deployed_config(config, Path(work_dir))
        except BaseException as error:
            store.finish(experiment_id, "failed", error=f"{type(error).__name__}: {error}")
            raise
        options = RunOptions(experiment=run_config.to_json(), db_url=db_url, experiment_id=experiment_id,
                             round_timeout_s=round_timeout_s)  # fmt: skip
        deployment = LocalDeployment(num_supernodes, work_dir=Path(work_dir), simulation=simulation,
                                     data_paths=data_paths, site_privacy=site_privacy_config(config))  # fmt: skip
        stack.enter_context(deployment)
        try:
            run_id = deployment.start_run(options)
            if on_started is not None:
                on_started(deployment, experiment_id)
            _wait_for_experiment(store, experiment_id, deployment, run_id, deadline, FINAL_STATUSES, on_poll)
        except BaseException as error:
            summary = store.get_experiment(experiment_id)
            if summary is not None and summary.status not in FINAL_STATUSES:
                status = "interrupted" if isinstance(error, KeyboardInterrupt) else "failed"
                store.finish(experiment_id, status, error=f"{type(error).__name__}: {error}")
            raise
    return experiment_id


def site_privacy_config(config: ExperimentConfig) -> str:
    """The node-config with which each site of a local deployment guards its own local DP, from the
    config the user started (not from what the ServerApp later sends): σ's floor when σ is fixed,
    the ε limit when σ is calibrated to a target (or a budget is set); "" without local DP."""
    privacy = config.privacy
    if privacy.mode != "local":
        return ""
    keys = [f"delta={privacy.delta!r}"]
    if privacy.target_epsilon > 0:
        keys.append(f"max-epsilon={privacy.target_epsilon * 1.01!r}")  # calibration lands within 1% of its target
    else:
        keys.append(f"min-noise-multiplier={privacy.noise_multiplier!r}")
    if privacy.max_epsilon > 0:
        keys = [k for k in keys if not k.startswith("max-epsilon")] + [f"max-epsilon={privacy.max_epsilon!r}"]
    return " ".join(keys)


def _deployed_config(config: ExperimentConfig, work_dir: Path) -> tuple[ExperimentConfig, list[str]]:
    """The config the apps run (paths absolute: they run elsewhere) and each SuperNode's data-path:
    imported data is written out per school here, the subsets already applied."""
    data_dir = str(Path(config.data.data_dir).expanduser().resolve())
    config = config.replace("data", data_dir=data_dir)
    if not at_sites(config):
        return config, []
    server_csv, data_paths = write_sites(config, work_dir.resolve())
    return config.replace("data", csv_path=server_csv, max_train_examples=0, max_test_examples=0), data_paths


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM raises KeyboardInterrupt meanwhile (so `finally` blocks stop our processes), unless
    this is not the main thread or someone else already handles SIGTERM."""
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGTERM) != signal.SIG_DFL:
        yield
        return

    def interrupt(_signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _running(pid: int) -> bool:
    """Whether process `pid` runs on this machine (a zombie, killed and not yet reaped, does not)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _record_unfinished(
    store: ExperimentStore, summary: Any, deployment: LocalDeployment, run_id: int, status: str
) -> None:
    """A Flower run that ended without finishing its experiment: `interrupted` when its ServerApp
    process died (killed: it resumes from its last checkpoint), else `failed` with its log's end."""
    pid = summary.worker_pid
    if pid is not None and summary.worker_host == socket.gethostname() and not _running(pid):
        store.finish(summary.id, "interrupted", error=f"the ServerApp process ({pid}) died; the Flower run ended "
                     f"({status})")  # fmt: skip
        return
    logs = deployment.flwr("log", str(run_id), "local", "--show", timeout_s=30.0).stdout[-3000:]
    store.finish(summary.id, "failed", error=f"the Flower run ended ({status}): {logs}")


def staged_app(repo: Path, folder: Path) -> Path:
    """A copy of what pyproject.toml's `fab-include` names (and pyproject.toml) in `folder`, for `flwr
    run` to bundle; flwr still applies `fab-exclude`, which must match a file. `flwr` walks every
    file under the app directory it is given to match those patterns, a `.venv` in the checkout
    included: 4.2 s of a run's start-up here against 0.9 s for the copy (measured with `flwr build`)."""
    import tomllib

    app = tomllib.loads((repo / "pyproject.toml").read_text())["tool"]["flwr"]["app"]
    shutil.rmtree(folder, ignore_errors=True)
    for pattern in app["fab-include"]:
        for path in repo.glob(pattern.lstrip("/")):  # patterns name folders: the walk stays inside them
            if path.is_file():
                target = folder / path.relative_to(repo)
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, target)
    shutil.copy2(repo / "pyproject.toml", folder / "pyproject.toml")
    return folder


def _wait_for_experiment(
    store: ExperimentStore, experiment_id: int, deployment: LocalDeployment, run_id: int, deadline: float,
    final: tuple[str, ...], on_poll: Callable[[], None] | None = None,
) -> None:  # fmt: skip
    """Until the experiment is final in the database; a Flower run that ended without
    finishing it (the ServerApp crashed) is recorded failed with the end of its log."""
    next_check = time.monotonic() + 5.0
    while (summary := store.get_experiment(experiment_id)) is not None and summary.status not in final:
        if on_poll is not None:
            on_poll()
        now = time.monotonic()
        if (code := deployment.processes["superlink"].poll()) is not None:
            raise RuntimeError(f"flower-superlink exited (code {code}): {deployment.log_tail('superlink')}")
        if now > deadline:
            deployment.flwr("stop", str(run_id), "local", timeout_s=30.0)
            raise TimeoutError(f"the Flower run {run_id} did not finish in time")
        if now > next_check:
            next_check = now + 5.0
            if (status := deployment.run_status(run_id)).startswith("finished"):
                time.sleep(1.0)  # the ServerApp's last commit may be on its way
                summary = store.get_experiment(experiment_id)
                if summary is not None and summary.status not in final:
                    _record_unfinished(store, summary, deployment, run_id, status)
                return
        time.sleep(POLL_SECONDS)
