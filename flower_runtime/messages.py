"""What travels between the ServerApp and the ClientApps: the run config (`RunOptions`), record
names, the weights as named arrays, and a client's local-DP accountant history; and which configs
the Flower runtime can run (`check_supported`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flwr.app import ArrayRecord, ConfigRecord
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
    """Raise ValueError naming every setting the Flower runtime does not run yet, and why.

    Simulated dropouts and deadlines run on top of real faults (a real one is recorded with
    the reason in the client's `error`); simulated attackers are the engine's, as in-process."""
    federation = config.federation
    unsupported = [
        (config.system.backend != "torch", "system.backend must be 'torch' (MLX trains on this machine only)"),
        (federation.secure_aggregation, "federation.secure_aggregation: its key exchange, shares and unmasking do "
         "not travel as Flower messages yet"),
        (federation.selection == "power_of_choice", "federation.selection 'power_of_choice': the candidates' losses "
         "would have to come from their SuperNodes, which is not built yet"),
        (federation.personalization != "none", "federation.personalization: personal heads and fine-tuned models "
         "must stay on their SuperNodes, which is not built yet"),
        (config.communication.compression != "none", "communication.compression: error-feedback residuals must stay "
         "on the SuperNodes, which is not built yet"),
    ]  # fmt: skip
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
