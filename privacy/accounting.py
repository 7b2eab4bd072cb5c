"""Privacy accounting: ε from what was done, by a published accountant called on the run's history.

What DP-SGD or DP-FedAvg did is a history of `(noise_multiplier, sample_rate, steps)`, as
Opacus keeps it. The accountants turn a history into ε: Opacus's `RDPAccountant` and
`PRVAccountant`, and `PLDAccountant`, which keeps Opacus's interface and composes privacy
loss distributions with Google's `dp_accounting`. Fixed-size client sampling (exactly k of n
clients a round) is accounted by dp_accounting's RDP under the replace-one relation.
`PrivacyError` (asked-for privacy that cannot be provided) lives here so that accounting and
the mechanisms raise the same class. `differential_privacy` is the public face: import these
names from there. This module never imports it (no cycle).

    epsilon_from_history([(1.5, 0.04, 2250)], 1e-5, "rdp")   # 7.329
    epsilons_by_accountant([(1.5, 0.04, 2250)], 1e-5)        # {"rdp": 7.329, "prv": 6.779, "pld": 6.769}
    fixed_size_epsilon(noise_multiplier=1.0, clients_per_round=10, num_clients=100,
                       rounds=100, delta=1e-5)
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Sequence

import importlib

import numpy as np
from opacus.accountants import PRVAccountant, RDPAccountant
from opacus.accountants.accountant import IAccountant
from opacus.accountants.registry import register_accountant
from opacus.accountants.utils import get_noise_multiplier

import experiment_config
from experiment_config import FIXED_SIZE_ACCOUNTANTS, check_integer, check_number, check_one_of

# One accountant history entry: (noise_multiplier σ, sample_rate q, steps), as Opacus keeps it.
HistoryEntry = tuple[float, float, int]

# The neighbouring relation behind central (user-level) ε, by client-sampling scheme, for a
# report to state next to the number. Poisson: the federations differ by one client being
# there or not. Fixed size: the number of clients n is public; they differ in one client's data.
NEIGHBOURING_RELATIONS: dict[str, str] = {"poisson": "add/remove one client", "fixed": "replace one client"}
# Local DP-SGD (Opacus, Poisson batches on each client): datasets differ by one example being there or not.
LOCAL_NEIGHBOURING_RELATION = "add/remove one example"
# FIXED_SIZE_ACCOUNTANTS (experiment_config, its home): dp_accounting's RDP only. dp_accounting 0.6.0's
# PLD accountant rejects SampledWithoutReplacementDpEvent and Opacus's accountants assume Poisson
# sampling. The pld-accounting package (2.0, Feldman & Shenfeld 2026) was checked and is not used: its
# random allocation is another scheme (each client in exactly k of t rounds, not k of n clients each
# round), its `subsample_pld` is Poisson subsampling under add/remove (what PLDAccountant already
# does with dp_accounting), and carrying either over to k-of-n under replace-one would take an
# amplification argument of our own, which the accountants must not rest on.

# Value discretization of the PLD accountant, in nats of privacy loss. dp_accounting rounds
# pessimistically (connect-the-dots), so any interval gives an upper bound; coarser is looser.
# 1e-3 keeps PLD <= RDP and within 1% of PRV on the tested cases (σ=1.5, q=0.04, 2,250 steps,
# δ=1e-5: PLD 6.769, RDP 7.329, PRV 6.779) at ~0.03 s per history entry, cheap enough for a
# bisection over σ. dp_accounting's default 1e-4 gains < 0.01 in ε for 10x the time; 1e-2 is
# looser than RDP on long runs (σ=1.1, q=256/60000, 14,062 steps: 3.14 vs RDP 2.60).
PLD_VALUE_DISCRETIZATION = 1e-3
_MAX_NOISE_MULTIPLIER = 1e6  # as Opacus's get_noise_multiplier: beyond this, give up


class PrivacyError(RuntimeError):
    """Differential privacy was asked for and cannot be provided; the run must stop."""


# -- the accounted quantities, checked with experiment_config's checks ---------------------------



def _dp_accounting():  # noqa: ANN202 (the module)
    """Google's `dp_accounting`, imported when first needed: it takes ~1 s (scipy), and every
    trainer process and ClientApp imports this module whether or not it uses PLD."""
    return importlib.import_module("dp_accounting")

def check_noise_multiplier(value: float) -> float:
    """σ >= 0 (0: no noise, ε = inf)."""
    return check_number("noise_multiplier", value, low=0.0)


def check_sample_rate(value: float) -> float:
    """q in (0, 1]."""
    return check_number("sample_rate", value, low=0.0, high=1.0, low_open=True)


def check_delta(value: float) -> float:
    """δ in (0, 1)."""
    return check_number("delta", value, low=0.0, high=1.0, low_open=True, high_open=True)


def check_count(name: str, value: int, *, low: int, high: int | None = None) -> int:
    """An integer in [low, high] (no upper bound if None); numpy integers (array lengths) count too."""
    return check_integer(name, int(value) if isinstance(value, np.integer) else value, low=low, high=high)


def _positive(name: str, value: float) -> float:
    return check_number(name, value, low=0.0, low_open=True)


def _check_accountant(name: str) -> str:
    return check_one_of("accountant", name, experiment_config.ACCOUNTANTS)


# -- accountants ------------------------------------------------------------------------------


class PLDAccountant(IAccountant):
    """Opacus's accountant interface with ε from Google's dp_accounting privacy loss distributions.

    It records steps as Opacus's accountants do, a history of `(noise_multiplier,
    sample_rate, steps)`, so Opacus's optimizer step hook, `accountant_from_history` and
    `state_dict` work unchanged. `get_epsilon` composes every entry as `steps`
    Poisson-subsampled Gaussian mechanisms under the add/remove-one relation, the mechanism
    and relation Opacus's RDP and PRV accountants assume, and returns dp_accounting's
    pessimistic (upper-bound) ε at value discretization `PLD_VALUE_DISCRETIZATION`.
    """

    def __init__(self) -> None:
        super().__init__()

    def step(self, *, noise_multiplier: float, sample_rate: float) -> None:
        """Record one optimizer step (merged into the last entry when σ and q repeat)."""
        if self.history and tuple(self.history[-1][:2]) == (noise_multiplier, sample_rate):
            last_noise_multiplier, last_sample_rate, steps = self.history[-1]
            self.history[-1] = (last_noise_multiplier, last_sample_rate, steps + 1)
        else:
            self.history.append((noise_multiplier, sample_rate, 1))

    def get_epsilon(self, delta: float) -> float:
        """ε spent so far at `delta`: 0.0 before any step, inf after a step with σ = 0."""
        return _pld_epsilon(history=self.history, delta=delta)

    def __len__(self) -> int:
        return len(self.history)

    @classmethod
    def mechanism(cls) -> str:
        return "pld"


# Each accountant name experiment_config.ACCOUNTANTS offers (their one home), in its order, to its
# class: a name without a class fails here, at import.
_CLASSES: dict[str, type[IAccountant]] = {cls.mechanism(): cls for cls in (RDPAccountant, PRVAccountant, PLDAccountant)}
ACCOUNTANTS: dict[str, type[IAccountant]] = {name: _CLASSES[name] for name in experiment_config.ACCOUNTANTS}
# Opacus looks accountants up by name in its own registry (`get_noise_multiplier`, which
# `calibrate_noise` uses, and `PrivacyEngine(accountant=...)`): register "pld" there too.
# A constant name -> class entry; force, so that re-importing this module is harmless.
register_accountant(PLDAccountant.mechanism(), PLDAccountant, force=True)


def _pld_epsilon(*, history: Iterable[Sequence[float]], delta: float) -> float:
    """ε of `history` as Poisson-subsampled Gaussians (add/remove one) from dp_accounting's PLD."""
    entries = [entry for entry in normalize_history(history) if entry[2] > 0]
    delta = check_delta(delta)
    if not entries:
        return 0.0
    dp_accounting = _dp_accounting()
    accountant = dp_accounting.pld.PLDAccountant(
        dp_accounting.NeighboringRelation.ADD_OR_REMOVE_ONE, value_discretization_interval=PLD_VALUE_DISCRETIZATION
    )
    for noise_multiplier, sample_rate, steps in entries:
        gaussian = dp_accounting.GaussianDpEvent(noise_multiplier)  # σ = 0: dp_accounting answers inf
        accountant.compose(dp_accounting.PoissonSampledDpEvent(sample_rate, gaussian), steps)
    return float(accountant.get_epsilon(delta))


def make_accountant(name: str) -> IAccountant:
    """A fresh accountant with Opacus's interface: "rdp" (Opacus `RDPAccountant`, default),
    "prv" (Opacus `PRVAccountant`) or "pld" (`PLDAccountant`, dp_accounting's PLD)."""
    return ACCOUNTANTS[_check_accountant(name)]()


def normalize_history(history: Iterable[Sequence[float]]) -> list[HistoryEntry]:
    """Validated `[(noise_multiplier, sample_rate, steps)]`, e.g. back from JSON (lists)."""
    entries = []
    for entry in history:
        if len(entry) != 3:
            raise ValueError(f"history entries are (noise_multiplier, sample_rate, steps), got {entry!r}")
        noise_multiplier, sample_rate, steps = entry
        entries.append(
            (
                check_noise_multiplier(noise_multiplier),
                check_sample_rate(sample_rate),
                check_count("steps", steps, low=0),
            )
        )
    return entries


def accountant_from_history(history: Iterable[Sequence[float]], accountant: str = "rdp") -> IAccountant:
    """An Opacus accountant holding `history`; stepping it continues where the history ends."""
    restored = make_accountant(accountant)
    restored.history = normalize_history(history)
    return restored


def epsilon_from_history(history: Iterable[Sequence[float]], delta: float, accountant: str = "rdp") -> float:
    """ε spent by `history` at `delta`, from the named accountant (a key of ACCOUNTANTS).

    An empty history has spent nothing (0.0). A step with noise_multiplier 0 releases an
    un-noised gradient, so ε is infinite; RDP says so itself, PRV cannot represent it.
    """
    delta, accountant = check_delta(delta), _check_accountant(accountant)
    entries = [entry for entry in normalize_history(history) if entry[2] > 0]
    if not entries:
        return 0.0
    if any(noise_multiplier == 0.0 for noise_multiplier, _, _ in entries):
        return math.inf
    return float(accountant_from_history(entries, accountant).get_epsilon(delta=delta))


def epsilons_by_accountant(history: Iterable[Sequence[float]], delta: float) -> dict[str, float]:
    """ε spent by `history` at `delta` from every accountant, by name (the keys of ACCOUNTANTS).

    All of them account the same mechanism under the same relation (Poisson-subsampled
    Gaussian, add/remove one) and give upper bounds; they differ in tightness only: RDP is
    the loosest, PRV and PLD are numerical and agree within about 1%.
    """
    entries, delta = normalize_history(history), check_delta(delta)
    return {name: epsilon_from_history(entries, delta, name) for name in ACCOUNTANTS}


def central_epsilon(
    *, noise_multiplier: float, sample_rate: float, rounds: int, delta: float, accountant: str = "rdp"
) -> float:
    """ε of DP-FedAvg after `rounds` rounds: a Poisson-subsampled Gaussian, one step per round.

    `sample_rate` is q = clients_per_round / num_clients. The accountant assumes each
    client takes part in a round independently with probability q (Poisson sampling); a
    fixed-size uniform sample without replacement is a different mechanism and is not
    covered by this number. In central mode the engine must therefore sample clients by
    Poisson: each round, include each client independently with probability q (the
    number of participants varies; zero participants is a valid, noise-only round), and
    divide the noised sum by the *expected* count q·num_clients (see `central_noise`).
    The neighbouring relation is add/remove one client (`NEIGHBOURING_RELATIONS["poisson"]`).
    For exactly k of n clients a round, see `fixed_size_epsilon`.
    """
    history = [(noise_multiplier, sample_rate, check_count("rounds", rounds, low=0))]
    return epsilon_from_history(history, delta, accountant)


def _check_fixed_size(clients_per_round: int, num_clients: int) -> tuple[int, int]:
    num_clients = check_count("num_clients", num_clients, low=1)
    clients_per_round = check_count("clients_per_round", clients_per_round, low=1, high=num_clients)
    return clients_per_round, num_clients


def _check_fixed_size_accountant(accountant: str) -> str:
    if accountant not in FIXED_SIZE_ACCOUNTANTS:
        raise ValueError(
            f"accountant for fixed-size client sampling must be one of {', '.join(FIXED_SIZE_ACCOUNTANTS)}; "
            f"got {accountant!r} (no bound for sampling without replacement in it)"
        )
    return accountant


def fixed_size_epsilon(
    *,
    noise_multiplier: float,
    clients_per_round: int,
    num_clients: int,
    rounds: int,
    delta: float,
    accountant: str = "rdp",
) -> float:
    """ε of DP-FedAvg that takes exactly `clients_per_round` (k) of `num_clients` (n) clients
    each round, a uniform sample without replacement, for `rounds` rounds: each round the
    updates clipped to C are summed and N(0, σ²C²) is added per coordinate (σ =
    `noise_multiplier`), then divided by k, the fixed number of participants.

    Neighbouring relation: replace one client (`NEIGHBOURING_RELATIONS["fixed"]`): n is
    public and the two federations differ in one client's data. Poisson sampling
    (`central_epsilon`) is accounted under add/remove one client instead; the two ε are
    different guarantees (by group privacy, add/remove (ε, δ) gives replace-one (2ε, (1+e^ε)δ)).
    Replacing one update u by u' (both of norm <= C) moves the sum by up to 2C, so against
    the replace-one sensitivity the noise multiplier is σ/2: that is the multiplier of the
    Gaussian inside dp_accounting's `SampledWithoutReplacementDpEvent` (at k = n its ε is that
    of a Gaussian with multiplier σ/2). Composed over the rounds by dp_accounting's
    `RdpAccountant` (REPLACE_ONE; Wang, Balle & Kasiviswanathan 2019, Thm. 27), the only
    accountant in FIXED_SIZE_ACCOUNTANTS. 0 rounds: 0.0; σ = 0: inf.
    """
    noise_multiplier = check_noise_multiplier(noise_multiplier)
    clients_per_round, num_clients = _check_fixed_size(clients_per_round, num_clients)
    rounds, delta = check_count("rounds", rounds, low=0), check_delta(delta)
    _check_fixed_size_accountant(accountant)
    if rounds == 0:
        return 0.0
    if noise_multiplier == 0.0:
        return math.inf
    dp_accounting = _dp_accounting()
    replace_one_gaussian = dp_accounting.GaussianDpEvent(noise_multiplier / 2.0)  # sensitivity 2C
    sampled = dp_accounting.SampledWithoutReplacementDpEvent(num_clients, clients_per_round, replace_one_gaussian)
    rdp = dp_accounting.rdp.RdpAccountant(neighboring_relation=dp_accounting.NeighboringRelation.REPLACE_ONE)
    rdp.compose(sampled, rounds)
    return float(rdp.get_epsilon(delta))


def calibrate_fixed_size_noise(
    *,
    target_epsilon: float,
    delta: float,
    clients_per_round: int,
    num_clients: int,
    rounds: int,
    accountant: str = "rdp",
    epsilon_tolerance: float = 0.01,
) -> float:
    """The noise multiplier σ whose `fixed_size_epsilon` after `rounds` rounds of k =
    `clients_per_round` of n = `num_clients` is <= target_epsilon and within
    min(`epsilon_tolerance`, 5% of the target) below it, by bisection over σ.
    Raises PrivacyError when no σ up to 1e6 reaches the target.
    """
    target_epsilon = _positive("target_epsilon", target_epsilon)
    clients_per_round, num_clients = _check_fixed_size(clients_per_round, num_clients)
    rounds, delta = check_count("rounds", rounds, low=1), check_delta(delta)
    _check_fixed_size_accountant(accountant)
    tolerance = min(_positive("epsilon_tolerance", epsilon_tolerance), 0.05 * target_epsilon)

    def epsilon_at(noise_multiplier: float) -> float:
        return fixed_size_epsilon(
            noise_multiplier=noise_multiplier, clients_per_round=clients_per_round, num_clients=num_clients,
            rounds=rounds, delta=delta, accountant=accountant,
        )  # fmt: skip

    # Opacus's get_noise_multiplier search (it only takes Opacus histories): double σ until
    # ε <= target, then halve the bracket until ε is within the tolerance below the target.
    low, high = 0.0, 1.0
    high_epsilon = epsilon_at(high)
    while high_epsilon > target_epsilon:
        low, high = high, 2.0 * high
        if high > _MAX_NOISE_MULTIPLIER:
            raise PrivacyError(
                f"no noise multiplier up to {_MAX_NOISE_MULTIPLIER:g} reaches ε = {target_epsilon} at δ = {delta} "
                f"over {rounds} rounds of {clients_per_round} of {num_clients} clients"
            )
        high_epsilon = epsilon_at(high)
    for _ in range(200):  # halvings; float precision ends the search long before
        if target_epsilon - high_epsilon <= tolerance:
            break
        middle = (low + high) / 2.0
        middle_epsilon = epsilon_at(middle)
        if middle_epsilon <= target_epsilon:
            high, high_epsilon = middle, middle_epsilon
        else:
            low = middle
    return high


def calibrate_noise(
    *,
    target_epsilon: float,
    delta: float,
    sample_rate: float,
    steps: int,
    accountant: str = "rdp",
    epsilon_tolerance: float = 0.01,
) -> float:
    """The noise multiplier σ whose ε after `steps` steps at `sample_rate` is <= target_epsilon
    and within min(`epsilon_tolerance`, 5% of the target) below it (absolute ε units), found
    by Opacus's `get_noise_multiplier` with the named accountant.

    Central mode: steps = rounds, sample_rate = clients_per_round / num_clients.
    Local mode (per client k): steps = max rounds client k can take part in × local_epochs ×
    `steps_per_epoch(q_k)`, q_k = `local_sample_rate(N_k, batch_size)`; one σ serves all
    clients, so take the largest σ over clients (ε falls as σ grows).
    Raises PrivacyError when no σ up to 1e6 reaches the target.
    """
    target_epsilon = _positive("target_epsilon", target_epsilon)
    delta, sample_rate = check_delta(delta), check_sample_rate(sample_rate)
    steps = check_count("steps", steps, low=1)
    epsilon_tolerance = _positive("epsilon_tolerance", epsilon_tolerance)
    try:
        with warnings.catch_warnings():  # RDP's "optimal order is the largest alpha" while searching
            warnings.simplefilter("ignore", UserWarning)
            noise_multiplier = get_noise_multiplier(
                target_epsilon=target_epsilon,
                target_delta=delta,
                sample_rate=sample_rate,
                steps=steps,
                accountant=_check_accountant(accountant),
                epsilon_tolerance=min(epsilon_tolerance, 0.05 * target_epsilon),
            )
    except ValueError as error:  # Opacus: "The privacy budget is too low."
        raise PrivacyError(
            f"no noise multiplier reaches ε = {target_epsilon} at δ = {delta} over {steps} steps "
            f"at sample rate {sample_rate}: {error}"
        ) from None
    reached = epsilon_from_history([(noise_multiplier, sample_rate, steps)], delta, accountant)
    if reached > target_epsilon:
        raise PrivacyError(f"calibrated σ = {noise_multiplier} gives ε = {reached} > target {target_epsilon}")
    return float(noise_multiplier)


def would_exceed(
    history: Iterable[Sequence[float]],
    next_steps: Iterable[Sequence[float]],
    *,
    delta: float,
    max_epsilon: float,
    accountant: str = "rdp",
) -> bool:
    """True if ε after `history` plus the planned `next_steps` would be above `max_epsilon`.

    `next_steps` is in history form too: the next round's `[(noise_multiplier,
    sample_rate, steps)]`, e.g. `[(σ, q, local_epochs * steps_per_epoch(q))]`.
    """
    max_epsilon = _positive("max_epsilon", max_epsilon)
    combined = normalize_history(history) + normalize_history(next_steps)
    return epsilon_from_history(combined, delta, accountant) > max_epsilon



def zcdp_epsilon(*, rho: float, delta: float) -> float:
    """ε of a ρ-zCDP mechanism at `delta`, by the standard conversion (Bun & Steinke 2016, Prop. 1.3):
    ρ-zCDP implies (ρ + 2·√(ρ·ln(1/δ)), δ)-DP. DP-FTRL's tree (privacy/ftrl.py) is accounted this way,
    as Kairouz et al. (2021) do. ρ = 0: 0.0; ρ = inf: inf."""
    delta = check_delta(delta)
    if rho == math.inf:  # σ = 0
        return math.inf
    rho = check_number("rho", rho, low=0.0)
    return rho + 2.0 * math.sqrt(rho * math.log(1.0 / delta))
