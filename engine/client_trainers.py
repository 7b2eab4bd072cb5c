"""Client training: local SGD, AdamW or DP-SGD for one client (`ClientTrainer`), and the
interface through which the round loop reaches clients (`Trainer`, `RemoteClients`).

The engine (`federated_learning`) hands a trainer the global weights and this round's
`TrainTask`s and reads each client's new weights from the trainer's `results` buffer,
row `task.slot`. `InProcessTrainer` trains them here; `engine.process_pool` in a pool of
single-threaded worker processes; MLX and Flower SuperNodes have trainers of their own.

    trainer = InProcessTrainer(data, settings, num_params, slots=10)
    outcomes = trainer.train(global_weights, tasks)   # trainer.results[task.slot]: (P,)
    trainer.close()
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
from torch import nn

import telemetry
from engine import objectives
from engine.client_population import loss_sample
from engine.secure_aggregation import SecAggConfig, SecAggResult
from data_handler import FederatedData
from engine.strategies import Strategy, make_strategy
from engine.streaming import RunningSum, squared_distance
from engine.workloads import is_text, model_options
from experiment_config import CLIENT_OPTIMIZERS, PRECISIONS, ExperimentConfig, check_one_of
from model import create_model, get_parameters, unflatten

NON_FINITE = "returned non-finite weights (NaN or inf): its training diverged; lower the learning rate"
# TrainTask.fold: where a client's new weights go. "" (ROW): its result row. A streamed round
# (`engine.streaming`): FOLD_SUM adds them to the trainer's running sum and writes no row; FOLD_DROP keeps
# nothing (its update is lost on the way: it trains, and is never aggregated).
ROW, FOLD_SUM, FOLD_DROP = "", "sum", "drop"


@dataclass(frozen=True)
class TrainTask:
    """One client's work in one round; `slot` is its row in the shared result buffer (and,
    with SCAFFOLD, in the correction buffer)."""

    slot: int
    client_id: int
    indices: np.ndarray
    seed: int
    history: tuple[tuple[float, float, int], ...] = ()  # local DP: the client's accountant so far
    max_steps: int = 0  # > 0: stop after this many local steps (a straggler's partial work)
    flip_labels: bool = False  # a label-flipping attacker trains on y → C − 1 − y
    head: torch.Tensor | None = None  # FedPer: the client's own final layer, (head_size,)
    holdout: np.ndarray | None = None  # the client's held-out examples: report local accuracy on them
    round_number: int = 0  # the round it belongs to (a remote client seeds its own upload with it)
    trace_context: dict[str, str] | None = None  # the round's span (`telemetry.inject`): its client span joins it
    fold: str = ROW  # ROW, FOLD_SUM or FOLD_DROP (a `FoldingTrainer` only)
    # A folded client's (f_k, d_k) (`Strategy.fold_factors`): coefficient × f_k, aux d_k·‖x − y_k‖² (q-FedAvg)
    fold_factor: float = 1.0
    distance_factor: float = 0.0


@dataclass(frozen=True)
class TaskOutcome:
    """What a trainer reports for one task; the weights are in the result buffer row."""

    task: TrainTask
    steps: int
    loss: float
    history: tuple[tuple[float, float, int], ...] = ()
    seconds: float = 0.0  # wall-clock training time of this client
    validation_accuracy: float | None = None  # on task.holdout, with the client's new weights
    error: str = ""  # the client failed (an exception in its training): its row holds no update
    # A real fault a remote trainer saw: "dropped" (no node to start it on) or "lost" (it never
    # replied in time), `error` saying which; "" when the task ran. Either way its row holds no update.
    fault: str = ""
    # A remote client that made its upload itself (`compression.outgoing_update`, keeping its own
    # residual and FedPer head): the (P,) update as the server receives it and the bytes it sent.
    # None: the client's new weights are in the result row, and the round loop makes the upload.
    sent: torch.Tensor | None = None
    sent_bytes: int = 0
    # Secure aggregation with remote clients: the client holds its upload for the protocol
    # (`RemoteClients.secure_sum`); the server never sees it, only the sum.
    held: bool = False


class Trainer(Protocol):
    """How the round loop reaches clients (this process, a process pool, MLX, Flower SuperNodes):
    `train` runs this round's tasks from `global_weights` and writes each client's new (P,)
    weights into `results[task.slot]`; with SCAFFOLD the loop first writes each task's gradient
    correction into `corrections[task.slot]`."""

    results: torch.Tensor  # (slots, P)
    corrections: torch.Tensor | None  # (slots, P), or None when the strategy needs none
    # Trainers that can see inside a client's work (this machine's) also have `live`, a (slots + 1,)
    # int64 tensor (`Live`): the local steps each slot's task has taken so far, and a flag that,
    # when set, makes every task stop at its next step (`abort`).

    def train(self, global_weights: torch.Tensor, tasks: Sequence[TrainTask]) -> list[TaskOutcome]: ...

    def close(self) -> None: ...


@runtime_checkable
class FoldingTrainer(Protocol):
    """A trainer that can fold a streamed round's clients where they train (`TrainTask.fold`): each
    client's new weights are added to the trainer's running sum, weighted by `settings.fold_weight`,
    instead of written to a result row."""

    def take_sum(self) -> RunningSum:
        """The sum of what was folded since the last call (across the trainer's processes), and reset."""
        ...


@runtime_checkable
class RemoteClients(Protocol):
    """A trainer whose clients keep their data where they are (Flower SuperNodes): what the round
    loop would otherwise compute from a client's data, the client computes."""

    def candidate_losses(self, global_weights: torch.Tensor, round_number: int, clients: list[int]) -> list[float]:
        """Power-of-choice: each candidate's `candidate_loss` of the global weights, in order."""
        ...

    def secure_sum(
        self, weights: dict[int, float], config: SecAggConfig, *, drop_after_sharing: frozenset[int],
        noise: Any = None, held: frozenset[int] = frozenset(),
    ) -> SecAggResult:  # fmt: skip
        """Secure aggregation of the uploads the clients `weights` names hold (`TaskOutcome.held`),
        each weighted by its weight, run with them as messages (`secure_aggregation`'s four
        exchanges); `drop_after_sharing` leave after sharing their keys (simulated). With central
        DP, `noise` (a `privacy.dp_fedavg.DistributedNoise`): every client in `weights` inputs its
        `noise.input`, of its held upload if it is in `held`, else of nothing (a cover client)."""
        ...


class Live:
    """A live view into this machine's trainers while a round runs, shared with their processes:
    `counts[slot]` = local steps the slot's current task has taken, `counts[-1]` = 1 once every
    task must stop at its next step. `at(slot)` is one task's handle."""

    def __init__(self, slots: int, *, shared: bool = False, counts: torch.Tensor | None = None, slot: int = 0) -> None:
        self.counts = torch.zeros(slots + 1, dtype=torch.int64) if counts is None else counts
        if shared and counts is None:
            self.counts.share_memory_()
        self.slot = slot

    def at(self, slot: int) -> Live:
        return Live(0, counts=self.counts, slot=slot)

    def step(self) -> None:
        self.counts[self.slot] += 1

    def aborted(self) -> bool:
        return bool(self.counts[-1])

    def abort(self) -> None:
        """Every task stops at its next step (its outcome reports the steps it took)."""
        self.counts[-1] = 1

    def steps(self, slots: Sequence[int]) -> int:
        return int(self.counts[list(slots)].sum()) if slots else 0

    def reset(self) -> None:
        self.counts.zero_()


class LocalObjective:
    """Terms a strategy adds to each local gradient g: μ·(w − w_global) (FedProx) and a
    fixed correction c (SCAFFOLD's c − c_i). With SGD (and DP-SGD) they are applied as a
    second SGD step computed at the pre-step weights (`pre_step`/`post_step`), which for
    plain SGD is the same as adding them to the gradient, and works unchanged after DP-SGD
    has clipped and noised g (they do not touch the data). AdamW is not linear in g: there
    `add_to_gradients` adds them to g itself, so AdamW minimises loss + μ/2·‖w − w_global‖².
    """

    def __init__(
        self, params: list[torch.Tensor], anchor: torch.Tensor, *, mu: float, correction: torch.Tensor | None,
        learning_rate: float,
    ) -> None:  # fmt: skip
        shapes = [p.shape for p in params]
        sizes = [p.numel() for p in params]
        self.params, self.mu, self.learning_rate = params, mu, learning_rate
        self.anchor = [a.view(s) for a, s in zip(anchor.split(sizes), shapes, strict=True)]
        self.correction = None if correction is None else [
            c.view(s) for c, s in zip(correction.split(sizes), shapes, strict=True)
        ]  # fmt: skip
        self.pending: list[torch.Tensor] = []

    def pre_step(self) -> None:
        with torch.no_grad():
            self.pending = []
            for i, p in enumerate(self.params):
                if not self.mu:  # SCAFFOLD alone: the correction is fixed for the round
                    self.pending.append(self.correction[i])
                    continue
                extra = (p - self.anchor[i]).mul_(self.mu)
                if self.correction is not None:
                    extra.add_(self.correction[i])
                self.pending.append(extra)

    def add_to_gradients(self, trainable: list[nn.Parameter]) -> None:
        """g += the terms, for an optimizer that is not plain SGD; `trainable` are the model's
        parameters that require grad, in the order of `self.params` (`model.get_parameters`)."""
        self.pre_step()
        with torch.no_grad():
            for p, extra in zip(trainable, self.pending, strict=True):
                if p.grad is None:
                    p.grad = extra.clone()
                else:
                    p.grad.add_(extra)
        self.pending = []

    def post_step(self) -> None:
        with torch.no_grad():
            for p, extra in zip(self.params, self.pending, strict=True):
                p.sub_(extra, alpha=self.learning_rate)
        self.pending = []


def make_optimizer(name: str, model: nn.Module, learning_rate: float) -> torch.optim.Optimizer:
    """A fresh local optimizer over `model`'s parameters (frozen ones have no grad and are skipped)."""
    if name == "sgd":
        return torch.optim.SGD(model.parameters(), lr=learning_rate)
    if name == "adamw":
        return torch.optim.AdamW(model.parameters(), lr=learning_rate)
    check_one_of("client optimizer", name, CLIENT_OPTIMIZERS)
    raise ValueError(f"client optimizer {name!r} has no implementation here")


def autocast_for(precision: str, device: torch.device) -> contextlib.AbstractContextManager[Any]:
    """The context local training runs its forward pass and loss in: nothing for "fp32"; for "bf16",
    `torch.autocast` on `device`'s type (cpu or cuda), which runs matmuls and convolutions in bfloat16
    while the weights, their gradients and the optimizer's state stay float32 (autocast casts a copy
    of each weight per op; backward returns float32 gradients to the float32 parameters), so the
    update sent, aggregation, DP noise and accounting never see bfloat16."""
    if precision == "fp32":
        return contextlib.nullcontext()
    check_one_of("system.precision", precision, PRECISIONS)
    return torch.autocast(device.type, dtype=torch.bfloat16)


def train_client(
    model: nn.Module,
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    indices: np.ndarray,
    *,
    local_epochs: int,
    batch_size: int,
    learning_rate: float,
    seed: int,
    max_steps: int = 0,
    objective: LocalObjective | None = None,
    optimizer_name: str = "sgd",
    live: Live | None = None,
    precision: str = "fp32",
    lengths: torch.Tensor | None = None,
) -> tuple[int, float]:
    """Local training on the client's examples, batches taken by index; returns (steps, mean loss).

    `optimizer_name` "sgd": plain SGD, w ← w − lr·g. "adamw": `torch.optim.AdamW` with lr and
    torch's defaults (β = (0.9, 0.999), ε = 1e-8, decoupled weight decay 0.01), created
    afresh for this call: its moments start at zero every round and never leave the client.
    `max_steps` > 0 stops early (partial work); `objective` adds FedProx/SCAFFOLD terms; `live`
    counts the steps as they are taken and stops them when its abort flag is set; `precision` "bf16"
    runs the forward pass and loss under bf16 autocast (`autocast_for`); `lengths` (tokens per example of
    `train_x`) makes batches of similar length (`epoch_batches`)."""
    generator = torch.Generator().manual_seed(seed)
    index_tensor = torch.from_numpy(np.asarray(indices, dtype=np.int64))
    optimizer = make_optimizer(optimizer_name, model, learning_rate)
    plain_sgd = optimizer_name == "sgd"
    trainable = [p for p in model.parameters() if p.requires_grad]
    criterion = objectives.TaskLoss()
    model.train()
    steps, loss_sum, seen = 0, 0.0, 0
    for _epoch in range(local_epochs):
        for batch in epoch_batches(index_tensor, batch_size, generator, lengths):
            if (max_steps and steps >= max_steps) or (live is not None and live.aborted()):
                return steps, loss_sum / max(seen, 1)
            optimizer.zero_grad(set_to_none=True)
            with autocast_for(precision, train_x.device):
                loss = criterion(model(train_x[batch]), train_y[batch])
            loss.backward()
            if objective is not None and plain_sgd:
                objective.pre_step()
            elif objective is not None:
                objective.add_to_gradients(trainable)
            optimizer.step()
            if objective is not None and plain_sgd:
                objective.post_step()
            steps += 1
            loss_sum += loss.item() * len(batch)
            seen += len(batch)
            if live is not None:
                live.step()
    return steps, loss_sum / max(seen, 1)


# federation.bucket_by_length: batches of similar length are formed within pools of this many batches.
BUCKET_POOL = 16


def epoch_batches(
    indices: torch.Tensor, batch_size: int, generator: torch.Generator, lengths: torch.Tensor | None = None
) -> list[torch.Tensor]:
    """One epoch's batches of `indices`: a random order cut into batches of `batch_size` (the last may be
    short). With `lengths` (tokens per example, by index) the random order is cut into pools of
    `BUCKET_POOL` batches, each pool sorted by length (stable) and cut into batches, and the batches are
    shuffled: every example still comes once an epoch, in as many batches, with less padding."""
    order = indices[torch.randperm(len(indices), generator=generator)]
    if lengths is None:
        return list(order.split(batch_size))
    batches = []
    for pool in order.split(batch_size * BUCKET_POOL):
        batches += pool[torch.sort(lengths[pool], stable=True).indices].split(batch_size)
    return [batches[i] for i in torch.randperm(len(batches), generator=generator)]


def all_finite(values: torch.Tensor) -> bool:
    """Whether every value of a float32 tensor is finite, in one pass with no (P,) mask. NaN and ±inf carry
    through a sum, so a finite float32 sum proves it; a non-finite one may be finite values that overflowed,
    and then the float64 sum decides (it cannot overflow on float32 values; 3× slower, so it goes second)."""
    return bool(torch.isfinite(values.sum())) or bool(torch.isfinite(values.sum(dtype=torch.float64)))


def full_steps(num_examples: int, *, local_epochs: int, batch_size: int) -> int:
    """Local SGD steps of a client's full round of work: epochs × ⌈N / B⌉."""
    return local_epochs * -(-num_examples // batch_size)


@torch.no_grad()
def accuracy_on(model: nn.Module, x: torch.Tensor, y: torch.Tensor, indices: np.ndarray) -> float:
    """Accuracy of `model` on the examples `indices` of (x, y); 0 for no examples."""
    if len(indices) == 0:
        return 0.0
    index_tensor = torch.from_numpy(np.asarray(indices, dtype=np.int64))
    return objectives.accuracy(objectives.predict_logits(model, x[index_tensor]), y[index_tensor])


@torch.no_grad()
def candidate_loss(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, indices: np.ndarray, *, seed: int, round_number: int,
    client: int,
) -> float:  # fmt: skip
    """Power-of-choice's estimate of a candidate's loss: `model`'s mean loss on the seeded
    `loss_sample` of its training examples `indices`."""
    sample = torch.from_numpy(loss_sample(indices, seed, round_number, client))
    return objectives.scores(objectives.predict_logits(model, x[sample]), y[sample])[1]


@dataclass(frozen=True)
class TrainSettings:
    model_name: str
    num_classes: int
    local_epochs: int
    batch_size: int
    learning_rate: float
    local_dp: bool = False  # DP-SGD on every client
    noise_multiplier: float = 0.0
    max_grad_norm: float = 0.0
    accountant: str = "rdp"
    proximal_mu: float = 0.0  # FedProx
    corrections: bool = False  # SCAFFOLD: each task reads its gradient correction from its buffer row
    model_options: dict[str, Any] = dataclasses.field(default_factory=dict)  # text models: LoRA, pretrained
    model_seed: int | None = None  # the run's seed: a randomly initialised frozen backbone must match the server's
    grad_sample_mode: str = ""  # DP-SGD's per-example clipping (`differential_privacy.GRAD_SAMPLE_MODES`); "" = default
    optimizer: str = "sgd"  # the clients' local optimizer (`experiment_config.CLIENT_OPTIMIZERS`); DP-SGD steps with SGD
    secure_noise: bool = False  # local DP: DP-SGD's noise and batch sampling from the OS's CSPRNG
    augmentations: int = 0  # local DP: each example's gradient averaged over this many random shifts (0: off)
    # c_k of a folded client (`Strategy.fold_weight`, a module-level function); None: the strategy never streams
    fold_weight: Callable[[int, int], float] | None = None
    precision: str = "fp32"  # local training's forward pass: fp32, or bf16 autocast (`autocast_for`)
    bucket_by_length: bool = False  # text: batches of responses of similar length (`epoch_batches`)


def train_settings(
    config: ExperimentConfig, num_classes: int, *, noise_multiplier: float, strategy: Strategy | None = None
) -> TrainSettings:
    """What every client trainer of a run is told (σ: the configured or calibrated one; what the
    strategy asks of its clients: `strategy`, or a fresh one of the configured kind)."""
    federation, privacy = config.federation, config.privacy
    strategy = strategy if strategy is not None else make_strategy(federation)
    return TrainSettings(
        model_name=config.model.name,
        num_classes=num_classes,
        model_options=model_options(config),
        model_seed=config.system.seed,
        # Text models run Linear layers over (B, T, features): Opacus's hooks compute their per-example
        # gradients; our bookkeeping clipper handles (B, features) only (and refuses the rest).
        grad_sample_mode="hooks" if is_text(config) else "",
        local_epochs=federation.local_epochs,
        batch_size=federation.batch_size,
        learning_rate=federation.learning_rate,
        local_dp=privacy.mode == "local",
        noise_multiplier=noise_multiplier,
        max_grad_norm=privacy.max_grad_norm,
        accountant=privacy.accountant,
        proximal_mu=strategy.proximal_mu,
        corrections=strategy.uses_corrections,
        optimizer=federation.client_optimizer,
        secure_noise=privacy.secure_noise,
        augmentations=privacy.augmentations,
        fold_weight=strategy.fold_weight,
        precision=config.system.precision,
        bucket_by_length=federation.bucket_by_length,
    )


def token_lengths(token_ids: torch.Tensor, pad_token_id: int) -> torch.Tensor:
    """(N,) each right-padded row's length: the position after its last non-pad token."""
    return objectives.row_lengths(token_ids != pad_token_id)


def cpu_layout(model: nn.Module, *, private: bool) -> nn.Module:
    """`model`, its convolutions' weights (and so their activations) in channels-last layout when it has any
    and trains without DP-SGD: oneDNN's channels-last convolutions take a CNN step at B = 50 on one thread in
    0.87× the time. The weights' values and flat order are unchanged; per-example clipping keeps the default
    layout its hooks were written for."""
    if private or not any(isinstance(m, nn.Conv2d) for m in model.modules()):
        return model
    return model.to(memory_format=torch.channels_last)


class ClientTrainer:
    """One process's trainer: a model reused for every client it trains.

    With local DP the model is wrapped once for per-sample clipping; each task brings
    the client's accountant history and takes the updated one back, so any process
    can train any client and ε stays cumulative.
    """

    def __init__(self, train_x: torch.Tensor, train_y: torch.Tensor, settings: TrainSettings) -> None:
        check_one_of("client optimizer", settings.optimizer, CLIENT_OPTIMIZERS)  # else every client would fail
        if settings.local_dp and settings.optimizer != "sgd":  # privacy fails closed: never DP-SGD in its place
            raise ValueError(f"local DP runs DP-SGD: client optimizer {settings.optimizer!r} cannot be used with it")
        check_one_of("system.precision", settings.precision, PRECISIONS)
        if settings.local_dp and settings.precision != "fp32":  # per-example clipping norms must be exact
            raise ValueError(f"local DP clips per-example gradients in fp32: precision {settings.precision!r} "
                             "cannot be used with it")  # fmt: skip
        self.train_x, self.train_y, self.settings = train_x, train_y, settings
        self.model = cpu_layout(create_model(
            settings.model_name, num_classes=settings.num_classes, seed=settings.model_seed, **settings.model_options
        ), private=settings.local_dp)  # fmt: skip
        self.params = get_parameters(self.model)
        self.lengths = token_lengths(train_x, self.model.pad_token_id) if settings.bucket_by_length else None
        self.dp_model: Any = None
        self._flipped_y: torch.Tensor | None = None
        # Where FOLD_SUM tasks go (set by the trainer that owns this one; this process's row of its sums).
        self.running: RunningSum | None = None

    def run(
        self, task: TrainTask, global_weights: torch.Tensor, out: torch.Tensor, correction: torch.Tensor | None = None,
        live: Live | None = None,
    ) -> TaskOutcome:
        """`_run` inside a "client.train" span that joins the round's trace (`task.trace_context`)."""
        with telemetry.span(
            "client.train", parent=task.trace_context, round=task.round_number, client_id=task.client_id,
            examples=len(task.indices), pid=os.getpid(),
        ) as span:  # fmt: skip
            outcome = self._run(task, global_weights, out, correction, live)
            error_type = outcome.error.split(":")[0] or None  # not the message: it could quote a value of the data
            span.set(steps=outcome.steps, status="error" if outcome.error else "ok", error_type=error_type)
        return outcome

    def _run(
        self, task: TrainTask, global_weights: torch.Tensor, out: torch.Tensor, correction: torch.Tensor | None = None,
        live: Live | None = None,
    ) -> TaskOutcome:
        """Train one client from `global_weights` (with its own head if it keeps one); its
        new weights go to `out` (P,). `correction` (P,): SCAFFOLD's c − c_i. `live`: this task's
        step counter and abort flag (`Live.at(slot)`; local DP's steps are counted per client)."""
        started = time.perf_counter()
        # Dropout (LoRA) draws from the global CPU generator: same result in any process. Only it: torch.manual_seed
        # also queues seeds for CUDA, XPU and MTIA, formatting a stack trace each time (0.7 ms a client).
        torch.default_generator.manual_seed(task.seed)
        for name, tensor in unflatten(global_weights, self.params).items():
            self.params[name].copy_(tensor)
        if task.head is not None:
            self._load_head(task.head)
        settings = self.settings
        objective = None
        if settings.proximal_mu or correction is not None:
            objective = LocalObjective(
                list(self.params.values()), global_weights, mu=settings.proximal_mu, correction=correction,
                learning_rate=settings.learning_rate,
            )  # fmt: skip
        labels = self._labels(task.flip_labels)
        if settings.local_dp:  # an error here fails the run: the steps it took may not be in its accountant
            outcome = self._run_private(task, labels, objective)
            if live is not None:  # DP-SGD's steps are not seen one by one: the client's count at its end
                live.counts[live.slot] += outcome.steps
        else:
            try:
                steps, loss = train_client(
                    self.model, self.train_x, labels, task.indices,
                    local_epochs=settings.local_epochs, batch_size=settings.batch_size,
                    learning_rate=settings.learning_rate, seed=task.seed, max_steps=task.max_steps,
                    objective=objective, optimizer_name=settings.optimizer, live=live, precision=settings.precision,
                    lengths=self.lengths,
                )  # fmt: skip
            except Exception as error:  # a faulty client: the server excludes it and goes on
                if task.fold == ROW:
                    out.copy_(global_weights)
                return TaskOutcome(
                    task, 0, 0.0, seconds=time.perf_counter() - started, error=f"{type(error).__name__}: {error}"
                )
            outcome = TaskOutcome(task, steps, loss)
        if task.fold == ROW:
            torch.cat([p.reshape(-1) for p in self.params.values()], out=out)
        else:
            outcome = self._fold(outcome, global_weights)
        validation = None
        if task.holdout is not None:
            validation = accuracy_on(self.model, self.train_x, self.train_y, task.holdout)
        return dataclasses.replace(outcome, seconds=time.perf_counter() - started, validation_accuracy=validation)

    def _fold(self, outcome: TaskOutcome, global_weights: torch.Tensor) -> TaskOutcome:
        """A streamed client's new weights (the model's parameters) into `self.running`, unless its
        update is lost (FOLD_DROP) or not finite (then it fails, as the round loop fails such a row);
        weighted by the strategy's `fold_weight` × the task's `fold_factor`, with aux d_k·‖x − y_k‖²."""
        task, settings, running = outcome.task, self.settings, self.running
        if running is None or settings.fold_weight is None:
            raise RuntimeError("a folded task reached a trainer without a running sum or a fold weight")
        if task.fold == FOLD_DROP:
            return outcome
        parts = list(self.params.values())
        if not all(all_finite(p) for p in parts):
            return dataclasses.replace(outcome, error=NON_FINITE)
        n = len(task.indices)
        aux = task.distance_factor * squared_distance(parts, global_weights) if task.distance_factor else 0.0
        running.add_parts(parts, coefficient=settings.fold_weight(n, outcome.steps) * task.fold_factor,
                          num_examples=n, steps=outcome.steps, aux=aux)  # fmt: skip
        return outcome

    def _load_head(self, head: torch.Tensor) -> None:
        """Overwrite the trailing `head.numel()` weights of the flat order (the final layer)."""
        remaining = head.numel()
        for tensor in reversed(list(self.params.values())):
            if remaining <= 0:
                break
            take = min(remaining, tensor.numel())
            tensor.view(-1)[-take:].copy_(head[remaining - take : remaining])
            remaining -= take

    def _labels(self, flip: bool) -> torch.Tensor:
        if not flip:
            return self.train_y
        if self._flipped_y is None:
            self._flipped_y = objectives.flip_labels(self.train_y, self.settings.num_classes)
        return self._flipped_y

    def _run_private(self, task: TrainTask, labels: torch.Tensor, objective: LocalObjective | None) -> TaskOutcome:
        import differential_privacy as dp  # opacus: ~66 MB, loaded only by private runs

        settings = self.settings
        if self.dp_model is None:
            mode = settings.grad_sample_mode or dp.DEFAULT_GRAD_SAMPLE_MODE
            self.dp_model = dp.DPSGDModel(self.model, max_grad_norm=settings.max_grad_norm, grad_sample_mode=mode)
        accountant = dp.accountant_from_history(task.history, settings.accountant)
        result = self.dp_model.train(
            self.train_x, labels, task.indices,
            local_epochs=settings.local_epochs, batch_size=settings.batch_size,
            learning_rate=settings.learning_rate, noise_multiplier=settings.noise_multiplier,
            accountant=accountant, seed=task.seed, max_steps=task.max_steps, objective=objective,
            secure_noise=settings.secure_noise, augmentations=settings.augmentations,
        )  # fmt: skip
        history = tuple((float(s), float(q), int(n)) for s, q, n in accountant.history)
        return TaskOutcome(task, result.steps, result.loss, history)


def result_rows(slots: int, num_params: int, *, folding: bool, shared: bool) -> torch.Tensor:
    """The (slots, P) result buffer. A trainer whose rounds are folded (`FoldingTrainer`) writes no
    row: every slot is then a view of one row (stride 0), so 10,000 slots cost P values, not 10,000·P."""
    rows = torch.zeros(1 if folding else slots, num_params)
    if shared:
        rows.share_memory_()
    return rows.expand(slots, num_params) if folding else rows


class InProcessTrainer:
    """Trains clients one after another in this process, with all of torch's threads. `folding`: the
    run streams (`engine.streaming`), its clients are folded into `take_sum`'s sum, not result rows."""

    def __init__(
        self, data: FederatedData, settings: TrainSettings, num_params: int, slots: int, *, folding: bool = False
    ) -> None:
        self.trainer = ClientTrainer(data.train_x, data.train_y, settings)
        self.trainer.running = RunningSum(num_params)
        self.results = result_rows(slots, num_params, folding=folding, shared=False)
        self.corrections = torch.zeros(slots, num_params) if settings.corrections else None
        self.live = Live(slots)

    def take_sum(self) -> RunningSum:
        running = self.trainer.running
        taken = RunningSum(running.num_params, values=running.values.clone())
        running.reset()
        return taken

    def train(self, global_weights: torch.Tensor, tasks: Sequence[TrainTask]) -> list[TaskOutcome]:
        corrections = self.corrections
        return [
            self.trainer.run(
                task, global_weights, self.results[task.slot], None if corrections is None else corrections[task.slot],
                self.live.at(task.slot),
            )
            for task in tasks
        ]

    def close(self) -> None:
        pass
