"""engine.streaming: a round folded into a float64 running sum equals the held round on the same
updates (the strategies' own `aggregate` as the reference, and numpy for FedAvg), in the strategies,
in both local trainers, and in whole runs; rules that read every update never stream."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from engine.client_trainers import (
    FOLD_DROP,
    FOLD_SUM,
    NON_FINITE,
    ROW,
    ClientTrainer,
    InProcessTrainer,
    TrainTask,
    train_settings,
)  # fmt: skip
from engine.process_pool import ProcessPoolTrainer
from engine.strategies import STRATEGIES, ClientUpdate, make_strategy
from engine.streaming import HELD_ROUND_BYTES, RunningSum, round_streams, stream_slots, trainer_folds
from experiment_config import ExperimentConfig
from federated_learning import FederatedRun
from model import get_parameters


@pytest.fixture(autouse=True)
def one_thread():
    """Many tiny clients in this process: torch's thread pool only adds overhead (and the CI box is shared)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


STREAMING = ("fedavg", "fedprox", "fedavgm", "fedadagrad", "fedadam", "fedyogi", "fednova", "qfedavg")
P = 50


def federation(strategy: str):
    return ExperimentConfig.from_dict(
        {"federation": {"strategy": strategy, "client_holdout": 0.1, "qffl_q": 2.0, "qffl_lipschitz": 3.0}}
    ).federation


def random_updates(seed: int, count: int = 7) -> tuple[torch.Tensor, list[ClientUpdate]]:
    """Clients that differ in weights, examples and steps (the steps matter to FedNova)."""
    generator = torch.Generator().manual_seed(seed)
    global_weights = torch.randn(P, generator=generator)
    updates = [
        ClientUpdate(k, global_weights + 0.1 * torch.randn(P, generator=generator), num_examples=10 + 13 * k,
                     steps=1 + k % 3, loss=0.5, global_loss=0.2 + 0.3 * k)  # F_k: q-FedAvg weighs by it
        for k in range(count)
    ]  # fmt: skip
    return global_weights, updates


def folded(strategy, updates: list[ClientUpdate], global_weights: torch.Tensor, split: int = 3) -> RunningSum:
    """The updates folded as two trainer processes would, into two sums added up."""
    sums = [RunningSum(P), RunningSum(P)]
    for k, u in enumerate(updates):
        scale, distance = strategy.fold_factors(u.num_examples, u.global_loss)
        coefficient = strategy.fold_weight(u.num_examples, u.steps) * scale
        aux = distance * float((u.weights.double() - global_weights.double()).square().sum())
        sums[k >= split].add(u.weights, coefficient=coefficient, num_examples=u.num_examples, steps=u.steps, aux=aux)
    return sums[0] + sums[1]


@pytest.mark.parametrize("name", STREAMING)
def test_a_streamed_round_equals_the_held_round_on_the_same_updates(name):
    global_weights, updates = random_updates(4)
    held, streamed = make_strategy(federation(name)), make_strategy(federation(name))
    for _round in range(3):  # the server optimisers' state moves the same way
        expected = held.aggregate(global_weights, updates)
        result = streamed.aggregate_sum(global_weights, folded(streamed, updates, global_weights))
        torch.testing.assert_close(result, expected, rtol=0, atol=1e-6)
        global_weights = expected
    for field in held.state_fields:
        torch.testing.assert_close(getattr(streamed, field), getattr(held, field), rtol=1e-12, atol=1e-12)


def test_fedavg_of_a_sum_is_numpys_example_weighted_average():
    global_weights, updates = random_updates(5)
    strategy = make_strategy(federation("fedavg"))
    summed = folded(strategy, updates, global_weights)
    reference = np.average(np.stack([u.weights.numpy() for u in updates]), axis=0,
                           weights=[u.num_examples for u in updates])  # fmt: skip
    np.testing.assert_allclose(summed.mean().numpy(), reference, rtol=0, atol=1e-12)
    assert summed.clients == 7 and summed.scalar("examples") == sum(u.num_examples for u in updates)


def test_fednova_refuses_a_client_without_a_step_streamed_as_held():
    global_weights, updates = random_updates(6)
    updates[2] = dataclasses.replace(updates[2], steps=0)
    strategy = make_strategy(federation("fednova"))
    with pytest.raises(ValueError, match="steps >= 1"):
        strategy.aggregate(global_weights, updates)
    with pytest.raises(ValueError, match="steps >= 1"):
        strategy.aggregate_sum(global_weights, folded(strategy, updates, global_weights))


def test_qfedavg_of_a_sum_is_the_papers_step_by_hand():
    # Li et al. 2020, Algorithm 3 with L = 3, q = 2, p_k = n_k/N, in numpy: the reference the held rule is too.
    global_weights, updates = random_updates(8)
    x = global_weights.double().numpy()
    total = sum(u.num_examples for u in updates)
    step, h = np.zeros_like(x), 0.0
    for u in updates:
        p, loss = u.num_examples / total, u.global_loss + 1e-10
        delta_w = 3.0 * (x - u.weights.double().numpy())
        step += p * loss**2 * delta_w
        h += p * (2 * loss * float(delta_w @ delta_w) + 3.0 * loss**2)
    strategy = make_strategy(federation("qfedavg"))
    result = strategy.aggregate_sum(global_weights, folded(strategy, updates, global_weights)).double().numpy()
    np.testing.assert_allclose(result, (x - step / h).astype(np.float32), rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="global_loss >= 0"):
        strategy.fold_factors(10, None)


def test_an_empty_sum_is_refused_like_zero_updates():
    with pytest.raises(ValueError, match="zero client updates"):
        make_strategy(federation("fedavg")).aggregate_sum(torch.zeros(P), RunningSum(P))


@pytest.mark.parametrize("name", sorted(set(STRATEGIES) - set(STREAMING)))
def test_rules_that_read_every_update_do_not_stream(name):
    strategy = make_strategy(federation(name))
    assert not strategy.streams
    with pytest.raises(NotImplementedError):
        strategy.aggregate_sum(torch.zeros(P), RunningSum(P))


def config(**sections) -> ExperimentConfig:
    values = {
        "model": {"name": "mlp"},
        "data": {"max_train_examples": 6_000, "max_test_examples": 500, "partition": "dirichlet"},
        "federation": {"num_clients": 100, "clients_per_round": 100, "rounds": 2},
        "system": {"num_workers": 1, "seed": 3},
    }  # fmt: skip
    for section, changes in sections.items():
        values[section] = {**values.get(section, {}), **changes}
    return ExperimentConfig.from_dict(values)


def test_which_runs_stream():
    mlp = 199_210
    big = config().replace("federation", num_clients=10_000, clients_per_round=10_000)
    assert 100 * 4 * mlp > HELD_ROUND_BYTES > 10 * 4 * mlp
    assert round_streams(config(), strategy_streams=True, num_params=mlp)
    assert not round_streams(config().replace("federation", clients_per_round=10), strategy_streams=True,
                             num_params=mlp)  # small rounds keep their updates: each is scored for suspicion
    assert not round_streams(big, strategy_streams=False, num_params=mlp)
    for section, changes in [
        ("federation", {"secure_aggregation": True}), ("privacy", {"mode": "central"}),
        ("federation", {"exclusion": "flagged"}),
    ]:  # fmt: skip
        assert not round_streams(big.replace(section, **changes), strategy_streams=True, num_params=mlp)
    assert trainer_folds(big)
    assert trainer_folds(big.replace("attack", fraction=0.2, behaviour="label_flip"))
    assert not trainer_folds(big.replace("attack", fraction=0.2, behaviour="sign_flip"))
    assert not trainer_folds(big.replace("communication", compression="qsgd"))
    assert stream_slots(10_000, mlp, 2) == HELD_ROUND_BYTES // (4 * mlp) and stream_slots(3, mlp, 2) == 3


def final_weights_and_rows(run: FederatedRun) -> tuple[torch.Tensor, list, list[float]]:
    """The weights after the run, each client's row (loss apart: float32 rounding moves it), the losses."""
    results = list(run.rounds())
    rows = [[(c.id, c.status, c.steps, c.bytes_up, c.error, c.num_examples) for c in r.clients] for r in results]
    return run.state.weights, rows, [c.loss for r in results for c in r.clients]


@pytest.mark.parametrize("changes", [
    {},
    {"federation": {"dropout_probability": 0.2, "dropout_stage": "during"}},  # lost clients: trained, not summed
    {"federation": {"strategy": "fednova", "speed_spread": 1.0, "round_deadline": 1.0, "straggler_policy": "partial"}},
    {"attack": {"fraction": 0.2, "behaviour": "sign_flip"}, "communication": {"compression": "qsgd"}},  # rows folded
    {"federation": {"strategy": "qfedavg", "qffl_q": 1.0, "qffl_lipschitz": 2.0}},  # F_k asked before training
    {"federation": {"strategy": "qfedavg", "qffl_q": 1.0, "qffl_lipschitz": 2.0},
     "communication": {"compression": "qsgd"}},  # q-FedAvg's rows folded by the round loop
], ids=["fedavg", "lost", "fednova-partial", "server-side-uploads", "qfedavg", "qfedavg-rows"])  # fmt: skip
def test_a_streamed_run_equals_the_held_run(mnist, changes):
    streamed = FederatedRun(config(**changes), data=mnist)
    held = FederatedRun(config(**changes), data=mnist)
    held.streams = False  # the reference: the path every update is held on
    assert streamed.streams

    weights, rows, losses = final_weights_and_rows(streamed)
    expected_weights, expected_rows, expected_losses = final_weights_and_rows(held)

    # Float32 rounding differs by an ulp here and there (the held rows are reconstructed as w + (y − w)),
    # and the second round's training carries it on: well below any real difference (a round moves weights ~1e-2).
    torch.testing.assert_close(weights, expected_weights, rtol=1e-4, atol=1e-5)
    assert rows == expected_rows
    assert losses == pytest.approx(expected_losses, rel=1e-5)
    assert not torch.equal(weights, FederatedRun(config(**changes), data=mnist).state.weights)  # it learned


def test_a_streamed_round_records_no_suspicion_scores(mnist):
    result = next(FederatedRun(config(), data=mnist).rounds())
    assert all(c.suspicion is None and not c.flagged for c in result.clients)
    small = next(FederatedRun(config(federation={"clients_per_round": 10}), data=mnist).rounds())
    assert all(c.suspicion is not None for c in small.clients)


def test_the_pool_folds_in_its_workers_as_this_process_does(mnist):
    cfg = config()
    run = FederatedRun(cfg, data=mnist)
    settings = train_settings(cfg, 10, noise_multiplier=0.0)
    num_params = run.state.weights.numel()
    tasks = [TrainTask(k, k, run.partitions[k], seed=k, fold=FOLD_SUM if k % 5 else FOLD_DROP,
                       fold_factor=1 + k / 10, distance_factor=k / 3) for k in range(12)]  # q-FedAvg's, say
    local = InProcessTrainer(run.data, settings, num_params, slots=12, folding=True)
    pool = ProcessPoolTrainer(run.data, settings, num_params, slots=12, num_workers=2, folding=True)
    try:
        local_outcomes = local.train(run.state.weights, tasks)
        pool_outcomes = pool.train(run.state.weights, tasks)
        local_sum, pool_sum = local.take_sum(), pool.take_sum()
    finally:
        pool.close()
    assert [(o.steps, o.loss) for o in pool_outcomes] == [(o.steps, o.loss) for o in local_outcomes]
    assert local_sum.clients == pool_sum.clients == 9  # 0, 5 and 10 were lost on the way
    torch.testing.assert_close(pool_sum.values, local_sum.values, rtol=1e-12, atol=1e-9)
    assert pool_sum.scalar("aux") > 0 and pool_sum.scalar("weight") == pytest.approx(
        sum(len(t.indices) * t.fold_factor for t in tasks if t.fold == FOLD_SUM), rel=1e-12)
    assert pool.take_sum().clients == 0  # taken means reset
    assert local.results.untyped_storage().nbytes() == 4 * num_params  # one row stands for all 12


def test_a_client_with_non_finite_weights_is_failed_and_left_out_of_the_sum(mnist):
    cfg = config()
    run = FederatedRun(cfg, data=mnist)
    trainer = ClientTrainer(run.data.train_x, run.data.train_y, train_settings(cfg, 10, noise_multiplier=0.0))
    num_params = run.state.weights.numel()
    trainer.running = RunningSum(num_params)
    broken = run.state.weights.clone()
    broken[0] = float("nan")
    out = torch.empty(num_params)
    task = TrainTask(0, 0, run.partitions[0], seed=0, fold=FOLD_SUM)

    outcome = trainer.run(task, broken, out)
    assert outcome.error == NON_FINITE and trainer.running.clients == 0
    healthy = trainer.run(task, run.state.weights, out)
    assert not healthy.error and trainer.running.clients == 1
    trainer.run(dataclasses.replace(task, fold=ROW), run.state.weights, out)  # the row path: the same client
    torch.testing.assert_close(out, torch.cat([p.reshape(-1) for p in get_parameters(trainer.model).values()]))
    torch.testing.assert_close(trainer.running.mean().float(), out, rtol=0, atol=0)  # one client: its weights


def test_preflight_estimates_a_streamed_round_flat_and_still_refuses_a_held_one_that_cannot_fit():
    from runs import preflight

    cnn = 1_663_370
    big = ExperimentConfig.from_dict({
        "model": {"name": "cnn"}, "federation": {"num_clients": 10_000, "clients_per_round": 10_000},
        "system": {"num_workers": 2},
    })  # fmt: skip
    cost = preflight.estimate_round(big)
    assert cost.clients_held == 0
    assert cost.memory_bytes == preflight.PROCESS_BYTES + HELD_ROUND_BYTES + 8 * cnn * (2 + 3)  # 1.7 GB
    preflight.check_costs(big, available_bytes=4 * 10**9)  # fits 80% of 4 GB

    held = big.replace("federation", strategy="median")
    estimate = preflight.PROCESS_BYTES + 2 * 4 * cnn * 10_000  # every update held: 134.7 GB
    with pytest.raises(ValueError, match=rf"clients_per_round = 10,000: .* needs about {estimate / 1e9:,.1f} GB"):
        preflight.check_costs(held, available_bytes=4 * 10**9)
