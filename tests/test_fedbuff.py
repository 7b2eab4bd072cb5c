"""Asynchronous FL (FedBuff, `engine/fedbuff.py`, federation.mode = "async"): the pure pieces against
hand-computed values; the engine's weights against a FedBuff run by hand in this file (numpy, float64) from
the same client training; resume from a checkpoint bit for bit; the config's refusals; the CLI end to end."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import test_app
import torch
from sqlalchemy import text

from database import ExperimentStore
from engine import fedbuff
from engine.client_population import ClientProfile, client_seed
from engine.client_trainers import InProcessTrainer, TrainTask, train_settings
from engine.results import ClientResult
from experiment_config import ExperimentConfig
from federated_learning import FederatedRun
from model import flatten, get_parameters
from visualization import staleness_figure

REPO = Path(__file__).resolve().parents[1]
store = test_app.store  # the fixture: a temporary SQLite database the page opens


def async_config(**federation: object) -> ExperimentConfig:
    """MNIST MLP, 6 clients of 100 examples, 3 training at once, steps of 2 updates, clients of spread speeds."""
    return ExperimentConfig.from_dict({
        "data": {"max_train_examples": 600, "max_test_examples": 300},
        "model": {"name": "mlp"},
        "federation": {
            "num_clients": 6, "clients_per_round": 3, "rounds": 4, "batch_size": 25, "learning_rate": 0.1,
            "mode": "async", "buffer_size": 2, "max_concurrency": 3, "speed_spread": 1.0, **federation,
        },
        "privacy": {"audit_examples": 0},
        "system": {"num_workers": 1, "seed": 5},
    })  # fmt: skip


def pending(client: int, version: int, arrival: float, delta: list[float], examples: int = 1) -> fedbuff.Pending:
    record = ClientResult(id=client, num_examples=examples, steps=1, loss=0.0)
    return fedbuff.Pending(client, version, arrival, torch.tensor(delta, dtype=torch.float32), record)


# -- the pure pieces, by hand -------------------------------------------------------------


def test_staleness_weights_are_one_over_a_power_of_one_plus_staleness():
    assert fedbuff.staleness_weight(0, 0.5) == 1.0
    assert fedbuff.staleness_weight(3, 0.5) == 0.5  # 1/√4
    assert fedbuff.staleness_weight(1, 1.0) == 0.5
    assert fedbuff.staleness_weight(7, 0.0) == 1.0  # a = 0: no discount
    with pytest.raises(ValueError, match="staleness"):
        fedbuff.staleness_weight(-1, 0.5)


def test_the_earliest_arrivals_are_taken_and_ties_go_to_the_lower_id():
    pool = [pending(4, 0, 2.0, [0.0]), pending(1, 0, 3.0, [0.0]), pending(3, 0, 2.0, [0.0]), pending(0, 0, 9.0, [0.0])]
    taken, rest = fedbuff.take_earliest(pool, 3)
    assert [p.client for p in taken] == [3, 4, 1] and [p.client for p in rest] == [0]


def test_the_buffered_update_discounts_stale_updates_and_normalises_by_examples():
    # Version 3: client 1 (1 example) fetched version 3 (s = 0), client 2 (3 examples) version 0 (s = 3, weight 1/2).
    taken = [pending(1, 3, 1.0, [4.0, 0.0], examples=1), pending(2, 0, 2.0, [0.0, 8.0], examples=3)]
    delta = fedbuff.buffered_delta(taken, version=3, exponent=0.5)
    # (1·1·[4, 0] + 3·½·[0, 8]) / (1 + 3) = [1, 3]
    assert delta.dtype == torch.float64 and delta.tolist() == [1.0, 3.0]


def test_a_server_step_moves_the_clock_to_the_kth_arrival_and_keeps_the_rest_in_flight():
    buffer = fedbuff.Buffer(clock=1.0, pending=[pending(0, 0, 5.0, [1.0])])
    step = fedbuff.server_step(buffer, [pending(1, 1, 2.5, [3.0]), pending(2, 1, 7.0, [5.0])], version=1,
                               buffer_size=2, exponent=1.0)  # fmt: skip
    assert [c.id for c in step.applied] == [1, 0] and [c.staleness for c in step.applied] == [0, 1]
    assert step.seconds == 4.0 and step.buffer.clock == 5.0  # from 1.0 to client 0's arrival at 5.0
    assert [p.client for p in step.buffer.pending] == [2]
    assert step.delta.tolist() == [(3.0 + 1.0 / 2) / 2]  # (1·3 + ½·1) / 2 examples


def test_the_clients_that_start_are_seeded_never_in_flight_and_refill_the_concurrency():
    chosen = fedbuff.start_clients(seed=1, step=4, num_clients=10, max_concurrency=5, busy={0, 2, 7})
    assert len(chosen) == 2 and not set(chosen) & {0, 2, 7} and chosen == sorted(chosen)
    assert chosen == fedbuff.start_clients(seed=1, step=4, num_clients=10, max_concurrency=5, busy={0, 2, 7})
    draws = {tuple(fedbuff.start_clients(seed=1, step=s, num_clients=10, max_concurrency=5, busy={0, 2, 7}))
             for s in range(1, 9)}  # fmt: skip
    assert len(draws) > 1  # another step, another draw
    assert fedbuff.start_clients(seed=1, step=1, num_clients=3, max_concurrency=5, busy=set()) == [0, 1, 2]


def test_a_clients_seconds_are_download_compute_at_its_speed_and_upload():
    profile = ClientProfile(id=0, num_examples=10, speed=0.5, dropout_probability=0.0, bandwidth_mbps=8.0,
                            latency_ms=100.0)  # fmt: skip
    # down: 0.1 s + 1e6 B · 8 / 8e6 b/s = 1.1 s; compute: 10 steps · STEP_SECONDS / 0.5; up: 0.1 + 0.5 = 0.6 s
    expected = 1.1 + 10 * fedbuff.STEP_SECONDS / 0.5 + 0.6
    assert fedbuff.client_seconds(profile, steps=10, bytes_down=1_000_000, bytes_up=500_000) == pytest.approx(expected)


def test_the_buffer_survives_a_round_trip_through_a_weights_only_checkpoint(tmp_path):
    buffer = fedbuff.Buffer(clock=2.5, pending=[pending(3, 1, 4.0, [1.0, -2.0], examples=7)])
    torch.save(buffer.state_dict(), tmp_path / "buffer.pt")
    again = fedbuff.Buffer.from_state(torch.load(tmp_path / "buffer.pt", weights_only=True))
    assert again.clock == 2.5 and again.busy() == {3}
    (p,) = again.pending
    assert (p.version, p.arrival, p.record.num_examples) == (1, 4.0, 7) and p.delta.tolist() == [1.0, -2.0]


# -- the engine against FedBuff by hand ------------------------------------------------------


def fedbuff_by_hand(config: ExperimentConfig, mnist) -> tuple[np.ndarray, list[list[tuple[int, int]]], list[float]]:
    """FedBuff written out here: numpy float64 for the server, the engine's client trainer for training
    (from the same seeds). Returns the final weights, per step the applied (client, staleness), and the
    simulated seconds of each step."""
    federation, seed = config.federation, config.system.seed
    run = FederatedRun(config, data=mnist)  # its partition, profiles and initial weights; it never trains
    weights = run.state.weights.clone()
    num_params = weights.numel()
    trainer = InProcessTrainer(run.data, train_settings(config, run.data.num_classes, noise_multiplier=0.0),
                               num_params, slots=federation.max_concurrency)  # fmt: skip
    pool, clock, applied, seconds = [], 0.0, [], []  # pool: (arrival, client, version, Δ, examples)
    for step in range(1, federation.rounds + 1):
        busy = {entry[1] for entry in pool}
        idle = np.array(sorted(set(range(federation.num_clients)) - busy))
        generator = np.random.default_rng([seed, step, 0x5EED0B])
        starting = sorted(int(c) for c in generator.choice(idle, size=federation.max_concurrency - len(busy),
                                                                 replace=False))  # fmt: skip
        tasks = [TrainTask(slot, c, run.partitions[c], client_seed(seed, step, c)) for slot, c in enumerate(starting)]
        for outcome in trainer.train(weights, tasks):
            client, profile = outcome.task.client_id, run.profiles[outcome.task.client_id]
            link = profile.latency_ms / 1e3 + 4 * num_params * 8 / (profile.bandwidth_mbps * 1e6)  # 4·P bytes
            arrival = clock + link + outcome.steps * 0.05 / profile.speed + link
            delta = (trainer.results[outcome.task.slot] - weights).numpy()
            pool.append((arrival, client, step - 1, delta, len(run.partitions[client])))
        pool.sort(key=lambda entry: (entry[0], entry[1]))
        taken, pool = pool[: federation.buffer_size], pool[federation.buffer_size :]
        mean = sum(n * (1 + (step - 1 - version)) ** -0.5 * d.astype(np.float64) for _, _, version, d, n in taken)
        mean /= sum(entry[4] for entry in taken)
        weights = torch.from_numpy((weights.numpy().astype(np.float64) + mean).astype(np.float32))
        applied.append([(client, step - 1 - version) for _, client, version, _, _ in taken])
        seconds.append(taken[-1][0] - clock)
        clock = taken[-1][0]
    trainer.close()
    return weights.numpy(), applied, seconds


def test_the_engines_fedbuff_equals_fedbuff_by_hand(mnist):
    config = async_config()
    run = FederatedRun(config, data=mnist)
    results = list(run.rounds())

    expected, applied, seconds = fedbuff_by_hand(config, mnist)

    assert [[(c.id, c.staleness) for c in r.clients] for r in results] == applied
    assert any(s > 0 for step in applied for _, s in step)  # some updates really were stale
    assert [r.simulated_seconds for r in results] == pytest.approx(seconds, rel=1e-12)
    np.testing.assert_allclose(run.state.weights.numpy(), expected, rtol=0, atol=1e-6)
    # Each step applied K updates; the clients still in flight are all different and never counted twice.
    assert all(len(r.clients) == 2 for r in results)
    assert len(run.state.buffer.busy()) == len(run.state.buffer.pending) == 1


def test_more_clients_in_flight_than_result_slots_train_in_chunks_in_worker_processes_alike(mnist, one_torch_thread):
    # clients_per_round (the trainer's slots) 2 < max_concurrency 3: each step's clients train in chunks whose
    # rows the next chunk overwrites; every update must be kept as it was, in this process and in two workers
    # (single-threaded, as here: the same float sums).
    config = async_config(clients_per_round=2, rounds=3)
    here = FederatedRun(config, data=mnist)
    pooled = FederatedRun(config.replace("system", num_workers=2), data=mnist)
    list(here.rounds()), list(pooled.rounds())
    assert torch.equal(here.state.weights, pooled.state.weights)
    whole = FederatedRun(async_config(rounds=3), data=mnist)  # 3 slots: one chunk a step
    list(whole.rounds())
    assert torch.equal(here.state.weights, whole.state.weights)


def test_without_the_staleness_discount_the_model_ends_elsewhere(mnist):
    discounted = FederatedRun(async_config(), data=mnist)
    plain = FederatedRun(async_config(staleness_exponent=0.0), data=mnist)
    list(discounted.rounds()), list(plain.rounds())
    assert not torch.equal(discounted.state.weights, plain.state.weights)


def test_a_sync_run_records_no_staleness(mnist):
    config = async_config(mode="sync", rounds=1)
    (result,) = FederatedRun(config, data=mnist).rounds()
    assert [c.staleness for c in result.clients] == [None, None, None]


def test_an_async_run_resumes_from_its_checkpoint_bit_for_bit(mnist):
    config = async_config(rounds=5, strategy="fedavgm", server_momentum=0.5)
    straight = FederatedRun(config, data=mnist)
    expected = list(straight.rounds())

    first = FederatedRun(config, data=mnist)
    rounds = first.rounds()
    before = [next(rounds), next(rounds)]
    saved = first.checkpoint()
    rounds.close()
    assert first.state.buffer.pending  # updates were in flight when it stopped
    resumed = FederatedRun(config, data=mnist)
    assert resumed.restore(saved) == 2
    after = list(resumed.rounds())

    def outcome(result) -> tuple:
        return (result.accuracy, result.loss, result.simulated_seconds, [
            (c.id, c.steps, c.loss, c.staleness, c.simulated_seconds, c.bytes_up) for c in result.clients])

    assert [outcome(r) for r in [*before, *after]] == [outcome(r) for r in expected]
    assert torch.equal(resumed.state.weights, straight.state.weights)
    assert torch.equal(flatten(get_parameters(resumed.model)), flatten(get_parameters(straight.model)))


def test_local_dp_accounts_each_client_as_it_trains_under_async(mnist):
    config = async_config(rounds=3).replace("privacy", mode="local", noise_multiplier=1.0, max_grad_norm=1.0)
    run = FederatedRun(config, data=mnist)
    results = list(run.rounds())
    assert results[-1].epsilon == max(run.state.client_epsilons.values()) > 0
    for result in results:
        for client in result.clients:  # applied at once or later: its ε is that of the training it sent
            assert client.epsilon > 0 and client.staleness is not None
    assert [r.epsilon for r in results] == sorted(r.epsilon for r in results)


# -- refusals and the CLI ---------------------------------------------------------------------


REFUSED = {
    "central DP": ({"privacy": {"mode": "central"}}, "privacy.mode = 'central'"),
    "secure aggregation": ({"federation": {"secure_aggregation": True}}, "federation.secure_aggregation"),
    "a robust rule": ({"federation": {"strategy": "median"}}, "federation.strategy = 'median'"),
    "scaffold": ({"federation": {"strategy": "scaffold"}}, "federation.strategy = 'scaffold'"),
    "q-FedAvg": ({"federation": {"strategy": "qfedavg"}}, "federation.strategy = 'qfedavg'"),
    "exclusion": ({"federation": {"exclusion": "flagged"}}, "federation.exclusion"),
    "power of choice": ({"federation": {"selection": "power_of_choice"}}, "federation.selection"),
    "a deadline": ({"federation": {"round_deadline": 1.0}}, "federation.round_deadline"),
    "dropouts": ({"federation": {"dropout_probability": 0.2}}, "federation.dropout_probability"),
    "fedper": ({"federation": {"personalization": "fedper", "client_holdout": 0.1}}, "fedper"),
    "a buffer larger than the concurrency": ({"federation": {"buffer_size": 4}}, "buffer_size <= max_concurrency"),
    "more in flight than clients": ({"federation": {"max_concurrency": 7}}, "max_concurrency <= num_clients"),
}


@pytest.mark.parametrize("case", list(REFUSED))
def test_what_needs_a_synchronous_cohort_is_refused_in_one_line(case):
    changes, named = REFUSED[case]
    raw = async_config().to_dict()
    for section, values in changes.items():
        raw[section].update(values)
    with pytest.raises(ValueError) as error:
        ExperimentConfig.from_dict(raw)
    assert named in str(error.value) and "\n" not in str(error.value)
    raw["federation"]["mode"] = "sync"  # the same settings are fine in synchronous rounds
    if "federation.mode" not in named:
        ExperimentConfig.from_dict(raw)


def test_the_cli_runs_fedbuff_and_stores_each_updates_staleness(db_url):
    sets = ["model.name=mlp", "data.max_train_examples=600", "data.max_test_examples=300", "federation.num_clients=6",
            "federation.clients_per_round=3", "federation.mode=async", "federation.buffer_size=2", "federation.max_concurrency=3",
            "federation.speed_spread=1.0", "federation.rounds=3", "system.num_workers=1", "privacy.audit_examples=0"]
    args = [arg for value in sets for arg in ("--set", value)]
    result = subprocess.run([sys.executable, str(REPO / "cli.py"), "run", "--json", "--db", db_url, *args],
                            check=False, capture_output=True, text=True, timeout=300, cwd=REPO)  # fmt: skip
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    rounds, final = lines[:-1], lines[-1]
    assert [r["round"] for r in rounds] == [1, 2, 3] and all(len(r["clients"]) == 2 for r in rounds)
    assert all(isinstance(c["staleness"], int) for r in rounds for c in r["clients"])  # --json prints it too
    stored = ExperimentStore(db_url).client_rounds_frame(final["experiment_id"])
    assert len(stored) == 6 and stored["staleness"].notna().all() and (stored["staleness"] >= 0).all()
    # The page's chart: each update's staleness at the simulated second its step ended, and the versions.
    steps = ExperimentStore(db_url).rounds_frame([final["experiment_id"]])
    dots, versions = staleness_figure(steps, stored).data
    ends = np.cumsum(steps.sort_values("round")["simulated_seconds"].to_numpy())
    assert ends[-1] > ends[0] > 0
    assert list(dots.x) == pytest.approx([ends[r - 1] for r in stored["round"]])
    assert list(dots.y) == list(stored["staleness"]) and list(versions.y) == [0, 1, 2, 3]

    bad = subprocess.run([sys.executable, str(REPO / "cli.py"), "run", "--db", db_url, *args,
                          "--set", "federation.strategy=krum"],
                         check=False, capture_output=True, text=True, timeout=120, cwd=REPO)  # fmt: skip
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1 and "federation.mode" in bad.stderr


def test_the_staleness_chart_of_a_sync_run_is_empty_with_a_note():
    rounds = pd.DataFrame({"round": [1, 2], "simulated_seconds": [1.0, 2.0]})
    clients = pd.DataFrame({"round": [1, 2], "client_id": [0, 1], "staleness": [None, None]})
    figure = staleness_figure(rounds, clients)
    assert len(figure.data[0].x) == 0 and [a.text for a in figure.layout.annotations] == ["no data yet"]
    assert list(figure.data[1].y) == [0, 1, 2] and list(figure.data[1].x) == [0.0, 1.0, 3.0]


def test_the_run_view_charts_an_async_runs_staleness_and_versions(store):
    experiment_id = test_app.fabricate(store, round_fields={"simulated_seconds": 2.0}, **{
        "federation.mode": "async", "federation.buffer_size": "2", "federation.max_concurrency": "2"})
    with store.engine.begin() as connection:  # what an async run records: each applied update's staleness
        connection.execute(text("UPDATE client_rounds SET staleness = client_id WHERE round_id IN "
                                "(SELECT id FROM rounds WHERE experiment_id = :e)"), {"e": experiment_id})

    charts = [traces for traces in test_app.chart_traces(test_app.page()) if traces[0].get("name") == "update staleness"]

    ((dots, versions),) = charts
    assert sorted(zip(dots["x"], dots["y"])) == [(2.0, 0), (2.0, 1), (4.0, 0), (4.0, 1)]
    assert versions["y"] == [0, 1, 2] and versions["x"] == [0.0, 2.0, 4.0]
