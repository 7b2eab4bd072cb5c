"""Where the data of a Flower run lives: imported NGSS responses stay at their schools.

On Flower an imported CSV run (`data.dataset = "csv"`, `data.partition = "natural"`) is the
natural federated case: each SuperNode is one school and trains on that school's CSV, named
by its `--node-config data-path=...`; the rows never leave the site. The server holds only
the test file, `{task}_test.csv` beside `data.csv_path` (the training file named there is
not read on the server), and evaluates on it with the rubric metrics, per school. It plans
the run from what each site reports when it joins: its number of responses, its school and
its rubric elements, never a response. Only LoRA + head weights travel.

Tokenizers must agree everywhere: MiniLM's and TinyLLama-v0's ship with their models; the
local tokenizer of a TinyLLama built from its config (`model.pretrained = false`) is trained
on the server's test responses and travels to the sites with each train message.

Synthetic NGSS and MNIST need none of this: every node rebuilds the same data from the
seed (or its copy of MNIST) and takes its own client's slice, as the engine does.

    sizes = [site.num_examples for site in joined]       # reported by the sites
    data, tokenizer_files = server_data(config, sizes)   # the server: test split, placeholder train
    x, y = site_examples(config, "school_a.csv", client_id=0, label_names=..., school_names=..., tokenizer_files=...)
    server_csv, site_paths = write_sites(config, work_dir)    # a local deployment: one file per school
"""

from __future__ import annotations

import dataclasses
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from experiment_config import ExperimentConfig

if TYPE_CHECKING:
    import torch

    from data_handler import FederatedData
    from ngss.tasks import NgssDataset

TRAIN_SUFFIX, TEST_SUFFIX = "_train.csv", "_test.csv"


def at_sites(config: ExperimentConfig) -> bool:
    """Whether each SuperNode trains on its own file (imported CSV) rather than a slice of shared data."""
    return config.data.dataset == "csv"


def site_reasons(config: ExperimentConfig) -> list[str]:
    """What a run with data at the sites cannot do (empty if it can, or its data is not at the sites)."""
    if not at_sites(config):
        return []
    if config.data.partition != "natural":
        return ["data.dataset 'csv' on Flower: each SuperNode is one school, so data.partition must be 'natural'"]
    return []


def shipped_tokenizer(config: ExperimentConfig) -> bool:
    """Whether the tokenizer is trained on data (TinyLLama from its config) and so must travel."""
    return config.model.name == "tinyllama-lora" and not config.model.pretrained


def server_test_file(csv_path: str) -> Path:
    """The server's evaluation file: `{task}_test.csv` beside `{task}_train.csv` = `csv_path`."""
    path = Path(csv_path).expanduser()
    if not path.name.lower().endswith(TRAIN_SUFFIX):
        raise ValueError(
            f"data.csv_path {csv_path!r}: on Flower it names the sites' training file {{task}}{TRAIN_SUFFIX}, "
            f"and the server evaluates on the {{task}}{TEST_SUFFIX} beside it"
        )
    test = path.with_name(path.name[: -len(TRAIN_SUFFIX)] + TEST_SUFFIX)
    if not test.is_file():
        raise ValueError(f"the server evaluates on {test}, which is not there (the training rows stay at the sites)")
    return test


def _read(path: str | Path, seed: int) -> NgssDataset:
    """One CSV file as a dataset whose train and test splits are both the whole file."""
    from ngss import data as ngss_data

    return ngss_data.load_csv(path, path, seed=seed)


# -- the server --------------------------------------------------------------------------


def server_data(config: ExperimentConfig, sizes: Sequence[int]) -> tuple[FederatedData, dict[str, str]]:
    """(the data the server plans and evaluates with, the tokenizer's files to ship or {}).

    The test split is the server's test file, tokenized; the training split is a placeholder of
    sum(sizes) rows (zeros) grouped by school: `FederatedRun` takes each client's partition size,
    holdout and privacy plan from it and never reads a training row on Flower. `sizes[k]`: the
    responses site k reported.
    """
    import torch

    from data_handler import FederatedData
    from engine.workloads import encode, load_tokenizer

    if config.data.max_train_examples > 0:  # a local deployment applies it when it writes the sites' files
        raise ValueError("data.max_train_examples: with the data at the sites each site trains on all its rows")
    path = server_test_file(config.data.csv_path)
    test, federation = _read(path, config.system.seed), config.federation
    if not test.has_groups:
        raise ValueError(f"{path}: the server's test file needs a Group/school column (one client per school)")
    if len(test.school_names) != federation.num_clients or len(sizes) != federation.num_clients:
        raise ValueError(
            f"the test file names {len(test.school_names)} schools and {len(sizes)} sites reported data; "
            f"federation.num_clients is {federation.num_clients}: one site per school"
        )
    tokenizer = load_tokenizer(config, test.test.texts)  # a local tokenizer: trained on the server's responses
    test_x = encode(config, tokenizer, test.test.texts)
    total, num_labels = int(sum(sizes)), len(test.label_names)
    info = {
        "source": "imported", "task": test.task, "labels": list(test.label_names), "schools": list(test.school_names),
        "train_responses": total, "test_responses": len(test.test), "csv_path": config.data.csv_path,
        "training_data": "at the sites (each SuperNode's data-path)",
        "placeholder_rows": True,  # the training rows here are zeros: nothing may be scored on them
    }  # fmt: skip
    data = FederatedData(
        train_x=torch.zeros((total, 1), dtype=torch.int64),  # never read: the rows are at the sites
        train_y=torch.zeros((total, num_labels), dtype=torch.float32),
        test_x=test_x,
        test_y=torch.from_numpy(test.test.labels.astype(np.float32)),
        num_classes=num_labels,
        train_groups=np.repeat(np.arange(len(sizes)), sizes),
        test_groups=test.test.schools,
        group_names=tuple(test.school_names),
        label_names=tuple(test.label_names),
        info=info,
    )
    return data, tokenizer_files(tokenizer) if shipped_tokenizer(config) else {}


def tokenizer_files(tokenizer: Any) -> dict[str, str]:
    """A Hugging Face tokenizer as its saved files ({name: JSON text}), to send to the sites."""
    with tempfile.TemporaryDirectory() as directory:
        tokenizer.save_pretrained(directory)
        return {path.name: path.read_text(encoding="utf-8") for path in Path(directory).iterdir() if path.is_file()}


def tokenizer_from_files(files: Mapping[str, str]) -> Any:
    """The tokenizer `tokenizer_files` saved (JSON files only: no code is loaded)."""
    from transformers import PreTrainedTokenizerFast

    if "tokenizer.json" not in files or any("/" in name or name.startswith(".") for name in files):
        raise ValueError(f"the tokenizer sent has files {sorted(files)}; expected tokenizer.json and its config")
    with tempfile.TemporaryDirectory() as directory:
        for name, text in files.items():
            (Path(directory) / name).write_text(text, encoding="utf-8")
        return PreTrainedTokenizerFast.from_pretrained(directory)


# -- a site ------------------------------------------------------------------------------


@dataclass(frozen=True)
class SiteSummary:
    """What a site tells the server when it joins: counts and names, no responses."""

    num_examples: int
    school: str  # "" when its file has no Group/school column
    label_names: tuple[str, ...]


def summarize_site(config: ExperimentConfig, path: str) -> SiteSummary:
    """The summary of the site file at `path` (all its rows train)."""
    return _summary(_read(path, config.system.seed), path)


def _summary(site: NgssDataset, path: str) -> SiteSummary:
    if site.has_groups and len(site.school_names) != 1:
        raise ValueError(f"{path}: a site's file holds one school's responses, this one {len(site.school_names)} "
                         f"({', '.join(site.school_names)})")  # fmt: skip
    return SiteSummary(len(site.train), site.school_names[0] if site.has_groups else "", tuple(site.label_names))


def check_site(
    summary: SiteSummary, *, client_id: int, label_names: Sequence[str], school_names: Sequence[str]
) -> None:
    """Raise ValueError unless the site holds `school_names[client_id]`'s responses with the run's rubric elements."""
    if set(summary.label_names) != set(label_names):
        raise ValueError(f"client {client_id}'s file has rubric elements {', '.join(summary.label_names)}, the "
                         f"server's test file {', '.join(label_names)}")  # fmt: skip
    if summary.school and summary.school != school_names[client_id]:
        raise ValueError(f"client {client_id} (partition-id) is {school_names[client_id]!r} in the sorted schools of "
                         f"the test file, but its file holds {summary.school!r}'s responses")  # fmt: skip


def site_examples(
    config: ExperimentConfig, path: str, *, client_id: int, label_names: Sequence[str], school_names: Sequence[str],
    tokenizer_files: Mapping[str, str],
) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """(x (N, L) token ids, y (N, K) labels in the server's element order) of the site file at `path`."""
    import torch

    from engine.workloads import encode, load_tokenizer

    site = _read(path, config.system.seed)
    check_site(_summary(site, path), client_id=client_id, label_names=label_names, school_names=school_names)
    if shipped_tokenizer(config) and not tokenizer_files:
        raise ValueError("the server sent no tokenizer; TinyLLama built from its config needs the server's")
    tokenizer = tokenizer_from_files(tokenizer_files) if tokenizer_files else load_tokenizer(config, [])
    order = [site.label_names.index(name) for name in label_names]
    labels = site.train.labels[:, order]  # (N, K) int8
    return encode(config, tokenizer, site.train.texts), torch.from_numpy(labels.astype(np.float32))


def site_split(config: ExperimentConfig, num_examples: int, client_id: int) -> tuple[np.ndarray, np.ndarray]:
    """(training, held-out) row indices of a site's file: `split_holdout` as the engine applies it to
    this client (seeded by (seed, client), by position, so the same rows as in-process)."""
    from data_handler import split_holdout

    parts = [np.arange(0)] * client_id + [np.arange(num_examples)]
    train, held_out = split_holdout(parts, config.federation.client_holdout, seed=config.system.seed)
    return train[client_id], held_out[client_id]


# -- a local deployment: one folder per site ---------------------------------------------


def write_sites(config: ExperimentConfig, work_dir: Path) -> tuple[str, list[str]]:
    """Split the run's imported data as the engine would load it (`data.max_*_examples` applied) into
    one training file per school (`work_dir/site-K/`) and the server's test file (`work_dir/server/`).
    Returns (the `data.csv_path` for the server, each site's data-path)."""
    import torch

    from data_handler import FederatedData, subset
    from ngss.data import write_csv
    from ngss.tasks import NgssSplit
    from engine.workloads import load_ngss

    dataset = load_ngss(config)
    if not dataset.has_groups:
        raise ValueError(f"{config.data.csv_path}: no Group/school column, so no school to put at a site")
    # Which rows `subset` keeps, by running it on the row numbers (the engine's draws exactly).
    rows = FederatedData(
        train_x=torch.arange(len(dataset.train)), train_y=torch.zeros(len(dataset.train)),
        test_x=torch.arange(len(dataset.test)), test_y=torch.zeros(len(dataset.test)), num_classes=1,
    )  # fmt: skip
    kept = subset(rows, max_train=config.data.max_train_examples, max_test=config.data.max_test_examples,
                  seed=config.system.seed)  # fmt: skip

    def take(split: NgssSplit, indices: np.ndarray) -> NgssSplit:
        return NgssSplit([split.texts[i] for i in indices], split.labels[indices], split.schools[indices])

    train, test = take(dataset.train, kept.train_x.numpy()), take(dataset.test, kept.test_x.numpy())
    server = work_dir / "server"
    _, test_path = write_csv(dataclasses.replace(dataset, train=test, test=test), server)
    (server / f"{dataset.task}{TRAIN_SUFFIX}").unlink()  # the server keeps the test file only
    site_paths = []
    for school in range(len(dataset.school_names)):
        own = take(train, np.flatnonzero(train.schools == school))
        site = dataclasses.replace(dataset, train=own, test=own)
        train_path, site_test = write_csv(site, work_dir / f"site-{school}")
        site_test.unlink()
        site_paths.append(str(train_path))
    return str(test_path.with_name(f"{dataset.task}{TRAIN_SUFFIX}")), site_paths
