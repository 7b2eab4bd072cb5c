from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from experiment_config import ExperimentConfig
from engine.client_population import ParticipationTally, select_clients
from engine.client_trainers import train_client
from federated_learning import FederatedRun, client_seed, evaluate, run_experiment
from model import MnistMLP, create_model, flatten, get_parameters, parameter_bytes, set_parameters


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


def fedavg_by_hand(run: FederatedRun, clients: list[int], start) -> np.ndarray:
    """Round 1 of `run` done by hand: each client trains from `start` with its own seed; numpy averages."""
    client_weights, sizes = [], []
    for client in clients:
        model = create_model("mlp")
        set_parameters(model, start)
        train_client(
            model, run.data.train_x, run.data.train_y, run.partitions[client],
            local_epochs=1, batch_size=20, learning_rate=0.1, seed=client_seed(0, 1, client),
        )  # fmt: skip
        client_weights.append(flatten(get_parameters(model)).numpy())
        sizes.append(len(run.partitions[client]))
    return np.average(np.stack(client_weights), axis=0, weights=sizes)


def test_one_round_equals_fedavg_computed_by_hand(mnist):
    """Train both clients ourselves from the same start and seeds; average with numpy."""
    config = tiny_config(rounds=1, num_clients=3, clients_per_round=2)
    run = FederatedRun(config, data=mnist)
    start = get_parameters(create_model("mlp", seed=0))
    chosen = run.sample_clients(1)
    expected = fedavg_by_hand(run, chosen, start)
    sizes = [len(run.partitions[client]) for client in chosen]

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
    rounds = {r: select_clients(config, r, profiles=[], tally=ParticipationTally()) for r in range(1, 6)}
    again = {r: select_clients(config, r, profiles=[], tally=ParticipationTally()) for r in range(1, 6)}
    assert rounds == again
    assert all(len(set(c)) == 5 and all(0 <= i < 50 for i in c) for c in rounds.values())
    assert len({tuple(c) for c in rounds.values()}) > 1


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


# -- privacy wired through the engine ---------------------------------------------------


def private_config(mode: str, **privacy) -> ExperimentConfig:
    values = {"mode": mode, "noise_multiplier": 1.0, "max_grad_norm": 1.0}
    values.update(privacy)
    return tiny_config(num_clients=4, clients_per_round=2, rounds=3).replace("privacy", **values)


def rdp_epsilon(history, delta=1e-5) -> float:
    """Opacus's own accountant, stepped by hand: the independent reference."""
    from opacus.accountants import RDPAccountant

    accountant = RDPAccountant()
    accountant.history = list(history)
    return accountant.get_epsilon(delta=delta)


def test_local_dp_epsilon_is_each_clients_cumulative_accountant(mnist):
    run = FederatedRun(private_config("local"), data=mnist)
    results = list(run.rounds())
    participated: dict[int, int] = {}
    latest: dict[int, float] = {}
    for result in results:
        for client in result.clients:
            participated[client.id] = participated.get(client.id, 0) + 1
            rate = 20 / client.num_examples  # batch_size / N_k
            steps = participated[client.id] * round(1 / rate)  # E=1, cumulative
            assert client.steps == steps and client.sample_rate == pytest.approx(rate)
            assert client.epsilon == pytest.approx(rdp_epsilon([(1.0, rate, steps)]), rel=1e-9)
            latest[client.id] = client.epsilon
        assert result.epsilon == pytest.approx(max(latest.values()))  # the run's ε: max over clients
        assert (result.noise_multiplier, result.max_grad_norm, result.accountant) == (1.0, 1.0, "rdp")
        assert result.delta == 1e-5
    epsilons = [r.epsilon for r in results]
    assert epsilons == sorted(epsilons) and epsilons[0] > 0


def test_local_dp_histories_survive_worker_processes(mnist):
    in_process = [r.epsilon for r in FederatedRun(private_config("local"), data=mnist).rounds()]
    pooled = FederatedRun(private_config("local").replace("system", num_workers=2), data=mnist)
    assert pooled.num_workers == 2
    assert [r.epsilon for r in pooled.rounds()] == pytest.approx(in_process, rel=1e-12)


def test_central_dp_round_equals_clipped_noised_mean_by_hand(mnist):
    config = private_config("central", noise_multiplier=0.5, max_grad_norm=0.5).replace("federation", rounds=1)
    run = FederatedRun(config, data=mnist)
    start = flatten(get_parameters(run.model)).clone()
    chosen = run.sample_clients(1)
    clipped_sum = torch.zeros_like(start, dtype=torch.float64)
    for client in chosen:
        model = create_model("mlp")
        set_parameters(model, get_parameters(create_model("mlp", seed=0)))
        train_client(
            model, run.data.train_x, run.data.train_y, run.partitions[client],
            local_epochs=1, batch_size=20, learning_rate=0.1, seed=client_seed(0, 1, client),
        )  # fmt: skip
        update = (flatten(get_parameters(model)) - start).double()
        clipped_sum += update * min(1.0, 0.5 / float(update.norm()))
    noise = torch.normal(0.0, 0.5 * 0.5, size=start.shape, generator=torch.Generator().manual_seed(client_seed(0, 1, 4)))
    expected = start.double() + (clipped_sum + noise.double()) / (0.5 * 4)  # q·n = 2 expected participants

    (result,) = list(run.rounds())
    torch.testing.assert_close(flatten(get_parameters(run.model)).double(), expected, rtol=1e-4, atol=1e-5)
    assert [c.id for c in result.clients] == chosen
    assert result.epsilon == pytest.approx(rdp_epsilon([(0.5, 0.5, 1)]), rel=1e-9)
    assert (result.sample_rate, result.privacy_steps) == (0.5, 1)


def test_central_dp_samples_clients_by_poisson():
    config = private_config("central").replace("federation", num_clients=200, clients_per_round=20)
    counts = [len(select_clients(config, r, profiles=[], tally=ParticipationTally())) for r in range(1, 201)]
    assert len(set(counts)) > 5  # the number of participants varies
    assert np.mean(counts) == pytest.approx(20, rel=0.05)  # q·n on average


@pytest.mark.parametrize(("mode", "clip"), [("local", 1.0), ("central", 0.01)])
def test_target_epsilon_is_met_by_the_whole_run(mnist, mode, clip):
    # Central noise per weight is σC/(q·n): with 4 clients a small C keeps the model finite.
    config = private_config(mode, target_epsilon=2.0, noise_multiplier=0.0, max_grad_norm=clip)
    run = FederatedRun(config, data=mnist)
    assert run.privacy.noise_multiplier > 0
    final = list(run.rounds())[-1]
    assert 0.9 * 2.0 <= final.epsilon <= 2.0
    assert final.noise_multiplier == run.privacy.noise_multiplier


@pytest.mark.parametrize(("mode", "clip"), [("local", 1.0), ("central", 0.01)])
def test_budget_stops_before_the_round_that_would_exceed_it(mnist, mode, clip):
    unlimited = [r.epsilon for r in FederatedRun(private_config(mode, max_grad_norm=clip), data=mnist).rounds()]
    budget = (unlimited[0] + unlimited[1]) / 2  # round 1 fits, round 2 would not (for someone)
    run = FederatedRun(private_config(mode, max_epsilon=budget, max_grad_norm=clip), data=mnist)
    results = list(run.rounds())
    assert 1 <= len(results) < 3 and all(r.epsilon <= budget for r in results)
    assert run.stop_reason.startswith("privacy budget")


def test_private_training_fails_closed_when_dp_cannot_be_applied(mnist, monkeypatch):
    from engine import client_trainers
    from differential_privacy import PrivacyError

    class MLPWithBatchNorm(MnistMLP):
        """The same exchanged parameters as the MLP, plus batch statistics DP-SGD cannot allow."""

        def __init__(self, num_classes: int = 10) -> None:
            super().__init__(num_classes)
            self.norm = torch.nn.BatchNorm1d(200, affine=False)

        def forward(self, x):
            return self.fc3(torch.relu(self.fc2(self.norm(torch.relu(self.fc1(x.flatten(1)))))))

    def with_batch_norm(name, *, num_classes=10, seed=None):
        return MLPWithBatchNorm(num_classes)

    run = FederatedRun(private_config("local"), data=mnist)
    monkeypatch.setattr(client_trainers, "create_model", with_batch_norm)
    with pytest.raises(PrivacyError):
        next(run.rounds())


def test_adaptive_clipping_moves_c_and_keeps_the_accounted_epsilon(mnist):
    config = private_config("central", noise_multiplier=1.5, max_grad_norm=1e-4, adaptive_clipping=True)
    config = config.replace("federation", num_clients=40, clients_per_round=20, rounds=3).replace(
        "data", max_train_examples=2_000
    )
    run = FederatedRun(config, data=mnist)
    # Andrew et al.: 1/σ_Δ² + 1/(2σ_b)² = 1/σ², with σ_b = expected participants / 20 = 1.
    assert run.privacy.update_noise_multiplier ** -2 + (2 * 1.0) ** -2 == pytest.approx(1.5**-2)
    results = list(run.rounds())
    clips = [r.max_grad_norm for r in results]
    assert clips[0] == 1e-4 and clips[1] > clips[0] and clips[2] > clips[1]  # tiny C: all updates clipped, C grows
    for r in results:
        assert r.noise_multiplier == 1.5
        assert r.epsilon == pytest.approx(rdp_epsilon([(1.5, 0.5, r.round)]), rel=1e-9)


def test_adaptive_clipping_with_too_few_clients_is_refused(mnist):
    from differential_privacy import PrivacyError

    with pytest.raises(PrivacyError, match="adaptive clipping needs"):
        FederatedRun(private_config("central", adaptive_clipping=True), data=mnist)


def test_private_runs_with_different_seeds_differ(mnist):
    weights = []
    for seed in (0, 1):
        run = FederatedRun(private_config("central", max_grad_norm=0.01).replace("system", seed=seed), data=mnist)
        list(run.rounds())
        weights.append(flatten(get_parameters(run.model)))
    assert not torch.allclose(weights[0], weights[1])


# -- realistic federations: unreliable clients, attacks, compression, personalization ---------


def federation_config(attack: dict | None = None, communication: dict | None = None, **federation) -> ExperimentConfig:
    config = tiny_config(**{"num_clients": 4, "clients_per_round": 4, "rounds": 2, **federation})
    if attack:
        config = config.replace("attack", **attack)
    if communication:
        config = config.replace("communication", **communication)
    return config


def statuses(result) -> dict[int, str]:
    return {c.id: c.status for c in result.clients}


def test_dropouts_before_training_are_recorded_and_cost_nothing(mnist):
    results = run_experiment(federation_config(dropout_probability=0.5, rounds=4), data=mnist)
    per_copy = parameter_bytes(get_parameters(create_model("mlp")))
    seen = set()
    for result in results:
        for client in result.clients:
            seen.add(client.status)
            if client.status == "dropped":
                assert (client.steps, client.bytes_up, client.bytes_down) == (0, 0, 0)
            else:
                assert client.status == "ok" and client.steps > 0 and client.bytes_up == client.bytes_down == per_copy
        arrived = sum(c.status == "ok" for c in result.clients)
        assert result.bytes_up == arrived * per_copy and len(result.clients) == 4
    assert seen == {"ok", "dropped"}


def test_too_few_updates_skip_the_round_and_keep_the_model(mnist):
    config = federation_config(dropout_probability=0.4, min_clients=3, rounds=8)
    run = FederatedRun(config, data=mnist)
    weights, skipped = [], []
    for result in run.rounds():
        weights.append(flatten(get_parameters(run.model)).clone())
        arrived = sum(c.status == "ok" for c in result.clients)
        assert bool(result.skipped) == (arrived < 3)
        skipped.append(bool(result.skipped))
    assert any(skipped) and not all(skipped)
    for i, was_skipped in enumerate(skipped):
        if was_skipped:
            before = weights[i - 1] if i else flatten(get_parameters(create_model("mlp", seed=0)))
            assert torch.equal(weights[i], before)


def test_updates_lost_during_training_are_not_aggregated(mnist):
    config = federation_config(dropout_probability=0.5, dropout_stage="during", rounds=3)
    run = FederatedRun(config, data=mnist)
    results = list(run.rounds())
    lost = [c for r in results for c in r.clients if c.status == "lost"]
    assert lost and all(c.steps > 0 and c.bytes_up == 0 and c.bytes_down > 0 for c in lost)
    # The same run by hand without the lost clients: the model equals FedAvg over those that arrived.
    first = results[0]
    arrived = [c.id for c in first.clients if c.status == "ok"]
    assert {c.id for c in first.clients} == {0, 1, 2, 3}
    assert first.bytes_up == sum(c.bytes_up for c in first.clients) and len(arrived) == sum(
        c.status == "ok" for c in first.clients
    )


def test_one_round_with_a_lost_update_equals_fedavg_of_the_rest(mnist):
    config = federation_config(dropout_probability=0.5, dropout_stage="during", rounds=1, num_clients=6, clients_per_round=6)
    run = FederatedRun(config, data=mnist)
    start = get_parameters(create_model("mlp", seed=0))
    (result,) = list(run.rounds())
    arrived = [c.id for c in result.clients if c.status == "ok"]
    assert 0 < len(arrived) < 6
    expected = fedavg_by_hand(run, arrived, start)
    np.testing.assert_allclose(flatten(get_parameters(run.model)).numpy(), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(("policy", "slow_status"), [("partial", "partial"), ("drop", "late")])
def test_stragglers_past_the_deadline(mnist, policy, slow_status):
    config = federation_config(speed_spread=1.5, round_deadline=1.0, straggler_policy=policy, rounds=1, num_clients=8,
                               clients_per_round=8)  # fmt: skip
    run = FederatedRun(config, data=mnist)
    (result,) = list(run.rounds())
    full = run.full_steps
    for client in result.clients:
        speed = run.profiles[client.id].speed
        budget = int(1.0 * run.median_full_steps * speed)
        if budget >= full[client.id]:
            assert client.status == "ok" and client.steps == full[client.id]
        elif policy == "partial" and budget >= 1:
            assert client.status == "partial" and client.steps == budget
        else:
            assert client.status == "late" and client.steps == 0 and client.bytes_up == 0
    assert slow_status in statuses(result).values()
    assert result.simulated_seconds > 0


def test_sign_flip_attackers_break_fedavg_but_not_the_median(mnist):
    attack = {"fraction": 0.25, "behaviour": "sign_flip", "scale": 10.0}
    clean = run_experiment(federation_config(rounds=3), data=mnist)[-1]
    attacked = run_experiment(federation_config(attack=attack, rounds=3), data=mnist)[-1]
    robust = run_experiment(federation_config(attack=attack, rounds=3, strategy="median"), data=mnist)[-1]
    assert [c.malicious for c in attacked.clients].count(True) == 1
    assert attacked.accuracy < clean.accuracy - 0.3
    assert robust.accuracy > clean.accuracy - 0.1


def test_label_flipping_clients_train_on_flipped_labels(mnist):
    config = federation_config(attack={"fraction": 1.0, "behaviour": "label_flip"}, rounds=3, client_holdout=0.2)
    results = run_experiment(config, data=mnist)
    # Every client learns y → 9 − y: its accuracy on its own (true-labelled) held-out split stays near 0.
    assert all(c.validation_accuracy < 0.1 for c in results[-1].clients)
    assert results[-1].accuracy < 0.1


def test_topk_compression_sends_fewer_bytes_and_still_learns(mnist):
    config = federation_config(communication={"compression": "topk", "topk_fraction": 0.05}, rounds=3)
    results = run_experiment(config, data=mnist)
    num_params = flatten(get_parameters(create_model("mlp"))).numel()
    k = -(-num_params * 5 // 100)
    assert all(c.bytes_up == 8 * k and c.bytes_down == 4 * num_params for r in results for c in r.clients)
    assert results[-1].accuracy > 0.5


def test_fedper_keeps_each_clients_head_local(mnist):
    config = federation_config(personalization="fedper", client_holdout=0.2, rounds=2).replace("data", partition="shards")
    run = FederatedRun(config, data=mnist)
    results = list(run.rounds())
    params = get_parameters(create_model("mlp"))
    *_, weight, bias = params.values()  # the final Linear layer: 200 → 10
    head = weight.numel() + bias.numel()
    assert head == 200 * 10 + 10
    assert run.head_size == head and set(run.state.heads) == {0, 1, 2, 3}
    assert all(c.bytes_down == 4 * (flatten(params).numel() - head) for c in results[-1].clients)
    report = run.personalize()
    assert report["method"] == "fedper" and len(report["clients"]) == 4
    assert all(0 <= c["personalized_accuracy"] <= 1 for c in report["clients"])


def test_finetuning_beats_the_global_model_on_skewed_clients(mnist):
    config = federation_config(personalization="finetune", client_holdout=0.2, finetune_epochs=2, rounds=2)
    config = config.replace("data", partition="shards")
    run = FederatedRun(config, data=mnist)
    list(run.rounds())
    report = run.personalize()
    assert report["mean_personalized_accuracy"] > report["mean_global_accuracy"] + 0.05
    global_model_on_client0 = report["clients"][0]["global_accuracy"]
    from engine.client_trainers import accuracy_on

    assert global_model_on_client0 == accuracy_on(run.model, run.data.train_x, run.data.train_y, run.holdouts[0])


@pytest.mark.parametrize("strategy", ["fedprox", "fedavgm", "fedadam", "scaffold", "fednova", "trimmed_mean"])
def test_every_strategy_trains(mnist, strategy):
    results = run_experiment(federation_config(strategy=strategy, rounds=3), data=mnist)
    assert results[-1].accuracy > 0.5 and not any(r.skipped for r in results)


def test_krum_with_too_few_updates_skips_the_round(mnist):
    config = federation_config(strategy="krum", byzantine_clients=0, num_clients=3, clients_per_round=3,
                               dropout_probability=0.5, rounds=4)  # fmt: skip
    results = run_experiment(config, data=mnist)
    for result in results:
        arrived = sum(c.status == "ok" for c in result.clients)
        assert ("needs at least 3" in result.skipped) == (arrived < 3)


def test_realistic_runs_are_reproducible_bit_for_bit(mnist):
    config = federation_config(
        attack={"fraction": 0.25, "behaviour": "gaussian"}, communication={"compression": "qsgd"},
        dropout_probability=0.3, speed_spread=0.5, round_deadline=1.0, strategy="trimmed_mean", rounds=2,
    )  # fmt: skip
    first, second = FederatedRun(config, data=mnist), FederatedRun(config, data=mnist)
    a, b = list(first.rounds()), list(second.rounds())
    assert [r.accuracy for r in a] == [r.accuracy for r in b]
    assert [[(c.id, c.status, c.steps) for c in r.clients] for r in a] == [[(c.id, c.status, c.steps) for c in r.clients] for r in b]
    assert torch.equal(flatten(get_parameters(first.model)), flatten(get_parameters(second.model)))


def test_power_of_choice_selects_high_loss_clients(mnist):
    config = federation_config(selection="power_of_choice", num_clients=8, clients_per_round=2, rounds=2)
    results = run_experiment(config, data=mnist)
    assert all(len(r.clients) == 2 for r in results)


def test_local_dp_stragglers_account_only_the_steps_they_took(mnist):
    config = private_config("local").replace("federation", speed_spread=1.5, round_deadline=1.0, rounds=1,
                                             clients_per_round=4)  # fmt: skip
    run = FederatedRun(config, data=mnist)
    (result,) = list(run.rounds())
    for client in result.clients:
        if client.status in ("ok", "partial"):
            assert sum(n for _, _, n in run.state.histories[client.id]) == client.steps
            assert client.epsilon == pytest.approx(rdp_epsilon(run.state.histories[client.id]), rel=1e-9)


def test_fedprox_with_mu_zero_and_fedavgm_without_momentum_equal_fedavg(mnist):
    def final_weights(**federation):
        run = FederatedRun(federation_config(rounds=2, **federation), data=mnist)
        list(run.rounds())
        return flatten(get_parameters(run.model))

    fedavg = final_weights()
    torch.testing.assert_close(final_weights(strategy="fedprox", proximal_mu=0.0), fedavg, rtol=0, atol=0)
    torch.testing.assert_close(
        final_weights(strategy="fedavgm", server_momentum=0.0, server_learning_rate=1.0), fedavg, rtol=1e-6, atol=1e-7
    )
    assert not torch.equal(final_weights(strategy="fedprox", proximal_mu=1.0), fedavg)


# -- secure aggregation ------------------------------------------------------------------------


def test_secure_aggregation_gives_the_same_model_as_plain_fedavg(mnist):
    # The check: 10 clients, 5 rounds on MNIST, accuracy curves within 0.2 points.
    plain = FederatedRun(federation_config(rounds=5, num_clients=10, clients_per_round=10), data=mnist)
    secure = FederatedRun(
        federation_config(rounds=5, num_clients=10, clients_per_round=10, secure_aggregation=True), data=mnist
    )
    plain_results, secure_results = list(plain.rounds()), list(secure.rounds())
    # Fixed point with 24 fractional bits: the mean differs from float FedAvg by ~1e-7 per weight.
    torch.testing.assert_close(flatten(get_parameters(secure.model)), flatten(get_parameters(plain.model)), rtol=0, atol=1e-5)
    assert [r.accuracy for r in secure_results] == pytest.approx([r.accuracy for r in plain_results], abs=0.002)
    stats = secure_results[0].secure_aggregation
    assert stats["participants"] == stats["survivors"] == 10 and stats["bytes_masked"] > 0
    assert plain_results[0].secure_aggregation is None


def test_secure_aggregation_unmasks_clients_lost_after_the_key_exchange(mnist):
    config = federation_config(rounds=1, num_clients=8, clients_per_round=8, secure_aggregation=True,
                               dropout_probability=0.3, dropout_stage="during", secagg_threshold=0.5)  # fmt: skip
    run = FederatedRun(config, data=mnist)
    (result,) = list(run.rounds())
    lost = [c.id for c in result.clients if c.status == "lost"]
    assert lost and not result.skipped
    assert result.secure_aggregation["dropouts_recovered"] == len(lost)
    # Same run without secure aggregation: FedAvg over the same arrivals.
    plain = FederatedRun(config.replace("federation", secure_aggregation=False), data=mnist)
    list(plain.rounds())
    torch.testing.assert_close(flatten(get_parameters(run.model)), flatten(get_parameters(plain.model)), rtol=0, atol=1e-5)


def test_secure_aggregation_with_too_few_survivors_skips_the_round(mnist):
    config = federation_config(rounds=1, num_clients=6, clients_per_round=6, secure_aggregation=True,
                               dropout_probability=0.6, dropout_stage="during", secagg_threshold=1.0)  # fmt: skip
    run = FederatedRun(config, data=mnist)
    start = flatten(get_parameters(run.model)).clone()
    (result,) = list(run.rounds())
    assert any(c.status == "lost" for c in result.clients)
    assert result.skipped.startswith("secure aggregation failed")
    assert torch.equal(flatten(get_parameters(run.model)), start)


# -- faulty clients ----------------------------------------------------------------------------


def test_a_client_that_raises_or_returns_nan_is_excluded_and_the_run_goes_on(mnist, monkeypatch):
    from engine import client_trainers

    config = federation_config(rounds=2, num_clients=4, clients_per_round=4)
    run = FederatedRun(config, data=mnist)
    crashing, diverging = run.partitions[1][0], run.partitions[2][0]
    real_train = client_trainers.train_client

    def faulty(model, train_x, train_y, indices, **kwargs):
        if indices[0] == crashing:
            raise MemoryError("out of memory on this device")
        steps, loss = real_train(model, train_x, train_y, indices, **kwargs)
        if indices[0] == diverging:
            with torch.no_grad():
                next(model.parameters()).fill_(float("nan"))
        return steps, loss

    monkeypatch.setattr(client_trainers, "train_client", faulty)
    results = list(run.rounds())
    for result in results:
        by_id = {c.id: c for c in result.clients}
        assert by_id[1].status == "failed" and "MemoryError: out of memory" in by_id[1].error
        assert by_id[2].status == "failed" and "non-finite" in by_id[2].error
        assert {by_id[0].status, by_id[3].status} == {"ok"} and result.skipped == ""
    assert torch.isfinite(flatten(get_parameters(run.model))).all()
    assert results[-1].accuracy > 0.6  # the two healthy clients still train it


def test_too_few_healthy_clients_skip_the_round_under_min_clients(mnist, monkeypatch):
    from engine import client_trainers

    def always_raises(*args, **kwargs):
        raise RuntimeError("corrupt local data")

    monkeypatch.setattr(client_trainers, "train_client", always_raises)
    run = FederatedRun(federation_config(rounds=1, min_clients=2), data=mnist)
    start = flatten(get_parameters(run.model)).clone()
    (result,) = list(run.rounds())
    assert all(c.status == "failed" for c in result.clients)
    assert "fewer than federation.min_clients = 2" in result.skipped
    assert torch.equal(flatten(get_parameters(run.model)), start)
