"""The same experiments on Flower: a ServerApp and a ClientApp over this project's engine.

Flower (`flwr`) carries the rounds between real processes: a SuperLink routes messages, one
SuperNode per site runs the ClientApp next to its data, and the ServerApp drives the rounds.
What runs inside them is this project's code, not a second implementation:

- the ServerApp (`flower_server`) plans the run with the engine's `FederatedRun` (partition
  plan, initial model, client sampling, `strategies.make_strategy`, privacy plan),
  aggregates the updates that arrive (with central DP: clipped and noised by DP-FedAvg's
  `CentralSum`), evaluates on the test split (NGSS: rubric metrics per school) and records
  every round with `ExperimentStore.record_round` (experiment runtime "flower"), so the
  app's live view and history show a Flower run like an in-process one;
- each ClientApp finds its own data: its partition exactly as the engine computes it (same
  seeded subset, partition and holdout of MNIST or the synthetic NGSS responses; its
  `partition-id` is the client id), or, for imported NGSS responses, its school's own CSV
  file (`data-path`; `flower_data`: the rows never leave the site), and trains it with
  `client_trainers.ClientTrainer` (local SGD or DP-SGD), seeded by (seed, round, client).

What travels: the `ExperimentConfig` as JSON under the run-config key `experiment` (with
`db-url`, `experiment-id` and the timeouts); each round, a `train` message with the global
weights (an ArrayRecord of the model's cleanly named parameters), the round number, σ and,
with local DP, the server's copy of the client's accountant history, with SCAFFOLD the
client's correction c − c_i (the control variates stay on the server, in the strategy), and
with the data at the sites the run's rubric elements and schools (and a TinyLLama-from-config
tokenizer); each reply with the new weights (text models: LoRA + head only), steps, loss and
the client's full history. The client keeps its history in its
node state (`context.state`), so ε is cumulative over every round it trained, even rounds
whose reply was lost; a SuperNode that restarted (empty state) continues from the server's
copy. Every wait has a timeout: a client whose reply does not come within `round-timeout`
is recorded "lost" and the round completes with the others, or is skipped (model
unchanged, recorded) below `federation.min_clients`.

Run it on this machine (a SuperLink and one SuperNode per client on loopback, started and
stopped by PID; `insecure` is only for loopback):

    from flower_runtime.deployment import run_local_deployment
    experiment_id = run_local_deployment(config, db_url="sqlite:///experiments.db")

Across machines (the real recipe; Flower's docs: "Enable TLS connections", "Authenticate
SuperNodes"):

1. Server: `flower-superlink --host 0.0.0.0 --port 9093 --ssl-ca-certfile ca.crt
   --ssl-certfile server.pem --ssl-keyfile server.key --enable-supernode-auth
   --disable-runtime-dependency-installation` (one HTTPS port for the Fleet, Control and
   ServerApp APIs; it listens on 127.0.0.1:8000 unless told otherwise). Register each
   site's public key: `flwr supernode register site.pub <connection>`. The ServerApp runs
   here, so the database (`db-url`) and MNIST (or, for imported NGSS responses, the
   `{task}_test.csv` beside `data.csv_path`) must be reachable from here.
2. Each site: `flower-supernode --superlink server.example.org:9093 --root-certificates
   ca.crt --auth-supernode-private-key site.key --node-config "partition-id=3
   num-partitions=10 data-dir='/srv/mnist'"` (`data-dir` overrides `data.data_dir`;
   optional `num-threads`). A school with imported NGSS responses names its own file instead:
   `--node-config "partition-id=0 num-partitions=9 data-path='/srv/ngss/our_school.csv'"`
   (partition-id: the school's place in the sorted school names of the test file). Sites
   need this repository's Python requirements installed: the FAB carries the code, not its
   dependencies.
3. Anywhere with this checkout: a connection in `$FLWR_HOME/config.toml`
   (`[superlink.lab] address = "server.example.org:9093"`, `root-certificates = "ca.crt"`),
   then `flwr run . lab --run-config run.toml`, with `run.toml` holding
   `experiment = '<ExperimentConfig JSON>'` and `db-url = "postgresql+psycopg://..."`.

Not on Flower yet (refused by `check_supported`): MLX, secure aggregation (with or without
central DP), power-of-choice selection, simulated dropouts, deadlines, attacks, compression
and personalization; imported NGSS responses need `data.partition = "natural"`.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from logging import INFO, WARNING
from typing import Any

import numpy as np
import torch
from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.common import log
from flwr.serverapp import Grid, ServerApp

from data_handler import FederatedData, split_holdout, subset
from database import ExperimentStore
from engine.client_trainers import ClientTrainer, TrainTask
from engine.workloads import load_data
from experiment_config import ExperimentConfig
from federated_learning import client_partitions, train_settings
from flower_runtime.messages import (  # noqa: F401 (re-exported: the app's public face)
    CORRECTION, HISTORY, NODE, POLL_SECONDS, QUERY_TIMEOUT_S, REPO, RESULT, RUNTIME, SITE, TASK, TOKENIZER,
    UNREACHABLE, WEIGHTS, History, RunOptions, check_supported, flat_weights, history_from, history_record,
    history_steps, weights_record,
)  # fmt: skip
from flower_runtime.server import FlowerRuntime
from flower_runtime.site_data import at_sites, site_examples, site_split, summarize_site
from runs import service
from runs.workers import StopSignals

server_app = ServerApp()
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


def _checked_noise(config: ExperimentConfig, noise_multiplier: float) -> float:
    """The σ the server asks for, refused unless it is the configured one (or, with a target
    ε, the server's calibration of it) and > 0: privacy fails closed."""
    privacy = config.privacy
    if privacy.mode != "local":
        return 0.0
    if noise_multiplier <= 0 or (privacy.target_epsilon == 0 and noise_multiplier != privacy.noise_multiplier):
        raise ValueError(f"the server asked for σ = {noise_multiplier}; this run's privacy.noise_multiplier is "
                         f"{privacy.noise_multiplier}")  # fmt: skip
    return noise_multiplier


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
    noise_multiplier = _checked_noise(config, float(task["noise-multiplier"]))
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


@server_app.main()
def server_main(grid: Grid, context: Context) -> None:
    """Run one experiment over the connected SuperNodes with the engine's round loop, recorded
    (and resumed from its checkpoint) by the runs service exactly as an in-process run."""
    options = RunOptions.from_run_config(context.run_config)
    store = ExperimentStore(options.db_url or None)
    try:
        config = options.config()
        check_supported(config)
    except ValueError as error:
        if options.experiment_id:
            store.finish(options.experiment_id, "failed", error=f"ValueError: {error}")
        raise
    experiment_id = options.experiment_id or store.create_experiment(config.to_dict(), runtime=RUNTIME)
    outcome = record_experiment(grid, config, options, store, experiment_id)
    if outcome.status == "failed":  # Flower records the run failed too
        raise RuntimeError(outcome.final.get("error", "the run failed"))


def record_experiment(
    grid: Grid, config: ExperimentConfig, options: RunOptions, store: ExperimentStore, experiment_id: int
) -> service.RunOutcome:
    """Run (or resume, from its checkpoint) a stored experiment on the SuperNodes `grid` reaches:
    the engine's round loop with `FlowerTrainer`, each round committed with its checkpoint."""
    return service.execute(store, experiment_id, config, reporter=FlowerLog(), signals=StopSignals(handle=False),
                           remote=FlowerRuntime(grid, options))  # fmt: skip


class FlowerLog:
    """The ServerApp's `runs.service.Reporter`: Flower's log."""

    def round(self, row: dict[str, Any]) -> None:
        arrived = sum(c["status"] in ("ok", "partial") for c in row["clients"])
        log(INFO, "round %d: accuracy %.4f, %d of %d updates arrived, %.1f s", row["round"], row["accuracy"],
            arrived, len(row["clients"]), row["seconds"])  # fmt: skip

    def note(self, text: str) -> None:
        log(INFO, "%s", text)

    def error(self, text: str) -> None:
        log(WARNING, "%s", text)
