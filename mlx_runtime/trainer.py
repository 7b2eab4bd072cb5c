"""Local training on MLX (`system.backend = "mlx"`): the clients' SGD (or AdamW) runs in
MLX, the server side (sampling, aggregation, evaluation) stays the common torch code.

    trainer = MlxTrainer(data, settings, num_params, slots=10)   # same interface as InProcessTrainer
    outcomes = trainer.train(global_weights, tasks)             # trainer.results[task.slot]: (P,)
    trainer.close()

Workloads: MNIST with the CNN or MLP (here), and NGSS rubric scoring with tinyllama-lora
(`mlx_text`: mlx-lm's Llama, LoRA and a multi-label head). MiniLM stays torch-only.

The exchange format is unchanged: the flat float32 torch vector of
`model.flatten(get_parameters(torch_model))`, in torch's parameter order and layouts.
`ExchangeLayout` converts it to and from an MLX model's parameters, one `_Entry` per torch
parameter: its MLX name and the transpose that gives MLX's layout. The MNIST models keep
torch's names but compute in NHWC: conv weights are (O, kH, kW, I) instead of
(O, I, kH, kW), and the CNN's fc1 reads its input flattened as H·W·C instead of C·H·W, so
its columns are permuted. Copies: torch → numpy views are free and every layout change is
a numpy view; `mx.array(view)` then copies once (MLX owns its buffers, and that copy also
makes the permuted layout contiguous); MLX → torch reads each MLX array through a numpy
view and copies once, into the caller's result row.

Needs `mlx`: `pip install 'mlx[cpu]'` on Linux (CPU kernels, compiled on first use),
`pip install mlx` on Apple silicon (Metal); the text model also needs `mlx-lm`. On Linux
the results match torch's but are slow: the mlx[cpu] wheel bundles the single-threaded
reference BLAS, so a round takes about 6× (MLP), 20× (CNN) and 9× (TinyLLama) torch's
time on one thread (`python -m bench.mlx`). Local DP (DP-SGD) is not implemented
here: asking for it raises instead of training without it.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from functools import partial
from typing import Any

import numpy as np
import torch

from engine import objectives
from engine.client_trainers import TaskOutcome, TrainSettings, TrainTask
from data_handler import FederatedData
from model import TEXT_MODELS, create_model, get_parameters

from mlx_runtime.exchange import (  # noqa: F401 (re-exported: the backend's public face)
    _IMPORT_ERROR, EVAL_BATCH, ExchangeLayout, MlxParameters, Placement, _ModuleBase, available, flatten_mlx,
    install_hint, load_flat, mx, mnn, optim, place_parameters, require_mlx, tree_flatten, tree_map, tree_unflatten,
)  # fmt: skip


# -- models: model.py's MNIST networks in NHWC, same parameter names ----------------------


class MnistCNN(_ModuleBase):
    """conv5x5(32) → pool → conv5x5(64) → pool → FC 512 → 10, on NHWC images."""

    # Linear weights whose input is a flattened feature map: torch flattens it (C, H, W),
    # MLX (H, W, C), so the exchange permutes these columns.
    FEATURE_MAP_INPUTS = {"fc1.weight": (64, 7, 7)}

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = mnn.Conv2d(1, 32, kernel_size=5, padding=2)
        self.conv2 = mnn.Conv2d(32, 64, kernel_size=5, padding=2)
        self.pool = mnn.MaxPool2d(2)
        self.fc1 = mnn.Linear(7 * 7 * 64, 512)
        self.fc2 = mnn.Linear(512, num_classes)

    def __call__(self, x: Any) -> Any:  # x: (B, 28, 28, 1)
        x = self.pool(mnn.relu(self.conv1(x)))  # (B, 14, 14, 32)
        x = self.pool(mnn.relu(self.conv2(x)))  # (B, 7, 7, 64)
        x = mnn.relu(self.fc1(x.reshape(x.shape[0], -1)))  # (B, 512)
        return self.fc2(x)  # (B, classes) logits


class MnistMLP(_ModuleBase):
    """The 2NN: 784 → 200 → 200 → 10, ReLU. With one channel, H·W·C = C·H·W: no permutation."""

    FEATURE_MAP_INPUTS: dict[str, tuple[int, int, int]] = {}

    def __init__(self, num_classes: int = 10, hidden: int = 200) -> None:
        super().__init__()
        self.fc1 = mnn.Linear(28 * 28, hidden)
        self.fc2 = mnn.Linear(hidden, hidden)
        self.fc3 = mnn.Linear(hidden, num_classes)

    def __call__(self, x: Any) -> Any:  # x: (B, 28, 28, 1)
        x = mnn.relu(self.fc1(x.reshape(x.shape[0], -1)))
        x = mnn.relu(self.fc2(x))
        return self.fc3(x)


class MnistDPCNN(_ModuleBase):
    """The small tanh CNN for DP (model.py's `MnistDPCNN`) on NHWC images."""

    FEATURE_MAP_INPUTS = {"fc1.weight": (32, 4, 4)}

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = mnn.Conv2d(1, 16, kernel_size=8, stride=2, padding=3)
        self.conv2 = mnn.Conv2d(16, 32, kernel_size=4, stride=2)
        self.pool = mnn.MaxPool2d(2, stride=1)
        self.fc1 = mnn.Linear(4 * 4 * 32, 32)
        self.fc2 = mnn.Linear(32, num_classes)

    def __call__(self, x: Any) -> Any:  # x: (B, 28, 28, 1)
        x = self.pool(mx.tanh(self.conv1(x)))  # (B, 13, 13, 16)
        x = self.pool(mx.tanh(self.conv2(x)))  # (B, 4, 4, 32)
        x = mx.tanh(self.fc1(x.reshape(x.shape[0], -1)))  # (B, 32)
        return self.fc2(x)  # (B, classes) logits


MLX_MODELS = {"cnn": MnistCNN, "mlp": MnistMLP, "cnn-dp": MnistDPCNN}


def create_mlx_model(name: str, *, num_classes: int = 10) -> Any:
    """A fresh MLX model by config name (its initial weights are replaced by `load_flat`)."""
    return _model_class(name)(num_classes=num_classes)


def _model_class(name: str) -> type:
    require_mlx()
    if name not in MLX_MODELS:
        raise ValueError(f"system.backend = 'mlx' supports model.name {' | '.join(MLX_MODELS)}; got {name!r}")
    return MLX_MODELS[name]


def image_layout(model_name: str, num_classes: int) -> ExchangeLayout:
    """The layout of an MNIST model: torch's names, NHWC layouts (see the module docstring)."""
    feature_maps = _model_class(model_name).FEATURE_MAP_INPUTS

    def place(name: str, shape: tuple[int, ...]) -> Placement:
        if len(shape) == 4:  # conv weight: (O, I, kH, kW) → (O, kH, kW, I)
            return name, shape, (0, 2, 3, 1), (shape[0], shape[2], shape[3], shape[1])
        if name in feature_maps:  # (out, C·H·W) → (out, H·W·C)
            channels, height, width = feature_maps[name]
            return name, (shape[0], channels, height, width), (0, 2, 3, 1), shape
        return name, shape, tuple(range(len(shape))), shape

    torch_model = create_model(model_name, num_classes=num_classes, seed=0)  # names, order, shapes
    return ExchangeLayout(place_parameters(get_parameters(torch_model), place))


def images_to_nhwc(x: torch.Tensor) -> Any:
    """(N, C, H, W) torch images → (N, H, W, C) mx.array: a numpy view, then MLX's one copy."""
    return mx.array(x.detach().cpu().numpy().transpose(0, 2, 3, 1))


# -- local training ------------------------------------------------------------------------


def batch_orders(indices: np.ndarray, *, seed: int, local_epochs: int) -> list[np.ndarray]:
    """Each epoch's example order, exactly as `client_trainers.train_client` draws it (the
    same torch.Generator and randperm), so both backends see the same batches."""
    generator = torch.Generator().manual_seed(seed)
    index_tensor = torch.from_numpy(np.asarray(indices, dtype=np.int64))
    return [
        index_tensor[torch.randperm(len(index_tensor), generator=generator)].numpy() for _ in range(local_epochs)
    ]


class ImageWorkload:
    """MNIST images (NHWC) and class labels in MLX, and the MLX model of `settings`.

    The images are converted once (a second copy of the training set, 188 MB for MNIST)."""

    compiled = True  # fixed batch shapes: compiling fuses the element-wise work
    eval_batch = EVAL_BATCH

    def __init__(self, data: FederatedData, settings: TrainSettings) -> None:
        if data.multilabel or tuple(data.train_x.shape[1:]) != (1, 28, 28):
            raise ValueError(
                f"system.backend = 'mlx' trains the MNIST workload only (images (N, 1, 28, 28)); this data has "
                f"inputs {tuple(data.train_x.shape[1:])}: use system.backend = 'torch'"
            )
        self.model = create_mlx_model(settings.model_name, num_classes=settings.num_classes)
        self.layout = image_layout(settings.model_name, settings.num_classes)
        self.train_x = images_to_nhwc(data.train_x)  # (N, 28, 28, 1)
        labels = data.train_y.numpy().astype(np.int32)
        self.train_y = mx.array(labels)
        self.flipped_y = mx.array(settings.num_classes - 1 - labels)  # label-flipping attackers
        self.loss = _mean_cross_entropy

    def inputs(self, indices: np.ndarray) -> Any:
        return self.train_x[mx.array(np.asarray(indices, dtype=np.int32))]

    def labels(self, indices: np.ndarray, flipped: bool) -> Any:
        return (self.flipped_y if flipped else self.train_y)[mx.array(np.asarray(indices, dtype=np.int32))]


def _workload(data: FederatedData, settings: TrainSettings) -> Any:
    """The MNIST workload, or the NGSS one for a text model (`mlx_text`, which needs mlx-lm)."""
    if settings.model_name in TEXT_MODELS:
        from mlx_runtime import text as mlx_text  # transformers, peft and mlx-lm: loaded only for text

        return mlx_text.TextWorkload(data, settings)
    return ImageWorkload(data, settings)


def make_optimizer(name: str, learning_rate: float) -> Any:
    """The MLX twin of `client_trainers.make_optimizer`: plain SGD, or AdamW with torch's
    defaults (β = (0.9, 0.999), ε = 1e-8, decoupled weight decay 0.01, bias correction)."""
    if name == "sgd":
        return optim.SGD(learning_rate=learning_rate)
    if name == "adamw":
        return optim.AdamW(learning_rate=learning_rate, weight_decay=0.01, bias_correction=True)
    raise ValueError(f"system.backend = 'mlx' trains with sgd or adamw; got federation.client_optimizer = {name!r}")


class MlxTrainer:
    """Trains clients one after another in this process with MLX; the same interface and
    semantics as `client_trainers.InProcessTrainer` (SGD or AdamW fresh for each client,
    mean task loss, the same batch order, FedProx/SCAFFOLD terms, FedPer heads, holdout
    accuracy), without local DP. The workload: MNIST (cnn, mlp) or NGSS (tinyllama-lora,
    `mlx_text`).

    Each round the global weights are converted once and every client starts from them
    (MLX arrays are immutable, so no client can change them).
    """

    def __init__(self, data: FederatedData, settings: TrainSettings, num_params: int, slots: int) -> None:
        require_mlx()
        if settings.local_dp:
            raise ValueError(
                "system.backend = 'mlx' does not implement local DP (DP-SGD with per-example clipping and "
                "accounting); use system.backend = 'torch' for privacy.mode = 'local' (or central DP with mlx)"
            )
        self.settings = settings
        self.optimizer = make_optimizer(settings.optimizer, settings.learning_rate)
        self.workload = _workload(data, settings)
        self.model, self.layout = self.workload.model, self.workload.layout
        if self.layout.size != num_params:
            raise ValueError(
                f"{settings.model_name} has {self.layout.size} parameters, the engine expects {num_params}"
            )
        self.true_y = data.train_y  # holdout accuracy is on the true labels, as in torch
        self.results = torch.empty(slots, num_params)
        self.corrections = torch.zeros(slots, num_params) if settings.corrections else None
        self.optimizer.init(self.model.trainable_parameters())
        self._step = self._step_function()

    def _step_function(self) -> Any:
        """One optimizer step on a batch, with g ← ∇loss + μ(w − anchor) + c, the terms computed
        at the pre-step weights like `client_trainers.LocalObjective` (for SGD the same as
        torch's separate step; for AdamW torch adds them to g too)."""
        model, optimizer, mu = self.model, self.optimizer, self.settings.proximal_mu
        loss_and_grad = mnn.value_and_grad(model, self.workload.loss)

        def step(inputs: Any, labels: Any, anchor: MlxParameters, correction: MlxParameters) -> Any:
            loss, grads = loss_and_grad(model, inputs, labels)
            if mu or correction:
                weights = dict(tree_flatten(model.trainable_parameters()))
                terms = []
                for name, grad in tree_flatten(grads):
                    if mu:
                        grad = grad + mu * (weights[name] - anchor[name])
                    if correction:
                        grad = grad + correction[name]
                    terms.append((name, grad))
                grads = tree_unflatten(terms)
            optimizer.update(model, grads)
            return loss

        if not self.workload.compiled:
            return step
        # With mlx[cpu] the MNIST step is BLAS-bound and compiling neither helps nor hurts measurably.
        state = [model.state, optimizer.state]
        return partial(mx.compile, inputs=state, outputs=state)(step)

    def train(self, global_weights: torch.Tensor, tasks: Sequence[TrainTask]) -> list[TaskOutcome]:
        """Train each task's client from `global_weights` (P,); new weights go to `results[task.slot]`."""
        start = self.layout.to_mlx(global_weights)
        anchor = start if self.settings.proximal_mu else {}
        return [self._run(task, global_weights, start, anchor) for task in tasks]

    def _run(
        self, task: TrainTask, global_weights: torch.Tensor, start: MlxParameters, anchor: MlxParameters
    ) -> TaskOutcome:
        started = time.perf_counter()
        mx.random.seed(task.seed)  # LoRA dropout: the same masks for the same task
        if task.head is not None:  # FedPer: the client's own final layer replaces the trailing values
            own = global_weights.clone()
            own[-task.head.numel() :] = task.head
            start = self.layout.to_mlx(own)
        self.model.update(tree_unflatten(list(start.items())))
        _reset(self.optimizer)  # torch makes a fresh optimizer for every client: no moments carried over
        correction = {} if self.corrections is None else self.layout.to_mlx(self.corrections[task.slot])
        steps, loss = self._local_steps(task, anchor, correction)
        flatten_mlx(self.model, self.layout, self.results[task.slot])
        validation = None if task.holdout is None else self.accuracy(task.holdout)
        return TaskOutcome(task, steps, loss, seconds=time.perf_counter() - started, validation_accuracy=validation)

    def _local_steps(self, task: TrainTask, anchor: MlxParameters, correction: MlxParameters) -> tuple[int, float]:
        """The local epochs; returns (steps, mean loss over the examples seen)."""
        settings, workload = self.settings, self.workload
        state = [self.model.state, self.optimizer.state]
        self.model.train()
        steps, seen, loss_sum = 0, 0, 0.0
        for order in batch_orders(task.indices, seed=task.seed, local_epochs=settings.local_epochs):
            for begin in range(0, len(order), settings.batch_size):
                if task.max_steps and steps >= task.max_steps:
                    return steps, loss_sum / max(seen, 1)
                batch = order[begin : begin + settings.batch_size]
                loss = self._step(workload.inputs(batch), workload.labels(batch, task.flip_labels), anchor, correction)
                mx.eval(loss, state)
                steps, seen, loss_sum = steps + 1, seen + len(batch), loss_sum + loss.item() * len(batch)
        return steps, loss_sum / max(seen, 1)

    def logits(self, indices: np.ndarray) -> torch.Tensor:
        """(n, outputs) logits of the current model on training examples `indices`, in evaluation mode."""
        self.model.eval()
        try:
            chunks = [
                np.asarray(self.model(self.workload.inputs(indices[begin : begin + self.workload.eval_batch])))
                for begin in range(0, len(indices), self.workload.eval_batch)
            ]
        finally:
            self.model.train()
        return torch.from_numpy(np.concatenate(chunks))

    def accuracy(self, indices: np.ndarray) -> float:
        """`objectives.accuracy` of the current model on training examples `indices` (true labels); 0 for none."""
        if len(indices) == 0:
            return 0.0
        indices = np.asarray(indices, dtype=np.int64)
        return objectives.accuracy(self.logits(indices), self.true_y[torch.from_numpy(indices)])

    def close(self) -> None:
        pass


def _reset(optimizer: Any) -> None:
    """Zero an optimizer's state (step count, moments) in place; compiled steps hold this dict."""
    state = optimizer.state
    for key, value in list(state.items()):
        if key != "learning_rate":
            state[key] = tree_map(mx.zeros_like, value)


def _mean_cross_entropy(model: Any, images: Any, labels: Any) -> Any:
    return mnn.losses.cross_entropy(model(images), labels, reduction="mean")
