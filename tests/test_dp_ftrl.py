"""DP-FTRL (privacy/ftrl.py; `privacy.mechanism = "dp-ftrl"`): every released prefix carries the noise
of its binary decomposition, the engine adds exactly that noise, ε is the zCDP conversion of the
tree's sensitivity over the run's schedule, a resumed run ends where the uninterrupted one does,
unsupported combinations are refused, and a short run learns."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from engine.client_population import ParticipationTally, client_seed, select_clients
from experiment_config import ExperimentConfig
from federated_learning import FederatedRun
from model import flatten, get_parameters
from privacy.dp_fedavg import TreeSum, central_epsilon_after
from privacy.ftrl import TreeAggregator, calibrate_tree_noise, tree_epsilon, tree_squared_sensitivities

pytestmark = pytest.mark.usefixtures("one_torch_thread")

ROOT = Path(__file__).resolve().parent.parent
SMALL = [
    "model.name=mlp", "data.max_train_examples=600", "data.max_test_examples=300", "privacy.audit_examples=0",
    "system.num_workers=1", "system.seed=3", "federation.num_clients=6", "federation.clients_per_round=3",
    "federation.rounds=4", "federation.batch_size=25", "federation.learning_rate=0.1",
]  # fmt: skip
FTRL = [*SMALL, "privacy.mode=central", "privacy.mechanism=dp-ftrl", "federation.client_sampling=fixed",
        "privacy.noise_multiplier=0.3", "privacy.max_grad_norm=0.5"]  # fmt: skip


def config(*overrides: str) -> ExperimentConfig:
    return ExperimentConfig().with_overrides(list(overrides))


def decomposition_noise(node_noises: dict[int, np.ndarray], t: int) -> np.ndarray:
    """By hand: the prefix [1, t] is the union of one dyadic node per set bit j of t, the node
    that ends at round (t >> j) << j, whose noise was drawn when it completed."""
    return sum(node_noises[(t >> j) << j] for j in range(t.bit_length()) if t >> j & 1)


def test_each_released_prefix_carries_the_noise_of_its_binary_decomposition():
    rng = np.random.default_rng(7)
    rounds, size = 13, 5
    leaves = rng.normal(size=(rounds, size))
    node_noises = {t: rng.normal(size=size) for t in range(1, rounds + 1)}  # drawn once, when the node completes
    tree = TreeAggregator(torch.zeros(size))

    for t in range(1, rounds + 1):
        released = tree.add(torch.from_numpy(leaves[t - 1]), torch.from_numpy(node_noises[t])).numpy()
        expected = leaves[:t].sum(axis=0) + decomposition_noise(node_noises, t)
        np.testing.assert_allclose(released, expected, rtol=0, atol=1e-12)
        assert sorted(tree.noisy) == [j for j in range(t.bit_length()) if t >> j & 1]  # one node per set bit


def test_the_engines_round_adds_the_trees_noise_for_each_prefix_with_the_seeded_generator(mnist):
    cfg = config(*FTRL, "federation.server_learning_rate=0.7")
    run = FederatedRun(cfg, data=mnist)
    clip, sigma, k, eta = 0.5, run.privacy.noise_multiplier, 3, 0.7
    w0 = run.state.weights.clone()
    size = w0.numel()
    rng = np.random.default_rng(1)
    tree, leaves, node_noises = TreeAggregator(w0), [], {}

    for t in range(1, 5):
        updates = [torch.from_numpy(rng.normal(scale=scale, size=size)).float() for scale in (1e-4, 0.01, 0.1)]
        total = TreeSum(cfg, run.privacy, w0, t, clip_norm=clip, tree=tree)
        for client, update in enumerate(updates):
            total.add(client, update)
        weights = total.result({}).weights
        # The fixed generator: the server's seed slot of round t (one past the last client), as DP-FedAvg's.
        generator = torch.Generator().manual_seed(client_seed(3, t, 6))
        node_noises[t] = torch.normal(0.0, sigma * clip, size=(size,), generator=generator).double().numpy()
        clipped = [u.double().numpy() * min(1.0, clip / np.linalg.norm(u.double().numpy())) for u in updates]
        leaves.append(np.sum(clipped, axis=0))
        expected = w0.double().numpy() + eta * (np.sum(leaves, axis=0) + decomposition_noise(node_noises, t)) / k
        np.testing.assert_allclose(weights.double().numpy(), expected.astype(np.float32), rtol=0, atol=1e-6)


def brute_force_squared_sensitivity(schedule: list[list[int]], r: int) -> int:
    """Δ²/C² after round r, by hand: for every client, every dyadic node complete by r, (its rounds in the node)²."""
    clients = {c for chosen in schedule for c in chosen}
    best = 0
    for client in clients:
        total, size = 0, 1
        while size <= r:
            for end in range(size, r + 1, size):
                total += sum(client in schedule[t - 1] for t in range(end - size + 1, end + 1)) ** 2
            size *= 2
        best = max(best, total)
    return best


def test_the_trees_sensitivity_is_the_papers_for_one_participation_and_exact_for_more():
    once = [[c] for c in range(20)]  # each client in one round: ⌈lg(r + 1)⌉ levels (Kairouz et al. 2021)
    assert tree_squared_sensitivities(once, rounds=20).tolist() == [math.ceil(math.log2(r + 1)) for r in range(1, 21)]
    always = [[0]] * 6  # one client in every round: nodes 1,1,1,1,1,1 (level 0), 2²,2²,2² (1), 4² (2)
    assert tree_squared_sensitivities(always, rounds=6)[-1] == 6 + 3 * 4 + 16
    cfg = config(*FTRL, "federation.rounds=11")
    schedule = [select_clients(cfg, r, profiles=(), tally=ParticipationTally()) for r in range(1, 12)]
    got = tree_squared_sensitivities(schedule, rounds=11)
    assert got.tolist() == [brute_force_squared_sensitivity(schedule, r) for r in range(1, 12)]


def test_epsilon_is_the_zcdp_conversion_of_the_schedules_sensitivity(mnist):
    run = FederatedRun(config(*FTRL, "federation.rounds=6"), data=mnist)
    schedule = [run.sample_clients(r) for r in range(1, 7)]  # who the engine really takes
    for r in range(1, 7):
        rho = brute_force_squared_sensitivity(schedule, r) / (2 * 0.3**2)
        by_hand = rho + 2 * math.sqrt(rho * math.log(1 / 1e-5))  # Bun & Steinke 2016, Prop. 1.3
        assert central_epsilon_after(run.privacy, rounds=r) == pytest.approx(by_hand, rel=1e-12)
    assert run.privacy.accountant == "zcdp" and run.privacy.neighbouring_relation == "zero-out one client"


def test_target_epsilon_calibrates_sigma_to_just_meet_it(mnist):
    run = FederatedRun(config(*FTRL, "privacy.target_epsilon=2.0"), data=mnist)
    sigma, squared = run.privacy.noise_multiplier, run.privacy.tree_sensitivities[-1]
    assert central_epsilon_after(run.privacy, rounds=4) <= 2.0
    assert central_epsilon_after(run.privacy, rounds=4) == pytest.approx(2.0, rel=1e-9)
    assert tree_epsilon(noise_multiplier=sigma * (1 - 1e-6), squared_sensitivity=squared, delta=1e-5) > 2.0
    assert calibrate_tree_noise(target_epsilon=2.0, delta=1e-5, squared_sensitivity=squared) == sigma


def weights(run: FederatedRun) -> torch.Tensor:
    return flatten(get_parameters(run.model))


def test_a_resumed_run_ends_bit_for_bit_where_the_uninterrupted_one_does(mnist):
    cfg = config(*FTRL, "federation.rounds=5")
    straight = FederatedRun(cfg, data=mnist)
    expected = [(r.accuracy, r.loss, r.epsilon) for r in straight.rounds()]

    first = FederatedRun(cfg, data=mnist)
    rounds = first.rounds()
    before = [next(rounds) for _ in range(3)]  # after round 3 the tree holds two nodes (bits 0 and 1)
    saved = first.checkpoint()
    rounds.close()

    resumed = FederatedRun(cfg, data=mnist)
    assert resumed.restore(saved) == 3
    after = list(resumed.rounds())
    assert [(r.accuracy, r.loss, r.epsilon) for r in [*before, *after]] == expected
    assert torch.equal(weights(resumed), weights(straight))
    assert torch.equal(resumed.state.tree.prefix(), straight.state.tree.prefix())


@pytest.mark.parametrize(
    ("overrides", "says"),
    [
        (["privacy.mode=local"], "privacy.mode = 'central'"),
        (["federation.client_sampling=poisson"], "federation.client_sampling = 'fixed'"),
        (["federation.secure_aggregation=true"], "federation.secure_aggregation = false"),
        (["privacy.secure_noise=true"], "privacy.secure_noise = false"),
        (["privacy.adaptive_clipping=true"], "privacy.adaptive_clipping = false"),
    ],
)
def test_unsupported_combinations_are_refused_with_the_reason(overrides, says):
    with pytest.raises(ValueError, match="privacy.mechanism = 'dp-ftrl' needs") as raised:
        config(*FTRL, *overrides)
    assert says in str(raised.value)


def test_the_cli_refuses_poisson_sampling_in_one_line_and_exit_2(tmp_path):
    db = f"sqlite:///{tmp_path / 'runs.db'}"
    done = subprocess.run(
        [sys.executable, "cli.py", "run", "--db", db, "--set", "privacy.mode=central", "--set",
         "privacy.mechanism=dp-ftrl"],
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 2
    assert len(done.stderr.strip().splitlines()) == 1 and "federation.client_sampling = 'fixed'" in done.stderr
    assert not (tmp_path / "runs.db").exists() or "dp-ftrl" not in (tmp_path / "runs.db").read_bytes().decode("latin-1")


def test_a_short_run_learns(mnist):
    cfg = config(
        *FTRL, "data.max_train_examples=3000", "federation.num_clients=10", "federation.clients_per_round=10",
        "federation.rounds=6", "privacy.noise_multiplier=0.02", "privacy.max_grad_norm=1.0",
        "federation.server_learning_rate=1.0",
    )  # fmt: skip
    results = list(FederatedRun(cfg, data=mnist).rounds())
    assert results[-1].accuracy > 0.5  # ten classes: chance is 0.1
    assert results[-1].accountant == "zcdp" and results[-1].neighbouring_relation == "zero-out one client"
    assert 0 < results[0].epsilon < results[-1].epsilon


@pytest.mark.parametrize("sampling", ["fixed", "cyclic"])
def test_the_privacy_report_names_the_mechanism_and_its_accountant(mnist, db_url, sampling):
    from database import ExperimentStore
    from privacy.report import render_markdown

    cfg = config(*FTRL, f"federation.client_sampling={sampling}")
    results = list(FederatedRun(cfg, data=mnist).rounds())
    store = ExperimentStore(db_url)
    experiment_id = store.create_experiment(cfg.to_dict(), name="dp-ftrl")
    store.mark_running(experiment_id)
    for result in results:
        store.record_round(experiment_id, result.to_dict())
    store.finish(experiment_id, "completed", final=results[-1].to_dict())

    text = render_markdown(store.get_experiment(experiment_id), store.rounds_frame([experiment_id]))

    assert "DP-FTRL (Kairouz et al. 2021)" in text and "binary tree" in text
    assert "zCDP of the tree" in text and f"ZCDP {results[-1].epsilon:.6g} (**used**" in text
    assert "zero-out one client" in text and "Replacing every update of any one client by zeros" in text
    mechanism_row = next(line for line in text.splitlines() if line.startswith("| Mechanism |"))
    assert "DP-FTRL" in mechanism_row and "DP-FedAvg" not in mechanism_row
    assert "RDP, PRV and PLD do not apply" in text
    schedule = {"fixed": "exactly 3 of the 6 clients each round, from a seeded schedule",
                "cyclic": "cyclic participation: the 6 clients in one seeded order, each round the next 3 of it, so "
                          "each client once every 2 rounds"}  # fmt: skip
    assert schedule[sampling] in text and schedule["fixed" if sampling == "cyclic" else "cyclic"] not in text


# -- cyclic participation: each client once every n/k rounds (federation.client_sampling = "cyclic") --------

CYCLIC = [*FTRL[:-3], "federation.client_sampling=cyclic", "privacy.noise_multiplier=0.3", "privacy.max_grad_norm=0.5"]


def test_cyclic_rounds_take_each_client_once_per_pass_in_one_seeded_order(mnist):
    run = FederatedRun(config(*CYCLIC, "federation.rounds=8"), data=mnist)
    schedule = [run.sample_clients(r) for r in range(1, 9)]
    assert all(len(chosen) == 3 for chosen in schedule)
    for start in (0, 2, 4, 6):  # 6 clients, 3 a round: every pass of two rounds takes each client once
        assert sorted(schedule[start] + schedule[start + 1]) == list(range(6))
    assert schedule[0] == schedule[2] == schedule[4] and schedule[1] == schedule[3]  # the same order each pass
    order = np.random.default_rng([3, 0x5EED04]).permutation(6)  # seed 3 and the cyclic stream, by hand
    assert schedule[0] == sorted(order[:3].tolist()) and schedule[1] == sorted(order[3:].tolist())
    # k that does not divide n wraps round: 4 clients, 3 a round → positions 0-2, 3,0,1, 2,3,0, ...
    wrap = FederatedRun(config(*CYCLIC, "federation.num_clients=4"), data=mnist)
    order = np.random.default_rng([3, 0x5EED04]).permutation(4).tolist()
    expected = [sorted(order[i % 4] for i in range(3 * r, 3 * r + 3)) for r in range(4)]
    assert [wrap.sample_clients(r) for r in range(1, 5)] == expected


def test_cyclic_participation_is_accounted_from_its_schedule_and_costs_less_than_random_draws(mnist):
    cyclic = FederatedRun(config(*CYCLIC, "federation.rounds=8"), data=mnist)
    schedule = [cyclic.sample_clients(r) for r in range(1, 9)]
    assert list(cyclic.privacy.tree_sensitivities) == [brute_force_squared_sensitivity(schedule, r) for r in range(1, 9)]
    # By hand: a client in rounds 1, 3, 5, 7 (or 2, 4, 6, 8): 4 leaves, 2 level-1 nodes with one round each,
    # the two level-2 nodes (1-4, 5-8) with two each, the level-3 node with four: 4 + 4·1 + 2·4 + 16 = 32.
    assert cyclic.privacy.tree_sensitivities[-1] == 4 + 4 + 2 * 4 + 16
    drawn = FederatedRun(config(*FTRL, "federation.rounds=8"), data=mnist)
    assert drawn.privacy.tree_sensitivities[-1] >= cyclic.privacy.tree_sensitivities[-1]
    assert central_epsilon_after(cyclic.privacy, rounds=8) <= central_epsilon_after(drawn.privacy, rounds=8)
    results = list(cyclic.rounds())
    assert [sorted(c.id for c in r.clients) for r in results] == schedule  # the engine trained exactly those
    assert results[-1].epsilon == pytest.approx(central_epsilon_after(cyclic.privacy, rounds=8), rel=1e-12)


@pytest.mark.parametrize(
    "overrides",
    [["privacy.mechanism=dp-fedavg"], ["privacy.mode=none", "privacy.mechanism=dp-fedavg"], ["privacy.mode=local"]],
)
def test_cyclic_sampling_outside_dp_ftrl_is_refused(overrides):
    with pytest.raises(ValueError, match="client_sampling = 'cyclic'.*DP-FTRL's schedule|dp-ftrl' needs"):
        config(*CYCLIC, *overrides)
