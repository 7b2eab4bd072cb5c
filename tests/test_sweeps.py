"""Sweeps (`runs.sweeps`, `cli.py sweep`): grids and Optuna studies stored as ordinary experiments, refused
before anything is stored, continued after a kill -9, at most N workers at once, Optuna's tables beside ours."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import optuna
import pytest
from alembic import command
from alembic.script import ScriptDirectory
from conftest import REPO
from optuna.trial import TrialState
from sqlalchemy import create_engine, inspect

from database import ExperimentStore
from experiment_config import ExperimentConfig
from migrations import alembic_config, migration_lock
from runs import studies, sweeps

TINY = {
    "model.name": "mlp", "data.max_train_examples": "300", "data.max_test_examples": "200",
    "federation.num_clients": "2", "federation.clients_per_round": "2", "federation.rounds": "1",
    "system.num_workers": "1", "privacy.audit_examples": "0",
}  # fmt: skip
TINY_ARGS = [arg for key, value in TINY.items() for arg in ("--set", f"{key}={value}")]
GRID = ["--grid", "federation.local_epochs=1,2", "--grid", "federation.learning_rate=0.01,0.05,0.1"]
SEARCH = ["--search", "federation.learning_rate=log:1e-3:1"]


def cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(REPO / "cli.py"), *args],
        check=False,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
    )


def tiny_base() -> ExperimentConfig:
    return ExperimentConfig().with_overrides([f"{key}={value}" for key, value in TINY.items()])


# -- parsing and planning ------------------------------------------------------------------------------


def test_a_grid_is_every_combination_each_config_as_set_would_build_it():
    base = tiny_base()
    plans = sweeps.plan_grid(base, sweeps.parse_grid(GRID[1::2]))
    assert [plan.values for plan in plans] == [
        {"federation.local_epochs": epochs, "federation.learning_rate": rate}
        for epochs in (1, 2) for rate in (0.01, 0.05, 0.1)
    ]  # fmt: skip
    expected = base.with_overrides(["federation.local_epochs=2", "federation.learning_rate=0.05"])
    assert plans[4].config == expected and plans[4].number == 4


@pytest.mark.parametrize(("texts", "message"), [
    (["federation.learning_rate"], "--grid expects section.key=value1,value2"),
    (["federation.learning_rate=0.1,,0.2"], "an empty value"),
    (["federation.learning_rate=0.1,0.1"], "a value given twice"),
    (["federation.learning_rate=0.1", "federation.learning_rate=0.2"], "given twice"),
    (["fed.learning_rate=0.1"], "unknown config section"),
])  # fmt: skip
def test_bad_grid_syntax_is_one_clear_line(texts, message):
    with pytest.raises(ValueError, match=message):
        sweeps.parse_grid(texts)


def test_a_grid_point_the_config_rejects_is_named():
    grid = sweeps.parse_grid(["federation.learning_rate=0.1,-1", "federation.nonsense=1"])
    with pytest.raises(ValueError, match="unknown key federation.nonsense"):
        sweeps.plan_grid(tiny_base(), grid)
    with pytest.raises(ValueError, match=r"federation.learning_rate=-1: .*learning_rate"):
        sweeps.plan_grid(tiny_base(), sweeps.parse_grid(["federation.learning_rate=0.1,-1"]))


def test_search_ranges_parse_and_the_config_checks_their_ends():
    dimensions = studies.parse_search([
        "federation.learning_rate=log:1e-3:1", "federation.local_epochs=int:1:3", "model.name=choice:mlp,cnn",
    ])  # fmt: skip
    assert dimensions[0] == studies.SearchDimension("federation.learning_rate", "log", 1e-3, 1.0)
    assert dimensions[1].texts() == ["1", "3"] and dimensions[2].choices == ("mlp", "cnn")
    studies.check_search(tiny_base(), dimensions)
    for bad, message in [("log:0:1", "LOW > 0"), ("float:1:1", "LOW < HIGH"), ("int:a:2", "two int"),
                         ("grid:1:2", "unknown kind"), ("choice:", "distinct non-empty")]:  # fmt: skip
        with pytest.raises(ValueError, match=message):
            studies.parse_search([f"federation.learning_rate={bad}"])
    with pytest.raises(ValueError, match="learning_rate"):  # the config's own bound, at the range's low end
        studies.check_search(tiny_base(), studies.parse_search(["federation.learning_rate=float:-1:1"]))


def test_a_sweep_is_named_by_its_settings_unless_named():
    assert sweeps.checked_sweep("", "loss", [1, 2]) == sweeps.checked_sweep("", "loss", [1, 2])
    assert sweeps.checked_sweep("", "loss", [1, 2]).name != sweeps.checked_sweep("", "loss", [1, 3]).name
    assert sweeps.checked_sweep(" lr ", "epsilon", []).direction == "minimize"
    for name, objective in (("x" * 35, "accuracy"), ("a\nb", "accuracy"), ("ok", "f1")):
        with pytest.raises(ValueError):
            sweeps.checked_sweep(name, objective, [])


# -- the CLI ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("args", [
    [*GRID, "--grid", "federation.nonsense=1,2"],
    ["--grid", "federation.learning_rate=0.1,-1"],
    ["--grid", "federation.learning_rate"],
    ["--optuna", "3", "--search", "federation.learning_rate=log:0:1"],
    ["--optuna", "3"],
    [*GRID, *SEARCH],
    [*GRID, "--parallel", "0"],
])  # fmt: skip
def test_bad_sweeps_exit_2_with_one_line_and_store_nothing(tmp_path, args):
    db_file = tmp_path / "untouched.db"
    result = cli("sweep", "--db", f"sqlite:///{db_file}", *TINY_ARGS, *args)
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("error: ")
    assert not db_file.exists() and result.stdout == ""


def test_a_2x3_grid_runs_is_stored_and_continues_without_rerunning(db_url):
    result = cli("sweep", "--db", db_url, *TINY_ARGS, *GRID, "--json")
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    trials, summary = lines[:-1], lines[-1]
    assert [t["status"] for t in trials] == ["completed"] * 6 and summary["completed"] == 6
    store = ExperimentStore(db_url)
    members = sweeps.sweep_members(store.list_experiments(), summary["sweep"])
    plans = sweeps.plan_grid(tiny_base(), sweeps.parse_grid(GRID[1::2]))
    assert sorted(json.dumps(e.config, sort_keys=True) for e in members) == sorted(p.config.to_json() for p in plans)
    for e in members:  # the sweep, the objective, the values it varies
        federation = e.config["federation"]
        assert e.tags == [f"sweep:{summary['sweep']}", "objective:accuracy",
                          f"federation.local_epochs={federation['local_epochs']}",
                          f"federation.learning_rate={federation['learning_rate']}"]  # fmt: skip
    # The table is the stored runs, best accuracy first.
    table = sweeps.sweep_table(store.list_experiments(), summary["sweep"])
    assert list(table["accuracy"]) == sorted((e.final_accuracy for e in members), reverse=True)
    assert set(table.columns) >= {"federation.local_epochs", "federation.learning_rate", "loss", "epsilon"}
    # The trial equals a plain run of the same point (seeded): the sweep adds nothing to the run itself.
    point = ["--set", "federation.local_epochs=2", "--set", "federation.learning_rate=0.1"]
    plain = json.loads(cli("run", "--db", db_url, *TINY_ARGS, *point, "--json").stdout.splitlines()[-1])
    swept = next(t for t in trials if t["values"] == {"federation.local_epochs": 2, "federation.learning_rate": 0.1})
    assert plain["accuracy"] == swept["accuracy"]
    # The same command again finds every point done: nothing new is stored.
    again = cli("sweep", "--db", db_url, *TINY_ARGS, *GRID)
    assert again.returncode == 0 and again.stdout.count("already completed") == 6
    assert len(store.list_experiments()) == 7


def overlap(intervals: list[tuple[float, float]]) -> int:
    """The most intervals that hold one instant."""
    events = sorted([(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals])
    most = current = 0
    for _, step in events:
        current += step
        most = max(most, current)
    return most


def test_parallel_trials_run_in_their_own_workers_at_most_n_at_once(db_url):
    result = cli("sweep", "--db", db_url, *TINY_ARGS, "--grid", "federation.learning_rate=0.01,0.02,0.03,0.04",
                 "--parallel", "2", "--name", "two-at-once", "--json")  # fmt: skip
    assert result.returncode == 0, result.stderr
    members = sweeps.sweep_members(ExperimentStore(db_url).list_experiments(), "two-at-once")
    assert len(members) == 4 and {e.status for e in members} == {"completed"}
    assert len({e.worker_pid for e in members}) == 4  # each its own process
    assert overlap([(e.started_at.timestamp(), e.finished_at.timestamp()) for e in members]) <= 2


# -- Optuna ------------------------------------------------------------------------------------------------


def wait_for_running_trial(store: ExperimentStore, process: subprocess.Popen, completed: int) -> int:
    """The id of a running sweep experiment once `completed` have completed (polling the database)."""
    while process.poll() is None:
        experiments = store.list_experiments()
        running = [e.id for e in experiments if e.status == "running"]
        if sum(e.status == "completed" for e in experiments) >= completed and running:
            return running[0]
        time.sleep(0.05)
    raise AssertionError(f"the sweep ended first: {process.communicate()}")


def test_an_optuna_study_continues_after_kill_9_and_ends_with_8_completed_trials(db_url):
    args = ["sweep", "--db", db_url, *TINY_ARGS, "--optuna", "8", *SEARCH, "--name", "study", "--json"]
    process = subprocess.Popen([sys.executable, str(REPO / "cli.py"), *args], cwd=REPO,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    store = ExperimentStore(db_url)
    killed = wait_for_running_trial(store, process, completed=3)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    before = {e.id: e.final_accuracy for e in store.list_experiments() if e.status == "completed"}

    result = cli(*args)
    assert result.returncode == 0, result.stderr
    study = optuna.load_study(study_name="study", storage=studies.optuna_storage(store))
    complete = study.get_trials(states=(TrialState.COMPLETE,))
    failed = study.get_trials(states=(TrialState.FAIL,))
    assert len(complete) == 8 and study.direction.name == "MAXIMIZE"
    assert [t.user_attrs["experiment_id"] for t in failed] == [killed]  # told FAIL, not run again
    assert store.get_experiment(killed).status == "interrupted"
    experiments = {e.id: e for e in store.list_experiments()}
    assert set(experiments) == {t.user_attrs["experiment_id"] for t in study.trials}  # one experiment per trial
    for trial in complete:  # each value is its stored run's, and the runs from before the kill were kept
        experiment = experiments[trial.user_attrs["experiment_id"]]
        assert trial.value == experiment.final_accuracy
        assert experiment.config["federation"]["learning_rate"] == pytest.approx(
            trial.params["federation.learning_rate"]
        )
    assert before.items() <= {t.user_attrs["experiment_id"]: t.value for t in complete}.items()
    assert study.best_value == max(t.value for t in complete)


def test_a_parallel_study_killed_waits_for_its_live_workers_and_completes(db_url):
    args = ["sweep", "--db", db_url, *TINY_ARGS, "--optuna", "4", *SEARCH, "--parallel", "2", "--name", "p"]
    process = subprocess.Popen([sys.executable, str(REPO / "cli.py"), *args], cwd=REPO,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    store = ExperimentStore(db_url)
    orphan = wait_for_running_trial(store, process, completed=1)
    os.kill(process.pid, signal.SIGKILL)  # its workers run in their own sessions: they go on
    process.wait()

    result = cli(*args)
    assert result.returncode == 0, result.stderr
    study = optuna.load_study(study_name="p", storage=studies.optuna_storage(store))
    complete = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(complete) == 4
    by_experiment = {t.user_attrs.get("experiment_id"): t for t in study.trials}
    assert by_experiment[orphan].state == TrialState.COMPLETE  # adopted, not run again
    assert by_experiment[orphan].value == store.get_experiment(orphan).final_accuracy
    assert {e.status for e in store.list_experiments()} == {"completed"}
    assert len(store.list_experiments()) == len([t for t in study.trials if "experiment_id" in t.user_attrs])


def test_optuna_tables_live_beside_ours_and_our_migrations_leave_them(db_url):
    store = ExperimentStore(db_url)
    study = optuna.create_study(study_name="beside", storage=studies.optuna_storage(store), direction="minimize")
    study.tell(study.ask({"x": optuna.distributions.FloatDistribution(0, 1)}), 0.25)
    ours = {"alembic_version", "experiments", "rounds", "client_rounds", "model_weights", "checkpoints"}
    engine = create_engine(db_url)
    tables = set(inspect(engine).get_table_names())
    assert ours <= tables and {"studies", "trials", "version_info"} <= tables
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    with migration_lock(engine) as connection:  # an older schema of ours, Optuna's tables beside it
        command.downgrade(alembic_config(connection), "-1")
    ExperimentStore(db_url)  # upgrades ours again
    with engine.connect() as connection:
        assert connection.exec_driver_sql("SELECT version_num FROM alembic_version").scalars().all() == [head]
    again = optuna.load_study(study_name="beside", storage=studies.optuna_storage(ExperimentStore(db_url)))
    assert [t.value for t in again.trials] == [0.25]
    engine.dispose()


def test_the_compare_view_shows_a_sweep_as_one_group(db_url, monkeypatch):
    from streamlit.testing.v1 import AppTest

    store = ExperimentStore(db_url)
    sweep = sweeps.Sweep("grp", "loss")
    for plan, (status, loss) in zip(sweeps.plan_grid(tiny_base(), sweeps.parse_grid(GRID[1::2])),
                                    [("completed", 0.9), ("completed", 0.3), ("failed", None)] * 2):  # fmt: skip
        experiment_id = sweeps.store_trial(store, sweep, plan)
        store.finish(experiment_id, status, final={"accuracy": 0.5, "loss": loss} if loss else None)
    store.create_experiment(tiny_base().to_dict(), name="not in the sweep")
    monkeypatch.setenv("DATABASE_URL", db_url)
    app = AppTest.from_string(
        "import os\nfrom app_pages.sweep import render_sweep_group\nfrom database import ExperimentStore\n"
        "render_sweep_group(ExperimentStore(os.environ['DATABASE_URL']).list_experiments())\n",
        default_timeout=30,
    ).run()  # fmt: skip
    assert not app.exception and app.selectbox(key="compare_sweep").options == ["grp"]
    shown = app.dataframe[0].value
    assert len(shown) == 6 and list(shown["loss"][:4]) == [0.3, 0.3, 0.9, 0.9]  # lowest loss first, failed last
    assert set(shown.columns) == {"experiment", "status", "federation.local_epochs", "federation.learning_rate",
                                  "accuracy", "loss", "epsilon"}  # fmt: skip


def test_the_grid_form_refuses_a_bad_grid_and_launches_a_good_one(db_url, monkeypatch, tmp_path):
    from streamlit.testing.v1 import AppTest

    from runs import workers

    launched: list[tuple[int, ...]] = []

    class IdleWorker:
        def poll(self) -> None:
            return None

    monkeypatch.setattr(workers, "launch_worker", lambda store, *ids: launched.append(ids) or IdleWorker())
    script = tmp_path / "page.py"
    script.write_text(
        "import os\nfrom app_pages.sweep import render_grid_form\nfrom database import ExperimentStore\n"
        "from experiment_config import ExperimentConfig\n"
        f"base = ExperimentConfig().with_overrides({[f'{k}={v}' for k, v in TINY.items()]!r})\n"
        "render_grid_form(ExperimentStore(os.environ['DATABASE_URL']), base)\n"
    )
    monkeypatch.setenv("DATABASE_URL", db_url)
    app = AppTest.from_file(str(script), default_timeout=30).run()
    app.text_area(key="sweep_grid").set_value("federation.learning_rate=0.1,-1")  # sent with the submit
    app.button(key="start_grid_sweep").click().run()
    assert "Invalid grid: federation.learning_rate=-1" in app.error[0].value
    assert ExperimentStore(db_url).list_experiments() == []
    app.text_area(key="sweep_grid").set_value("\n".join(GRID[1::2]))
    app.number_input(key="sweep_parallel").set_value(2)
    app.button(key="start_grid_sweep").click().run()
    assert not app.exception and not app.error, [e.value for e in app.error]
    stored = ExperimentStore(db_url).list_experiments()
    assert len(stored) == 6 and sorted(i for ids in launched for i in ids) == sorted(e.id for e in stored)
    assert len(launched) == 2 and all(len(ids) == 3 for ids in launched)
    assert sweeps.sweep_names(stored) and all(t.startswith("sweep:") for e in stored for t in e.tags[:1])
