"""The ServerApp's side of a Flower run: a trainer for the engine's own round loop.

`FederatedRun.rounds` plans each round (sampling, dropouts, deadlines, attackers), aggregates
and evaluates exactly as in-process; `FlowerTrainer` is how it reaches the clients here: each
task travels as a Flower `train` message to the SuperNode that hosts its client, and each reply
comes back as the client's new weights (or as a real fault: no node, no reply in time). Every
wait has a timeout.

    runtime = FlowerRuntime(grid, options)
    run = runtime.build_run(config)                 # data at the sites: planned from what they report
    trainer = runtime.trainer(run)                  # waits for the SuperNodes to join
    for result in run.rounds(stop_event, trainer=trainer): ...
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping, Sequence
from logging import INFO, WARNING
from typing import Any

import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, RecordDict
from flwr.common import log
from flwr.serverapp import Grid

import telemetry
from data_handler import FederatedData
from engine.analysis import personalization_summary
from engine.client_trainers import TaskOutcome, TrainTask
from engine.secure_aggregation import SecAggConfig, SecAggError, SecAggResult, SecAggServer
from experiment_config import ExperimentConfig
from federated_learning import FederatedRun
from flower_runtime.messages import (
    CORRECTION, EVALUATION, HISTORY, NODE, POLL_SECONDS, QUERY_TIMEOUT_S, RESULT, SENT, SITE, TASK, TOKENIZER,
    UNREACHABLE, WEIGHTS, RunOptions, dense_sent, history_from, history_record, weights_record,
)  # fmt: skip
from flower_runtime.secure_sum import (
    ACTION, SECAGG, advert_from, input_record, masked_from, request_record, response_from, roster_record, shares_from,
    shares_record,
)  # fmt: skip
from flower_runtime.site_data import SiteSummary, at_sites, check_site, server_data, shipped_tokenizer
from model import get_parameters
from privacy.dp_fedavg import DistributedNoise, noise_floor


NO_NODE = "no SuperNode serves this client (real fault)"
NO_REPLY = "its SuperNode did not reply within the round timeout (real fault)"


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
            self._learn(node, reply.content.config_records[NODE])

    def _learn(self, node: int, record: ConfigRecord) -> None:
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


class FlowerTrainer:
    """`engine.client_trainers.Trainer` over Flower SuperNodes: one `train` message per task to
    its client's node; each reply is the client's upload as the server receives it
    (`TaskOutcome.sent`: the node compressed it with its own residual and kept its FedPer head).
    A client without a node is a real "dropped", one whose reply does not come within the round
    timeout a real "lost". Also `RemoteClients`: power-of-choice's losses come from the nodes."""

    def __init__(
        self, grid: Grid, nodes: NodeDirectory, run: FederatedRun, options: RunOptions,
        site_records: Mapping[str, ConfigRecord],
    ) -> None:  # fmt: skip
        self.grid, self.nodes, self.options, self.site_records = grid, nodes, options, dict(site_records)
        self.params = get_parameters(run.model)
        self.local_dp = run.privacy.mode == "local"
        self.malicious = [profile.malicious for profile in run.profiles]
        self.round_number = 0  # the round being trained (secure aggregation's steps name it)
        self.noise_multiplier = float(run.privacy.noise_multiplier)
        self.noise_floor = noise_floor(run.config)  # central DP under secure aggregation: the inputs a sum needs
        num_params, slots = run.state.weights.numel(), run.config.federation.clients_per_round
        self.results = torch.empty(slots, num_params)
        self.corrections = torch.zeros(slots, num_params) if run.state.strategy.uses_corrections else None

    def train(self, global_weights: torch.Tensor, tasks: Sequence[TrainTask]) -> list[TaskOutcome]:
        self.nodes.refresh(self.grid, timeout_s=min(QUERY_TIMEOUT_S, self.options.round_timeout_s))  # joined since
        self.round_number = max((t.round_number for t in tasks), default=self.round_number)
        weights = weights_record(global_weights, self.params)  # one copy for all: records are content-addressed
        messages = {t.client_id: self._message(t, weights) for t in tasks if t.client_id in self.nodes.nodes}
        replies = exchange(self.grid, messages, timeout_s=self.options.round_timeout_s)
        outcomes = []
        for task in tasks:
            reply = replies.get(task.client_id)
            if task.client_id not in messages:
                outcomes.append(TaskOutcome(task, 0, 0.0, error=NO_NODE, fault="dropped"))
            elif reply is None or (reply.has_error() and reply.error.code in UNREACHABLE):
                outcomes.append(TaskOutcome(task, 0, 0.0, error=NO_REPLY, fault="lost"))
            else:
                outcomes.append(self._read_reply(task, reply))
        return outcomes

    def close(self) -> None:
        pass  # the SuperNodes belong to the deployment

    def _message(self, task: TrainTask, weights: ArrayRecord) -> Message:
        config = ConfigRecord({
            "client-id": task.client_id, "seed": task.seed, "noise-multiplier": self.noise_multiplier,
            "max-steps": task.max_steps, "flip-labels": task.flip_labels, "round": task.round_number,
            "malicious": self.malicious[task.client_id],
        })  # fmt: skip
        config.update(telemetry.message_fields(task.trace_context))  # the round's span: the node's training joins it
        content = RecordDict({WEIGHTS: weights, TASK: config, HISTORY: history_record(task.history),
                              **self.site_records})  # fmt: skip
        if self.corrections is not None:  # SCAFFOLD's c − c_i, from the server's control variates
            content[CORRECTION] = weights_record(self.corrections[task.slot], self.params)
        timeout = self.options.round_timeout_s  # expires with the round: a late node never starts it
        return Message(content, dst_node_id=self.nodes.nodes[task.client_id], message_type=MessageType.TRAIN,
                       group_id=str(task.seed), ttl=timeout)  # fmt: skip

    def _read_reply(self, task: TrainTask, reply: Message) -> TaskOutcome:
        """The client's outcome (an `error` if it failed) with its upload (`sent`, dense (P,))."""
        if reply.has_error():
            if self.local_dp:  # its accountant may have moved without us: fail closed, like the engine
                raise RuntimeError(f"client {task.client_id} failed under local DP: {reply.error.reason}")
            return TaskOutcome(task, 0, 0.0, error=f"its ClientApp failed: {reply.error.reason}")
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
            return TaskOutcome(task, outcome.steps, outcome.loss, outcome.history, outcome.seconds, error=error)
        if outcome.error:
            return outcome
        if bool(result.get("held", False)):  # secure aggregation: the upload waits at the node (`secure_sum`)
            return dataclasses.replace(outcome, held=True)
        sent = dense_sent(reply.content.array_records[SENT], self.results.shape[1])
        return dataclasses.replace(outcome, sent=sent, sent_bytes=int(result["sent-bytes"]))

    def candidate_losses(self, global_weights: torch.Tensor, round_number: int, clients: list[int]) -> list[float]:
        """Power-of-choice: each candidate's loss, computed by its node on its own data; a
        candidate whose node is gone or does not answer in time is never preferred (−inf)."""
        question = {"purpose": "candidate-loss", "round": round_number}
        answers = ask_nodes(self.grid, self.nodes, clients, weights_record(global_weights, self.params), question,
                            timeout_s=self.options.round_timeout_s)  # fmt: skip
        return [float(answers[c]["loss"]) if c in answers else float("-inf") for c in clients]

    def secure_sum(
        self, weights: dict[int, float], config: SecAggConfig, *, drop_after_sharing: frozenset[int],
        noise: DistributedNoise | None = None, held: frozenset[int] = frozenset(),
    ) -> SecAggResult:  # fmt: skip
        """Secure aggregation with the nodes that hold this round's uploads: the protocol's four
        steps as `train.secagg` messages (`secure_sum.client_step` on each node). A node that does
        not answer a step in time has left (a real fault): the protocol goes on without it, its
        masks removed through the others' shares; `drop_after_sharing` are told nothing after
        sharing (simulated). With central DP (`noise`) every node in `weights` inputs its clipped
        upload (`held`) or nothing, plus its noise share, and the sum is not unmasked unless at
        least the noise floor's inputs came. Raises SecAggError when too few are left to unmask."""
        started, step = time.perf_counter(), self._secagg_step
        if noise is not None:  # a round can sample no one: the protocol still runs, with cover clients only
            self.round_number = noise.round_number
        server = SecAggServer(config, self.results.shape[1] + (noise is not None))
        adverts = step("advertise", sorted(weights), lambda c: {})
        rosters = server.receive_keys([advert_from(a) for a in adverts.values()])
        shares = step("share", sorted(rosters), lambda c: roster_record(rosters[c]))
        inboxes = server.route_shares([s for answer in shares.values() for s in shares_from(answer)])
        maskers = sorted(c for c in shares if c not in drop_after_sharing)
        masked = step("mask", maskers, lambda c: {**shares_record(inboxes.get(c, [])), **input_record(c, noise, held)})
        if noise is not None and len(masked) < (floor := self.noise_floor):
            raise SecAggError(f"only {len(masked)} masked inputs arrived; the distributed noise needs {floor} "
                              "(federation.secagg_threshold): nothing was unmasked")  # fmt: skip
        for answer in masked.values():
            server.receive_masked_input(masked_from(answer))
        request = server.unmask_request()
        answers = step("unmask", list(request.survivors), lambda c: request_record(request))
        result = server.finish([response_from(answer) for answer in answers.values()])
        seconds = time.perf_counter() - started
        return dataclasses.replace(result, stats=dataclasses.replace(result.stats, server_seconds=seconds))

    def _secagg_step(
        self, step: str, clients: Sequence[int], question: Callable[[int], dict[str, Any]]
    ) -> dict[int, ConfigRecord]:
        """One step of the protocol: {client: its answer} from those whose node answered in time."""
        messages = {
            client: Message(RecordDict({SECAGG: ConfigRecord({**question(client), "step": step,
                                                              "round": self.round_number})}),
                            dst_node_id=self.nodes.nodes[client], message_type=f"{MessageType.TRAIN}.{ACTION}",
                            ttl=self.options.round_timeout_s)
            for client in clients if client in self.nodes.nodes
        }  # fmt: skip
        answers = {}
        for client, reply in exchange(self.grid, messages, timeout_s=self.options.round_timeout_s).items():
            if reply.has_error() and reply.error.code in UNREACHABLE:
                continue
            if reply.has_error():  # a node that cannot take part: it leaves the protocol, like a lost one
                log(WARNING, "client %d left secure aggregation at %r: %s", client, step, reply.error.reason)
                continue
            answers[client] = reply.content.config_records[SECAGG]
        return answers


def ask_nodes(
    grid: Grid, nodes: NodeDirectory, clients: Sequence[int], weights: ArrayRecord, question: dict[str, Any], *,
    timeout_s: float,
) -> dict[int, ConfigRecord]:  # fmt: skip
    """Send `question` with `weights` as an `evaluate` message to each client's node; {client: its
    answer} for the answers that came in time (a node that raised is an error: fail closed)."""
    messages = {
        client: Message(RecordDict({WEIGHTS: weights, EVALUATION: ConfigRecord({**question, "client-id": client})}),
                        dst_node_id=nodes.nodes[client], message_type=MessageType.EVALUATE, ttl=timeout_s)
        for client in clients if client in nodes.nodes
    }  # fmt: skip
    answers = {}
    for client, reply in exchange(grid, messages, timeout_s=timeout_s).items():
        if reply.has_error() and reply.error.code in UNREACHABLE:
            continue
        if reply.has_error():
            raise RuntimeError(f"client {client}'s node could not answer {question['purpose']!r}: {reply.error.reason}")
        answers[client] = reply.content.config_records[EVALUATION]
    return answers


class FlowerRuntime:
    """What the runs service needs to run an experiment on the connected SuperNodes: the run
    (planned from what the sites report when they hold the data), its trainer, and what cannot
    be stored after the rounds."""

    def __init__(self, grid: Grid, options: RunOptions) -> None:
        self.grid, self.options = grid, options
        self.nodes: NodeDirectory | None = None
        self.site_records: dict[str, ConfigRecord] = {}  # what every train message carries (data at the sites)

    def build_run(self, config: ExperimentConfig) -> FederatedRun:
        self.nodes = NodeDirectory(config.federation.num_clients)
        data = None
        if at_sites(config):
            data, self.site_records = self._plan_sites(config)
        return FederatedRun(config, data=data)

    def trainer(self, run: FederatedRun) -> FlowerTrainer:
        assert self.nodes is not None, "build_run first"
        self.nodes.wait_for_all(self.grid, timeout_s=self.options.connect_timeout_s,
                                at_least=run.config.federation.min_clients)  # fmt: skip
        return FlowerTrainer(self.grid, self.nodes, run, self.options, self.site_records)

    def personalize(self, run: FederatedRun) -> dict[str, Any] | None:
        """Each client's personalization row, computed on its node with its own held-out split
        and FedPer head (which never left it); clients that do not answer are listed."""
        if run.config.federation.personalization == "none" or self.nodes is None:
            return None
        clients = list(range(run.config.federation.num_clients))
        weights = weights_record(run.state.weights, get_parameters(run.model))
        answers = ask_nodes(self.grid, self.nodes, clients, weights, {"purpose": "personalize"},
                            timeout_s=self.options.round_timeout_s)  # fmt: skip
        rows = [dict(answer) for answer in answers.values() if int(answer["examples"]) > 0]
        summary = personalization_summary(run.config, [{**row, "client": int(row["client"])} for row in rows])
        if summary is not None and (missing := sorted(set(clients) - set(answers))):
            summary["unanswered"] = missing  # their nodes were gone: no row for them
        return summary

    def cannot_store(self, config: ExperimentConfig) -> dict[str, str]:
        """{"label_counts" | "audit" | "weights": why} for what must not be computed or stored."""
        reasons = {}
        if at_sites(config):
            reasons["label_counts"] = "the training responses are at the sites: the server never sees a label"
            reasons["audit"] = "the training responses are at the sites: the server has no members to test"
        if at_sites(config) and shipped_tokenizer(config):
            # `cli.py score` rebuilds the tokenizer from the training file, not the server's test responses
            # this one was trained on: it would score with other token ids. Store nothing rather than that.
            reasons["weights"] = "TinyLLama from its config used the server's own tokenizer"
            log(WARNING, "final weights not stored: %s", reasons["weights"])
        return reasons

    def _plan_sites(self, config: ExperimentConfig) -> tuple[FederatedData, dict[str, ConfigRecord]]:
        """Data at the sites: wait for every school's site, plan from what each reported (its
        number of responses), check its school and rubric elements; the server's data (test
        file, `site_data.server_data`) and what each train message carries."""
        num_clients, nodes = config.federation.num_clients, self.nodes
        nodes.wait_for_all(
            self.grid, timeout_s=self.options.connect_timeout_s, at_least=num_clients,
            needed=f"{num_clients}: every site reports its data before the run is planned",
        )  # fmt: skip
        if missing := sorted(set(range(num_clients)) - set(nodes.sites)):
            raise RuntimeError(f"the SuperNodes of clients {missing} did not report their data (no data-path?)")
        data, tokenizer = server_data(config, [nodes.sites[client].num_examples for client in range(num_clients)])
        for client, summary in nodes.sites.items():
            check_site(summary, client_id=client, label_names=data.label_names, school_names=data.group_names)
        records = {SITE: ConfigRecord({"labels": list(data.label_names), "schools": list(data.group_names)})}
        if tokenizer:
            records[TOKENIZER] = ConfigRecord(tokenizer)
        return data, records
