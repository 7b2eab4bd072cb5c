from __future__ import annotations

import numpy as np
import pytest

from engine.client_population import (
    ClientProfile, ParticipationTally, allowed_steps, dropouts, loss_sample, make_profiles, select_clients,
)  # fmt: skip
from experiment_config import ExperimentConfig


def config(**federation) -> ExperimentConfig:
    return ExperimentConfig.from_dict({"federation": {"num_clients": 20, "clients_per_round": 5, **federation}})


def test_profiles_are_seeded_and_follow_the_config():
    cfg = config(speed_spread=0.5, dropout_probability=0.2).replace("attack", fraction=0.3)
    profiles = make_profiles(cfg, sizes=list(range(100, 120)))
    assert profiles == make_profiles(cfg, sizes=list(range(100, 120)))
    assert [p.num_examples for p in profiles] == list(range(100, 120))
    assert sum(p.malicious for p in profiles) == 6
    assert all(p.dropout_probability == 0.2 for p in profiles)
    speeds = np.array([p.speed for p in profiles])
    assert len(set(speeds)) == 20 and 0.6 < np.exp(np.mean(np.log(speeds))) < 1.6  # lognormal, median 1
    other = make_profiles(cfg.replace("system", seed=1), sizes=list(range(100, 120)))
    assert [p.speed for p in other] != [p.speed for p in profiles]


def test_profiles_are_columns_and_each_profile_is_built_when_asked_for():
    cfg = config(speed_spread=0.5, dropout_probability=0.2, dropout_heterogeneous=True).replace("attack", fraction=0.3)
    profiles = make_profiles(cfg, sizes=list(range(100, 120)))
    columns = profiles.columns
    assert len(profiles) == 20 and [p.id for p in profiles] == list(range(20))
    assert profiles[3] == ClientProfile(
        id=3, num_examples=103, speed=float(columns["speed"][3]), dropout_probability=float(columns["dropout_probability"][3]),
        bandwidth_mbps=float(columns["bandwidth_mbps"][3]), latency_ms=float(columns["latency_ms"][3]),
        malicious=bool(columns["malicious"][3]),
    )  # fmt: skip
    assert profiles[-1].id == 19 and [p.id for p in profiles[2:5]] == [2, 3, 4]
    assert type(profiles[0].malicious) is bool and type(profiles[0].num_examples) is int
    with pytest.raises(IndexError, match="client 20 is not in the federation of 20"):
        profiles[20]
    assert profiles != make_profiles(cfg, sizes=list(range(101, 121)))  # any column differing
    large = make_profiles(config(num_clients=100_000, clients_per_round=10), sizes=[6] * 100_000)
    assert sum(c.nbytes for c in large.columns.values()) == 100_000 * 41  # 5 × 8 bytes and a bool a client


def test_no_spread_means_everyone_equally_fast_and_heterogeneous_dropout_averages_p():
    assert all(p.speed == 1.0 for p in make_profiles(config(), sizes=[10] * 20))
    cfg = ExperimentConfig.from_dict(
        {"federation": {"num_clients": 4000, "clients_per_round": 5, "dropout_probability": 0.3,
                        "dropout_heterogeneous": True}}
    )  # fmt: skip
    drops = np.array([p.dropout_probability for p in make_profiles(cfg, sizes=[10] * 4000)])
    assert drops.min() >= 0 and drops.max() <= 0.6 and drops.mean() == pytest.approx(0.3, abs=0.01)


def test_transfer_seconds_is_latency_plus_bytes_over_bandwidth():
    profile = ClientProfile(0, 10, 1.0, 0.0, bandwidth_mbps=8.0, latency_ms=50.0)
    assert profile.transfer_seconds(1_000_000) == pytest.approx(0.05 + 1.0)  # 8 Mbit over 8 Mbit/s
    assert profile.transfer_seconds(0) == 0.0


def test_dropouts_have_the_requested_rate_and_are_seeded():
    cfg = config(dropout_probability=0.3)
    profiles = make_profiles(cfg, sizes=[10] * 20)
    clients = list(range(20))
    drawn = [dropouts(cfg, r, clients, profiles) for r in range(1, 501)]
    assert drawn == [dropouts(cfg, r, clients, profiles) for r in range(1, 501)]
    assert np.mean([len(d) for d in drawn]) / 20 == pytest.approx(0.3, abs=0.02)
    assert dropouts(cfg, 1, [0, 1], profiles) == drawn[0] & {0, 1}  # a client's draw ignores who else was picked


def test_allowed_steps_under_a_deadline():
    assert allowed_steps(10, 0.25, deadline=0.0, median_full_steps=10) == 10
    assert allowed_steps(10, 0.25, deadline=2.0, median_full_steps=10) == 5  # ⌊2 · 10 · 0.25⌋
    assert allowed_steps(10, 3.0, deadline=1.0, median_full_steps=10) == 10
    assert allowed_steps(10, 0.01, deadline=1.0, median_full_steps=10) == 0


def test_power_of_choice_picks_the_highest_loss_candidates():
    cfg = config(selection="power_of_choice", selection_candidates=10)
    losses = {c: float(c) for c in range(20)}
    chosen = select_clients(cfg, 3, profiles=[], tally=ParticipationTally(), losses_of=lambda clients: [losses[c] for c in clients])
    generator = np.random.default_rng([0, 3])
    candidates = generator.choice(20, size=10, replace=False)
    assert chosen == sorted(sorted(candidates, key=lambda c: -losses[c])[:5])


def test_the_tally_is_two_arrays_that_grow_and_come_back_from_a_checkpoint():
    tally = ParticipationTally()
    for client, arrived in [(3, True), (3, False), (0, True), (40, False), (3, True)]:
        tally.record(client, arrived)
    assert len(tally.selected) >= 41 and tally.selected.dtype == np.int64  # grown to the highest id seen
    expected = {0: (1, 1), 3: (3, 2), 40: (1, 0)}
    reliabilities = tally.reliabilities(60)  # beyond the arrays: never selected, (0 + 1) / (0 + 2)
    for client in range(60):
        selected, arrived = expected.get(client, (0, 0))
        assert reliabilities[client] == tally.reliability(client) == (arrived + 1) / (selected + 2)
    import torch

    again = ParticipationTally.restored(torch.from_numpy(tally.selected), torch.from_numpy(tally.arrived))
    older = ParticipationTally.restored({0: 1, 3: 3, 40: 1}, {0: 1, 3: 2, 40: 0})  # a checkpoint's dicts
    assert np.array_equal(again.reliabilities(60), reliabilities)
    assert np.array_equal(older.reliabilities(60), reliabilities)
    big = ParticipationTally()
    big.record(99_999, True)
    assert big.selected.nbytes + big.arrived.nbytes == 1_600_000  # 100,000 clients: 1.6 MB, however many took part


def test_availability_selection_prefers_clients_that_deliver():
    cfg = config(selection="availability")
    tally = ParticipationTally()
    for _ in range(30):
        for client in range(20):
            tally.record(client, arrived=client < 10)
    picks = [c for r in range(1, 201) for c in select_clients(cfg, r, profiles=[], tally=tally)]
    reliable = sum(c < 10 for c in picks) / len(picks)
    assert reliable > 0.75
    assert tally.reliability(0) == pytest.approx(31 / 32) and tally.reliability(15) == pytest.approx(1 / 32)


def test_loss_sample_is_capped_and_seeded():
    indices = np.arange(10_000)
    sample = loss_sample(indices, 0, 1, 3)
    assert len(sample) == 500 and np.array_equal(sample, loss_sample(indices, 0, 1, 3))
    assert np.array_equal(loss_sample(indices[:100], 0, 1, 3), indices[:100])
