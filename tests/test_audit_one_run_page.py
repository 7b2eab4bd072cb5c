"""The one-run audit on the page: the empirical ε beside the accountant's, in the run's privacy row."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import REPO
from streamlit.testing.v1 import AppTest

from database import ExperimentStore
from experiment_config import ExperimentConfig
from privacy.one_run_audit import one_run_audit

SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ExperimentStore:
    url = f"sqlite:///{tmp_path / 'experiments.db'}"
    monkeypatch.setenv("DATABASE_URL", url)
    monkeypatch.setenv("FPL_DATA_DIR", str(SHARED_DATA))
    return ExperimentStore(url)


def finished_run(store: ExperimentStore, mode: str, epsilon: float, audit: dict) -> int:
    """A completed two-round run of `mode` ending at `epsilon`, with `audit` stored as the audit."""
    config = ExperimentConfig.from_dict({
        "model": {"name": "mlp"}, "federation": {"num_clients": 2, "clients_per_round": 2, "rounds": 2},
        "privacy": {"mode": mode, "audit": "one_run", "audit_canaries": 100},
    })  # fmt: skip
    experiment_id = store.create_experiment(config.to_dict())
    store.mark_running(experiment_id)
    for number in (1, 2):
        store.record_round(experiment_id, {
            "round": number, "accuracy": 0.5, "loss": 1.0, "seconds": 1.0, "bytes_up": 1, "bytes_down": 1,
            "epsilon": epsilon * number / 2, "delta": 1e-5 if epsilon else 0.0,
            "clients": [{"id": c, "num_examples": 30, "steps": 3, "loss": 1.0} for c in range(2)],
        })  # fmt: skip
    store.set_audit(experiment_id, audit)
    store.finish(experiment_id, "completed", final={"accuracy": 0.5, "epsilon": epsilon})
    return experiment_id


def page() -> AppTest:
    app = AppTest.from_file(str(REPO / "main.py"), default_timeout=30)
    app.session_state["view"] = ":material/monitoring: Live"  # the Live tab (app_pages)
    return app.run()


@pytest.mark.parametrize("mode, epsilon, beside", [("local", 2.5, "accountant ε 2.500"), ("none", 0.0, "no formal ε")])
def test_the_empirical_epsilon_sits_beside_the_accountants(store, mode, epsilon, beside):
    scores = [1.0] * 40 + [0.0] * 60  # the 40 included canaries score highest: a leaky run
    audit = one_run_audit(scores, [True] * 40 + [False] * 60, delta=1e-5)
    finished_run(store, mode, epsilon, audit)

    app = page()

    metrics = {metric.label: metric for metric in app.metric}
    shown = metrics["Empirical ε (95%)"]
    assert shown.value == f"{audit['epsilon_lower_bound']:.3f}" and audit["epsilon_lower_bound"] > 0
    assert shown.delta == beside
    assert f"{audit['correct']} of {audit['guesses']} guesses" in shown.help
    assert not [metric for metric in app.metric if metric.label.startswith("Attack")]
