"""Datasets and how they are split across clients.

MNIST comes through torchvision's own loader (it downloads into `data_dir` on first
use) and is held in memory as normalised float tensors; clients take their batches
by index, with no per-step DataLoader. Partitioners split example indices across
clients, seeded, disjoint and covering every example.

    data = load_mnist("data")                       # FederatedData, tensors in memory
    parts = partition(data.train_y.numpy(), "dirichlet", num_clients=10, alpha=0.5, seed=0)
    label_counts(parts, data.train_y.numpy(), 10)   # (clients, classes) histogram
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

if TYPE_CHECKING:
    from experiment_config import ExperimentConfig

MNIST_MEAN, MNIST_STD = 0.1307, 0.3081
MNIST_CLASSES = 10


@dataclass(frozen=True)
class FederatedData:
    """Train and test tensors. MNIST: x (N, 1, 28, 28) float32, normalised; y (N,) int64.
    Rubric scoring: x (N, L) int64 token ids, right-padded; y (N, K) float32 in {0, 1, −1}
    (−1 = unscored), `num_classes` = K labels; `*_groups` (N,) the school of each example,
    indexing `group_names` (empty when the data has no schools)."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    num_classes: int
    train_groups: np.ndarray | None = None
    test_groups: np.ndarray | None = None
    group_names: tuple[str, ...] = ()
    label_names: tuple[str, ...] = ()
    info: dict = field(default_factory=dict)  # where the data came from (stored with the run)

    @property
    def multilabel(self) -> bool:
        return self.train_y.is_floating_point()

    def share_memory(self) -> FederatedData:
        """Move the tensors into shared memory so worker processes read them without copies."""
        for tensor in (self.train_x, self.train_y, self.test_x, self.test_y):
            tensor.share_memory_()
        return self


class DataNotFoundError(FileNotFoundError):
    """The dataset is not on disk and could not be downloaded."""


def load_mnist(data_dir: str | Path, *, download: bool = True) -> FederatedData:
    """MNIST from `data_dir` (torchvision layout: `data_dir/MNIST/raw/*-ubyte`).

    Missing files are downloaded by torchvision when `download` is true; if that fails
    (offline), `DataNotFoundError` says where we looked and how to get the files.
    """
    from torchvision.datasets import MNIST

    root = Path(data_dir).expanduser()
    splits = {}
    for train in (True, False):
        try:
            dataset = MNIST(root=str(root), train=train, download=False)
        except RuntimeError:
            if not download:
                raise DataNotFoundError(_missing_message(root)) from None
            try:
                dataset = MNIST(root=str(root), train=train, download=True)
            except Exception as error:  # torchvision raises several kinds when offline
                raise DataNotFoundError(f"{_missing_message(root)} Download failed: {error}") from None
        x = dataset.data.unsqueeze(1).to(torch.float32).div_(255.0)
        x.sub_(MNIST_MEAN).div_(MNIST_STD)
        splits[train] = (x.contiguous(), dataset.targets.to(torch.int64).contiguous())
    (train_x, train_y), (test_x, test_y) = splits[True], splits[False]
    return FederatedData(train_x, train_y, test_x, test_y, MNIST_CLASSES)


def _missing_message(root: Path) -> str:
    return (
        f"MNIST not found under {root.resolve() / 'MNIST' / 'raw'} "
        "(expected train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte, "
        "t10k-labels-idx1-ubyte, plain or .gz). Connect to the internet to let torchvision "
        "download them, or copy them there and point data.data_dir (or FPL_DATA_DIR) at "
        f"{root.resolve()}."
    )


def subset(data: FederatedData, *, max_train: int, max_test: int, seed: int) -> FederatedData:
    """A seeded random subset (0 keeps a split whole); used for quick runs and tests."""
    generator = np.random.default_rng(seed)

    def pick(x: torch.Tensor, y: torch.Tensor, groups: np.ndarray | None, limit: int) -> tuple:
        if limit <= 0 or limit >= len(y):
            return x, y, groups
        order = np.sort(generator.permutation(len(y))[:limit])
        keep = torch.from_numpy(order)
        return x[keep].contiguous(), y[keep].contiguous(), None if groups is None else groups[order]

    train_x, train_y, train_groups = pick(data.train_x, data.train_y, data.train_groups, max_train)
    test_x, test_y, test_groups = pick(data.test_x, data.test_y, data.test_groups, max_test)
    return replace(
        data, train_x=train_x, train_y=train_y, test_x=test_x, test_y=test_y, train_groups=train_groups,
        test_groups=test_groups,
    )  # fmt: skip


# -- partitioners: labels (N,) -> list of index arrays, one per client ------------------


def partition_iid(labels: np.ndarray, *, num_clients: int, seed: int) -> list[np.ndarray]:
    """A seeded shuffle cut into `num_clients` parts whose sizes differ by at most one."""
    order = np.random.default_rng(seed).permutation(len(labels))
    return [np.sort(part) for part in np.array_split(order, num_clients)]


def partition_dirichlet(
    labels: np.ndarray, *, num_clients: int, alpha: float, seed: int, min_examples: int = 1
) -> list[np.ndarray]:
    """Label skew: each class is split across clients in proportions ~ Dir(alpha).

    Small alpha gives clients few classes; large alpha approaches IID. Draws are
    repeated (seeded) until every client has at least `min_examples` examples.
    """
    if len(labels) < num_clients * min_examples:
        raise ValueError(f"{len(labels)} examples cannot give {num_clients} clients {min_examples} each")
    generator = np.random.default_rng(seed)
    classes = np.unique(labels)
    for _attempt in range(1000):
        parts: list[list[np.ndarray]] = [[] for _ in range(num_clients)]
        for label in classes:
            members = generator.permutation(np.flatnonzero(labels == label))
            shares = generator.dirichlet(np.full(num_clients, alpha))
            cuts = (np.cumsum(shares)[:-1] * len(members)).astype(int)
            for client, chunk in enumerate(np.split(members, cuts)):
                parts[client].append(chunk)
        result = [np.sort(np.concatenate(chunks)) for chunks in parts]
        if min(len(p) for p in result) >= min_examples:
            return result
    raise ValueError(
        f"could not give every one of {num_clients} clients {min_examples} examples with "
        f"dirichlet_alpha={alpha}; raise alpha or lower the number of clients"
    )


def partition_shards(
    labels: np.ndarray, *, num_clients: int, seed: int, shards_per_client: int = 2
) -> list[np.ndarray]:
    """McMahan et al.'s pathological split: sort by label, cut into equal shards, deal 2 each."""
    num_shards = num_clients * shards_per_client
    if len(labels) < num_shards:
        raise ValueError(f"{len(labels)} examples cannot make {num_shards} shards")
    generator = np.random.default_rng(seed)
    # Stable sort by label; ties broken by a seeded shuffle so shards differ per seed.
    shuffled = generator.permutation(len(labels))
    by_label = shuffled[np.argsort(labels[shuffled], kind="stable")]
    shards = np.array_split(by_label, num_shards)
    order = generator.permutation(num_shards)
    return [
        np.sort(np.concatenate([shards[s] for s in order[c * shards_per_client : (c + 1) * shards_per_client]]))
        for c in range(num_clients)
    ]


def partition_natural(groups: np.ndarray | None, *, num_clients: int, group_names: tuple[str, ...] = ()) -> list[np.ndarray]:
    """One client per group (school): client k holds the examples of group k."""
    if groups is None or not group_names:
        raise ValueError(
            "data.partition = 'natural' needs a school for every response (a Group or school column); "
            "this data has none: choose iid, dirichlet or shards"
        )
    if num_clients != len(group_names):
        raise ValueError(
            f"data.partition = 'natural' makes each of the data's {len(group_names)} schools a client: "
            f"federation.num_clients must be {len(group_names)}, got {num_clients}"
        )
    parts = [np.flatnonzero(groups == k) for k in range(len(group_names))]
    empty = [group_names[k] for k, p in enumerate(parts) if len(p) == 0]
    if empty:
        raise ValueError(f"data.partition = 'natural': no training responses from {', '.join(empty)}")
    return parts


def partition_classes(labels: np.ndarray) -> np.ndarray:
    """The class each example counts as for label-skewed partitioners: the label itself, or for
    multi-label rows (N, K) the total score (number of elements earned)."""
    if labels.ndim == 1:
        return labels
    return np.clip(labels, 0, None).sum(1).astype(np.int64)


def partition(labels: np.ndarray, scheme: str, *, num_clients: int, seed: int, alpha: float = 0.5) -> list[np.ndarray]:
    """Dispatch to a partitioner by its config name (`iid`, `dirichlet`, `shards`); labels (N,)
    classes or (N, K) multi-label rows (split by total score, `partition_classes`)."""
    if num_clients > len(labels):
        raise ValueError(f"{num_clients} clients but only {len(labels)} training examples")
    labels = partition_classes(labels)
    if scheme == "iid":
        return partition_iid(labels, num_clients=num_clients, seed=seed)
    if scheme == "dirichlet":
        return partition_dirichlet(labels, num_clients=num_clients, alpha=alpha, seed=seed)
    if scheme == "shards":
        return partition_shards(labels, num_clients=num_clients, seed=seed)
    raise ValueError(f"unknown partition {scheme!r}")


def label_counts(parts: Sequence[np.ndarray], labels: np.ndarray, num_classes: int) -> np.ndarray:
    """(clients, classes) matrix of example counts, for the label-distribution heatmap;
    multi-label (N, K): per client, how many of its examples earned each label."""
    if labels.ndim == 2:
        return np.stack([(labels[p] > 0).sum(0) for p in parts]).astype(np.int64) if parts else np.zeros(
            (0, num_classes), dtype=np.int64
        )
    # One bincount over (client, label) pairs: no array a client (100,000 of them for a synthetic population).
    sizes = np.fromiter(map(len, parts), dtype=np.int64, count=len(parts))
    flat = parts.rows.reshape(-1) if isinstance(parts, IndexRows) else np.concatenate([*parts, np.zeros(0, np.int64)])
    pairs = np.repeat(np.arange(len(parts), dtype=np.int64), sizes) * num_classes + labels[flat.astype(np.int64)]
    return np.bincount(pairs, minlength=len(parts) * num_classes).reshape(len(parts), num_classes)


def split_holdout(
    partitions: Sequence[np.ndarray], fraction: float, *, seed: int
) -> tuple[Sequence[np.ndarray], list[np.ndarray]]:
    """Each client's examples split into (training, held-out): a seeded ⌊fraction·N⌋ of
    them held out as the client's own test split (personalization, validation scores).
    With fraction 0 the held-out parts are empty and the training parts unchanged."""
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"holdout fraction must be in [0, 1), got {fraction}")
    if int(fraction * max(map(len, partitions), default=0)) == 0:  # nothing held out: one empty array for all
        return partitions, [np.zeros(0, dtype=np.int64)] * len(partitions)
    train, held_out = [], []
    for client, indices in enumerate(partitions):
        count = int(fraction * len(indices))
        if count == 0:
            train.append(indices)
            held_out.append(indices[:0])
            continue
        order = np.random.default_rng([seed, client, 0x401D]).permutation(len(indices))
        held_out.append(np.sort(indices[order[:count]]))
        train.append(np.sort(indices[order[count:]]))
    return train, held_out


POPULATION_TAG = 0x909  # data.examples_per_client's own random stream


def synthetic_population(num_examples: int, *, num_clients: int, per_client: int, seed: int) -> IndexRows:
    """`num_clients` sorted index arrays of `per_client` distinct examples each out of `num_examples`, each
    client drawn independently (seeded): examples repeat across clients, so the clients may outnumber them."""
    if not 1 <= per_client <= num_examples:
        raise ValueError(f"data.examples_per_client = {per_client} must be between 1 and the {num_examples} "
                         "training examples")  # fmt: skip
    generator = np.random.default_rng([seed, POPULATION_TAG])
    draws = np.sort(generator.integers(0, num_examples, size=(num_clients, per_client)), axis=1)
    for row in np.flatnonzero((np.diff(draws, axis=1) == 0).any(axis=1)):  # a repeat within a client: redraw it
        draws[row] = np.sort(generator.choice(num_examples, size=per_client, replace=False))
    return IndexRows(draws)


class IndexRows(Sequence[np.ndarray]):
    """Equal-length index arrays kept as one (clients, n) array, each client's a view made when asked
    for: 100,000 clients hold one array, not 100,000 array objects (`synthetic_population`)."""

    def __init__(self, rows: np.ndarray) -> None:
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: Any) -> Any:
        return IndexRows(self.rows[index]) if isinstance(index, slice) else self.rows[index]

    def __iter__(self) -> Iterator[np.ndarray]:
        return iter(self.rows)


def client_partitions(config: ExperimentConfig, data: FederatedData) -> Sequence[np.ndarray]:
    """Each client's example indices (before its held-out split): one per school with the natural
    partition, a `synthetic_population` with data.examples_per_client, else the seeded iid / dirichlet /
    shards split of `data` (after `subset`)."""
    federation = config.federation
    if config.data.examples_per_client:
        return synthetic_population(len(data.train_y), num_clients=federation.num_clients,
                                    per_client=config.data.examples_per_client, seed=config.system.seed)  # fmt: skip
    if config.data.partition == "natural":
        return partition_natural(data.train_groups, num_clients=federation.num_clients, group_names=data.group_names)
    return partition(
        data.train_y.numpy(), config.data.partition, num_clients=federation.num_clients, seed=config.system.seed,
        alpha=config.data.dirichlet_alpha,
    )  # fmt: skip


# -- the one-run audit's canaries (privacy.audit = "one_run") ----------------------------

CANARY_TAG = 0xCA9A7  # the canaries' own random stream: (seed, 0, tag) is drawn by nothing else


@dataclass(frozen=True)
class Canaries:
    """Where the canaries are: `rows` (m,) their indices into the training tensors, `included`
    (m,) bool, whether each joined a client's training data (the audit's secret, S_i = ±1)."""

    rows: np.ndarray
    included: np.ndarray


def insert_canaries(
    data: FederatedData, partitions: Sequence[np.ndarray], *, count: int, seed: int
) -> tuple[FederatedData, Sequence[np.ndarray], Canaries | None]:
    """`count` canaries for the one-run audit (Steinke et al. 2023): a seeded sample of test
    examples, each relabelled with a uniformly random *wrong* class (only memorising it fits that
    label), appended to the training tensors and taken out of the test split (so accuracy is never
    measured on them); each then joins, independently with probability 1/2, the training partition
    of one client drawn uniformly. Single-label data only. count 0: the inputs come back unchanged
    (the same objects), and no canaries."""
    if count == 0:
        return data, partitions, None
    if data.multilabel:
        raise ValueError("canaries need single-label data (a random wrong class): use data.dataset = 'mnist'")
    if not 2 <= count < len(data.test_y):
        raise ValueError(
            f"privacy.audit_canaries = {count} must be between 2 and the {len(data.test_y) - 1} test examples "
            "this run can spare (the canaries are taken from its test split)"
        )
    generator = np.random.default_rng([seed, 0, CANARY_TAG])
    chosen = np.sort(generator.choice(len(data.test_y), size=count, replace=False))
    shift = torch.from_numpy(generator.integers(1, data.num_classes, size=count))  # never the true class
    included = generator.random(count) < 0.5
    owners = generator.integers(0, len(partitions), size=count)
    rows = np.arange(len(data.train_y), len(data.train_y) + count)
    take, keep = torch.from_numpy(chosen), torch.from_numpy(np.setdiff1d(np.arange(len(data.test_y)), chosen))
    labels = (data.test_y[take] + shift) % data.num_classes
    both = data.train_groups is not None and data.test_groups is not None
    canaried = replace(
        data, train_x=torch.cat([data.train_x, data.test_x[take]]), train_y=torch.cat([data.train_y, labels]),
        test_x=data.test_x[keep].contiguous(), test_y=data.test_y[keep].contiguous(),
        train_groups=np.concatenate([data.train_groups, data.test_groups[chosen]]) if both else None,
        test_groups=data.test_groups[keep.numpy()] if data.test_groups is not None else None,
    )  # fmt: skip
    joined = [np.sort(np.concatenate([part, rows[included & (owners == c)]])) for c, part in enumerate(partitions)]
    return canaried, joined, Canaries(rows=rows, included=included)
