"""What travels between the ServerApp and the ClientApps: the run config (`RunOptions`), record
names, the weights as named arrays, and a client's local-DP accountant history; and which configs
the Flower runtime can run (`check_supported`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flwr.app import ArrayRecord, ConfigRecord, Context
from flwr.common.constant import ErrorCode

from experiment_config import ExperimentConfig
from flower_runtime.site_data import site_reasons

if TYPE_CHECKING:
    import torch

RUNTIME = "flower"  # experiments.runtime of runs recorded by the ServerApp
REPO = Path(__file__).resolve().parents[1]  # the app directory `flwr run` bundles
POLL_SECONDS = 0.5  # how often the ServerApp asks the SuperLink for replies
QUERY_TIMEOUT_S = 60.0  # a new SuperNode that does not say which client it is by then is asked again later
# Record names inside messages.
WEIGHTS, TASK, RESULT, HISTORY, NODE = "weights", "task", "result", "history", "node"
CORRECTION = "correction"  # SCAFFOLD: c − c_i for this client, shaped like the weights
SITE, TOKENIZER = "site", "tokenizer"  # data at the sites: the run's labels and schools; a local tokenizer's files
SENT = "sent"  # a client's upload: its update as the server receives it (top-k: only the coordinates sent)
EVALUATION = "evaluation"  # an `evaluate` message's question ("candidate-loss" | "personalize") and answer
RESIDUAL, HEAD = "residual", "head"  # a node's own state: its top-k residual and FedPer head, by round
SECAGG_ACTION = "secagg"  # secure aggregation's steps travel as messages of type "train.secagg"
# Replies the SuperLink makes up when a SuperNode is gone: the client's update never arrived.
UNREACHABLE = (ErrorCode.NODE_UNAVAILABLE, ErrorCode.MESSAGE_UNAVAILABLE, ErrorCode.REPLY_MESSAGE_UNAVAILABLE)


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
    """Raise ValueError naming every setting the Flower runtime cannot run, and why.

    Every engine setting runs on Flower: simulated dropouts and deadlines run on top of real
    faults (a real one is recorded with the reason in the client's `error`); simulated attackers
    are the engine's, as in-process. Each node makes its own upload (attack, compression with its
    own top-k residual), keeps its FedPer head, computes its power-of-choice loss and its
    personalization on its own data, and takes part in secure aggregation (with central DP, with
    its own noise share). What is left are the limits of data at the sites (`site_reasons`)."""
    if reasons := site_reasons(config):
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


def sent_record(sent: torch.Tensor, method: str) -> ArrayRecord:
    """A client's upload as it travels: top-k's nonzero coordinates and their values (what top-k
    sends), else the dense (P,) vector."""
    import torch

    if method != "topk":
        return ArrayRecord({"dense": sent.clone()})
    indices = torch.nonzero(sent, as_tuple=True)[0]
    return ArrayRecord({"indices": indices.to(torch.int64), "values": sent[indices].clone(),
                        "size": torch.tensor([sent.numel()], dtype=torch.int64)})  # fmt: skip


def dense_sent(record: ArrayRecord, num_params: int) -> torch.Tensor:
    """The (P,) float32 update from `sent_record`'s record, checked against the model's size."""
    import torch

    tensors = record.to_torch_state_dict()
    if "dense" in tensors:
        dense = tensors["dense"].to(torch.float32)
    else:
        size, indices = int(tensors["size"][0]), tensors["indices"].to(torch.int64)
        if size != num_params or (len(indices) and (int(indices.min()) < 0 or int(indices.max()) >= size)):
            raise ValueError(f"a sparse upload for {size} values with an index outside them; the model has "
                             f"{num_params}")  # fmt: skip
        dense = torch.zeros(size, dtype=torch.float32)
        dense[indices] = tensors["values"].to(torch.float32)
    if dense.shape != (num_params,):
        raise ValueError(f"an upload of shape {tuple(dense.shape)}, the model has {num_params} values")
    return dense


# -- a SuperNode's own settings (its --node-config, deployment.py writes them) -----------


def node_partition(node_config: Mapping[str, Any]) -> tuple[int, int]:
    """(partition id, number of partitions) from a SuperNode's `--node-config`."""
    try:
        partition_id, num_partitions = int(node_config["partition-id"]), int(node_config["num-partitions"])
    except KeyError as missing:
        raise ValueError(f"this SuperNode has no {missing} in its --node-config") from None
    if not 0 <= partition_id < num_partitions:
        raise ValueError(f"partition-id {partition_id} is not in [0, num-partitions = {num_partitions})")
    return partition_id, num_partitions


def node_run_config(context: Context) -> tuple[ExperimentConfig, int]:
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


def site_data_path(context: Context) -> str:
    """This site's own training file (`--node-config data-path=...`)."""
    if not (path := str(context.node_config.get("data-path", ""))):
        raise ValueError("this SuperNode has no data-path in its --node-config: with data.dataset 'csv' each site "
                         "trains on its own school's CSV file")  # fmt: skip
    return path
