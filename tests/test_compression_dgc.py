"""Deep Gradient Compression's additions to top-k (Lin et al. 2018): the density warm-up and momentum
correction with momentum factor masking, against a numpy transcription of the paper's algorithm; the
per-client memory through a checkpoint and through a Flower node's per-round state; config checks."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from engine.compression import Compressor, compressed_bytes, make_compressor, outgoing_update
from experiment_config import ExperimentConfig
from federated_learning import FederatedRun
from model import flatten, get_parameters


def dgc_reference(updates: list[np.ndarray], *, fraction: float, momentum: float) -> list[np.ndarray]:
    """DGC Algorithm 1 per client (its gradient = our update), numpy: u ← m·u + g; v ← v + u; send the
    k largest |v|; zero v and u where sent. m = 0 is plain error feedback. Returns what was sent."""
    size = updates[0].size
    k = math.ceil(fraction * size)
    velocity, accumulated, sent = np.zeros(size), np.zeros(size), []
    for update in updates:
        velocity = momentum * velocity + update
        accumulated = accumulated + velocity
        chosen = np.argsort(-np.abs(accumulated), kind="stable")[:k]
        out = np.zeros(size)
        out[chosen] = accumulated[chosen]
        sent.append(out)
        accumulated[chosen] = 0.0
        velocity[chosen] = 0.0
    return sent


def random_updates(rounds: int, size: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    # A steady direction plus noise, as successive local updates look; float32-exact values.
    drift = rng.normal(size=size)
    return [(0.3 * drift + rng.normal(size=size)).astype(np.float32).astype(np.float64) for _ in range(rounds)]


def generator() -> torch.Generator:
    return torch.Generator().manual_seed(0)


@pytest.mark.parametrize("momentum", [0.0, 0.5, 0.9])
def test_momentum_correction_matches_the_papers_algorithm(momentum):
    updates = random_updates(rounds=6, size=400, seed=1)
    expected = dgc_reference(updates, fraction=0.05, momentum=momentum)
    compressor = Compressor("topk", fraction=0.05, momentum=momentum)

    for update, want in zip(updates, expected, strict=True):
        got, _ = compressor.compress(7, torch.tensor(update, dtype=torch.float32), generator())
        np.testing.assert_allclose(got.numpy(), want, rtol=1e-5, atol=1e-5)


def test_momentum_changes_what_is_sent_and_masks_the_velocity_where_sent():
    updates = random_updates(rounds=3, size=200, seed=2)
    plain, corrected = Compressor("topk", fraction=0.1), Compressor("topk", fraction=0.1, momentum=0.9)
    for update in updates:
        sent_plain, _ = plain.compress(0, torch.tensor(update, dtype=torch.float32), generator())
        sent, _ = corrected.compress(0, torch.tensor(update, dtype=torch.float32), generator())
    memory = corrected.state_dict()[0]

    assert memory.shape == (2, 200) and plain.state_dict()[0].shape == (200,)
    assert not torch.equal(sent, sent_plain)
    where_sent = sent != 0
    assert torch.all(memory[0][where_sent] == 0) and torch.all(memory[1][where_sent] == 0)
    assert corrected.residual_norm(0) == pytest.approx(float(memory[0].norm()))


def test_warm_up_ramps_the_density_exponentially_then_holds_the_fraction():
    compressor = Compressor("topk", fraction=0.01, warmup_rounds=3)

    densities = [compressor.fraction_at(r) for r in (1, 2, 3, 4, 50)]

    assert densities == pytest.approx([0.01**0.25, 0.1, 0.01**0.75, 0.01, 0.01])
    assert compressor.fraction_at(None) == 0.01
    assert Compressor("topk", fraction=0.01).fraction_at(1) == 0.01  # no warm-up


def test_warm_up_sends_and_bills_the_denser_k_of_its_round():
    update = torch.tensor(random_updates(rounds=1, size=1_000, seed=3)[0], dtype=torch.float32)
    config = ExperimentConfig().replace("communication", compression="topk", topk_fraction=0.01,
                                        topk_warmup_rounds=3)  # fmt: skip

    sent = {}
    for round_number in (1, 2, 4):
        compressor = make_compressor(config)
        received, num_bytes = outgoing_update(config, compressor, update, client=0, round_number=round_number,
                                              malicious=False)  # fmt: skip
        sent[round_number] = (int((received != 0).sum()), num_bytes)

    assert sent[1] == (317, 317 * 8)  # ceil(0.01**0.25 · 1000) = ceil(316.2)
    assert sent[2] == (100, compressed_bytes(1_000, "topk", fraction=0.1))
    assert sent[4] == (10, 10 * 8)


def test_a_node_rebuilding_its_compressor_each_round_from_kept_memory_sends_the_same():
    """What a Flower node does (`client_app._upload`): a new compressor per round, loaded with the
    memory it kept after the last round; it must send what one long-lived compressor sends."""
    config = ExperimentConfig().replace("communication", compression="topk", topk_fraction=0.05,
                                        topk_momentum=0.7, topk_warmup_rounds=2)  # fmt: skip
    updates = [torch.tensor(u, dtype=torch.float32) for u in random_updates(rounds=5, size=300, seed=4)]
    long_lived, kept = make_compressor(config), None
    for round_number, update in enumerate(updates, start=1):
        want, want_bytes = outgoing_update(config, long_lived, update, client=3, round_number=round_number,
                                           malicious=False)  # fmt: skip
        node = make_compressor(config)
        if kept is not None:
            node.load_state_dict({3: kept})
        got, got_bytes = outgoing_update(config, node, update, client=3, round_number=round_number, malicious=False)
        kept = node.state_dict()[3].clone()
        assert torch.equal(got, want) and got_bytes == want_bytes


def test_a_run_with_momentum_correction_and_warm_up_resumes_exactly(mnist):
    config = ExperimentConfig.from_dict({
        "data": {"max_train_examples": 600, "max_test_examples": 300},
        "model": {"name": "mlp"},
        "federation": {"num_clients": 4, "clients_per_round": 2, "rounds": 3, "batch_size": 25, "learning_rate": 0.1},
        "privacy": {"audit_examples": 0},
        "communication": {"compression": "topk", "topk_fraction": 0.05, "topk_momentum": 0.5, "topk_warmup_rounds": 2},
        "system": {"num_workers": 1, "seed": 3},
    })  # fmt: skip
    straight = FederatedRun(config, data=mnist)
    expected = list(straight.rounds())
    first = FederatedRun(config, data=mnist)
    rounds = first.rounds()
    next(rounds)
    saved = first.checkpoint()
    rounds.close()

    resumed = FederatedRun(config, data=mnist)
    assert resumed.restore(saved) == 1
    after = list(resumed.rounds())

    assert [(r.accuracy, r.bytes_up) for r in after] == [(r.accuracy, r.bytes_up) for r in expected[1:]]
    assert torch.equal(flatten(get_parameters(resumed.model)), flatten(get_parameters(straight.model)))
    assert expected[0].bytes_up > expected[2].bytes_up  # round 1 was denser (warm-up)


@pytest.mark.parametrize(("communication", "says"), [
    ({"topk_momentum": 0.5, "error_feedback": False}, "communication.topk_momentum .* needs communication.error_feedback"),
    ({"topk_momentum": 1.0}, "communication.topk_momentum"),
    ({"topk_momentum": -0.1}, "communication.topk_momentum"),
    ({"topk_warmup_rounds": -1}, "communication.topk_warmup_rounds"),
    ({"topk_warmup_rounds": 1.5}, "communication.topk_warmup_rounds"),
])  # fmt: skip
def test_bad_dgc_settings_are_refused_naming_the_field(communication, says):
    with pytest.raises(ValueError, match=says):
        ExperimentConfig.from_dict({"communication": {"compression": "topk", **communication}})


def test_the_compressor_refuses_bad_dgc_arguments_and_bad_memory():
    with pytest.raises(ValueError, match="momentum must be in"):
        Compressor("topk", momentum=1.0)
    with pytest.raises(ValueError, match="needs error feedback"):
        Compressor("topk", momentum=0.5, error_feedback=False)
    with pytest.raises(ValueError, match="warm-up rounds"):
        Compressor("topk", warmup_rounds=-2)
    with pytest.raises(ValueError, match=r"\(P,\) or \(2, P\)"):
        Compressor("topk", momentum=0.5).load_state_dict({0: torch.zeros(3, 10)})
    compressor = Compressor("topk", momentum=0.5)
    compressor.load_state_dict({0: torch.zeros(2, 10)})
    with pytest.raises(ValueError, match="uploaded 12 parameters but its residual has 10"):
        compressor.compress(0, torch.ones(12), generator())
