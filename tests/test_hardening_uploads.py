"""Uploads and CSV columns (issue 18): an uploaded CSV goes with the last experiment that uses it,
and a CSV with two text columns (or both Group and school) is refused, naming both."""

from __future__ import annotations

import pytest

from app_pages.csv_upload import check_upload, remove_upload
from database import ExperimentStore
from ngss.csv_format import CsvImportError, load_csv

ROWS = [("the balloon rises because the gas is lighter", "1", "0", "north"),
        ("it floats", "0", "0", "north"), ("hot air is less dense than the air around it", "1", "1", "south"),
        ("the gas particles spread out", "0", "1", "south"), ("helium weighs less than air", "1", "0", "east"),
        ("I do not know", "0", "0", "east")]  # fmt: skip


def lab_csv(header: str = "text,E1,E2,Group", rows=ROWS) -> bytes:
    return ("\n".join([header, *(",".join(row) for row in rows)]) + "\n").encode()


def csv_config(path: str) -> dict:
    return {"data": {"dataset": "csv", "csv_path": path}}


def test_an_upload_is_removed_with_the_last_experiment_that_uses_it(tmp_path, db_url):
    upload = check_upload([("balloons_train.csv", lab_csv())])
    path = upload.save(tmp_path / "data")
    other = check_upload([("balloons_train.csv", lab_csv(rows=ROWS[:4]))]).save(tmp_path / "data")
    store = ExperimentStore(db_url)
    first, second = (store.create_experiment(csv_config(str(path))) for _ in range(2))
    unrelated = store.create_experiment(csv_config(str(other)))

    assert remove_upload(store.delete_experiment(first)) is False  # the second run still reads it
    assert path.is_file()
    assert remove_upload(store.delete_experiment(second)) is True

    assert not path.parent.exists()  # the whole upload folder: train and test file
    assert other.is_file() and store.get_experiment(unrelated) is not None  # another upload is untouched


def test_a_file_that_is_not_an_upload_is_never_removed(tmp_path, db_url):
    mine = tmp_path / "lab" / "balloons_train.csv"
    mine.parent.mkdir()
    mine.write_bytes(lab_csv())
    store = ExperimentStore(db_url)
    experiment_id = store.create_experiment(csv_config(str(mine)))

    assert store.delete_experiment(experiment_id) == str(mine)  # no experiment names it any more
    assert remove_upload(str(mine)) is False and mine.is_file()  # but the user's own file stays


def test_mnist_runs_name_no_data_file(db_url):
    store = ExperimentStore(db_url)
    assert store.delete_experiment(store.create_experiment({"data": {"dataset": "mnist"}})) is None
    assert store.delete_experiment(12345) is None  # no such run


@pytest.mark.parametrize(
    ("header", "named"),
    [
        ("text,response,E1,E2", "two text (text/response) columns, 'text' (column 1) and 'response' (column 2)"),
        ("text,E1,E2,Group,school", "two group (Group/school) columns, 'Group' (column 4) and 'school' (column 5)"),
        ("Text,E1,E2,TEXT", "two text (text/response) columns, 'Text' (column 1) and 'TEXT' (column 4)"),
    ],
)
def test_a_csv_with_two_columns_of_one_role_is_refused_naming_both(header, named):
    rows = [(*row, row[-1]) for row in ROWS]  # one more field per row, for the second column

    with pytest.raises(CsvImportError) as refused:
        load_csv(lab_csv(header, rows), task_name="balloons")

    assert named in str(refused.value) and "\n" not in str(refused.value)


def test_one_text_and_one_school_column_anywhere_still_import():
    rows = [(labels_one, text, labels_two, school) for text, labels_one, labels_two, school in ROWS]

    imported = load_csv(lab_csv("E1,response,E2,school", rows), task_name="balloons", test_fraction=0.34)

    texts = sorted([*imported.train.texts, *imported.test.texts])
    assert texts == sorted(row[0] for row in ROWS)
    assert imported.school_names == ["east", "north", "south"]


def test_the_pages_delete_button_removes_the_upload_of_its_last_run(tmp_path, db_url):
    from app_pages import run_view  # the Delete button's callback

    path = check_upload([("balloons_train.csv", lab_csv())]).save(tmp_path / "data")
    store = ExperimentStore(db_url)
    experiment_id = store.create_experiment(csv_config(str(path)))

    run_view.delete_experiment(store, experiment_id)

    assert store.get_experiment(experiment_id) is None and not path.parent.exists()
