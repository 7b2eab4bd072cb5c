"""Secure aggregation against independent references: numpy sums, chi-square, Lagrange by hand."""

from __future__ import annotations

import itertools
import math
import secrets

import numpy as np
import pytest
import torch

from engine.secure_aggregation import (
    SecAggClient,
    SecAggConfig,
    SecAggError,
    SecAggServer,
    UnmaskRequest,
    decode_fixed_point,
    encode_fixed_point,
    neighbourhoods,
    secure_aggregate,
    shamir_reconstruct,
    shamir_share,
)


def make_round(num_clients: int, length: int, seed: int) -> tuple[dict[int, np.ndarray], dict[int, float]]:
    """Clients that differ: float32 updates at different scales, non-integer weights, sparse ids."""
    rng = np.random.default_rng(seed)
    ids = sorted(rng.choice(10 * num_clients, size=num_clients, replace=False).tolist())
    updates = {u: (rng.normal(size=length) * rng.uniform(0.1, 3)).astype(np.float32) for u in ids}
    weights = {u: float(rng.uniform(0.5, 60)) for u in ids}
    return updates, weights


def numpy_weighted_sum(updates, weights, ids) -> np.ndarray:
    return np.sum([weights[u] * updates[u].astype(np.float64) for u in ids], axis=0)


def quantization_bound(num_clients: int, config: SecAggConfig) -> float:
    """n·2^-(f+1) per coordinate, plus a hair for the float64 rounding of the numpy reference itself."""
    return num_clients * 2.0 ** -(config.fractional_bits + 1) + 1e-9


def masked_inputs(updates, weights, config):
    """Rounds 0-2 driven by hand: what the server receives from each client, before any unmasking."""
    length = len(next(iter(updates.values())))
    server = SecAggServer(config, length)
    clients = {u: SecAggClient(u, config) for u in updates}
    rosters = server.receive_keys([client.advertise() for client in clients.values()])
    inboxes = server.route_shares([share for u, c in clients.items() for share in c.share_keys(rosters[u])])
    return {u: c.masked_input(inboxes[u], updates[u], weights[u]) for u, c in clients.items()}, server, clients


@pytest.mark.parametrize(("num_clients", "seed"), [(5, 0), (12, 1), (20, 2)])
def test_unmasked_weighted_sum_matches_numpy_within_the_quantization_bound(num_clients, seed):
    updates, weights = make_round(num_clients, 1_000, seed)
    config = SecAggConfig()

    result = secure_aggregate(updates, weights, config)

    bound = quantization_bound(num_clients, config)
    assert np.max(np.abs(result.weighted_sum - numpy_weighted_sum(updates, weights, updates))) <= bound
    assert abs(result.total_weight - sum(weights.values())) <= bound
    expected_mean = np.average(np.stack(list(updates.values())), axis=0, weights=list(weights.values()))
    np.testing.assert_allclose(result.weighted_sum / result.total_weight, expected_mean, rtol=0, atol=1e-6)
    assert result.participants == result.survivors == tuple(sorted(updates))
    assert result.threshold == max(2, math.ceil(0.5 * num_clients)) and result.recovered_dropouts == ()


def test_quantization_bound_holds_and_is_not_vacuous_with_coarse_fixed_point():
    updates, weights = make_round(5, 2_000, seed=3)
    config = SecAggConfig(fractional_bits=6)

    result = secure_aggregate(updates, weights, config)

    error = np.max(np.abs(result.weighted_sum - numpy_weighted_sum(updates, weights, updates)))
    bound = quantization_bound(5, config)
    assert bound / 4 < error <= bound  # the sum of 5 rounding errors reaches over 1/4 of its worst case


def test_a_masked_input_looks_uniform_and_is_uncorrelated_with_the_update():
    rng = np.random.default_rng(4)
    length = 4_000
    constant = {u: np.full(length, 0.5, dtype=np.float32) for u in range(4)}
    random = {u: rng.normal(size=length).astype(np.float32) for u in range(4)}
    weights = dict.fromkeys(range(4), 1.0)
    config = SecAggConfig()

    masked_constant, _, _ = masked_inputs(constant, weights, config)
    masked_random, _, _ = masked_inputs(random, weights, config)

    def chi_square_p(raw: bytes) -> float:  # Pearson's test that all 256 byte values are equally likely
        counts = np.bincount(np.frombuffer(raw, dtype=np.uint8), minlength=256)
        statistic = float(np.sum((counts - counts.mean()) ** 2 / counts.mean()))
        # P(χ²_255 ≥ statistic) is the regularized upper incomplete gamma Q(255/2, statistic/2).
        return float(torch.special.gammaincc(torch.tensor(255 / 2, dtype=torch.float64), torch.tensor(statistic / 2)))

    def correlation(raw: bytes, update: np.ndarray) -> float:
        values = decode_fixed_point(np.frombuffer(raw, dtype=np.uint64), config)[:-1]
        return float(np.corrcoef(values, update)[0, 1])

    assert chi_square_p(masked_constant[0].masked) > 1e-3
    assert abs(correlation(masked_random[0].masked, random[0])) < 5 / math.sqrt(length)  # 5 standard errors of r
    # The same tests on the unmasked encoding do see the data, so they can fail.
    plain = encode_fixed_point(constant[0], 1.0, config)
    assert chi_square_p(plain.tobytes()) < 1e-3
    assert correlation(encode_fixed_point(random[0], 1.0, config).tobytes(), random[0]) > 0.99
    # Fresh (unseeded) randomness every round: the same input never masks the same way twice.
    assert masked_inputs(constant, weights, config)[0][0].masked != masked_constant[0].masked


def test_dropouts_after_masking_up_to_n_minus_t_are_recovered_exactly():
    updates, weights = make_round(10, 1_000, seed=5)
    config = SecAggConfig(threshold=0.5)  # t = 5 of 10
    dropped = set(list(updates)[::2])  # n − t = 5 clients vanish after sending y_u

    result = secure_aggregate(updates, weights, config, drop_after_masking=dropped)

    # Their masked inputs arrived, so they are in the sum; the server rebuilt their self-masks.
    expected = numpy_weighted_sum(updates, weights, updates)
    assert np.max(np.abs(result.weighted_sum - expected)) <= quantization_bound(10, config)
    assert result.survivors == tuple(sorted(updates)) and result.recovered_dropouts == tuple(sorted(dropped))
    assert result.stats.dropouts_recovered == 5
    assert sorted(result.reconstructions) == [(u, "self_mask") for u in sorted(updates)]


@pytest.mark.parametrize("stage", ["drop_after_masking", "drop_after_sharing"])
def test_more_than_n_minus_t_dropouts_fail_with_a_clear_error(stage):
    updates, weights = make_round(10, 200, seed=6)
    dropped = set(list(updates)[:6])  # n − t + 1

    with pytest.raises(SecAggError, match=r"t = 5 are needed"):
        secure_aggregate(updates, weights, SecAggConfig(threshold=0.5), **{stage: dropped})


def test_drops_after_sharing_are_unmasked_and_no_client_has_both_secrets_rebuilt():
    updates, weights = make_round(8, 1_000, seed=7)
    ids = list(updates)
    after_sharing, after_masking = {ids[2], ids[5]}, {ids[7]}

    result = secure_aggregate(updates, weights, SecAggConfig(),
                              drop_after_sharing=after_sharing, drop_after_masking=after_masking)

    arrived = [u for u in ids if u not in after_sharing]
    assert result.survivors == tuple(sorted(arrived))
    assert np.max(np.abs(result.weighted_sum - numpy_weighted_sum(updates, weights, arrived))) <= 8 * 2.0**-25
    assert abs(result.total_weight - sum(weights[u] for u in arrived)) <= 8 * 2.0**-25
    rebuilt_seeds = {u for u, kind in result.reconstructions if kind == "self_mask"}
    rebuilt_keys = {u for u, kind in result.reconstructions if kind == "mask_key"}
    assert rebuilt_seeds == set(arrived) and rebuilt_keys == after_sharing and not rebuilt_seeds & rebuilt_keys
    assert result.recovered_dropouts == tuple(sorted(after_sharing | after_masking))


def test_a_client_reveals_one_secret_per_owner_and_refuses_to_unmask_a_tiny_sum():
    updates, weights = make_round(6, 50, seed=8)
    config = SecAggConfig(threshold_count=3)
    _, _, clients = masked_inputs(updates, weights, config)
    ids = sorted(updates)
    client = clients[ids[0]]

    for survivors in (ids, ids[:4], ids[1:4]):
        response = client.unmask(UnmaskRequest(tuple(survivors)))
        assert set(response.self_mask_shares) == set(survivors)
        assert set(response.mask_key_shares) == set(ids) - set(survivors)
    with pytest.raises(SecAggError, match="refuses"):
        client.unmask(UnmaskRequest(tuple(ids[:2])))


def test_shamir_t_shares_reconstruct_and_t_minus_1_do_not():
    holders, threshold = list(range(9)), 4
    for _ in range(10):
        secret = secrets.token_bytes(32)
        shares = shamir_share(secret, holders, threshold)

        for subset in itertools.islice(itertools.combinations(holders, threshold), 0, None, 13):
            rebuilt = shamir_reconstruct({h: shares[h] for h in subset}, threshold)
            assert rebuilt.to_bytes(32, "big") == secret
        too_few = {h: shares[h] for h in holders[:threshold - 1]}
        with pytest.raises(SecAggError, match="only 3 shares"):
            shamir_reconstruct(too_few, threshold)
        # Interpolating t − 1 points (a lower-degree guess) misses the secret: the shares alone don't pin it down.
        assert shamir_reconstruct(too_few, threshold - 1).to_bytes(66, "big")[-32:] != secret


def test_shamir_shares_are_points_on_one_polynomial_by_hand():
    """t = 2: the shares at x = 1, 2 (holders 0, 1) determine the line through them; f(0) = 2·f(1) − f(2)."""
    secret = secrets.token_bytes(32)
    shares = shamir_share(secret, [0, 1, 2], threshold=2)
    prime = 2**521 - 1

    assert (2 * shares[0] - shares[1]) % prime == int.from_bytes(secret, "big")
    assert (shares[2] - shares[1]) % prime == (shares[1] - shares[0]) % prime  # equally spaced on a line


def test_secagg_plus_neighbours_give_the_same_sum_with_dropouts():
    updates, weights = make_round(20, 1_000, seed=9)
    ids = list(updates)
    config = SecAggConfig(neighbours=4)  # t = ceil(0.5 · 5) = 3 in each neighbourhood

    result = secure_aggregate(updates, weights, config, drop_after_sharing={ids[3]}, drop_after_masking={ids[11]})

    arrived = [u for u in ids if u != ids[3]]
    assert result.threshold == 3
    assert np.max(np.abs(result.weighted_sum - numpy_weighted_sum(updates, weights, arrived))) <= 20 * 2.0**-25


def test_secagg_plus_graph_is_k_regular_and_symmetric_and_depends_on_the_seed():
    ids = list(range(0, 60, 3))

    graph = neighbourhoods(ids, 6, b"\x01" * 16)

    assert all(len(graph[u]) == 6 and u not in graph[u] for u in ids)
    assert all(u in graph[v] for u in ids for v in graph[u])
    assert graph != neighbourhoods(ids, 6, b"\x02" * 16)
    assert neighbourhoods(ids, 0, b"") == {u: frozenset(ids) - {u} for u in ids}


def test_stats_are_positive_and_bytes_grow_as_n_squared_full_and_n_k_with_neighbours():
    def stats(num_clients: int, neighbours: int):
        updates, weights = make_round(num_clients, 500, seed=num_clients)
        return secure_aggregate(updates, weights, SecAggConfig(neighbours=neighbours)).stats

    full_5, full_10, plus_10, plus_20 = stats(5, 0), stats(10, 0), stats(10, 4), stats(20, 4)

    for s in (full_5, full_10, plus_10, plus_20):
        assert min(s.bytes_keys, s.bytes_shares, s.bytes_masked, s.bytes_unmasking) > 0
        assert min(s.crypto_seconds, s.mask_seconds, s.server_seconds, s.slowest_client_seconds) > 0
    assert full_10.bytes_shares / full_5.bytes_shares == pytest.approx(10 * 9 / (5 * 4))  # n(n−1) ciphertexts
    assert plus_20.bytes_shares / plus_10.bytes_shares == pytest.approx(2.0)  # n·k ciphertexts
    assert full_10.bytes_masked == plus_10.bytes_masked == 10 * (4 + 8 * 501)  # id + (P+1) uint64
    assert plus_20.bytes_masked == 2 * plus_10.bytes_masked


def test_32_bit_modulus_halves_the_masked_bytes_and_still_sums_exactly():
    updates, weights = make_round(6, 300, seed=10)
    weights = {u: 1.0 for u in updates}
    config = SecAggConfig(modulus_bits=32, fractional_bits=16, clip_range=16.0)

    result = secure_aggregate(updates, weights, config)

    error = np.max(np.abs(result.weighted_sum - numpy_weighted_sum(updates, weights, updates)))
    assert error <= quantization_bound(6, config)
    assert result.stats.bytes_masked == 6 * (4 + 4 * 301)


def test_bad_inputs_are_value_errors_naming_the_numbers():
    updates, weights = make_round(4, 10, seed=11)

    with pytest.raises(ValueError, match=r"overflow: 4 clients"):
        secure_aggregate(updates, weights, SecAggConfig(modulus_bits=32, fractional_bits=24, clip_range=100.0))
    with pytest.raises(ValueError, match="clip_range 1.0"):
        secure_aggregate(updates, weights, SecAggConfig(clip_range=1.0))
    with pytest.raises(ValueError, match="finite"):
        secure_aggregate({**updates, 0: np.full(10, np.nan)}, {**weights, 0: 1.0})
    with pytest.raises(ValueError, match="one weight per update"):
        secure_aggregate(updates, dict(list(weights.items())[1:]))
    with pytest.raises(ValueError, match="even"):
        SecAggConfig(neighbours=3)
