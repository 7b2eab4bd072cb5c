from __future__ import annotations

import types

import numpy as np
import pytest
import torch

import experiment_config
from engine.robust_rules import bulyan_selection, krum_scores, pairwise_squared_distances
from engine.strategies import (
    STRATEGIES,
    ClientUpdate,
    FedAvg,
    FedAvgM,
    FedNova,
    FedProx,
    Scaffold,
    make_strategy,
    weighted_average,
)

NAMES = ("fedavg", "fedprox", "fedavgm", "fedadagrad", "fedadam", "fedyogi", "scaffold", "fednova",
         "median", "trimmed_mean", "krum", "multi_krum", "bulyan", "adaptive_weighting", "qfedavg")


def federation(**overrides: object) -> types.SimpleNamespace:
    """Every attribute make_strategy reads, at the documented defaults (experiment_config is moving)."""
    values = dict(strategy="fedavg", num_clients=10, learning_rate=0.05, proximal_mu=0.01, server_learning_rate=0.0,
                  server_momentum=0.9, beta1=0.9, beta2=0.99, tau=1e-3, trim_fraction=0.2, byzantine_clients=1,
                  multi_krum_keep=0, weighting_exponent=0.5, qffl_q=1.0)
    return types.SimpleNamespace(**(values | overrides))


def client_weights(rng: np.random.Generator, count: int, size: int, around: np.ndarray | None = None) -> list:
    """`count` float32 vectors that differ in scale and offset, optionally centred on `around`."""
    centre = np.zeros(size) if around is None else around
    return [(centre + rng.normal(loc=0.1 * i, scale=1 + 0.5 * i, size=size)).astype(np.float32) for i in range(count)]


def updates_from(weights: list, sizes: list | None = None, steps: list | None = None,
                 scores: list | None = None, ids: list | None = None) -> list[ClientUpdate]:
    n = len(weights)
    sizes, steps = sizes or [10 * (i + 1) for i in range(n)], steps or [1] * n
    scores, ids = scores or [None] * n, ids or list(range(n))
    return [ClientUpdate(ids[i], torch.from_numpy(weights[i]), sizes[i], steps[i], 0.0, scores[i],
                         global_loss=0.5 + 0.1 * i) for i in range(n)]  # global_loss: qfedavg's F_k


def aggregate_numpy(strategy, global_weights: np.ndarray, updates: list[ClientUpdate]) -> np.ndarray:
    result = strategy.aggregate(torch.from_numpy(global_weights.astype(np.float32)), updates)
    assert result.dtype == torch.float32
    return result.numpy()


# ---------------------------------------------------------------- FedAvg family


def test_fedavg_matches_numpy_weighted_average():
    rng = np.random.default_rng(0)
    sizes = [10, 250, 3_000]
    weights = [rng.normal(size=1_000).astype(np.float32) * (i + 1) for i in range(3)]
    updates = [ClientUpdate(i, torch.from_numpy(w), n, 1, 0.0) for i, (w, n) in enumerate(zip(weights, sizes))]
    result = FedAvg().aggregate(torch.zeros(1_000), updates)
    expected = np.average(np.stack(weights), axis=0, weights=sizes)
    np.testing.assert_allclose(result.numpy(), expected, rtol=1e-6, atol=1e-6)


def test_fedavg_of_one_client_is_that_client():
    weights = torch.randn(50)
    assert torch.equal(FedAvg().aggregate(torch.zeros(50), [ClientUpdate(0, weights, 7, 1, 0.0)]), weights)


def test_weighted_average_rejects_bad_weights():
    with pytest.raises(ValueError):
        weighted_average([torch.ones(2)], [0])
    with pytest.raises(ValueError):
        weighted_average([torch.ones(2), torch.ones(2)], [1])
    with pytest.raises(ValueError):
        weighted_average([torch.ones(2), torch.ones(2)], [2, -1])


def test_fedprox_is_fedavg_on_the_server():
    updates = updates_from(client_weights(np.random.default_rng(1), 4, 300), sizes=[5, 50, 7, 900])
    x = np.zeros(300)
    np.testing.assert_array_equal(aggregate_numpy(FedProx(proximal_mu=0.1), x, updates), aggregate_numpy(FedAvg(), x, updates))


def test_fedavgm_without_momentum_and_unit_rate_is_fedavg():
    rng = np.random.default_rng(2)
    x = rng.normal(size=200)
    updates = updates_from(client_weights(rng, 3, 200, around=x), sizes=[3, 30, 300])
    result = aggregate_numpy(FedAvgM(server_learning_rate=1.0, server_momentum=0.0), x, updates)
    np.testing.assert_allclose(result, aggregate_numpy(FedAvg(), x, updates), rtol=1e-6, atol=1e-6)


def test_fedavgm_matches_hand_iterated_momentum_over_three_rounds():
    rng = np.random.default_rng(3)
    strategy = make_strategy(federation(strategy="fedavgm", server_learning_rate=0.7, server_momentum=0.6))
    x, velocity = rng.normal(size=100).astype(np.float32), np.zeros(100)
    for round_index in range(3):
        weights, sizes = client_weights(rng, 3, 100, around=x), [4, 40 + round_index, 400]
        result = aggregate_numpy(strategy, x, updates_from(weights, sizes=sizes))
        velocity = 0.6 * velocity + (np.average(np.stack(weights), axis=0, weights=sizes) - x)
        x = (x + 0.7 * velocity).astype(np.float32)
        np.testing.assert_allclose(result, x, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["fedadagrad", "fedadam", "fedyogi"])
def test_adaptive_server_optimisers_match_reddi_algorithm_2_over_three_rounds(name: str):
    rng = np.random.default_rng(4)
    lr, beta1, beta2, tau = 0.05, 0.8, 0.95, 1e-2
    strategy = make_strategy(federation(strategy=name, server_learning_rate=lr, beta1=beta1, beta2=beta2, tau=tau))
    x, m, v = rng.normal(size=120).astype(np.float32), np.zeros(120), np.zeros(120)
    signs_seen = set()
    for scale in (1.0, 0.1, 3.0):  # shrinking then growing Δ, so Yogi's sign(v − Δ²) takes both signs
        weights = [(x + scale * w).astype(np.float32) for w in client_weights(rng, 3, 120)]
        sizes = [7, 70, 20]
        result = aggregate_numpy(strategy, x, updates_from(weights, sizes=sizes))
        delta = np.average(np.stack(weights).astype(np.float64), axis=0, weights=sizes) - x
        m = beta1 * m + (1 - beta1) * delta
        signs_seen |= set(np.sign(v - delta**2))
        if name == "fedadagrad":
            v = v + delta**2
        elif name == "fedadam":
            v = beta2 * v + (1 - beta2) * delta**2
        else:
            v = v - (1 - beta2) * delta**2 * np.sign(v - delta**2)
        x = (x + lr * m / (np.sqrt(v) + tau)).astype(np.float32)
        np.testing.assert_allclose(result, x, rtol=1e-5, atol=1e-5)
    assert {-1.0, 1.0} <= signs_seen


@pytest.mark.parametrize(("name", "default"), [("fedavgm", 1.0), ("scaffold", 1.0), ("fedadagrad", 0.1),
                                               ("fedadam", 0.01), ("fedyogi", 0.01)])
def test_server_learning_rate_zero_means_the_strategy_default(name: str, default: float):
    assert make_strategy(federation(strategy=name)).server_learning_rate == default
    assert make_strategy(federation(strategy=name, server_learning_rate=0.3)).server_learning_rate == 0.3


# ---------------------------------------------------------------- SCAFFOLD and FedNova


def test_scaffold_control_variates_over_two_rounds_with_different_participants():
    rng = np.random.default_rng(5)
    num_clients, client_lr, server_lr, size = 4, 0.1, 0.5, 80
    strategy = make_strategy(federation(strategy="scaffold", num_clients=num_clients, learning_rate=client_lr,
                                        server_learning_rate=server_lr))
    x = rng.normal(size=size).astype(np.float32)
    for client in range(num_clients):
        np.testing.assert_array_equal(strategy.client_correction(client, torch.from_numpy(x)).numpy(), 0)
    c, controls = np.zeros(size), {}
    for participants, steps in (([0, 2], [3, 5]), ([1, 2], [2, 7])):
        weights = client_weights(rng, 2, size, around=x)
        result = aggregate_numpy(strategy, x, updates_from(weights, sizes=[1, 1000], steps=steps, ids=participants))
        deltas = [(x - w) / (k * client_lr) - c for w, k in zip(weights, steps)]
        for client, delta in zip(participants, deltas):
            controls[client] = controls.get(client, 0) + delta
        c = c + sum(deltas) / num_clients
        x = (x + server_lr * (np.mean(np.stack(weights), axis=0) - x)).astype(np.float32)  # unweighted
        np.testing.assert_allclose(result, x, rtol=1e-5, atol=1e-5)
    assert set(strategy.client_controls) == {0, 1, 2}
    for client in range(num_clients):
        expected = c - controls.get(client, 0)
        correction = strategy.client_correction(client, torch.from_numpy(x)).numpy()
        np.testing.assert_allclose(correction, expected, rtol=1e-5, atol=1e-4)


def test_scaffold_rejects_unknown_or_repeated_clients():
    strategy = Scaffold(num_clients=2, client_learning_rate=0.1)
    weights = client_weights(np.random.default_rng(6), 2, 10)
    for ids in ([0, 0], [0, 2]):
        with pytest.raises(ValueError, match="distinct client ids"):
            strategy.aggregate(torch.zeros(10), updates_from(weights, ids=ids))


def test_fednova_with_unequal_steps_matches_the_formula():
    rng = np.random.default_rng(7)
    x = rng.normal(size=150).astype(np.float32)
    weights, sizes, steps = client_weights(rng, 3, 150, around=x), [30, 300, 60], [2, 9, 40]
    result = aggregate_numpy(FedNova(), x, updates_from(weights, sizes=sizes, steps=steps))
    p = np.array(sizes) / sum(sizes)
    directions = [(x - w.astype(np.float64)) / tau for w, tau in zip(weights, steps)]
    expected = x - np.dot(p, steps) * np.sum([pk * d for pk, d in zip(p, directions)], axis=0)
    np.testing.assert_allclose(result, expected, rtol=1e-5, atol=1e-5)
    assert not np.allclose(result, aggregate_numpy(FedAvg(), x, updates_from(weights, sizes=sizes)), atol=1e-3)


def test_fednova_with_equal_steps_is_fedavg():
    rng = np.random.default_rng(8)
    x = rng.normal(size=150).astype(np.float32)
    updates = updates_from(client_weights(rng, 3, 150, around=x), sizes=[30, 300, 60], steps=[6, 6, 6])
    np.testing.assert_allclose(aggregate_numpy(FedNova(), x, updates), aggregate_numpy(FedAvg(), x, updates),
                               rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------- Byzantine-robust rules


def squared_distance(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.sum((a.astype(np.float64) - b.astype(np.float64)) ** 2))


def krum_scores_reference(points: list, f: int, neighbours: int | None = None) -> list[float]:
    """Blanchard et al. 2017 by definition: sum of squared distances to the n − f − 2 nearest others."""
    n = len(points)
    k = n - f - 2 if neighbours is None else neighbours
    return [sum(sorted(squared_distance(points[i], points[j]) for j in range(n) if j != i)[:k]) for i in range(n)]


def bulyan_reference(points: list, f: int) -> np.ndarray:
    """El Mhamdi et al. 2018 by definition, one Krum pick and one coordinate at a time."""
    remaining, selected = list(points), []
    while len(selected) < len(points) - 2 * f:
        left = len(remaining)
        scores = krum_scores_reference(remaining, f, neighbours=left - f - 2 if left - f - 2 >= 1 else left - 1)
        selected.append(remaining.pop(int(np.argmin(scores))))
    chosen, beta = np.stack(selected).astype(np.float64), len(selected) - 2 * f
    median = np.median(chosen, axis=0)
    return np.array([chosen[np.argsort(np.abs(chosen[:, j] - median[j]), kind="stable")[:beta], j].mean()
                     for j in range(chosen.shape[1])])


@pytest.mark.parametrize("count", [5, 6])
def test_median_matches_numpy_and_ignores_example_counts(count: int):
    weights = client_weights(np.random.default_rng(9), count, 300)
    updates = updates_from(weights, sizes=[1] * (count - 1) + [10**6])
    result = aggregate_numpy(make_strategy(federation(strategy="median")), np.zeros(300), updates)
    np.testing.assert_allclose(result, np.median(np.stack(weights), axis=0), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize(("count", "trim_fraction"), [(5, 0.2), (10, 0.25), (7, 0.1), (9, 0.0)])
def test_trimmed_mean_matches_scipy(count: int, trim_fraction: float):
    weights = client_weights(np.random.default_rng(10), count, 300)
    strategy = make_strategy(federation(strategy="trimmed_mean", trim_fraction=trim_fraction))
    result = aggregate_numpy(strategy, np.zeros(300), updates_from(weights))
    stacked = np.stack(weights).astype(np.float64)
    try:
        from scipy.stats import trim_mean
        expected = trim_mean(stacked, trim_fraction, axis=0)
    except ImportError:
        cut = int(trim_fraction * count)
        expected = np.sort(stacked, axis=0)[cut : count - cut].mean(axis=0)
    np.testing.assert_allclose(result, expected, rtol=1e-5, atol=1e-6)


def alike_weights(seed: int, count: int, size: int) -> list:
    """Clients drawn from one distribution, so which one Krum prefers is a close call."""
    rng = np.random.default_rng(seed)
    return [rng.normal(size=size).astype(np.float32) for _ in range(count)]


@pytest.mark.parametrize(("count", "f"), [(7, 1), (12, 3), (5, 0)])
def test_krum_scores_match_brute_force_even_far_from_the_origin(count: int, f: int):
    weights = [w + np.float32(1e6) for w in alike_weights(count, count, 2_000)]  # ‖y‖² ≫ ‖y_i − y_j‖²
    distances = pairwise_squared_distances(torch.from_numpy(np.stack(weights)))
    scores = krum_scores(distances, neighbours=count - f - 2)
    np.testing.assert_allclose(scores.numpy(), krum_scores_reference(weights, f), rtol=1e-9)


@pytest.mark.parametrize(("count", "f", "seed"), [(7, 1, 0), (7, 1, 1), (7, 1, 2), (11, 2, 3), (8, 1, 4)])
def test_bulyan_selection_is_repeated_krum_on_the_remaining_set(count: int, f: int, seed: int):
    weights = alike_weights(seed, count, 30)
    remaining, expected = list(range(count)), []
    while len(expected) < count - 2 * f:
        left = len(remaining)
        neighbours = left - f - 2 if left - f - 2 >= 1 else left - 1
        scores = krum_scores_reference([weights[i] for i in remaining], f, neighbours=neighbours)
        expected.append(remaining.pop(int(np.argmin(scores))))
    distances = pairwise_squared_distances(torch.from_numpy(np.stack(weights)))
    assert bulyan_selection(distances, byzantine_clients=f) == expected


@pytest.mark.parametrize(("count", "f", "seed"), [(7, 1, 0), (9, 2, 1), (5, 0, 2), (8, 1, 3), (10, 1, 4)])
def test_krum_picks_the_brute_force_lowest_score(count: int, f: int, seed: int):
    weights = alike_weights(seed, count, 40)
    result = aggregate_numpy(make_strategy(federation(strategy="krum", byzantine_clients=f)), np.zeros(40),
                             updates_from(weights))
    np.testing.assert_array_equal(result, weights[int(np.argmin(krum_scores_reference(weights, f)))])


@pytest.mark.parametrize(("count", "f", "keep", "seed"), [(7, 1, 0, 0), (9, 2, 3, 1), (8, 1, 1, 2), (10, 2, 2, 3)])
def test_multi_krum_averages_the_brute_force_lowest_scores(count: int, f: int, keep: int, seed: int):
    weights = alike_weights(seed, count, 40)
    strategy = make_strategy(federation(strategy="multi_krum", byzantine_clients=f, multi_krum_keep=keep))
    result = aggregate_numpy(strategy, np.zeros(40), updates_from(weights))
    chosen = np.argsort(krum_scores_reference(weights, f), kind="stable")[: keep or count - f]
    np.testing.assert_allclose(result, np.mean(np.stack(weights)[chosen], axis=0), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(("count", "f"), [(7, 1), (12, 2), (3, 0), (11, 2)])
def test_bulyan_matches_brute_force_definition(count: int, f: int):
    weights = client_weights(np.random.default_rng(30 + count), count, 25)
    result = aggregate_numpy(make_strategy(federation(strategy="bulyan", byzantine_clients=f)), np.zeros(25),
                             updates_from(weights))
    np.testing.assert_allclose(result, bulyan_reference(weights, f), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["median", "trimmed_mean", "krum", "multi_krum", "bulyan"])
def test_robust_rules_stay_within_the_honest_range_under_attack(name: str):
    rng = np.random.default_rng(40)
    honest = [rng.normal(size=500).astype(np.float32) for _ in range(9)]
    attackers = [np.full(500, 1e6, dtype=np.float32), np.full(500, -1e6, dtype=np.float32)]
    updates = updates_from(honest + attackers, sizes=[10] * 9 + [10**9, 10**9])  # attackers also claim huge counts
    strategy = make_strategy(federation(strategy=name, byzantine_clients=2, trim_fraction=0.2))
    result = aggregate_numpy(strategy, np.zeros(500), updates)
    assert np.all(result >= np.min(honest, axis=0) - 1e-6) and np.all(result <= np.max(honest, axis=0) + 1e-6)


@pytest.mark.parametrize(("name", "f", "count", "minimum"), [("krum", 3, 8, 9), ("multi_krum", 2, 6, 7),
                                                             ("bulyan", 1, 6, 7), ("bulyan", 2, 10, 11)])
def test_too_few_updates_for_f_is_an_error(name: str, f: int, count: int, minimum: int):
    weights = client_weights(np.random.default_rng(50), count, 10)
    strategy = make_strategy(federation(strategy=name, byzantine_clients=f))
    with pytest.raises(ValueError, match=f"{name} with f={f} needs at least {minimum} updates, got {count}"):
        strategy.aggregate(torch.zeros(10), updates_from(weights))


@pytest.mark.parametrize("name", NAMES)
def test_every_rule_rejects_zero_updates_and_keeps_the_dtype(name: str):
    strategy = make_strategy(federation(strategy=name, byzantine_clients=1))
    with pytest.raises(ValueError):
        strategy.aggregate(torch.zeros(10), [])
    weights = client_weights(np.random.default_rng(60), 7, 10)
    updates = updates_from(weights, steps=[1, 2, 3, 4, 5, 6, 7], scores=[0.5, 0.9, 0.1, 0.3, 0.7, 0.8, 0.2])
    result = strategy.aggregate(torch.zeros(10, dtype=torch.float32), updates)
    assert result.dtype == torch.float32 and result.shape == (10,) and torch.isfinite(result).all()


# ---------------------------------------------------------------- adaptive weighting


def test_adaptive_weighting_interpolates_between_sizes_and_scores():
    weights = client_weights(np.random.default_rng(70), 3, 200)
    sizes, scores = [10, 200, 50], [0.9, 0.2, 0.6]
    updates = updates_from(weights, sizes=sizes, scores=scores)
    stacked = np.stack(weights).astype(np.float64)
    for exponent, expected_weights in ((1.0, sizes), (0.0, scores),
                                       (0.3, (np.array(sizes) / 260) ** 0.3 * (np.array(scores) / 1.7) ** 0.7)):
        strategy = make_strategy(federation(strategy="adaptive_weighting", weighting_exponent=exponent))
        expected = np.average(stacked, axis=0, weights=expected_weights)
        np.testing.assert_allclose(aggregate_numpy(strategy, np.zeros(200), updates), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("scores", [[0.5, None], [0.0, 0.0]])
def test_adaptive_weighting_needs_client_validation_scores(scores: list):
    updates = updates_from(client_weights(np.random.default_rng(71), 2, 10), scores=scores)
    with pytest.raises(ValueError, match="client_holdout"):
        make_strategy(federation(strategy="adaptive_weighting")).aggregate(torch.zeros(10), updates)


# ---------------------------------------------------------------- registry


def test_registry_names_and_round_trip():
    assert tuple(STRATEGIES) == NAMES
    assert all(make_strategy(federation(strategy=name)).name == name for name in STRATEGIES)
    with pytest.raises(ValueError, match="federation.strategy.*fedavg, fedprox.*adaptive_weighting"):
        make_strategy(federation(strategy="nope"))


def test_registry_matches_config_names():
    from engine import strategies

    assert tuple(STRATEGIES) == tuple(experiment_config.STRATEGIES)
    assert set(strategies._FACTORIES) == set(experiment_config.STRATEGIES)  # no rule the config cannot name


@pytest.mark.parametrize(("name", "field", "value", "allowed"), [
    ("fedavgm", "server_momentum", 1.0, r"in \[0, 1\), got 1.0"), ("fedadam", "tau", 0.0, "> 0, got 0.0"),
    ("fedprox", "proximal_mu", -0.1, ">= 0, got -0.1"), ("trimmed_mean", "trim_fraction", 0.5, r"in \[0, 0.5\)"),
    ("krum", "byzantine_clients", -1, "an integer >= 0, got -1"), ("multi_krum", "multi_krum_keep", -1, "an integer >= 0"),
    ("adaptive_weighting", "weighting_exponent", 1.5, r"in \[0, 1\], got 1.5"),
    ("scaffold", "num_clients", 0, "an integer >= 1, got 0"), ("scaffold", "learning_rate", 0.0, "> 0"),
])  # fmt: skip
def test_invalid_parameters_are_rejected_up_front(name: str, field: str, value: float, allowed: str):
    with pytest.raises(ValueError, match=f"^federation[.]{field} must be {allowed}"):
        make_strategy(federation(strategy=name, **{field: value}))
