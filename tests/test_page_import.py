"""Blank and long responses: a blank answer in the lab's CSV is imported and scored as written, and the import
summary (the run view, the Start message, `cli.py run`) and the Score tab say how many answers were blank and
how many are longer than the model reads (cut to max_length tokens). Counts are checked against hand-made files
and the tokenizer called directly."""

from __future__ import annotations

import numpy as np
import pytest
import test_app
from test_app import SCORE, fabricate_ngss, fill, page

import cli
from app_pages.score import responses_from_csv, responses_from_text
from experiment_config import ExperimentConfig
from ngss.csv_format import count_blank, count_truncated, load_csv, summarize_import

store = test_app.store  # the fixtures: a temporary SQLite database the page opens, workers that never start
no_workers = test_app.no_workers

LONG = " ".join(["the gas particles spread out and fill the balloon"] * 20)  # ~180 tokens: over any small limit
TRAIN = (
    "text,E1,E2,Group\n"
    "Gases A and D are the same substance,1,0,North\n"
    ",0,0,North\n"  # a student who wrote nothing
    "   ,0,0,South\n"  # only spaces: blank too, kept as written
    f'"{LONG}",1,1,South\n'
    "B and C differ in density,0,1,South\n"
    "they are the same,1,0,North\n"
)
TEST = "text,E1,E2,Group\nA and D burn,1,0,North\n,0,0,South\n"


@pytest.fixture
def lab_csv(tmp_path):
    (tmp_path / "balloons_train.csv").write_text(TRAIN, encoding="utf-8")
    (tmp_path / "balloons_test.csv").write_text(TEST, encoding="utf-8")
    return tmp_path / "balloons_train.csv"


def csv_config(path, max_length: int = 16) -> ExperimentConfig:
    return ExperimentConfig.from_dict({
        "data": {"dataset": "csv", "csv_path": str(path), "partition": "natural"},
        "model": {"name": "tinyllama-lora", "pretrained": False, "max_length": max_length},
        "federation": {"num_clients": 2, "clients_per_round": 2, "rounds": 1},
    })  # fmt: skip


def test_blank_answers_are_imported_as_written_and_counted(lab_csv):
    dataset = load_csv(lab_csv)

    assert dataset.train.texts[1:3] == ["", "   "]  # as written, with their labels
    assert dataset.train.labels[1:3].tolist() == [[0, 0], [0, 0]]
    assert dataset.test.texts == ["A and D burn", ""]
    assert count_blank([*dataset.train.texts, *dataset.test.texts]) == 3
    summary = summarize_import(dataset)
    assert (summary.train, summary.test, summary.blank, summary.truncated) == (6, 2, 3, None)
    assert summary.text() == "6 + 2 responses imported (train + test) · 3 blank, scored as written"


def test_responses_longer_than_max_length_are_counted_as_the_tokenizer_cuts_them(lab_csv):
    from engine.workloads import encode, load_tokenizer

    config = csv_config(lab_csv, max_length=16)
    dataset = load_csv(lab_csv)
    tokenizer = load_tokenizer(config, dataset.train.texts)
    texts = [*dataset.train.texts, *dataset.test.texts]
    lengths = [len(tokenizer(text)["input_ids"]) for text in texts]  # the tokenizer itself, one text at a time
    assert sum(length > 16 for length in lengths) == 1 and lengths[3] > 16  # only LONG

    assert count_truncated(tokenizer, texts, max_length=16) == 1
    assert count_truncated(tokenizer, texts, max_length=max(lengths)) == 0
    summary = summarize_import(dataset, tokenizer=tokenizer, max_length=16)
    assert summary.text().endswith("· 3 blank, scored as written · 1 cut to 16 tokens")
    encoded = encode(config, tokenizer, texts)  # what the run trains on: blank rows are real rows
    assert encoded.shape == (8, 16)
    assert int((encoded[1] != 0).sum()) >= 1  # a blank answer still reads as its start token


def test_cli_run_says_what_the_import_brought_in(lab_csv):
    note = cli._import_note(csv_config(lab_csv, max_length=16))
    assert note == "6 + 2 responses imported (train + test) · 3 blank, scored as written · 1 cut to 16 tokens"


def test_an_imported_runs_view_shows_its_import_summary(store, lab_csv):
    experiment_id = fabricate_ngss(store, name="lab", dataset="csv", csv_path=str(lab_csv))
    app = page()

    def summary() -> list[str]:
        return [caption.value for caption in app.caption if "responses imported" in caption.value]

    assert summary() == [":material/upload_file: 6 + 2 responses imported (train + test) · 3 blank, scored as written"]
    app.button(key=f"live-count-cut-{experiment_id}").click().run()  # the tokenizer only when asked: seconds
    assert summary() == [
        (":material/upload_file: 6 + 2 responses imported (train + test) · 3 blank, scored as written · "
         "1 cut to 32 tokens")
    ]  # fmt: skip
    app.run()
    assert f"live-count-cut-{experiment_id}" not in [button.key for button in app.button]  # counted: kept
    assert summary()[0].endswith("· 1 cut to 32 tokens")


def test_start_with_an_upload_says_what_it_brought_in(store, no_workers, tmp_path):
    app = page()
    fill(app, {"dataset": "csv", "partition": "natural", "model": "tinyllama-lora", "num_clients": 2,
               "clients_per_round": 2, "data_dir": str(tmp_path / "data")})  # fmt: skip
    files = [("balloons_train.csv", TRAIN.encode(), "text/csv"), ("balloons_test.csv", TEST.encode(), "text/csv")]
    app.file_uploader(key="csv_upload").set_value(files)

    app.button(key="start").click().run()

    (experiment,) = store.list_experiments()
    assert no_workers == [(experiment.id,)] and not app.exception
    assert app.info[0].value == (
        f"#{experiment.id} · balloons_train.csv: 6 + 2 responses imported (train + test) · 3 blank, scored as written."
    )


def test_the_score_tab_skips_blank_lines_and_scores_blank_cells():
    assert responses_from_text("first\n\n  second  \n \nthird\n") == (["first", "second", "third"], 2)
    assert responses_from_text("") == ([], 0)
    data = b'id,Response\n1,A and D\n2,\n3,"  "\n\n4,B and C\n'  # the empty line of the file is no row
    assert responses_from_csv(data) == ["A and D", "", "", "B and C"]


def test_the_score_tab_says_how_many_lines_were_skipped_blank_answers_scored_and_responses_cut(store):
    import torch

    from engine.workloads import build_model, score_responses
    from model import flatten, get_parameters

    experiment_id = fabricate_ngss(store)  # max_length 32
    config = ExperimentConfig.from_dict(store.get_experiment(experiment_id).config)
    trained = flatten(get_parameters(build_model(config, 3, seed=config.system.seed)))
    store.save_weights(experiment_id, trained.numpy().astype("<f4").tobytes(), trained.numel())
    app = page(SCORE)

    app.text_area(key="score_text").set_value(f"Gases A and D are the same\n\n{LONG}\n")
    app.file_uploader(key="score_csv").set_value(("more.csv", b'text\nB and C differ\n""\n', "text/csv"))
    app.button(key="score_submit").click().run()

    assert not app.exception and not app.error
    scores = app.dataframe[1].value
    texts = ["Gases A and D are the same", LONG, "B and C differ", ""]
    assert scores["Response"].tolist() == texts
    expected = score_responses(config, torch.from_numpy(np.asarray(trained)), texts)
    np.testing.assert_allclose(scores[[f"E{k} probability" for k in (1, 2, 3)]].to_numpy(), expected, atol=1e-6)
    notes = [caption.value for caption in app.caption if ":material/info:" in caption.value]
    assert notes == [
        ":material/info: 1 blank line(s) in the text area skipped (a blank line separates responses).",
        ":material/info: 1 blank answer(s) from the CSV scored as written.",
        ":material/info: 1 response(s) longer than the model reads: cut to their first 32 tokens.",
    ]
