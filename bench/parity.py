"""Flower parity: each config on a real local Flower deployment against the in-process engine.

    python -m bench.parity [--cases fedavg,median,...] [--rounds 2] [--data-dir ../shared/data]

For each case the same config runs twice: in-process (the runs service, this machine) and on a
local deployment (a SuperLink and one SuperNode per client on loopback, started and stopped by
PID; the ServerApp runs the engine's round loop with Flower as its trainer). It prints, per case,
the largest per-round difference of accuracy, loss and ε, whether the client rows (id, examples,
steps, status, bytes) are equal, and both wall times. Cases the Flower runtime still refuses are
printed with the config error. "kill -9 + resume": the ServerApp's process is killed with SIGKILL
in round 2; the run is marked interrupted, resumed on a new deployment, and its final weights are
compared with an uninterrupted in-process run's.

MNIST MLP, 3 clients of 1,000 examples (NGSS: MiniLM, 2 schools of 20 responses), E = 1, B = 50.
"""

from __future__ import annotations

import argparse
import io
import os
import signal
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

os.environ["FLWR_TELEMETRY_ENABLED"] = "0"  # before flwr is imported
os.environ["FLWR_DISABLE_UPDATE_CHECK"] = "1"

import psutil  # noqa: E402
import torch  # noqa: E402

from database import ExperimentStore  # noqa: E402
from experiment_config import ExperimentConfig  # noqa: E402
from flower_runtime.deployment import LocalDeployment, run_local_deployment  # noqa: E402
from flower_runtime.messages import check_supported  # noqa: E402
from runs import service  # noqa: E402
from runs.workers import StopSignals  # noqa: E402

SAME = ["round", "client_id", "num_examples", "steps", "status", "bytes_up", "bytes_down"]


def mnist(rounds: int, **federation: Any) -> ExperimentConfig:
    return ExperimentConfig.from_dict({
        "data": {"max_train_examples": 3000, "max_test_examples": 2000},
        "model": {"name": "mlp"},
        "federation": {"num_clients": 3, "clients_per_round": 3, "rounds": rounds, **federation},
        "privacy": {"audit_examples": 0},
    })  # fmt: skip


def cases(rounds: int) -> dict[str, ExperimentConfig]:
    base = mnist(rounds)
    return {
        "fedavg": base,
        "fedprox": mnist(rounds, strategy="fedprox", proximal_mu=0.1),
        "scaffold": mnist(rounds, strategy="scaffold"),
        "fedadam": mnist(rounds, strategy="fedadam"),
        "median": mnist(rounds, strategy="median"),
        "multi_krum": mnist(rounds, strategy="multi_krum", byzantine_clients=0, multi_krum_keep=2),
        "local DP": base.replace("privacy", mode="local", noise_multiplier=1.0),
        "central DP adaptive C": mnist(rounds, clients_per_round=2).replace(
            "privacy", mode="central", noise_multiplier=0.03, max_grad_norm=2.0, adaptive_clipping=True),
        "secure aggregation": mnist(rounds, secure_aggregation=True),
        "secure aggregation + central DP": mnist(rounds, clients_per_round=2, secure_aggregation=True).replace(
            "privacy", mode="central", noise_multiplier=0.03, max_grad_norm=2.0, adaptive_clipping=True),
        "top-k": base.replace("communication", compression="topk", topk_fraction=0.05),
        "QSGD": base.replace("communication", compression="qsgd"),
        "sign-flip attackers": base.replace("attack", fraction=0.34, behaviour="sign_flip"),
        "dropout + deadline": mnist(rounds + 1, dropout_probability=0.4, dropout_stage="during", round_deadline=1.0,
                                    speed_spread=1.0),
        "FedPer": mnist(rounds, personalization="fedper", client_holdout=0.1),
        "fine-tuning": mnist(rounds, personalization="finetune", client_holdout=0.1),
        "power-of-choice": mnist(rounds, clients_per_round=2, selection="power_of_choice", selection_candidates=3),
        "MLX": base.replace("system", backend="mlx"),
        "NGSS MiniLM": ExperimentConfig.from_dict({
            "data": {"dataset": "ngss", "partition": "natural", "max_train_examples": 60, "max_test_examples": 30},
            "model": {"name": "minilm-lora", "max_length": 32},
            "federation": {"num_clients": 9, "clients_per_round": 9, "rounds": rounds, "batch_size": 4,
                           "learning_rate": 0.003, "client_optimizer": "adamw"},
            "privacy": {"audit_examples": 0},
        }),
    }  # fmt: skip


def in_process(store: ExperimentStore, config: ExperimentConfig) -> tuple[int, float]:
    experiment_id, started = service.create(store, config), time.monotonic()
    service.execute(store, experiment_id, config.replace("system", num_workers=1), reporter=service.SilentReporter(),
                    signals=StopSignals(handle=False))  # fmt: skip
    return experiment_id, time.monotonic() - started


def on_flower(store: ExperimentStore, config: ExperimentConfig, **options: Any) -> tuple[int, float]:
    started = time.monotonic()
    options.setdefault("round_timeout_s", 600)
    experiment_id = run_local_deployment(config, db_url=store.url, timeout_s=1800, **options)
    return experiment_id, time.monotonic() - started


def compare(store: ExperimentStore, flower_id: int, engine_id: int) -> str:
    flower, engine = store.rounds_frame([flower_id]), store.rounds_frame([engine_id])
    if len(flower) != len(engine):
        return f"rounds differ: {len(flower)} on Flower, {len(engine)} in-process"
    gaps = [float((flower[c] - engine[c]).abs().max()) for c in ("accuracy", "loss", "epsilon")]
    flower_clients = store.client_rounds_frame(flower_id)[SAME].to_dict("records")
    clients_equal = flower_clients == store.client_rounds_frame(engine_id)[SAME].to_dict("records")
    line = f"|Δacc| {gaps[0]:.2e}  |Δloss| {gaps[1]:.2e}  |Δε| {gaps[2]:.2e}  clients {'equal' if clients_equal else 'DIFFER'}"
    flower_personal = store.get_experiment(flower_id).personalization
    engine_personal = store.get_experiment(engine_id).personalization
    if flower_personal or engine_personal:
        gap = max((abs(a["personalized_accuracy"] - b["personalized_accuracy"])
                   for a, b in zip(flower_personal["clients"], engine_personal["clients"], strict=True)), default=0.0)
        line += f"  personalized |Δacc| {gap:.2e}"
    return line


def server_app_pid() -> int | None:
    """The PID of the flwr-serverapp process this process's deployment started, if one runs."""
    mine = str(os.getpid())
    for process in psutil.process_iter(["cmdline"]):
        try:
            cmdline = " ".join(process.info["cmdline"] or [])
            if "flwr-serverapp" in cmdline and process.environ().get("FPL_FLOWER_LAUNCHER") == mine:
                return process.pid
        except psutil.Error:
            continue
    return None


def kill_and_resume(store: ExperimentStore, config: ExperimentConfig) -> str:
    """SIGKILL the ServerApp in round 2, resume on a new deployment, compare with in-process."""
    killed: list[int] = []

    def kill_in_round_two(deployment: LocalDeployment, experiment_id: int) -> None:
        def watch() -> None:
            while store.rounds_frame([experiment_id]).empty:
                time.sleep(0.2)
            time.sleep(1.0)  # round 2's messages are out
            if (pid := server_app_pid()) is not None:
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)

        threading.Thread(target=watch, daemon=True).start()

    experiment_id, _ = on_flower(store, config, on_started=kill_in_round_two)
    interrupted = store.get_experiment(experiment_id)
    if not killed or interrupted.status != "interrupted":
        return f"not interrupted: killed {killed}, status {interrupted.status} ({interrupted.error})"
    done = store.reopen(experiment_id)
    on_flower(store, config, experiment_id=experiment_id)
    engine_id, _ = in_process(store, config)
    states = [torch.load(io.BytesIO(store.load_checkpoint(i)[1]), weights_only=True) for i in (experiment_id, engine_id)]
    gap = float((states[0]["weights"] - states[1]["weights"]).abs().max())
    final = store.get_experiment(experiment_id)
    return (f"killed ServerApp {killed[0]} after round {done}: {interrupted.status}; resumed: {final.status}, "
            f"{final.rounds_done} rounds; max |Δweight| vs in-process {gap:.2e}")  # fmt: skip


def secagg_node_killed(store: ExperimentStore) -> str:
    """Secure aggregation over 4 SuperNodes, one SIGKILLed once round 1 is recorded: the later
    rounds sum the other three (its masks, if it had joined, removed through their shares)."""
    config = mnist(3, num_clients=4, clients_per_round=4, secure_aggregation=True, secagg_threshold=0.5)

    def kill_after_round_one(deployment: LocalDeployment, experiment_id: int) -> None:
        def watch() -> None:
            while store.rounds_frame([experiment_id]).empty:
                time.sleep(0.1)
            deployment.kill_supernode(1)

        threading.Thread(target=watch, daemon=True).start()

    experiment_id, seconds = on_flower(store, config, on_started=kill_after_round_one, round_timeout_s=60)
    clients = store.client_rounds_frame(experiment_id)
    statuses = {r: "".join(s[0] for s in clients[clients["round"] == r].status) for r in (1, 2, 3)}
    summary = store.get_experiment(experiment_id)
    return (f"{summary.status}, {summary.rounds_done} rounds, client statuses by round {statuses}, "
            f"accuracy {summary.final_accuracy:.4f}, {seconds:.0f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default="", help="comma-separated case names (default: all, and kill -9)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--data-dir", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    args = parser.parse_args()
    os.environ.setdefault("FPL_DATA_DIR", args.data_dir)
    all_cases = cases(args.rounds)
    extra = ["kill -9 + resume", "secure aggregation + SuperNode killed"]
    chosen = [c.strip() for c in args.cases.split(",") if c.strip()] or [*all_cases, *extra]
    with tempfile.TemporaryDirectory(prefix="fpl-parity-") as folder:
        store = ExperimentStore(f"sqlite:///{folder}/parity.db")
        print(f"{'case':<24} result")
        for name in chosen:
            if name == "kill -9 + resume":
                print(f"{name:<24} {kill_and_resume(store, mnist(3))}", flush=True)
                continue
            if name == "secure aggregation + SuperNode killed":
                print(f"{name:<24} {secagg_node_killed(store)}", flush=True)
                continue
            config = all_cases[name]
            try:
                check_supported(config)
            except ValueError as error:
                print(f"{name:<24} refused: {error}", flush=True)
                continue
            engine_id, engine_s = in_process(store, config)
            flower_id, flower_s = on_flower(store, config)
            print(f"{name:<24} {compare(store, flower_id, engine_id)}  in-process {engine_s:.0f} s, "
                  f"Flower {flower_s:.0f} s", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
