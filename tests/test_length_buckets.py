"""federation.bucket_by_length: each local epoch's batches of responses of similar length
(engine/client_trainers.epoch_batches), checked against the plain random order and by counting."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from engine.client_trainers import BUCKET_POOL, epoch_batches, token_lengths
from experiment_config import ExperimentConfig


def test_without_lengths_the_batches_are_the_plain_random_order():
    indices = torch.arange(100, 203)
    generator, reference = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    order = indices[torch.randperm(len(indices), generator=reference)]
    batches = epoch_batches(indices, 10, generator)
    assert [b.tolist() for b in batches] == [order[i : i + 10].tolist() for i in range(0, 103, 10)]


def test_buckets_take_every_example_once_in_as_many_batches_with_less_padding():
    rng = np.random.default_rng(0)
    lengths = torch.from_numpy(rng.integers(3, 128, size=1000))
    indices = torch.from_numpy(rng.choice(1000, size=421, replace=False))
    batch_size = 4
    generator = torch.Generator().manual_seed(1)
    plain = epoch_batches(indices, batch_size, torch.Generator().manual_seed(1))
    bucketed = epoch_batches(indices, batch_size, generator, lengths)
    assert sorted(torch.cat(bucketed).tolist()) == sorted(indices.tolist())  # each example once
    assert len(bucketed) == len(plain) == -(-421 // batch_size)
    assert sorted(len(b) for b in bucketed) == sorted(len(b) for b in plain)

    def padded(batches):
        return sum(len(b) * int(lengths[b].max()) for b in batches)

    assert padded(bucketed) < 0.75 * padded(plain)
    # Each batch is a run of one pool sorted by length: the pools are the random order's consecutive slices.
    order = indices[torch.randperm(len(indices), generator=torch.Generator().manual_seed(1))]
    pools = [set(order[i : i + batch_size * BUCKET_POOL].tolist()) for i in range(0, 421, batch_size * BUCKET_POOL)]
    for batch in bucketed:
        assert sum(set(batch.tolist()) <= pool for pool in pools) == 1
    # Seeded: the same generator state gives the same batches, another gives others.
    again = epoch_batches(indices, batch_size, torch.Generator().manual_seed(1), lengths)
    assert [b.tolist() for b in again] == [b.tolist() for b in bucketed]
    other = epoch_batches(indices, batch_size, torch.Generator().manual_seed(2), lengths)
    assert [b.tolist() for b in other] != [b.tolist() for b in bucketed]


def test_token_lengths_end_at_the_last_non_pad_token():
    ids = torch.tensor([[101, 7, 8, 102, 0, 0], [101, 102, 0, 0, 0, 0], [101, 5, 5, 5, 5, 102]])
    assert token_lengths(ids, 0).tolist() == [4, 2, 6]


def ngss(**sections) -> dict:
    base = {
        "data": {"dataset": "ngss", "partition": "natural", "max_train_examples": 180, "max_test_examples": 45},
        "model": {"name": "tinyllama-lora", "pretrained": False, "max_length": 48},
        "federation": {"num_clients": 9, "clients_per_round": 3, "rounds": 1, "batch_size": 4,
                       "learning_rate": 0.05, "bucket_by_length": True},
        "privacy": {"audit_examples": 0},
        "system": {"num_workers": 1, "seed": 2},
    }  # fmt: skip
    for section, values in sections.items():
        base[section] = {**base[section], **values}
    return base


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"data": {"dataset": "mnist", "partition": "iid"}, "model": {"name": "mlp"},
          "federation": {"num_clients": 2, "clients_per_round": 2}}, "needs a text model"),
        ({"privacy": {"mode": "local", "noise_multiplier": 1.0}}, "Poisson"),
        ({"system": {"backend": "mlx"}}, "system.backend = 'torch'"),
    ],
)  # fmt: skip
def test_bucketing_is_refused_where_it_cannot_apply(change, message):
    with pytest.raises(ValueError, match=message):
        ExperimentConfig.from_dict(ngss(**change))


def test_a_bucketed_run_trains_alike_in_any_trainer_process_and_differs_from_the_plain_order():
    from federated_learning import FederatedRun
    from model import flatten, get_parameters

    weights, steps = {}, {}
    for name, bucketed, workers in (("one", True, 1), ("two", True, 2), ("plain", False, 1)):
        config = ExperimentConfig.from_dict(ngss(federation={"bucket_by_length": bucketed}, system={"num_workers": workers}))
        run = FederatedRun(config)
        (result,) = list(run.rounds())
        assert result.accuracy > 0
        weights[name] = flatten(get_parameters(run.model))
        steps[name] = sorted((c.id, c.steps) for c in result.clients)
    torch.testing.assert_close(weights["one"], weights["two"], rtol=0, atol=1e-6)
    assert not torch.allclose(weights["one"], weights["plain"])
    assert steps["one"] == steps["plain"] and all(n > 0 for _, n in steps["one"])  # as many batches
