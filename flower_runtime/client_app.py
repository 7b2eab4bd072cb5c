"""The ClientApp: on each SuperNode, one client's local training for the engine's round loop
(its data found or rebuilt at the site, its own accountant kept in the node's state, its own
privacy floor checked); and the `query` that tells the server which client the node is.

Components: `flwr run` loads `client_app` from here and `server_app` from `server_app`, so a
ClientApp process never imports the server side (database, runs service, the round loop).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp

from data_handler import FederatedData, client_partitions, split_holdout, subset
from engine.client_trainers import ClientTrainer, TrainTask, train_settings
from engine.workloads import load_data
from experiment_config import ExperimentConfig
from flower_runtime.messages import (  # noqa: F401 (re-exported: the app's public face)
    CORRECTION, HISTORY, NODE, POLL_SECONDS, QUERY_TIMEOUT_S, REPO, RESULT, RUNTIME, SITE, TASK, TOKENIZER,
    UNREACHABLE, WEIGHTS, History, RunOptions, check_supported, flat_weights, history_from, history_record,
    history_steps, weights_record,
)  # fmt: skip
from flower_runtime.site_data import at_sites, site_examples, site_split, summarize_site

client_app = ClientApp()


# -- the ClientApp ----------------------------------------------------------------------


def node_partition(node_config: Mapping[str, Any]) -> tuple[int, int]:
    """(partition id, number of partitions) from a SuperNode's `--node-config`."""
    try:
        partition_id, num_partitions = int(node_config["partition-id"]), int(node_config["num-partitions"])
    except KeyError as missing:
        raise ValueError(f"this SuperNode has no {missing} in its --node-config") from None
    if not 0 <= partition_id < num_partitions:
        raise ValueError(f"partition-id {partition_id} is not in [0, num-partitions = {num_partitions})")
    return partition_id, num_partitions


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
    return data, *_all_client_examples(config, data)


def _client_config(context: Context) -> tuple[ExperimentConfig, int]:
    """The run's config (with this site's `data-dir`, if it names one) and this node's client id."""
    config = RunOptions.from_run_config(context.run_config).config()
    client_id, num_partitions = node_partition(context.node_config)
    if num_partitions != config.federation.num_clients:
        raise ValueError(
            f"this SuperNode has num-partitions = {num_partitions}, the run federation.num_clients = "
            f"{config.federation.num_clients}"
        )
    if data_dir := str(context.node_config.get("data-dir", "")):
        config = config.replace("data", data_dir=data_dir)
    return config, client_id


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


def _data_path(context: Context) -> str:
    """This site's own training file (`--node-config data-path=...`)."""
    if not (path := str(context.node_config.get("data-path", ""))):
        raise ValueError("this SuperNode has no data-path in its --node-config: with data.dataset 'csv' each site "
                         "trains on its own school's CSV file")  # fmt: skip
    return path


@client_app.query()
def describe(message: Message, context: Context) -> Message:
    """Which client this SuperNode is: its partition id and the number of partitions; with the
    data at the sites also its number of responses, its school and its rubric elements."""
    partition_id, num_partitions = node_partition(context.node_config)
    record = ConfigRecord({"partition-id": partition_id, "num-partitions": num_partitions})
    config = RunOptions.from_run_config(context.run_config).config()
    if at_sites(config):
        summary = summarize_site(config, _data_path(context))
        record.update({"num-examples": summary.num_examples, "school": summary.school,
                       "labels": list(summary.label_names)})  # fmt: skip
    return Message(RecordDict({NODE: record}), reply_to=message)


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
            config, _data_path(context), client_id=client_id, label_names=labels, school_names=schools,
            tokenizer_files={str(k): str(v) for k, v in tokenizer.items()} if tokenizer is not None else {},
        )  # fmt: skip
        return x, y, *site_split(config, len(y), client_id), len(labels)
    data, train, held_out = shared_client_data(config)
    return data.train_x, data.train_y, train[client_id], held_out[client_id], data.num_classes


@client_app.train()
def train(message: Message, context: Context) -> Message:
    """One round of local training of this node's partition, from the weights sent: the task's
    batch-order seed, step limit (a simulated straggler) and label flip (a simulated attacker)
    as the server's round plan says."""
    config, client_id = _client_config(context)
    if threads := int(context.node_config.get("num-threads", 0)):
        torch.set_num_threads(threads)
    task = message.content.config_records[TASK]
    if int(task["client-id"]) != client_id:
        raise ValueError(f"the server sent client {task['client-id']}'s task to client {client_id}")
    train_x, train_y, indices, holdout, num_classes = _client_data(config, context, message, client_id)
    noise_multiplier = _checked_noise(config, float(task["noise-multiplier"]), context.node_config)
    settings = train_settings(config, num_classes, noise_multiplier=noise_multiplier)
    trainer = ClientTrainer(train_x, train_y, settings)
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
    new_weights = torch.empty_like(global_weights)
    outcome = trainer.run(
        TrainTask(0, client_id, indices, int(task["seed"]), history, max_steps=int(task["max-steps"]),
                  flip_labels=bool(task["flip-labels"]), holdout=holdout if len(holdout) else None),
        global_weights, new_weights, correction,
    )  # fmt: skip
    if settings.local_dp:
        context.state[HISTORY] = history_record(outcome.history)
    result = {
        "client-id": client_id, "num-examples": len(indices), "steps": outcome.steps, "loss": outcome.loss,
        "seconds": outcome.seconds, "error": outcome.error,
    }  # fmt: skip
    if outcome.validation_accuracy is not None:
        result["validation-accuracy"] = outcome.validation_accuracy
    content = RecordDict({
        WEIGHTS: weights_record(new_weights, trainer.params), RESULT: ConfigRecord(result),
        HISTORY: history_record(outcome.history),
    })  # fmt: skip
    return Message(content, reply_to=message)


# -- the ServerApp ----------------------------------------------------------------------
