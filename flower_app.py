"""The same experiments on Flower: a ServerApp and a ClientApp over this project's engine.

Flower (`flwr`) carries the rounds between real processes: a SuperLink routes messages, one
SuperNode per site runs the ClientApp next to its data, and the ServerApp drives the rounds.
What runs inside them is this project's code, not a second implementation:

- the ServerApp plans the run with the engine's `FederatedRun` (partition plan, initial
  model, client sampling, `strategies.make_strategy`, privacy plan), aggregates the
  updates that arrive, evaluates on the test split and records every round with
  `ExperimentStore.record_round` (experiment runtime "flower"), so the app's live view and
  history show a Flower run like an in-process one;
- each ClientApp computes its own partition exactly as the engine does (same seeded
  subset, partition and holdout; its `partition-id` is the client id) and trains it with
  `client_trainers.ClientTrainer` (local SGD or DP-SGD), seeded by (seed, round, client).

What travels: the `ExperimentConfig` as JSON under the run-config key `experiment` (with
`db-url`, `experiment-id` and the timeouts); each round, a `train` message with the global
weights (an ArrayRecord of the model's cleanly named parameters), the round number, σ and,
with local DP, the server's copy of the client's accountant history; each reply with the new
weights, steps, loss and the client's full history. The client keeps its history in its
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
   here, so the database (`db-url`) and MNIST must be reachable from here.
2. Each site: `flower-supernode --superlink server.example.org:9093 --root-certificates
   ca.crt --auth-supernode-private-key site.key --node-config "partition-id=3
   num-partitions=10 data-dir='/srv/mnist'"` (`data-dir` overrides `data.data_dir`;
   optional `num-threads`). Sites need this repository's Python requirements installed:
   the FAB carries the code, not its dependencies.
3. Anywhere with this checkout: a connection in `$FLWR_HOME/config.toml`
   (`[superlink.lab] address = "server.example.org:9093"`, `root-certificates = "ca.crt"`),
   then `flwr run . lab --run-config run.toml`, with `run.toml` holding
   `experiment = '<ExperimentConfig JSON>'` and `db-url = "postgresql+psycopg://..."`.

Not on Flower yet (refused by `check_supported`): text workloads, MLX, central DP and
secure aggregation, SCAFFOLD, power-of-choice selection, simulated dropouts, deadlines,
attacks, compression and personalization.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from logging import INFO
from pathlib import Path
from typing import TYPE_CHECKING, Any

# flwr reads these once, when it is imported: no telemetry, no update check (offline use).
os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, RecordDict  # noqa: E402
from flwr.clientapp import ClientApp  # noqa: E402
from flwr.common import log  # noqa: E402
from flwr.common.constant import ErrorCode  # noqa: E402
from flwr.serverapp import Grid, ServerApp  # noqa: E402

from experiment_config import ExperimentConfig  # noqa: E402

if TYPE_CHECKING:
    import numpy as np
    import torch

    from client_trainers import TaskOutcome
    from data_handler import FederatedData
    from database import ExperimentStore
    from federated_learning import RoundResult

RUNTIME = "flower"  # experiments.runtime of runs recorded by the ServerApp
REPO = Path(__file__).resolve().parent
POLL_SECONDS = 0.5  # how often the ServerApp asks the SuperLink for replies
QUERY_TIMEOUT_S = 60.0  # a new SuperNode that does not say which client it is by then is asked again later
# Record names inside messages.
WEIGHTS, TASK, RESULT, HISTORY, NODE = "weights", "task", "result", "history", "node"
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
        (config.data.dataset != "mnist", "data.dataset must be 'mnist'"),
        (config.system.backend != "torch", "system.backend must be 'torch'"),
        (config.privacy.mode == "central", "privacy.mode 'central' (server-side noise) is in-process only"),
        (federation.secure_aggregation, "federation.secure_aggregation is in-process only"),
        (federation.strategy == "scaffold", "federation.strategy 'scaffold' (control variates) is in-process only"),
        (federation.selection == "power_of_choice", "federation.selection 'power_of_choice' needs client losses"),
        (federation.dropout_probability > 0, "federation.dropout_probability: on Flower clients drop out for real"),
        (federation.round_deadline > 0, "federation.round_deadline: use the round timeout instead"),
        (federation.personalization != "none", "federation.personalization is in-process only"),
        (config.attack.fraction > 0, "attack.fraction: simulated attackers are in-process only"),
        (config.communication.compression != "none", "communication.compression is in-process only"),
    ]
    reasons = [reason for bad, reason in unsupported if bad]
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
    from data_handler import split_holdout
    from federated_learning import client_partitions

    parts = client_partitions(config, data)
    train, held_out = split_holdout(parts, config.federation.client_holdout, seed=config.system.seed)
    return train[client_id], held_out[client_id]


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


@client_app.query()
def describe(message: Message, context: Context) -> Message:
    """Which client this SuperNode is: its partition id and the number of partitions."""
    partition_id, num_partitions = node_partition(context.node_config)
    record = ConfigRecord({"partition-id": partition_id, "num-partitions": num_partitions})
    return Message(RecordDict({NODE: record}), reply_to=message)


@client_app.train()
def train(message: Message, context: Context) -> Message:
    """One round of local training of this node's partition, from the weights sent."""
    import torch

    from client_population import client_seed
    from client_trainers import ClientTrainer, TrainTask
    from data_handler import subset
    from federated_learning import train_settings
    from workloads import load_data

    config, client_id = _client_config(context)
    if threads := int(context.node_config.get("num-threads", 0)):
        torch.set_num_threads(threads)
    task = message.content.config_records[TASK]
    if int(task["client-id"]) != client_id:
        raise ValueError(f"the server sent client {task['client-id']}'s task to client {client_id}")
    round_number, seed = int(task["round"]), config.system.seed
    data = subset(load_data(config), max_train=config.data.max_train_examples,
                  max_test=config.data.max_test_examples, seed=seed)  # fmt: skip
    indices, holdout = client_examples(config, data, client_id)
    noise_multiplier = _checked_noise(config, float(task["noise-multiplier"]))
    settings = train_settings(config, data.num_classes, noise_multiplier=noise_multiplier)
    trainer = ClientTrainer(data.train_x, data.train_y, settings)
    global_weights = flat_weights(message.content.array_records[WEIGHTS], trainer.params)
    # The node's own accountant, unless the node restarted and the server's copy has more steps.
    history = max(history_from(context.state.config_records.get(HISTORY)),
                  history_from(message.content.config_records.get(HISTORY)), key=history_steps)  # fmt: skip
    new_weights = torch.empty_like(global_weights)
    outcome = trainer.run(
        TrainTask(0, client_id, indices, client_seed(seed, round_number, client_id), history,
                  holdout=holdout if len(holdout) else None),
        global_weights, new_weights,
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


def exchange(grid: Grid, messages: Mapping[Any, Message], *, timeout_s: float) -> dict[Any, Message]:
    """Send `messages` ({key: message}) and collect replies until all came or `timeout_s`
    passed; returns {key: reply} for the replies that came."""
    if not messages:
        return {}
    keys = list(messages)
    message_ids = list(grid.push_messages([messages[k] for k in keys]))
    if len(message_ids) != len(keys):  # the SuperLink refused the whole batch (too large)
        raise RuntimeError(f"the SuperLink accepted {len(message_ids)} of {len(keys)} messages")
    pending = {message_id: key for message_id, key in zip(message_ids, keys, strict=True) if message_id}
    replies, deadline = {}, time.monotonic() + timeout_s
    while pending and time.monotonic() < deadline:
        for reply in grid.pull_messages(list(pending)):
            if (key := pending.pop(reply.metadata.reply_to_message_id, None)) is not None:
                replies[key] = reply
        if pending:
            time.sleep(POLL_SECONDS)
    return replies


class NodeDirectory:
    """Which SuperNode hosts which client, learnt by asking each new node its partition id.
    A node that joins later for a client already known (a restarted site) replaces the old one."""

    def __init__(self, num_clients: int) -> None:
        self.num_clients = num_clients
        self.nodes: dict[int, int] = {}  # client id → node id
        self.asked: set[int] = set()

    def refresh(self, grid: Grid, *, timeout_s: float) -> None:
        new = [node for node in grid.get_node_ids() if node not in self.asked]
        questions = {node: Message(RecordDict(), dst_node_id=node, message_type=MessageType.QUERY, ttl=timeout_s)
                     for node in new}  # fmt: skip
        for node, reply in exchange(grid, questions, timeout_s=timeout_s).items():
            self.asked.add(node)
            if reply.has_error() and reply.error.code in UNREACHABLE:  # gone already
                continue
            if reply.has_error():  # a site set up wrongly (no partition-id, say): fail closed
                raise RuntimeError(f"SuperNode {node} cannot serve this run: {reply.error.reason}")
            record = reply.content.config_records[NODE]
            if int(record["num-partitions"]) != self.num_clients:
                raise RuntimeError(
                    f"SuperNode {node} has num-partitions = {record['num-partitions']}, the run "
                    f"federation.num_clients = {self.num_clients}"
                )
            self.nodes[int(record["partition-id"])] = node

    def wait_for_all(self, grid: Grid, *, timeout_s: float, at_least: int) -> None:
        """Refresh until every client has its node, or `timeout_s`; fewer than `at_least` then is an error."""
        deadline = time.monotonic() + timeout_s
        while len(self.nodes) < self.num_clients and (left := deadline - time.monotonic()) > 0:
            self.refresh(grid, timeout_s=left)
            if len(self.nodes) < self.num_clients:
                time.sleep(min(POLL_SECONDS, max(deadline - time.monotonic(), 0)))
        if len(self.nodes) < at_least:
            raise RuntimeError(
                f"{len(self.nodes)} of {self.num_clients} SuperNodes joined within {timeout_s:.0f} s, fewer than "
                f"federation.min_clients = {at_least}"
            )
        log(INFO, "clients on SuperNodes: %s", dict(sorted(self.nodes.items())))


class Coordinator:
    """The ServerApp's side of one experiment. The engine's `FederatedRun` holds the plan
    (partition sizes, model, sampling, strategy, privacy, participation); Flower carries
    each round's training to the SuperNodes."""

    def __init__(self, grid: Grid, config: ExperimentConfig, options: RunOptions) -> None:
        from federated_learning import FederatedRun
        from model import flatten, get_parameters

        self.grid, self.config, self.options = grid, config, options
        self.run = FederatedRun(config)
        self.params = get_parameters(self.run.model)
        self.weights = flatten(self.params)  # (P,) the global model
        self.nodes = NodeDirectory(config.federation.num_clients)

    def rounds(self, should_stop: Any) -> Iterator[RoundResult]:
        """Yield each round's result; stop early like the engine (budget, `should_stop()`)."""
        run, federation = self.run, self.config.federation
        self.nodes.wait_for_all(self.grid, timeout_s=self.options.connect_timeout_s, at_least=federation.min_clients)
        for round_number in range(1, federation.rounds + 1):
            clients = run.sample_clients(round_number)
            if (reason := run.budget_exhausted(round_number, clients)) is not None:
                run.stop_reason = reason
                return
            yield self.round(round_number, clients)
            if should_stop():
                run.stop_reason = "stopped on request"
                return

    def round(self, round_number: int, clients: list[int]) -> RoundResult:
        """Train the selected clients on their nodes, aggregate what arrives, evaluate."""
        from federated_learning import NON_FINITE
        from model import parameter_bytes, set_parameters, unflatten
        from strategies import ClientUpdate

        run, started = self.run, time.perf_counter()
        run.failures = {}
        self.nodes.refresh(self.grid, timeout_s=min(QUERY_TIMEOUT_S, self.options.round_timeout_s))  # joined since
        statuses = dict.fromkeys(clients, ("dropped", 0))  # no node: never started
        weights = weights_record(self.weights, self.params)  # one copy for all: records are content-addressed
        messages = {c: self._train_message(c, round_number, weights) for c in clients if c in self.nodes.nodes}
        replies = exchange(self.grid, messages, timeout_s=self.options.round_timeout_s)
        outcomes, updates, arrivals = [], [], {}
        for client in messages:
            reply = replies.get(client)
            if reply is None or (reply.has_error() and reply.error.code in UNREACHABLE):
                statuses[client] = ("lost", 0)
                continue
            statuses[client] = ("ok", 0)
            outcome, row = self._read_reply(client, round_number, reply)
            outcomes.append(outcome)
            if failure := outcome.error or ("" if row is not None and bool(row.isfinite().all()) else NON_FINITE):
                run.failures[client] = failure
                continue
            arrivals[client] = parameter_bytes(self.params)
            updates.append(ClientUpdate(
                client, row, len(outcome.task.indices), outcome.steps, outcome.loss,
                validation_score=outcome.validation_accuracy,
            ))  # fmt: skip
        self.weights, skipped = self._aggregate(updates, len(arrivals))
        seconds = time.perf_counter() - started
        for client in clients:
            run.tally.record(client, client in arrivals)
        run.trained_clients.update(o.task.client_id for o in outcomes)
        eval_started = time.perf_counter()
        set_parameters(run.model, unflatten(self.weights, self.params))
        accuracy, loss, metrics = run.evaluate_global()
        return run.round_result(
            round_number, statuses, outcomes, arrivals, accuracy=accuracy, loss=loss, seconds=seconds,
            eval_seconds=time.perf_counter() - eval_started, clip_norm=run.clip_norm, skipped=skipped, metrics=metrics,
        )  # fmt: skip

    def _train_message(self, client: int, round_number: int, weights: ArrayRecord) -> Message:
        task = ConfigRecord({"client-id": client, "round": round_number,
                             "noise-multiplier": float(self.run.privacy.noise_multiplier)})  # fmt: skip
        content = RecordDict({
            WEIGHTS: weights, TASK: task,
            HISTORY: history_record(self.run.histories.get(client, ())),
        })  # fmt: skip
        timeout = self.options.round_timeout_s  # expires with the round: a late node never starts it
        return Message(content, dst_node_id=self.nodes.nodes[client], message_type=MessageType.TRAIN,
                       group_id=str(round_number), ttl=timeout)  # fmt: skip

    def _read_reply(self, client: int, round_number: int, reply: Message) -> tuple[TaskOutcome, torch.Tensor | None]:
        """The client's outcome (an `error` if it failed) and its new (P,) weights, or None."""
        from client_population import client_seed
        from client_trainers import TaskOutcome, TrainTask

        run = self.run
        task = TrainTask(0, client, run.partitions[client], client_seed(self.config.system.seed, round_number, client),
                         run.histories.get(client, ()))  # fmt: skip
        if reply.has_error():
            if run.privacy.mode == "local":  # its accountant may have moved without us: fail closed, like the engine
                raise RuntimeError(f"client {client} failed under local DP: {reply.error.reason}")
            return TaskOutcome(task, 0, 0.0, error=f"its ClientApp failed: {reply.error.reason}"), None
        result = reply.content.config_records[RESULT]
        outcome = TaskOutcome(
            task, int(result["steps"]), float(result["loss"]),
            history=history_from(reply.content.config_records.get(HISTORY)), seconds=float(result["seconds"]),
            validation_accuracy=float(result["validation-accuracy"]) if "validation-accuracy" in result else None,
            error=str(result["error"]),
        )  # fmt: skip
        if int(result["num-examples"]) != len(task.indices):
            error = (f"its partition has {result['num-examples']} examples, the server's plan {len(task.indices)}: "
                     "different data or code at the site")  # fmt: skip
            return TaskOutcome(task, outcome.steps, outcome.loss, outcome.history, outcome.seconds, error=error), None
        if outcome.error:
            return outcome, None
        return outcome, flat_weights(reply.content.array_records[WEIGHTS], self.params)

    def _aggregate(self, updates: list[Any], arrived: int) -> tuple[torch.Tensor, str]:
        """(new global weights, why they were not updated or ""): the engine's rule and wording."""
        min_clients = self.config.federation.min_clients
        if arrived < min_clients:
            return self.weights, f"{arrived} update(s) arrived, fewer than federation.min_clients = {min_clients}"
        try:
            return self.run.strategy.aggregate(self.weights, updates), ""
        except ValueError as error:  # e.g. Krum with too few updates
            return self.weights, str(error)


@server_app.main()
def server_main(grid: Grid, context: Context) -> None:
    """Run one experiment over the connected SuperNodes, recording it like `cli.execute`."""
    from database import ExperimentStore

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


def record_experiment(
    grid: Grid, config: ExperimentConfig, options: RunOptions, store: ExperimentStore, experiment_id: int
) -> None:
    """Run the rounds, committing each; finish the experiment completed, stopped or failed."""
    store.mark_running(experiment_id)
    last: dict[str, Any] = {}
    try:
        coordinator = Coordinator(grid, config, options)
        run = coordinator.run
        store.set_label_counts(experiment_id, run.label_counts.tolist())
        store.set_dataset_info(experiment_id, run.data.info)
        store.set_client_profiles(experiment_id, [p.to_dict() for p in run.profiles])
        if run.privacy.mode != "none":
            store.set_noise_multiplier(experiment_id, run.privacy.noise_multiplier)
        for result in coordinator.rounds(lambda: store.stop_requested(experiment_id)):
            last = result.to_dict()
            store.record_round(experiment_id, last)
            log(INFO, "round %d: accuracy %.4f, %d of %d updates arrived, %.1f s", result.round, result.accuracy,
                sum(c.status in ("ok", "partial") for c in result.clients), len(result.clients), result.seconds)
    except Exception as error:
        store.finish(experiment_id, "failed", error=f"{type(error).__name__}: {error}", final=last)
        raise
    except BaseException:
        store.finish(experiment_id, "interrupted", error="the ServerApp was stopped", final=last)
        raise
    stopped = last.get("round", 0) < config.federation.rounds
    if last and config.privacy.audit_examples > 0:
        try:
            audit = run.audit(config.privacy.audit_examples)
        except Exception as error:  # the rounds stand either way (as in cli._after_run)
            audit = {"error": f"{type(error).__name__}: {error}"}
        if audit is not None:
            store.set_audit(experiment_id, audit)
    store.finish(experiment_id, "stopped" if stopped else "completed", final=last,
                 stop_reason=run.stop_reason if stopped else None)  # fmt: skip
