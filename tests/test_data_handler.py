from __future__ import annotations

import gzip

import numpy as np
import pytest

from conftest import DATA_DIR
from data_handler import (
    MNIST_MEAN,
    MNIST_STD,
    DataNotFoundError,
    label_counts,
    synthetic_population,
    load_mnist,
    partition,
    subset,
)


def read_idx_labels(path) -> np.ndarray:
    """Independent reader of the IDX label format: 8-byte header, then one byte a label."""
    raw = gzip.open(path).read() if str(path).endswith(".gz") else open(path, "rb").read()
    assert int.from_bytes(raw[:4], "big") == 2049
    return np.frombuffer(raw[8:], dtype=np.uint8).astype(np.int64)


def read_idx_images(path) -> np.ndarray:
    raw = open(path, "rb").read()
    assert int.from_bytes(raw[:4], "big") == 2051
    count, rows, cols = (int.from_bytes(raw[i : i + 4], "big") for i in (4, 8, 12))
    return np.frombuffer(raw[16:], dtype=np.uint8).reshape(count, rows, cols)


def test_mnist_matches_the_raw_files(mnist):
    raw = DATA_DIR / "MNIST" / "raw"
    assert mnist.train_x.shape == (60_000, 1, 28, 28) and mnist.test_x.shape == (10_000, 1, 28, 28)
    np.testing.assert_array_equal(mnist.train_y.numpy(), read_idx_labels(raw / "train-labels-idx1-ubyte.gz"))
    np.testing.assert_array_equal(mnist.test_y.numpy(), read_idx_labels(raw / "t10k-labels-idx1-ubyte.gz"))
    images = read_idx_images(raw / "t10k-images-idx3-ubyte")
    expected = (images[:100].astype(np.float32) / 255.0 - MNIST_MEAN) / MNIST_STD
    np.testing.assert_allclose(mnist.test_x[:100, 0].numpy(), expected, rtol=1e-5, atol=1e-5)
    # Normalised with the usual constants: the training set has mean ~0 and std ~1.
    assert abs(float(mnist.train_x.mean())) < 0.01 and abs(float(mnist.train_x.std()) - 1) < 0.01


def test_missing_data_says_where_it_looked(tmp_path):
    with pytest.raises(DataNotFoundError, match=str(tmp_path / "MNIST" / "raw")):
        load_mnist(tmp_path, download=False)


def test_subset_is_seeded_and_sized(mnist):
    a = subset(mnist, max_train=500, max_test=100, seed=1)
    b = subset(mnist, max_train=500, max_test=100, seed=1)
    c = subset(mnist, max_train=500, max_test=100, seed=2)
    assert len(a.train_y) == 500 and len(a.test_y) == 100
    assert (a.train_x == b.train_x).all() and not (a.train_y == c.train_y).all()
    assert subset(mnist, max_train=0, max_test=0, seed=0).train_x is mnist.train_x


LABELS = np.repeat(np.arange(10), 600)  # 6,000 examples, 600 per class
np.random.default_rng(0).shuffle(LABELS)


@pytest.mark.parametrize("scheme", ["iid", "dirichlet", "shards"])
def test_partitions_are_disjoint_complete_and_seeded(scheme):
    parts = partition(LABELS, scheme, num_clients=20, seed=3, alpha=0.5)
    assert len(parts) == 20 and all(len(p) > 0 for p in parts)
    joined = np.concatenate(parts)
    assert len(joined) == len(LABELS) and len(np.unique(joined)) == len(LABELS)  # disjoint and complete
    again = partition(LABELS, scheme, num_clients=20, seed=3, alpha=0.5)
    other = partition(LABELS, scheme, num_clients=20, seed=4, alpha=0.5)
    assert all((a == b).all() for a, b in zip(parts, again, strict=True))
    assert any(len(a) != len(b) or (a != b).any() for a, b in zip(parts, other, strict=True))


def test_iid_sizes_differ_by_at_most_one_and_labels_are_balanced():
    parts = partition(LABELS, "iid", num_clients=7, seed=0)
    sizes = [len(p) for p in parts]
    assert max(sizes) - min(sizes) <= 1
    fractions = label_counts(parts, LABELS, 10) / np.array(sizes)[:, None]
    assert np.abs(fractions - 0.1).max() < 0.06


def mean_label_skew(alpha: float) -> float:
    """Mean total-variation distance between each client's label mix and the global one."""
    parts = partition(LABELS, "dirichlet", num_clients=10, seed=0, alpha=alpha)
    counts = label_counts(parts, LABELS, 10).astype(float)
    mixes = counts / counts.sum(1, keepdims=True)
    return float(np.abs(mixes - 0.1).sum(1).mean() / 2)


def test_dirichlet_skew_grows_as_alpha_falls():
    skews = [mean_label_skew(alpha) for alpha in (100.0, 1.0, 0.1)]
    assert skews[0] < 0.1 < skews[1] < skews[2], skews
    assert skews[2] > 0.5


def test_shards_give_each_client_about_two_labels():
    parts = partition(LABELS, "shards", num_clients=30, seed=0)  # 60 shards of 100
    counts = label_counts(parts, LABELS, 10)
    top_two = np.sort(counts, axis=1)[:, -2:].sum(1) / counts.sum(1)
    assert (top_two >= 0.9).all()
    assert np.median((counts > 0).sum(1)) <= 2
    assert len({len(p) for p in parts}) == 1  # equal shard sizes


@pytest.mark.parametrize("kind", ["dirichlet", "population", "with an empty client", "none"])
def test_label_counts_match_numpy(kind):
    if kind == "population":  # one (clients, n) array (data.examples_per_client)
        parts = synthetic_population(len(LABELS), num_clients=300, per_client=7, seed=2)
    else:
        parts = [] if kind == "none" else partition(LABELS, "dirichlet", num_clients=5, seed=0, alpha=1.0)
        parts = [*parts[:2], np.zeros(0, dtype=np.int64), *parts[2:]] if kind == "with an empty client" else parts
    counts = label_counts(parts, LABELS, 10)
    assert counts.shape == (len(parts), 10) and counts.dtype == np.int64
    for part, row in zip(parts, counts, strict=True):
        np.testing.assert_array_equal(row, np.histogram(LABELS[part], bins=np.arange(11))[0])


def test_impossible_partitions_are_clear_errors():
    with pytest.raises(ValueError, match="clients"):
        partition(LABELS[:5], "iid", num_clients=10, seed=0)
    with pytest.raises(ValueError, match="shards"):
        partition(LABELS[:15], "shards", num_clients=10, seed=0)
