"""Fixed-size client sampling under central DP (`federation.client_sampling = "fixed"`): the engine
takes exactly k of n clients every round, ε is accounted for that scheme under replace-one, the
relation is on the record, and configs that cannot be accounted are refused."""

from __future__ import annotations

import math
import warnings

import dp_accounting
import numpy as np
import pytest

import differential_privacy as dp
from database import ExperimentStore
from engine.client_population import ParticipationTally, make_profiles, select_clients
from experiment_config import ExperimentConfig
from federated_learning import FederatedRun, run_experiment
from privacy.dp_fedavg import central_epsilon_after, plan_privacy

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SMALL = [
    "model.name=mlp", "data.max_train_examples=400", "data.max_test_examples=100", "privacy.audit_examples=0",
    "system.num_workers=1", "federation.num_clients=8", "federation.clients_per_round=3", "federation.rounds=4",
]  # fmt: skip
CENTRAL = [*SMALL, "privacy.mode=central", "privacy.noise_multiplier=1.0"]


def config(*overrides: str) -> ExperimentConfig:
    return ExperimentConfig().with_overrides(list(overrides))


def sampled(cfg: ExperimentConfig, rounds: int) -> list[list[int]]:
    profiles = make_profiles(cfg, [50] * cfg.federation.num_clients)
    return [select_clients(cfg, r, profiles=profiles, tally=ParticipationTally()) for r in range(1, rounds + 1)]


def test_the_engine_takes_exactly_k_clients_every_round_and_records_the_relation(db_url, mnist):
    cfg = config(*CENTRAL, "federation.client_sampling=fixed")
    store = ExperimentStore(db_url)
    experiment_id = store.create_experiment(cfg.to_dict())

    results = run_experiment(cfg, data=mnist, callback=lambda r: store.record_round(experiment_id, r.to_dict()))

    clients = store.client_rounds_frame(experiment_id)
    per_round = clients.groupby("round")["client_id"].apply(list)
    assert list(per_round.index) == [1, 2, 3, 4]
    assert all(len(ids) == 3 and len(set(ids)) == 3 for ids in per_round)
    assert len({tuple(sorted(ids)) for ids in per_round}) > 1  # a new sample each round
    rounds = store.rounds_frame([experiment_id])
    assert set(rounds["neighbouring_relation"]) == {"replace one client"}
    for result in results:  # ε: exactly k of n under replace one, from dp_accounting directly
        rdp = dp_accounting.rdp.RdpAccountant(neighboring_relation=dp_accounting.NeighboringRelation.REPLACE_ONE)
        rdp.compose(dp_accounting.SampledWithoutReplacementDpEvent(8, 3, dp_accounting.GaussianDpEvent(0.5)), result.round)
        assert result.epsilon == pytest.approx(rdp.get_epsilon(1e-5), rel=1e-9)


def test_poisson_stays_the_default_and_its_count_varies():
    poisson = sampled(config(*CENTRAL), 30)
    assert config().federation.client_sampling == "poisson"
    # The reference: each client independently with q = 3/8 from the round's seeded stream.
    expected = [list(np.flatnonzero(np.random.default_rng([0, r]).random(8) < 3 / 8)) for r in range(1, 31)]
    assert poisson == expected
    assert len({len(ids) for ids in poisson}) > 1


def test_fixed_outside_central_dp_is_what_those_modes_do_anyway():
    for mode in (["privacy.mode=none"], ["privacy.mode=local", "privacy.noise_multiplier=1.0"]):
        fixed = sampled(config(*SMALL, *mode, "federation.client_sampling=fixed"), 10)
        assert fixed == sampled(config(*SMALL, *mode), 10)  # poisson applies to central DP only
        assert all(len(ids) == 3 for ids in fixed)


def test_fixed_central_sampling_is_seeded_and_uniform():
    cfg = config(*CENTRAL, "federation.client_sampling=fixed", "federation.num_clients=5", "federation.clients_per_round=2")
    rounds = sampled(cfg, 2000)
    assert rounds[:20] == sampled(cfg, 20)  # same seed, same samples
    counts = np.bincount(np.concatenate(rounds), minlength=5)
    # Each client is in a round with probability k/n = 0.4: 800 ± 3 sd (sd = √(2000·0.4·0.6) ≈ 22).
    assert np.all(np.abs(counts - 800) < 66)


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [
        (["federation.client_sampling=fixed", "privacy.accountant=prv"], "federation.client_sampling = 'fixed'"),
        (["federation.client_sampling=fixed", "privacy.accountant=pld"], "privacy.accountant must be rdp"),
    ],
)
def test_fixed_with_an_accountant_without_a_bound_is_refused(overrides: list[str], needle: str):
    with pytest.raises(ValueError, match=needle):
        config(*CENTRAL, *overrides)


def test_target_epsilon_calibrates_for_the_scheme():
    fixed = config(*CENTRAL, "federation.client_sampling=fixed", "privacy.target_epsilon=5.0")
    poisson = config(*CENTRAL, "privacy.target_epsilon=5.0")
    sizes = [50] * 8

    fixed_plan, poisson_plan = plan_privacy(fixed, partition_sizes=sizes), plan_privacy(poisson, partition_sizes=sizes)

    assert fixed_plan.noise_multiplier == pytest.approx(
        dp.calibrate_fixed_size_noise(target_epsilon=5.0, delta=1e-5, clients_per_round=3, num_clients=8, rounds=4)
    )
    assert 4.75 <= central_epsilon_after(fixed_plan, rounds=4) <= 5.0
    assert 4.75 <= central_epsilon_after(poisson_plan, rounds=4) <= 5.0
    assert fixed_plan.neighbouring_relation == "replace one client"
    assert poisson_plan.neighbouring_relation == "add/remove one client"
    assert fixed_plan.noise_multiplier > poisson_plan.noise_multiplier  # replace one costs more noise here


def test_the_budget_stops_a_fixed_run_by_its_own_accounting(mnist):
    # σ = 1, 3 of 8: the fixed-size ε (9.7, 14.6, ...) passes 12 at round 2; Poisson's stays below 7 all run.
    run = FederatedRun(config(*CENTRAL, "federation.client_sampling=fixed", "privacy.max_epsilon=12"), data=mnist)
    poisson = FederatedRun(config(*CENTRAL, "privacy.max_epsilon=12"), data=mnist)
    assert central_epsilon_after(run.privacy, rounds=1) <= 12 < central_epsilon_after(run.privacy, rounds=2)
    assert poisson.budget_exhausted(4, []) is None

    assert run.budget_exhausted(1, []) is None
    assert "round 2 would reach" in run.budget_exhausted(2, [])


def test_fixed_size_epsilon_at_k_equal_n_lies_between_the_exact_and_the_classic_gaussian_bounds():
    """At k = n nothing is sampled: T rounds of a Gaussian with sensitivity 2C and noise σC. Its exact
    ε (dp_accounting's PLD, tight) is below RDP's; RDP's own conversion is no worse than the classic
    min over α of T·α·(2/σ)²/2 + log(1/δ)/(α − 1) (Mironov 2017), computed here by hand."""
    sigma, rounds, delta = 2.0, 10, 1e-5
    epsilon = dp.fixed_size_epsilon(noise_multiplier=sigma, clients_per_round=5, num_clients=5, rounds=rounds,
                                    delta=delta)  # fmt: skip
    # The exact ε of a Gaussian whose mean moves by 2C under noise σC: a unit shift at multiplier σ/2
    # (dp_accounting's PLD under REPLACE_ONE would double the shift again: it reads sensitivity per element).
    exact = dp_accounting.pld.PLDAccountant().compose(dp_accounting.GaussianDpEvent(sigma / 2), rounds).get_epsilon(delta)
    orders = np.linspace(1.01, 200, 200_000)
    classic = float(np.min(rounds * orders * 2 / sigma**2 + math.log(1 / delta) / (orders - 1)))

    assert exact <= epsilon <= classic


def test_fixed_and_poisson_side_by_side_from_the_bench():
    from bench.sampling import compare

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        row = compare(10, 100, 100, noise_multiplier=1.0, delta=1e-5)

    reference = dp_accounting.rdp.RdpAccountant()
    reference.compose(dp_accounting.PoissonSampledDpEvent(0.1, dp_accounting.GaussianDpEvent(1.0)), 100)
    assert row["poisson"]["rdp"] == pytest.approx(reference.get_epsilon(1e-5), rel=2e-2)
    fixed = dp_accounting.rdp.RdpAccountant(neighboring_relation=dp_accounting.NeighboringRelation.REPLACE_ONE)
    fixed.compose(dp_accounting.SampledWithoutReplacementDpEvent(100, 10, dp_accounting.GaussianDpEvent(0.5)), 100)
    assert row["fixed"] == pytest.approx(fixed.get_epsilon(1e-5), rel=1e-9)
    assert row["poisson"]["pld"] < row["poisson"]["rdp"]
    assert row["fixed"] > row["group"] > row["poisson"]["pld"]  # replace one at σ/2 costs more
