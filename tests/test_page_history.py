"""History's filters (status, dataset, privacy mode, tags) and a run's name and tags, edited from the run view:
the page through AppTest against a temporary SQLite database, the filter and the limits as plain functions."""

from __future__ import annotations

import pytest
import test_app
from test_app import HISTORY, LIVE, fabricate, page

from app_pages.common import data_text
from app_pages.history_filters import HistoryFilter, filter_experiments, options
from database import MAX_TAG_CHARS, MAX_TAGS, ExperimentStore

store = test_app.store  # the fixture: a temporary SQLite database the page opens


def fabricate_mix(store: ExperimentStore) -> dict[str, int]:
    """Four runs that differ in status, dataset, privacy mode and tags."""
    ids = {
        "plain": fabricate(store, name="plain"),
        "local": fabricate(store, name="local", epsilon=2.0, **{"privacy.mode": '"local"'}),
        "failed": fabricate(store, name="failed", status="failed"),
        "central": fabricate(store, name="central", epsilon=1.0, **{"privacy.mode": '"central"'}),
    }
    store.set_tags(ids["plain"], ["baseline", "mnist"])
    store.set_tags(ids["local"], ["dp", "mnist"])
    store.set_tags(ids["central"], ["dp"])
    return ids


def test_the_filter_keeps_the_runs_that_pass_every_condition(store):
    ids = fabricate_mix(store)
    runs = store.list_experiments()

    def kept(**chosen) -> set[int]:
        return {e.id for e in filter_experiments(runs, HistoryFilter(**chosen))}

    assert kept() == set(ids.values())
    assert kept(statuses=("failed",)) == {ids["failed"]}
    assert kept(modes=("local", "central")) == {ids["local"], ids["central"]}
    assert kept(tags=("dp",)) == {ids["local"], ids["central"]}
    assert kept(tags=("dp", "mnist")) == {ids["local"]}  # every tag chosen
    assert kept(tags=("dp",), statuses=("completed",), modes=("central",)) == {ids["central"]}
    assert kept(datasets=("MNIST",)) == set(ids.values())
    assert kept(datasets=("NGSS Anything (synthetic)",)) == set()
    assert options(runs) == {
        "statuses": ["completed", "failed"], "datasets": ["MNIST"], "modes": ["central", "local", "none"],
        "tags": ["baseline", "dp", "mnist"],
    }  # fmt: skip
    assert {data_text(e) for e in runs} == {"MNIST"}


def test_history_shows_only_the_runs_that_pass_the_filters_with_their_tags(store):
    ids = fabricate_mix(store)
    app = page(HISTORY)
    assert sorted(app.dataframe[0].value["ID"]) == sorted(ids.values())

    app.multiselect(key="history_filter_tags").set_value(["dp"]).run()
    table = app.dataframe[0].value
    assert table["ID"].tolist() == [ids["central"], ids["local"]]  # newest first
    assert table["Tags"].tolist() == ["dp", "dp, mnist"]
    assert app.selectbox(key="history_selected").options == [f"#{ids['central']} · central · mlp · iid · 2 clients · completed",
                                                            f"#{ids['local']} · local · mlp · iid · 2 clients · completed"]  # fmt: skip
    assert "2 of 4 experiments match the filters." in [caption.value for caption in app.caption]

    app.multiselect(key="history_filter_modes").set_value(["central"]).run()
    assert app.dataframe[0].value["ID"].tolist() == [ids["central"]]

    app.multiselect(key="history_filter_statuses").set_value(["failed"]).run()
    assert not app.dataframe
    assert "No experiment matches these filters (4 stored)" in app.info[0].value


def test_a_run_is_renamed_and_tagged_from_its_view_and_history_shows_it(store):
    experiment_id = fabricate(store, name="old name")
    app = page(HISTORY)

    app.text_input(key=f"history-name-{experiment_id}").set_value("  non-IID baseline ")
    app.text_input(key=f"history-tags-{experiment_id}").set_value("dp, mnist ,, dp")
    app.button(key=f"history-labels-save-{experiment_id}").click().run()

    stored = store.get_experiment(experiment_id)
    assert (stored.name, stored.tags) == ("non-IID baseline", ["dp", "mnist"])
    table = app.dataframe[0].value
    assert table["Name"].tolist() == ["non-IID baseline"] and table["Tags"].tolist() == ["dp, mnist"]
    assert app.success[0].value == f"Saved the name and tags of #{experiment_id}."


@pytest.mark.parametrize(
    ("name", "tags", "message"),
    [
        ("x" * 201, "ok", "name: 201 characters, at most 200"),
        ("line\nbreak", "ok", "name: contains a control character"),
        ("fine", "a" * (MAX_TAG_CHARS + 1), f"tags: a tag of {MAX_TAG_CHARS + 1} characters, at most {MAX_TAG_CHARS}"),
        ("fine", ", ".join(f"t{i}" for i in range(MAX_TAGS + 1)), f"tags: {MAX_TAGS + 1} tags, at most {MAX_TAGS}"),
        ("fine", "tab\there", "tags: a tag contains a control character"),
    ],
)
def test_a_refused_name_or_tag_says_why_in_one_line_and_stores_nothing(store, name, tags, message):
    experiment_id = fabricate(store, name="kept")
    store.set_tags(experiment_id, ["kept"])
    app = page(LIVE)

    app.text_input(key=f"live-name-{experiment_id}").set_value(name)
    app.text_input(key=f"live-tags-{experiment_id}").set_value(tags)
    app.button(key=f"live-labels-save-{experiment_id}").click().run()

    stored = store.get_experiment(experiment_id)
    assert (stored.name, stored.tags) == ("kept", ["kept"])
    errors = [error.value for error in app.error]
    assert len(errors) == 1 and errors[0].startswith(f"Not saved: {message}") and "\n" not in errors[0]


def test_the_store_checks_names_and_tags_itself(store):
    experiment_id = store.create_experiment({})
    store.rename(experiment_id, "  spaced  ")
    store.set_tags(experiment_id, [" a ", "b", "a", ""])
    assert (store.get_experiment(experiment_id).name, store.get_experiment(experiment_id).tags) == (
        "spaced",
        ["a", "b"],
    )
    store.set_tags(experiment_id, [f"t{i}" for i in range(MAX_TAGS)])  # exactly the limit
    assert len(store.get_experiment(experiment_id).tags) == MAX_TAGS
    with pytest.raises(ValueError, match="NUL|control"):
        store.rename(experiment_id, "nul\x00")
    with pytest.raises(ValueError, match="a list of strings"):
        store.set_tags(experiment_id, "dp")
    with pytest.raises(KeyError):
        store.rename(experiment_id + 1, "nobody")
    assert store.get_experiment(experiment_id).name == "spaced"


def test_migration_0007_gives_older_runs_no_tags_and_no_progress_and_downgrades(tmp_path):
    from alembic import command
    from sqlalchemy import inspect, text

    from migrations import alembic_config, migration_lock

    url = f"sqlite:///{tmp_path / 'experiments.db'}"
    store = ExperimentStore(url)
    with migration_lock(store.engine) as connection:  # a database as revision 0006 left it, with a run
        command.downgrade(alembic_config(connection), "0006")
    assert {"tags", "progress"}.isdisjoint(c["name"] for c in inspect(store.engine).get_columns("experiments"))
    with store.engine.begin() as connection:
        connection.execute(text(
            "INSERT INTO experiments (name, status, config, runtime, created_at, code_version, stop_requested) "
            "VALUES ('old run', 'completed', '{}', 'in-process', '2026-01-01 00:00:00', 'abc', 0)"
        ))  # fmt: skip
    store.engine.dispose()

    store = ExperimentStore(url)  # opening migrates to head

    (old,) = store.list_experiments()
    assert (old.name, old.tags, old.progress) == ("old run", [], None)
    store.set_tags(old.id, ["kept"])
    assert store.get_experiment(old.id).tags == ["kept"]
    with migration_lock(store.engine) as connection:
        command.downgrade(alembic_config(connection), "0006")
    with store.engine.connect() as connection:
        schema = connection.execute(text("SELECT sql FROM sqlite_master WHERE name = 'experiments'")).scalar()
        names = connection.execute(text("SELECT name FROM experiments")).scalars().all()
    assert "AUTOINCREMENT" in schema and "tags" not in schema and names == ["old run"]
