from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from data_handler import subset
from experiment_config import ExperimentConfig
from federated_learning import FederatedRun, client_seed, evaluate, run_experiment, train_client
from model import create_model, flatten, get_parameters, parameter_bytes, set_parameters


def tiny_config(**federation) -> ExperimentConfig:
    values = {"num_clients": 2, "clients_per_round": 2, "rounds": 2, "batch_size": 20, "learning_rate": 0.1}
    values.update(federation)
    return ExperimentConfig.from_dict(
        {
            "data": {"max_train_examples": 1_000, "max_test_examples": 1_000},
            "model": {"name": "mlp"},
            "federation": values,
            "system": {"num_workers": 1, "seed": 0},
        }
    )


def test_two_clients_two_rounds_on_real_mnist_improve_accuracy(mnist):
    config = tiny_config()
    run = FederatedRun(config, data=mnist)
    initial_accuracy, _ = evaluate(run.model, run.data.test_x, run.data.test_y)
    results = list(run.rounds())
    assert [r.round for r in results] == [1, 2]
    assert results[0].accuracy > initial_accuracy + 0.2
    assert results[1].accuracy > results[0].accuracy
    assert results[1].loss < results[0].loss
    assert results[1].accuracy > 0.6


def test_one_round_equals_fedavg_computed_by_hand(mnist):
    """Train both clients ourselves from the same start and seeds; average with numpy."""
    config = tiny_config(rounds=1, num_clients=3, clients_per_round=2)
    run = FederatedRun(config, data=mnist)
    start = get_parameters(create_model("mlp", seed=0))
    chosen = run.sample_clients(1)
    client_weights, sizes = [], []
    for client in chosen:
        model = create_model("mlp")
        set_parameters(model, start)
        train_client(
            model, run.data.train_x, run.data.train_y, run.partitions[client],
            local_epochs=1, batch_size=20, learning_rate=0.1, seed=client_seed(0, 1, client),
        )  # fmt: skip
        client_weights.append(flatten(get_parameters(model)).numpy())
        sizes.append(len(run.partitions[client]))
    expected = np.average(np.stack(client_weights), axis=0, weights=sizes)

    (result,) = list(run.rounds())
    np.testing.assert_allclose(flatten(get_parameters(run.model)).numpy(), expected, rtol=1e-5, atol=1e-6)
    assert [c.id for c in result.clients] == chosen
    assert [c.num_examples for c in result.clients] == sizes
    assert all(c.steps == -(-n // 20) for c, n in zip(result.clients, sizes, strict=True))


def test_parallel_workers_match_in_process_training(mnist):
    config = tiny_config(num_clients=4, clients_per_round=4)
    sequential = FederatedRun(config, data=mnist)
    sequential_results = list(sequential.rounds())
    parallel = FederatedRun(config.replace("system", num_workers=2), data=mnist)
    assert parallel.num_workers == 2
    parallel_results = list(parallel.rounds())
    # One thread vs two changes float summation order only.
    torch.testing.assert_close(
        flatten(get_parameters(parallel.model)), flatten(get_parameters(sequential.model)), rtol=1e-3, atol=1e-4
    )
    for a, b in zip(sequential_results, parallel_results, strict=True):
        assert abs(a.accuracy - b.accuracy) <= 0.002
        assert [c.id for c in a.clients] == [c.id for c in b.clients]


def test_client_sampling_is_seeded_distinct_and_varies():
    config = tiny_config(num_clients=50, clients_per_round=5)
    rounds = {r: FederatedRun.sample_clients(_Sampler(config), r) for r in range(1, 6)}
    again = {r: FederatedRun.sample_clients(_Sampler(config), r) for r in range(1, 6)}
    assert rounds == again
    assert all(len(set(c)) == 5 and all(0 <= i < 50 for i in c) for c in rounds.values())
    assert len({tuple(c) for c in rounds.values()}) > 1


class _Sampler:
    """Just enough of a FederatedRun for `sample_clients`."""

    def __init__(self, config: ExperimentConfig) -> None:
        self.config = config


def test_round_results_count_bytes_and_time(mnist):
    config = tiny_config(rounds=1, num_clients=4, clients_per_round=3)
    (result,) = run_experiment(config, data=mnist)
    per_copy = parameter_bytes(get_parameters(create_model("mlp")))
    assert result.bytes_up == result.bytes_down == 3 * per_copy
    assert len(result.clients) == 3 and result.seconds > 0 and result.eval_seconds > 0
    assert result.epsilon == 0.0


def test_stop_event_ends_the_run_after_the_current_round(mnist):
    stop = threading.Event()
    seen = []

    def on_round(result):
        seen.append(result.round)
        stop.set()

    results = run_experiment(tiny_config(rounds=5), callback=on_round, stop_event=stop, data=mnist)
    assert seen == [1] and len(results) == 1


def test_memory_does_not_hold_a_model_per_client(mnist):
    run = FederatedRun(tiny_config(num_clients=500, clients_per_round=2).replace("data", max_train_examples=5_000), data=mnist)
    generator = run.rounds()
    next(generator)
    trainer_buffers = [obj for obj in generator.gi_frame.f_locals.values() if hasattr(obj, "results")]
    assert trainer_buffers and trainer_buffers[0].results.shape[0] == 2  # one row per client per round
    generator.close()


def test_seeded_runs_repeat_exactly(mnist):
    first = [r.accuracy for r in run_experiment(tiny_config(), data=mnist)]
    second = [r.accuracy for r in run_experiment(tiny_config(), data=mnist)]
    assert first == second
