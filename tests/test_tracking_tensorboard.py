"""tracking/tensorboard_export.py: `cli.py export ID --tensorboard DIR` writes event files that
TensorBoard's own reader (EventAccumulator) reads back as the stored rounds, once, however often
the run is exported."""

from __future__ import annotations

from pathlib import Path

import pytest

import cli
from database import ExperimentStore
from experiment_config import ExperimentConfig
from runs import service
from runs.service import SilentReporter
from runs.workers import StopSignals

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def stored_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, int]:
    """One finished tiny run (MNIST MLP, 3 clients, 2 rounds), not logged anywhere while it ran."""
    db_url = f"sqlite:///{tmp_path_factory.mktemp('tb') / 'experiments.db'}"
    config = ExperimentConfig.from_dict({
        "data": {"max_train_examples": 600, "max_test_examples": 300}, "model": {"name": "mlp"},
        "federation": {"num_clients": 3, "clients_per_round": 3, "rounds": 2, "batch_size": 20},
        "privacy": {"audit_examples": 0}, "system": {"num_workers": 1, "seed": 4},
    })  # fmt: skip
    store = ExperimentStore(db_url)
    experiment_id = service.create(store, config)
    outcome = service.execute(
        store, experiment_id, config, reporter=SilentReporter(), signals=StopSignals(handle=False)
    )
    assert outcome.status == "completed"
    return db_url, experiment_id


def scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar series in `folder`, read by TensorBoard's own EventAccumulator."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(folder), size_guidance={"scalars": 0})
    accumulator.Reload()
    return {tag: [(e.step, e.value) for e in accumulator.Scalars(tag)] for tag in accumulator.Tags()["scalars"]}


def test_exported_scalars_are_the_stored_rounds_at_their_steps(stored_run, tmp_path, capsys):
    db_url, experiment_id = stored_run
    rows = ExperimentStore(db_url).round_rows(experiment_id)

    code = cli.main(["export", str(experiment_id), "--tensorboard", str(tmp_path / "logs"), "--db", db_url])

    assert code == cli.EXIT_OK
    folder = tmp_path / "logs" / f"experiment-{experiment_id}"
    assert f"TensorBoard event files in {folder}" in capsys.readouterr().out
    series = scalars(folder)
    for name in ("accuracy", "loss", "epsilon", "delta", "bytes_up", "bytes_down", "seconds"):
        # TensorBoard keeps float32: compare at its precision.
        assert series[name] == [(r["round"], pytest.approx(r[name], rel=1e-6, abs=1e-12)) for r in rows], name
    client_one = [(r["round"], c["loss"]) for r in rows for c in r["clients"] if c["id"] == 1]
    assert series["client/1/loss"] == [(step, pytest.approx(value, rel=1e-6)) for step, value in client_one]


def test_exporting_again_replaces_the_runs_events_and_leaves_other_files(stored_run, tmp_path):
    db_url, experiment_id = stored_run
    folder = tmp_path / f"experiment-{experiment_id}"
    folder.mkdir()
    (folder / "notes.txt").write_text("mine")

    for _ in range(2):
        assert cli.main(["export", str(experiment_id), "--tensorboard", str(tmp_path), "--db", db_url]) == cli.EXIT_OK

    assert len(list(folder.glob("events.out.tfevents.*"))) == 1
    assert [step for step, _ in scalars(folder)["accuracy"]] == [1, 2]
    assert (folder / "notes.txt").read_text() == "mine"


def test_a_folder_that_cannot_be_written_is_one_line_and_exit_1(stored_run, tmp_path, capsys):
    db_url, experiment_id = stored_run
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")

    code = cli.main(["export", str(experiment_id), "--tensorboard", str(blocker), "--db", db_url, "--json"])

    assert code == cli.EXIT_FAILED
    captured = capsys.readouterr()
    assert captured.err.startswith("error: cannot write TensorBoard logs to") and captured.err.count("\n") == 1
    assert captured.out.strip() == f'{{"experiment_id": {experiment_id}}}'  # nothing exported
