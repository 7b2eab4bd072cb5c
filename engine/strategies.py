"""Server aggregation strategies: pure functions over flat weight vectors, plus one small
class per strategy holding only the state its algorithm needs.

The round loop in `federated_learning` is written once and drives every strategy:

    strategy = make_strategy(config.federation)
    correction = strategy.client_correction(client_id, global_weights)  # (P,) or None; SCAFFOLD only
    new_global = strategy.aggregate(global_weights, updates)            # (P,), dtype of global_weights

A new rule is a pure function plus a class registered in `STRATEGIES`, never a branch in the loop.
FedAvg, FedProx, FedAvgM, FedAdagrad/Adam/Yogi, FedNova, adaptive weighting and q-FedAvg trust each
client's `num_examples`; the Byzantine-robust rules (median, trimmed mean, Krum, Multi-Krum, Bulyan; their
math is in `engine.robust_rules`) ignore it, because a malicious client can claim any count. Sums run in
float64; results come back in the input dtype.
A rule that cannot run on the updates it got (none, or too few for its f) raises `ValueError`.
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

import experiment_config
from engine.robust_rules import F64, bulyan, coordinate_median, krum, multi_krum, trimmed_mean
from engine.streaming import RunningSum, by_examples, by_examples_per_step, fednova_from_sum, qfedavg_from_sum
from experiment_config import check_integer, check_number, check_one_of



@dataclass(frozen=True)
class ClientUpdate:
    """What one client sends back after a round of local training."""

    client_id: int
    weights: torch.Tensor  # (P,) the client's new local weights
    num_examples: int
    steps: int  # local SGD steps it took this round (may differ between clients)
    loss: float
    validation_score: float | None = None  # accuracy on its own held-out split (adaptive_weighting)
    # F_k: the round-start GLOBAL model's mean loss on this client's training data (qfedavg), not `loss`,
    # which is the mean over local training; the round loop fills it where the strategy asks for it.
    global_loss: float | None = None


# ---------------------------------------------------------------- averaging


def _weighted_mean64(vectors: Sequence[torch.Tensor], weights: Sequence[float]) -> torch.Tensor:
    """Σ w_k v_k / Σ w_k over (P,) vectors, in float64, one vector at a time (no (n, P) copy)."""
    if not vectors or len(vectors) != len(weights):
        raise ValueError(f"need one weight per vector, got {len(vectors)} vectors and {len(weights)} weights")
    total = float(sum(weights))
    if total <= 0 or min(weights) < 0:
        raise ValueError(f"weights must be non-negative with a positive sum, got {list(weights)}")
    result = torch.zeros_like(vectors[0], dtype=F64)
    for vector, weight in zip(vectors, weights, strict=True):
        result.add_(vector.to(F64), alpha=weight / total)
    return result


def weighted_average(vectors: Sequence[torch.Tensor], weights: Sequence[float]) -> torch.Tensor:
    """Σ w_k v_k / Σ w_k over (P,) vectors; weights must be non-negative with a positive sum."""
    return _weighted_mean64(vectors, weights).to(vectors[0].dtype)


def _check_updates(global_weights: torch.Tensor, updates: Sequence[ClientUpdate]) -> None:
    if not updates:
        raise ValueError("cannot aggregate zero client updates")
    for update in updates:
        if update.weights.shape != global_weights.shape:
            raise ValueError(f"client {update.client_id} sent weights of shape {tuple(update.weights.shape)}, "
                             f"expected {tuple(global_weights.shape)}")


def fedavg(global_weights: torch.Tensor, updates: Sequence[ClientUpdate]) -> torch.Tensor:
    """McMahan et al. 2017: Σ_k (n_k/Σn) y_k, float64 (P,)."""
    _check_updates(global_weights, updates)
    return _weighted_mean64([u.weights for u in updates], [u.num_examples for u in updates])


def pseudo_gradient(global_weights: torch.Tensor, updates: Sequence[ClientUpdate]) -> torch.Tensor:
    """Δ = fedavg(updates) − x, float64 (P,): the server optimisers' 'gradient' (it points downhill)."""
    return fedavg(global_weights, updates) - global_weights.to(F64)


def fednova(global_weights: torch.Tensor, updates: Sequence[ClientUpdate]) -> torch.Tensor:
    """Wang et al. 2020, FedNova for plain local SGD, float64 (P,).

    p_k = n_k/Σn, d_k = (x − y_k)/τ_k with τ_k local steps, τ_eff = Σ p_k τ_k, x ← x − τ_eff Σ p_k d_k.
    Normalising by τ_k removes the pull towards clients that took more steps; equal τ_k gives FedAvg.
    """
    _check_updates(global_weights, updates)
    total = float(sum(u.num_examples for u in updates))
    if min(u.steps for u in updates) < 1 or total <= 0:
        raise ValueError(f"fednova needs steps >= 1 and a positive total of num_examples, got steps "
                         f"{[u.steps for u in updates]} and num_examples {[u.num_examples for u in updates]}")
    x = global_weights.to(F64)
    effective_steps = sum(u.num_examples / total * u.steps for u in updates)
    direction = torch.zeros_like(x)  # Σ p_k d_k
    for u in updates:
        direction.add_(x - u.weights.to(F64), alpha=u.num_examples / total / u.steps)
    return x - effective_steps * direction


def with_global_losses(updates: Sequence[ClientUpdate], losses: Sequence[float]) -> list[ClientUpdate]:
    """The updates, each with its F_k (`global_loss`) from `losses`, in the same order."""
    if len(updates) != len(losses):
        raise ValueError(f"need one global loss per update, got {len(losses)} for {len(updates)} updates")
    return [dataclasses.replace(u, global_loss=float(loss)) for u, loss in zip(updates, losses, strict=True)]


QFFL_LOSS_FLOOR = 1e-10  # added to F_k as in the authors' code (litian96/fair_flearn): F_k^(q−1) stays finite


def qfedavg(global_weights: torch.Tensor, updates: Sequence[ClientUpdate], *, q: float,
            learning_rate: float) -> torch.Tensor:
    """Li et al. 2020 (q-FFL), Algorithm 3 q-FedAvg, float64 (P,). With L = 1/η (η the clients' SGD step)
    and F_k = update.global_loss, the round-start global model's loss on client k's training data:

    Δw_k = L(w − w̄_k);  Δ_k = F_k^q·Δw_k;  h_k = q·F_k^(q−1)·‖Δw_k‖² + L·F_k^q;  w ← w − Σ p_k Δ_k / Σ p_k h_k.

    The paper samples clients with probability p_k = n_k/Σn and sums uniformly; our clients are sampled
    uniformly, so both sums weight by p_k instead (the same objective Σ p_k F_k^(q+1)/(q+1); equal n_k:
    the paper's sums). q = 0 is then FedAvg exactly: w − Σ p_k L(w − w̄_k) / Σ p_k L = Σ p_k w̄_k / Σ p_k.
    """
    _check_updates(global_weights, updates)
    losses = [u.global_loss for u in updates]
    if any(loss is None or not loss >= 0 for loss in losses):
        raise ValueError(f"qfedavg needs each client's loss of the global model (global_loss >= 0), got {losses}")
    total = float(sum(u.num_examples for u in updates))
    if total <= 0:
        raise ValueError(f"qfedavg needs a positive total of num_examples, got {[u.num_examples for u in updates]}")
    lipschitz, x = 1.0 / learning_rate, global_weights.to(F64)
    step_sum, h_sum = torch.zeros_like(x), 0.0  # Σ p_k Δ_k (P,), Σ p_k h_k
    for update, loss in zip(updates, losses, strict=True):
        p, loss = update.num_examples / total, float(loss) + QFFL_LOSS_FLOOR
        delta_w = lipschitz * (x - update.weights.to(F64))
        step_sum.add_(delta_w, alpha=p * loss**q)
        h_sum += p * (q * loss ** (q - 1) * float(delta_w.square().sum()) + lipschitz * loss**q)
    return x - step_sum / h_sum


def adaptive_weighting(global_weights: torch.Tensor, updates: Sequence[ClientUpdate], *,
                       exponent: float) -> torch.Tensor:
    """Weighted average with w_k ∝ (n_k/Σn)^a · (s_k/Σs)^(1−a), s_k = validation_score, float64 (P,).

    a = 1 is FedAvg; a = 0 weights by validation score alone.
    """
    _check_updates(global_weights, updates)
    scores = [u.validation_score for u in updates]
    if any(s is None for s in scores) or min(scores) < 0 or sum(scores) <= 0:
        raise ValueError(f"adaptive_weighting needs a validation_score >= 0 from every client, not all 0; got "
                         f"{scores}. It needs the client validation split: set federation.client_holdout > 0")
    total_examples, total_score = sum(u.num_examples for u in updates), sum(scores)
    weights = [(u.num_examples / total_examples) ** exponent * (s / total_score) ** (1 - exponent)
               for u, s in zip(updates, scores, strict=True)]
    return _weighted_mean64([u.weights for u in updates], weights)


# ---------------------------------------------------------------- server optimisers (Reddi et al. 2021)

SecondMoment = Callable[[torch.Tensor, torch.Tensor, float], torch.Tensor]  # (v, Δ², β2) -> new v


def adagrad_second_moment(v: torch.Tensor, delta_squared: torch.Tensor, beta2: float) -> torch.Tensor:
    """v + Δ²."""
    return v + delta_squared


def adam_second_moment(v: torch.Tensor, delta_squared: torch.Tensor, beta2: float) -> torch.Tensor:
    """β2·v + (1−β2)·Δ²."""
    return beta2 * v + (1 - beta2) * delta_squared


def yogi_second_moment(v: torch.Tensor, delta_squared: torch.Tensor, beta2: float) -> torch.Tensor:
    """v − (1−β2)·Δ²·sign(v − Δ²): moves v towards Δ² additively, so it stays ≥ 0 and changes slowly."""
    return v - (1 - beta2) * delta_squared * torch.sign(v - delta_squared)


# ---------------------------------------------------------------- strategies


class Strategy(ABC):
    """One server-side rule for turning client updates into the next global model."""

    name: str
    # The attributes a strategy carries from round to round (momentum, moments, control variates):
    # what a checkpoint must hold to resume it exactly. Tensors, dicts of tensors, or None.
    state_fields: tuple[str, ...] = ()
    # What its clients need, said by the strategy (never asked by name in the loop): the
    # proximal weight μ of μ/2·‖w − w_global‖² in their local objective (FedProx), and whether
    # each client adds the gradient correction `client_correction` returns (SCAFFOLD).
    proximal_mu: float = 0.0
    uses_corrections: bool = False
    # Whether `aggregate` reads each update's `global_loss` F_k (q-FedAvg): the round loop then fills it.
    needs_global_losses: bool = False
    # Streaming (`engine.streaming`): a rule whose result needs only Σ c_k·y_k over the round's updates
    # says how to weigh client k, c_k = fold_weight(num_examples, steps) (a module-level function: trainer
    # processes call it), and implements `aggregate_sum`; the round loop may then fold each update into a
    # float64 running sum as it arrives instead of holding every one. None: the rule reads every update.
    fold_weight: Callable[[int, int], float] | None = None

    @property
    def streams(self) -> bool:
        """Whether `aggregate_sum` can replace `aggregate` (see `fold_weight`)."""
        return self.fold_weight is not None

    def aggregate_sum(self, global_weights: torch.Tensor, summed: RunningSum) -> torch.Tensor:
        """`aggregate` from the round's running sum (folded with `fold_weight`), equal to it on the same
        updates up to float64 rounding; only for a rule that `streams`."""
        raise NotImplementedError(f"{self.name} reads every update: it cannot aggregate a running sum")

    def fold_factors(self, num_examples: int, global_loss: float | None) -> tuple[float, float]:
        """(f_k, d_k) of a streamed client, known before it trains: its coefficient is fold_weight(n_k, τ_k)·f_k
        and its `aux` scalar d_k·‖x − y_k‖² (`global_loss`: F_k, for a rule that `needs_global_losses`)."""
        return 1.0, 0.0

    def state_dict(self) -> dict[str, Any]:
        """The state carried between rounds (`state_fields`), for a checkpoint."""
        return {name: getattr(self, name) for name in self.state_fields}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what `state_dict` returned (a strategy of the same kind and settings)."""
        if set(state) != set(self.state_fields):
            raise ValueError(f"{self.name} state has fields {sorted(state)}, expected {sorted(self.state_fields)}")
        for name in self.state_fields:
            setattr(self, name, state[name])

    def client_correction(self, client_id: int, global_weights: torch.Tensor) -> torch.Tensor | None:
        """A (P,) vector the client adds to every gradient it computes this round; None = nothing (default)."""
        return None

    @abstractmethod
    def aggregate(self, global_weights: torch.Tensor, updates: Sequence[ClientUpdate]) -> torch.Tensor:
        """The next global weights (P,), dtype of `global_weights`, from the current ones and this round's updates."""


# Settings are checked up front, with errors naming the config field (experiment_config's checks).
# The ranges are the algorithms' own; the config's BOUNDS may be narrower.


def _positive(name: str, value: float) -> float:
    return check_number(f"federation.{name}", value, low=0.0, low_open=True)


def _fraction(name: str, value: float) -> float:
    """In [0, 1): a decay or momentum factor."""
    return check_number(f"federation.{name}", value, low=0.0, high=1.0, high_open=True)


def _byzantine(value: int) -> int:
    return check_integer("federation.byzantine_clients", value, low=0)


class FedAvg(Strategy):
    """McMahan et al. 2017: average of client weights, weighted by their example counts."""

    name = "fedavg"
    fold_weight = staticmethod(by_examples)

    def aggregate(self, global_weights: torch.Tensor, updates: Sequence[ClientUpdate]) -> torch.Tensor:
        return fedavg(global_weights, updates).to(global_weights.dtype)

    def aggregate_sum(self, global_weights: torch.Tensor, summed: RunningSum) -> torch.Tensor:
        return summed.mean().to(global_weights.dtype)


class FedProx(FedAvg):
    """Li et al. 2020: FedAvg on the server; the proximal term μ/2·‖w − x‖² lives in the client trainer."""

    name = "fedprox"

    def __init__(self, *, proximal_mu: float) -> None:
        self.proximal_mu = check_number("federation.proximal_mu", proximal_mu, low=0.0)


class FedAvgM(Strategy):
    """Hsu et al. 2019: server momentum on the pseudo-gradient. v ← β·v + Δ; x ← x + η·v (β=0, η=1: FedAvg)."""

    name = "fedavgm"
    state_fields = ("velocity",)
    fold_weight = staticmethod(by_examples)

    def __init__(self, *, server_learning_rate: float = 1.0, server_momentum: float = 0.9) -> None:
        self.server_learning_rate = _positive("server_learning_rate", server_learning_rate)
        self.server_momentum = _fraction("server_momentum", server_momentum)
        self.velocity: torch.Tensor | None = None  # v (P,) float64

    def aggregate(self, global_weights: torch.Tensor, updates: Sequence[ClientUpdate]) -> torch.Tensor:
        return self._step(global_weights, pseudo_gradient(global_weights, updates))

    def aggregate_sum(self, global_weights: torch.Tensor, summed: RunningSum) -> torch.Tensor:
        return self._step(global_weights, summed.mean() - global_weights.to(F64))

    def _step(self, global_weights: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
        """The momentum step on the pseudo-gradient Δ (P,) float64."""
        self.velocity = delta if self.velocity is None else self.server_momentum * self.velocity + delta
        return (global_weights.to(F64) + self.server_learning_rate * self.velocity).to(global_weights.dtype)


class _AdaptiveServerOptimizer(Strategy):
    """Reddi et al. 2021, Algorithm 2 (no bias correction), on Δ = fedavg(updates) − x:

    m ← β1·m + (1−β1)·Δ;  v ← second_moment(v, Δ², β2);  x ← x + η·m/(√v + τ);  m, v start at 0.
    """

    second_moment: SecondMoment
    state_fields = ("first_moment", "second_moment_estimate")
    fold_weight = staticmethod(by_examples)

    def __init__(self, *, server_learning_rate: float, beta1: float = 0.9, beta2: float = 0.99,
                 tau: float = 1e-3) -> None:
        self.server_learning_rate = _positive("server_learning_rate", server_learning_rate)
        self.beta1 = _fraction("beta1", beta1)
        self.beta2 = _fraction("beta2", beta2)
        self.tau = _positive("tau", tau)
        self.first_moment: torch.Tensor | None = None  # m (P,) float64
        self.second_moment_estimate: torch.Tensor | None = None  # v (P,) float64

    def aggregate(self, global_weights: torch.Tensor, updates: Sequence[ClientUpdate]) -> torch.Tensor:
        return self._step(global_weights, pseudo_gradient(global_weights, updates))

    def aggregate_sum(self, global_weights: torch.Tensor, summed: RunningSum) -> torch.Tensor:
        return self._step(global_weights, summed.mean() - global_weights.to(F64))

    def _step(self, global_weights: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
        """One server-optimiser step on the pseudo-gradient Δ (P,) float64."""
        m = torch.zeros_like(delta) if self.first_moment is None else self.first_moment
        v = torch.zeros_like(delta) if self.second_moment_estimate is None else self.second_moment_estimate
        self.first_moment = self.beta1 * m + (1 - self.beta1) * delta
        self.second_moment_estimate = type(self).second_moment(v, delta * delta, self.beta2)
        step = self.first_moment / (self.second_moment_estimate.sqrt() + self.tau)
        return (global_weights.to(F64) + self.server_learning_rate * step).to(global_weights.dtype)


class FedAdagrad(_AdaptiveServerOptimizer):
    """FedAdagrad: v ← v + Δ²."""

    name = "fedadagrad"
    second_moment = staticmethod(adagrad_second_moment)


class FedAdam(_AdaptiveServerOptimizer):
    """FedAdam: v ← β2·v + (1−β2)·Δ²."""

    name = "fedadam"
    second_moment = staticmethod(adam_second_moment)


class FedYogi(_AdaptiveServerOptimizer):
    """FedYogi: v ← v − (1−β2)·Δ²·sign(v − Δ²)."""

    name = "fedyogi"
    second_moment = staticmethod(yogi_second_moment)


def scaffold_control_delta(global_weights: torch.Tensor, update: ClientUpdate, server_control: torch.Tensor, *,
                           client_learning_rate: float) -> torch.Tensor:
    """Karimireddy et al. 2020, option II: Δc_i = (x − y_i)/(K_i·η_l) − c, float64 (P,); K_i = update.steps ≥ 1."""
    return (global_weights.to(F64) - update.weights.to(F64)) / (update.steps * client_learning_rate) - server_control


class Scaffold(Strategy):
    """Karimireddy et al. 2020 (option II): control variates correct each client's drift.

    Clients add c − c_i to every gradient (`client_correction`). After the round, with the c from before it:
    c_i ← c_i + Δc_i;  x ← x + η_g·mean_i(y_i − x) (unweighted);  c ← c + (1/N)·Σ_i Δc_i, N = num_clients.
    """

    name = "scaffold"
    state_fields = ("server_control", "client_controls")
    uses_corrections = True

    def __init__(self, *, num_clients: int, client_learning_rate: float, server_learning_rate: float = 1.0) -> None:
        self.num_clients = check_integer("federation.num_clients", num_clients, low=1)
        self.client_learning_rate = _positive("learning_rate", client_learning_rate)
        self.server_learning_rate = _positive("server_learning_rate", server_learning_rate)
        self.server_control: torch.Tensor | None = None  # c (P,) float64
        # c_i (P,) for clients that took part, in the weights' dtype: N of them is N·P numbers to hold.
        self.client_controls: dict[int, torch.Tensor] = {}

    def client_correction(self, client_id: int, global_weights: torch.Tensor) -> torch.Tensor:
        """c − c_i, (P,) in the dtype of `global_weights`; zeros before the first round."""
        correction = torch.zeros_like(global_weights, dtype=F64)
        if self.server_control is not None:
            correction += self.server_control
        if client_id in self.client_controls:  # clients that never took part have c_i = 0
            correction -= self.client_controls[client_id].to(F64)
        return correction.to(global_weights.dtype)

    def aggregate(self, global_weights: torch.Tensor, updates: Sequence[ClientUpdate]) -> torch.Tensor:
        _check_updates(global_weights, updates)
        ids = [u.client_id for u in updates]
        if len(set(ids)) != len(ids) or not all(0 <= i < self.num_clients for i in ids):
            raise ValueError(f"scaffold needs distinct client ids in [0, {self.num_clients}), got {ids}")
        if min(u.steps for u in updates) < 1:
            raise ValueError(f"scaffold needs steps >= 1 for every client, got {[u.steps for u in updates]}")
        x = global_weights.to(F64)
        control = torch.zeros_like(x) if self.server_control is None else self.server_control  # c before the round
        delta_sum = torch.zeros_like(x)  # Σ_i Δc_i
        for update in updates:
            delta = scaffold_control_delta(x, update, control, client_learning_rate=self.client_learning_rate)
            previous = self.client_controls.get(update.client_id)
            new_control = delta if previous is None else previous.to(F64) + delta
            self.client_controls[update.client_id] = new_control.to(global_weights.dtype)
            delta_sum += delta
        self.server_control = control + delta_sum / self.num_clients
        mean_weights = _weighted_mean64([u.weights for u in updates], [1.0] * len(updates))
        return (x + self.server_learning_rate * (mean_weights - x)).to(global_weights.dtype)


class FedNova(Strategy):
    """Wang et al. 2020: normalised averaging for clients that took different numbers of local steps."""

    name = "fednova"
    fold_weight = staticmethod(by_examples_per_step)

    def aggregate(self, global_weights: torch.Tensor, updates: Sequence[ClientUpdate]) -> torch.Tensor:
        return fednova(global_weights, updates).to(global_weights.dtype)

    def aggregate_sum(self, global_weights: torch.Tensor, summed: RunningSum) -> torch.Tensor:
        return fednova_from_sum(global_weights, summed).to(global_weights.dtype)


def _stack(global_weights: torch.Tensor, updates: Sequence[ClientUpdate]) -> torch.Tensor:
    """The clients' weights as one (n, P) tensor; num_examples is deliberately not used by the robust rules."""
    _check_updates(global_weights, updates)
    return torch.stack([u.weights for u in updates])


class CoordinateMedian(Strategy):
    """Per-coordinate median of the clients' weights (unweighted)."""

    name = "median"

    def aggregate(self, global_weights: torch.Tensor, updates: Sequence[ClientUpdate]) -> torch.Tensor:
        return coordinate_median(_stack(global_weights, updates)).to(global_weights.dtype)


class TrimmedMean(Strategy):
    """Per-coordinate mean after dropping the ⌊β·n⌋ largest and smallest values (unweighted)."""

    name = "trimmed_mean"

    def __init__(self, *, trim_fraction: float = 0.2) -> None:
        self.trim_fraction = check_number("federation.trim_fraction", trim_fraction, low=0.0, high=0.5, high_open=True)

    def aggregate(self, global_weights: torch.Tensor, updates: Sequence[ClientUpdate]) -> torch.Tensor:
        stack = _stack(global_weights, updates)
        return trimmed_mean(stack, trim_fraction=self.trim_fraction).to(global_weights.dtype)


class _DistanceBasedRule(Strategy):
    """A rule parameterised only by f, the number of Byzantine clients it must withstand."""

    rule: Callable[..., torch.Tensor]

    def __init__(self, *, byzantine_clients: int) -> None:
        self.byzantine_clients = _byzantine(byzantine_clients)

    def aggregate(self, global_weights: torch.Tensor, updates: Sequence[ClientUpdate]) -> torch.Tensor:
        stack = _stack(global_weights, updates)
        return type(self).rule(stack, byzantine_clients=self.byzantine_clients).to(global_weights.dtype)


class Krum(_DistanceBasedRule):
    """The single update closest to its n − f − 2 nearest neighbours."""

    name = "krum"
    rule = staticmethod(krum)


class Bulyan(_DistanceBasedRule):
    """Repeated Krum, then a per-coordinate trimmed mean around the median."""

    name = "bulyan"
    rule = staticmethod(bulyan)


class MultiKrum(Strategy):
    """Mean of the m updates with the lowest Krum scores."""

    name = "multi_krum"

    def __init__(self, *, byzantine_clients: int, keep: int = 0) -> None:
        self.byzantine_clients = _byzantine(byzantine_clients)
        self.keep = check_integer("federation.multi_krum_keep", keep, low=0)  # 0 means n − f

    def aggregate(self, global_weights: torch.Tensor, updates: Sequence[ClientUpdate]) -> torch.Tensor:
        stack = _stack(global_weights, updates)
        return multi_krum(stack, byzantine_clients=self.byzantine_clients, keep=self.keep).to(global_weights.dtype)


class AdaptiveWeighting(Strategy):
    """Weighted average mixing data size and local validation accuracy: w_k ∝ (n_k/Σn)^a · (s_k/Σs)^(1−a)."""

    name = "adaptive_weighting"

    def __init__(self, *, exponent: float = 0.5) -> None:
        self.exponent = check_number("federation.weighting_exponent", exponent, low=0.0, high=1.0)

    def aggregate(self, global_weights: torch.Tensor, updates: Sequence[ClientUpdate]) -> torch.Tensor:
        return adaptive_weighting(global_weights, updates, exponent=self.exponent).to(global_weights.dtype)


class QFedAvg(Strategy):
    """Li et al. 2020: q-FedAvg minimises Σ p_k F_k^(q+1)/(q+1), weighting clients with a high loss of the
    global model more as q grows (a fairer spread of accuracy); q = 0 is FedAvg. Needs `global_loss`.

    `lipschitz` is L, the Lipschitz estimate of ∇F_k that sets the step (0: the paper's L = 1/η, η the
    clients' SGD step). For q > 0 the step shrinks by about 1 + q·L·‖w − w̄_k‖²/F_k against FedAvg's, so
    with many local steps L = 1/η barely moves the model; the paper tunes L (its step size) per q.
    """

    name = "qfedavg"
    needs_global_losses = True
    fold_weight = staticmethod(by_examples)  # × F_k^q (`fold_factors`)

    def __init__(self, *, q: float, client_learning_rate: float, lipschitz: float = 0.0) -> None:
        self.q = check_number("federation.qffl_q", q, low=0.0)
        self.client_learning_rate = _positive("learning_rate", client_learning_rate)
        lipschitz = check_number("federation.qffl_lipschitz", lipschitz, low=0.0)
        self.lipschitz = lipschitz or 1.0 / self.client_learning_rate

    def aggregate(self, global_weights: torch.Tensor, updates: Sequence[ClientUpdate]) -> torch.Tensor:
        # `qfedavg` takes L as 1/learning_rate, the form of the paper's Algorithm 3.
        result = qfedavg(global_weights, updates, q=self.q, learning_rate=1.0 / self.lipschitz)
        return result.to(global_weights.dtype)

    def fold_factors(self, num_examples: int, global_loss: float | None) -> tuple[float, float]:
        """c_k = n_k·F_k^q and a_k = n_k·q·F_k^(q−1)·‖x − y_k‖² (`streaming.qfedavg_from_sum`)."""
        if global_loss is None or not global_loss >= 0:
            raise ValueError(f"qfedavg needs each client's loss of the global model (global_loss >= 0), got {global_loss}")
        loss = float(global_loss) + QFFL_LOSS_FLOOR
        return loss**self.q, num_examples * self.q * loss ** (self.q - 1)

    def aggregate_sum(self, global_weights: torch.Tensor, summed: RunningSum) -> torch.Tensor:
        return qfedavg_from_sum(global_weights, summed, lipschitz=self.lipschitz).to(global_weights.dtype)


def _server_lr(federation: Any, default: float) -> float:
    """federation.server_learning_rate, where 0.0 means this strategy's default."""
    return federation.server_learning_rate or default


def _adaptive_options(federation: Any, default_lr: float) -> dict[str, float]:
    return {"server_learning_rate": _server_lr(federation, default_lr), "beta1": federation.beta1,
            "beta2": federation.beta2, "tau": federation.tau}


# name -> factory from the federation config section (any object with the attributes read below).
_FACTORIES: dict[str, Callable[[Any], Strategy]] = {
    "fedavg": lambda fed: FedAvg(),
    "fedprox": lambda fed: FedProx(proximal_mu=fed.proximal_mu),
    "fedavgm": lambda fed: FedAvgM(server_learning_rate=_server_lr(fed, 1.0), server_momentum=fed.server_momentum),
    "fedadagrad": lambda fed: FedAdagrad(**_adaptive_options(fed, 0.1)),
    "fedadam": lambda fed: FedAdam(**_adaptive_options(fed, 0.01)),
    "fedyogi": lambda fed: FedYogi(**_adaptive_options(fed, 0.01)),
    "scaffold": lambda fed: Scaffold(num_clients=fed.num_clients, client_learning_rate=fed.learning_rate,
                                     server_learning_rate=_server_lr(fed, 1.0)),
    "fednova": lambda fed: FedNova(),
    "median": lambda fed: CoordinateMedian(),
    "trimmed_mean": lambda fed: TrimmedMean(trim_fraction=fed.trim_fraction),
    "krum": lambda fed: Krum(byzantine_clients=fed.byzantine_clients),
    "multi_krum": lambda fed: MultiKrum(byzantine_clients=fed.byzantine_clients, keep=fed.multi_krum_keep),
    "bulyan": lambda fed: Bulyan(byzantine_clients=fed.byzantine_clients),
    "adaptive_weighting": lambda fed: AdaptiveWeighting(exponent=fed.weighting_exponent),
    "qfedavg": lambda fed: QFedAvg(q=fed.qffl_q, client_learning_rate=fed.learning_rate,
                                   lipschitz=getattr(fed, "qffl_lipschitz", 0.0)),
}
# The registry, in the order of experiment_config.STRATEGIES (the names' one home): a name there
# without a factory here fails at import; a test checks that no factory is left out.
STRATEGIES: dict[str, Callable[[Any], Strategy]] = {name: _FACTORIES[name] for name in experiment_config.STRATEGIES}


def make_strategy(federation: Any) -> Strategy:
    """A fresh strategy (with fresh state) for `federation.strategy`, configured from the federation section."""
    return STRATEGIES[check_one_of("federation.strategy", federation.strategy, tuple(STRATEGIES))](federation)
