"""Load check of the REST API: readers polling and streaming while two runs train.

    python -m bench.api_load [--readers 50] [--rounds 20] [--train-examples 1200] [--pause 1.0] [--lockstep] [--json]

Starts `cli.py serve` on a free 127.0.0.1 port over a temporary SQLite database, creates two runs
through the API (MNIST MLP, small subsets; each trains in its own worker process), and while they
train runs `--readers` concurrent readers. Each holds one event stream (of run 1 or run 2,
alternately) and polls every `--pause` seconds (the page redraws every 1.5 s): the list, one run,
its rounds after the last it saw. The pollers start spread over one pause, as tabs opened at
different moments do; `--lockstep` starts them together, so every second brings a burst of 50
requests that the server answers one after another (the worst case: the last waits for the rest). Prints the requests, errors, read latency in ms (p50, p95, max,
as the client sees it, its own scheduling included; `server_`: from the request reaching the app to
its response headers, `Server-Timing`), the CPU seconds of server and client, the load average,
and whether every stream saw every round exactly once (against the rounds stored at the end).
Target: no error, p95 <= 100 ms, every round exactly once.

`api_server` (a server subprocess on loopback, stopped by PID with the workers it left running) is
what `tests/test_api.py` starts its servers with.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import psutil

REPO = Path(__file__).resolve().parents[1]
READY_SECONDS = 60.0  # a busy machine imports FastAPI, SQLAlchemy and pandas slowly


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


@contextmanager
def api_server(
    db_url: str, *, host: str = "127.0.0.1", token: str | None = None, log: Path
) -> Iterator[tuple[str, int]]:
    """`cli.py serve` on `host` and a free port, output to `log`; yields (base URL, PID). On exit the
    server gets SIGTERM (SIGKILL after 15 s), then every worker still running a run of this
    database is stopped, by its recorded PID."""
    port = free_port(host)
    env = {key: value for key, value in os.environ.items() if key != "FPL_API_TOKEN"}
    env |= {"FPL_API_TOKEN": token} if token else {}
    command = [sys.executable, str(REPO / "cli.py"), "serve", "--host", host, "--port", str(port), "--db", db_url]
    with open(log, "wb") as output:
        process = subprocess.Popen(command, cwd=REPO, env=env, stdin=subprocess.DEVNULL, stdout=output, stderr=output)
    try:
        _wait_until_listening(process, host, port, log)
        yield f"http://{host}:{port}", process.pid
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        stop_workers(db_url)


def _wait_until_listening(process: subprocess.Popen[bytes], host: str, port: int, log: Path) -> None:
    deadline = time.monotonic() + READY_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited with code {process.returncode}: {log.read_text()[-2000:]}")
        try:
            socket.create_connection((host, port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"the server did not listen on {host}:{port} within {READY_SECONDS:.0f} s")


def stop_workers(db_url: str, timeout: float = 30.0) -> None:
    """SIGTERM every worker recorded on a queued or running run of `db_url` (each stops after its
    round), then wait for every recorded worker to exit (one that just finished its run is still
    closing); SIGKILL after `timeout` for the ones told to stop."""
    from database import ACTIVE_STATUSES, ExperimentStore
    from runs.workers import pid_alive

    experiments = ExperimentStore(db_url).list_experiments()
    recorded = {e.worker_pid for e in experiments if e.worker_pid and e.worker_pid != os.getpid()}
    active = {e.worker_pid for e in experiments if e.status in ACTIVE_STATUSES} & recorded
    for pid in active:
        if pid_alive(pid):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while (alive := [pid for pid in recorded if pid_alive(pid)]) and time.monotonic() < deadline:
        time.sleep(0.2)
    for pid in set(alive) & active:
        os.kill(pid, signal.SIGKILL)


def run_request(rounds: int, train_examples: int, name: str) -> dict[str, Any]:
    """A small MNIST MLP run (the tests' knobs, scaled by `train_examples`)."""
    return {"name": name, "config": {
        "model": {"name": "mlp"},
        "data": {"max_train_examples": train_examples, "max_test_examples": 500},
        "federation": {"num_clients": 4, "clients_per_round": 2, "rounds": rounds},
        "privacy": {"audit_examples": 0}, "system": {"num_workers": 1},
    }}  # fmt: skip


async def read_stream(client: httpx.AsyncClient, experiment_id: int) -> dict[str, Any]:
    """Follow a run's event stream to its end: {"rounds": [round numbers in order], "end": payload}."""
    rounds, event, end = [], "", None
    async with client.stream("GET", f"/runs/{experiment_id}/stream", timeout=None) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if line.startswith("event: "):
                event = line.removeprefix("event: ")
            elif line.startswith("data: ") and event == "round":
                rounds.append(json.loads(line.removeprefix("data: "))["round"])
            elif line.startswith("data: ") and event == "end":
                end = json.loads(line.removeprefix("data: "))
                break
    return {"id": experiment_id, "rounds": rounds, "end": end}


async def poll(client: httpx.AsyncClient, experiment_ids: list[int], done: asyncio.Event, pause: float,
               latencies: list[float], server_seconds: list[float], errors: list[str],
               offset: float = 0.0) -> None:  # fmt: skip
    """After `offset` seconds, read in a loop until `done`: the list, one run, its rounds after the last
    seen; each request's latency in seconds into `latencies` (the server's own, from `Server-Timing`,
    into `server_seconds`), anything but 200 into `errors`."""
    await asyncio.sleep(offset)
    seen = dict.fromkeys(experiment_ids, 0)
    step = 0
    while not done.is_set():
        experiment_id = experiment_ids[step % len(experiment_ids)]
        path = ("/runs", f"/runs/{experiment_id}", f"/runs/{experiment_id}/rounds?after={seen[experiment_id]}")[
            step % 3
        ]
        started = time.perf_counter()
        try:
            response = await client.get(path)
        except httpx.HTTPError as error:
            errors.append(f"{path}: {type(error).__name__}: {error}")
        else:
            latencies.append(time.perf_counter() - started)
            timing = response.headers.get("server-timing", "")
            if timing.startswith("app;dur="):
                server_seconds.append(float(timing.removeprefix("app;dur=")) / 1000)
            if response.status_code != 200:
                errors.append(f"{path}: {response.status_code} {response.text[:200]}")
            elif path.endswith(f"after={seen[experiment_id]}") and (rows := response.json()):
                seen[experiment_id] = rows[-1]["round"]
        step += 1
        await asyncio.sleep(pause)


async def load(
    base_url: str, *, readers: int, rounds: int, train_examples: int, pause: float, deadline: float,
    lockstep: bool = False,
) -> dict[str, Any]:  # fmt: skip
    """Create two runs, then `readers` streams and pollers until both runs end (or `deadline` seconds
    pass: the streams still open then count as not having seen every round); the figures. The pollers
    start spread evenly over one `pause`, as tabs opened at different moments poll; `lockstep`: all
    at once, so each second brings one burst of `readers` requests (the worst case)."""
    limits = httpx.Limits(max_connections=3 * readers + 10, max_keepalive_connections=3 * readers + 10)
    async with httpx.AsyncClient(base_url=base_url, limits=limits, timeout=30) as client:
        experiment_ids = []
        for index in range(2):
            response = await client.post("/runs", json=run_request(rounds, train_examples, f"load {index + 1}"))
            response.raise_for_status()
            experiment_ids.append(response.json()["id"])
        latencies: list[float] = []
        server_seconds: list[float] = []
        errors: list[str] = []
        done = asyncio.Event()
        pollers = [asyncio.create_task(poll(client, experiment_ids, done, pause, latencies, server_seconds, errors,
                                            offset=0.0 if lockstep else index * pause / readers))
                   for index in range(readers)]  # fmt: skip
        started = time.perf_counter()
        tasks = [asyncio.create_task(read_stream(client, experiment_ids[i % 2])) for i in range(readers)]
        finished, unfinished = await asyncio.wait(tasks, timeout=deadline)
        seconds = time.perf_counter() - started
        done.set()
        for task in unfinished:
            task.cancel()
        await asyncio.gather(*pollers, *unfinished, return_exceptions=True)
        streams = [task.result() for task in tasks if task in finished and task.exception() is None]
        errors += [f"stream: {type(t.exception()).__name__}: {t.exception()}" for t in finished if t.exception()]
        errors += [f"stream still open after {deadline:.0f} s" for _ in unfinished]
        stored = {i: [row["round"] for row in (await client.get(f"/runs/{i}/rounds")).json()] for i in experiment_ids}
        statuses = {i: (await client.get(f"/runs/{i}")).json()["status"] for i in experiment_ids}
    return figures(streams, stored, statuses, latencies, server_seconds, errors, seconds)


def figures(streams: list[dict[str, Any]], stored: dict[int, list[int]], statuses: dict[int, str],
            latencies: list[float], server_seconds: list[float], errors: list[str],
            seconds: float) -> dict[str, Any]:  # fmt: skip
    """The figures: each latency quantile in ms; streams compared with the rounds stored."""

    def quantile(values: list[float], q: float) -> float:
        ordered = sorted(values)
        return round(1000 * ordered[min(len(ordered) - 1, int(q * len(ordered)))], 1) if ordered else float("nan")

    exactly_once = bool(streams) and all(s["rounds"] == stored[s["id"]] and s["end"] is not None for s in streams)
    return {
        "streams_ended": len(streams), "seconds": round(seconds, 1), "statuses": statuses,
        "rounds_stored": {i: len(r) for i, r in stored.items()}, "requests": len(latencies), "errors": len(errors),
        "first_errors": errors[:5], "p50_ms": quantile(latencies, 0.5), "p95_ms": quantile(latencies, 0.95),
        "max_ms": quantile(latencies, 1.0), "server_p50_ms": quantile(server_seconds, 0.5),
        "server_p95_ms": quantile(server_seconds, 0.95), "every_round_once": exactly_once,
    }  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--readers", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--train-examples", type=int, default=1200)
    parser.add_argument("--pause", type=float, default=1.0, help="seconds between a poller's requests")
    parser.add_argument("--deadline", type=float, default=150.0, help="seconds the streams may take")
    parser.add_argument("--lockstep", action="store_true", help="every poller at once (bursts), not spread over a pause")
    parser.add_argument("--json", action="store_true", help="print the figures as one JSON object")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # `timeout` still stops the server and workers
    os.environ.setdefault("FPL_DATA_DIR", str(REPO.parent / "shared" / "data"))
    with tempfile.TemporaryDirectory() as folder:
        db_url = f"sqlite:///{Path(folder) / 'experiments.db'}"
        with api_server(db_url, log=Path(folder) / "server.log") as (base_url, server_pid):
            result = asyncio.run(load(base_url, readers=args.readers, rounds=args.rounds,
                                      train_examples=args.train_examples, pause=args.pause,
                                      deadline=args.deadline, lockstep=args.lockstep))  # fmt: skip
            server_cpu = sum(psutil.Process(server_pid).cpu_times()[:2])
            result["server_cpu_seconds"] = round(server_cpu, 1)  # its start-up (imports) included
            result["client_cpu_seconds"] = round(sum(psutil.Process().cpu_times()[:2]), 1)
            result["load_average_1min"] = os.getloadavg()[0]  # others' work on this machine shows here
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key:>18}: {value}")
    ok = (
        result["errors"] == 0
        and result["streams_ended"] == args.readers
        and result["every_round_once"]
        and set(result["statuses"].values()) == {"completed"}
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
