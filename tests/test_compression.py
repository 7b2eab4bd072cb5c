from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from engine.compression import COMPRESSIONS, Compressor, compressed_bytes, num_kept, quantize, top_k


def distinct_magnitudes(size: int, seed: int) -> np.ndarray:
    """A float32 vector whose |values| are all different, with random signs and order."""
    rng = np.random.default_rng(seed)
    magnitudes = rng.permutation(np.arange(1, size + 1)) * 0.01
    return (magnitudes * rng.choice([-1.0, 1.0], size=size)).astype(np.float32)


def generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize(("size", "fraction", "seed"), [(500, 0.05, 0), (1_000, 0.013, 1), (37, 0.5, 2)])
def test_top_k_matches_numpy_argsort(size, fraction, seed):
    vector = distinct_magnitudes(size, seed)
    k = math.ceil(fraction * size)
    expected = np.argsort(-np.abs(vector))[:k]

    indices, values = top_k(torch.from_numpy(vector), fraction)

    assert indices.dtype == torch.int64 and indices.shape == (k,)
    assert set(indices.tolist()) == set(expected.tolist())
    np.testing.assert_array_equal(values.numpy(), vector[indices.numpy()])


def test_top_k_rounds_k_up_and_keeps_at_least_one():
    vector = torch.from_numpy(distinct_magnitudes(100, 3))

    tiny_indices, _ = top_k(vector, 1e-9)
    assert tiny_indices.tolist() == [int(vector.abs().argmax())]
    assert top_k(vector, 0.015)[0].numel() == 2  # 1.5 → 2
    assert top_k(vector, 0.07)[0].numel() == 7  # 0.07·100 is 7.000000000000001 in floats
    all_indices, all_values = top_k(vector, 1.0)
    assert sorted(all_indices.tolist()) == list(range(100))
    assert torch.equal(all_values.sort().values, vector.sort().values)


def test_quantize_is_unbiased():
    vector = torch.from_numpy(distinct_magnitudes(20, 4))
    bits, draws = 3, 2_000
    levels = 2 ** (bits - 1) - 1

    mean = torch.stack([quantize(vector, bits, generator(seed)) for seed in range(draws)]).double().mean(0)

    # Each coordinate is ‖v‖/s times a Bernoulli, so its variance is at most (‖v‖/s)²/4;
    # the mean of `draws` samples is then within 5 standard deviations with room to spare.
    std_of_mean = float(vector.norm()) / levels / 2 / math.sqrt(draws)
    np.testing.assert_allclose(mean.numpy(), vector.double().numpy(), rtol=0, atol=5 * std_of_mean)


def test_quantized_coordinates_lie_on_the_grid_with_the_right_sign():
    vector = torch.from_numpy(distinct_magnitudes(300, 5)).double()
    bits = 4
    levels = 2 ** (bits - 1) - 1
    norm = float(vector.norm())

    quantized = quantize(vector, bits, generator(0))

    grid = quantized.abs().numpy() / norm * levels
    np.testing.assert_allclose(grid, np.round(grid), atol=1e-9)
    scaled = vector.abs().numpy() / norm * levels
    assert np.all((np.round(grid) == np.floor(scaled)) | (np.round(grid) == np.ceil(scaled)))
    nonzero = grid > 0.5
    assert np.array_equal(np.sign(quantized.numpy()[nonzero]), np.sign(vector.numpy()[nonzero]))


def test_quantize_keeps_a_zero_vector_zero():
    assert torch.equal(quantize(torch.zeros(10), 8, generator(0)), torch.zeros(10))


def test_quantization_error_shrinks_as_bits_grow():
    vector = torch.from_numpy(distinct_magnitudes(1_000, 6))

    errors = [
        np.mean([float((quantize(vector, bits, generator(seed)) - vector).norm()) for seed in range(5)])
        for bits in (2, 4, 8, 16)
    ]

    assert errors == sorted(errors, reverse=True) and errors[-1] < errors[0] / 100


def test_compressed_bytes_hand_computed():
    num_params = 1_663_370  # McMahan CNN

    assert compressed_bytes(num_params, "none") == 6_653_480
    assert compressed_bytes(num_params, "topk", fraction=0.01) == 133_072  # k = 16,634
    assert compressed_bytes(num_params, "none") / compressed_bytes(num_params, "topk", fraction=0.01) >= 49
    assert compressed_bytes(num_params, "qsgd", bits=8) == 1_663_374
    assert compressed_bytes(10, "qsgd", bits=3) == 8  # 4 + ceil(30 / 8)
    assert num_kept(num_params, 0.01) == 16_634


@pytest.mark.parametrize("method", COMPRESSIONS)
def test_compressor_reports_the_bytes_of_its_method(method):
    update = torch.from_numpy(distinct_magnitudes(250, 7))

    _, sent_bytes = Compressor(method, fraction=0.1, bits=5).compress(0, update, generator(0))

    assert sent_bytes == compressed_bytes(250, method, fraction=0.1, bits=5)


def test_none_returns_the_update_unchanged_and_qsgd_quantizes():
    update = torch.from_numpy(distinct_magnitudes(64, 8))

    unchanged, none_bytes = Compressor("none").compress(0, update, generator(0))
    quantized, _ = Compressor("qsgd", bits=6).compress(0, update, generator(1))

    assert torch.equal(unchanged, update) and none_bytes == 4 * 64
    assert torch.equal(quantized, quantize(update, 6, generator(1)))


def test_error_feedback_loses_nothing():
    rng = np.random.default_rng(9)
    inputs = [torch.from_numpy(rng.normal(size=200).astype(np.float32)) for _ in range(30)]
    compressor = Compressor("topk", fraction=0.05)  # k = 10

    sent = [compressor.compress(0, update, generator(0))[0] for update in inputs]
    total_in = torch.stack(inputs).double().sum(0)
    total_sent = torch.stack(sent).double().sum(0)
    assert compressor.residual_norm(0) == pytest.approx(float((total_in - total_sent).norm()), rel=1e-5)

    # Zero inputs flush the residual, k coordinates a round, so ≤ 200 / 10 rounds empty it.
    flushed = [compressor.compress(0, torch.zeros(200), generator(0))[0] for _ in range(20)]
    assert compressor.residual_norm(0) == 0.0
    np.testing.assert_allclose((total_sent + torch.stack(flushed).double().sum(0)).numpy(), total_in.numpy(), atol=1e-4)


def test_error_feedback_eventually_sends_every_coordinate_of_a_constant_input():
    rng = np.random.default_rng(10)
    # Magnitudes bounded away from zero: coordinate i waits about Σ|x| / (k·|x_i|) rounds.
    constant = torch.from_numpy((rng.uniform(0.5, 1.5, 1_000) * rng.choice([-1, 1], 1_000)).astype(np.float32))
    compressor = Compressor("topk", fraction=0.01)  # k = 10
    ever_sent = torch.zeros(1_000, dtype=torch.bool)

    for _ in range(2_000):
        ever_sent |= compressor.compress(0, constant, generator(0))[0] != 0
        if ever_sent.all():
            break

    assert ever_sent.all()


def test_without_error_feedback_a_constant_input_sends_the_same_k_coordinates():
    constant = torch.from_numpy(distinct_magnitudes(1_000, 11))
    expected = set(np.argsort(-np.abs(constant.numpy()))[:10].tolist())
    compressor = Compressor("topk", fraction=0.01, error_feedback=False)

    sent_sets = [
        set(torch.nonzero(compressor.compress(0, constant, generator(0))[0]).flatten().tolist()) for _ in range(50)
    ]

    assert all(sent == expected for sent in sent_sets)
    assert compressor.residual_norm(0) == 0.0


def test_residuals_are_kept_per_client():
    first, second = (torch.from_numpy(distinct_magnitudes(100, seed)) for seed in (12, 13))
    shared = Compressor("topk", fraction=0.1)

    shared.compress(0, first, generator(0))
    norm_before = shared.residual_norm(0)
    received, _ = shared.compress(1, second, generator(0))

    fresh, _ = Compressor("topk", fraction=0.1).compress(1, second, generator(0))
    assert torch.equal(received, fresh)
    assert shared.residual_norm(0) == norm_before > 0
    assert shared.residual_norm(1) > 0 and shared.residual_norm(2) == 0.0


def test_bad_arguments_raise_value_error():
    vector = torch.ones(10)
    for kwargs in ({"fraction": 0}, {"fraction": -0.1}, {"fraction": 1.5}, {"fraction": float("nan")}):
        with pytest.raises(ValueError, match="fraction"):
            Compressor("topk", **kwargs)
        with pytest.raises(ValueError, match="fraction"):
            top_k(vector, kwargs["fraction"])
    for bits in (1, 17, 8.0, True):
        with pytest.raises(ValueError, match="bits"):
            Compressor("qsgd", bits=bits)
        with pytest.raises(ValueError, match="bits"):
            quantize(vector, bits, generator(0))
    with pytest.raises(ValueError, match="none, topk, qsgd"):
        Compressor("gzip")
    with pytest.raises(ValueError, match="none, topk, qsgd"):
        compressed_bytes(10, "gzip")
    with pytest.raises(ValueError, match="num_params"):
        compressed_bytes(0, "none")
    with pytest.raises(ValueError, match="flat"):
        top_k(torch.ones(3, 3), 0.5)
    compressor = Compressor("topk", fraction=0.1)
    compressor.compress(0, vector, generator(0))
    with pytest.raises(ValueError, match="residual"):
        compressor.compress(0, torch.ones(11), generator(0))
