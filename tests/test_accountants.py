"""The accountants (privacy/accounting.py, used through differential_privacy): PLD next to Opacus's RDP
and PRV, and fixed-size client sampling.

References are independent of the module where they can be: the published values of
REFERENCES.md, Opacus's accountants, Google's dp_accounting called directly, and the exact
ε of a plain Gaussian mechanism (`dp_accounting.get_epsilon_gaussian`).
"""

from __future__ import annotations

import json
import math
import warnings

import dp_accounting
import numpy as np
import pytest
import torch
from dp_accounting.pld import PLDAccountant as GooglePLDAccountant
from dp_accounting.rdp import RdpAccountant as GoogleRdpAccountant
from opacus import PrivacyEngine
from opacus.accountants import RDPAccountant, create_accountant
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import differential_privacy
import experiment_config
from privacy import accounting
from differential_privacy import (
    ACCOUNTANTS,
    PLD_VALUE_DISCRETIZATION,
    DPSGDModel,
    PLDAccountant,
    PrivacyError,
    accountant_from_history,
    calibrate_fixed_size_noise,
    calibrate_noise,
    central_epsilon,
    epsilon_from_history,
    epsilons_by_accountant,
    fixed_size_epsilon,
    make_accountant,
)
from model import create_model

DELTA = 1e-5
ADD_OR_REMOVE = dp_accounting.NeighboringRelation.ADD_OR_REMOVE_ONE
REPLACE_ONE = dp_accounting.NeighboringRelation.REPLACE_ONE
PRV_EPS_ERROR = 0.01  # Opacus's PRVAccountant reports its estimate + eps_error (0.01) as the upper bound


@pytest.fixture(autouse=True)
def quiet_rdp():
    """RDP's "optimal order is the largest alpha" warning is expected for large ε."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        yield


def google_pld(history, delta: float = DELTA, interval: float = PLD_VALUE_DISCRETIZATION) -> float:
    """ε of Poisson-subsampled Gaussians (add/remove one) from dp_accounting's PLD accountant."""
    accountant = GooglePLDAccountant(ADD_OR_REMOVE, value_discretization_interval=interval)
    for noise_multiplier, sample_rate, steps in history:
        accountant.compose(
            dp_accounting.PoissonSampledDpEvent(sample_rate, dp_accounting.GaussianDpEvent(noise_multiplier)), steps
        )
    return accountant.get_epsilon(delta)


# -- PLD, Poisson sampling ---------------------------------------------------------------------


def test_reference_anchor_for_every_accountant():
    history = [(1.5, 0.04, 2250)]  # REFERENCES.md: RDP 7.329, PRV 6.779 (Opacus 1.6, δ = 1e-5)

    epsilons = epsilons_by_accountant(history, DELTA)

    assert list(epsilons) == list(ACCOUNTANTS) == ["rdp", "prv", "pld"]
    assert epsilons["rdp"] == pytest.approx(7.329, abs=1e-3)
    assert epsilons["prv"] == pytest.approx(6.779, abs=1e-3)
    assert epsilons["pld"] == pytest.approx(google_pld(history), rel=1e-9)
    # dp_accounting's own default grid (1e-4) is tighter; the coarser grid stays pessimistic and close.
    fine = google_pld(history, interval=1e-4)
    assert fine - 1e-9 <= epsilons["pld"] <= fine + 0.005
    assert epsilons["pld"] <= epsilons["rdp"]
    assert abs(epsilons["pld"] - epsilons["prv"]) <= 0.01 * epsilons["prv"]
    print(f"\nσ=1.5 q=0.04 2250 steps: {', '.join(f'{k} {v:.4f}' for k, v in epsilons.items())}, pld@1e-4 {fine:.4f}")


@pytest.mark.parametrize(
    ("noise_multiplier", "sample_rate", "steps"),
    [
        (1.1, 256 / 60000, 14062),  # REFERENCES.md: RDP 2.597
        (1.1, 250 / 60000, 3600),  # REFERENCES.md: RDP 1.265
        (1.0, 0.01, 1000),
        (0.8, 0.1, 100),
        (2.0, 0.2, 500),
        (5.0, 0.1, 50),
    ],
)
def test_pld_is_below_rdp_and_within_one_percent_of_prv(noise_multiplier, sample_rate, steps):
    history = [(noise_multiplier, sample_rate, steps)]

    epsilons = epsilons_by_accountant(history, DELTA)

    print(
        f"\nσ={noise_multiplier} q={sample_rate:.5g} {steps} steps: "
        + ", ".join(f"{k} {v:.4f}" for k, v in epsilons.items())
    )
    assert epsilons["pld"] <= epsilons["rdp"]
    # PRV's answer carries its absolute eps_error: below ε ≈ 1 that is more than 1%.
    assert abs(epsilons["pld"] - epsilons["prv"]) <= max(0.01 * epsilons["prv"], PRV_EPS_ERROR)


def test_pld_of_a_mixed_history_is_the_composition():
    history = [(1.0, 0.05, 300), (2.0, 0.1, 200), (0.9, 0.02, 0)]

    epsilon = epsilon_from_history(history, DELTA, "pld")

    assert epsilon == pytest.approx(google_pld(history[:2]), rel=1e-9)
    assert epsilon > epsilon_from_history(history[:1], DELTA, "pld")


def test_pld_stepped_by_a_real_opacus_optimizer_equals_one_shot_composition():
    torch.manual_seed(0)
    data = TensorDataset(torch.randn(64, 5), torch.randint(0, 2, (64,)))
    model = nn.Linear(5, 2)
    engine = PrivacyEngine(accountant="pld")  # Opacus builds it from its registry, by name
    model, optimizer, loader = engine.make_private(
        module=model,
        optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
        data_loader=DataLoader(data, batch_size=16),
        noise_multiplier=1.3,
        max_grad_norm=1.0,
    )
    for _ in range(2):
        for x, y in loader:
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            optimizer.step()

    assert isinstance(engine.accountant, PLDAccountant)
    assert engine.accountant.history == [(1.3, 0.25, 8)]
    assert engine.get_epsilon(DELTA) == pytest.approx(google_pld([(1.3, 0.25, 8)]), rel=1e-9)


@pytest.mark.parametrize("mode", ["bookkeeping", "hooks"])
def test_the_engines_dp_sgd_records_its_steps_in_a_pld_accountant(mode):
    x, y = torch.randn(40, 1, 28, 28), torch.randint(0, 10, (40,))
    accountant = make_accountant("pld")
    dp_model = DPSGDModel(create_model("mlp", seed=0), max_grad_norm=1.0, grad_sample_mode=mode)

    for round_number in range(2):
        dp_model.train(
            x, y, np.arange(40), local_epochs=1, batch_size=10, learning_rate=0.1,
            noise_multiplier=1.0, accountant=accountant, seed=round_number,
        )  # fmt: skip

    assert accountant.history == [(1.0, 0.25, 8)]
    assert accountant.get_epsilon(DELTA) == pytest.approx(google_pld([(1.0, 0.25, 8)]), rel=1e-9)


def test_pld_step_calls_keep_the_history_opacus_keeps():
    steps = [(1.0, 0.1)] * 5 + [(2.0, 0.1)] * 3 + [(1.0, 0.1)] * 2
    pld, rdp = PLDAccountant(), RDPAccountant()

    for noise_multiplier, sample_rate in steps:
        pld.step(noise_multiplier=noise_multiplier, sample_rate=sample_rate)
        rdp.step(noise_multiplier=noise_multiplier, sample_rate=sample_rate)

    assert pld.history == rdp.history == [(1.0, 0.1, 5), (2.0, 0.1, 3), (1.0, 0.1, 2)]
    assert len(pld) == 3 and pld.mechanism() == "pld"
    assert pld.get_epsilon(DELTA) == pytest.approx(google_pld([(1.0, 0.1, 7), (2.0, 0.1, 3)]), rel=1e-9)


def test_pld_history_round_trips_through_json_and_state_dict():
    accountant = make_accountant("pld")
    for _ in range(40):
        accountant.step(noise_multiplier=1.2, sample_rate=0.05)
    before = accountant.get_epsilon(DELTA)

    restored = accountant_from_history(json.loads(json.dumps(accountant.history)), "pld")
    loaded = PLDAccountant()
    loaded.load_state_dict(accountant.state_dict())
    for _ in range(10):
        restored.step(noise_multiplier=1.2, sample_rate=0.05)

    assert isinstance(restored, PLDAccountant) and loaded.get_epsilon(DELTA) == before
    assert restored.history == [(1.2, 0.05, 50)]
    assert restored.get_epsilon(DELTA) == pytest.approx(google_pld([(1.2, 0.05, 50)]), rel=1e-9)
    assert restored.get_epsilon(DELTA) > before


def test_nothing_spent_is_zero_and_no_noise_is_infinite_for_pld():
    assert PLDAccountant().get_epsilon(DELTA) == 0.0
    assert epsilons_by_accountant([], DELTA) == {"rdp": 0.0, "prv": 0.0, "pld": 0.0}
    assert epsilons_by_accountant([(0.0, 0.1, 3)], DELTA) == {"rdp": math.inf, "prv": math.inf, "pld": math.inf}
    zero_noise = PLDAccountant()
    zero_noise.step(noise_multiplier=0.0, sample_rate=0.1)
    assert zero_noise.get_epsilon(DELTA) == math.inf


@pytest.mark.parametrize("target", [1.0, 3.0])
def test_calibrate_noise_with_pld_reaches_the_target_from_below(target):
    sigma = calibrate_noise(target_epsilon=target, delta=DELTA, sample_rate=0.05, steps=200, accountant="pld")

    reached = google_pld([(sigma, 0.05, 200)])
    assert target - min(0.01, 0.05 * target) <= reached <= target
    assert sigma < calibrate_noise(target_epsilon=target, delta=DELTA, sample_rate=0.05, steps=200, accountant="rdp")


def test_central_epsilon_and_opacus_registry_accept_pld():
    epsilon = central_epsilon(noise_multiplier=1.0, sample_rate=0.1, rounds=50, delta=DELTA, accountant="pld")

    assert epsilon == pytest.approx(google_pld([(1.0, 0.1, 50)]), rel=1e-9)
    assert isinstance(create_accountant("pld"), PLDAccountant)


def test_the_config_offers_exactly_the_accountants_the_module_has():
    config = experiment_config.ExperimentConfig.from_dict({"privacy": {"mode": "local", "accountant": "pld"}})

    assert config.privacy.accountant == "pld"
    assert tuple(ACCOUNTANTS) == experiment_config.ACCOUNTANTS
    assert all(cls().mechanism() == name for name, cls in ACCOUNTANTS.items())


def test_the_public_face_hands_out_the_accounting_modules_own_objects():
    for name in ("ACCOUNTANTS", "PrivacyError", "PLDAccountant", "epsilon_from_history", "fixed_size_epsilon",
                 "calibrate_fixed_size_noise", "NEIGHBOURING_RELATIONS", "accountant_from_history"):
        assert getattr(differential_privacy, name) is getattr(accounting, name), name


def test_bad_pld_inputs_raise_value_errors_naming_the_field():
    with pytest.raises(ValueError, match="delta"):
        PLDAccountant().get_epsilon(1.5)
    with pytest.raises(ValueError, match="sample_rate"):
        epsilon_from_history([(1.0, 0.0, 3)], DELTA, "pld")
    with pytest.raises(ValueError, match="accountant must be one of rdp, prv, pld"):
        make_accountant("gdp")


# -- fixed-size client sampling (k of n a round, replace one client) -------------------------------


def google_fixed_size_rdp(noise_multiplier: float, clients_per_round: int, num_clients: int, rounds: int) -> float:
    """dp_accounting's RDP of k-of-n sampling without replacement, replace-one relation. The sum of
    updates clipped to C moves by up to 2C when one client's update is replaced, so the
    Gaussian's multiplier against that sensitivity is σ/2."""
    accountant = GoogleRdpAccountant(neighboring_relation=REPLACE_ONE)
    gaussian = dp_accounting.GaussianDpEvent(noise_multiplier / 2)
    accountant.compose(dp_accounting.SampledWithoutReplacementDpEvent(num_clients, clients_per_round, gaussian), rounds)
    return accountant.get_epsilon(DELTA)


@pytest.mark.parametrize(
    ("clients_per_round", "num_clients", "rounds"), [(10, 100, 100), (20, 100, 200), (100, 1000, 500), (1, 1000, 1000)]
)
def test_fixed_size_epsilon_matches_dp_accounting_and_sits_beside_poisson(clients_per_round, num_clients, rounds):
    sigma = 1.0

    fixed = fixed_size_epsilon(
        noise_multiplier=sigma, clients_per_round=clients_per_round, num_clients=num_clients, rounds=rounds, delta=DELTA
    )

    assert fixed == pytest.approx(google_fixed_size_rdp(sigma, clients_per_round, num_clients, rounds), rel=1e-12)
    q = clients_per_round / num_clients
    poisson = central_epsilon(noise_multiplier=sigma, sample_rate=q, rounds=rounds, delta=DELTA)
    poisson_pld = central_epsilon(noise_multiplier=sigma, sample_rate=q, rounds=rounds, delta=DELTA, accountant="pld")
    # For scale only: Poisson sampling under the replace-one relation, from dp_accounting's PLD.
    replace = GooglePLDAccountant(REPLACE_ONE, value_discretization_interval=PLD_VALUE_DISCRETIZATION)
    replace.compose(dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(sigma)), rounds)
    print(
        f"\nσ={sigma} k={clients_per_round} n={num_clients} rounds={rounds}: fixed (replace one, RDP) {fixed:.3f} | "
        f"Poisson q={q:g} (add/remove, RDP) {poisson:.3f}, (add/remove, PLD) {poisson_pld:.3f}, "
        f"(replace one, PLD) {replace.get_epsilon(DELTA):.3f}"
    )
    assert fixed > poisson  # a replace-one bound, and the general bound of Wang et al.: never below Poisson's here


def test_fixed_size_with_every_client_is_a_gaussian_with_twice_the_sensitivity():
    rounds, sigma = 10, 1.0

    fixed = fixed_size_epsilon(noise_multiplier=sigma, clients_per_round=50, num_clients=50, rounds=rounds, delta=DELTA)

    # k = n: every round releases the sum; 10 rounds with sensitivity 2C are one Gaussian with
    # noise/sensitivity σ/(2√rounds). RDP is an upper bound on its exact ε, and a close one.
    exact = dp_accounting.get_epsilon_gaussian(sigma / (2 * math.sqrt(rounds)), DELTA)
    assert exact <= fixed <= 1.1 * exact


def test_fixed_size_epsilon_edges():
    common = {"clients_per_round": 10, "num_clients": 100, "delta": DELTA}
    assert fixed_size_epsilon(noise_multiplier=1.0, rounds=0, **common) == 0.0
    assert fixed_size_epsilon(noise_multiplier=0.0, rounds=5, **common) == math.inf
    one, two = (fixed_size_epsilon(noise_multiplier=1.0, rounds=r, **common) for r in (50, 100))
    assert 0.0 < one < two


@pytest.mark.parametrize("target", [2.0, 8.0])
def test_calibrate_fixed_size_noise_reaches_the_target_from_below(target):
    sigma = calibrate_fixed_size_noise(
        target_epsilon=target, delta=DELTA, clients_per_round=100, num_clients=100, rounds=20, epsilon_tolerance=0.05
    )

    reached = google_fixed_size_rdp(sigma, 100, 100, 20)
    assert target - min(0.05, 0.05 * target) <= reached <= target


def test_calibrate_fixed_size_noise_with_sampling():
    sigma = calibrate_fixed_size_noise(
        target_epsilon=5.0, delta=DELTA, clients_per_round=10, num_clients=100, rounds=100, epsilon_tolerance=0.1
    )

    assert 4.9 <= google_fixed_size_rdp(sigma, 10, 100, 100) <= 5.0


def test_calibrate_fixed_size_noise_fails_closed_when_no_sigma_reaches_the_target(monkeypatch):
    # dp_accounting's ε reaches 0 for large enough σ (then even (0, δ) holds), so make it stall.
    monkeypatch.setattr(accounting, "fixed_size_epsilon", lambda **_: 1.0)

    with pytest.raises(PrivacyError, match="no noise multiplier"):
        calibrate_fixed_size_noise(target_epsilon=0.5, delta=DELTA, clients_per_round=5, num_clients=5, rounds=10)


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"clients_per_round": 101}, "clients_per_round"),
        ({"clients_per_round": 0}, "clients_per_round"),
        ({"clients_per_round": 2.5}, "clients_per_round"),
        ({"num_clients": 0}, "num_clients"),
        ({"rounds": -1}, "rounds"),
        ({"noise_multiplier": -1.0}, "noise_multiplier"),
        ({"delta": 0.0}, "delta"),
        ({"accountant": "pld"}, "accountant for fixed-size client sampling"),
    ],
)
def test_bad_fixed_size_inputs_raise_value_errors_naming_the_field(changes, field):
    arguments = {
        "noise_multiplier": 1.0, "clients_per_round": 10, "num_clients": 100, "rounds": 10, "delta": DELTA,
    } | changes  # fmt: skip

    with pytest.raises(ValueError, match=field):
        fixed_size_epsilon(**arguments)
    if field != "noise_multiplier":  # calibration finds σ itself
        calibration = {k: v for k, v in arguments.items() if k != "noise_multiplier"}
        with pytest.raises(ValueError, match=field):
            calibrate_fixed_size_noise(target_epsilon=1.0, **calibration)
