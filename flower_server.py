"""The ServerApp's side of a Flower run (`flower_app.server_main` calls `record_experiment`):
which SuperNode hosts which client, each round's messages and their replies, aggregation with
the engine's strategies (DP-FedAvg's `CentralSum` under central DP), evaluation, and the rows
it writes to the database. Every wait has a timeout; a reply that does not come is "lost".

    record_experiment(grid, config, RunOptions(...), ExperimentStore(url), experiment_id)
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from logging import INFO, WARNING
from typing import TYPE_CHECKING, Any

from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, RecordDict
from flwr.common import log
from flwr.serverapp import Grid

from experiment_config import ExperimentConfig
from flower_app import (
    CORRECTION, HISTORY, NODE, POLL_SECONDS, QUERY_TIMEOUT_S, RESULT, SITE, TASK, TOKENIZER, UNREACHABLE, WEIGHTS,
    RunOptions, flat_weights, history_from, history_record, weights_record,
)  # fmt: skip
from flower_data import SiteSummary, at_sites, check_site, server_data, shipped_tokenizer

if TYPE_CHECKING:
    import torch

    from client_trainers import TaskOutcome
    from data_handler import FederatedData
    from database import ExperimentStore
    from federated_learning import RoundResult


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
        self.sites: dict[int, SiteSummary] = {}  # client id → what its site reported (data at the sites)
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
            client = int(record["partition-id"])
            self.nodes[client] = node
            if "num-examples" in record:
                labels = tuple(str(name) for name in record["labels"])
                self.sites[client] = SiteSummary(int(record["num-examples"]), str(record["school"]), labels)

    def wait_for_all(self, grid: Grid, *, timeout_s: float, at_least: int, needed: str = "") -> None:
        """Refresh until every client has its node, or `timeout_s`; fewer than `at_least` then is an
        error (`needed` says why that many; default: federation.min_clients)."""
        deadline = time.monotonic() + timeout_s
        while len(self.nodes) < self.num_clients and (left := deadline - time.monotonic()) > 0:
            self.refresh(grid, timeout_s=left)
            if len(self.nodes) < self.num_clients:
                time.sleep(min(POLL_SECONDS, max(deadline - time.monotonic(), 0)))
        if len(self.nodes) < at_least:
            raise RuntimeError(
                f"{len(self.nodes)} of {self.num_clients} SuperNodes joined within {timeout_s:.0f} s, fewer than "
                + (needed or f"federation.min_clients = {at_least}")
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
        self.nodes = NodeDirectory(config.federation.num_clients)
        data, self.site_records = None, {}  # records every train message carries (data at the sites)
        if at_sites(config):
            data, self.site_records = self._plan_sites()
        self.run = FederatedRun(config, data=data)
        self.params = get_parameters(self.run.model)
        self.weights = flatten(self.params)  # (P,) the global model

    def _plan_sites(self) -> tuple[FederatedData, dict[str, ConfigRecord]]:
        """Data at the sites: wait for every school's site, plan from what each reported (its
        number of responses), check its school and rubric elements; the server's data (test
        file, `flower_data.server_data`) and what each train message carries."""
        num_clients = self.config.federation.num_clients
        self.nodes.wait_for_all(
            self.grid, timeout_s=self.options.connect_timeout_s, at_least=num_clients,
            needed=f"{num_clients}: every site reports its data before the run is planned",
        )  # fmt: skip
        sites = self.nodes.sites
        if missing := sorted(set(range(num_clients)) - set(sites)):
            raise RuntimeError(f"the SuperNodes of clients {missing} did not report their data (no data-path?)")
        data, tokenizer = server_data(self.config, [sites[client].num_examples for client in range(num_clients)])
        for client, summary in sites.items():
            check_site(summary, client_id=client, label_names=data.label_names, school_names=data.group_names)
        records = {SITE: ConfigRecord({"labels": list(data.label_names), "schools": list(data.group_names)})}
        if tokenizer:
            records[TOKENIZER] = ConfigRecord(tokenizer)
        return data, records

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
        import torch

        from dp_fedavg import CentralSum
        from federated_learning import NON_FINITE
        from model import parameter_bytes, set_parameters, unflatten
        from strategies import ClientUpdate

        run, started = self.run, time.perf_counter()
        run.failures = {}
        clip_norm = run.clip_norm  # this round's C (adaptive clipping moves it for the next)
        # DP-FedAvg: the server clips each update and adds the noise to their sum, as in-process.
        central = CentralSum(run, self.weights, round_number) if run.privacy.mode == "central" else None
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
                if central is not None:
                    central.add(client, torch.zeros_like(self.weights), lost=True)
                continue
            arrivals[client] = parameter_bytes(self.params)
            if central is not None:
                central.add(client, row - self.weights)
                continue
            updates.append(ClientUpdate(
                client, row, len(outcome.task.indices), outcome.steps, outcome.loss,
                validation_score=outcome.validation_accuracy,
            ))  # fmt: skip
        if central is not None:  # never skipped on the count of arrivals (dp_fedavg)
            self.weights, skipped = central.result(statuses)
        else:
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
            eval_seconds=time.perf_counter() - eval_started, clip_norm=clip_norm, skipped=skipped, metrics=metrics,
        )  # fmt: skip

    def _train_message(self, client: int, round_number: int, weights: ArrayRecord) -> Message:
        task = ConfigRecord({"client-id": client, "round": round_number,
                             "noise-multiplier": float(self.run.privacy.noise_multiplier)})  # fmt: skip
        content = RecordDict({
            WEIGHTS: weights, TASK: task,
            HISTORY: history_record(self.run.histories.get(client, ())), **self.site_records,
        })  # fmt: skip
        if (correction := self.run.strategy.client_correction(client, self.weights)) is not None:
            content[CORRECTION] = weights_record(correction, self.params)
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


def record_experiment(
    grid: Grid, config: ExperimentConfig, options: RunOptions, store: ExperimentStore, experiment_id: int
) -> None:
    """Run the rounds, committing each; finish the experiment completed, stopped or failed."""
    store.mark_running(experiment_id)
    last: dict[str, Any] = {}
    try:
        coordinator = Coordinator(grid, config, options)
        run = coordinator.run
        if not at_sites(config):  # at the sites the server never sees a label
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
    if last:
        _after_rounds(config, store, experiment_id, run)
    store.finish(experiment_id, "stopped" if stopped else "completed", final=last,
                 stop_reason=run.stop_reason if stopped else None)  # fmt: skip


def _after_rounds(config: ExperimentConfig, store: ExperimentStore, experiment_id: int, run: Any) -> None:
    """What `cli.execute` stores after the rounds: the membership audit and a text model's final
    weights (LoRA + head, for `cli.py score`, unless its tokenizer cannot be rebuilt there). A
    failure is recorded; the rounds stand either way."""
    from model import flatten, get_parameters
    from workloads import is_text

    if config.privacy.audit_examples > 0:
        try:
            if at_sites(config):
                raise ValueError("the training responses are at the sites: the server has no members to test")
            audit = run.audit(config.privacy.audit_examples)
        except Exception as error:
            audit = {"error": f"{type(error).__name__}: {error}"}
        if audit is not None:
            store.set_audit(experiment_id, audit)
    if at_sites(config) and shipped_tokenizer(config):
        # `cli.py score` rebuilds the tokenizer from the training file, not the server's test responses
        # this one was trained on: it would score with other token ids. Store nothing rather than that.
        log(WARNING, "final weights not stored: TinyLLama from its config used the server's own tokenizer")
    elif is_text(config):
        try:
            weights = flatten(get_parameters(run.model)).numpy().astype("<f4")  # (values,) little-endian float32
            store.save_weights(experiment_id, weights.tobytes(), int(weights.size))
        except Exception as error:
            log(WARNING, "could not store the final weights: %s: %s", type(error).__name__, error)
