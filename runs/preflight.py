"""Data checks before an experiment is stored: the refusals that need the data, not just the config.

    check_data(config)          # raises ValueError (one line) or returns; nothing is written

`ExperimentConfig` validation catches what the config alone decides (ranges, names, pairings).
What depends on the data comes here, so that a run that cannot start is refused up front (the
CLI: exit 2, one line on stderr, nothing stored) instead of being stored and failing seconds
later: a data path no file can have, a CSV the importer refuses, a `natural` partition whose
client count is not the data's number of schools, more clients than training examples.

One implementation for both faces: `cli.py run` calls it after building the config and before
creating the experiment; the page calls it when Start is pressed, before it stores anything.
It is cheap: MNIST's size is a constant (or its IDX label file's 8-byte header when the file is
there), the synthetic NGSS tasks' sizes are the published constants, and only an imported CSV is
read (and validated whole, exactly as a run would import it). No torch, no model, no MNIST load.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass
from pathlib import Path

from experiment_config import NGSS_SCHOOLS, ExperimentConfig
from ngss.csv_format import load_csv
from ngss.tasks import TASKS
from runs.workers import printable

MNIST_TRAIN_EXAMPLES = 60_000  # the LeCun training set (what torchvision downloads)
MNIST_TRAIN_LABELS = Path("MNIST") / "raw" / "train-labels-idx1-ubyte"  # under data.data_dir
IDX1_MAGIC = 2049  # an IDX file of unsigned bytes, one dimension: big-endian magic, then the count
SHARDS_PER_CLIENT = 2  # data_handler.partition_shards' default: each client gets two label-sorted shards


def check_data(config: ExperimentConfig) -> None:
    """Refuse, before anything is stored, a config whose data cannot give every client examples.

    Raises ValueError with one line naming the setting and the data's size (or the importer's
    reason, naming the file). Checks, in order: `data.data_dir` and `data.csv_path` hold no NUL,
    control character or lone surrogate; a CSV imports (validated whole, not stored); `natural`
    has one client per school of the data; `federation.num_clients` is at most the training
    examples after `data.max_train_examples` (twice that many for `shards`).
    """
    data = config.data
    _check_path("data.data_dir", data.data_dir)
    if data.dataset == "csv":
        _check_path("data.csv_path", data.csv_path)
    size = _training_size(config)
    examples = min(size.examples, data.max_train_examples) if data.max_train_examples > 0 else size.examples
    clients = config.federation.num_clients
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
    imported = load_csv(data.csv_path, seed=config.system.seed)  # CsvImportError (a ValueError) names the file
    if not imported.has_groups:
        return DataSize(len(imported.train))
    trained = set(imported.train.schools.tolist())
    missing = tuple(name for k, name in enumerate(imported.school_names) if k not in trained)
    return DataSize(len(imported.train), tuple(imported.school_names), missing)


def _check_natural(config: ExperimentConfig, size: DataSize) -> None:
    """One client per school: the data must have schools, as many as clients, each with training rows."""
    clients = config.federation.num_clients
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
