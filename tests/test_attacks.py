from __future__ import annotations

import numpy as np
import pytest
import torch

from engine.attacks import ATTACKS, choose_malicious, flip_labels, num_malicious, poison_update


def generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize(
    ("num_clients", "fraction", "count"),
    [(10, 0.3, 3), (10, 0.0, 0), (10, 1.0, 10), (7, 0.5, 4), (5, 0.5, 3), (100, 0.125, 13), (3, 0.1, 0)],
)
def test_choose_malicious_picks_round_fraction_times_clients(num_clients, fraction, count):
    chosen = choose_malicious(num_clients, fraction, seed=0)

    assert isinstance(chosen, frozenset) and len(chosen) == count == num_malicious(num_clients, fraction)
    assert chosen <= set(range(num_clients))


def test_choose_malicious_all_and_none():
    assert choose_malicious(10, 1.0, seed=3) == frozenset(range(10))
    assert choose_malicious(10, 0.0, seed=3) == frozenset()


def test_choose_malicious_is_seeded():
    assert choose_malicious(100, 0.3, seed=1) == choose_malicious(100, 0.3, seed=1)
    assert choose_malicious(100, 0.3, seed=1) != choose_malicious(100, 0.3, seed=2)


def test_choose_malicious_does_not_share_the_plain_seed_stream():
    plain = frozenset(np.random.default_rng(5).choice(100, size=30, replace=False).tolist())

    assert choose_malicious(100, 0.3, seed=5) != plain


def test_sign_flip_and_scale_by_hand():
    update = torch.tensor([1.0, -2.0, 0.5, 0.0])

    flipped = poison_update("sign_flip", update, scale=3.0, noise_std=0.0, generator=generator(0))
    scaled = poison_update("scale", update, scale=10.0, noise_std=0.0, generator=generator(0))

    assert torch.equal(flipped, torch.tensor([-3.0, 6.0, -1.5, 0.0]))
    assert torch.equal(scaled, torch.tensor([10.0, -20.0, 5.0, 0.0]))
    assert torch.equal(update, torch.tensor([1.0, -2.0, 0.5, 0.0]))  # the honest update is not mutated


def test_label_flip_sends_the_update_unchanged():
    update = torch.tensor([1.0, -2.0, 0.5])

    sent = poison_update("label_flip", update, scale=3.0, noise_std=1.0, generator=generator(0))

    assert torch.equal(sent, torch.tensor([1.0, -2.0, 0.5]))


def test_gaussian_noise_has_the_requested_std_and_ignores_the_update():
    honest = torch.full((100_000,), 7.0)

    noise = poison_update("gaussian", honest, scale=1.0, noise_std=0.3, generator=generator(0))

    assert noise.shape == honest.shape and noise.dtype == honest.dtype
    assert float(noise.std()) == pytest.approx(0.3, rel=0.02)
    assert abs(float(noise.mean())) < 0.01  # 0.3 / sqrt(100k) ≈ 0.001 standard error
    same_seed_other_update = poison_update(
        "gaussian", torch.zeros(100_000), scale=1.0, noise_std=0.3, generator=generator(0)
    )
    other_seed = poison_update("gaussian", honest, scale=1.0, noise_std=0.3, generator=generator(1))
    assert torch.equal(noise, same_seed_other_update)
    assert not torch.equal(noise, other_seed)


def test_flip_labels_mnist():
    labels = torch.arange(10)

    assert flip_labels(labels, 10).tolist() == [9, 8, 7, 6, 5, 4, 3, 2, 1, 0]
    assert flip_labels(torch.tensor([0, 1, 2], dtype=torch.uint8), 3).tolist() == [2, 1, 0]
    assert flip_labels(torch.tensor([0, 1, 2], dtype=torch.uint8), 3).dtype == torch.uint8
    assert torch.equal(flip_labels(flip_labels(labels, 10), 10), labels)


def test_bad_arguments_raise_value_error():
    update = torch.ones(4)
    with pytest.raises(ValueError, match=", ".join(ATTACKS)):
        poison_update("backdoor", update, scale=1.0, noise_std=1.0, generator=generator(0))
    for fraction in (-0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match="fraction"):
            choose_malicious(10, fraction, seed=0)
    with pytest.raises(ValueError, match="num_clients"):
        choose_malicious(0, 0.5, seed=0)
    with pytest.raises(ValueError, match="seed"):
        choose_malicious(10, 0.5, seed=-1)
    with pytest.raises(ValueError, match="scale"):
        poison_update("scale", update, scale=0.0, noise_std=1.0, generator=generator(0))
    with pytest.raises(ValueError, match="noise_std"):
        poison_update("gaussian", update, scale=1.0, noise_std=-1.0, generator=generator(0))
    with pytest.raises(ValueError, match="flat"):
        poison_update("scale", torch.ones(2, 2), scale=1.0, noise_std=1.0, generator=generator(0))
    with pytest.raises(ValueError, match="0..9"):
        flip_labels(torch.tensor([0, 10]), 10)
    with pytest.raises(ValueError, match="integer"):
        flip_labels(torch.tensor([0.0, 1.0]), 10)
