"""Progress inside a round: the row the worker writes (`ExperimentStore.set_progress`) as the live view shows it,
`Round 3/10 · 4 of 10 clients trained · 120/300 batches · about 1 min left`, and gone once the round is recorded.
The rows are written with the store directly, as the worker will."""

from __future__ import annotations

import pytest
import test_app
from test_app import fabricate, page, progress_text

from app_pages.round_progress import about, current_progress, round_progress_text, run_fraction, seconds_left

store = test_app.store  # the fixture: a temporary SQLite database the page opens

ROW = {"round": 3, "clients_done": 4, "clients_total": 10, "batches_done": 120, "batches_total": 300, "seconds": 41.2}


def test_the_text_and_the_time_left_follow_the_rate_so_far():
    # 120 batches in 41.2 s: 180 left at 41.2 / 120 s each = 61.8 s
    assert seconds_left(ROW) == pytest.approx(180 * 41.2 / 120)
    assert round_progress_text(ROW, 10) == "Round 3/10 · 4 of 10 clients trained · 120/300 batches · about 1 min left"
    assert about(61.8) == "about 1 min" and about(29.6) == "about 30 s" and about(3_900) == "about 1 h 05 min"
    # nothing done yet: no rate, so no estimate; without batch counts the clients give the rate
    start = {**ROW, "batches_done": 0, "clients_done": 0}
    assert round_progress_text(start, 10) == "Round 3/10 · 0 of 10 clients trained · 0/300 batches"
    by_clients = {"round": 1, "clients_done": 2, "clients_total": 8, "seconds": 10.0}
    assert seconds_left(by_clients) == pytest.approx(30.0)
    assert round_progress_text(by_clients, 5) == "Round 1/5 · 2 of 8 clients trained · about 30 s left"


def test_the_live_view_shows_the_round_in_progress_then_whole_rounds_again(store):
    experiment_id = fabricate(store, rounds=2, status="running")  # 2 of 3 rounds recorded
    store.set_progress(experiment_id, {**ROW, "round": 3})
    experiment = store.get_experiment(experiment_id)
    assert experiment.progress == {**ROW, "round": 3}
    assert current_progress(experiment) == {**ROW, "round": 3}
    assert run_fraction(experiment, 3) == pytest.approx((2 + 120 / 300) / 3)

    app = page()
    assert progress_text(app) == ["Round 3/3 · 4 of 10 clients trained · 120/300 batches · about 1 min left"]
    assert app.get("progress")[0].proto.value == int(100 * (2 + 120 / 300) / 3)

    store.record_round(experiment_id, {
        "round": 3, "accuracy": 0.95, "loss": 0.5, "seconds": 1.0, "eval_seconds": 0.5, "bytes_up": 1, "bytes_down": 1,
        "clients": [{"id": 0, "num_examples": 30, "steps": 3, "loss": 0.4}],
    })  # fmt: skip
    assert current_progress(store.get_experiment(experiment_id)) is None  # its round is recorded: stale
    app.run()
    assert progress_text(app) == ["Round 3/3 · running · ETA 0.0 s"]


def test_a_progress_row_of_a_run_that_is_not_running_is_not_shown(store):
    experiment_id = fabricate(store, rounds=2, status="stopped")
    store.set_progress(experiment_id, {**ROW, "round": 3})
    assert current_progress(store.get_experiment(experiment_id)) is None
    assert progress_text(page())[0].startswith("Round 2/3 · stopped")
