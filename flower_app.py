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

    from flower_deployment import run_local_deployment
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
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

# flwr reads these once, when it is imported: no telemetry, no update check (offline use).
os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict  # noqa: E402
from flwr.clientapp import ClientApp  # noqa: E402
from flwr.common.constant import ErrorCode  # noqa: E402
from flwr.serverapp import Grid, ServerApp  # noqa: E402

from experiment_config import ExperimentConfig  # noqa: E402
from flower_data import at_sites, site_examples, site_reasons, site_split, summarize_site  # noqa: E402

if TYPE_CHECKING:
    import numpy as np
    import torch

    from data_handler import FederatedData

RUNTIME = "flower"  # experiments.runtime of runs recorded by the ServerApp
REPO = Path(__file__).resolve().parent
POLL_SECONDS = 0.5  # how often the ServerApp asks the SuperLink for replies
QUERY_TIMEOUT_S = 60.0  # a new SuperNode that does not say which client it is by then is asked again later
# Record names inside messages.
WEIGHTS, TASK, RESULT, HISTORY, NODE = "weights", "task", "result", "history", "node"
CORRECTION = "correction"  # SCAFFOLD: c − c_i for this client, shaped like the weights
SITE, TOKENIZER = "site", "tokenizer"  # data at the sites: the run's labels and schools; a local tokenizer's files
# Replies the SuperLink makes up when a SuperNode is gone: the client's update never arrived.
UNREACHABLE = (ErrorCode.NODE_UNAVAILABLE, ErrorCode.MESSAGE_UNAVAILABLE, ErrorCode.REPLY_MESSAGE_UNAVAILABLE)

server_app = ServerApp()
client_app = ClientApp()


# -- what travels: the config, the weights, the accountant history -----------------------


@dataclass(frozen=True)
class RunOptions:
    """The run config (`[tool.flwr.app.config]` in pyproject.toml, or `flwr run --run-config`)."""

    experiment: str = ""  # ExperimentConfig as JSON; "" = the defaults
    db_url: str = ""  # "" = DATABASE_URL, else sqlite:///experiments.db (relative to the SuperLink's directory)
    experiment_id: int = 0  # 0: the ServerApp creates the experiment
    round_timeout_s: float = 600.0  # replies later than this are lost
    connect_timeout_s: float = 300.0  # how long to wait for the SuperNodes to join

    @classmethod
    def from_run_config(cls, run_config: Mapping[str, Any]) -> RunOptions:
        options = cls(
            experiment=str(run_config.get("experiment", "")), db_url=str(run_config.get("db-url", "")),
            experiment_id=int(run_config.get("experiment-id", 0)),
            round_timeout_s=float(run_config.get("round-timeout", cls.round_timeout_s)),
            connect_timeout_s=float(run_config.get("connect-timeout", cls.connect_timeout_s)),
        )  # fmt: skip
        if options.round_timeout_s <= 0 or options.connect_timeout_s <= 0:
            raise ValueError("round-timeout and connect-timeout must be > 0 seconds")
        return options

    def to_run_config(self) -> dict[str, Any]:
        return {
            "experiment": self.experiment, "db-url": self.db_url, "experiment-id": self.experiment_id,
            "round-timeout": self.round_timeout_s, "connect-timeout": self.connect_timeout_s,
        }  # fmt: skip

    def config(self) -> ExperimentConfig:
        return ExperimentConfig.from_json(self.experiment) if self.experiment.strip() else ExperimentConfig()


def check_supported(config: ExperimentConfig) -> None:
    """Raise ValueError naming every setting the Flower runtime does not run yet."""
    federation = config.federation
    unsupported = [
        (config.system.backend != "torch", "system.backend must be 'torch'"),
        (federation.secure_aggregation, "federation.secure_aggregation is in-process only"),
        (federation.selection == "power_of_choice", "federation.selection 'power_of_choice' needs client losses"),
        (federation.dropout_probability > 0, "federation.dropout_probability: on Flower clients drop out for real"),
        (federation.round_deadline > 0, "federation.round_deadline: use the round timeout instead"),
        (federation.personalization != "none", "federation.personalization is in-process only"),
        (config.attack.fraction > 0, "attack.fraction: simulated attackers are in-process only"),
        (config.communication.compression != "none", "communication.compression is in-process only"),
    ]
    reasons = [reason for bad, reason in unsupported if bad] + site_reasons(config)
    if reasons:
        raise ValueError("the Flower runtime cannot run this config: " + "; ".join(reasons))


def weights_record(flat: torch.Tensor, like: Mapping[str, torch.Tensor]) -> ArrayRecord:
    """The flat (P,) weights as an ArrayRecord of named tensors shaped like `like`."""
    from model import unflatten

    return ArrayRecord({name: tensor.clone() for name, tensor in unflatten(flat, like).items()})


def flat_weights(record: ArrayRecord, like: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """The (P,) float32 vector of `record`, in the order of `like`; names and shapes must match."""
    import torch

    if set(record.keys()) != set(like):
        raise ValueError(f"weights have parameters {sorted(record.keys())}, the model {sorted(like)}")
    tensors = record.to_torch_state_dict()
    for name, tensor in like.items():
        if tensors[name].shape != tensor.shape:
            raise ValueError(f"{name}: shape {tuple(tensors[name].shape)}, the model's {tuple(tensor.shape)}")
    return torch.cat([tensors[name].reshape(-1).to(torch.float32) for name in like])


History = tuple[tuple[float, float, int], ...]  # local DP: (σ, sample rate, steps) per training


def history_record(history: History) -> ConfigRecord:
    return ConfigRecord({
        "noise-multipliers": [float(s) for s, _, _ in history], "sample-rates": [float(q) for _, q, _ in history],
        "steps": [int(n) for _, _, n in history],
    })  # fmt: skip


def history_steps(history: History) -> int:
    """DP-SGD steps in `history` (the accountant merges repeated (σ, q) into one entry)."""
    return sum(steps for _, _, steps in history)


def history_from(record: ConfigRecord | None) -> History:
    if record is None:
        return ()
    columns = [list(record.get(key, [])) for key in ("noise-multipliers", "sample-rates", "steps")]
    return tuple((float(s), float(q), int(n)) for s, q, n in zip(*columns, strict=True))


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
    from data_handler import split_holdout
    from federated_learning import client_partitions

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
    from data_handler import subset
    from workloads import load_data

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
    """One round of local training of this node's partition, from the weights sent."""
    import torch

    from client_population import client_seed
    from client_trainers import ClientTrainer, TrainTask
    from federated_learning import train_settings

    config, client_id = _client_config(context)
    if threads := int(context.node_config.get("num-threads", 0)):
        torch.set_num_threads(threads)
    task = message.content.config_records[TASK]
    if int(task["client-id"]) != client_id:
        raise ValueError(f"the server sent client {task['client-id']}'s task to client {client_id}")
    round_number, seed = int(task["round"]), config.system.seed
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
        TrainTask(0, client_id, indices, client_seed(seed, round_number, client_id), history,
                  holdout=holdout if len(holdout) else None),
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
    """Run one experiment over the connected SuperNodes, recording it like `cli.execute`
    (`flower_server.record_experiment`)."""
    from database import ExperimentStore
    from flower_server import record_experiment

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
    record_experiment(grid, config, options, store, experiment_id)
