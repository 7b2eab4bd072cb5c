"""Differential privacy for the engine: local DP-SGD (Opacus), central DP-FedAvg, accounting.

Mechanism and accounting are separate, as in Opacus. The mechanisms, here, change numbers
(per-sample clipping and Gaussian noise in DP-SGD; clip + noise on client updates in
DP-FedAvg); the accountants (`privacy/accounting.py`, whose names this module re-exports)
turn what was done, a history of `(noise_multiplier, sample_rate, steps)`, into ε:
Opacus's `RDPAccountant` / `PRVAccountant`, and `PLDAccountant`, which keeps Opacus's
interface and composes privacy loss distributions with Google's `dp_accounting`. No ε here
comes from a formula of our own. Asked-for privacy that cannot be applied raises
`PrivacyError`; a bad parameter raises `ValueError` naming it and its allowed range.

Local DP (sample level; one accountant per client, ε cumulative over rounds). Per-example
clipping is "bookkeeping" by default (one backward pass, Linear and Conv2d layers; Bu et
al. 2023), or Opacus's "ghost" / "hooks" (`grad_sample_mode`); noise and the step hook
that feeds the accountant are Opacus's in every mode. One `DPSGDModel` per process serves
every client; the server keeps each client's accountant history (a few JSON-able tuples)
and hands it back with the task, so ε stays cumulative whichever process trains the client:

    dp_model = DPSGDModel(create_model("cnn"), max_grad_norm=1.0)
    accountant = accountant_from_history(history, "rdp")      # [] for a client's first round
    dp_model.set_weights(global_weights)                        # (P,) float32 or {name: tensor}
    result = dp_model.train(train_x, train_y, indices, local_epochs=1, batch_size=50,
                            learning_rate=0.05, noise_multiplier=1.0, accountant=accountant, seed=s)
    history = accountant.history                                # back to the server
    epsilon_from_history(history, 1e-5, "rdp")                  # the client's ε so far

Central DP (user level, DP-FedAvg; McMahan et al. 2018): `clip_update` each client's
update, sum, `central_noise`, and `central_epsilon` for the ledger (Poisson client
sampling, add/remove one client) or `fixed_size_epsilon` (exactly k of n clients a round,
replace one client); `NEIGHBOURING_RELATIONS` names the relation for a report:

    epsilons_by_accountant([(1.5, 0.04, 2250)], 1e-5)    # {"rdp": 7.329, "prv": 6.779, "pld": 6.769}
    fixed_size_epsilon(noise_multiplier=1.0, clients_per_round=10, num_clients=100,
                       rounds=100, delta=1e-5)
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from opacus.accountants.accountant import IAccountant
from opacus.grad_sample import GradSampleModule, GradSampleModuleFastGradientClipping
from opacus.optimizers import DPOptimizer, DPOptimizerFastGradientClipping
from opacus.optimizers.optimizer import _check_processed_flag, _mark_as_processed
from opacus.utils.fast_gradient_clipping_utils import DPLossFastGradientClipping
from opacus.validators import ModuleValidator
from opacus.validators.errors import UnsupportedModuleError
from torch import nn

from engine.objectives import TaskLoss
from experiment_config import check_number, check_one_of
from model import Parameters, get_parameters, set_parameters, unflatten
from privacy.accounting import (
    ACCOUNTANTS,
    FIXED_SIZE_ACCOUNTANTS,
    LOCAL_NEIGHBOURING_RELATION,
    NEIGHBOURING_RELATIONS,
    PLD_VALUE_DISCRETIZATION,
    HistoryEntry,
    PLDAccountant,
    PrivacyError,
    accountant_from_history,
    calibrate_fixed_size_noise,
    calibrate_noise,
    central_epsilon,
    check_count,
    check_noise_multiplier,
    check_sample_rate,
    epsilon_from_history,
    epsilons_by_accountant,
    fixed_size_epsilon,
    make_accountant,
    normalize_history,
    would_exceed,
)
from privacy.augmentation import MAX_SHIFT, random_shifts
from privacy.per_example_clipping import BookkeepingClipper, UnsupportedLayerError

__all__ = [
    "ACCOUNTANTS",
    "DEFAULT_GRAD_SAMPLE_MODE",
    "FIXED_SIZE_ACCOUNTANTS",
    "GRAD_SAMPLE_MODES",
    "LOCAL_NEIGHBOURING_RELATION",
    "NEIGHBOURING_RELATIONS",
    "PLD_VALUE_DISCRETIZATION",
    "DPSGDModel",
    "DPTrainResult",
    "HistoryEntry",
    "PLDAccountant",
    "PrivacyError",
    "accountant_from_history",
    "adapt_clip_norm",
    "adaptive_update_noise",
    "calibrate_fixed_size_noise",
    "calibrate_noise",
    "central_epsilon",
    "central_noise",
    "clip_update",
    "count_noise_stddev",
    "epsilon_from_history",
    "epsilons_by_accountant",
    "fixed_size_epsilon",
    "local_sample_rate",
    "make_accountant",
    "next_clip_norm",
    "normalize_history",
    "poisson_batches",
    "secure_normal",
    "steps_per_epoch",
    "would_exceed",
]

# "bookkeeping": one backward pass, clipped sum from kept activations and output gradients
# (Bu et al. 2023; Linear and Conv2d only). "ghost": Opacus ghost clipping, per-sample norms
# without per-sample gradients, two backward passes (~2.5x non-DP on CPU). "hooks": Opacus
# per-sample gradients materialised (~10x non-DP).
GRAD_SAMPLE_MODES = ("bookkeeping", "ghost", "hooks")
DEFAULT_GRAD_SAMPLE_MODE = "bookkeeping"  # ~1.7x non-DP for the CNN on one CPU thread, ghost ~2.8x
AUGMENTATION_TAG = 0xA0C3  # mixed with a client's seed for its augmentation draws (`DPSGDModel._augmenter`)


# Harmless torch warning from Opacus's backward hooks when the input needs no grad.
_HOOK_WARNING = "Full backward hook is firing when gradients are computed with respect to module outputs"


def _positive(name: str, value: float) -> float:
    return check_number(name, value, low=0.0, low_open=True)


def _quantile(value: float) -> float:
    return check_number("target_quantile", value, low=0.0, high=1.0, low_open=True, high_open=True)


# -- secure noise: from the operating system's CSPRNG -----------------------------------------

_UNIFORM_BITS = 53  # a float64 mantissa: uniforms on the grid (i + 1/2) / 2^53


def secure_normal(shape: tuple[int, ...] | torch.Size, *, std: float, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """N(0, std²) per element, drawn from `os.urandom` (the OS's cryptographically secure
    generator): nothing seeds it, so nobody can reproduce the draw and runs never repeat it.

    Each standard normal is the inverse normal CDF of a 53-bit uniform in (0, 1) (never 0 or 1,
    so never infinite). As Opacus's `secure_mode`, each element is the sum of four such draws
    divided by 2 (same variance): a sum leaves far fewer gaps between representable outputs, the
    floating-point weakness of a single draw (Jin et al. 2022; Holohan & Braghin 2021, n = 2).
    Cost: 32 bytes from the OS per element (~0.5 s for the CNN's 1.66M weights on a busy 2-core machine).
    """
    std = check_number("std", std, low=0.0)
    count = math.prod(shape)
    raw = np.frombuffer(os.urandom(8 * 4 * count), dtype=np.uint64).reshape(4, count)
    uniform = ((raw >> np.uint64(64 - _UNIFORM_BITS)).astype(np.float64) + 0.5) * 2.0**-_UNIFORM_BITS
    standard = torch.special.ndtri(torch.from_numpy(uniform)).sum(dim=0) / 2.0  # (count,) float64
    return (standard * std).reshape(tuple(shape)).to(dtype)


def gaussian_noise(
    shape: tuple[int, ...] | torch.Size, *, std: float, generator: torch.Generator | None, secure: bool = False
) -> torch.Tensor:
    """N(0, std²) per element, float64: `secure_normal` if `secure` (the generator is then unused),
    else from the seeded `generator` (reproducible experiments)."""
    if secure:
        return secure_normal(shape, std=std)
    return torch.normal(0.0, std, size=tuple(shape), generator=generator).to(torch.float64)  # float32 draws, as before


class _SecureNoise:
    """Opacus's `add_noise`, with the noise from `secure_normal` instead of the optimizer's
    seeded generator (Opacus's own secure_mode needs torchcsprng, which has no build for this
    torch). σ is Opacus's: `_adjusted_noise_multiplier` where its adaptive clipping set one."""

    def add_noise(self) -> None:
        std = getattr(self, "_adjusted_noise_multiplier", self.noise_multiplier) * self.max_grad_norm  # type: ignore[attr-defined]
        for p in self.params:  # type: ignore[attr-defined]
            _check_processed_flag(p.summed_grad)
            noise = secure_normal(p.summed_grad.shape, std=std, dtype=p.summed_grad.dtype)
            p.grad = (p.summed_grad + noise).view_as(p)
            _mark_as_processed(p.summed_grad)


class SecureDPOptimizer(_SecureNoise, DPOptimizer):
    """Opacus's DPOptimizer with `secure_normal` noise."""


class SecureDPOptimizerFastGradientClipping(_SecureNoise, DPOptimizerFastGradientClipping):
    """Opacus's DPOptimizerFastGradientClipping (ghost clipping, bookkeeping) with `secure_normal` noise."""


# -- local DP-SGD: the mechanism -----------------------------------------------------------


def local_sample_rate(num_examples: int, batch_size: int) -> float:
    """Poisson sampling rate q = batch_size / num_examples, capped at 1 (full batch)."""
    num_examples = check_count("num_examples", num_examples, low=1)
    batch_size = check_count("batch_size", batch_size, low=1)
    return min(1.0, batch_size / num_examples)


def steps_per_epoch(sample_rate: float) -> int:
    """Optimizer steps in one epoch of Poisson sampling: round(1/q), at least 1."""
    return max(1, round(1.0 / check_sample_rate(sample_rate)))


def poisson_batches(
    indices: torch.Tensor, *, sample_rate: float, steps: int, generator: torch.Generator
) -> Iterator[torch.Tensor]:
    """`steps` batches, each holding every index independently with probability `sample_rate`.

    Batches vary in size and may be empty; that is what the accountant assumes.
    """
    sample_rate = check_sample_rate(sample_rate)
    for _ in range(check_count("steps", steps, low=0)):
        yield indices[torch.rand(len(indices), generator=generator) < sample_rate]


@dataclass(frozen=True)
class DPTrainResult:
    """One client's DP-SGD in one round: optimizer steps, mean training loss, sample rate q."""

    steps: int
    loss: float
    sample_rate: float


class DPSGDModel:
    """A model set up once for per-sample clipping (`grad_sample_mode`, see GRAD_SAMPLE_MODES).

    One per process is enough: it holds no privacy state, so it can train any client
    whose accountant is passed to `train`. Opacus's wrapped module ("ghost", "hooks")
    prefixes parameter names with `_module.`; `get_parameters` / `set_weights` use clean
    names (`model.clean_name`). The original model shares the weights and sees every update.
    Raises PrivacyError if per-sample gradients cannot be computed for the model
    (BatchNorm, unsupported layers or buffers; "bookkeeping": any layer with trainable
    parameters other than Linear and Conv2d).
    """

    def __init__(
        self, model: nn.Module, *, max_grad_norm: float, grad_sample_mode: str = DEFAULT_GRAD_SAMPLE_MODE
    ) -> None:
        self.max_grad_norm = _positive("max_grad_norm", max_grad_norm)
        self.grad_sample_mode = check_one_of("grad_sample_mode", grad_sample_mode, GRAD_SAMPLE_MODES)
        # Opacus's validator skips BatchNorm without affine parameters, yet in training it
        # still normalises each example by its batch-mates: no per-example bound then holds.
        batch_norms = [n for n, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        if batch_norms:
            raise PrivacyError(
                f"DP-SGD cannot be applied to {type(model).__name__}: BatchNorm layers ({', '.join(batch_norms)}) "
                "mix examples within a batch; use GroupNorm or LayerNorm"
            )
        self._bookkeeping: BookkeepingClipper | None = None
        try:
            ModuleValidator.validate(model, strict=True)
            if grad_sample_mode == "bookkeeping":
                self._bookkeeping = BookkeepingClipper(model, self.max_grad_norm)
                self.module: nn.Module = model
            elif grad_sample_mode == "ghost":
                self.module = GradSampleModuleFastGradientClipping(
                    model, max_grad_norm=self.max_grad_norm, loss_reduction="mean", strict=True
                )
            else:
                self.module = GradSampleModule(model, loss_reduction="mean", strict=True)
        except UnsupportedLayerError as error:
            raise PrivacyError(str(error)) from None
        except (UnsupportedModuleError, NotImplementedError) as error:
            raise PrivacyError(f"DP-SGD cannot be applied to {type(model).__name__}: {error}") from None

    def get_parameters(self) -> Parameters:
        """Trainable parameters by clean name, sharing the model's storage."""
        return get_parameters(self.module)

    def set_weights(self, weights: torch.Tensor | Mapping[str, torch.Tensor]) -> None:
        """Load global weights: a flat (P,) vector in `model.flatten` order, or {clean name: tensor}."""
        own = self.get_parameters()
        params = unflatten(weights, own) if isinstance(weights, torch.Tensor) else weights
        set_parameters(self.module, params)

    def train(
        self,
        train_x: torch.Tensor,
        train_y: torch.Tensor,
        indices: np.ndarray | torch.Tensor,
        *,
        local_epochs: int,
        batch_size: int,
        learning_rate: float,
        noise_multiplier: float,
        accountant: IAccountant,
        seed: int,
        max_steps: int = 0,
        objective: Any = None,
        secure_noise: bool = False,
        augmentations: int = 0,
    ) -> DPTrainResult:
        """DP-SGD over the client's examples `train_x[indices]` (N,1,28,28), `train_y[indices]` (N,).

        Each step takes a Poisson batch (q = batch_size/N, capped at 1; expected size q·N),
        clips every example's gradient to L2 norm `max_grad_norm`, adds N(0, σ²C²) to the
        sum, divides by the expected batch size q·N and takes an SGD step of `learning_rate`.
        There are local_epochs × round(1/q) steps (at most `max_steps` if > 0); each is
        recorded in `accountant`. `objective` (pre_step/post_step, `client_trainers.LocalObjective`)
        adds data-independent terms (FedProx, SCAFFOLD) after the gradient was privatised.
        `seed` fixes batch sampling and noise (pseudo-random, for reproducible experiments);
        `secure_noise`: noise and batch sampling from the OS's CSPRNG (`secure_normal`,
        a generator seeded from `os.urandom`), unseeded and unrepeatable. `augmentations` K > 0
        (image models, bookkeeping clipping): each example is seen as K random shifts of up to
        `augmentation.MAX_SHIFT` pixels and its gradient is their mean (augmentation multiplicity),
        the shifts drawn from the seed too.
        """
        noise_multiplier = check_noise_multiplier(noise_multiplier)
        index_tensor = torch.as_tensor(np.asarray(indices, dtype=np.int64))
        sample_rate = local_sample_rate(len(index_tensor), batch_size)
        total_steps = check_count("local_epochs", local_epochs, low=1) * steps_per_epoch(sample_rate)
        if check_count("max_steps", max_steps, low=0):
            total_steps = min(total_steps, max_steps)
        seed = int.from_bytes(os.urandom(8)) if secure_noise else seed
        sampling, noise = _generators(seed)
        augment = self._augmenter(augmentations, seed)
        optimizer, criterion = self._optimizer(
            learning_rate=_positive("learning_rate", learning_rate),
            noise_multiplier=noise_multiplier,
            expected_batch_size=sample_rate * len(index_tensor),
            generator=noise,
            secure_noise=secure_noise,
        )
        recorded_before = _recorded_steps(accountant)
        optimizer.attach_step_hook(accountant.get_optimizer_hook_fn(sample_rate=sample_rate))
        self.module.train()
        batches = poisson_batches(index_tensor, sample_rate=sample_rate, steps=total_steps, generator=sampling)
        loss_sum, seen = self._take_steps(optimizer, criterion, batches, train_x, train_y, objective, augment)
        recorded = _recorded_steps(accountant) - recorded_before
        if recorded != total_steps:  # fail closed: every step taken must be accounted
            raise PrivacyError(f"accountant recorded {recorded} of {total_steps} DP-SGD steps")
        return DPTrainResult(steps=total_steps, loss=loss_sum / max(seen, 1), sample_rate=sample_rate)

    def _take_steps(
        self,
        optimizer: DPOptimizer,
        criterion: nn.Module,
        batches: Iterator[torch.Tensor],
        train_x: torch.Tensor,
        train_y: torch.Tensor,
        objective: Any,
        augment: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor, int]] | None = None,
    ) -> tuple[float, int]:
        """One DP optimizer step per batch; returns (Σ batch loss × batch size, examples seen).
        `augment`: (x, y) → (K copies of each, their labels, K), for augmentation multiplicity."""
        loss_sum, seen = 0.0, 0
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=_HOOK_WARNING)
            for batch in batches:
                optimizer.zero_grad(set_to_none=True)
                x, y, multiplicity = (train_x[batch], train_y[batch], 1) if augment is None else augment(
                    train_x[batch], train_y[batch]
                )
                loss = self._backward(criterion, x, y, multiplicity)
                if objective is not None:
                    objective.pre_step()
                optimizer.step()  # also empty batches: a noise-only step, as accounted
                if objective is not None:
                    objective.post_step()
                if len(batch):
                    loss_sum += loss.item() * len(batch)
                    seen += len(batch)
        optimizer.zero_grad(set_to_none=True)
        return loss_sum, seen

    def _augmenter(
        self, copies: int, seed: int
    ) -> Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor, int]] | None:
        """(x, y) → (`copies` random shifts of each image, their labels, copies); None for copies 0."""
        if check_count("augmentations", copies, low=0) == 0:
            return None
        if self._bookkeeping is None:
            raise PrivacyError(f"augmentation multiplicity needs grad_sample_mode 'bookkeeping', not {self.grad_sample_mode!r}")
        state = np.random.SeedSequence((int(seed), AUGMENTATION_TAG)).generate_state(1, dtype=np.uint64)
        generator = torch.Generator().manual_seed(int(state[0]))

        def augment(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
            shifted = random_shifts(x, copies=copies, max_shift=MAX_SHIFT, generator=generator)
            return shifted, y.repeat_interleave(copies), copies

        return augment

    def _backward(self, criterion: nn.Module, x: torch.Tensor, y: torch.Tensor, multiplicity: int = 1) -> torch.Tensor:
        """Forward and backward on one batch, leaving what the optimizer clips or noises;
        returns the mean loss. Bookkeeping leaves the clipped sum in `.grad` itself; it alone
        takes `multiplicity` > 1 rows per example (`_augmenter` makes sure)."""
        if self._bookkeeping is not None:
            try:
                return self._bookkeeping.backward(x, y, multiplicity)
            except UnsupportedLayerError as error:  # e.g. a layer called twice: no bound holds
                raise PrivacyError(str(error)) from None
        loss = criterion(self.module(x), y)
        loss.backward()
        return loss

    def _optimizer(
        self, *, learning_rate: float, noise_multiplier: float, expected_batch_size: float, generator: torch.Generator,
        secure_noise: bool = False,
    ) -> tuple[DPOptimizer, nn.Module | DPLossFastGradientClipping]:  # fmt: skip
        """The DP optimizer and the loss to use with it.

        With ghost clipping the optimizer does not clip: the clipping happens in the
        second backward pass that the returned `DPLossFastGradientClipping` runs. A
        plain loss there would train unclipped, so the pair is only built together.
        Bookkeeping clips in `_backward` and shares ghost's noise-only optimizer.
        `secure_noise`: the optimizers' noise from `secure_normal` (`_SecureNoise`).
        """
        sgd = torch.optim.SGD(self.module.parameters(), lr=learning_rate)
        settings = dict(
            noise_multiplier=noise_multiplier,
            max_grad_norm=self.max_grad_norm,
            expected_batch_size=expected_batch_size,
            loss_reduction="mean",
            generator=generator,
        )
        fast = SecureDPOptimizerFastGradientClipping if secure_noise else DPOptimizerFastGradientClipping
        if self.grad_sample_mode == "bookkeeping":
            return fast(sgd, **settings), TaskLoss()
        if self.grad_sample_mode == "ghost":
            optimizer = fast(sgd, **settings)
            return optimizer, DPLossFastGradientClipping(self.module, optimizer, TaskLoss(), "mean")
        return (SecureDPOptimizer if secure_noise else DPOptimizer)(sgd, **settings), TaskLoss()


def _generators(seed: int) -> tuple[torch.Generator, torch.Generator]:
    """Independent generators for batch sampling and for noise, both from `seed`."""
    sampling_seed, noise_seed = np.random.SeedSequence(int(seed)).generate_state(2, dtype=np.uint64)
    return torch.Generator().manual_seed(int(sampling_seed)), torch.Generator().manual_seed(int(noise_seed))


def _recorded_steps(accountant: IAccountant) -> int:
    return sum(int(steps) for _, _, steps in accountant.history)


# -- central DP (DP-FedAvg): the mechanism --------------------------------------------------


def clip_update(delta_vector: torch.Tensor, max_norm: float) -> tuple[torch.Tensor, float]:
    """(update scaled to L2 norm <= max_norm, its original norm). Updates within the bound
    are returned unchanged. `delta_vector` is a client's flat (P,) update, local − global."""
    max_norm = _positive("max_norm", max_norm)
    if delta_vector.dim() != 1:
        raise ValueError(f"delta_vector must be flat (P,), got shape {tuple(delta_vector.shape)}")
    norm = float(torch.linalg.vector_norm(delta_vector.to(torch.float64)))
    if not math.isfinite(norm):
        raise ValueError("client update has non-finite values; it cannot be clipped")
    if norm <= max_norm:
        return delta_vector, norm
    return (delta_vector.to(torch.float64) * (max_norm / norm)).to(delta_vector.dtype), norm


def central_noise(
    sum_vector: torch.Tensor,
    *,
    noise_multiplier: float,
    max_norm: float,
    expected_participants: float,
    generator: torch.Generator | None,
    secure: bool = False,
) -> torch.Tensor:
    """(Σ clipped updates + N(0, σ²C²) per coordinate) / expected_participants, shape (P,).

    The divisor is the *expected* number of participants q·num_clients, fixed in advance
    (McMahan et al. 2018's fixed-denominator estimator): dividing by the realised count
    would make the sensitivity depend on who took part. Updates are summed unweighted,
    each clipped with `clip_update` to `max_norm`; weighting by example counts would break
    the per-client bound C. Noise is added even when nobody took part (sum of zeros).
    The noise comes from `generator` (seeded), or from `secure_normal` if `secure`.
    """
    noise_multiplier = check_noise_multiplier(noise_multiplier)
    max_norm = _positive("max_norm", max_norm)
    _positive("expected_participants", expected_participants)
    noise = gaussian_noise(sum_vector.shape, std=noise_multiplier * max_norm, generator=generator, secure=secure)
    return ((sum_vector.to(torch.float64) + noise) / expected_participants).to(sum_vector.dtype)


# -- adaptive clipping for DP-FedAvg (Andrew et al. 2021) -------------------------------------


def count_noise_stddev(expected_participants: float) -> float:
    """σ_b, the noise on the count of unclipped updates: expected participants / 20, the
    setting Andrew et al. (2021) recommend (it adds about 1/400 to the update noise's variance)."""
    _positive("expected_participants", expected_participants)
    return expected_participants / 20.0


def adaptive_update_noise(*, noise_multiplier: float, count_stddev: float) -> float:
    """The update noise multiplier σ_Δ when the unclipped count is also released with std σ_b.

    Andrew et al. (2021, Thm. 1): the pair is exactly as private as one Gaussian mechanism
    with multiplier σ when σ_Δ = (σ⁻² − (2σ_b)⁻²)^(−1/2), so the accountant keeps using σ.
    Needs σ < 2σ_b: with too few expected participants (σ_b = participants / 20), the count
    would have to be released with more noise than the whole budget σ allows.
    """
    noise_multiplier = check_noise_multiplier(noise_multiplier)
    count_stddev = _positive("count_stddev", count_stddev)
    remaining = noise_multiplier**-2 - (2.0 * count_stddev) ** -2 if noise_multiplier > 0 else -1.0
    if remaining <= 0:
        raise PrivacyError(
            f"adaptive clipping needs σ < 2σ_b = {2 * count_stddev:.3g} (σ_b = expected participants / 20), "
            f"got σ = {noise_multiplier:.3g}: sample more clients per round, or lower σ"
        )
    return remaining**-0.5


def adapt_clip_norm(
    clip_norm: float,
    *,
    unclipped_count: int,
    participants: int,
    expected_participants: float,
    target_quantile: float,
    learning_rate: float,
    count_stddev: float,
    generator: torch.Generator | None,
    secure: bool = False,
) -> tuple[float, float]:
    """(next clip norm, the noised unclipped fraction b̃) by the geometric rule
    C ← C · exp(−η (b̃ − γ)), b̃ = (Σ_k (b_k − ½) + N(0, σ_b²)) / expected participants + ½,
    b_k = [‖Δ_k‖ ≤ C] over the `participants` summed updates (`unclipped_count` = Σ b_k).

    Centring each indicator at ½ (as TF Privacy's QuantileEstimatorQuery) bounds what adding or
    removing one client moves the released count by to ½, the sensitivity `adaptive_update_noise`
    (Andrew et al. 2021, Thm. 1) assumes; the raw count would move by 1 and leak more than accounted.
    C shrinks when more than the target quantile γ of updates fit under it, grows otherwise.
    """
    clip_norm = _positive("clip_norm", clip_norm)
    target_quantile = _quantile(target_quantile)
    learning_rate = _positive("learning_rate", learning_rate)
    participants = check_count("participants", participants, low=0)
    unclipped_count = check_count("unclipped_count", unclipped_count, low=0, high=participants)
    noise = float(gaussian_noise((1,), std=_positive("count_stddev", count_stddev), generator=generator, secure=secure))
    fraction = (unclipped_count - participants / 2.0 + noise) / expected_participants + 0.5
    return next_clip_norm(
        clip_norm, noised_fraction=fraction, target_quantile=target_quantile, learning_rate=learning_rate
    ), fraction


def next_clip_norm(clip_norm: float, *, noised_fraction: float, target_quantile: float, learning_rate: float) -> float:
    """C · exp(−η (b̃ − γ)) for an already noised unclipped fraction b̃ (under secure
    aggregation the clients add the count's noise themselves)."""
    clip_norm = _positive("clip_norm", clip_norm)
    target_quantile = _quantile(target_quantile)
    learning_rate = _positive("learning_rate", learning_rate)
    return clip_norm * math.exp(-learning_rate * (check_number("noised_fraction", noised_fraction) - target_quantile))
