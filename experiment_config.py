"""The one description of an experiment: a frozen, validated `ExperimentConfig`.

The sidebar builds it, the CLI reads it from TOML (plus `--set section.key=value`),
the engine runs it and the database stores it as JSON. Validation happens once,
when it is built: a bad value raises `ValueError` naming the field and what is
allowed, before anything runs or is written.

This module is the one home of the name lists (`STRATEGIES`, `ACCOUNTANTS`, ...), of each key's
allowed values (`OPTIONS`) and range (`BOUNDS`), which the sidebar reads too, and of the checks
everyone validates with (`check_number`, `check_integer`, `check_one_of`, `check_boolean`,
`check_string`): the config, the privacy code and the strategies. It imports no torch, so the
page can build configs without paying for it. `federated_learning` re-exports `ExperimentConfig`,
where DESIGN.md places it.

    cfg = ExperimentConfig.from_dict({"federation": {"rounds": 5}})
    cfg = cfg.with_overrides(["model.name=mlp", "federation.num_clients=20"])
    cfg.to_dict()  # plain JSON-able dict, round-trips through from_dict
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

DATASETS = ("mnist", "ngss", "csv", "folder")  # ngss: the synthetic generator; csv: the lab's files (NGSS.md)
# folder: your own images, DIR/<client>/<label>/*.png or DIR/<label>/*.png (engine/image_folder.py)
PARTITIONS = ("iid", "dirichlet", "shards", "natural")  # natural: one client per school (ngss, csv) or top folder
IMAGE_CHANNELS = (1, 3)  # data.image_channels of a folder: grey or RGB
IMAGE_MODELS = ("cnn", "mlp", "cnn-dp", "scatter-linear", "scatter-cnn")
SCATTER_MODELS = ("scatter-linear", "scatter-cnn")  # a fixed scattering transform + a trained head (model.py)
AUGMENTABLE_MODELS = tuple(name for name in IMAGE_MODELS if name not in SCATTER_MODELS)  # they train on pixels
TEXT_MODELS = ("tinyllama-lora", "minilm-lora")  # rubric scoring: a backbone with LoRA + a multi-label head
MODELS = IMAGE_MODELS + TEXT_MODELS
# What a text model's head reads (model.pooling), its default first; text_models.py explains each.
# Transformer layers of each text backbone: model.lora_layers counts from the top of these.
TEXT_LAYERS = {"tinyllama-lora": 8, "minilm-lora": 6}
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


# The nine task slugs; ngss/tasks.py holds each task's definition (a test checks the names and order match).
NGSS_TASKS = (
    "anna_vs_carla", "breaking_down_hydrogen_peroxide", "carlos_javier_atomic_model", "dry_ice_model",
    "gas_filled_balloons", "layers_in_test_tube", "model_for_making_water", "namis_careful_experiment",
    "natural_sugar",
)  # fmt: skip
NGSS_SCHOOLS = 9  # the synthetic generator's schools: partition = "natural" makes each a client
BACKENDS = ("torch", "mlx")
RUNTIMES = ("in-process", "flower")  # flower: a SuperLink and one SuperNode per client on loopback
# Local training's arithmetic: fp32, or bf16 autocast of the forward pass (weights, optimizer, updates,
# aggregation, noise and accounting stay fp32/float64; engine/client_trainers.py says why).
PRECISIONS = ("fp32", "bf16")
# engine/strategies.py registers one factory per name, in this order (a test checks they match).
STRATEGIES = (
    "fedavg", "fedprox", "fedavgm", "fedadagrad", "fedadam", "fedyogi", "scaffold", "fednova",
    "median", "trimmed_mean", "krum", "multi_krum", "bulyan", "adaptive_weighting", "qfedavg",
)  # fmt: skip
ROBUST_STRATEGIES = ("krum", "multi_krum", "bulyan")  # need byzantine_clients f and enough updates
# Rules that need only the weighted sum of the updates: they can run under secure aggregation.
SUM_STRATEGIES = ("fedavg", "fedprox", "fedavgm", "fedadagrad", "fedadam", "fedyogi")
SELECTIONS = ("uniform", "power_of_choice", "availability")
# How central DP samples clients each round, and the neighbouring relation its ε is accounted under
# (privacy/accounting.py: NEIGHBOURING_RELATIONS). poisson: each client independently with
# q = clients_per_round / num_clients (add/remove one client). fixed: exactly clients_per_round of
# num_clients, uniformly without replacement (replace one client). Other modes always take exactly
# clients_per_round (federation.selection) and account no client sampling, so there "fixed" says what
# happens and "poisson" (the default) changes nothing. cyclic (DP-FTRL only): the clients in one seeded
# order, each round the next clients_per_round of it, so each client takes part once every
# num_clients / clients_per_round rounds (Kairouz et al. 2021's schedule; zero-out one client).
CLIENT_SAMPLINGS = ("poisson", "fixed", "cyclic")
DROPOUT_STAGES = ("before", "during")
STRAGGLER_POLICIES = ("partial", "drop")
PERSONALIZATIONS = ("none", "fedper", "finetune")
ATTACKS = ("sign_flip", "gaussian", "scale", "label_flip")
# Byzantine clients caught by their suspicion score (engine.suspicion): none (scored only) | flagged (left out)
EXCLUSIONS = ("none", "flagged")
# sync: each round waits for its cohort. async: FedBuff (Nguyen et al. 2022, engine/fedbuff.py): one round is one
# server step, taken once federation.buffer_size updates have arrived from clients training at their own pace.
FEDERATION_MODES = ("sync", "async")
COMPRESSIONS = ("none", "topk", "qsgd")
PRIVACY_MODES = ("none", "local", "central")
# Central DP's mechanism. dp-fedavg: clipped updates + fresh Gaussian noise each round, accounted with
# amplification by client sampling. dp-ftrl: the noise of a binary tree on the running sum of clipped updates
# (Kairouz et al. 2021), accounted without any sampling assumption (zCDP; privacy/ftrl.py).
CENTRAL_MECHANISMS = ("dp-fedavg", "dp-ftrl")
# DP-FedAvg's noise under secure aggregation, added in shares by the clients. gaussian: real shares, the
# inputs on the protocol's 2^-24 fixed-point grid, accounted as a continuous Gaussian. skellam: integer
# shares in the protocol's ring, accounted for the discrete mechanism (Agarwal et al. 2021; privacy/skellam.py).
DISTRIBUTED_NOISES = ("gaussian", "skellam")
# The empirical audit after the run (privacy/audit.py, privacy/one_run_audit.py). loss: the quick
# loss-threshold membership attack on privacy.audit_examples trained-on and held-out examples. one_run:
# privacy.audit_canaries random-label canaries, half trained on, and the ε lower bound their guesses imply.
AUDITS = ("loss", "one_run")
MNIST_TEST_EXAMPLES = 10_000  # the one_run canaries come from the test split
# rdp, prv: Opacus's accountants; pld: privacy loss distributions (Google's dp_accounting).
# privacy/accounting.py maps each name to its accountant class.
ACCOUNTANTS = ("rdp", "prv", "pld")
# The accountants with a bound for fixed-size client sampling (without replacement): dp_accounting's RDP
# (Wang, Balle & Kasiviswanathan 2019). dp_accounting 0.6.0's PLD rejects SampledWithoutReplacementDpEvent
# and Opacus's accountants assume Poisson sampling (privacy/accounting.py says more).
FIXED_SIZE_ACCOUNTANTS = ("rdp",)
# The clients' local optimizer. adamw: a fresh torch.optim.AdamW each round (its moments do not
# carry over from round to round); SCAFFOLD, DP-SGD and fine-tuning assume plain SGD.
CLIENT_OPTIMIZERS = ("sgd", "adamw")

# The allowed values of every key that names a choice: validation and the sidebar's select boxes read them here.
OPTIONS: dict[str, tuple[str, ...]] = {
    "data.dataset": DATASETS, "data.partition": PARTITIONS, "data.ngss_task": NGSS_TASKS,
    "model.name": MODELS, "model.pooling": ("", *POOLINGS),  # "": the model's default (TEXT_POOLINGS)
    "federation.client_optimizer": CLIENT_OPTIMIZERS, "federation.strategy": STRATEGIES,
    "federation.selection": SELECTIONS, "federation.client_sampling": CLIENT_SAMPLINGS,
    "federation.dropout_stage": DROPOUT_STAGES,
    "federation.straggler_policy": STRAGGLER_POLICIES, "federation.personalization": PERSONALIZATIONS,
    "privacy.mode": PRIVACY_MODES, "privacy.accountant": ACCOUNTANTS, "privacy.audit": AUDITS,
    "privacy.mechanism": CENTRAL_MECHANISMS, "privacy.distributed_noise": DISTRIBUTED_NOISES,
    "system.backend": BACKENDS, "system.runtime": RUNTIMES, "system.precision": PRECISIONS,
    "attack.behaviour": ATTACKS, "communication.compression": COMPRESSIONS, "federation.exclusion": EXCLUSIONS,
    "federation.mode": FEDERATION_MODES,
}  # fmt: skip

# The allowed range [low, high] of every numeric key (ints for int keys, floats for float keys):
# validation and the sidebar's number inputs read them here. privacy.delta is further kept inside (0, 1).
BOUNDS: dict[str, tuple[int, int] | tuple[float, float]] = {
    "data.dirichlet_alpha": (1e-3, 1e4), "data.max_train_examples": (0, 10_000_000),
    "data.max_test_examples": (0, 10_000_000), "data.examples_per_client": (0, 100_000),
    "data.image_size": (16, 128), "data.image_channels": (1, 3),
    "model.lora_rank": (1, 256), "model.lora_alpha": (0.01, 1e4), "model.lora_dropout": (0.0, 0.9),
    "model.lora_layers": (0, 64),
    "model.max_length": (8, 2048),
    "federation.num_clients": (1, 100_000), "federation.clients_per_round": (1, 100_000),
    "federation.rounds": (1, 100_000), "federation.local_epochs": (1, 1_000), "federation.batch_size": (1, 100_000),
    "federation.learning_rate": (1e-8, 100.0), "federation.proximal_mu": (0.0, 1e4),
    "federation.server_learning_rate": (0.0, 100.0), "federation.server_momentum": (0.0, 0.999),
    "federation.server_ema": (0.0, 0.9999),
    "federation.beta1": (0.0, 0.999), "federation.beta2": (0.0, 0.9999), "federation.tau": (1e-12, 10.0),
    "federation.trim_fraction": (0.0, 0.49), "federation.byzantine_clients": (0, 100_000),
    "federation.multi_krum_keep": (0, 100_000), "federation.weighting_exponent": (0.0, 1.0),
    "federation.qffl_q": (0.0, 50.0), "federation.qffl_lipschitz": (0.0, 1e6),
    "federation.selection_candidates": (0, 100_000), "federation.dropout_probability": (0.0, 0.95),
    "federation.min_clients": (1, 100_000), "federation.speed_spread": (0.0, 3.0),
    "federation.round_deadline": (0.0, 1e3), "federation.client_holdout": (0.0, 0.5),
    "federation.finetune_epochs": (1, 100), "federation.secagg_threshold": (0.01, 1.0),
    "federation.secagg_neighbours": (0, 100_000),
    "federation.exclusion_flags": (1, 1_000), "federation.exclusion_window": (1, 1_000),
    "federation.buffer_size": (1, 100_000), "federation.max_concurrency": (1, 100_000),
    "federation.staleness_exponent": (0.0, 10.0),
    "privacy.noise_multiplier": (0.0, 1e4), "privacy.max_grad_norm": (1e-8, 1e6), "privacy.target_epsilon": (0.0, 1e4),
    "privacy.delta": (0.0, 1.0), "privacy.audit_examples": (0, 100_000), "privacy.max_epsilon": (0.0, 1e4),
    "privacy.target_quantile": (0.01, 0.99), "privacy.clip_learning_rate": (1e-4, 10.0),
    "privacy.audit_canaries": (0, 100_000), "privacy.augmentations": (0, 64),
    "system.seed": (0, 2**32 - 1), "system.num_workers": (0, 256),
    "attack.fraction": (0.0, 1.0), "attack.scale": (0.0, 1e6), "attack.noise_std": (0.0, 1e6),
    "communication.topk_fraction": (1e-6, 1.0), "communication.quantization_bits": (2, 16),
    "communication.topk_momentum": (0.0, 0.99), "communication.topk_warmup_rounds": (0, 1_000),
    "communication.bandwidth_mbps": (1e-3, 1e6), "communication.bandwidth_spread": (0.0, 3.0),
    "communication.latency_ms": (0.0, 1e6), "communication.latency_spread": (0.0, 3.0),
}  # fmt: skip


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
    # > 0: a synthetic population for scale tests: each client draws this many distinct examples (seeded) from the
    # whole training set, independently of the others, so clients may share examples and num_clients may exceed
    # the data (100,000 clients over MNIST's 60,000). Partition iid, no privacy (a shared example is not one client's).
    examples_per_client: int = 0
    # data.dataset = "folder" only: the image folder, and the square size and channels every image is read at.
    folder_path: str = ""
    image_size: int = 32
    image_channels: int = 3  # 1: grey, 3: RGB

    def validate(self) -> None:
        check_fields("data", self)
        if self.image_channels not in IMAGE_CHANNELS:
            raise ValueError(f"data.image_channels must be 1 (grey) or 3 (RGB), got {self.image_channels}")
        if self.dataset == "folder" and not self.folder_path.strip():
            raise ValueError("data.dataset = 'folder' needs data.folder_path: DIR/<client>/<label>/*.png or DIR/<label>/*.png")
        if self.dataset == "csv" and not self.csv_path.strip():
            raise ValueError("data.dataset = 'csv' needs data.csv_path: the {task}_train.csv file to import")
        if self.partition == "natural" and self.dataset == "mnist":
            raise ValueError(
                "data.partition = 'natural' needs data with schools (data.dataset 'ngss' or 'csv') or client folders "
                "('folder')"
            )
        if not self.data_dir.strip():
            raise ValueError("data.data_dir must not be empty")
        if self.examples_per_client and self.partition != "iid":
            raise ValueError("data.examples_per_client draws each client's examples at random: it needs "
                             f"data.partition = 'iid', got {self.partition!r}")  # fmt: skip

    def image_options(self) -> dict[str, int]:
        """The input shape `model.create_model` builds an image model for: a folder's size and channels;
        empty for MNIST (the models' own 28×28 grey default)."""
        if self.dataset != "folder":
            return {}
        return {"channels": self.image_channels, "image_size": self.image_size}


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
    lora_layers: int = 0  # LoRA on the top N transformer layers only, the frozen ones below cached; 0 = every layer

    def validate(self) -> None:
        check_fields("model", self)
        if self.name in TEXT_LAYERS and self.lora_layers > TEXT_LAYERS[self.name]:
            raise ValueError(
                f"model.lora_layers must be at most {self.name}'s {TEXT_LAYERS[self.name]} layers (0: every layer); "
                f"got {self.lora_layers}"
            )

    def text_options(self) -> dict[str, Any]:
        """The keyword arguments `model.create_model` takes for a text model."""
        targets = tuple(t.strip() for t in self.lora_targets.split(",") if t.strip())
        return {
            "pretrained": self.pretrained, "lora_rank": self.lora_rank, "lora_alpha": self.lora_alpha,
            "lora_dropout": self.lora_dropout, "lora_targets": targets, "pooling": self.pooling,
            "lora_layers": self.lora_layers,
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
    bucket_by_length: bool = False  # text: each batch of responses of similar length (less padding to compute)
    strategy: str = "fedavg"
    # Strategy parameters (each read only by the strategies named).
    proximal_mu: float = 0.01  # fedprox: μ of the proximal term μ/2·‖w − w_global‖²
    server_learning_rate: float = 0.0  # fedavgm/adagrad/adam/yogi/scaffold η; 0 = the strategy's default
    server_momentum: float = 0.9  # fedavgm
    # The released (evaluated, stored) model is an exponential moving average of the global weights,
    # ema_t = d·ema_(t−1) + (1 − d)·w_t from ema_1 = w_1: post-processing, free in ε. 0 = off; clients
    # always train from w_t.
    server_ema: float = 0.0
    beta1: float = 0.9  # fedadam, fedyogi (and fedadagrad's first moment)
    beta2: float = 0.99  # fedadam, fedyogi
    tau: float = 1e-3  # fedadagrad/adam/yogi: adaptivity
    trim_fraction: float = 0.2  # trimmed_mean: β trimmed from each end per coordinate
    byzantine_clients: int = 0  # krum, multi_krum, bulyan: f tolerated attackers
    multi_krum_keep: int = 0  # multi_krum: m updates averaged; 0 = n − f
    weighting_exponent: float = 0.5  # adaptive_weighting: w ∝ (n_k/Σn)^a · (s_k/Σs)^(1−a)
    qffl_q: float = 1.0  # qfedavg: q of the q-FFL objective Σ p_k F_k^(q+1)/(q+1); 0 = FedAvg, larger = fairer
    qffl_lipschitz: float = 0.0  # qfedavg: L, the Lipschitz estimate setting its step; 0 = 1/learning_rate (the paper's)
    # Client selection among the available clients.
    selection: str = "uniform"  # uniform | power_of_choice | availability
    selection_candidates: int = 0  # power_of_choice: d candidates sampled; 0 = 2 × clients_per_round
    client_sampling: str = "poisson"  # central DP: poisson | fixed (exactly clients_per_round) | cyclic (DP-FTRL)
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
    # Byzantine clients (engine.suspicion): every round each update gets a suspicion score; "flagged" leaves out
    # of the aggregate the clients flagged in exclusion_flags (k) of the last exclusion_window (m) rounds.
    exclusion: str = "none"  # none | flagged
    exclusion_flags: int = 1  # k
    exclusion_window: int = 1  # m (this round included)
    # Asynchronous FL (FedBuff, engine/fedbuff.py): under mode = "async" federation.rounds counts server steps.
    mode: str = "sync"  # sync | async
    buffer_size: int = 5  # async: K, the updates each server step applies (the earliest to arrive)
    max_concurrency: int = 10  # async: clients training at once
    staleness_exponent: float = 0.5  # async: an update s versions stale weighs (1 + s)^(-a); 0.5 = 1/sqrt(1 + s)

    def validate(self) -> None:
        check_fields("federation", self)
        self._validate_counts()
        self._validate_robust()
        self._validate_secure_aggregation()
        if self.exclusion_flags > self.exclusion_window:
            raise ValueError(
                f"federation.exclusion_flags ({self.exclusion_flags}) must be <= federation.exclusion_window "
                f"({self.exclusion_window}): flagged in k of the last m rounds"
            )
        self._validate_holdout()
        self._validate_optimizer()
        self._validate_ema()

    def _validate_counts(self) -> None:
        """Clients per round, candidates and the minimum of updates fit the number of clients."""
        if self.clients_per_round > self.num_clients:
            raise ValueError(
                f"federation.clients_per_round ({self.clients_per_round}) must be "
                f"<= federation.num_clients ({self.num_clients})"
            )
        if self.selection == "power_of_choice" and self.selection_candidates:
            if not self.clients_per_round <= self.selection_candidates <= self.num_clients:
                raise ValueError(
                    f"federation.selection_candidates ({self.selection_candidates}) must be between "
                    f"clients_per_round ({self.clients_per_round}) and num_clients ({self.num_clients})"
                )
        if self.min_clients > self.clients_per_round:
            raise ValueError(
                f"federation.min_clients ({self.min_clients}) must be <= clients_per_round ({self.clients_per_round})"
            )

    def _validate_secure_aggregation(self) -> None:
        """SecAgg+ needs an even neighbourhood; the server learns only the sum, so the rule must need no more."""
        if self.secagg_neighbours % 2:
            raise ValueError(f"federation.secagg_neighbours must be even (a Harary graph), got {self.secagg_neighbours}")
        if self.secure_aggregation and self.strategy not in SUM_STRATEGIES:
            raise ValueError(
                f"federation.secure_aggregation reveals only the sum of the updates; federation.strategy "
                f"{self.strategy!r} needs each update. Use one of {', '.join(SUM_STRATEGIES)}"
            )

    def _validate_holdout(self) -> None:
        """Personalization and adaptive weighting score each client on its own held-out split."""
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

    def _validate_optimizer(self) -> None:
        """AdamW only where the local training it replaces does not assume plain SGD."""
        if self.client_optimizer == "sgd":
            return
        if self.strategy == "qfedavg":
            raise ValueError(
                "federation.strategy = 'qfedavg' takes L = 1/learning_rate as the Lipschitz estimate of plain SGD "
                f"steps (Li et al. 2020): federation.client_optimizer must be 'sgd', got {self.client_optimizer!r}"
            )
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

    def _validate_ema(self) -> None:
        """The global model held between rounds is the released one, the EMA when it is on: rules that score
        clients with the current global model would score them with the average instead."""
        scorers = [text for text, on in (
            ("federation.selection = 'power_of_choice'", self.selection == "power_of_choice"),
            ("federation.strategy = 'qfedavg'", self.strategy == "qfedavg"),
        ) if on]  # fmt: skip
        if self.server_ema > 0 and scorers:
            raise ValueError(
                f"federation.server_ema releases an average of past global models, but {scorers[0]} scores clients "
                "with the current one: set federation.server_ema = 0"
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
    # central only: dp-fedavg | dp-ftrl (CENTRAL_MECHANISMS). dp-ftrl is accounted by zCDP over the seeded
    # participation schedule (privacy.accountant then does not apply) and uses federation.server_learning_rate.
    mechanism: str = "dp-fedavg"
    accountant: str = "rdp"
    # > 0: after the run, a membership-inference audit of the final model on this many
    # trained-on and as many held-out examples (privacy/audit.py); 0: no audit.
    audit_examples: int = 1000
    audit: str = "loss"  # loss | one_run: which audit (AUDITS); each one's size 0 = no audit
    audit_canaries: int = 1000  # one_run: m canaries taken from the test split, each trained on with probability 1/2
    max_epsilon: float = 0.0  # > 0: a budget; the run stops before a round that would exceed it
    # central only: adapt C each round towards the target quantile of update norms (Andrew et al. 2021)
    adaptive_clipping: bool = False
    target_quantile: float = 0.5
    clip_learning_rate: float = 0.2
    # Draw the DP noise from the operating system's CSPRNG (os.urandom) instead of the seed, and the sampling
    # with it (central DP: which clients a round takes; local DP: DP-SGD's Poisson batches, from a generator
    # seeded with 64 bits of os.urandom): nobody who knows the seed can reproduce them; runs with the same seed differ.
    secure_noise: bool = False
    # central DP under secure aggregation: gaussian | skellam (DISTRIBUTED_NOISES), the clients' noise shares
    distributed_noise: str = "gaussian"
    # local DP on image models: K > 0 sees each example as K random shifts and clips the mean of their
    # gradients (augmentation multiplicity, De et al. 2022); 0 = off. ε is unchanged, each step costs ~K×.
    augmentations: int = 0

    def canary_count(self) -> int:
        """How many canaries join the run's training data: audit_canaries with the one-run audit, else 0."""
        return self.audit_canaries if self.audit == "one_run" else 0

    def audit_size(self) -> int:
        """The audit's canaries (one_run) or examples of each kind (loss); 0 = no audit after the run."""
        return self.canary_count() if self.audit == "one_run" else self.audit_examples

    def validate(self) -> None:
        check_fields("privacy", self)
        if self.secure_noise and self.mode == "none":
            raise ValueError("privacy.secure_noise needs privacy.mode = 'local' or 'central': there is no noise to draw")
        check_number("privacy.delta", self.delta, low=0.0, high=1.0, low_open=True, high_open=True)
        if self.augmentations and self.mode != "local":
            raise ValueError("privacy.augmentations averages each example's gradient over its shifts before DP-SGD "
                             f"clips it: it needs privacy.mode = 'local', got {self.mode!r}")  # fmt: skip
        if self.adaptive_clipping and self.mode != "central":
            raise ValueError(f"privacy.adaptive_clipping needs privacy.mode = 'central', got {self.mode!r}")
        if self.distributed_noise == "skellam" and (self.mode, self.mechanism) != ("central", "dp-fedavg"):
            raise ValueError("privacy.distributed_noise = 'skellam' needs privacy.mode = 'central' and "
                             f"privacy.mechanism = 'dp-fedavg', got {self.mode!r} and {self.mechanism!r}")  # fmt: skip
        if self.distributed_noise == "skellam" and self.adaptive_clipping:
            raise ValueError("privacy.distributed_noise = 'skellam' needs privacy.adaptive_clipping = false: the "
                             "noised unclipped count is not accounted for the discrete mechanism")  # fmt: skip
        if self.mode != "none" and self.target_epsilon == 0 and self.noise_multiplier == 0:
            raise ValueError(
                "privacy.noise_multiplier must be > 0 with privacy.mode = "
                f"{self.mode!r} (σ = 0 gives ε = ∞); or set privacy.target_epsilon"
            )
        if self.target_epsilon > 0 and self.max_epsilon > 0 and self.max_epsilon < self.target_epsilon:
            raise ValueError(
                f"privacy.max_epsilon ({self.max_epsilon}) is below privacy.target_epsilon ({self.target_epsilon})"
            )


@dataclass(frozen=True)
class SystemConfig:
    seed: int = 0
    # Parallel client trainers (processes, one thread each). 0 = automatic: as many
    # as there are cores, never more than clients per round; 1 = train in-process.
    num_workers: int = 0
    backend: str = "torch"  # torch | mlx (local training on Apple's MLX: the MNIST models, tinyllama-lora; `mlx[cpu]` on Linux)
    runtime: str = "in-process"  # in-process | flower (a local Flower deployment: flower_deployment.py)
    # An MLflow tracking server the run logs to as it goes (tracking/); "" = none (MLFLOW_TRACKING_URI still applies).
    mlflow_uri: str = ""
    precision: str = "fp32"  # fp32 | bf16 (the clients' forward pass under bf16 autocast; torch backend only)

    def validate(self) -> None:
        check_fields("system", self)
        check_tracking_uri("system.mlflow_uri", self.mlflow_uri)
        if self.precision != "fp32" and self.backend != "torch":
            raise ValueError(f"system.precision = {self.precision!r} is torch autocast: it needs system.backend = "
                             f"'torch', got {self.backend!r}")  # fmt: skip

@dataclass(frozen=True)
class AttackConfig:
    """Malicious clients: a seeded `fraction` of all clients behaves as `behaviour` in every round."""

    fraction: float = 0.0  # 0: nobody is malicious
    behaviour: str = "sign_flip"  # sign_flip | gaussian | scale (model replacement) | label_flip
    scale: float = 10.0  # sign_flip sends −scale·update, scale sends scale·update
    noise_std: float = 1.0  # gaussian: the update is replaced by N(0, noise_std²) per weight

    def validate(self) -> None:
        check_fields("attack", self)

@dataclass(frozen=True)
class CommunicationConfig:
    """The simulated network and the compression of uploads."""

    compression: str = "none"  # none | topk (with error feedback) | qsgd (stochastic quantization)
    topk_fraction: float = 0.01  # topk: share of the coordinates sent
    error_feedback: bool = True  # topk: keep what was not sent and add it to the next update
    quantization_bits: int = 8  # qsgd: bits per coordinate, sign included
    topk_momentum: float = 0.0  # topk: DGC momentum correction with factor masking (0: off; needs error_feedback)
    topk_warmup_rounds: int = 0  # topk: rounds over which the density ramps down to topk_fraction (DGC warm-up)
    bandwidth_mbps: float = 20.0  # median per-client bandwidth, both directions (megabits/s)
    bandwidth_spread: float = 0.5  # σ of the lognormal spread of bandwidths across clients
    latency_ms: float = 50.0  # per-client one-way latency (median)
    latency_spread: float = 0.5  # σ of the lognormal spread of latencies across clients

    def validate(self) -> None:
        check_fields("communication", self)
        if self.topk_momentum > 0 and not self.error_feedback:
            raise ValueError(
                f"communication.topk_momentum ({self.topk_momentum}) accumulates the velocity locally: it needs "
                "communication.error_feedback = true"
            )

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
        self._check_augmentations()
        self._check_population()
        self._check_privacy()
        self._check_audit()
        self._check_secure_aggregation()
        self._check_exclusion()
        self._check_async()

    def _check_privacy(self) -> None:
        """The privacy mode must fit the local optimizer, the rule, personalization and client selection."""
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
        self._check_length_buckets()
        if self.privacy.mode == "local" and self.system.precision != "fp32":
            raise ValueError(
                f"privacy.mode = 'local' bounds each example's gradient norm, which system.precision = "
                f"{self.system.precision!r} would compute in reduced precision: set system.precision = 'fp32'"
            )
        if self.privacy.mode == "local" and self.federation.strategy == "qfedavg":
            raise ValueError(
                "federation.strategy = 'qfedavg' weights each client by the global model's loss on its raw "
                "training data, which privacy.mode = 'local' (DP-SGD's accountant) does not cover"
            )
        if self.privacy.mode == "central" and self.federation.personalization == "fedper":
            raise ValueError(
                "federation.personalization = 'fedper' keeps each client's last layer out of the "
                "aggregate, which privacy.mode = 'central' (DP-FedAvg over whole updates) does not cover"
            )
        if self.privacy.mode == "central" and self.federation.selection != "uniform":
            raise ValueError(
                "privacy.mode = 'central' samples clients at random (Poisson, or exactly k of n: federation.client_sampling), "
                f"as its accountant assumes: federation.selection must be 'uniform', got {self.federation.selection!r}"
            )
        self._check_tree_mechanism()
        self._check_distributed_noise()
        fixed = self.privacy.mode == "central" and self.federation.client_sampling == "fixed"
        if fixed and self.privacy.accountant not in FIXED_SIZE_ACCOUNTANTS:
            raise ValueError(
                f"federation.client_sampling = 'fixed' under central DP is accounted by {', '.join(FIXED_SIZE_ACCOUNTANTS)} "
                f"only (no bound for sampling without replacement in the others): privacy.accountant must be "
                f"{' or '.join(FIXED_SIZE_ACCOUNTANTS)}, got {self.privacy.accountant!r}"
            )

    def _check_length_buckets(self) -> None:
        """federation.bucket_by_length orders a text client's batches by length, in the torch trainers."""
        if not self.federation.bucket_by_length:
            return
        if self.model.name not in TEXT_MODELS:
            raise ValueError(
                "federation.bucket_by_length batches responses by their token count: it needs a text model "
                f"({', '.join(TEXT_MODELS)}), not {self.model.name!r}"
            )
        if self.privacy.mode == "local":
            raise ValueError(
                "federation.bucket_by_length orders the batches, which privacy.mode = 'local' draws at random "
                "(Poisson sampling, as its accountant assumes): turn one of them off"
            )
        if self.system.backend != "torch":
            raise ValueError("federation.bucket_by_length needs system.backend = 'torch' (MLX trains its own batches)")

    def _check_tree_mechanism(self) -> None:
        """DP-FTRL (privacy.mechanism = 'dp-ftrl') runs under central DP, on the server's own sum of a seeded,
        fixed-size schedule that its accountant reads before the run, with one clip norm C throughout."""
        privacy, federation = self.privacy, self.federation
        if federation.client_sampling == "cyclic" and not (privacy.mode == "central" and privacy.mechanism == "dp-ftrl"):
            raise ValueError(
                "federation.client_sampling = 'cyclic' (the next clients_per_round of one seeded order each round) is "
                "DP-FTRL's schedule: it needs privacy.mode = 'central' and privacy.mechanism = 'dp-ftrl' (DP-FedAvg's "
                f"accountants assume random sampling), got privacy.mode = {privacy.mode!r}, privacy.mechanism = "
                f"{privacy.mechanism!r}"
            )
        if privacy.mechanism != "dp-ftrl":
            return
        needs = [
            (privacy.mode != "central", f"privacy.mode = 'central' (got {privacy.mode!r})"),
            (federation.secure_aggregation, "federation.secure_aggregation = false: the server adds the tree's "
             "noise to its own running sum of the clipped updates"),
            (federation.client_sampling not in ("fixed", "cyclic"), "federation.client_sampling = 'fixed' (exactly "
             "clients_per_round a round; all clients when it equals num_clients) or 'cyclic', got "
             f"{federation.client_sampling!r}"),
            (privacy.secure_noise, "privacy.secure_noise = false: its accountant reads the seeded participation "
             "schedule before the run, which os.urandom sampling would hide"),
            (privacy.adaptive_clipping, "privacy.adaptive_clipping = false: the tree's sensitivity assumes one clip "
             "norm C"),
        ]  # fmt: skip
        for unmet, need in needs:
            if unmet:
                raise ValueError(f"privacy.mechanism = 'dp-ftrl' needs {need}")

    def _check_distributed_noise(self) -> None:
        """Skellam noise is the clients' shares in secure aggregation's ring, accounted for Poisson client
        sampling only (privacy/skellam.py: its subsampling bound is Zhu & Wang's, for Poisson)."""
        if self.privacy.distributed_noise != "skellam":
            return
        if not self.federation.secure_aggregation:
            raise ValueError("privacy.distributed_noise = 'skellam' needs federation.secure_aggregation = true: the "
                             "clients add the noise in the protocol's integer ring")  # fmt: skip
        if self.federation.client_sampling != "poisson":
            raise ValueError("privacy.distributed_noise = 'skellam' needs federation.client_sampling = 'poisson': its "
                             "accountant has no bound for fixed-size sampling, got "
                             f"{self.federation.client_sampling!r}")  # fmt: skip

    def _check_audit(self) -> None:
        """The one-run audit's canaries: random wrong classes (single-label data), relabelled test examples
        added to this machine's training data (not the sites' of a Flower deployment)."""
        privacy = self.privacy
        if privacy.audit != "one_run" or privacy.audit_canaries == 0:
            return
        if self.data.dataset != "mnist" or self.system.runtime != "in-process":
            raise ValueError(
                "privacy.audit = 'one_run' needs data.dataset = 'mnist' and system.runtime = 'in-process', "
                f"got {self.data.dataset!r} and {self.system.runtime!r}; use privacy.audit = 'loss'"
            )
        test_examples = self.data.max_test_examples or MNIST_TEST_EXAMPLES
        if not 2 <= privacy.audit_canaries < test_examples:
            raise ValueError(
                f"privacy.audit = 'one_run': privacy.audit_canaries must be between 2 and {test_examples - 1} (the "
                f"canaries are taken from the {test_examples} test examples, and some must remain), "
                f"got {privacy.audit_canaries}"
            )

    def _check_exclusion(self) -> None:
        """Suspicion scores need each update as sent: secure aggregation and central DP hide them."""
        if self.federation.exclusion == "none":
            return
        hidden = "federation.secure_aggregation = true" if self.federation.secure_aggregation else (
            "privacy.mode = 'central'" if self.privacy.mode == "central" else "")
        if hidden:
            raise ValueError(
                f"federation.exclusion = {self.federation.exclusion!r} scores each client's update, which the server "
                f"never sees under {hidden}: set federation.exclusion = 'none'"
            )

    def _check_async(self) -> None:
        """FedBuff applies a buffer of updates trained from different global versions: what needs one synchronous
        cohort per round (the same model, sampled together, within a deadline) cannot run under it."""
        federation = self.federation
        if federation.mode != "async":
            return
        if not federation.buffer_size <= federation.max_concurrency <= federation.num_clients:
            raise ValueError(
                f"federation.mode = 'async' needs buffer_size <= max_concurrency <= num_clients, got "
                f"{federation.buffer_size}, {federation.max_concurrency} and {federation.num_clients}"
            )
        conflicts = [text for text, on in (
            ("privacy.mode = 'central' (DP-FedAvg accounts one sampled cohort per round)", self.privacy.mode == "central"),
            ("federation.secure_aggregation (its masks cancel within one cohort)", federation.secure_aggregation),
            ((f"federation.strategy = {federation.strategy!r} (it needs one cohort from one global model; "
              f"use one of {', '.join(SUM_STRATEGIES)})"), federation.strategy not in SUM_STRATEGIES),
            ("federation.exclusion = 'flagged' (suspicion compares one round's updates)", federation.exclusion != "none"),
            (f"federation.selection = {federation.selection!r} (use 'uniform')", federation.selection != "uniform"),
            ("federation.round_deadline > 0 (slow clients arrive stale instead)", federation.round_deadline > 0),
            ("federation.dropout_probability > 0 (not simulated under async)", federation.dropout_probability > 0),
            ("federation.personalization = 'fedper'", federation.personalization == "fedper"),
        ) if on]  # fmt: skip
        if conflicts:
            raise ValueError(f"federation.mode = 'async' (FedBuff) does not support {'; '.join(conflicts)}")

    def _check_secure_aggregation(self) -> None:
        """Secure aggregation masks dense, whole updates."""
        if self.federation.secure_aggregation and self.communication.compression != "none":
            raise ValueError(
                "federation.secure_aggregation masks dense vectors: communication.compression must be 'none', "
                f"got {self.communication.compression!r}"
            )
        if self.federation.secure_aggregation and self.federation.personalization == "fedper":
            raise ValueError("federation.secure_aggregation does not support personalization = 'fedper' yet")

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
            raise ValueError(
                f"data.dataset = {data.dataset!r} needs model.name {' or '.join(IMAGE_MODELS)}, got {model.name!r}"
            )
        if data.dataset == "ngss" and data.partition == "natural" and self.federation.num_clients != NGSS_SCHOOLS:
            raise ValueError(
                f"data.partition = 'natural' makes each of the {NGSS_SCHOOLS} synthetic schools a client: "
                f"federation.num_clients must be {NGSS_SCHOOLS}, got {self.federation.num_clients}"
            )
        if model.name in SCATTER_MODELS and data.dataset == "folder" and data.image_size % 4:
            raise ValueError(
                f"model.name = {model.name!r} scatters with J = 2: data.image_size must be a multiple of 4, "
                f"got {data.image_size}"
            )
        if text:
            pooling = text_pooling(model.name, model.pooling)
        if self.system.backend == "mlx":
            if model.name in SCATTER_MODELS:
                raise ValueError(f"system.backend = 'mlx' has no scattering transform: model.name = {model.name!r} "
                                 "needs system.backend = 'torch'")  # fmt: skip
            if data.dataset == "folder":
                raise ValueError("system.backend = 'mlx' runs MNIST's 28×28 models: data.dataset = 'folder' needs 'torch'")
            if text and model.name != "tinyllama-lora":
                raise ValueError(
                    f"system.backend = 'mlx' runs MNIST ({', '.join(IMAGE_MODELS)}) or tinyllama-lora, not {model.name}"
                )
            if text and pooling != "last":
                raise ValueError(f"system.backend = 'mlx' reads the last token (model.pooling = 'last'), not {pooling!r}")
            if text and model.lora_layers:
                raise ValueError(
                    f"system.backend = 'mlx' puts LoRA on every layer: model.lora_layers = {model.lora_layers} "
                    "needs system.backend = 'torch' (or 0)"
                )
            if self.privacy.mode == "local":
                raise ValueError(
                    "system.backend = 'mlx' has no DP-SGD: privacy.mode = 'local' needs system.backend = 'torch'"
                )

    def _check_population(self) -> None:
        """A synthetic population repeats examples across clients: no ε would describe one person's data."""
        if self.data.examples_per_client and self.privacy.mode != "none":
            raise ValueError(
                "data.examples_per_client gives an example to several clients, so no client- or example-level ε "
                f"would hold: it needs privacy.mode = 'none', got {self.privacy.mode!r}"
            )

    def _check_augmentations(self) -> None:
        """Augmentation multiplicity shifts images: not scattering features (computed once, when the data
        loads) nor text."""
        if self.privacy.augmentations and self.model.name not in AUGMENTABLE_MODELS:
            raise ValueError(
                f"privacy.augmentations shifts the images a model trains on: model.name must be one of "
                f"{', '.join(AUGMENTABLE_MODELS)}, got {self.model.name!r}"
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


# -- checks: one vocabulary for the config, the privacy code and the strategies --------------------
# Each raises ValueError naming the field and what is allowed, and returns the checked value.


def check_one_of(name: str, value: Any, allowed: tuple[str, ...]) -> str:
    """`value` if it is one of the strings `allowed`."""
    if not isinstance(value, str) or value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(allowed)}; got {_shown(value)}")
    return value


def check_integer(name: str, value: Any, *, low: int, high: int | None = None) -> int:
    """`value` if it is an int (not a bool) in [low, high]; no upper bound if `high` is None."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an integer, got {_shown(value)}")
    if high is None and value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {_shown(value)}")
    if high is not None and not low <= value <= high:
        raise ValueError(f"{name} must be in [{low}, {high}], got {_shown(value)}")
    return value


def check_number(
    name: str,
    value: Any,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
) -> float:
    """`value` as a float if it is a finite int or float (not a bool) between `low` and `high`
    (None: no bound; `low_open` / `high_open`: the bound itself is excluded)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be a number, got {_shown(value)}")
    # NaN fails every comparison; an int is compared exactly, however large.
    below = low is not None and not (low < value if low_open else low <= value)
    above = high is not None and not (value < high if high_open else value <= high)
    if below or above:
        raise ValueError(f"{name} must be {_range_text(low, high, low_open, high_open)}, got {_shown(value)}")
    finite = math.isfinite(value) if isinstance(value, float) else abs(value) <= sys.float_info.max
    if not finite:  # inf within a one-sided range
        raise ValueError(f"{name} must be a finite number, got {_shown(value)}")
    return float(value)


def _range_text(low: float | None, high: float | None, low_open: bool, high_open: bool) -> str:
    if low is not None and high is not None:
        return f"in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
    if low is not None:
        return f"{'>' if low_open else '>='} {low:g}"
    return f"{'<' if high_open else '<='} {high:g}" if high is not None else "a number"


def check_boolean(name: str, value: Any) -> bool:
    """`value` if it is true or false."""
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be true or false, got {_shown(value)}")
    return value


def check_string(name: str, value: Any) -> str:
    """`value` if it is a string."""
    if not isinstance(value, str):
        raise ValueError(f"{name} must be a string, got {_shown(value)}")
    return value


# The tracking URIs MLflow's client reaches: a server, a Databricks workspace, a local store.
TRACKING_SCHEMES = ("http", "https", "databricks", "file", "sqlite", "postgresql", "mysql", "mssql")


def check_tracking_uri(name: str, value: str) -> str:
    """`value` if it is "" or an MLflow tracking URI (`TRACKING_SCHEMES`) without a password: the
    config is stored with the run and shown, so credentials go in MLFLOW_TRACKING_USERNAME/PASSWORD."""
    if not value or value == "databricks":  # "databricks": the default profile's workspace
        return value
    scheme, colon, rest = value.partition(":")
    if ":" in rest.lstrip("/").split("/", 1)[0].rpartition("@")[0]:  # user:password@host, checked first: never shown
        raise ValueError(
            f"{name} must not hold a password (a tracking URI is stored with the run and shown): "
            "set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD instead"
        )
    if not colon or scheme.lower() not in TRACKING_SCHEMES or not rest or not value.isprintable() or " " in value:
        raise ValueError(
            f"{name} must be empty or a tracking URI ({', '.join(f'{s}:' for s in TRACKING_SCHEMES)}), "
            f"e.g. http://127.0.0.1:5000; got {_shown(value)}"
        )
    return value


def check_fields(section: str, values: Any) -> None:
    """Every key of a config section by its declared type: a choice from OPTIONS, a number within
    BOUNDS (an int for int keys), true or false, or a string."""
    for item in fields(values):
        name, value = f"{section}.{item.name}", getattr(values, item.name)
        if name in OPTIONS:
            check_one_of(name, value, OPTIONS[name])
        elif item.type == "bool":
            check_boolean(name, value)
        elif item.type == "str":
            check_string(name, value)
        elif item.type == "int":
            check_integer(name, value, low=BOUNDS[name][0], high=BOUNDS[name][1])
        else:
            check_number(name, value, low=BOUNDS[name][0], high=BOUNDS[name][1])
