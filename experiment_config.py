"""The one description of an experiment: a frozen, validated `ExperimentConfig`.

The sidebar builds it, the CLI reads it from TOML (plus `--set section.key=value`),
the engine runs it and the database stores it as JSON. Validation happens once,
when it is built: a bad value raises `ValueError` naming the field and what is
allowed, before anything runs or is written.

This module imports no torch, so the page can build configs without paying for it.
`federated_learning` re-exports `ExperimentConfig`, where DESIGN.md places it.

    cfg = ExperimentConfig.from_dict({"federation": {"rounds": 5}})
    cfg = cfg.with_overrides(["model.name=mlp", "federation.num_clients=20"])
    cfg.to_dict()  # plain JSON-able dict, round-trips through from_dict
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

DATASETS = ("mnist", "ngss", "csv")  # ngss: the synthetic generator; csv: the lab's files (NGSS.md)
PARTITIONS = ("iid", "dirichlet", "shards", "natural")  # natural: one client per school (ngss, csv with groups)
IMAGE_MODELS = ("cnn", "mlp", "cnn-dp")
TEXT_MODELS = ("tinyllama-lora", "minilm-lora")  # rubric scoring: a backbone with LoRA + a multi-label head
MODELS = IMAGE_MODELS + TEXT_MODELS
# What a text model's head reads (model.pooling), its default first; text_models.py explains each.
TEXT_POOLINGS = {"tinyllama-lora": ("last", "mean"), "minilm-lora": ("mean", "cls")}
POOLINGS = ("mean", "cls", "last")


def text_pooling(model: str, pooling: str) -> str:
    """model.pooling for text model `model`: its default for "", else `pooling` if it has it."""
    allowed = TEXT_POOLINGS[model]
    if not pooling:
        return allowed[0]
    if pooling not in allowed:
        raise ValueError(
            f"model.pooling for {model} must be one of {', '.join(allowed)} (or empty for its default, "
            f"{allowed[0]}); got {pooling!r}"
        )
    return pooling
NGSS_TASKS = (
    "anna_vs_carla", "breaking_down_hydrogen_peroxide", "carlos_javier_atomic_model", "dry_ice_model",
    "gas_filled_balloons", "layers_in_test_tube", "model_for_making_water", "namis_careful_experiment",
    "natural_sugar",
)  # fmt: skip
NGSS_SCHOOLS = 9  # the synthetic generator's schools: partition = "natural" makes each a client
BACKENDS = ("torch", "mlx")
RUNTIMES = ("in-process", "flower")  # flower: a SuperLink and one SuperNode per client on loopback
STRATEGIES = (
    "fedavg", "fedprox", "fedavgm", "fedadagrad", "fedadam", "fedyogi", "scaffold", "fednova",
    "median", "trimmed_mean", "krum", "multi_krum", "bulyan", "adaptive_weighting",
)  # fmt: skip
ROBUST_STRATEGIES = ("krum", "multi_krum", "bulyan")  # need byzantine_clients f and enough updates
# Rules that need only the weighted sum of the updates: they can run under secure aggregation.
SUM_STRATEGIES = ("fedavg", "fedprox", "fedavgm", "fedadagrad", "fedadam", "fedyogi")
SELECTIONS = ("uniform", "power_of_choice", "availability")
DROPOUT_STAGES = ("before", "during")
STRAGGLER_POLICIES = ("partial", "drop")
PERSONALIZATIONS = ("none", "fedper", "finetune")
ATTACKS = ("sign_flip", "gaussian", "scale", "label_flip")
COMPRESSIONS = ("none", "topk", "qsgd")
PRIVACY_MODES = ("none", "local", "central")
ACCOUNTANTS = ("rdp", "prv")
# The clients' local optimizer. adamw: a fresh torch.optim.AdamW each round (its moments do not
# carry over from round to round); SCAFFOLD, DP-SGD and fine-tuning assume plain SGD.
CLIENT_OPTIMIZERS = ("sgd", "adamw")

# Values in DESIGN.md's contract that a later release implements. Asking for them
# is an error now (privacy fails closed), with a message that says why.
NOT_YET: dict[tuple[str, str], set[str]] = {}


def default_data_dir() -> str:
    """`FPL_DATA_DIR` if set, else `data` (relative to the working directory)."""
    return os.environ.get("FPL_DATA_DIR") or "data"


@dataclass(frozen=True)
class DataConfig:
    dataset: str = "mnist"
    partition: str = "iid"
    dirichlet_alpha: float = 0.5
    ngss_task: str = "gas_filled_balloons"
    csv_path: str = ""
    data_dir: str = field(default_factory=default_data_dir)
    max_train_examples: int = 0  # > 0: a seeded random subset of the training set
    max_test_examples: int = 0  # > 0: a seeded random subset of the test set

    def validate(self) -> None:
        _one_of("data.dataset", self.dataset, DATASETS, NOT_YET.get(("data", "dataset")))
        _one_of("data.partition", self.partition, PARTITIONS, NOT_YET.get(("data", "partition")))
        _number("data.dirichlet_alpha", self.dirichlet_alpha, low=1e-3, high=1e4)
        _one_of("data.ngss_task", self.ngss_task, NGSS_TASKS)
        _string("data.csv_path", self.csv_path)
        if self.dataset == "csv" and not self.csv_path.strip():
            raise ValueError("data.dataset = 'csv' needs data.csv_path: the {task}_train.csv file to import")
        if self.partition == "natural" and self.dataset == "mnist":
            raise ValueError("data.partition = 'natural' needs data with schools (data.dataset 'ngss' or 'csv')")
        _string("data.data_dir", self.data_dir)
        if not self.data_dir.strip():
            raise ValueError("data.data_dir must not be empty")
        _integer("data.max_train_examples", self.max_train_examples, low=0, high=10_000_000)
        _integer("data.max_test_examples", self.max_test_examples, low=0, high=10_000_000)


@dataclass(frozen=True)
class ModelConfig:
    name: str = "cnn"
    # Text models (rubric scoring) only:
    pretrained: bool = True  # load the published weights (TinyLLama-v0 from the Hub); False: random, from its config
    lora_rank: int = 8
    lora_alpha: float = 32.0
    lora_dropout: float = 0.1
    lora_targets: str = ""  # comma-separated module names; "" = the backbone's default (q_proj,v_proj / query,value)
    max_length: int = 128  # tokens per response at most; batches are padded to their longest response
    pooling: str = ""  # what the head reads: mean | cls (minilm) | last (tinyllama); "" = the model's default

    def validate(self) -> None:
        _one_of("model.name", self.name, MODELS)
        _boolean("model.pretrained", self.pretrained)
        _integer("model.lora_rank", self.lora_rank, low=1, high=256)
        _number("model.lora_alpha", self.lora_alpha, low=0.01, high=1e4)
        _number("model.lora_dropout", self.lora_dropout, low=0.0, high=0.9)
        _string("model.lora_targets", self.lora_targets)
        _integer("model.max_length", self.max_length, low=8, high=2048)
        _one_of("model.pooling", self.pooling, ("", *POOLINGS))

    def text_options(self) -> dict[str, Any]:
        """The keyword arguments `model.create_model` takes for a text model."""
        targets = tuple(t.strip() for t in self.lora_targets.split(",") if t.strip())
        return {
            "pretrained": self.pretrained, "lora_rank": self.lora_rank, "lora_alpha": self.lora_alpha,
            "lora_dropout": self.lora_dropout, "lora_targets": targets, "pooling": self.pooling,
        }  # fmt: skip


@dataclass(frozen=True)
class FederationConfig:
    num_clients: int = 10
    clients_per_round: int = 10
    rounds: int = 20
    local_epochs: int = 1
    batch_size: int = 50
    learning_rate: float = 0.05
    client_optimizer: str = "sgd"  # sgd | adamw (fresh each round: no optimizer state across rounds)
    strategy: str = "fedavg"
    # Strategy parameters (each read only by the strategies named).
    proximal_mu: float = 0.01  # fedprox: μ of the proximal term μ/2·‖w − w_global‖²
    server_learning_rate: float = 0.0  # fedavgm/adagrad/adam/yogi/scaffold η; 0 = the strategy's default
    server_momentum: float = 0.9  # fedavgm
    beta1: float = 0.9  # fedadam, fedyogi (and fedadagrad's first moment)
    beta2: float = 0.99  # fedadam, fedyogi
    tau: float = 1e-3  # fedadagrad/adam/yogi: adaptivity
    trim_fraction: float = 0.2  # trimmed_mean: β trimmed from each end per coordinate
    byzantine_clients: int = 0  # krum, multi_krum, bulyan: f tolerated attackers
    multi_krum_keep: int = 0  # multi_krum: m updates averaged; 0 = n − f
    weighting_exponent: float = 0.5  # adaptive_weighting: w ∝ (n_k/Σn)^a · (s_k/Σs)^(1−a)
    # Client selection among the available clients.
    selection: str = "uniform"  # uniform | power_of_choice | availability
    selection_candidates: int = 0  # power_of_choice: d candidates sampled; 0 = 2 × clients_per_round
    # Unreliable clients.
    dropout_probability: float = 0.0  # each selected client drops out of a round with this probability
    dropout_stage: str = "before"  # before: never starts; during: trains, its update never arrives
    dropout_heterogeneous: bool = False  # each client's own probability drawn once, uniform in [0, 2p]
    # Fewer updates than this: the round is skipped (model unchanged) and recorded. Not with
    # central DP, which always releases its noised sum: a skip would reveal the count.
    min_clients: int = 1
    speed_spread: float = 0.0  # σ of the lognormal speed factor of each client (0: all equally fast)
    round_deadline: float = 0.0  # in units of the median client's full local work at speed 1; 0 = none
    straggler_policy: str = "partial"  # past the deadline: partial (fewer local steps) | drop
    # Personalization, evaluated on each client's own held-out split.
    client_holdout: float = 0.0  # fraction of each client's examples held out as its test split
    personalization: str = "none"  # none | fedper (the final layer stays local) | finetune (after training)
    finetune_epochs: int = 1
    # Secure aggregation (Bonawitz et al. 2017): the server learns only the weighted sum.
    secure_aggregation: bool = False
    secagg_threshold: float = 0.5  # t as a fraction of each client's neighbourhood
    secagg_neighbours: int = 0  # SecAgg+: k (even) neighbours per client; 0 = all clients of the round

    def validate(self) -> None:
        _integer("federation.num_clients", self.num_clients, low=1, high=100_000)
        _integer("federation.clients_per_round", self.clients_per_round, low=1, high=100_000)
        if self.clients_per_round > self.num_clients:
            raise ValueError(
                f"federation.clients_per_round ({self.clients_per_round}) must be "
                f"<= federation.num_clients ({self.num_clients})"
            )
        _integer("federation.rounds", self.rounds, low=1, high=100_000)
        _integer("federation.local_epochs", self.local_epochs, low=1, high=1_000)
        _integer("federation.batch_size", self.batch_size, low=1, high=100_000)
        _number("federation.learning_rate", self.learning_rate, low=1e-8, high=100.0)
        _one_of("federation.client_optimizer", self.client_optimizer, CLIENT_OPTIMIZERS)
        _one_of("federation.strategy", self.strategy, STRATEGIES)
        _number("federation.proximal_mu", self.proximal_mu, low=0.0, high=1e4)
        _number("federation.server_learning_rate", self.server_learning_rate, low=0.0, high=100.0)
        _number("federation.server_momentum", self.server_momentum, low=0.0, high=0.999)
        _number("federation.beta1", self.beta1, low=0.0, high=0.999)
        _number("federation.beta2", self.beta2, low=0.0, high=0.9999)
        _number("federation.tau", self.tau, low=1e-12, high=10.0)
        _number("federation.trim_fraction", self.trim_fraction, low=0.0, high=0.49)
        _integer("federation.byzantine_clients", self.byzantine_clients, low=0, high=100_000)
        _integer("federation.multi_krum_keep", self.multi_krum_keep, low=0, high=100_000)
        _number("federation.weighting_exponent", self.weighting_exponent, low=0.0, high=1.0)
        self._validate_robust()
        _one_of("federation.selection", self.selection, SELECTIONS)
        _integer("federation.selection_candidates", self.selection_candidates, low=0, high=100_000)
        if self.selection == "power_of_choice" and self.selection_candidates:
            if not self.clients_per_round <= self.selection_candidates <= self.num_clients:
                raise ValueError(
                    f"federation.selection_candidates ({self.selection_candidates}) must be between "
                    f"clients_per_round ({self.clients_per_round}) and num_clients ({self.num_clients})"
                )
        _number("federation.dropout_probability", self.dropout_probability, low=0.0, high=0.95)
        _one_of("federation.dropout_stage", self.dropout_stage, DROPOUT_STAGES)
        _boolean("federation.dropout_heterogeneous", self.dropout_heterogeneous)
        _integer("federation.min_clients", self.min_clients, low=1, high=100_000)
        if self.min_clients > self.clients_per_round:
            raise ValueError(
                f"federation.min_clients ({self.min_clients}) must be <= clients_per_round ({self.clients_per_round})"
            )
        _number("federation.speed_spread", self.speed_spread, low=0.0, high=3.0)
        _number("federation.round_deadline", self.round_deadline, low=0.0, high=1e3)
        _one_of("federation.straggler_policy", self.straggler_policy, STRAGGLER_POLICIES)
        _number("federation.client_holdout", self.client_holdout, low=0.0, high=0.5)
        _one_of("federation.personalization", self.personalization, PERSONALIZATIONS)
        _integer("federation.finetune_epochs", self.finetune_epochs, low=1, high=100)
        _boolean("federation.secure_aggregation", self.secure_aggregation)
        _number("federation.secagg_threshold", self.secagg_threshold, low=0.01, high=1.0)
        _integer("federation.secagg_neighbours", self.secagg_neighbours, low=0, high=100_000)
        if self.secagg_neighbours % 2:
            raise ValueError(f"federation.secagg_neighbours must be even (a Harary graph), got {self.secagg_neighbours}")
        if self.secure_aggregation and self.strategy not in SUM_STRATEGIES:
            raise ValueError(
                f"federation.secure_aggregation reveals only the sum of the updates; federation.strategy "
                f"{self.strategy!r} needs each update. Use one of {', '.join(SUM_STRATEGIES)}"
            )
        needs_holdout = [
            text for text, on in (
                (f"federation.personalization = {self.personalization!r}", self.personalization != "none"),
                ("federation.strategy = 'adaptive_weighting'", self.strategy == "adaptive_weighting"),
            ) if on
        ]  # fmt: skip
        if needs_holdout and self.client_holdout <= 0:
            raise ValueError(
                f"{needs_holdout[0]} needs each client's own held-out split: "
                "set federation.client_holdout > 0 (e.g. 0.1)"
            )
        self._validate_optimizer()

    def _validate_optimizer(self) -> None:
        """AdamW only where the local training it replaces does not assume plain SGD."""
        if self.client_optimizer == "sgd":
            return
        if self.strategy == "scaffold":
            raise ValueError(
                "federation.strategy = 'scaffold' derives its control variates from plain SGD steps "
                f"(c_i = (w_global − w_i) / (K·lr)): federation.client_optimizer must be 'sgd', "
                f"got {self.client_optimizer!r}"
            )
        if self.personalization == "finetune":
            raise ValueError(
                "federation.personalization = 'finetune' fine-tunes with plain SGD: "
                f"federation.client_optimizer must be 'sgd', got {self.client_optimizer!r}"
            )

    def _validate_robust(self) -> None:
        """Krum-family rules need enough updates for f attackers (Blanchard et al.; El Mhamdi et al.)."""
        if self.strategy not in ROBUST_STRATEGIES:
            return
        f = self.byzantine_clients
        needed = 4 * f + 3 if self.strategy == "bulyan" else 2 * f + 3
        if self.clients_per_round < needed:
            raise ValueError(
                f"federation.strategy = {self.strategy!r} with byzantine_clients = {f} needs "
                f"clients_per_round >= {needed}, got {self.clients_per_round}"
            )
        if self.multi_krum_keep > self.clients_per_round:
            raise ValueError(
                f"federation.multi_krum_keep ({self.multi_krum_keep}) must be <= clients_per_round "
                f"({self.clients_per_round})"
            )


@dataclass(frozen=True)
class PrivacyConfig:
    # none: no formal privacy. local: DP-SGD on every client (sample-level ε per client).
    # central: DP-FedAvg, clipped updates + server noise (user-level ε).
    mode: str = "none"
    noise_multiplier: float = 1.0  # σ: noise std / clip norm; ignored when target_epsilon > 0
    max_grad_norm: float = 1.0  # C: per-example gradient (local) or per-client update (central) bound
    target_epsilon: float = 0.0  # > 0: calibrate σ so the whole run ends at <= this ε
    delta: float = 1e-5
    accountant: str = "rdp"
    # > 0: after the run, a membership-inference audit of the final model on this many
    # trained-on and as many held-out examples (privacy_audit.py); 0: no audit.
    audit_examples: int = 1000
    max_epsilon: float = 0.0  # > 0: a budget; the run stops before a round that would exceed it
    # central only: adapt C each round towards the target quantile of update norms (Andrew et al. 2021)
    adaptive_clipping: bool = False
    target_quantile: float = 0.5
    clip_learning_rate: float = 0.2

    def validate(self) -> None:
        _one_of("privacy.mode", self.mode, PRIVACY_MODES, NOT_YET.get(("privacy", "mode")))
        _number("privacy.noise_multiplier", self.noise_multiplier, low=0.0, high=1e4)
        _number("privacy.max_grad_norm", self.max_grad_norm, low=1e-8, high=1e6)
        _number("privacy.target_epsilon", self.target_epsilon, low=0.0, high=1e4)
        _number("privacy.delta", self.delta, low=0.0, high=1.0)
        if not 0.0 < self.delta < 1.0:
            raise ValueError(f"privacy.delta must be in (0, 1), got {self.delta!r}")
        _one_of("privacy.accountant", self.accountant, ACCOUNTANTS)
        _integer("privacy.audit_examples", self.audit_examples, low=0, high=100_000)
        _number("privacy.max_epsilon", self.max_epsilon, low=0.0, high=1e4)
        _boolean("privacy.adaptive_clipping", self.adaptive_clipping)
        _number("privacy.target_quantile", self.target_quantile, low=0.01, high=0.99)
        _number("privacy.clip_learning_rate", self.clip_learning_rate, low=1e-4, high=10.0)
        if self.adaptive_clipping and self.mode != "central":
            raise ValueError(f"privacy.adaptive_clipping needs privacy.mode = 'central', got {self.mode!r}")
        if self.mode != "none" and self.target_epsilon == 0 and self.noise_multiplier == 0:
            raise ValueError(
                "privacy.noise_multiplier must be > 0 with privacy.mode = "
                f"{self.mode!r} (σ = 0 gives ε = ∞); or set privacy.target_epsilon"
            )
        if self.target_epsilon > 0 and self.max_epsilon > 0 and self.max_epsilon < self.target_epsilon:
            raise ValueError(
                f"privacy.max_epsilon ({self.max_epsilon}) is below privacy.target_epsilon ({self.target_epsilon})"
            )

    @property
    def enabled(self) -> bool:
        return self.mode != "none"


@dataclass(frozen=True)
class SystemConfig:
    seed: int = 0
    # Parallel client trainers (processes, one thread each). 0 = automatic: as many
    # as there are cores, never more than clients per round; 1 = train in-process.
    num_workers: int = 0
    backend: str = "torch"  # torch | mlx (local training on Apple's MLX: the MNIST models, tinyllama-lora; `mlx[cpu]` on Linux)
    runtime: str = "in-process"  # in-process | flower (a local Flower deployment: flower_deployment.py)

    def validate(self) -> None:
        _integer("system.seed", self.seed, low=0, high=2**32 - 1)
        _integer("system.num_workers", self.num_workers, low=0, high=256)
        _one_of("system.backend", self.backend, BACKENDS)
        _one_of("system.runtime", self.runtime, RUNTIMES)


@dataclass(frozen=True)
class AttackConfig:
    """Malicious clients: a seeded `fraction` of all clients behaves as `behaviour` in every round."""

    fraction: float = 0.0  # 0: nobody is malicious
    behaviour: str = "sign_flip"  # sign_flip | gaussian | scale (model replacement) | label_flip
    scale: float = 10.0  # sign_flip sends −scale·update, scale sends scale·update
    noise_std: float = 1.0  # gaussian: the update is replaced by N(0, noise_std²) per weight

    def validate(self) -> None:
        _number("attack.fraction", self.fraction, low=0.0, high=1.0)
        _one_of("attack.behaviour", self.behaviour, ATTACKS)
        _number("attack.scale", self.scale, low=0.0, high=1e6)
        _number("attack.noise_std", self.noise_std, low=0.0, high=1e6)


@dataclass(frozen=True)
class CommunicationConfig:
    """The simulated network and the compression of uploads."""

    compression: str = "none"  # none | topk (with error feedback) | qsgd (stochastic quantization)
    topk_fraction: float = 0.01  # topk: share of the coordinates sent
    error_feedback: bool = True  # topk: keep what was not sent and add it to the next update
    quantization_bits: int = 8  # qsgd: bits per coordinate, sign included
    bandwidth_mbps: float = 20.0  # median per-client bandwidth, both directions (megabits/s)
    bandwidth_spread: float = 0.5  # σ of the lognormal spread of bandwidths across clients
    latency_ms: float = 50.0  # per-client one-way latency (median)
    latency_spread: float = 0.5  # σ of the lognormal spread of latencies across clients

    def validate(self) -> None:
        _one_of("communication.compression", self.compression, COMPRESSIONS)
        _number("communication.topk_fraction", self.topk_fraction, low=1e-6, high=1.0)
        _boolean("communication.error_feedback", self.error_feedback)
        _integer("communication.quantization_bits", self.quantization_bits, low=2, high=16)
        _number("communication.bandwidth_mbps", self.bandwidth_mbps, low=1e-3, high=1e6)
        _number("communication.bandwidth_spread", self.bandwidth_spread, low=0.0, high=3.0)
        _number("communication.latency_ms", self.latency_ms, low=0.0, high=1e6)
        _number("communication.latency_spread", self.latency_spread, low=0.0, high=3.0)


SECTIONS: dict[str, type] = {
    "data": DataConfig,
    "model": ModelConfig,
    "federation": FederationConfig,
    "privacy": PrivacyConfig,
    "system": SystemConfig,
    "attack": AttackConfig,
    "communication": CommunicationConfig,
}


@dataclass(frozen=True)
class ExperimentConfig:
    """A whole experiment. Build with `from_dict`, `from_toml` or the constructor."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    federation: FederationConfig = field(default_factory=FederationConfig)
    privacy: PrivacyConfig = field(default_factory=PrivacyConfig)
    system: SystemConfig = field(default_factory=SystemConfig)
    attack: AttackConfig = field(default_factory=AttackConfig)
    communication: CommunicationConfig = field(default_factory=CommunicationConfig)

    def __post_init__(self) -> None:
        for name, cls in SECTIONS.items():
            section = getattr(self, name)
            if not isinstance(section, cls):
                raise ValueError(f"{name} must be a {cls.__name__}, got {type(section).__name__}")
            section.validate()
        self._check_workload()
        if self.privacy.mode == "local" and self.federation.client_optimizer != "sgd":
            raise ValueError(
                "privacy.mode = 'local' runs DP-SGD (clipped, noised SGD steps): federation.client_optimizer "
                f"must be 'sgd', got {self.federation.client_optimizer!r}"
            )
        if self.privacy.mode == "central" and self.federation.strategy != "fedavg":
            raise ValueError(
                "privacy.mode = 'central' runs DP-FedAvg: federation.strategy must be 'fedavg', "
                f"got {self.federation.strategy!r}"
            )
        if self.privacy.mode == "central" and self.federation.personalization == "fedper":
            raise ValueError(
                "federation.personalization = 'fedper' keeps each client's last layer out of the "
                "aggregate, which privacy.mode = 'central' (DP-FedAvg over whole updates) does not cover"
            )
        if self.federation.secure_aggregation and self.communication.compression != "none":
            raise ValueError(
                "federation.secure_aggregation masks dense vectors: communication.compression must be 'none', "
                f"got {self.communication.compression!r}"
            )
        if self.federation.secure_aggregation and self.federation.personalization == "fedper":
            raise ValueError("federation.secure_aggregation does not support personalization = 'fedper' yet")
        if self.privacy.mode == "central" and self.federation.selection != "uniform":
            raise ValueError(
                "privacy.mode = 'central' samples clients by Poisson sampling, as its accountant assumes: "
                f"federation.selection must be 'uniform', got {self.federation.selection!r}"
            )

    def _check_workload(self) -> None:
        """Data, model and backend must fit together."""
        data, model = self.data, self.model
        text = data.dataset in ("ngss", "csv")
        if text and model.name not in TEXT_MODELS:
            raise ValueError(
                f"data.dataset = {data.dataset!r} is rubric scoring of text: model.name must be one of "
                f"{', '.join(TEXT_MODELS)}, got {model.name!r}"
            )
        if not text and model.name not in IMAGE_MODELS:
            raise ValueError(f"data.dataset = 'mnist' needs model.name {' or '.join(IMAGE_MODELS)}, got {model.name!r}")
        if data.dataset == "ngss" and data.partition == "natural" and self.federation.num_clients != NGSS_SCHOOLS:
            raise ValueError(
                f"data.partition = 'natural' makes each of the {NGSS_SCHOOLS} synthetic schools a client: "
                f"federation.num_clients must be {NGSS_SCHOOLS}, got {self.federation.num_clients}"
            )
        if text:
            pooling = text_pooling(model.name, model.pooling)
        if self.system.backend == "mlx":
            if text and model.name != "tinyllama-lora":
                raise ValueError(
                    f"system.backend = 'mlx' runs MNIST ({', '.join(IMAGE_MODELS)}) or tinyllama-lora, not {model.name}"
                )
            if text and pooling != "last":
                raise ValueError(f"system.backend = 'mlx' reads the last token (model.pooling = 'last'), not {pooling!r}")
            if self.privacy.mode == "local":
                raise ValueError(
                    "system.backend = 'mlx' has no DP-SGD: privacy.mode = 'local' needs system.backend = 'torch'"
                )

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> ExperimentConfig:
        """Build from `{section: {key: value}}`; unknown sections or keys are errors."""
        if not isinstance(raw, dict):
            raise ValueError(f"config must be a table of sections, got {type(raw).__name__}")
        sections = {}
        for name, values in raw.items():
            if name not in SECTIONS:
                raise ValueError(f"unknown config section {_shown(name)}; sections: {', '.join(SECTIONS)}")
            if not isinstance(values, dict):
                raise ValueError(f"config section {name!r} must be a table, got {type(values).__name__}")
            sections[name] = _build_section(name, SECTIONS[name], values)
        return cls(**sections)

    @classmethod
    def from_stored(cls, raw: dict[str, Any]) -> ExperimentConfig:
        """A config as any version of this code stored it (a checkpoint): keys added since take their defaults,
        which keep the old behaviour, except that a minilm-lora run from before `model.pooling` read [CLS]
        (migration 0005 makes the same change to the database's rows)."""
        model = raw.get("model") if isinstance(raw, dict) else None
        if isinstance(model, dict) and model.get("name") == "minilm-lora" and "pooling" not in model:
            raw = {**raw, "model": {**model, "pooling": "cls"}}
        return cls.from_dict(raw)

    @classmethod
    def from_toml(cls, path: str | Path) -> ExperimentConfig:
        try:
            with open(path, "rb") as handle:
                data = handle.read()
        except FileNotFoundError:
            raise ValueError(f"config file not found: {path}") from None
        except (OSError, ValueError) as error:  # a folder, no permission, a NUL in the name
            reason = getattr(error, "strerror", None) or error
            raise ValueError(f"config file {path} cannot be read: {reason}") from None
        try:
            raw = tomllib.loads(data.decode("utf-8"))
        # TOMLDecodeError, not UTF-8 and an integer past Python's 4300-digit limit are ValueErrors.
        except (ValueError, RecursionError) as error:
            raise ValueError(f"config file {path} is not valid TOML: {_problem(error)}") from None
        return cls.from_dict(raw)

    @classmethod
    def from_json(cls, text: str | bytes) -> ExperimentConfig:
        try:
            raw = json.loads(text)
        except (ValueError, RecursionError) as error:  # as in from_toml
            raise ValueError(f"config is not valid JSON: {_problem(error)}") from None
        return cls.from_dict(raw)

    def to_dict(self) -> dict[str, dict[str, Any]]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    def with_overrides(self, assignments: list[str]) -> ExperimentConfig:
        """Apply `section.key=value` strings; values parse as TOML scalars, else strings."""
        raw = self.to_dict()
        for assignment in assignments:
            dotted, sep, text = assignment.partition("=")
            section, dot, key = dotted.strip().partition(".")
            if not sep or not dot or not key:
                raise ValueError(f"--set expects section.key=value, got {_shown(assignment)}")
            if section not in SECTIONS:
                raise ValueError(f"unknown config section {_shown(section)} in {_shown(assignment)}")
            raw[section][key.strip()] = _parse_scalar(text.strip())
        return ExperimentConfig.from_dict(raw)

    def replace(self, section: str, **changes: Any) -> ExperimentConfig:
        """A copy with some keys of one section changed (validated again)."""
        return dataclasses.replace(self, **{section: dataclasses.replace(getattr(self, section), **changes)})


def _build_section(name: str, cls: type, values: dict[str, Any]) -> Any:
    known = {f.name: f for f in fields(cls)}
    for key in values:
        if key not in known:
            shown = key if isinstance(key, str) and key.isprintable() and len(key) <= 40 else _shown(key)
            raise ValueError(f"unknown key {name}.{shown}; keys: {', '.join(known)}")
    coerced = {}
    for key, value in values.items():
        # TOML and JSON write 1 for 1.0: accept ints where a float is expected (one past the
        # float range stays an int, which validation refuses as out of range).
        if known[key].type == "float" and isinstance(value, int) and not isinstance(value, bool):
            value = float(value) if abs(value) <= sys.float_info.max else value
        coerced[key] = value
    return cls(**coerced)


def _parse_scalar(text: str) -> Any:
    """`text` as a TOML value if it is exactly one, else the string itself."""
    try:
        parsed = tomllib.loads(f"value = {text}")
    except (ValueError, RecursionError):  # as in from_toml
        return text
    return parsed["value"] if len(parsed) == 1 else text  # "5\nx = 3" is not one value


_SHOWN_CHARS = 80  # of a bad value in an error message


def _shown(value: Any) -> str:
    """`repr(value)` for an error message: one line, at most about 80 characters, and never
    raising (an int past Python's 4300-digit str limit, a list nested past the recursion limit)."""
    try:
        text = repr(value)
    except (ValueError, RecursionError):
        return f"a {type(value).__name__} too large to show"
    return text if len(text) <= _SHOWN_CHARS else f"{text[:_SHOWN_CHARS - 3]}..."


def _problem(error: BaseException) -> str:
    """A parser's error on one line (RecursionError says nothing about the input)."""
    if isinstance(error, RecursionError):
        return "nested too deeply"
    return " ".join(str(error).split())


def _one_of(name: str, value: Any, allowed: tuple[str, ...], later: set[str] | None = None) -> None:
    if later and value in later:
        raise ValueError(f"{name} = {value!r} is not available in this version; available: {', '.join(allowed)}")
    if not isinstance(value, str) or value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(allowed)}; got {_shown(value)}")


def _integer(name: str, value: Any, *, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an integer, got {_shown(value)}")
    if not low <= value <= high:
        raise ValueError(f"{name} must be in [{low}, {high}], got {_shown(value)}")


def _number(name: str, value: Any, *, low: float, high: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be a number, got {_shown(value)}")
    if not low <= value <= high:  # NaN fails this too; an int is compared exactly, however large
        raise ValueError(f"{name} must be in [{low:g}, {high:g}], got {_shown(value)}")


def _boolean(name: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be true or false, got {_shown(value)}")


def _string(name: str, value: Any) -> None:
    if not isinstance(value, str):
        raise ValueError(f"{name} must be a string, got {_shown(value)}")
