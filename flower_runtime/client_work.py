"""A SuperNode's work for the engine's round loop, behind the ClientApp (`client_app`): one
client's local training (its data found or rebuilt at the site, its own accountant kept in the
node's state, its own privacy floor checked), its step of secure aggregation, and what the
server asks of its data (power-of-choice's loss, personalization).

Only processes that train or answer load this module, and with it torch and the engine: the
ClientApp's `query` (which client a node is) runs without them (a SuperNode starts a fresh
ClientApp process for every message).
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict

import telemetry
from data_handler import FederatedData, client_partitions, split_holdout, subset
from engine.analysis import personalize_client
from engine.client_trainers import NON_FINITE, ClientTrainer, TrainTask, candidate_loss, train_settings
from engine.compression import make_compressor, outgoing_update
from engine.scattering import with_scattering
from engine.workloads import build_model, load_data
from experiment_config import ExperimentConfig
from flower_runtime.messages import (
    CORRECTION, EVALUATION, HEAD, HISTORY, RESIDUAL, RESULT, SENT, SITE, TASK, TOKENIZER, WEIGHTS, History,
    flat_weights, history_from, history_record, history_steps, node_run_config, sent_record, site_data_path,
)  # fmt: skip
from flower_runtime.secure_sum import SECAGG, client_step, hold
from flower_runtime.site_data import at_sites, site_examples, site_split
from model import get_parameters, head_size, set_parameters, unflatten
from privacy.dp_fedavg import secagg_protocol


def client_examples(config: ExperimentConfig, data: FederatedData, client_id: int) -> tuple[np.ndarray, np.ndarray]:
    """(training, held-out) example indices of `client_id`: the partition `FederatedRun` computes.
    `data` is the run's data after `data_handler.subset`."""
    train, held_out = _all_client_examples(config, data)
    return train[client_id], held_out[client_id]


def _all_client_examples(config: ExperimentConfig, data: FederatedData) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Every client's (training, held-out) indices of `data`, as `FederatedRun` splits them."""
    return split_holdout(client_partitions(config, data), config.federation.client_holdout, seed=config.system.seed)


@functools.lru_cache(maxsize=1)
def shared_client_data(config: ExperimentConfig) -> tuple[FederatedData, list[np.ndarray], list[np.ndarray]]:
    """(the run's data after `subset`, every client's training indices, held-out indices) that each
    node rebuilds (MNIST, synthetic NGSS), built once per process and config.

    Flower's simulation engine runs many clients' messages in each of a few long-lived Ray actor
    processes, which would otherwise reload MNIST and repartition it for every message; a SuperNode
    starts a fresh ClientApp process per message, where this is built once either way. Keyed by
    the whole (frozen) config, this site's `data-dir` included: everything the data depends on.
    One entry, so a process holds one run's data. Callers must not modify what it returns.
    """
    data = subset(load_data(config), max_train=config.data.max_train_examples,
                  max_test=config.data.max_test_examples, seed=config.system.seed)  # fmt: skip
    data = with_scattering(config, data)  # scatter models: this site's features, computed once
    return data, *_all_client_examples(config, data)


def site_privacy(node_config: Mapping[str, Any]) -> tuple[float, float, float]:
    """This site's own privacy settings from its `--node-config`: (min-noise-multiplier σ_min,
    max-epsilon, delta). (0, 0, _): the site sets none, and trains as the run's config says."""
    try:
        floor, limit = float(node_config.get("min-noise-multiplier", 0.0)), float(node_config.get("max-epsilon", 0.0))
        delta = float(node_config.get("delta", 1e-5))
    except (TypeError, ValueError) as error:
        raise ValueError(f"this SuperNode's --node-config has a bad privacy setting: {error}") from None
    if floor < 0 or limit < 0 or not 0 < delta < 1:
        raise ValueError("this SuperNode's --node-config needs min-noise-multiplier >= 0, max-epsilon >= 0 and "
                         f"delta in (0, 1); got {floor}, {limit}, {delta}")  # fmt: skip
    return floor, limit, delta


def _checked_noise(config: ExperimentConfig, noise_multiplier: float, node_config: Mapping[str, Any]) -> float:
    """The σ the server asks for, refused unless it is the configured one (or, with a target ε,
    the server's calibration of it), > 0, and at least this site's own floor. A site that sets
    a floor or an ε limit in its `--node-config` (`site_privacy`) trains only with local DP:
    its guarantee is its own, whatever config the server sends (privacy fails closed)."""
    privacy, (floor, limit, _delta) = config.privacy, site_privacy(node_config)
    if privacy.mode != "local":
        if floor > 0 or limit > 0:
            raise ValueError(f"this site trains only with local DP (its --node-config sets min-noise-multiplier or "
                             f"max-epsilon); the server asked for privacy.mode = {privacy.mode!r}")  # fmt: skip
        return 0.0
    if noise_multiplier <= 0 or noise_multiplier < floor:
        raise ValueError(f"the server asked for σ = {noise_multiplier}; this site's floor (min-noise-multiplier) is "
                         f"{floor}")  # fmt: skip
    if privacy.target_epsilon == 0 and noise_multiplier != privacy.noise_multiplier:
        raise ValueError(f"the server asked for σ = {noise_multiplier}; this run's privacy.noise_multiplier is "
                         f"{privacy.noise_multiplier}")  # fmt: skip
    return noise_multiplier


def _check_site_budget(
    node_config: Mapping[str, Any], history: History, noise_multiplier: float, num_examples: int,
    config: ExperimentConfig,
) -> None:  # fmt: skip
    """Refuse a round that would take this site past its own `max-epsilon` (its accountant,
    at its own δ), before it trains."""
    _floor, limit, delta = site_privacy(node_config)
    if limit <= 0 or config.privacy.mode != "local":
        return
    import differential_privacy as dp  # opacus (~1.4 s to import) loads only with local DP

    federation = config.federation
    rate = dp.local_sample_rate(num_examples, federation.batch_size)
    planned = [(noise_multiplier, rate, federation.local_epochs * dp.steps_per_epoch(rate))]
    if dp.would_exceed(history, planned, delta=delta, max_epsilon=limit, accountant=config.privacy.accountant):
        raise ValueError(f"this round would take this site past its max-epsilon = {limit} (δ = {delta})")


def _client_data(
    config: ExperimentConfig, context: Context, message: Message, client_id: int
) -> tuple[torch.Tensor, torch.Tensor, np.ndarray, np.ndarray, int]:
    """(x, y, training indices, held-out indices, number of classes) of this node's client: its
    own file at the site, or its slice of the data every node rebuilds (MNIST, synthetic NGSS)."""
    if at_sites(config):
        site = message.content.config_records[SITE]
        labels, schools = [str(n) for n in site["labels"]], [str(n) for n in site["schools"]]
        tokenizer = message.content.config_records.get(TOKENIZER)
        x, y = site_examples(
            config, site_data_path(context), client_id=client_id, label_names=labels, school_names=schools,
            tokenizer_files={str(k): str(v) for k, v in tokenizer.items()} if tokenizer is not None else {},
        )  # fmt: skip
        return x, y, *site_split(config, len(y), client_id), len(labels)
    data, train, held_out = shared_client_data(config)
    return data.train_x, data.train_y, train[client_id], held_out[client_id], data.num_classes


def train(message: Message, context: Context) -> Message:
    """One round of local training of this node's partition, from the weights sent: the task's
    batch-order seed, step limit (a simulated straggler) and label flip (a simulated attacker)
    as the server's round plan says. The node makes its own upload (`_upload`) and keeps its
    FedPer head: neither its residual nor its head ever leaves it."""
    config, client_id = node_run_config(context)
    if threads := int(context.node_config.get("num-threads", 0)):
        torch.set_num_threads(threads)
    task = message.content.config_records[TASK]
    if int(task["client-id"]) != client_id:
        raise ValueError(f"the server sent client {task['client-id']}'s task to client {client_id}")
    train_x, train_y, indices, holdout, num_classes = _client_data(config, context, message, client_id)
    noise_multiplier = _checked_noise(config, float(task["noise-multiplier"]), context.node_config)
    settings = train_settings(config, num_classes, noise_multiplier=noise_multiplier)
    trainer = _client_trainer(config, settings, train_x, train_y, num_classes)
    global_weights = flat_weights(message.content.array_records[WEIGHTS], trainer.params)
    correction = None  # SCAFFOLD's c − c_i, from the server's control variates
    if CORRECTION in message.content.array_records:
        correction = flat_weights(message.content.array_records[CORRECTION], trainer.params)
    elif settings.corrections:
        raise ValueError("federation.strategy 'scaffold': the server sent no control-variate correction")
    # The node's own accountant, unless the node restarted and the server's copy has more steps.
    history = max(history_from(context.state.config_records.get(HISTORY)),
                  history_from(message.content.config_records.get(HISTORY)), key=history_steps)  # fmt: skip
    _check_site_budget(context.node_config, history, noise_multiplier, len(indices), config)
    round_number, heads = int(task["round"]), _head_size(config, trainer.params)
    new_weights = torch.empty_like(global_weights)
    outcome = trainer.run(
        TrainTask(0, client_id, indices, int(task["seed"]), history, max_steps=int(task["max-steps"]),
                  flip_labels=bool(task["flip-labels"]), head=_kept(context, HEAD, round_number) if heads else None,
                  holdout=holdout if len(holdout) else None, round_number=round_number,
                  trace_context=telemetry.carrier_from(task)),
        global_weights, new_weights, correction,
    )  # fmt: skip
    if settings.local_dp:
        context.state[HISTORY] = history_record(outcome.history)
    sent, sent_bytes, error = new_weights - global_weights, 0, outcome.error  # a failed client's: excluded
    if not error and not torch.isfinite(new_weights).all():
        error = NON_FINITE
    if not error:
        sent, sent_bytes = _upload(config, context, sent, client=client_id, round_number=round_number,
                                   malicious=bool(task["malicious"]), heads=heads)  # fmt: skip
        if heads:
            _keep(context, HEAD, round_number, new_weights[-heads:])
    held = config.federation.secure_aggregation and not error
    if held:  # the server sees only the sum: the upload waits here for the protocol (`secure_sum`)
        # As the round loop has it: under central DP the update itself (clipped at masking), else
        # the difference of the weights it would reconstruct.
        upload = sent if config.privacy.mode == "central" else (global_weights + sent) - global_weights
        hold(context.state, upload, weight=len(indices), round_number=round_number)
    result = {
        "client-id": client_id, "num-examples": len(indices), "steps": outcome.steps, "loss": outcome.loss,
        "seconds": outcome.seconds, "error": error, "sent-bytes": sent_bytes, "held": held,
    }  # fmt: skip
    if outcome.validation_accuracy is not None:
        result["validation-accuracy"] = outcome.validation_accuracy
    content = RecordDict({RESULT: ConfigRecord(result), HISTORY: history_record(outcome.history)})
    if not held:
        content[SENT] = sent_record(sent, config.communication.compression)
    return Message(content, reply_to=message)


def secagg_step(message: Message, context: Context) -> Message:
    """One step of the round's secure aggregation (`secure_sum.client_step`): this node's
    secrets stay in its state; its held upload is masked, never sent as it is."""
    config, client_id = node_run_config(context)
    answer = client_step(secagg_protocol(config), context.state, client_id, message.content.config_records[SECAGG])
    return Message(RecordDict({SECAGG: answer}), reply_to=message)


class _MlxClient:
    """`system.backend = "mlx"` on a node: its client trained by `mlx_runtime.MlxTrainer` (the
    in-process MLX trainer, one slot), with `ClientTrainer.run`'s interface; the exchanged names
    and shapes are the torch model's, as the server's."""

    def __init__(self, config: ExperimentConfig, settings: Any, x: torch.Tensor, y: torch.Tensor, classes: int) -> None:
        from mlx_runtime.trainer import MlxTrainer  # MLX loads only on nodes that train with it

        self.params = get_parameters(build_model(config, classes, seed=config.system.seed))
        size = sum(p.numel() for p in self.params.values())
        self.trainer = MlxTrainer(FederatedData(x, y, x[:0], y[:0], classes), settings, size, 1)

    def run(
        self, task: TrainTask, global_weights: torch.Tensor, out: torch.Tensor, correction: torch.Tensor | None = None
    ) -> Any:
        if correction is not None:
            self.trainer.corrections[0].copy_(correction)
        [outcome] = self.trainer.train(global_weights, [task])
        out.copy_(self.trainer.results[0])
        return outcome


def _client_trainer(
    config: ExperimentConfig, settings: Any, x: torch.Tensor, y: torch.Tensor, num_classes: int
) -> ClientTrainer | _MlxClient:
    """This node's trainer for the run's backend."""
    if config.system.backend == "mlx":
        return _MlxClient(config, settings, x, y, num_classes)
    return ClientTrainer(x, y, settings)


def _head_size(config: ExperimentConfig, params: Mapping[str, torch.Tensor]) -> int:
    """FedPer: the size of the final layer this node keeps; 0 otherwise."""
    return head_size(params) if config.federation.personalization == "fedper" else 0


def _upload(
    config: ExperimentConfig, context: Context, update: torch.Tensor, *, client: int, round_number: int,
    malicious: bool, heads: int,
) -> tuple[torch.Tensor, int]:  # fmt: skip
    """(the update the server receives, bytes sent): `compression.outgoing_update`, as the round
    loop makes it in-process, with this node's own top-k residual (kept by round, `_keep`)."""
    compressor = make_compressor(config)
    if (residual := _kept(context, RESIDUAL, round_number)) is not None:
        compressor.load_state_dict({client: residual})
    sent, sent_bytes = outgoing_update(config, compressor, update, client=client, round_number=round_number,
                                       malicious=malicious, head_size=heads)  # fmt: skip
    if (residual := compressor.state_dict().get(client)) is not None:
        _keep(context, RESIDUAL, round_number, residual)
    return sent, sent_bytes


def _kept(context: Context, name: str, before_round: int) -> torch.Tensor | None:
    """This node's `name` state as it was before `before_round`: the newest kept for an earlier
    round, so a round the server runs again (after its restart) starts from the same state."""
    if name not in context.state.array_records:
        return None
    tensors = context.state.array_records[name].to_torch_state_dict()
    earlier = [int(key) for key in tensors if int(key) < before_round]
    return tensors[str(max(earlier))] if earlier else None


def _keep(context: Context, name: str, round_number: int, tensor: torch.Tensor) -> None:
    """Keep `tensor` as this node's `name` state after `round_number`, with the newest earlier
    one (what a re-run of this round starts from); later ones, from rounds the server lost, go."""
    tensors = context.state.array_records[name].to_torch_state_dict() if name in context.state.array_records else {}
    earlier = [int(key) for key in tensors if int(key) < round_number]
    kept = {str(max(earlier)): tensors[str(max(earlier))]} if earlier else {}
    context.state[name] = ArrayRecord({**kept, str(round_number): tensor.detach().clone()})


def evaluate(message: Message, context: Context) -> Message:
    """What the server would otherwise compute from this client's data: power-of-choice's
    `candidate_loss` of the weights sent, or (after the last round) this client's personalization
    row on its own held-out split, with its own FedPer head."""
    config, client_id = node_run_config(context)
    question = message.content.config_records[EVALUATION]
    if int(question["client-id"]) != client_id:
        raise ValueError(f"the server sent client {question['client-id']}'s question to client {client_id}")
    x, y, indices, holdout, num_classes = _client_data(config, context, message, client_id)
    model = build_model(config, num_classes, seed=config.system.seed)
    params = get_parameters(model)
    weights = flat_weights(message.content.array_records[WEIGHTS], params)
    if question["purpose"] == "candidate-loss":
        set_parameters(model, unflatten(weights, params))
        answer = {"loss": candidate_loss(model, x, y, indices, seed=config.system.seed,
                                         round_number=int(question["round"]), client=client_id)}  # fmt: skip
    elif question["purpose"] == "personalize":
        head = _kept(context, HEAD, sys.maxsize) if _head_size(config, params) else None
        answer = personalize_client(config, model, x, y, indices, holdout, weights, head, client=client_id) \
            if len(holdout) else {"client": client_id, "examples": 0}  # fmt: skip
    else:
        raise ValueError(f"unknown question {question['purpose']!r}")
    return Message(RecordDict({EVALUATION: ConfigRecord(answer)}), reply_to=message)
