"""Data checks before an experiment is stored: the refusals that need the data, not just the config.

    check_data(config)          # raises ValueError (one line) or returns; nothing is written

`ExperimentConfig` validation catches what the config alone decides (ranges, names, pairings).
What depends on the data comes here, so that a run that cannot start is refused up front (the
CLI: exit 2, one line on stderr, nothing stored) instead of being stored and failing seconds
later: a data path no file can have, a CSV the importer refuses, a `natural` partition whose
client count is not the data's number of schools, more clients than training examples; then the
cost estimates (`check_costs`: a round's peak memory against the memory available, a secure-
aggregation round's seconds against its limit).

One implementation for both faces: `cli.py run` calls it after building the config and before
creating the experiment; the page calls it when Start is pressed, before it stores anything.
It is cheap: MNIST's size is a constant (or its IDX label file's 8-byte header when the file is
there), the synthetic NGSS tasks' sizes are the published constants, and only an imported CSV is
read (and validated whole, exactly as a run would import it), or an image folder decoded (every image
once, as the run will: an unreadable one is named relative to the folder). No MNIST load; the cost estimates
build the model once for its parameter count (torch, which the run loads right after anyway).
"""

from __future__ import annotations

import math
import os
import unicodedata
from dataclasses import dataclass
from pathlib import Path

import psutil

from experiment_config import NGSS_SCHOOLS, TEXT_MODELS, ExperimentConfig
from ngss.csv_format import load_csv
from ngss.tasks import TASKS
from runs.workers import printable

MNIST_TRAIN_EXAMPLES = 60_000  # the LeCun training set (what torchvision downloads)
MNIST_TRAIN_LABELS = Path("MNIST") / "raw" / "train-labels-idx1-ubyte"  # under data.data_dir
IDX1_MAGIC = 2049  # an IDX file of unsigned bytes, one dimension: big-endian magic, then the count
SHARDS_PER_CLIENT = 2  # data_handler.partition_shards' default: each client gets two label-sorted shards

FLOAT32_BYTES = 4
# A round whose rule reads every update (`engine.streaming.round_streams` false) holds each until
# aggregation (a streamed round holds none: `streamed_round_bytes`). Per client of the round the peak holds ROUND_COPIES
# float32 copies of the model: the trainer's result row and the update the server takes from it. Measured
# (peak RSS of one-round runs minus that of a 10-client run, over clients × P × 4 bytes): MLP 1.97 at
# 500 and 1.99 at 2,000 clients a round; CNN 1.65 at 100 and 1.89 at 300.
ROUND_COPIES = 2
# Secure aggregation holds one float32-sized copy more per participant (its input and masked vector are
# made one client at a time). Measured as above, MLP with SecAgg+ k = 8: 3.01 copies in all at 200 clients
# a round, 3.03 at 400.
SECAGG_COPIES = 1
# What a run holds besides the round: torch, MNIST as float32 tensors, the model, evaluation (peak RSS of
# a 10-client run: 1.0 GiB for the MLP, 1.3 GiB for the CNN).
PROCESS_BYTES = int(1.5 * 2**30)
MEMORY_SHARE = 0.8  # refuse a run needing more than 80% of the memory available: the OS and the page need some
# At least the parameters of every image model (the CNN has 1,663,370; a test checks them all against it): a
# config that fits the limits even with this many is accepted without building its model (torch takes seconds
# to load, and the page's Start should not wait for it); only one near a limit is estimated exactly.
IMAGE_MODEL_MAX_PARAMS = 1_700_000
SECAGG_ROUND_LIMIT_SECONDS = 600.0  # a secure-aggregation round estimated longer than 10 minutes is refused
# The secure-aggregation cost model: n participants, each masking with k neighbours (n − 1 for the full graph),
# P values, threshold t. CPU seconds on one core, fitted by `python -m bench.secagg --fit` to 11 measured rounds
# (n = 50..400, full graph and SecAgg+, P = 1,000 and 199,210; within 10% of each but the smallest SecAgg+ ones).
SECAGG_MASK_SECONDS = 2.19e-9  # per pairwise-mask value, n·k·P of them: both ends of a pair expand its PRG stream
SECAGG_SHARE_SECONDS = 3.39e-7  # per Shamir step, n·k·t: sharing two secrets with each neighbour, rebuilding
SECAGG_PAIR_SECONDS = 9.34e-5  # per pair, n·k: key agreement, key derivation, encrypting and opening the shares
SECAGG_VALUE_SECONDS = 1.78e-8  # per value of a participant, n·P: encoding, the self-mask, the sum, decoding


def check_data(config: ExperimentConfig) -> None:
    """Refuse, before anything is stored, a config whose data cannot give every client examples, or
    whose rounds would not fit this machine's memory or a secure-aggregation round's time limit
    (`check_costs`). Raises ValueError (one line); nothing is written."""
    _check_sizes(config)
    check_costs(config)


def _check_sizes(config: ExperimentConfig) -> None:
    """Refuse a config whose data cannot give every client examples.

    Raises ValueError with one line naming the setting and the data's size (or the importer's
    reason, naming the file). Checks, in order: `data.data_dir` and `data.csv_path` hold no NUL,
    control character or lone surrogate; a CSV imports (validated whole, not stored); `natural`
    has one client per school of the data; `federation.num_clients` is at most the training
    examples after `data.max_train_examples` (twice that many for `shards`), or with
    `data.examples_per_client` each client's draw fits in them.
    """
    data = config.data
    _check_path("data.data_dir", data.data_dir)
    if data.dataset == "csv":
        _check_path("data.csv_path", data.csv_path)
    if data.dataset == "folder":
        _check_path("data.folder_path", data.folder_path)
    size = _training_size(config)
    examples = min(size.examples, data.max_train_examples) if data.max_train_examples > 0 else size.examples
    clients = config.federation.num_clients
    if data.examples_per_client:  # a synthetic population: clients draw their examples, repeats allowed
        if data.examples_per_client > examples:
            raise ValueError(f"data.examples_per_client = {data.examples_per_client} is more than the {examples} "
                             f"training examples{_subset_note(config)}")  # fmt: skip
        return
    if data.partition == "natural":
        _check_natural(config, size)
        return
    needed = clients * SHARDS_PER_CLIENT if data.partition == "shards" else clients
    if needed > examples:
        per_client = f" ({SHARDS_PER_CLIENT} shards per client)" if data.partition == "shards" else ""
        raise ValueError(
            f"federation.num_clients = {clients} needs at least {needed} training examples{per_client}, "
            f"but the data has {examples}{_subset_note(config)}: lower federation.num_clients to at most "
            f"{examples // (needed // clients)}"
        )


@dataclass(frozen=True)
class DataSize:
    """What the checks need to know of a dataset: its training examples, its schools (empty when
    it has none) and those of them without a training example (a school only in the test file)."""

    examples: int
    schools: tuple[str, ...] = ()
    schools_without_training: tuple[str, ...] = ()


def _training_size(config: ExperimentConfig) -> DataSize:
    data = config.data
    if data.dataset == "mnist":
        return DataSize(_mnist_train_examples(Path(data.data_dir).expanduser()))
    if data.dataset == "ngss":  # the generator gives every school rows at the published size
        return DataSize(TASKS[data.ngss_task].train_size, tuple(f"school {k}" for k in range(NGSS_SCHOOLS)))
    if data.dataset == "folder":
        return _folder_size(config)
    imported = load_csv(data.csv_path, seed=config.system.seed)  # CsvImportError (a ValueError) names the file
    if not imported.has_groups:
        return DataSize(len(imported.train))
    trained = set(imported.train.schools.tolist())
    missing = tuple(name for k, name in enumerate(imported.school_names) if k not in trained)
    return DataSize(len(imported.train), tuple(imported.school_names), missing)


def _folder_size(config: ExperimentConfig) -> DataSize:
    """An image folder checked whole, as a run would load it (`image_folder.check_folder`: the layout,
    every image decoded once, a test split; FolderError names the file relative to the folder): its
    training images and, in the DIR/<client>/<label>/ layout, its clients."""
    from engine.image_folder import check_folder, test_mask  # torch and PIL: only for a folder, read right after

    data = config.data
    layout = check_folder(data.folder_path, image_size=data.image_size, channels=data.image_channels)
    return DataSize(int((~test_mask(layout)).sum()), layout.clients)


def _check_natural(config: ExperimentConfig, size: DataSize) -> None:
    """One client per school: the data must have schools, as many as clients, each with training rows."""
    clients = config.federation.num_clients
    if config.data.dataset == "folder" and clients != len(size.schools):
        raise ValueError(
            f"data.partition = 'natural' makes each top folder of data.folder_path a client: it has "
            f"{len(size.schools)} client folders (DIR/<client>/<label>/) with images, so federation.num_clients "
            f"must be {len(size.schools)}, got {clients}"
            if size.schools else
            "data.partition = 'natural' needs one top folder per client (DIR/<client>/<label>/*.png); "
            "data.folder_path holds label folders only: choose iid, dirichlet or shards"
        )  # fmt: skip
    if not size.schools:
        raise ValueError(
            "data.partition = 'natural' needs a school for every response (a Group or school column); "
            f"{printable(config.data.csv_path)} has none: choose iid, dirichlet or shards"
        )
    if clients != len(size.schools):
        raise ValueError(
            f"data.partition = 'natural' makes each of the data's {len(size.schools)} schools a client: "
            f"federation.num_clients must be {len(size.schools)}, got {clients}"
        )
    if size.schools_without_training:
        raise ValueError(
            f"data.partition = 'natural': {len(size.schools_without_training)} school(s) have no training "
            f"responses in {printable(config.data.csv_path)} (only test rows), so their clients could not train"
        )


def _mnist_train_examples(data_dir: Path) -> int:
    """The example count in the training labels' IDX header when the file is there (a tampered or
    partial copy says so), else the standard 60,000 that torchvision will download."""
    try:
        with open(data_dir / MNIST_TRAIN_LABELS, "rb") as handle:
            header = handle.read(8)
    except OSError:
        return MNIST_TRAIN_EXAMPLES
    if len(header) == 8 and int.from_bytes(header[:4], "big") == IDX1_MAGIC:
        return int.from_bytes(header[4:], "big")
    return MNIST_TRAIN_EXAMPLES


def _check_path(name: str, path: str) -> None:
    """A path no file can have: a NUL (the OS refuses it), another control character or a lone
    surrogate (no file name a person gives; it would break the one-line messages and the database)."""
    for position, char in enumerate(path):
        if unicodedata.category(char) in ("Cc", "Cs"):
            raise ValueError(
                f"{name} has an invalid character ({printable(char)}) at position {position + 1}: "
                "give the path of a file or folder"
            )


def _subset_note(config: ExperimentConfig) -> str:
    limit = config.data.max_train_examples
    return f" (data.max_train_examples = {limit})" if limit > 0 else ""


@dataclass(frozen=True)
class RoundCost:
    """What one round of a config costs, estimated before it runs (`estimate_round`)."""

    num_params: int  # P, the exchanged parameters of the model
    clients_held: int  # updates held until aggregation: clients_per_round, or 0 when the round streams
    memory_bytes: int  # peak memory of the run during a round
    secagg_participants: int = 0  # clients in the secure-aggregation protocol (0: none)
    secagg_neighbours: int = 0  # k each participant masks and shares with (n − 1: the full graph)
    secagg_seconds: float = 0.0  # the protocol's CPU seconds per round


def check_costs(config: ExperimentConfig, *, available_bytes: int | None = None) -> None:
    """Refuse (ValueError, one line with the estimate and the limit) a run whose round needs more than
    MEMORY_SHARE of the memory available (`psutil.virtual_memory().available`, or `available_bytes`)
    or whose secure-aggregation round is estimated over SECAGG_ROUND_LIMIT_SECONDS. Text models are
    not estimated: they exchange only LoRA + head (~17k values), so a round's memory stays small."""
    if config.model.name in TEXT_MODELS:
        return
    available = psutil.virtual_memory().available if available_bytes is None else available_bytes
    limit = int(MEMORY_SHARE * available)
    bound = estimate_round(config, num_params=IMAGE_MODEL_MAX_PARAMS)
    shaped = bool(config.data.image_options())  # a folder's images: the model grows with them, no fixed bound
    if not shaped and bound.memory_bytes <= limit and bound.secagg_seconds <= SECAGG_ROUND_LIMIT_SECONDS:
        return  # fits even with the largest image model: no need to build this one
    cost = estimate_round(config)
    if cost.memory_bytes > limit:
        raise ValueError(_memory_refusal(config, cost, available, limit))
    if cost.secagg_seconds > SECAGG_ROUND_LIMIT_SECONDS:
        whole = cost.secagg_participants > cost.clients_held  # central DP: the whole population joins
        clients = "federation.num_clients (every client joins under central DP)" if whole else "clients_per_round"
        graph = "everyone (full graph)" if cost.secagg_neighbours == cost.secagg_participants - 1 else \
            f"{cost.secagg_neighbours:,} neighbours each"  # fmt: skip
        raise ValueError(
            f"federation.secure_aggregation: a round with {cost.secagg_participants:,} participants masking with "
            f"{graph} is estimated at {cost.secagg_seconds / 60:,.0f} min of protocol, over the limit of "
            f"{SECAGG_ROUND_LIMIT_SECONDS / 60:.0f} min: set federation.secagg_neighbours (SecAgg+, e.g. "
            f"{secagg_plus_neighbours(cost.secagg_participants)}) or lower {clients}"
        )


def _memory_refusal(config: ExperimentConfig, cost: RoundCost, available: int, limit: int) -> str:
    """The one line refusing a round over the memory limit: the estimate, the limit, and the most
    clients a round (or, when the whole population joins secure aggregation, the federation) fits."""
    per_value = FLOAT32_BYTES * cost.num_params
    if not cost.clients_held:  # a streamed round holds no update: the process itself does not fit
        return (f"a streamed round of {config.model.name} ({cost.num_params:,} parameters) needs about "
                f"{_gb(cost.memory_bytes)} of memory, over the limit of {_gb(limit)} ({MEMORY_SHARE:.0%} of the "
                f"{_gb(available)} available)")  # fmt: skip
    if cost.secagg_participants > cost.clients_held:  # central DP: the population holds the protocol's copies
        field, count, per_client = "federation.num_clients", cost.secagg_participants, SECAGG_COPIES * per_value
    else:
        copies = ROUND_COPIES + (SECAGG_COPIES if cost.secagg_participants else 0)
        field, count, per_client = "federation.clients_per_round", cost.clients_held, copies * per_value
    fitting = max(0, (limit - (cost.memory_bytes - count * per_client)) // per_client)
    return (
        f"{field} = {count:,}: a round of {config.model.name} ({cost.num_params:,} parameters) needs about "
        f"{_gb(cost.memory_bytes)} of memory, over the limit of {_gb(limit)} ({MEMORY_SHARE:.0%} of the "
        f"{_gb(available)} available): lower it to at most {fitting:,}"
    )


def estimate_round(config: ExperimentConfig, *, num_params: int | None = None) -> RoundCost:
    """The estimated peak memory and secure-aggregation seconds of one round of an image model, with
    its own parameter count unless `num_params` is given. Under central DP with secure aggregation the
    whole population joins each round's protocol (the sampled clients with their update, the others
    with zeros, for the distributed noise)."""
    federation, exact = config.federation, num_params is None
    if num_params is None:
        num_params = model_parameter_count(config.model.name, **config.data.image_options())
    memory = PROCESS_BYTES + ROUND_COPIES * FLOAT32_BYTES * num_params * federation.clients_per_round
    if not federation.secure_aggregation:
        if exact and _streams(config, num_params):  # (the quick bound, with every update held, is above it)
            return RoundCost(num_params, 0, PROCESS_BYTES + _streamed_bytes(config, num_params))
        return RoundCost(num_params, federation.clients_per_round, memory)
    central = config.privacy.mode == "central"
    participants = federation.num_clients if central else federation.clients_per_round
    neighbours = secagg_neighbours(participants, federation.secagg_neighbours)
    memory += SECAGG_COPIES * FLOAT32_BYTES * num_params * participants
    seconds = secagg_round_seconds(participants, federation.secagg_neighbours, num_params, federation.secagg_threshold)
    return RoundCost(num_params, federation.clients_per_round, memory, participants, neighbours, seconds)


def _streams(config: ExperimentConfig, num_params: int) -> bool:
    """Whether the run's rounds fold each update into a running sum (`engine.streaming`): a round then
    holds no update, whatever its number of clients."""
    from engine.strategies import make_strategy  # torch: the model was just built, so it is loaded
    from engine.streaming import round_streams

    return round_streams(config, strategy_streams=make_strategy(config.federation).streams, num_params=num_params)


def _streamed_bytes(config: ExperimentConfig, num_params: int) -> int:
    from engine.streaming import streamed_round_bytes

    workers = config.system.num_workers or os.cpu_count() or 1  # 0: one per core
    return streamed_round_bytes(num_params, min(workers, config.federation.clients_per_round))


def model_parameter_count(name: str, **image_options: int) -> int:
    """P of an image model, counted on the model `model.create_model` builds (for MNIST's 28 × 28 grey
    images, or the `channels` and `image_size` of `image_options`)."""
    from model import create_model, get_parameters, parameter_count  # torch: the run loads it right after

    return parameter_count(get_parameters(create_model(name, **image_options)))


def secagg_neighbours(participants: int, neighbours: int) -> int:
    """k, the neighbours each participant masks with: `neighbours`, or everyone else (the full graph)
    when it is 0 or leaves nobody out (`engine.secure_aggregation.neighbourhoods`)."""
    return participants - 1 if neighbours == 0 or neighbours >= participants - 1 else neighbours


def secagg_plus_neighbours(participants: int) -> int:
    """A SecAgg+ neighbour count for n participants: k = 2·log2(n), rounded to an even number, at least 2."""
    return max(2, 2 * round(math.log2(max(participants, 2))))


def secagg_round_seconds(participants: int, neighbours: int, num_params: int, threshold: float) -> float:
    """Estimated CPU seconds of one secure-aggregation round (all parties, as the in-process engine
    runs them): n·k·P pairwise-mask values, n·k·t Shamir steps, n·k pairs and n·P per-value work, with
    the coefficients `bench.secagg --fit` measured. t = max(2, ⌈threshold·(k + 1)⌉), as the protocol sets it."""
    if participants < 2:
        return 0.0
    k = secagg_neighbours(participants, neighbours)
    t = max(2, math.ceil(threshold * (k + 1)))
    pairs = participants * k
    return (SECAGG_MASK_SECONDS * pairs * num_params + SECAGG_SHARE_SECONDS * pairs * t
            + SECAGG_PAIR_SECONDS * pairs + SECAGG_VALUE_SECONDS * participants * num_params)  # fmt: skip


def _gb(num_bytes: float) -> str:
    return f"{num_bytes / 1e9:,.1f} GB"
