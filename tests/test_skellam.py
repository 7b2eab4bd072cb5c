"""Distributed Skellam noise under secure aggregation (privacy/skellam.py), checked against hand-computed
values, Opacus's subsampled-Gaussian RDP called directly, scipy's Skellam distribution, exact integer sums
in numpy, and a round rebuilt by hand from the seeded streams."""

from __future__ import annotations

import math
import re
import warnings

import numpy as np
import pytest
import torch
from opacus.accountants.analysis.rdp import compute_rdp, get_privacy_spent
from scipy import stats

from engine.client_population import stream_seed
from engine.secure_aggregation import secure_aggregate
from experiment_config import ExperimentConfig
from federated_learning import FederatedRun, run_experiment
from privacy import skellam
from privacy.dp_fedavg import (
    NOISE_SHARE_TAG,
    ROUNDING_TAG,
    DistributedNoise,
    DistributedNoiseSum,
    noise_floor,
    plan_privacy,
    secagg_protocol,
)  # fmt: skip


def skellam_config(**privacy) -> ExperimentConfig:
    return ExperimentConfig.from_dict({
        "data": {"max_train_examples": 1_000, "max_test_examples": 500},
        "model": {"name": "mlp"},
        "federation": {"num_clients": 10, "clients_per_round": 5, "rounds": 2, "batch_size": 20, "learning_rate": 0.1,
                       "secure_aggregation": True, "secagg_threshold": 0.8},
        "privacy": {"mode": "central", "noise_multiplier": 0.8, "max_grad_norm": 0.5, "distributed_noise": "skellam",
                    **privacy},
        "system": {"num_workers": 1, "seed": 3},
    })  # fmt: skip


# -- (1) the Skellam RDP bound ---------------------------------------------------------------


def test_skellam_rdp_by_hand_and_towards_the_gaussian_as_mu_grows():
    # α = 2, Δ₂ = 1, Δ₁ = 1, μ = 10: 2·1/20 + min((3·1 + 6)/(4·100), 3/20) = 0.1 + 0.0225.
    assert skellam.skellam_rdp([2], l2=1.0, l1=1.0, variance=10.0)[0] == pytest.approx(0.1225, rel=1e-12)
    # α = 3, Δ₂ = 2, Δ₁ = 4, μ = 1: 3·4/2 + min((5·4 + 24)/4, 3·4/2) = 6 + min(11, 6) = 12.
    assert skellam.skellam_rdp([3], l2=2.0, l1=4.0, variance=1.0)[0] == pytest.approx(12.0, rel=1e-12)
    orders = np.array([2, 8, 32])
    excess = []
    for mu in (1e2, 1e4, 1e6):
        gaussian = orders * 3.0**2 / (2 * mu)  # α·Δ²/(2μ), the Gaussian mechanism's RDP
        ratio = skellam.skellam_rdp(orders, l2=3.0, l1=5.0, variance=mu) / gaussian
        assert np.all(ratio >= 1.0)  # the discrete mechanism never costs less here
        excess.append(float(np.max(ratio - 1.0)))
    assert excess[0] > excess[1] > excess[2] and excess[2] < 1e-5  # the surcharge is O(1/μ)


def test_rounded_norm_bound_and_l1_bound_by_hand():
    # c = 4, d = 16, β = e^-½: min(4 + 4, √(16 + 4 + 1·(4 + 2))) = √26.
    assert skellam.rounded_norm_bound(4.0, 16, math.exp(-0.5)) == pytest.approx(math.sqrt(26.0), rel=1e-12)
    assert skellam.rounded_norm_bound(4.0, 16, 0.0) == 8.0
    assert skellam.l1_bound(3.0, 100) == 9.0 and skellam.l1_bound(30.0, 4) == 60.0
    # At c = 2^20 rounding inflates Δ₂ by less than 2e-5 even for the largest vector allowed.
    assert 1.0 < skellam.rounded_norm_bound() / skellam.SCALED_NORM < 1.00002


# -- (2) the general Poisson-subsampled bound against Opacus's tight subsampled Gaussian --------


@pytest.mark.parametrize(("sample_rate", "sigma"), [(0.01, 1.0), (0.04, 1.5), (0.1, 1.0), (0.1, 2.0), (0.5, 1.5)])
def test_zhu_wang_bound_on_the_gaussian_is_above_opacus_and_close(sample_rate, sigma):
    orders = list(skellam.ORDERS)

    general = skellam.poisson_subsampled_rdp(orders, sample_rate=sample_rate, rdp=lambda a: a / (2 * sigma**2))
    tight = np.array(compute_rdp(q=sample_rate, noise_multiplier=sigma, steps=1, orders=orders))

    assert np.all(general >= tight * (1 - 1e-12))  # an upper bound on the same mechanism
    # At α = 2 the bound is exact: log(1 − q² + q²·e^{ε(2)}), Opacus's value.
    by_hand = math.log(1 - sample_rate**2 + sample_rate**2 * math.exp(1 / sigma**2))
    assert general[0] == pytest.approx(by_hand, rel=1e-12) == tight[0]
    # Measured over 100 rounds at δ = 1e-5: the general bound's ε is 1.0-1.52x the tight one on these cases.
    with warnings.catch_warnings():  # Opacus: "optimal order is the smallest alpha" at q = 0.5
        warnings.simplefilter("ignore", UserWarning)
        ratio = (get_privacy_spent(orders=orders, rdp=list(100 * general), delta=1e-5)[0]
                 / get_privacy_spent(orders=orders, rdp=list(100 * tight), delta=1e-5)[0])  # fmt: skip
    assert 1.0 - 1e-9 <= ratio <= 1.6


def test_subsampling_at_rate_one_is_the_mechanism_and_smaller_rates_cost_less():
    def rdp(alpha: np.ndarray) -> np.ndarray:
        return alpha * 0.3

    np.testing.assert_allclose(skellam.poisson_subsampled_rdp([2, 5], sample_rate=1.0, rdp=rdp), [0.6, 1.5])
    low, high = (skellam.poisson_subsampled_rdp([2, 5, 40], sample_rate=q, rdp=rdp) for q in (0.01, 0.2))
    assert np.all(low < high) and np.all(high <= rdp(np.array([2, 5, 40])))


# -- (3) the clients' shares sum to Sk(μ) --------------------------------------------------------


def test_sum_of_m_client_shares_is_skellam_of_the_whole_variance():
    clients, coordinates, mu = 40, 50_000, 120.0
    noise = DistributedNoise(clip_norm=1.0, length=coordinates + 1, update_std=math.sqrt(mu / clients), count_std=0.0,
                             secure=False, seed=11, round_number=1, mechanism="skellam")  # fmt: skip

    total = sum(noise.share(client) for client in range(clients))[:-1]

    assert np.array_equal(total, np.round(total))  # integers
    # Sk(μ): mean 0, variance μ; standard errors √(μ/N) = 0.05 and ≈ μ·√(2/N) = 0.76.
    assert abs(total.mean()) < 0.25
    assert total.var() == pytest.approx(mu, abs=4.0)
    # The frequencies against scipy's Skellam(μ/2, μ/2) pmf, each within 5 standard errors.
    reference = stats.skellam(mu / 2, mu / 2)
    for value in (0, 5, -11, 20):
        p = reference.pmf(value)
        assert abs(np.mean(total == value) - p) < 5 * math.sqrt(p * (1 - p) / coordinates), value


# -- (4) exact integer sums that decode to the clipped mean ---------------------------------------


def test_integer_sums_are_exact_and_decode_to_the_clipped_sum_within_the_rounding_bound():
    config = skellam_config()
    clip, clients, length = 0.5, 6, 1_000
    gamma = skellam.scale(clip)
    noise = DistributedNoise(clip_norm=clip, length=length + 1, update_std=0.8 * skellam.SCALED_NORM / math.sqrt(8),
                             count_std=0.0, secure=False, seed=3, round_number=2, mechanism="skellam")  # fmt: skip
    updates = {c: torch.randn(length, generator=torch.Generator().manual_seed(c)) * 0.01 * (c + 1)
               for c in range(clients)}  # fmt: skip
    vectors = {c: noise.input(c, updates[c]) for c in range(clients)}

    result = secure_aggregate(vectors, dict.fromkeys(vectors, 1.0), secagg_protocol(config))

    exact = sum(vector.astype(np.int64) for vector in vectors.values())  # numpy's int64 sum
    # (P+1,): the update's coordinates and the indicator slot (0 under Skellam), then the weight.
    assert np.array_equal(result.weighted_sum, exact.astype(np.float64)) and result.total_weight == clients
    shares = sum(noise.share(c) for c in range(clients))[:-1]
    clipped = sum(u.double().numpy() * min(1.0, clip / float(np.linalg.norm(u.double().numpy())))
                  for u in updates.values())  # fmt: skip
    decoded = (result.weighted_sum[:-1] - shares) / gamma  # the rounded clipped sum, in the update's units
    assert np.max(np.abs(decoded - clipped)) < clients / gamma  # each client rounds each coordinate by < 1
    assert not np.array_equal(decoded, clipped)  # the rounding is there (not a vacuous bound)
    for c, vector in vectors.items():
        assert np.linalg.norm(vector[:-1] - noise.share(c)[:-1]) <= skellam.rounded_norm_bound()


def test_conditional_rounding_is_unbiased_and_redraws_until_within_the_bound():
    generator = np.random.default_rng(5)
    values = np.full(100, 0.5)  # 50 ones expected; a plain rounding has > 50 ones ≈ 46% of the time
    draws = [skellam.conditional_round(values, generator=generator, bound=math.sqrt(50)) for _ in range(200)]
    assert all(np.sum(d) <= 50 and set(np.unique(d)) <= {0.0, 1.0} for d in draws)
    plain = np.random.default_rng(5).random((200, 100)) < 0.5
    assert np.mean(plain.sum(axis=1) > 50) > 0.3  # the bound binds: conditional rounding really redraws
    wide = np.stack([skellam.conditional_round(np.linspace(-3.7, 2.2, 50), generator=generator) for _ in range(4000)])
    np.testing.assert_allclose(wide.mean(axis=0), np.linspace(-3.7, 2.2, 50), atol=0.05)  # E[round(x)] = x


# -- (5) end to end: the ledger's ε is the accountant's, the weights are a round by hand ----------


def test_a_skellam_round_equals_one_rebuilt_by_hand(mnist):
    config = skellam_config()
    run = FederatedRun(config, data=mnist)
    clients = run.sample_clients(1)
    statuses = run._plan_round(1, clients)
    start = torch.zeros(300)
    updates = {c: torch.randn(300, generator=torch.Generator().manual_seed(c)) * (0.02 + 0.1 * c) for c in clients}
    total = DistributedNoiseSum(config, run.privacy, start, 1, clip_norm=0.5, profiles=run.profiles)
    for client, update in updates.items():
        total.add(client, update)

    summed = total.result(statuses)

    # By hand: clip to C, scale by γ = 2^20/C, round up with probability the fraction (the client's rounding
    # stream; the first draw is within Δ₂), add Poisson(v/2) − Poisson(v/2) from its noise stream, v = (σ·2^20)²/m.
    gamma, floor = 2.0**20 / 0.5, noise_floor(config)
    half = (0.8 * 2.0**20) ** 2 / floor / 2
    integer_sum = np.zeros(300)
    for client, update in updates.items():
        vector = update.double().numpy()
        scaled = vector * min(1.0, 0.5 / np.linalg.norm(vector)) * gamma
        uniform = np.random.default_rng(stream_seed(3, 1, client, ROUNDING_TAG)).random(300)
        integer_sum += np.floor(scaled) + (uniform < scaled - np.floor(scaled))
    for client in range(10):
        stream = np.random.default_rng(stream_seed(3, 1, client, NOISE_SHARE_TAG))
        integer_sum += stream.poisson(half, 300) - stream.poisson(half, 300)
    assert summed.skipped == "" and len(clients) > 0
    np.testing.assert_allclose(summed.weights.double().numpy(), integer_sum / gamma / (0.5 * 10), rtol=1e-6, atol=1e-7)
    assert summed.secure_aggregation["distributed_noise"] and summed.secure_aggregation["participants"] == 10


def test_run_ledger_epsilon_is_the_skellam_accountant_called_directly(mnist):
    rounds = run_experiment(skellam_config(noise_multiplier=0.05), data=mnist)

    direct = [skellam.skellam_epsilon(noise_multiplier=0.05, sample_rate=0.5, rounds=r, delta=1e-5) for r in (1, 2)]
    assert [r.epsilon for r in rounds] == direct
    assert all(r.accountant == "skellam-rdp" and r.skipped == "" for r in rounds)
    assert rounds[-1].accuracy > 0.3  # it learns through the integer ring


def test_target_epsilon_calibrates_sigma_with_the_skellam_accountant():
    plan = plan_privacy(skellam_config(target_epsilon=3.0), partition_sizes=[100] * 10)
    reached = skellam.skellam_epsilon(noise_multiplier=plan.noise_multiplier, sample_rate=0.5, rounds=2, delta=1e-5)
    assert 3.0 - 0.01 <= reached <= 3.0
    assert plan.accountant == "skellam-rdp" and plan.distributed_noise == "skellam"
    assert plan.neighbouring_relation == "add/remove one client"


# -- (6) refusals -------------------------------------------------------------------------------


@pytest.mark.parametrize(("change", "message"), [
    ({"federation": {"secure_aggregation": False}}, "needs federation.secure_aggregation = true"),
    ({"federation": {"client_sampling": "fixed"}}, "needs federation.client_sampling = 'poisson'"),
    ({"privacy": {"adaptive_clipping": True}}, "needs privacy.adaptive_clipping = false"),
    ({"privacy": {"mode": "local"}}, "needs privacy.mode = 'central'"),
    ({"privacy": {"distributed_noise": "laplace"}}, "must be one of gaussian, skellam"),
])  # fmt: skip
def test_configs_skellam_cannot_serve_are_refused_with_a_reason(change, message):
    values = skellam_config().to_dict()
    for section, keys in change.items():
        values[section].update(keys)
    with pytest.raises(ValueError, match=re.escape(message)):
        ExperimentConfig.from_dict(values)


def test_a_ring_that_could_lose_exactness_is_refused_with_the_estimate(monkeypatch):
    with pytest.raises(ValueError, match=r"100000 clients · .* must stay below 2\^53"):
        skellam.ring_bounds(noise_multiplier=1e4, noise_floor=2, num_clients=100_000)
    # 100 clients at σ = 1: Δ₂ ≈ 2^20 plus a share of std 2^20/√80 with its 2^-128 tail: 2,616,376 per client.
    assert skellam.ring_bounds(noise_multiplier=1.0, noise_floor=80, num_clients=100) == 2_616_376
    # Every config the bounds allow fits a 53-bit sum; the plan checks it all the same (here against 2^25).
    monkeypatch.setattr(skellam, "EXACT_BITS", 25)
    with pytest.raises(ValueError, match=r"10 clients · .* must stay below 2\^25"):
        plan_privacy(skellam_config(), partition_sizes=[100] * 10)


def test_a_share_beyond_the_protocols_range_is_an_error_not_a_wrap():
    config = skellam_config()
    vectors = {0: np.array([2.0**41, 0.0]), 1: np.zeros(2)}
    with pytest.raises(ValueError, match="clip_range"):
        secure_aggregate(vectors, {0: 1.0, 1: 1.0}, secagg_protocol(config))


# -- the statement and the noise's source --------------------------------------------------------


def test_the_privacy_statement_names_the_discrete_mechanism_without_the_fixed_point_caveat(db_url):
    from database import ExperimentStore
    from privacy.report import render_markdown

    store = ExperimentStore(db_url)
    experiment_id = store.create_experiment(skellam_config().to_dict())
    store.mark_running(experiment_id)
    row = {"round": 1, "accuracy": 0.5, "loss": 1.0, "seconds": 1.0, "bytes_up": 1, "bytes_down": 1, "clients": [],
           "epsilon": 0.7, "delta": 1e-5, "noise_multiplier": 0.8, "max_grad_norm": 0.5, "sample_rate": 0.5,
           "privacy_steps": 1, "accountant": "skellam-rdp"}  # fmt: skip
    store.record_round(experiment_id, row)
    store.finish(experiment_id, "completed", final=row)

    text = render_markdown(store.get_experiment(experiment_id), store.rounds_frame([experiment_id]))

    assert "integer Skellam noise added in shares by the clients" in text
    assert "Zhu & Wang" in text and "RDP, PRV and PLD do not apply" in text
    assert "Fixed-point rounding" not in text and "the protocol sums integers exactly" in text


def test_secure_skellam_shares_are_unseeded_with_the_same_scale():
    def make(secure: bool) -> DistributedNoise:
        return DistributedNoise(clip_norm=1.0, length=20_001, update_std=30.0, count_std=0.0, secure=secure, seed=1,
                                round_number=1, mechanism="skellam")  # fmt: skip

    seeded, secure = make(False), make(True)
    assert np.array_equal(seeded.share(4), seeded.share(4))  # the seeded stream repeats
    first, second = secure.share(4), secure.share(4)
    assert not np.array_equal(first, second)  # the OS-keyed generator does not
    assert float(np.std(first[:-1])) == pytest.approx(30.0, rel=0.03)
