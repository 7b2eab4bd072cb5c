"""The Flower runtime (flower_app.py, flower_data.py): the ClientApp trains like the engine's
trainers; the ServerApp (driven here through a stand-in SuperLink) gives the engine's rounds for
central DP (same ε, same noise) and SCAFFOLD, and for NGSS schools that train on their own files;
real local deployments (a SuperLink and SuperNodes started here, stopped by PID) record their
rounds like the in-process engine, survive a SuperNode that vanishes, run two schools' NGSS
scoring, and leave no process behind. Offline; MNIST from FPL_DATA_DIR (../shared/data).

The deployment tests take about a minute each on two cores: each round starts a fresh
ClientApp process per client (torch import, data load) and Flower polls every few seconds.
"""

from __future__ import annotations

import dataclasses
import math
import os
import subprocess
import threading
import time
from pathlib import Path

import pytest

os.environ["FLWR_TELEMETRY_ENABLED"] = "0"  # before flwr is imported
os.environ["FLWR_DISABLE_UPDATE_CHECK"] = "1"
pytest.importorskip("flwr")

import numpy as np  # noqa: E402
import psutil  # noqa: E402
import torch  # noqa: E402
from flwr.app import ConfigRecord, Context, Error, Message, MessageType, Metadata, RecordDict  # noqa: E402
from flwr.common.constant import ErrorCode  # noqa: E402
from flwr.serverapp import Grid  # noqa: E402
from flwr.supercore.task_identity import TaskIdentity  # noqa: E402

import differential_privacy as dp  # noqa: E402
from flower_runtime import client_app as flower_app  # noqa: E402
from flower_runtime import client_work  # noqa: E402
from flower_runtime import messages as flower_messages  # noqa: E402
from flower_runtime import server_app  # noqa: E402
from flower_runtime import site_data as flower_data  # noqa: E402
from flower_runtime import deployment as flower_deployment  # noqa: E402
from engine.client_population import client_seed, stream_seed  # noqa: E402
from engine.client_trainers import InProcessTrainer, TrainTask  # noqa: E402
from database import ExperimentStore  # noqa: E402
from experiment_config import ExperimentConfig  # noqa: E402
from federated_learning import FederatedRun, train_settings  # noqa: E402
from model import flatten, get_parameters  # noqa: E402
from privacy.dp_fedavg import NOISE_SHARE_TAG  # noqa: E402


def small_config(**federation: object) -> ExperimentConfig:
    """MNIST MLP, 3 clients of 1,000 examples, 2 rounds: quick on two shared cores."""
    return ExperimentConfig.from_dict({
        "data": {"max_train_examples": 3000, "max_test_examples": 2000},
        "model": {"name": "mlp"},
        "federation": {"num_clients": 3, "clients_per_round": 3, "rounds": 2, **federation},
        "privacy": {"audit_examples": 0},
    })  # fmt: skip


def flower_processes_started_here() -> list[psutil.Process]:
    """Live processes (not zombies) that a launcher in this process started, with their descendants."""
    mine, found = str(os.getpid()), []
    for process in psutil.process_iter(["status"]):
        try:
            if process.info["status"] != psutil.STATUS_ZOMBIE and process.environ().get("FPL_FLOWER_LAUNCHER") == mine:
                found.append(process)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


def instruction(content: RecordDict, message_type: str, node_id: int = 7) -> Message:
    """A message as the SuperLink delivers it to a ClientApp."""
    metadata = Metadata(
        run_id=1, message_id=f"m{time.monotonic_ns()}", src_node_id=0, dst_node_id=node_id, reply_to_message_id="",
        group_id="1", created_at=time.time(), ttl=600.0, message_type=message_type,
    )  # fmt: skip
    return Message(content, metadata=metadata)


def node_context(config: ExperimentConfig, partition_id: int, **node_config: object) -> Context:
    node_config = {"partition-id": partition_id, "num-partitions": config.federation.num_clients, **node_config}
    run_config = flower_app.RunOptions(experiment=config.to_json()).to_run_config()
    return Context(run_id=1, node_id=7, node_config=node_config, state=RecordDict(), run_config=run_config)


def train_message(run: FederatedRun, client: int, round_number: int, history: tuple = ()) -> Message:
    params = get_parameters(run.model)
    task = ConfigRecord({"client-id": client, "seed": client_seed(run.config.system.seed, round_number, client),
                         "noise-multiplier": run.config.privacy.noise_multiplier, "max-steps": 0,
                         "flip-labels": False, "round": round_number, "malicious": False})  # fmt: skip
    content = RecordDict({
        flower_app.WEIGHTS: flower_app.weights_record(flatten(params), params), flower_app.TASK: task,
        flower_app.HISTORY: flower_app.history_record(history),
    })  # fmt: skip
    return instruction(content, MessageType.TRAIN)


# -- the apps, called in this process ----------------------------------------------------


@pytest.mark.parametrize("partition", ["iid", "dirichlet", "shards"])
def test_each_client_computes_the_engines_partition(partition: str) -> None:
    config = small_config(client_holdout=0.1).replace("data", partition=partition)
    run = FederatedRun(config)

    for client in range(3):
        indices, holdout = client_work.client_examples(config, run.data, client)

        assert np.array_equal(indices, run.partitions[client])
        assert np.array_equal(holdout, run.holdouts[client]) and len(holdout) > 0


def test_the_client_app_trains_like_the_engines_trainer() -> None:
    config = small_config()
    run = FederatedRun(config)
    settings = train_settings(config, run.data.num_classes, noise_multiplier=0.0)
    reference = InProcessTrainer(run.data, settings, flatten(get_parameters(run.model)).numel(), slots=1)
    task = TrainTask(0, 2, run.partitions[2], client_seed(config.system.seed, 1, 2))
    expected = reference.train(flatten(get_parameters(run.model)), [task])[0]

    reply = flower_app.client_app(train_message(run, client=2, round_number=1), node_context(config, 2))

    result = reply.content.config_records[flower_app.RESULT]
    start = flatten(get_parameters(run.model))
    weights = start + flower_messages.dense_sent(reply.content.array_records[flower_app.SENT], start.numel())
    assert (result["client-id"], result["num-examples"], result["steps"]) == (2, 1000, 20)
    assert result["loss"] == pytest.approx(expected.loss, rel=1e-5) and result["error"] == ""
    torch.testing.assert_close(weights, reference.results[0], rtol=1e-5, atol=1e-6)


def test_a_process_loads_a_runs_data_once_and_never_serves_another_configs(monkeypatch: pytest.MonkeyPatch) -> None:
    loads = []
    real_load = client_work.load_data
    monkeypatch.setattr(client_work, "load_data", lambda config: loads.append(config) or real_load(config))
    client_work.shared_client_data.cache_clear()
    config = small_config()
    smaller = config.replace("data", max_train_examples=2400)  # 800 examples per client, other indices
    run, smaller_run = FederatedRun(config), FederatedRun(smaller)

    replies = [flower_app.client_app(train_message(run, client=c, round_number=1), node_context(config, c))
               for c in (0, 1, 2)]  # fmt: skip
    other = flower_app.client_app(train_message(smaller_run, client=1, round_number=1), node_context(smaller, 1))
    _, smaller_train, _ = client_work.shared_client_data(smaller)
    client_work.shared_client_data.cache_clear()

    assert loads == [config, smaller]  # once per config, not once per message
    assert [r.content.config_records[flower_app.RESULT]["num-examples"] for r in replies] == [1000, 1000, 1000]
    assert other.content.config_records[flower_app.RESULT]["num-examples"] == 800
    assert np.array_equal(smaller_train[1], smaller_run.partitions[1])


def test_a_client_keeps_its_accountant_across_rounds_and_restarts() -> None:
    config = small_config().replace("privacy", mode="local", noise_multiplier=1.1)
    run = FederatedRun(config)
    context = node_context(config, 0)

    first = flower_app.client_app(train_message(run, 0, 1), context)
    second = flower_app.client_app(train_message(run, 0, 2), context)  # the server's copy is stale (empty)
    restarted = flower_app.client_app(  # a fresh node: its state is gone, the server sends what it knows
        train_message(run, 0, 2, history=flower_app.history_from(first.content.config_records["history"])),
        node_context(config, 0),
    )

    histories = [flower_app.history_from(m.content.config_records["history"]) for m in (first, second, restarted)]
    assert [flower_app.history_steps(h) for h in histories] == [20, 40, 40]
    assert flower_app.history_from(context.state.config_records["history"]) == histories[1]
    epsilons = [dp.epsilon_from_history(h, config.privacy.delta) for h in histories]
    assert 0 < epsilons[0] < epsilons[1] == pytest.approx(epsilons[2])
    # independent check: two rounds of 20 DP-SGD steps at q = 50/1000 under Opacus's RDP accountant
    accountant = dp.accountant_from_history([(1.1, 0.05, 40)])
    assert epsilons[1] == pytest.approx(accountant.get_epsilon(config.privacy.delta), rel=1e-6)


def test_a_client_refuses_noise_other_than_the_configured() -> None:
    config = small_config().replace("privacy", mode="local", noise_multiplier=1.1)
    run = FederatedRun(config.replace("privacy", noise_multiplier=0.5))  # a server asking for less noise

    with pytest.raises(ValueError, match="σ = 0.5"):
        flower_app.client_app(train_message(run, 0, 1), node_context(config, 0))


def test_a_site_guards_its_own_local_dp_whatever_the_server_sends() -> None:
    # The server's config asks for a target ε, so any σ would pass the config check: the site's
    # own floor (its --node-config) refuses σ below it, and refuses training without local DP.
    server_config = small_config().replace("privacy", mode="local", noise_multiplier=1e-9, target_epsilon=50.0)
    run = FederatedRun(server_config.replace("privacy", target_epsilon=0.0))

    with pytest.raises(ValueError, match="floor .* is 1.0"):
        flower_app.client_app(train_message(run, 0, 1), node_context(server_config, 0, **{"min-noise-multiplier": 1.0}))
    plain = small_config()
    with pytest.raises(ValueError, match="trains only with local DP"):
        flower_app.client_app(train_message(FederatedRun(plain), 0, 1),
                              node_context(plain, 0, **{"min-noise-multiplier": 1.0}))  # fmt: skip
    reply = flower_app.client_app(train_message(FederatedRun(plain), 0, 1), node_context(plain, 0))
    assert reply.content.config_records[flower_app.RESULT]["error"] == ""  # no site setting: trains as asked


def test_a_site_refuses_a_round_past_its_own_epsilon_limit() -> None:
    config = small_config().replace("privacy", mode="local", noise_multiplier=0.7, max_grad_norm=1.0)
    run = FederatedRun(config)
    # One round: 20 DP-SGD steps at q = 50/1000, σ = 0.7. Its ε, from Opacus's accountant directly:
    one_round = dp.accountant_from_history([(0.7, 0.05, 20)]).get_epsilon(1e-5)
    roomy = node_context(config, 0, **{"max-epsilon": one_round * 1.1})  # two rounds: 1.2 × one round
    first = flower_app.client_app(train_message(run, 0, 1), roomy)
    assert first.content.config_records[flower_app.RESULT]["error"] == ""
    with pytest.raises(ValueError, match="past its max-epsilon"):  # a second round would pass the limit
        flower_app.client_app(train_message(run, 0, 2), roomy)
    with pytest.raises(ValueError, match="past its max-epsilon"):
        flower_app.client_app(train_message(run, 0, 1), node_context(config, 0, **{"max-epsilon": one_round / 2}))


def test_a_local_deployment_gives_each_site_the_users_privacy_settings() -> None:
    fixed = small_config().replace("privacy", mode="local", noise_multiplier=1.1)
    target = small_config().replace("privacy", mode="local", target_epsilon=3.0)
    assert flower_deployment.site_privacy_config(fixed) == "delta=1e-05 min-noise-multiplier=1.1"
    assert flower_deployment.site_privacy_config(target) == "delta=1e-05 max-epsilon=3.0300000000000002"
    assert flower_deployment.site_privacy_config(small_config()) == ""
    assert client_work.site_privacy({"min-noise-multiplier": 1.1, "delta": 1e-05}) == (1.1, 0.0, 1e-05)
    with pytest.raises(ValueError, match="delta in"):
        client_work.site_privacy({"delta": 2.0})


def test_settings_flower_cannot_run_are_refused_before_anything_starts(db_url: str) -> None:
    with pytest.raises(ValueError, match="each SuperNode is one school, so data.partition must be 'natural'"):
        flower_app.check_supported(text_config("task_train.csv", model="minilm-lora").replace("data", partition="iid"))
    with pytest.raises(ValueError, match="one SuperNode per client"):
        flower_deployment.run_local_deployment(small_config(), db_url=db_url, num_supernodes=2)
    assert ExperimentStore(db_url).list_experiments() == [] and flower_processes_started_here() == []


class LoopbackGrid(Grid):
    """A stand-in for the SuperLink: delivers each message to the ClientApp in this process.
    Client ids in `gone` joined, then vanished (their train replies never come); those in
    `broken` have a --node-config their ClientApp cannot train with (it raises); `data_paths[c]`
    is client c's own file (data at the sites)."""

    def __init__(
        self, config: ExperimentConfig, *, gone: set[int] = frozenset(), broken: set[int] = frozenset(),
        data_paths: list[str] | None = None,
    ) -> None:  # fmt: skip
        sites = [{"data-path": path} for path in data_paths] if data_paths else [{}] * config.federation.num_clients
        self.contexts = {100 + c: node_context(config, c, **sites[c]) for c in range(config.federation.num_clients)}
        for client in broken:
            self.contexts[100 + client].node_config["num-threads"] = "many"
        self.gone, self.replies = {100 + c for c in gone}, {}

    def set_run(self, run: object) -> None: ...

    @property
    def run(self) -> object: ...

    def create_message(self, *args: object, **kwargs: object) -> Message:
        raise NotImplementedError

    def get_node_ids(self) -> list[int]:
        return list(self.contexts)

    def push_messages(self, messages: list[Message]) -> list[str]:
        ids = []
        for message in messages:
            message.metadata.__dict__["_message_id"] = message.object_id  # what the SuperLink does
            node = message.metadata.dst_node_id
            if not (node in self.gone and message.metadata.message_type == MessageType.TRAIN):
                try:
                    reply = flower_app.client_app(message, self.contexts[node])
                except Exception as error:
                    reply = Message(Error(ErrorCode.CLIENT_APP_RAISED_EXCEPTION, repr(error)), reply_to=message)
                self.replies[message.metadata.message_id] = reply
            ids.append(message.metadata.message_id)
        return ids

    def pull_messages(self, message_ids: list[str]) -> list[Message]:
        return [self.replies.pop(i) for i in message_ids if i in self.replies]

    def send_and_receive(self, messages: list[Message], *, timeout: float | None = None) -> list[Message]:
        raise NotImplementedError


@pytest.fixture
def serverapp_identity(monkeypatch: pytest.MonkeyPatch) -> None:
    """Who is sending, as flwr-serverapp sets it: messages can be built in this process."""
    for name in ("_run_id", "_node_id", "_task_id"):
        monkeypatch.setattr(TaskIdentity, name, 1)


def on_loopback(config: ExperimentConfig, store: ExperimentStore, **grid: object) -> int:
    """Run `config` through the ServerApp over a `LoopbackGrid`; returns the experiment id."""
    experiment_id = store.create_experiment(config.to_dict(), runtime=flower_app.RUNTIME)
    options = flower_app.RunOptions(experiment=config.to_json(), round_timeout_s=60.0, connect_timeout_s=10.0)
    server_app.record_experiment(LoopbackGrid(config, **grid), config, options, store, experiment_id)
    return experiment_id


def in_process(config: ExperimentConfig, store: ExperimentStore) -> int:
    """Run `config` on the in-process engine, recorded as `runs.service.execute` does; returns the experiment id."""
    experiment_id = store.create_experiment(config.to_dict())
    run = FederatedRun(config.replace("system", num_workers=1))
    for result in run.rounds():
        store.record_round(experiment_id, result.to_dict(), checkpoint=run.checkpoint())
    if (personalization := run.personalize()) is not None:
        store.set_personalization(experiment_id, personalization)
    return experiment_id


def checkpoint_state(store: ExperimentStore, experiment_id: int) -> dict:
    """The stored checkpoint's state without its config (the runs compared differ in paths, workers)."""
    import io

    state = torch.load(io.BytesIO(store.load_checkpoint(experiment_id)[1]), weights_only=True)
    del state["config"]
    return state


def state_differences(a: dict, b: dict) -> list[str]:
    """The keys whose values differ between two checkpoint states ([] when they are the same)."""
    return sorted(set(a) ^ set(b)) + [
        k for k in sorted(set(a) & set(b))
        if not (torch.equal(a[k], b[k]) if isinstance(a[k], torch.Tensor) else a[k] == b[k])
    ]


def test_the_server_records_lost_and_failed_clients_and_skips_below_min_clients(
    db_url: str, serverapp_identity: None
) -> None:
    config = small_config(rounds=1, min_clients=2)
    store = ExperimentStore(db_url)
    experiment_id = store.create_experiment(config.to_dict(), runtime=flower_app.RUNTIME)
    options = flower_app.RunOptions(experiment=config.to_json(), round_timeout_s=2.0, connect_timeout_s=10.0)

    server_app.record_experiment(LoopbackGrid(config, gone={1}, broken={2}), config, options, store, experiment_id)

    clients = store.client_rounds_frame(experiment_id).set_index("client_id")
    assert dict(clients.status) == {0: "ok", 1: "lost", 2: "failed"}
    assert "ClientApp failed" in clients.loc[2, "error"] and "'many'" in clients.loc[2, "error"]
    rounds = store.rounds_frame([experiment_id])
    assert rounds.skipped[0] == "1 update(s) arrived, fewer than federation.min_clients = 2"
    unchanged_accuracy, _, _ = FederatedRun(config).evaluate_global()  # the initial model, never updated
    assert rounds.accuracy[0] == unchanged_accuracy and rounds.num_clients[0] == 1
    assert store.get_experiment(experiment_id).status == "completed"


def test_central_dp_on_flower_spends_the_engines_epsilon_with_the_engines_noise(
    db_url: str, serverapp_identity: None
) -> None:
    # Three clients cannot buy a useful ε: σ is small so that the model visibly learns (ε in the thousands).
    config = small_config(rounds=3, clients_per_round=2).replace(
        "privacy", mode="central", noise_multiplier=0.03, max_grad_norm=2.0, adaptive_clipping=True
    )
    store = ExperimentStore(db_url)

    flower_id, engine_id = on_loopback(config, store), in_process(config, store)

    flower, engine = store.rounds_frame([flower_id]), store.rounds_frame([engine_id])
    # Poisson sampling, each client with q = 2/3: the same clients in each round, as the accountant assumes.
    assert list(flower.num_selected) == list(engine.num_selected)
    assert list(store.client_rounds_frame(flower_id).client_id) == list(store.client_rounds_frame(engine_id).client_id)
    assert list(flower.epsilon) == list(engine.epsilon)
    # independent check: r steps of the sampled Gaussian mechanism at q = 2/3 under Opacus's RDP accountant
    reference = [dp.accountant_from_history([(0.03, 2 / 3, r)]).get_epsilon(1e-5) for r in (1, 2, 3)]
    np.testing.assert_allclose(flower.epsilon, reference, rtol=1e-6)
    assert list(flower.noise_multiplier) == [0.03] * 3 and list(flower.sample_rate) == [pytest.approx(2 / 3)] * 3
    np.testing.assert_allclose(flower.max_grad_norm, engine.max_grad_norm, rtol=1e-6)  # adaptive clipping moves C alike
    assert len(set(flower.max_grad_norm)) == 3
    np.testing.assert_allclose(flower.accuracy, engine.accuracy, atol=2e-3)  # the same noise draws
    np.testing.assert_allclose(flower.loss, engine.loss, rtol=1e-3)
    assert flower.accuracy.iloc[-1] > 0.5


def test_scaffold_on_flower_sends_each_client_the_engines_correction(db_url: str, serverapp_identity: None) -> None:
    config = small_config(strategy="scaffold").replace("data", partition="shards")
    store = ExperimentStore(db_url)

    flower_id, engine_id = on_loopback(config, store), in_process(config, store)

    flower, engine = store.rounds_frame([flower_id]), store.rounds_frame([engine_id])
    fedavg = store.rounds_frame([in_process(config.replace("federation", strategy="fedavg"), store)])
    np.testing.assert_allclose(flower.loss, engine.loss, rtol=1e-5)  # round 2 trains with c − c_i
    np.testing.assert_allclose(flower.accuracy, engine.accuracy, atol=1e-3)
    assert abs(flower.loss.iloc[-1] - fedavg.loss.iloc[-1]) > 1e-3  # the corrections changed the training


def test_a_scaffold_client_refuses_to_train_without_its_correction() -> None:
    config = small_config(strategy="scaffold")

    with pytest.raises(ValueError, match="no control-variate correction"):
        flower_app.client_app(train_message(FederatedRun(config), 0, 1), node_context(config, 0))


# -- NGSS scoring: each school trains on its own file ------------------------------------


def two_school_files(directory: Path, *, train_per_school: int = 40, test_per_school: int = 20) -> str:
    """The lab's files (NGSS.md "Real data") for two schools of synthetic gas_filled_balloons
    responses; returns the path of the training file."""
    from ngss import data as ngss_data
    from ngss.tasks import NgssSplit

    full = ngss_data.generate("gas_filled_balloons", seed=0)

    def first(split: NgssSplit, count: int) -> NgssSplit:
        rows = np.concatenate([np.flatnonzero(split.schools == school)[:count] for school in (0, 1)])
        return NgssSplit([split.texts[i] for i in rows], split.labels[rows], split.schools[rows])

    two = dataclasses.replace(full, school_names=full.school_names[:2], train=first(full.train, train_per_school),
                              test=first(full.test, test_per_school), source="imported")  # fmt: skip
    return str(ngss_data.write_csv(two, directory)[0])


def text_config(csv_path: str, *, model: str, **federation: object) -> ExperimentConfig:
    """Two schools' imported responses, natural partition: one client per school."""
    return ExperimentConfig.from_dict({
        "data": {"dataset": "csv", "csv_path": csv_path, "partition": "natural"},
        "model": {"name": model, "pretrained": model == "minilm-lora", "max_length": 32},
        "federation": {"num_clients": 2, "clients_per_round": 2, "rounds": 1, "batch_size": 16, **federation},
        "privacy": {"audit_examples": 0},
        "system": {"num_workers": 1},
    })  # fmt: skip


def test_schools_train_on_their_own_files_as_the_engine_trains_on_the_whole_file(
    tmp_path: Path, db_url: str, serverapp_identity: None
) -> None:
    lab_file = two_school_files(tmp_path / "lab", train_per_school=20, test_per_school=10)  # MiniLM: small
    config = text_config(lab_file, model="minilm-lora", client_holdout=0.2).replace("model", max_length=16)
    server_csv, site_paths = flower_data.write_sites(config, tmp_path / "deployment")
    store = ExperimentStore(db_url)

    flower_id = on_loopback(config.replace("data", csv_path=server_csv), store, data_paths=site_paths)

    engine_id = in_process(config, store)
    assert sorted(p.name for p in Path(server_csv).parent.iterdir()) == ["gas_filled_balloons_test.csv"]
    flower, engine = store.rounds_frame([flower_id]), store.rounds_frame([engine_id])
    np.testing.assert_allclose(flower.loss, engine.loss, rtol=1e-4)
    metrics, expected = flower.metrics[0], engine.metrics[0]
    assert set(metrics["per_group"]) == {"School A", "School B"}
    for name in ("micro_f1", "macro_f1", "exact_match", "score_mae"):
        assert metrics[name] == pytest.approx(expected[name], abs=1e-6), name
    same = ["client_id", "num_examples", "steps", "status", "bytes_up"]
    flower_clients, engine_clients = store.client_rounds_frame(flower_id), store.client_rounds_frame(engine_id)
    assert flower_clients[same].to_dict("records") == engine_clients[same].to_dict("records")
    assert list(flower_clients.num_examples) == [16, 16]  # 20 responses each, 4 held out
    np.testing.assert_allclose(flower_clients.validation_accuracy, engine_clients.validation_accuracy, atol=1e-6)
    summary = store.get_experiment(flower_id)
    assert summary.status == "completed" and summary.label_counts is None  # the server never sees a label
    # Nor a held-out response: no per-client accuracy is made up from the server's placeholder rows.
    assert store.rounds_frame([flower_id]).client_accuracy_worst10.isna().all()
    assert store.rounds_frame([engine_id]).client_accuracy_worst10.notna().all()
    assert store.load_weights(flower_id).num_values == 2 * 6 * 8 * 384 * 2 + 384 * 3 + 3  # LoRA (q, v) + head


def test_a_client_of_synthetic_ngss_trains_its_schools_slice_like_the_engine() -> None:
    config = ExperimentConfig.from_dict({
        "data": {"dataset": "ngss", "partition": "natural", "max_train_examples": 90, "max_test_examples": 30},
        "model": {"name": "tinyllama-lora", "pretrained": False, "max_length": 32},
        "federation": {"num_clients": 9, "clients_per_round": 9, "batch_size": 4},
        "privacy": {"audit_examples": 0},
    })  # fmt: skip
    run = FederatedRun(config)  # every node rebuilds the same responses and tokenizer from the seed
    settings = train_settings(config, run.data.num_classes, noise_multiplier=0.0)
    reference = InProcessTrainer(run.data, settings, flatten(get_parameters(run.model)).numel(), slots=1)
    school = 3
    task = TrainTask(0, school, run.partitions[school], client_seed(config.system.seed, 1, school))
    expected = reference.train(flatten(get_parameters(run.model)), [task])[0]

    reply = flower_app.client_app(train_message(run, client=school, round_number=1), node_context(config, school))

    result = reply.content.config_records[flower_app.RESULT]
    start = flatten(get_parameters(run.model))
    weights = start + flower_messages.dense_sent(reply.content.array_records[flower_app.SENT], start.numel())
    assert result["num-examples"] == len(run.partitions[school]) == int((run.data.train_groups == school).sum())
    assert result["loss"] == pytest.approx(expected.loss, rel=1e-5) and result["error"] == ""
    torch.testing.assert_close(weights, reference.results[0], rtol=1e-5, atol=1e-6)


def test_a_site_with_another_schools_file_is_refused(tmp_path: Path) -> None:
    config = text_config(two_school_files(tmp_path / "lab"), model="minilm-lora")
    _, site_paths = flower_data.write_sites(config, tmp_path / "deployment")
    summary = flower_data.summarize_site(config, site_paths[1])

    with pytest.raises(ValueError, match="client 0 .* is 'School A'.* holds 'School B'"):
        flower_data.check_site(summary, client_id=0, label_names=["E1", "E2", "E3"],
                               school_names=["School A", "School B"])  # fmt: skip
    assert summary == flower_data.SiteSummary(40, "School B", ("E1", "E2", "E3"))


# -- real deployments on loopback --------------------------------------------------------


def test_a_local_deployment_through_the_cli_prints_and_records_the_engines_rounds(
    db_url: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import json

    import cli

    config = small_config()
    during: list[list[psutil.Process]] = []
    start_run = flower_deployment.LocalDeployment.start_run

    def start_and_look(self: flower_deployment.LocalDeployment, options: object) -> int:
        run_id = start_run(self, options)
        during.append(flower_processes_started_here())
        return run_id

    monkeypatch.setattr(flower_deployment.LocalDeployment, "start_run", start_and_look)
    settings = ["data.max_train_examples=3000", "data.max_test_examples=2000", "model.name=mlp",
                "federation.num_clients=3", "federation.clients_per_round=3", "federation.rounds=2",
                "privacy.audit_examples=0", "system.runtime=flower"]  # fmt: skip

    code = cli.main(["run", "--json", "--db", db_url, *[f"--set={s}" for s in settings]])

    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert code == 0 and [line.get("round") for line in lines[:2]] == [1, 2] and lines[2]["status"] == "completed"
    store = ExperimentStore(db_url)
    experiment_id = lines[2]["experiment_id"]
    summary = store.get_experiment(experiment_id)
    assert (summary.runtime, summary.status, summary.error) == ("flower", "completed", None)
    assert [line["accuracy"] for line in lines[:2]] == list(store.rounds_frame([experiment_id]).accuracy)
    assert all(len(line["clients"]) == 3 for line in lines[:2])  # one line per round, as in-process
    # The reference: the in-process engine on the same config, recorded as the runs service does.
    reference_id = in_process(config, store)
    flower_rounds, engine_rounds = store.rounds_frame([experiment_id]), store.rounds_frame([reference_id])
    flower_clients, engine_clients = store.client_rounds_frame(experiment_id), store.client_rounds_frame(reference_id)
    assert list(flower_rounds.columns) == list(engine_rounds.columns)
    assert list(flower_rounds["round"]) == [1, 2] and flower_rounds.accuracy[1] > flower_rounds.accuracy[0] > 0.3
    assert list(flower_rounds.accuracy) == list(engine_rounds.accuracy)  # the same loop and arithmetic
    assert list(flower_rounds.loss) == list(engine_rounds.loss)
    same = ["round", "client_id", "num_examples", "steps", "status", "bytes_up", "bytes_down"]
    assert flower_clients[same].to_dict("records") == engine_clients[same].to_dict("records")
    assert (flower_rounds.num_clients == 3).all() and (flower_rounds.seconds > 0).all()
    # Flower runs checkpoint every round too: the same state as the engine's after round 2.
    # (The ServerApp's process sums in float64 with its own thread count: a weight may differ in its last bit,
    # and so may the suspicion's running directions, which are computed from the updates.)
    flower_state, engine_state = checkpoint_state(store, experiment_id), checkpoint_state(store, reference_id)
    assert set(state_differences(flower_state, engine_state)) <= {"weights", "directions"}
    torch.testing.assert_close(flower_state["weights"], engine_state["weights"], rtol=0.0, atol=1e-6)
    assert flower_state["directions"] == pytest.approx(engine_state["directions"], abs=1e-6)
    assert len(engine_state["directions"]) == 3
    assert len(during) == 1 and len(during[0]) >= 5  # a SuperLink and 3 SuperNodes (and their helpers) ran
    assert flower_processes_started_here() == []


def test_a_supernode_that_vanishes_mid_run_is_recorded_lost(db_url: str) -> None:
    config = small_config()
    store, killed = ExperimentStore(db_url), threading.Event()

    def kill_after_round_one(deployment: flower_deployment.LocalDeployment, experiment_id: int) -> None:
        def watch() -> None:
            deadline = time.monotonic() + 300
            while time.monotonic() < deadline and store.rounds_frame([experiment_id]).empty:
                time.sleep(0.2)
            deployment.kill_supernode(1)  # SIGKILL: the site is gone, its reply never comes
            killed.set()

        threading.Thread(target=watch, daemon=True).start()

    started = time.monotonic()
    experiment_id = flower_deployment.run_local_deployment(
        config, db_url=db_url, timeout_s=400, round_timeout_s=60, on_started=kill_after_round_one
    )

    assert killed.is_set() and time.monotonic() - started < 400
    summary = store.get_experiment(experiment_id)
    assert (summary.runtime, summary.status) == ("flower", "completed")
    rounds = store.rounds_frame([experiment_id])
    clients = store.client_rounds_frame(experiment_id)
    second = clients[clients["round"] == 2].set_index("client_id")
    assert dict(second.status) == {0: "ok", 1: "lost", 2: "ok"}
    assert second.loc[1, "bytes_up"] == 0 and (second.loc[[0, 2], "steps"] == 20).all()
    assert list(rounds.num_clients) == [3, 2] and list(rounds.num_selected) == [3, 3]
    assert list(rounds.skipped) == ["", ""] and rounds.accuracy[1] > rounds.accuracy[0]
    assert flower_processes_started_here() == []


def test_a_local_deployment_of_two_schools_records_rubric_metrics(tmp_path: Path, db_url: str) -> None:
    config = text_config(two_school_files(tmp_path / "lab"), model="tinyllama-lora")  # from its config: offline
    work_dir = tmp_path / "deployment"

    experiment_id = flower_deployment.run_local_deployment(
        config, db_url=db_url, timeout_s=300, round_timeout_s=200, work_dir=work_dir
    )

    store = ExperimentStore(db_url)
    summary = store.get_experiment(experiment_id)
    assert (summary.runtime, summary.status, summary.error) == ("flower", "completed", None)
    rounds, clients = store.rounds_frame([experiment_id]), store.client_rounds_frame(experiment_id)
    assert list(rounds["round"]) == [1] and rounds.num_clients[0] == 2
    metrics = rounds.metrics[0]
    assert set(metrics["per_group"]) == {"School A", "School B"} and 0 <= metrics["micro_f1"] <= 1
    assert metrics["num_examples"] == 40  # the server's test file: 20 responses per school
    assert dict(zip(clients.client_id, clients.num_examples)) == {0: 40, 1: 40}
    assert (clients.status == "ok").all() and (clients.steps == 3).all()
    # Its tokenizer was trained on the server's test responses, which `cli.py score` cannot rebuild.
    assert store.load_weights(experiment_id) is None
    for school, name in enumerate(("School A", "School B")):  # each site's file: its own school's rows only
        site = flower_data.summarize_site(config, str(work_dir / f"site-{school}" / "gas_filled_balloons_train.csv"))
        assert (site.school, site.num_examples) == (name, 40)
    assert not (work_dir / "server" / "gas_filled_balloons_train.csv").exists()
    assert flower_processes_started_here() == []


# -- parity: the engine's round loop with Flower as its trainer ----------------------------

PARITY = {
    "fedavg": small_config(),
    "fedprox": small_config(strategy="fedprox", proximal_mu=0.1),
    "fedadam": small_config(strategy="fedadam"),
    "median": small_config(strategy="median"),
    "multi_krum": small_config(strategy="multi_krum", byzantine_clients=0, multi_krum_keep=2),
    "local DP": small_config().replace("privacy", mode="local", noise_multiplier=1.0, max_grad_norm=1.0),
    "dropout + deadline": small_config(rounds=3, dropout_probability=0.4, dropout_stage="during", round_deadline=1.0,
                                       speed_spread=1.0, straggler_policy="partial"),
    "sign-flip attackers": small_config().replace("attack", fraction=0.34, behaviour="sign_flip"),
    "label-flip attackers": small_config().replace("attack", fraction=0.34, behaviour="label_flip"),
    "top-k with error feedback": small_config(rounds=3).replace("communication", compression="topk", topk_fraction=0.05),
    "top-k with DGC momentum + warm-up": small_config(rounds=3).replace(
        "communication", compression="topk", topk_fraction=0.05, topk_momentum=0.5, topk_warmup_rounds=1),
    "QSGD": small_config().replace("communication", compression="qsgd", quantization_bits=4),
    "top-k + sign-flip attackers": small_config(rounds=3).replace("communication", compression="topk", topk_fraction=0.1)
                                   .replace("attack", fraction=0.34, behaviour="sign_flip"),
    "FedPer": small_config(rounds=3, personalization="fedper", client_holdout=0.1),
    "fine-tuning": small_config(personalization="finetune", client_holdout=0.1),
    "power-of-choice": small_config(rounds=3, clients_per_round=2, selection="power_of_choice", selection_candidates=3),
    # FedBuff: steps of 2 updates from 3 clients in flight; the slowest arrive stale (tests/test_fedbuff.py).
    "async (FedBuff)": small_config(rounds=3, mode="async", buffer_size=2, max_concurrency=3, speed_spread=1.0),
    "MLX": small_config(strategy="fedprox", proximal_mu=0.1).replace("system", backend="mlx"),
    "secure aggregation": small_config(secure_aggregation=True),
    "secure aggregation + dropout + sign-flip": small_config(
        rounds=3, num_clients=4, clients_per_round=4, secure_aggregation=True, secagg_threshold=0.5,
        dropout_probability=0.3, dropout_stage="during").replace("attack", fraction=0.25, behaviour="sign_flip"),
    # Every node takes part each round, sampled or not (cover clients), each adding its noise share.
    "secure aggregation + central DP": small_config(
        rounds=3, num_clients=4, clients_per_round=2, secure_aggregation=True, secagg_threshold=0.5,
        dropout_probability=0.2, dropout_stage="during").replace(
        "privacy", mode="central", noise_multiplier=0.03, max_grad_norm=2.0, adaptive_clipping=True),
    # The same with integer Skellam shares (privacy/skellam.py): each node rounds and draws them itself.
    "secure aggregation + central DP, skellam": small_config(
        rounds=2, num_clients=4, clients_per_round=2, secure_aggregation=True, secagg_threshold=0.5,
        dropout_probability=0.2, dropout_stage="during").replace(
        "privacy", mode="central", noise_multiplier=0.03, max_grad_norm=2.0, distributed_noise="skellam"),
}  # fmt: skip
SAME_CLIENT_FIELDS = ["client_id", "num_examples", "steps", "status", "malicious", "bytes_up", "bytes_down", "epsilon"]


@pytest.mark.parametrize("case", list(PARITY))
def test_flower_runs_the_engines_rounds(case: str, db_url: str, serverapp_identity: None) -> None:
    config = PARITY[case]
    store = ExperimentStore(db_url)

    flower_id, engine_id = on_loopback(config, store), in_process(config, store)

    flower, engine = store.rounds_frame([flower_id]), store.rounds_frame([engine_id])
    assert len(flower) == config.federation.rounds
    for column in ("accuracy", "loss", "epsilon", "skipped", "num_clients", "num_selected", "bytes_up"):
        assert list(flower[column]) == list(engine[column]), column  # the same computation, bit for bit
    flower_clients, engine_clients = store.client_rounds_frame(flower_id), store.client_rounds_frame(engine_id)
    assert (flower_clients[["round", *SAME_CLIENT_FIELDS]].to_dict("records")
            == engine_clients[["round", *SAME_CLIENT_FIELDS]].to_dict("records"))  # fmt: skip
    assert store.get_experiment(flower_id).status == "completed"
    # Personalization computed on each node (its head never left it) equals the engine's.
    assert store.get_experiment(flower_id).personalization == store.get_experiment(engine_id).personalization


def test_parity_cases_really_differ_from_fedavg(db_url: str) -> None:
    # Each parity case exercises its feature: its rounds differ from plain FedAvg's.
    store = ExperimentStore(db_url)
    baseline = store.rounds_frame([in_process(PARITY["fedavg"], store)])
    for case in ("fedprox", "median", "local DP", "sign-flip attackers", "label-flip attackers"):
        rounds = store.rounds_frame([in_process(PARITY[case], store)])
        assert list(rounds.loss) != list(baseline.loss), case
    clients = store.client_rounds_frame(in_process(PARITY["dropout + deadline"], store))
    assert {"lost", "partial"} <= set(clients.status)
    for case in ("top-k with error feedback", "QSGD", "FedPer", "power-of-choice"):
        rounds = store.rounds_frame([in_process(PARITY[case], store)])
        assert list(rounds.loss) != list(baseline.loss[: len(rounds)]), case
    personalized = store.get_experiment(in_process(PARITY["FedPer"], store)).personalization
    assert personalized["method"] == "fedper" and len(personalized["clients"]) == 3


def test_residuals_and_heads_stay_on_the_nodes(db_url: str, serverapp_identity: None) -> None:
    # What the server holds after a Flower run with top-k and FedPer: no residual, no head; each
    # node holds its own, kept by round; no train message ever carried a head.
    config = small_config(rounds=2, personalization="fedper", client_holdout=0.1).replace(
        "communication", compression="topk", topk_fraction=0.05)
    store = ExperimentStore(db_url)
    grid = RecordingGrid(config)
    experiment_id = store.create_experiment(config.to_dict(), runtime=flower_app.RUNTIME)
    options = flower_app.RunOptions(experiment=config.to_json(), round_timeout_s=60.0, connect_timeout_s=10.0)
    server_app.record_experiment(grid, config, options, store, experiment_id)

    state = checkpoint_state(store, experiment_id)
    assert state["residuals"] == {} and state["heads"] == {}
    for context in grid.contexts.values():
        assert set(context.state.array_records["residual"].keys()) == {"1", "2"}
        assert set(context.state.array_records["head"].keys()) == {"1", "2"}
    train = [m for m in grid.sent if m.metadata.message_type == MessageType.TRAIN]
    assert len(train) == 6 and all(set(m.content.array_records) == {"weights"} for m in train)
    uploads = [r.content.array_records["sent"] for r in grid.received if "sent" in r.content.array_records]
    assert len(uploads) == 6 and all(set(u.keys()) == {"indices", "values", "size"} for u in uploads)


class RecordingGrid(LoopbackGrid):
    """A `LoopbackGrid` that keeps every message sent and every reply."""

    def __init__(self, config: ExperimentConfig, **grid: object) -> None:
        super().__init__(config, **grid)
        self.sent, self.received = [], []

    def push_messages(self, messages: list[Message]) -> list[str]:
        self.sent.extend(messages)
        return super().push_messages(messages)

    def pull_messages(self, message_ids: list[str]) -> list[Message]:
        replies = super().pull_messages(message_ids)
        self.received.extend(replies)
        return replies


class DyingGrid(LoopbackGrid):
    """The ServerApp's process dies (here: an interrupt) when round `dies_in` sends its tasks."""

    dies_before_training = True

    def __init__(self, config: ExperimentConfig, *, dies_in: int) -> None:
        super().__init__(config)
        self.train_batches, self.dies_in = 0, dies_in

    def push_messages(self, messages: list[Message]) -> list[str]:
        if messages and messages[0].metadata.message_type == MessageType.TRAIN:
            self.train_batches += 1
            if self.dies_before_training and self.train_batches == self.dies_in:
                raise KeyboardInterrupt
        return super().push_messages(messages)


class DiesAfterTrainingGrid(DyingGrid):
    """The ServerApp's process dies after the nodes trained round `dies_in` (their state moved on),
    before it read their replies: the resumed run trains that round again."""

    dies_before_training = False

    def pull_messages(self, message_ids: list[str]) -> list[Message]:
        if self.train_batches == self.dies_in:
            raise KeyboardInterrupt
        return super().pull_messages(message_ids)


def test_nodes_that_trained_a_round_the_server_lost_redo_it_from_their_earlier_state(
    db_url: str, serverapp_identity: None
) -> None:
    # Top-k residuals and FedPer heads live on the nodes: a round trained, then lost by the
    # server, is re-run from each node's state before it, so the run ends as if never interrupted.
    config = small_config(rounds=3, personalization="fedper", client_holdout=0.1).replace(
        "communication", compression="topk", topk_fraction=0.05)
    store = ExperimentStore(db_url)
    options = flower_app.RunOptions(experiment=config.to_json(), round_timeout_s=60.0, connect_timeout_s=10.0)
    whole = on_loopback(config, store)
    broken = store.create_experiment(config.to_dict(), runtime=flower_app.RUNTIME)
    grid = DiesAfterTrainingGrid(config, dies_in=2)

    outcome = server_app.record_experiment(grid, config, options, store, broken)
    assert outcome.status == "interrupted" and store.get_experiment(broken).rounds_done == 1
    assert store.reopen(broken) == 1
    grid.dies_in = 0  # the same nodes (their state includes round 2), a restarted server
    assert server_app.record_experiment(grid, config, options, store, broken).status == "completed"

    assert store.load_checkpoint(broken) == store.load_checkpoint(whole)
    assert list(store.rounds_frame([broken]).loss) == list(store.rounds_frame([whole]).loss)
    assert store.get_experiment(broken).personalization == store.get_experiment(whole).personalization


def test_a_flower_run_killed_mid_round_resumes_to_the_uninterrupted_weights(
    db_url: str, serverapp_identity: None
) -> None:
    config = small_config(rounds=3, strategy="fedadam").replace("privacy", mode="local", noise_multiplier=1.0)
    store = ExperimentStore(db_url)
    options = flower_app.RunOptions(experiment=config.to_json(), round_timeout_s=60.0, connect_timeout_s=10.0)
    whole = on_loopback(config, store)
    broken = store.create_experiment(config.to_dict(), runtime=flower_app.RUNTIME)

    outcome = server_app.record_experiment(DyingGrid(config, dies_in=2), config, options, store, broken)
    assert outcome.status == "interrupted" and store.get_experiment(broken).rounds_done == 1
    assert store.reopen(broken) == 1
    resumed = server_app.record_experiment(LoopbackGrid(config), config, options, store, broken)

    assert resumed.status == "completed"
    assert store.load_checkpoint(broken) == store.load_checkpoint(whole)  # round 3's state, bit for bit
    assert list(store.rounds_frame([broken]).epsilon) == list(store.rounds_frame([whole]).epsilon)


class LeavesDuringMasking(RecordingGrid):
    """Client `leaver`'s node answers the key steps of round 1's secure aggregation, then is gone
    for its masked input (killed mid-round), and is back for round 2. Keeps each node's held upload
    as it was when masking began."""

    def __init__(self, config: ExperimentConfig, *, leaver: int) -> None:
        super().__init__(config)
        self.leaver, self.held = 100 + leaver, {}

    def push_messages(self, messages: list[Message]) -> list[str]:
        step = messages[0].content.config_records["secagg"] if messages and "secagg" in messages[0].content else None
        if step is None or step["step"] != "mask" or int(step["round"]) != 1:
            return super().push_messages(messages)
        self.held = {node: self.contexts[node].state.array_records["secagg-upload"].to_torch_state_dict()
                     for node in self.contexts}  # fmt: skip
        ids = []
        for message in messages:  # the leaver's message is accepted; its reply never comes
            if message.metadata.dst_node_id == self.leaver:
                message.metadata.__dict__["_message_id"] = message.object_id
                ids.append(message.metadata.message_id)
            else:
                ids.extend(super().push_messages([message]))
        return ids


def test_secure_aggregation_on_flower_survives_a_node_lost_mid_protocol(db_url: str, serverapp_identity: None) -> None:
    # A node leaves after sharing its keys: the others' shares remove its masks, the round sums
    # the rest, the record calls it lost for a real fault; back in round 2, it takes part again.
    config = small_config(num_clients=4, clients_per_round=4, secure_aggregation=True, secagg_threshold=0.5)
    store = ExperimentStore(db_url)
    grid = LeavesDuringMasking(config, leaver=2)
    experiment_id = store.create_experiment(config.to_dict(), runtime=flower_app.RUNTIME)
    options = flower_app.RunOptions(experiment=config.to_json(), round_timeout_s=5.0, connect_timeout_s=10.0)
    assert server_app.record_experiment(grid, config, options, store, experiment_id).status == "completed"

    clients = store.client_rounds_frame(experiment_id)
    first = clients[clients["round"] == 1].set_index("client_id")
    assert first.loc[2, "status"] == "lost" and "left during secure aggregation" in first.loc[2, "error"]
    assert set(first.drop(index=2).status) == {"ok"} and set(clients[clients["round"] == 2].status) == {"ok"}
    # Round 1's released weights: the start plus the example-weighted mean of the other three uploads.
    train = [m for m in grid.sent if m.metadata.message_type == MessageType.TRAIN]
    start, after = (flatten(m.content.array_records["weights"].to_torch_state_dict()) for m in (train[0], train[4]))
    others = [grid.held[100 + c] for c in (0, 1, 3)]
    mean = sum(h["weight"].double() * h["update"].double() for h in others) / sum(h["weight"].double() for h in others)
    assert torch.allclose(after.double(), start.double() + mean, atol=1e-6)
    assert not torch.allclose(after.double(), start.double() + sum(h["update"].double() for h in grid.held.values()) / 4,
                              atol=1e-6)  # fmt: skip
    # What the server saw of each upload: never the upload itself.
    assert not any("sent" in r.content.array_records for r in grid.received)


def central_secagg(threshold: float) -> ExperimentConfig:
    """4 nodes, all sampled (q = 1), secure aggregation with the noise added by the clients."""
    return small_config(num_clients=4, clients_per_round=4, secure_aggregation=True, secagg_threshold=threshold).replace(
        "privacy", mode="central", noise_multiplier=0.5, max_grad_norm=1.0)


def run_leaving(config: ExperimentConfig, db_url: str) -> tuple[LeavesDuringMasking, ExperimentStore, int]:
    store, grid = ExperimentStore(db_url), LeavesDuringMasking(config, leaver=2)
    experiment_id = store.create_experiment(config.to_dict(), runtime=flower_app.RUNTIME)
    options = flower_app.RunOptions(experiment=config.to_json(), round_timeout_s=5.0, connect_timeout_s=10.0)
    assert server_app.record_experiment(grid, config, options, store, experiment_id).status == "completed"
    return grid, store, experiment_id


def test_central_dp_under_secure_aggregation_sums_each_nodes_own_noise_share(db_url: str, serverapp_identity: None) -> None:
    # Client 2's node leaves after sharing its keys: the released sum holds the other three nodes'
    # clipped uploads and noise shares, each made on its node, and the record calls 2 lost.
    config = central_secagg(0.5)
    grid, store, experiment_id = run_leaving(config, db_url)

    first = store.client_rounds_frame(experiment_id).query("round == 1").set_index("client_id")
    assert first.loc[2, "status"] == "lost" and "left during secure aggregation" in first.loc[2, "error"]
    assert set(first.drop(index=2).status) == {"ok"}
    train = [m for m in grid.sent if m.metadata.message_type == MessageType.TRAIN]
    start, after = (flatten(m.content.array_records["weights"].to_torch_state_dict()) for m in (train[0], train[4]))
    # Independently: clip each held upload to C = 1 by hand, add its seeded N(0, (σC)²/m) share, divide by q·n = 4.
    floor, total = 2, np.zeros(start.numel() + 1)
    for client in (0, 1, 3):
        update = grid.held[100 + client]["update"].double().numpy()
        norm = np.linalg.norm(update)
        clipped = np.append(update * min(1.0, 1.0 / norm), float(norm <= 1.0) - 0.5)
        rng = np.random.default_rng(stream_seed(config.system.seed, 1, client, NOISE_SHARE_TAG))
        share = rng.normal(0.0, 1.0, start.numel() + 1)
        share[:-1] *= 0.5 / math.sqrt(floor)  # σ_Δ·C/√m; the indicator's share is 0 without adaptive clipping
        share[-1] = 0.0
        total += clipped + share
    np.testing.assert_allclose(after.double().numpy(), start.double().numpy() + total[:-1] / 4, atol=1e-6)
    # What the server saw of each upload: never the upload itself.
    assert not any("sent" in r.content.array_records for r in grid.received)


def test_too_few_noise_shares_under_secure_aggregation_are_never_unmasked(db_url: str, serverapp_identity: None) -> None:
    # All 4 shares are needed (threshold 1.0): with one node gone before masking, the server stops
    # before the unmasking step, so it never learns a sum with less noise than the accountant assumes.
    grid, store, experiment_id = run_leaving(central_secagg(1.0), db_url)

    rounds = store.rounds_frame([experiment_id])
    assert rounds.skipped[0].startswith("secure aggregation failed: only 3 masked inputs arrived")
    steps = [(int(m.content.config_records["secagg"]["round"]), m.content.config_records["secagg"]["step"])
             for m in grid.sent if "secagg" in m.content]  # fmt: skip
    assert (1, "mask") in steps and (1, "unmask") not in steps and (2, "unmask") in steps
    assert rounds.skipped[1] == ""


def test_the_staged_app_bundles_the_same_fab_as_the_checkout(tmp_path: Path) -> None:
    # flwr walks every file of the folder it bundles (a .venv in the checkout too): a local deployment
    # hands it a copy of what fab-include names instead. Same files, same content, same FAB hash.
    import zipfile

    app = flower_deployment.staged_app(flower_messages.REPO, tmp_path / "app")
    fabs = []
    for name, folder in (("staged", app), ("checkout", flower_messages.REPO)):
        out = tmp_path / name
        out.mkdir()
        done = subprocess.run([flower_deployment.flower_command("flwr"), "build", "--app", str(folder)], cwd=out,
                              capture_output=True, text=True, check=False)  # fmt: skip
        assert done.returncode == 0, done.stdout + done.stderr
        [fab] = out.glob("*.fab")
        fabs.append(fab)
    staged, checkout = (zipfile.ZipFile(fab) for fab in fabs)
    assert staged.namelist() and sorted(staged.namelist()) == sorted(checkout.namelist())
    assert "flower_runtime/client_work.py" in staged.namelist() and "main.py" not in staged.namelist()
    assert fabs[0].name == fabs[1].name  # the name carries the hash of the content
