"""The Skellam mechanism: DP-FedAvg's distributed noise as integers in secure aggregation's ring
(Agarwal, Kairouz & Liu 2021, "The Skellam Mechanism for Differentially Private Federated
Learning", NeurIPS), chosen by `privacy.distributed_noise = "skellam"`.

    gamma = scale(clip_norm)                                  # γ = c / C: the clipped update in integer units
    rounded = conditional_round(clipped * gamma, generator=g)   # integers, ‖·‖₂ ≤ Δ₂ (resampled until so)
    vector = rounded + skellam_share(length, variance=μ / m, generator=g2)   # what one client masks
    epsilon = skellam_epsilon(noise_multiplier=σ, sample_rate=q, rounds=r, delta=δ)

Client side (`privacy/dp_fedavg.py: DistributedNoise`, the same code in-process and on Flower
nodes): clip to C, scale by γ so the norm is c = 2^20, round each coordinate stochastically to a
neighbouring integer and redraw the whole vector until its L2 norm is at most Δ₂ (the papers'
conditional rounding; a draw is refused with probability ≤ β = e^-½), add Sk(μ/m) per coordinate
(a difference of two Poisson(μ/(2m))). The protocol sums integers exactly (`ring_bounds`); the
server decodes Σ/γ. The sum of the s ≥ m shares is Sk(s·μ/m): at least the Sk(μ) accounted.
No randomised Hadamard rotation: the papers rotate to bound every coordinate for modular clipping
in a small ring (16-20 bits); here the ring is 64 bits and every input is bounded up front, so
the sum never wraps and only the L2 (and L1) norm of a rounded update enters the privacy bound.

μ = (σ·c)²: in decoded units the noise has the Gaussian path's variance σ²C², so σ means the same.
Δ₂ and Δ₁ are fixed for every vector of at most MAX_DIMENSION coordinates (below), so ε does not
depend on the model; a longer vector is refused.

Accounting, per round (integer α ≥ 2), with μ the sum's variance (Agarwal et al. 2021, Thm 3.5):
    ε_Sk(α) = α·Δ₂²/(2μ) + min(((2α−1)·Δ₂² + 6·Δ₁)/(4μ²), 3·Δ₁/(2μ)),
    Δ₂ = min(c + √d, √(c² + d/4 + √(2·ln(1/β))·(c + √d/2)))   (Kairouz, Liu & Steinke 2021, cond. rounding)
    Δ₁ = min(√d·Δ₂, Δ₂²)                                      (an integer vector: |v_i| ≤ v_i²),
then Poisson client sampling at q by Zhu & Wang's (2019, "Poisson subsampled Rényi differential
privacy", Thm. 6) general upper bound for any mechanism (add/remove one client):
    ε'(α) ≤ 1/(α−1)·log[(1−q)^(α−1)·(αq−q+1) + C(α,2)·q²·(1−q)^(α−2)·e^ε(2)
                          + 3·Σ_{ℓ=3..α} C(α,ℓ)·q^ℓ·(1−q)^(α−ℓ)·e^((ℓ−1)·ε(ℓ))],
capped by ε(α) itself (subsampling never hurts), composed over rounds by adding RDP, and
converted to (ε, δ) by Opacus's `get_privacy_spent` (Balle et al. 2020), as `RDPAccountant` does.
Fixed-size client sampling is not covered (that bound is for Poisson): the config refuses it.
"""

from __future__ import annotations

import math
import secrets
import warnings
from collections.abc import Callable, Sequence

import numpy as np
from opacus.accountants.analysis.rdp import get_privacy_spent
from scipy.special import gammaln, logsumexp

from privacy.accounting import PrivacyError, check_delta, check_sample_rate

SKELLAM_ACCOUNTANT = "skellam-rdp"  # what the round ledger records as the accountant
SCALED_NORM = 2.0**20  # c = γ·C: a clipped update's L2 norm in integer units (rounding adds ~√d/2 ≪ c)
MAX_DIMENSION = 2**27  # Δ₂, Δ₁ hold for vectors up to 134M coordinates; longer ones are refused
ROUNDING_BETA = math.exp(-0.5)  # conditional rounding: each draw is refused with probability ≤ β
MAX_ROUNDING_TRIES = 1000  # (1/β)^... : 1000 refusals in a row would mean a bug, not bad luck
# The protocol's per-client bound on |value| (SecAggConfig.clip_range with fractional_bits = 0): with a
# 64-bit ring, n·(2^40 + ½) < 2^63 holds for n < 2^23 clients, so the integer sum never wraps.
SKELLAM_RANGE = 2.0**40
EXACT_BITS = 53  # the decoded sum is a float64: exact while |Σ| < 2^53
TAIL_BITS = 128  # a share beyond its bound (an error, never wrapped) has probability ≤ 2^-128 per coordinate
ORDERS = tuple(range(2, 65)) + (80, 96, 128, 192, 256)  # integer α (Zhu & Wang's bound needs them)
_MAX_NOISE_MULTIPLIER = 1e6


def scale(clip_norm: float) -> float:
    """γ = c / C: multiplies a clipped update (norm ≤ C) to norm ≤ c = SCALED_NORM."""
    if not clip_norm > 0:
        raise ValueError(f"clip_norm must be > 0, got {clip_norm}")
    return SCALED_NORM / clip_norm


def rounded_norm_bound(
    scaled_norm: float = SCALED_NORM, dimension: int = MAX_DIMENSION, beta: float = ROUNDING_BETA
) -> float:
    """Δ₂: the L2 bound conditional rounding enforces on a vector of norm ≤ `scaled_norm` with
    `dimension` coordinates (module docstring); min of the deterministic c + √d and the
    high-probability bound that a draw meets with probability ≥ 1 − β."""
    deterministic = scaled_norm + math.sqrt(dimension)
    if beta == 0:
        return deterministic
    spread = math.sqrt(2 * math.log(1 / beta)) * (scaled_norm + math.sqrt(dimension) / 2)
    squared = scaled_norm**2 + dimension / 4 + spread
    return min(deterministic, math.sqrt(squared))


def l1_bound(l2: float, dimension: int = MAX_DIMENSION) -> float:
    """Δ₁ of an integer vector with ‖v‖₂ ≤ l2: ‖v‖₁ ≤ √d·‖v‖₂ and, as |v_i| ≤ v_i², ‖v‖₁ ≤ ‖v‖₂²."""
    return min(math.sqrt(dimension) * l2, l2**2)


def skellam_rdp(orders: Sequence[int] | np.ndarray, *, l2: float, l1: float, variance: float) -> np.ndarray:
    """RDP ε(α) of adding Sk(μ) (variance μ) to an integer query of sensitivities Δ₂ = l2, Δ₁ = l1,
    at integer orders α ≥ 2 (Agarwal et al. 2021, Thm 3.5; module docstring). (len(orders),)."""
    alpha = np.asarray(orders, dtype=np.float64)
    if np.any(alpha < 2) or np.any(alpha != np.round(alpha)):
        raise ValueError("the Skellam RDP bound is used at integer orders α >= 2")
    if not variance > 0:
        return np.full(alpha.shape, math.inf)
    gaussian = alpha * l2**2 / (2 * variance)
    return gaussian + np.minimum(((2 * alpha - 1) * l2**2 + 6 * l1) / (4 * variance**2), 3 * l1 / (2 * variance))


def poisson_subsampled_rdp(
    orders: Sequence[int], *, sample_rate: float, rdp: Callable[[np.ndarray], np.ndarray]
) -> np.ndarray:
    """RDP of any mechanism (`rdp`: integer orders → its ε(α)) run on a Poisson sample at rate q,
    add/remove one: Zhu & Wang's (2019, Thm. 6) general upper bound (module docstring), capped by
    ε(α). (len(orders),) at the integer `orders`."""
    q = check_sample_rate(sample_rate)
    orders = [int(a) for a in orders]
    base = rdp(np.arange(2, max(orders) + 1))  # ε(ℓ) for ℓ = 2 … max α
    if q == 1:
        return np.array([base[a - 2] for a in orders])
    log_q, log_1q = math.log(q), math.log1p(-q)
    bounds = []
    for alpha in orders:
        ell = np.arange(3, alpha + 1)
        log_binomial = gammaln(alpha + 1) - gammaln(ell + 1) - gammaln(alpha - ell + 1)
        terms = np.concatenate((
            [(alpha - 1) * log_1q + math.log(alpha * q - q + 1),
             math.log(alpha * (alpha - 1) / 2) + 2 * log_q + (alpha - 2) * log_1q + base[0]],
            math.log(3) + log_binomial + ell * log_q + (alpha - ell) * log_1q + (ell - 1) * base[ell - 2],
        ))  # fmt: skip
        bounds.append(min(float(logsumexp(terms)) / (alpha - 1), float(base[alpha - 2])))
    return np.array(bounds)


def round_rdp(noise_multiplier: float, sample_rate: float, orders: Sequence[int] = ORDERS) -> np.ndarray:
    """One round's RDP: the Skellam mechanism of variance μ = (σ·c)² on the rounded updates
    (Δ₂ = `rounded_norm_bound()`, Δ₁ = `l1_bound(Δ₂)`), Poisson-subsampled at q."""
    l2 = rounded_norm_bound()
    variance = (noise_multiplier * SCALED_NORM) ** 2

    def mechanism(alpha: np.ndarray) -> np.ndarray:
        return skellam_rdp(alpha, l2=l2, l1=l1_bound(l2), variance=variance)

    return poisson_subsampled_rdp(orders, sample_rate=sample_rate, rdp=mechanism)


def skellam_epsilon(*, noise_multiplier: float, sample_rate: float, rounds: int, delta: float) -> float:
    """ε after `rounds` rounds of distributed Skellam noise at σ (μ = (σ·c)²) with Poisson client
    sampling at q = `sample_rate`, add/remove one client (module docstring). 0 rounds: 0.0."""
    delta = check_delta(delta)
    if rounds < 0:
        raise ValueError(f"rounds must be >= 0, got {rounds}")
    if rounds == 0:
        return 0.0
    if not noise_multiplier > 0:
        return math.inf
    rdp = rounds * round_rdp(noise_multiplier, sample_rate)
    with warnings.catch_warnings():  # Opacus's "optimal order is the smallest/largest alpha"
        warnings.simplefilter("ignore", UserWarning)
        epsilon, _order = get_privacy_spent(orders=list(ORDERS), rdp=list(rdp), delta=delta)
    return float(epsilon)


def calibrate_skellam_noise(
    *, target_epsilon: float, delta: float, sample_rate: float, rounds: int, epsilon_tolerance: float = 0.01
) -> float:
    """σ whose `skellam_epsilon` after `rounds` is <= target_epsilon and within min(`epsilon_tolerance`,
    5% of the target) below it, by bisection (ε falls as σ grows), as `calibrate_noise` finds the
    Gaussian's. Raises PrivacyError when no σ up to 1e6 reaches the target."""
    if not target_epsilon > 0:
        raise ValueError(f"target_epsilon must be > 0, got {target_epsilon}")

    def epsilon_at(sigma: float) -> float:
        return skellam_epsilon(noise_multiplier=sigma, sample_rate=sample_rate, rounds=rounds, delta=delta)

    tolerance = min(epsilon_tolerance, 0.05 * target_epsilon)
    low, high = 0.0, 1.0
    while epsilon_at(high) > target_epsilon:
        low, high = high, 2 * high
        if high > _MAX_NOISE_MULTIPLIER:
            raise PrivacyError(f"no noise multiplier reaches ε = {target_epsilon} at δ = {delta} over {rounds} "
                               f"rounds at sample rate {sample_rate} with Skellam noise")  # fmt: skip
    while target_epsilon - epsilon_at(high) > tolerance and high - low > 1e-9 * high:
        middle = (low + high) / 2
        low, high = (low, middle) if epsilon_at(middle) <= target_epsilon else (middle, high)
    return high


# -- the client's arithmetic and the ring ----------------------------------------------------


def share_bound(variance: float) -> float:
    """t with P(|Sk(variance)| ≥ t) ≤ 2^-TAIL_BITS: Sk(v) is compound Poisson with ±1 jumps, so
    Bernstein gives P(|X| ≥ t) ≤ 2·exp(−t²/(2(v + t/3))); t solves t² = 2L(v + t/3), L = ln 2^(bits+1)."""
    tail = (TAIL_BITS + 1) * math.log(2)
    return tail / 3 + math.sqrt(tail**2 / 9 + 2 * tail * variance)


def ring_bounds(*, noise_multiplier: float, noise_floor: int, num_clients: int) -> float:
    """The bound on one client's |value| per coordinate (its rounded update, ≤ Δ₂, plus its share
    Sk(μ/m) beyond which a draw is an error), after checking that n such inputs sum exactly:
    each ≤ SKELLAM_RANGE (the protocol's range: n·2^40 < 2^63, no wrap) and n·bound < 2^53 (the
    decoded float64 is the integer). Raises ValueError with the estimate otherwise."""
    share_variance = (noise_multiplier * SCALED_NORM) ** 2 / noise_floor
    bound = math.ceil(rounded_norm_bound()) + math.ceil(share_bound(share_variance))
    worst, ring = num_clients * bound, num_clients * (SKELLAM_RANGE + 0.5)
    if bound > SKELLAM_RANGE or worst >= 2.0**EXACT_BITS or ring >= 2.0**63:
        raise ValueError(
            f"privacy.distributed_noise = 'skellam': {num_clients} clients · (|rounded update| ≤ "
            f"{math.ceil(rounded_norm_bound())} + |noise share| ≤ {math.ceil(share_bound(share_variance))}) = "
            f"{worst:.4g} per coordinate, which must stay below 2^{EXACT_BITS} (and each input below 2^40 in the "
            "64-bit ring) for the integer sum to be exact: lower privacy.noise_multiplier or federation.num_clients"
        )  # fmt: skip
    return float(bound)


def conditional_round(values: np.ndarray, *, generator: np.random.Generator, bound: float | None = None) -> np.ndarray:
    """(d,) reals of L2 norm ≤ c → (d,) integers (as float64) with ‖·‖₂ ≤ `bound` (default Δ₂, what
    the accountant assumes): each coordinate rounds up with probability its fractional part, and the
    whole vector is redrawn while its norm exceeds the bound (Kairouz, Liu & Steinke 2021's
    conditional rounding)."""
    if values.ndim != 1 or values.size > MAX_DIMENSION:
        raise ValueError(f"the Skellam bound holds for vectors of <= {MAX_DIMENSION} values, got {values.shape}")
    bound = rounded_norm_bound() if bound is None else bound
    floor = np.floor(values)
    fraction = values - floor
    for _ in range(MAX_ROUNDING_TRIES):
        rounded = floor + (generator.random(values.shape) < fraction)
        if float(np.linalg.norm(rounded)) <= bound:
            return rounded
    raise PrivacyError(f"conditional rounding found no vector of norm <= {bound:.6g} in {MAX_ROUNDING_TRIES} draws "
                       "(the input was not clipped to C?)")  # fmt: skip


def skellam_share(length: int, *, variance: float, generator: np.random.Generator) -> np.ndarray:
    """(length,) Sk(variance) integers as float64: Poisson(v/2) − Poisson(v/2) per coordinate."""
    half = variance / 2
    return (generator.poisson(half, length) - generator.poisson(half, length)).astype(np.float64)


def secure_generator() -> np.random.Generator:
    """A generator for `privacy.secure_noise`: numpy's PCG64DXSM keyed with 128 bits from the OS's
    CSPRNG (`secrets`). Nothing in the config reproduces it; unlike `secure_normal`'s draws straight
    from os.urandom, its stream is a PRNG's (not cryptographically unpredictable from its own
    outputs, which no party sees unmasked). Poisson draws need a generator, hence this compromise."""
    return np.random.Generator(np.random.PCG64DXSM(secrets.randbits(128)))
