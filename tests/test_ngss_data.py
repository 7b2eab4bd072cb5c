"""ngss_data: task metadata, the synthetic generator against NGSS.md, the CSV importer, rubric metrics."""

from __future__ import annotations

import ast
import json
import re

import numpy as np
import pytest
from scipy.stats import chi2_contingency
from sklearn.feature_extraction.text import CountVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, f1_score

from conftest import REPO
from ngss.data import (
    TASKS,
    CsvImportError,
    generate,
    load_csv,
    predictions_from_probabilities,
    rubric_metrics,
    write_csv,
)

# NGSS.md's table, typed in independently of ngss_data.TASKS: (train, test, {label: test prevalence}).
PUBLISHED = {
    "anna_vs_carla": (955, 239, {"E1": 0.84, "E2": 0.07, "E4": 0.15, "E5": 0.04}),
    "breaking_down_hydrogen_peroxide": (666, 167, {"E1": 0.56, "E2": 0.41, "E3": 0.20, "E4": 0.10}),
    "carlos_javier_atomic_model": (956, 240, {"E1": 0.67, "E2": 0.51, "E3": 0.18, "E4": 0.16, "E5": 0.50}),
    "dry_ice_model": (1111, 278, {"E1": 0.24, "E2": 0.19, "E4": 0.19}),
    "gas_filled_balloons": (958, 240, None),  # three labels, prevalence unpublished
    "layers_in_test_tube": (956, 240, dict(zip(
        [f"E{i}" for i in range(1, 11)], (0.76, 0.39, 0.51, 0.48, 0.48, 0.22, 0.18, 0.23, 0.24, 0.10)
    ))),
    "model_for_making_water": (836, 210, {"E1": 0.22, "E2": 0.24, "E3": 0.42, "E4": 0.21, "E5": 0.13}),
    "namis_careful_experiment": (653, 164, {"E1": 0.80, "E2": 0.54, "E3": 0.70, "E4": 0.18, "E5": 0.23, "E7": 0.15}),
    "natural_sugar": (956, 239, {"E1": 0.35, "E2": 0.33, "E3": 0.44, "E4": 0.21, "E5": 0.20}),
}
PREVALENCE_TOLERANCE = 0.03  # absolute, per label, over train + test


@pytest.fixture(scope="module")
def datasets():
    return {slug: generate(slug, seed=0) for slug in TASKS}


def pooled(dataset):
    """(texts, labels, schools) of train + test."""
    return (
        dataset.train.texts + dataset.test.texts,
        np.concatenate([dataset.train.labels, dataset.test.labels]),
        np.concatenate([dataset.train.schools, dataset.test.schools]),
    )


# ----------------------------------------------------------------------------- metadata


def test_task_metadata_is_the_ngss_table():
    assert list(TASKS) == list(PUBLISHED)
    for slug, (train, test, prevalence) in PUBLISHED.items():
        task = TASKS[slug]
        assert (task.slug, task.train_size, task.test_size) == (slug, train, test)
        assert len(task.elements) == len(task.label_ids) == len(task.test_prevalence)
        assert [e.label for e in task.elements] == list(task.label_ids)
        assert all(e.meaning and e.source in ("sourced", "inferred") for e in task.elements)
        assert task.prompt and task.prompt_source in ("sourced", "inferred")
        if prevalence is None:
            assert task.label_ids == ("E1", "E2", "E3") and task.prevalence_source == "assumed"
        else:
            assert dict(zip(task.label_ids, task.test_prevalence)) == prevalence
            assert task.prevalence_source == "published"
    assert sum(t.train_size for t in TASKS.values()) == 8047
    assert sum(t.test_size for t in TASKS.values()) == 2017
    assert TASKS["gas_filled_balloons"].prompt_source == "sourced"
    assert {e.source for e in TASKS["gas_filled_balloons"].elements} == {"sourced"}
    assert {e.source for e in TASKS["layers_in_test_tube"].elements} == {"inferred"}


def _top_level_imports(module: str) -> set[str]:
    imported = set()
    for node in ast.walk(ast.parse((REPO / module).read_text())):
        if isinstance(node, ast.Import):
            imported.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
    return imported


def test_module_stays_light():
    light = {"__future__", "bisect", "collections", "csv", "dataclasses", "io", "math", "numpy", "pathlib", "re",
             "unicodedata"}
    ngss = {"ngss"}  # its own modules, ngss.csv_format and the rest
    for module in ("ngss/data.py", "ngss/csv_format.py", "ngss/metrics.py", "ngss/tasks.py", "ngss/phrases.py"):
        assert _top_level_imports(module) <= light | ngss, module


# ----------------------------------------------------------------------------- generator


@pytest.mark.parametrize("slug", list(PUBLISHED))
def test_generate_has_published_sizes_and_label_sets(datasets, slug):
    dataset, task = datasets[slug], TASKS[slug]
    assert dataset.task == slug and dataset.source == "synthetic" and dataset.has_groups
    assert dataset.label_names == list(task.label_ids)
    assert len(dataset.school_names) == 9
    for split, size in ((dataset.train, task.train_size), (dataset.test, task.test_size)):
        assert len(split.texts) == size and all(isinstance(t, str) and t.strip() for t in split.texts)
        assert split.labels.shape == (size, task.num_labels) and split.labels.dtype == np.int8
        assert set(np.unique(split.labels)) <= {0, 1}
        assert split.schools.shape == (size,) and set(np.unique(split.schools)) == set(range(9))


@pytest.mark.parametrize("slug", list(PUBLISHED))
def test_prevalence_matches_the_table(datasets, slug):
    _, labels, _ = pooled(datasets[slug])
    expected = np.array(TASKS[slug].test_prevalence)  # gas_filled_balloons: the assumed values
    assert np.abs(labels.mean(axis=0) - expected).max() <= PREVALENCE_TOLERANCE


def test_dry_ice_mostly_earns_nothing(datasets):
    _, labels, _ = pooled(datasets["dry_ice_model"])
    assert 0.55 <= np.mean(labels.sum(axis=1) == 0) <= 0.68  # NGSS.md: ≈ 60% earn none


def test_generate_is_deterministic_in_the_seed():
    first, again, other = (generate("natural_sugar", seed=s) for s in (3, 3, 4))
    assert first.train.texts == again.train.texts and first.test.texts == again.test.texts
    assert np.array_equal(first.train.labels, again.train.labels)
    assert np.array_equal(first.test.schools, again.test.schools)
    assert sum(a != b for a, b in zip(first.train.texts, other.train.texts)) > 0.9 * len(first.train.texts)
    assert not np.array_equal(first.train.labels, other.train.labels)


def test_generate_rejects_bad_arguments():
    with pytest.raises(ValueError, match="unknown NGSS task"):
        generate("balloons", seed=0)
    with pytest.raises(ValueError, match="num_schools"):
        generate("natural_sugar", seed=0, num_schools=0)
    assert len(generate("natural_sugar", seed=0, num_schools=4).school_names) == 4


def test_schools_have_unequal_sizes(datasets):
    sizes = np.bincount(pooled(datasets["gas_filled_balloons"])[2])
    assert sizes.max() >= 1.5 * sizes.min()


def test_school_prevalence_is_heterogeneous(datasets):
    # The same nine schools answer every task, with the same shares: under homogeneity every
    # school's pooled claim rate would be the same mixture of the tasks' rates.
    table = np.zeros((9, 2))
    for dataset in datasets.values():
        _, labels, schools = pooled(dataset)
        claim = labels[:, 0]
        table += np.array([[np.sum((schools == s) & (claim == v)) for v in (0, 1)] for s in range(9)])
    assert chi2_contingency(table)[1] < 1e-6
    _, labels, schools = pooled(datasets["gas_filled_balloons"])
    per_school = np.array([labels[schools == s].mean(axis=0) for s in range(9)])
    assert np.median((per_school.max(0) - per_school.min(0)) / labels.mean(0)) > 0.3  # ≈ ±30% relative shifts


def word_distribution_divergence(texts, groups):
    """Mean Jensen-Shannon divergence between each group's word distribution and the rest's."""
    vocabulary = {}
    tokens = [re.findall(r"[a-z0-9']+", t.lower()) for t in texts]
    counts = np.zeros((groups.max() + 1, len({w for ts in tokens for w in ts})))
    for words, group in zip(tokens, groups):
        for word in words:
            counts[group, vocabulary.setdefault(word, len(vocabulary))] += 1

    def kl(p, q):
        mask = p > 0
        return np.sum(p[mask] * np.log(p[mask] / q[mask]))

    divergences = []
    for group in range(len(counts)):
        rest = counts.sum(axis=0) - counts[group]
        p, q = counts[group] / counts[group].sum(), rest / rest.sum()
        divergences.append((kl(p, (p + q) / 2) + kl(q, (p + q) / 2)) / 2)
    return float(np.mean(divergences))


@pytest.mark.parametrize("slug", ["anna_vs_carla", "gas_filled_balloons", "layers_in_test_tube"])
def test_school_vocabulary_differs_more_than_a_random_split(datasets, slug):
    texts, _, schools = pooled(datasets[slug])
    random_groups = np.random.default_rng(0).permutation(schools)
    assert word_distribution_divergence(texts, schools) > 1.5 * word_distribution_divergence(texts, random_groups)


def test_schools_differ_in_answer_length(datasets):
    texts, _, schools = pooled(datasets["anna_vs_carla"])
    words = np.array([len(t.split()) for t in texts])
    per_school = np.array([words[schools == s].mean() for s in range(9)])
    assert per_school.max() > 1.4 * per_school.min()  # paper vs typed


@pytest.mark.parametrize("slug", list(PUBLISHED))
def test_evidence_cooccurs_with_the_claim(datasets, slug):
    _, labels, _ = pooled(datasets[slug])
    claim = labels[:, 0] == 1
    for k in range(1, labels.shape[1]):
        evidence = labels[:, k] == 1
        assert evidence[claim].mean() > 1.5 * evidence[~claim].mean()
        if claim.mean() >= evidence.mean():
            assert claim[evidence].mean() > 0.5  # evidence mostly comes with the claim


def test_non_answers_are_a_few_percent(datasets):
    for slug, dataset in datasets.items():
        texts, labels, _ = pooled(dataset)
        non_answers = np.array([len(t.split()) <= 3 for t in texts]) & (labels.sum(axis=1) == 0)
        assert 0.01 <= non_answers.mean() <= 0.08, slug
        assert not labels[np.array([t.lower() in ("idk", "i dont know") for t in texts])].any()  # never credited
    assert any(t == "idk" for d in datasets.values() for t in d.train.texts)


def test_lengths_follow_ngss(datasets):
    words = np.array([len(t.split()) for t in pooled(datasets["anna_vs_carla"])[0]])
    assert abs(words.mean() - 47.8) < 5 and abs(words.std() - 30.9) < 8
    characters = np.array([len(t) for t in pooled(datasets["gas_filled_balloons"])[0]])
    assert abs(characters.mean() - 150) < 15


def test_bag_of_words_learns_gas_filled_balloons_but_not_perfectly(datasets):
    dataset = datasets["gas_filled_balloons"]
    vectorizer = CountVectorizer(token_pattern=r"(?u)\b\w+\b", ngram_range=(1, 2), min_df=2)  # keep "a", "d"
    train_x, test_x = vectorizer.fit_transform(dataset.train.texts), vectorizer.transform(dataset.test.texts)
    model, baseline, keyword = [], [], []
    for k in range(len(dataset.label_names)):
        train_y, test_y = dataset.train.labels[:, k], dataset.test.labels[:, k]
        classifier = LogisticRegression(max_iter=2000).fit(train_x, train_y)
        model.append(accuracy_score(test_y, classifier.predict(test_x)))
        baseline.append(accuracy_score(test_y, np.full_like(test_y, int(train_y.mean() >= 0.5))))
        # The best single-token rule (a word or word pair present -> 1, or -> 0), chosen on train.
        present = (train_x > 0).toarray()
        agreement = (present == train_y[:, None]).mean(axis=0)
        best = int(np.argmax(np.maximum(agreement, 1 - agreement)))
        rule = (test_x[:, best].toarray().ravel() > 0).astype(int)
        keyword.append(accuracy_score(test_y, rule if agreement[best] >= 0.5 else 1 - rule))
    assert np.mean(model) > np.mean(baseline) + 0.2
    assert np.mean(model) < 0.99  # the schools' rater noise caps it
    assert np.mean(keyword) < np.mean(model) - 0.04  # near-miss distractors: no single word decides a label


def test_near_misses_use_the_keywords_without_earning_the_element(datasets):
    texts, labels, _ = pooled(datasets["gas_filled_balloons"])
    mentions_density = np.array(["densit" in t.lower() for t in texts])
    unearned = (labels[:, 1] == 0) & (labels[:, 2] == 0)
    assert (mentions_density & unearned).sum() > 0.1 * mentions_density.sum()


# ----------------------------------------------------------------------------- CSV


def test_generated_dataset_round_trips_through_csv(tmp_path):
    dataset = generate("layers_in_test_tube", seed=2)
    train_path, test_path = write_csv(dataset, tmp_path)
    assert (train_path.name, test_path.name) == ("layers_in_test_tube_train.csv", "layers_in_test_tube_test.csv")
    assert train_path.read_text(encoding="utf-8").splitlines()[0] == "text," + ",".join(dataset.label_names) + ",Group"
    loaded = load_csv(train_path)  # finds the sibling test file
    assert loaded.source == "imported" and loaded.task == "layers_in_test_tube" and loaded.has_groups
    assert loaded.label_names == dataset.label_names and loaded.school_names == dataset.school_names
    for original, copy in ((dataset.train, loaded.train), (dataset.test, loaded.test)):
        assert copy.texts == original.texts
        assert np.array_equal(copy.labels, original.labels) and copy.labels.dtype == np.int8
        assert np.array_equal(copy.schools, original.schools)


def test_without_a_test_file_a_stratified_seeded_split(tmp_path):
    dataset = generate("gas_filled_balloons", seed=0)
    train_path, test_path = write_csv(dataset, tmp_path)
    test_path.unlink()
    first, again = load_csv(train_path, seed=5), load_csv(train_path, seed=5)
    other = load_csv(train_path, seed=6)
    assert sorted(first.train.texts + first.test.texts) == sorted(dataset.train.texts)  # a partition of the file
    assert first.test.texts == again.test.texts and first.test.texts != other.test.texts
    total = np.bincount(dataset.train.schools)
    assert np.all(np.abs(np.bincount(first.test.schools, minlength=9) - 0.2 * total) <= 1)  # per school
    with pytest.raises(CsvImportError, match="too few rows"):
        load_csv(b"text,E1\nA and D,1\n")


def test_minus_one_kept_and_no_group_column(tmp_path):
    path = tmp_path / "mine.csv"
    path.write_text('id_free,E2,response,e1\nx,-1,"Gas A, and D",1\ny,0,idk,-1\nz,1,D too,0\n', encoding="utf-8")
    dataset = load_csv(path, path)
    assert dataset.label_names == ["E2", "E1"] and dataset.task == "mine"
    assert dataset.train.texts == ["Gas A, and D", "idk", "D too"]
    assert dataset.train.labels.tolist() == [[-1, 1], [0, -1], [1, 0]]
    assert not dataset.has_groups and dataset.school_names == ["all"] and dataset.train.schools.tolist() == [0, 0, 0]
    train_path, _ = write_csv(dataset, tmp_path / "out")  # no Group column written, none read back
    again = load_csv(train_path)
    assert not again.has_groups and again.train.texts == dataset.train.texts
    assert np.array_equal(again.test.labels, dataset.test.labels)


def test_bytes_with_school_column_and_test_columns_reordered():
    train = b"text,E1,E2,school\nfirst,1,0,North\nsecond,0,1,South\nthird,1,1,North\n"
    test = "text,school,E2,E1\ncaf\u00e9,South,1,0\n".encode()
    dataset = load_csv(train, test, task_name="natural_sugar")
    assert dataset.task == "natural_sugar" and dataset.school_names == ["North", "South"]
    assert dataset.train.schools.tolist() == [0, 1, 0] and dataset.test.schools.tolist() == [1]
    assert dataset.test.labels.tolist() == [[0, 1]] and dataset.test.texts == ["café"]


MALFORMED = {
    "empty": (b"", ["empty"]),
    "blank": (b"\n \n", ["empty"]),
    "header only": (b"text,E1\n", ["no rows"]),
    "not utf-8": ("text,E1\ncaf\u00e9,1\n".encode("latin-1"), ["not UTF-8"]),
    "no text column": (b"E1,E2\n1,0\n", ["no text column"]),
    "group first": (b"Group,E1\nNorth,1\n", ["no text column"]),
    "no labels": (b"text,score\nA and D,1\n", ["no rubric-element columns"]),
    "out of range": (b"text,E1,E2\nA and D,1,0\nB and C,0,2\n", ["line 3", "column E2", "'2'"]),
    "not an integer": (b"text,E1\nA and D,0.5\n", ["line 2", "column E1", "'0.5'"]),
    "a word": (b"text,E1\nA and D,yes\n", ["line 2", "'yes'"]),
    "empty label": (b"text,E1\nA and D,\n", ["line 2", "column E1", "empty cell"]),
    "short row": (b"text,E1,E2\nA and D,1\n", ["line 2", "field"]),
    "empty group": (b"text,E1,Group\nA and D,1,\n", ["line 2", "empty 'Group'"]),
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed_files_are_refused_with_their_reason(tmp_path, case):
    content, fragments = MALFORMED[case]
    path = tmp_path / "gas_filled_balloons_train.csv"
    path.write_bytes(content)
    with pytest.raises(CsvImportError) as raised:
        load_csv(path)
    message = str(raised.value)
    assert str(path) in message and all(fragment in message for fragment in fragments), message
    with pytest.raises(CsvImportError, match="uploaded train file"):
        load_csv(content)


def test_oversized_and_mismatched_files_are_refused(tmp_path):
    path = tmp_path / "big.csv"
    path.write_bytes(b"text,E1\n" + b"A and D,1\n" * 100)
    with pytest.raises(CsvImportError, match=r"big\.csv.*over the"):
        load_csv(path, max_bytes=500)
    with pytest.raises(CsvImportError, match="over the"):
        load_csv(path.read_bytes(), max_bytes=500)
    with pytest.raises(CsvImportError, match=r"uploaded test file.*E1, E3.*differ.*E1, E2"):
        load_csv(b"text,E1,E2\nA,1,0\nB,0,1\n", b"text,E1,E3\nC,1,0\n")
    with pytest.raises(CsvImportError, match="no Group/school column"):
        load_csv(b"text,E1,Group\nA,1,North\n", b"text,E1\nC,1\n")
    with pytest.raises(CsvImportError, match="no such file"):
        load_csv(tmp_path / "missing_train.csv")


# ----------------------------------------------------------------------------- metrics


def random_case(seed: int, rows: int = 200, labels: int = 5, unscored: float = 0.0):
    rng = np.random.default_rng(seed)
    truth = (rng.random((rows, labels)) < [0.5, 0.3, 0.1, 0.7, 0.0][:labels]).astype(int)  # last: no positives
    predictions = np.where(rng.random((rows, labels)) < 0.8, truth, 1 - truth)
    predictions[:, -1] = 0  # last label: no true and no predicted positives, F1 is 0/0
    truth[rng.random((rows, labels)) < unscored] = -1
    return predictions, truth


def test_metrics_match_sklearn_without_unscored_entries():
    predictions, truth = random_case(0)
    metrics = rubric_metrics(predictions, truth)
    columns = [accuracy_score(truth[:, k], predictions[:, k]) for k in range(truth.shape[1])]
    assert metrics["label_accuracy"] == pytest.approx(columns)
    assert metrics["per_label_accuracy"] == pytest.approx(np.mean(columns))
    assert metrics["entry_accuracy"] == pytest.approx(np.mean(truth == predictions))
    assert metrics["exact_match"] == pytest.approx(accuracy_score(truth, predictions))  # subset accuracy
    assert metrics["micro_f1"] == pytest.approx(f1_score(truth, predictions, average="micro", zero_division=0))
    assert metrics["macro_f1"] == pytest.approx(f1_score(truth, predictions, average="macro", zero_division=0))
    assert metrics["label_f1"] == pytest.approx(f1_score(truth, predictions, average=None, zero_division=0).tolist())
    assert metrics["score_mae"] == pytest.approx(np.mean(np.abs(truth.sum(1) - predictions.sum(1))))
    assert (metrics["num_examples"], metrics["num_scored"]) == (200, 1000)


def test_metrics_mask_unscored_entries_by_hand():
    truth = np.array([[1, 0, -1], [0, -1, -1], [-1, -1, -1], [1, 1, 0]])
    predictions = np.array([[1, 1, 0], [0, 1, 1], [1, 1, 1], [0, 1, 0]])
    metrics = rubric_metrics(predictions, truth)
    assert metrics["label_accuracy"] == pytest.approx([2 / 3, 1 / 2, 1.0])
    assert metrics["per_label_accuracy"] == pytest.approx(13 / 18)
    assert metrics["entry_accuracy"] == pytest.approx(4 / 6)
    assert metrics["exact_match"] == pytest.approx(1 / 3)  # rows 0, 1, 3 are scored; row 1 is all right
    assert metrics["score_mae"] == pytest.approx(2 / 3)  # |2-1|, |0-0|, |1-2|
    assert metrics["micro_f1"] == pytest.approx(2 / 3)  # TP 2, FP 1, FN 1
    assert metrics["label_f1"] == pytest.approx([2 / 3, 2 / 3, 0.0])
    assert metrics["macro_f1"] == pytest.approx(4 / 9)
    assert (metrics["num_examples"], metrics["num_scored"]) == (4, 6)
    unscored_label = rubric_metrics(predictions[:, :2], np.array([[1, -1], [1, -1], [1, -1], [0, -1]]))
    assert unscored_label["label_accuracy"][1] is None and unscored_label["label_f1"][1] is None
    assert unscored_label["per_label_accuracy"] == pytest.approx(3 / 4)  # the unscored label is left out


def test_per_group_metrics_are_the_groups_subsets():
    predictions, truth = random_case(1, rows=120, unscored=0.1)
    groups = np.random.default_rng(2).integers(0, 3, 120)
    metrics = rubric_metrics(predictions, truth, groups=groups, group_names=["North", "South", "West"])
    assert list(metrics["per_group"]) == ["North", "South", "West"]
    for index, name in enumerate(["North", "South", "West"]):
        rows = groups == index
        assert metrics["per_group"][name] == rubric_metrics(predictions[rows], truth[rows])
    assert json.loads(json.dumps(metrics, allow_nan=False)) == metrics
    assert list(rubric_metrics(predictions, truth, groups=groups)["per_group"]) == ["0", "1", "2"]


def test_metrics_reject_bad_inputs():
    with pytest.raises(ValueError, match="shape"):
        rubric_metrics(np.zeros((3, 2)), np.zeros((3, 3)))
    with pytest.raises(ValueError, match="0 or 1"):
        rubric_metrics(np.array([[-1, 0]]), np.array([[1, 0]]))
    with pytest.raises(ValueError, match="-1"):
        rubric_metrics(np.array([[1, 0]]), np.array([[2, 0]]))


def test_predictions_from_probabilities_threshold():
    probabilities = np.array([[0.49, 0.5, 0.51], [0.0, 1.0, 0.7]])
    assert predictions_from_probabilities(probabilities).tolist() == [[0, 1, 1], [0, 1, 1]]
    assert predictions_from_probabilities(probabilities, threshold=0.75).tolist() == [[0, 0, 0], [0, 1, 0]]
    with pytest.raises(ValueError):
        predictions_from_probabilities(np.array([[1.2]]))
