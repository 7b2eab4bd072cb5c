"""runs.preflight.check_data: data-dependent refusals before anything is stored, fast for MNIST."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from experiment_config import NGSS_SCHOOLS, ExperimentConfig
from ngss.data import CsvImportError
from ngss.tasks import TASKS
from runs.preflight import MNIST_TRAIN_EXAMPLES, check_data

TEXT = ["model.name=tinyllama-lora", "model.pretrained=false"]
SCHOOLS_CSV = "text,E1,Group\n" + "".join(f"answer {i},{i % 2},{school}\n" for i in range(4) for school in "ABC")


def config(*assignments: str) -> ExperimentConfig:
    return ExperimentConfig().with_overrides(list(assignments))


def csv_config(path: Path, *assignments: str) -> ExperimentConfig:
    return config("data.dataset=csv", f"data.csv_path={path}", *TEXT, *assignments)


def test_more_mnist_clients_than_examples_is_refused_quickly_without_loading_mnist():
    started = time.perf_counter()
    expected = f"needs at least 100000 training examples, but the data has {MNIST_TRAIN_EXAMPLES}"
    with pytest.raises(ValueError, match=expected):
        check_data(config("federation.num_clients=100000", "federation.clients_per_round=10"))
    check_data(config("federation.num_clients=60000", "federation.clients_per_round=10"))  # one example each
    assert time.perf_counter() - started < 0.5  # a header read at most: loading MNIST takes seconds


def test_the_training_subset_and_shards_count():
    subset = ("data.max_train_examples=600", "federation.clients_per_round=2")
    check_data(config(*subset, "federation.num_clients=600"))
    with pytest.raises(ValueError, match=r"data has 600 \(data.max_train_examples = 600\).*at most 600"):
        check_data(config(*subset, "federation.num_clients=601"))
    check_data(config(*subset, "federation.num_clients=300", "data.partition=shards"))
    with pytest.raises(ValueError, match=r"at least 602 training examples \(2 shards per client\).*at most 300"):
        check_data(config(*subset, "federation.num_clients=301", "data.partition=shards"))


def test_mnist_size_comes_from_the_idx_header_when_the_files_are_there(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    (raw / "train-labels-idx1-ubyte").write_bytes((2049).to_bytes(4, "big") + (100).to_bytes(4, "big") + bytes(100))
    check_data(config(f"data.data_dir={tmp_path}", "federation.num_clients=100", "federation.clients_per_round=2"))
    with pytest.raises(ValueError, match="the data has 100"):
        check_data(config(f"data.data_dir={tmp_path}", "federation.num_clients=101", "federation.clients_per_round=2"))


def test_synthetic_ngss_uses_the_published_size():
    task = "gas_filled_balloons"
    size = TASKS[task].train_size
    base = ("data.dataset=ngss", f"data.ngss_task={task}", *TEXT, "federation.clients_per_round=2")
    check_data(config(*base, f"federation.num_clients={size}"))
    with pytest.raises(ValueError, match=f"the data has {size}"):
        check_data(config(*base, f"federation.num_clients={size + 1}"))
    check_data(config(*base, "data.partition=natural", f"federation.num_clients={NGSS_SCHOOLS}"))


def test_natural_needs_one_client_per_school_of_the_csv(tmp_path):
    path = tmp_path / "lab_train.csv"
    path.write_text(SCHOOLS_CSV)
    check_data(csv_config(path, "data.partition=natural", "federation.num_clients=3", "federation.clients_per_round=3"))
    with pytest.raises(ValueError, match="data's 3 schools a client: federation.num_clients must be 3, got 9"):
        check_data(csv_config(path, "data.partition=natural", "federation.num_clients=9",
                              "federation.clients_per_round=2"))
    plain = tmp_path / "plain_train.csv"
    plain.write_text("text,E1\na,1\nb,0\nc,1\n")
    with pytest.raises(ValueError, match="needs a school for every response"):
        check_data(csv_config(plain, "data.partition=natural", "federation.num_clients=1",
                              "federation.clients_per_round=1"))
    (tmp_path / "only_train.csv").write_text("text,E1,Group\na,1,A\nb,0,A\n")
    (tmp_path / "only_test.csv").write_text("text,E1,Group\nc,1,A\nd,0,B\n")  # school B: test rows only
    with pytest.raises(ValueError, match="1 school\\(s\\) have no training responses"):
        check_data(csv_config(tmp_path / "only_train.csv", "data.partition=natural", "federation.num_clients=2",
                              "federation.clients_per_round=2"))  # fmt: skip


def test_a_refused_csv_is_the_importers_error_naming_the_file(tmp_path):
    path = tmp_path / "lab_train.csv"
    path.write_text("text,E1\nhello,2\n")
    with pytest.raises(CsvImportError, match=f"{path}: line 2, column E1"):
        check_data(csv_config(path))
    with pytest.raises(CsvImportError, match="no such file"):
        check_data(csv_config(tmp_path / "missing_train.csv"))
    with pytest.raises(CsvImportError, match="not a regular file"):
        check_data(csv_config(tmp_path))
    path.write_text("text,E1\n" + "".join(f"r{i},1\n" for i in range(10)))  # 8 train rows after the 20% split
    with pytest.raises(ValueError, match="the data has 8"):
        check_data(csv_config(path, "federation.num_clients=9", "federation.clients_per_round=2"))


@pytest.mark.parametrize("bad", ["a\x00b", "data\n", "x\x1b[2J", "\ud800"])
@pytest.mark.parametrize("key", ["data.data_dir", "data.csv_path"])
def test_a_control_character_or_surrogate_in_a_data_path_is_refused(tmp_path, key, bad):
    chosen = config(f"{key}=placeholder", "data.dataset=csv", *TEXT) if key == "data.csv_path" else config()
    section = "csv_path" if key == "data.csv_path" else "data_dir"
    chosen = chosen.replace("data", **{section: bad})
    with pytest.raises(ValueError, match=f"{key} has an invalid character .* at position") as raised:
        check_data(chosen)
    message = str(raised.value)
    assert "\x00" not in message and "\n" not in message and "\x1b" not in message


def test_a_synthetic_population_may_outnumber_the_examples_but_not_draw_more_than_there_are():
    population = ("federation.num_clients=100000", "federation.clients_per_round=10")
    check_data(config(*population, "data.examples_per_client=6"))
    with pytest.raises(ValueError, match=r"data.examples_per_client = 601 is more than the 600 training examples"):
        check_data(config(*population, "data.examples_per_client=601", "data.max_train_examples=600"))
