"""Runs watched to their end as the page watches them are never seen `interrupted`: 3 consecutive short runs,
each in a real worker process, polled like the Live fragment (`bench.watch_runs`; `python -m bench.watch_runs`
runs 20, longer than a unit test should take on a shared machine)."""

from __future__ import annotations

from bench.watch_runs import watch_runs
from database import ExperimentStore


def test_consecutive_short_runs_are_never_seen_interrupted(tmp_path):
    store = ExperimentStore(f"sqlite:///{tmp_path / 'experiments.db'}")

    watched = watch_runs(store, 3)

    assert [w.statuses for w in watched if "interrupted" in w.statuses] == []
    assert [w.statuses[-1] for w in watched] == ["completed"] * 3
    assert all(w.polls >= 2 for w in watched)  # each was seen before its end, not only after
    assert [store.get_experiment(w.experiment_id).rounds_done for w in watched] == [2, 2, 2]
