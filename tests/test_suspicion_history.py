"""engine.suspicion's history over rounds: the relative direction ρ, its running mean h, the layer-wise
cosine, all against hand-computed cases; and in the round loop: a clean non-IID run flags few clients,
and a resumed run carries h bit for bit."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch

from engine.suspicion import (
    FLAG_THRESHOLD,
    leading_sizes,
    record_directions,
    relative_directions,
    remember,
    score_updates,
)  # fmt: skip
from experiment_config import ExperimentConfig
from federated_learning import FederatedRun
from model import flatten, get_parameters

# -- the parts, by hand ----------------------------------------------------------------------


def test_relative_directions_divide_by_the_median_cosine_and_clip():
    # median of 0.5, 0.4, 0.2, −0.1 is (0.2 + 0.4)/2 = 0.3: 5/3 and 4/3 clip to 1, 0.2/0.3, −1/3 clips to 0
    assert relative_directions([0.5, 0.4, 0.2, -0.1]) == pytest.approx([1.0, 1.0, 2 / 3, 0.0])
    assert relative_directions([0.2, -0.3, -0.1]) == [1.0, 1.0, 1.0]  # median −0.1: no common direction


def test_the_running_mean_halves_each_rounds_weight():
    h = remember(None, 0.8)  # first time scored: h = ρ
    assert h == 0.8
    h = remember(h, 0.2)  # ½·0.8 + ½·0.2
    assert h == pytest.approx(0.5)
    assert remember(h, 0.4) == pytest.approx(0.45)
    assert remember(0.5, 0.4, decay=0.75) == pytest.approx(0.75 * 0.5 + 0.25 * 0.4)


def test_the_layer_wise_cosine_keeps_a_large_last_layer_from_hiding_the_first():
    """Layers of 2 and 1 values; the third client agrees on the big-valued last layer only."""
    updates = np.array([[1.0, 0.0, 10.0], [1.0, 0.0, 10.0], [0.0, 1.0, 10.0]])  # centre (1, 0 | 10)
    flat = score_updates(updates, [0, 1, 2], history={})
    layered = score_updates(updates, [0, 1, 2], history={}, segments=[2, 1])
    # flat: ⟨(0, 1, 10), (1, 0, 10)⟩ / (√101·√101) = 100/101; the others' cosines are 1, so ρ = 100/101
    assert flat[2].direction == pytest.approx(100 / 101)
    # per layer: cos 0 on the first (2 values), cos 1 on the last (1 value) → (2·0 + 1·1)/3; median 1
    assert layered[2].direction == pytest.approx(1 / 3) and layered[0].direction == pytest.approx(1.0)
    assert layered[2].flagged and layered[2].score == pytest.approx(2 / 3)  # 1 − h = 1 − 1/3
    still = np.array([[1.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])  # the last layer does not move: left out
    assert score_updates(still, [0, 1, 2], history={}, segments=[2, 1])[2].direction == pytest.approx(0.0)


def test_segments_must_cover_the_update_and_leading_sizes_find_the_body():
    with pytest.raises(ValueError, match="segments"):
        score_updates(np.ones((3, 4)), [0, 1, 2], segments=[2, 1])
    with pytest.raises(ValueError, match="segments"):
        score_updates(np.ones((3, 4)), [0, 1, 2], segments=[4, 0])
    assert leading_sizes([4, 2, 3, 1], 6) == [4, 2]  # FedPer: the body without the head's 3 + 1
    assert leading_sizes([4, 2, 3, 1], 10) == [4, 2, 3, 1]
    with pytest.raises(ValueError, match="cover exactly 5"):
        leading_sizes([4, 2, 3, 1], 5)


def test_record_directions_returns_a_new_history_and_keeps_who_was_not_scored():
    before = {1: 0.9, 2: 0.8}
    updates = np.array([[1.0, 0.0], [1.0, 0.1], [1.0, -0.1]])
    after = record_directions(before, score_updates(updates, [1, 3, 4], history=before))
    assert before == {1: 0.9, 2: 0.8}
    assert set(after) == {1, 2, 3, 4} and after[2] == 0.8
    assert after[1] == pytest.approx(0.5 * 0.9 + 0.5 * 1.0)
    assert record_directions(before, score_updates(updates, [1, 3, 4])) == before  # no history: nothing to keep


# -- a consistent mild outlier against a one-off ------------------------------------------------


def _round(rho: float) -> np.ndarray:
    """Four honest non-IID updates (1, 0, ±1): cosine 1/√2 to the centre (1, 0, 0), distance 1, norm √2;
    and a fifth of norm √2 whose cosine is ρ/√2, so its relative direction is exactly ρ."""
    honest = [[1.0, 0.0, 1.0], [1.0, 0.0, -1.0], [1.0, 0.0, 1.0], [1.0, 0.0, -1.0]]
    return np.array([*honest, [rho, math.sqrt(2.0 - rho * rho), 0.0]])


def _round_score(rho: float) -> float:
    """The fifth client's score without history: D = √(3 − 2ρ) (the others' distances are 1), cosine
    ρ/√2, norm z 0 → (clip((D − 1)/2) + (1 − cos)/2 + 0)/3."""
    return ((math.sqrt(3 - 2 * rho) - 1) / 2 + (1 - rho / math.sqrt(2)) / 2) / 3


def test_a_client_that_keeps_pointing_elsewhere_is_flagged_when_its_history_crosses_half():
    history: dict[int, float] = {}
    expected_h, flags, scores = [0.6, 0.55, 0.475], [], []
    for rho, h in zip([0.6, 0.5, 0.4], expected_h, strict=True):
        alone = score_updates(_round(rho), [0, 1, 2, 3, 4])[4]
        assert alone.score == pytest.approx(_round_score(rho)) and not alone.flagged  # each round alone: missed
        mine = score_updates(_round(rho), [0, 1, 2, 3, 4], history=history)
        history = record_directions(history, mine)
        assert mine[4].direction == pytest.approx(rho) and mine[4].history == pytest.approx(h)
        assert all(s.direction == pytest.approx(1.0) and not s.flagged for s in mine[:4])
        flags.append(mine[4].flagged)
        scores.append(mine[4].score)
    assert flags == [False, False, True]  # 1 − 0.475 = 0.525 ≥ ½ only in round 3
    assert scores == pytest.approx([max(_round_score(0.6), 0.4), max(_round_score(0.5), 0.45), 0.525])
    # A one-off: the same last round after rounds along the centre (h = 1) leaves h = 0.7, not flagged.
    once = score_updates(_round(0.4), [0, 1, 2, 3, 4], history={4: 1.0})[4]
    assert once.history == pytest.approx(0.7) and not once.flagged
    assert once.score == pytest.approx(max(_round_score(0.4), 0.3)) and once.score < FLAG_THRESHOLD


def test_scores_with_history_stay_in_the_unit_interval():
    rng = np.random.default_rng(1)
    history: dict[int, float] = {}
    for _ in range(4):
        updates = rng.normal(size=(8, 30)) * rng.uniform(0.1, 10, size=(8, 1))
        scores = score_updates(updates, list(range(8)), history=history, segments=[20, 10])
        history = record_directions(history, scores)
        assert all(0.0 <= s.score <= 1.0 and 0.0 <= s.history <= 1.0 for s in scores)


# -- in the round loop ------------------------------------------------------------------------


def non_iid_config(attack: str = "", rounds: int = 3) -> ExperimentConfig:
    return ExperimentConfig.from_dict({
        "data": {"max_train_examples": 3_000, "max_test_examples": 500, "partition": "dirichlet",
                 "dirichlet_alpha": 0.5},
        "model": {"name": "mlp"},
        "federation": {"num_clients": 10, "clients_per_round": 10, "rounds": rounds, "batch_size": 20,
                       "learning_rate": 0.05},
        "attack": {"fraction": 0.3 if attack else 0.0, "behaviour": attack or "sign_flip"},
        "system": {"num_workers": 1, "seed": 0},
    })  # fmt: skip


def test_a_clean_non_iid_run_flags_few_clients_and_no_history_flags_anyone(mnist):
    run = FederatedRun(non_iid_config(), data=mnist)
    results = list(run.rounds())
    scored = [c for r in results for c in r.clients if c.suspicion is not None]
    assert len(scored) == 30 and not any(c.malicious for c in scored)
    assert sum(c.flagged for c in scored) <= 2  # measured 0 of 30 (the round rule alone: see the bench)
    # Every honest client's running direction stays above ½ (its history part below the threshold).
    assert sorted(run.state.directions) == list(range(10))
    assert min(run.state.directions.values()) > 1 - FLAG_THRESHOLD


def test_a_resumed_run_carries_the_directions_bit_for_bit(mnist):
    config = non_iid_config("label_flip")
    straight = FederatedRun(config, data=mnist)
    expected = list(straight.rounds())
    first = FederatedRun(config, data=mnist)
    rounds = first.rounds()
    before = next(rounds)
    saved = first.checkpoint()
    rounds.close()
    resumed = FederatedRun(config, data=mnist)
    assert resumed.restore(saved) == 1 and resumed.state.directions == first.state.directions
    after = list(resumed.rounds())
    for got, want in zip([before, *after], expected, strict=True):
        assert [(c.id, c.suspicion, c.flagged, c.status) for c in got.clients] == [
            (c.id, c.suspicion, c.flagged, c.status) for c in want.clients]  # fmt: skip
        assert got.accuracy == want.accuracy
    assert resumed.state.directions == straight.state.directions  # float for float
    assert torch.equal(flatten(get_parameters(resumed.model)), flatten(get_parameters(straight.model)))
    # Without the stored directions (a checkpoint from before them) round 2 would score otherwise.
    old = torch.load(io.BytesIO(saved), weights_only=True)
    del old["directions"]
    buffer = io.BytesIO()
    torch.save(old, buffer)
    older = FederatedRun(config, data=mnist)
    assert older.restore(buffer.getvalue()) == 1 and older.state.directions == {}
    second = next(older.rounds())
    assert [c.suspicion for c in second.clients] != [c.suspicion for c in expected[1].clients]
