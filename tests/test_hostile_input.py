"""Hostile input: whatever a user hands in gives a valid result or one clear error.

Property-based (hypothesis) tests over the two doors user input comes through:
- the config builder (`ExperimentConfig.from_dict`, `from_json`, `from_toml`, `with_overrides`):
  a valid config that round-trips through dict and JSON, or a one-line `ValueError` naming
  the field or the problem; never a TypeError, OverflowError, RecursionError, ...;
- the CSV importer (`ngss_data.load_csv`): a dataset whose invariants hold, or a
  `CsvImportError` naming the file; never another exception, never a write; oversized
  input refused before it is parsed; `write_csv` → `load_csv` gives the same dataset.
Plus static checks: no pickle and no `torch.load` without `weights_only=True`, no SQL
built from strings, the app listens on localhost.

The example counts are the `*_EXAMPLES` constants below; the whole file runs in well
under a minute on one core.
"""

from __future__ import annotations

import ast
import contextlib
import dataclasses
import io
import json
import math
import re
import tempfile
import tomllib
import unicodedata
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from ngss import csv_format as ngss_csv
from conftest import REPO
from experiment_config import (
    ACCOUNTANTS,
    ATTACKS,
    BACKENDS,
    CLIENT_OPTIMIZERS,
    COMPRESSIONS,
    DATASETS,
    DROPOUT_STAGES,
    MODELS,
    NGSS_TASKS,
    PARTITIONS,
    PERSONALIZATIONS,
    PRIVACY_MODES,
    SECTIONS,
    SELECTIONS,
    STRAGGLER_POLICIES,
    STRATEGIES,
    ExperimentConfig,
)
from ngss.data import CsvImportError, NgssDataset, NgssSplit, load_csv, write_csv

# Examples per property (hypothesis `max_examples`); reported in the closing note.
CONFIG_EXAMPLES = 300  # each config-builder property
CROSS_FIELD_EXAMPLES = 400  # valid base + one field changed
CSV_EXAMPLES = 200  # each CSV-importer property
ROUND_TRIP_EXAMPLES = 150  # write_csv -> load_csv

MAX_MESSAGE_CHARS = 1000  # the longest error lists a section's keys (~700 characters)


def hostile(max_examples: int) -> settings:
    """No per-example deadline (deep nesting and file I/O vary); big generated inputs are the point."""
    return settings(
        max_examples=max_examples, deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )  # fmt: skip


# ----------------------------------------------------------------------------- config strategies

FIELDS = {section: {f.name: f for f in dataclasses.fields(cls)} for section, cls in SECTIONS.items()}
CHOICES = {
    ("data", "dataset"): DATASETS, ("data", "partition"): PARTITIONS, ("data", "ngss_task"): NGSS_TASKS,
    ("model", "name"): MODELS, ("federation", "strategy"): STRATEGIES, ("federation", "selection"): SELECTIONS,
    ("federation", "dropout_stage"): DROPOUT_STAGES, ("federation", "straggler_policy"): STRAGGLER_POLICIES,
    ("federation", "personalization"): PERSONALIZATIONS, ("privacy", "mode"): PRIVACY_MODES,
    ("privacy", "accountant"): ACCOUNTANTS, ("system", "backend"): BACKENDS, ("attack", "behaviour"): ATTACKS,
    ("communication", "compression"): COMPRESSIONS, ("federation", "client_optimizer"): CLIENT_OPTIMIZERS,
}  # fmt: skip
# Past int64, past the float range. (Past Python's 4300-digit int->str limit only in explicit
# examples: hypothesis itself cannot show such an int.)
HUGE_INTS = (2**63, -(2**63) - 1, 2**64, 10**308, 10**309, -(10**400), 10**4000)
ODD_STRINGS = (
    "", " ", "\x00", "\ufeff", "\u202e", "\u2028", "a\nb", "a\r\nb", "\ud800", "Ω≈ç√", "𝔘𝔫𝔦𝔠𝔬𝔡𝔢", "' OR 1=1 --",
    "../../etc/passwd", "${jndi:ldap://x}", "x" * 5000, "1" * 5000, "nan", "inf", "true", "[]", "{}",
)  # fmt: skip

# Text with every code point, lone surrogates included, and the odd strings above.
odd_text = st.sampled_from(ODD_STRINGS) | st.text(st.characters(exclude_categories=()), max_size=30)
json_scalars = (
    st.none() | st.booleans() | st.integers() | st.sampled_from(HUGE_INTS) | st.floats() | odd_text
)
json_values = st.recursive(
    json_scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(odd_text, inner, max_size=4),
    max_leaves=12,
)  # fmt: skip


def field_values(section: str, key: str) -> st.SearchStrategy:
    """Values for one known field: plausible ones (to reach cross-field checks) and anything at all."""
    kind, choices = FIELDS[section][key].type, CHOICES.get((section, key))
    plausible = {
        "int": st.integers(-2, 300) | st.sampled_from(HUGE_INTS),
        "float": st.floats(-0.5, 2.0) | st.floats(0.0, 2e4) | st.sampled_from((math.nan, math.inf, -math.inf, 1e-300)),
        "bool": st.booleans(),
        "str": st.sampled_from(choices) if choices else odd_text,
    }[kind]
    return st.one_of(plausible, plausible, json_values)


@st.composite
def section_tables(draw: st.DrawFn, section: str) -> dict:
    keys = draw(st.lists(st.sampled_from(sorted(FIELDS[section])), max_size=6, unique=True))
    table = {key: draw(field_values(section, key)) for key in keys}
    if draw(st.integers(0, 7)) == 0:
        table[draw(odd_text)] = draw(json_values)  # an unknown (or, by chance, known) key
    return table


@st.composite
def config_dicts(draw: st.DrawFn) -> object:
    if draw(st.integers(0, 9)) == 0:
        return draw(json_values)  # not even a table of sections
    raw = {}
    for section in draw(st.lists(st.sampled_from(sorted(SECTIONS)), max_size=7, unique=True)):
        raw[section] = draw(section_tables(section)) if draw(st.integers(0, 9)) else draw(json_values)
    if draw(st.integers(0, 9)) == 0:
        raw[draw(odd_text)] = draw(json_values)  # an unknown section
    return raw


def toml_value(value: object) -> str:
    """A TOML literal for a JSON-like value (an independent writer: tomllib only reads)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return {"nan": "nan", "inf": "inf", "-inf": "-inf"}.get(repr(value), repr(value))
    if isinstance(value, str):
        escaped = "".join(c if c.isprintable() and c not in '"\\' else f"\\U{ord(c):08x}" for c in value)
        return f'"{escaped}"'
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{toml_value(str(k))} = {toml_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(type(value))  # None: TOML has no null; the strategy below leaves it out


def toml_document(raw: dict) -> str:
    lines = []
    for section, table in raw.items():
        lines.append(f"[{toml_value(str(section))}]")
        lines += [f"{toml_value(str(key))} = {toml_value(value)}" for key, value in table.items()]
    return "\n".join(lines) + "\n"


def no_nulls(value: object) -> bool:
    """TOML has no null: tables holding None are left out of the generated documents."""
    if isinstance(value, list):
        return all(no_nulls(v) for v in value)
    if isinstance(value, dict):
        return all(no_nulls(v) for v in value.values())
    return value is not None


@st.composite
def toml_texts(draw: st.DrawFn) -> str:
    """Valid TOML from generated tables, valid TOML cut or spliced, and arbitrary text."""
    raw = draw(config_dicts())
    tables = {s: t for s, t in raw.items() if isinstance(t, dict)} if isinstance(raw, dict) else {}
    document = toml_document({s: t for s, t in tables.items() if no_nulls(t)})
    how = draw(st.sampled_from(("valid", "valid", "cut", "splice", "text", "deep")))
    if how == "cut":
        return document[: draw(st.integers(0, len(document)))]
    if how == "splice":
        at = draw(st.integers(0, len(document)))
        return document[:at] + draw(st.text(max_size=10)) + document[at:]
    if how == "text":
        return draw(st.text(max_size=200))
    if how == "deep":
        opener = draw(st.sampled_from(("[", "{a = ", "[{a = ")))
        return "[federation]\nrounds = " + opener * draw(st.integers(1, 5000))
    return document


# ----------------------------------------------------------------------------- config checks


def assert_clear_error(error: ValueError, *, field: tuple[str, str] | None = None) -> None:
    """One line, bounded, naming a section (or the config, or --set) — or the changed field when given."""
    message = str(error)
    assert len(message.splitlines()) == 1 and len(message) <= MAX_MESSAGE_CHARS, message[:2000]
    if field is not None:
        section, key = field
        assert key in message or f"{section}." in message, message
    else:
        assert any(name in message for name in ("config", "--set", *SECTIONS)), message


def valid_or_clear_error(build, *, field: tuple[str, str] | None = None) -> ExperimentConfig | None:
    """The config `build()` returns, checked to round-trip, or None after a clear ValueError.

    Any other exception type propagates and fails the test."""
    try:
        config = build()
    except ValueError as error:
        assert_clear_error(error, field=field)
        return None
    assert isinstance(config, ExperimentConfig)
    assert ExperimentConfig.from_dict(config.to_dict()) == config
    assert ExperimentConfig.from_json(config.to_json()) == config
    assert json.loads(config.to_json()) == json.loads(json.dumps(config.to_dict(), sort_keys=True))
    return config


@hostile(CONFIG_EXAMPLES)
@given(config_dicts())
@example({"federation": {"learning_rate": 10**400}})  # was OverflowError: int too large to convert to float
@example({"federation": {"rounds": 10**5000}})  # was a ValueError about int->str digits, naming no field
@example({"federation": {"rounds": [10**5000]}})
@example({"data": {"a\nb": 1}})  # was a two-line "unknown key" message
@example({"attack": {"\u2028": None}})  # the same, with a line separator (found by hypothesis)
@example({10**5000: {}})  # was a ValueError about int->str digits
@example({"federation": {"rounds": "x" * 100_000}})  # a 100 kB message
def test_config_from_dict_is_valid_or_a_clear_error(raw):
    valid_or_clear_error(lambda: ExperimentConfig.from_dict(raw))


def test_config_from_dict_survives_nesting_past_the_recursion_limit():
    nested: list = []
    for _ in range(100_000):
        nested = [nested]
    valid_or_clear_error(lambda: ExperimentConfig.from_dict({"federation": {"rounds": nested}}))


@hostile(CONFIG_EXAMPLES)
@given(st.one_of(config_dicts().map(lambda raw: json.dumps(raw, default=str)), st.text(max_size=200)))
@example("[" * 100_000)  # was RecursionError
@example("")  # was "Expecting value: line 1 column 1 (char 0)", naming no config (found by hypothesis)
@example("1" * 5000)  # was a ValueError about int->str digits, naming neither config nor JSON
@example('{"federation": {"rounds": NaN}}')
@example('{"data": {"csv_path": "\\ud800"}}')
def test_config_from_json_is_valid_or_a_clear_error(text):
    valid_or_clear_error(lambda: ExperimentConfig.from_json(text))


@hostile(CONFIG_EXAMPLES)
@given(toml_texts())
@example("[federation]\nrounds = " + "[" * 5000)  # was RecursionError
@example("[federation]\nrounds = " + "1" * 5000)  # was a ValueError naming neither the file nor the field
@example('[data]\ncsv_path = "\\ud800"')  # TOML forbids surrogate escapes: invalid TOML
def test_config_from_toml_is_valid_or_a_clear_error(text):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "config.toml"
        path.write_bytes(text.encode("utf-8", "surrogatepass"))
        config = valid_or_clear_error(lambda: ExperimentConfig.from_toml(path))
    if config is not None:  # independent reference: tomllib on the same text, then from_dict
        assert config == ExperimentConfig.from_dict(tomllib.loads(text))


@pytest.mark.parametrize(
    "content", [b"[data]\ncsv_path = '\xe9'\n", b"a = " + b"{b = " * 5000], ids=["latin-1", "deep"]
)
def test_config_from_toml_names_the_file_for_undecodable_or_deep_files(tmp_path, content):
    path = tmp_path / "bad.toml"
    path.write_bytes(content)
    with pytest.raises(ValueError, match="not valid TOML") as raised:
        ExperimentConfig.from_toml(path)
    assert str(path) in str(raised.value) and len(str(raised.value).splitlines()) == 1


def test_config_from_toml_refuses_a_folder_with_a_value_error(tmp_path):
    with pytest.raises(ValueError, match="cannot be read") as raised:  # was IsADirectoryError
        ExperimentConfig.from_toml(tmp_path)
    assert str(tmp_path) in str(raised.value)


assignments = st.one_of(
    st.builds(
        lambda section, key, value: f"{section}.{key}={value}",
        st.sampled_from(sorted(SECTIONS)) | odd_text,
        st.sampled_from(sorted({key for fields in FIELDS.values() for key in fields})) | odd_text,
        st.sampled_from(("", "1", "-1", "0.5", "1e309", "nan", "inf", "true", "[1, 2]", "{a = 1}", "1979-05-27",
                         '"mlp"', "mlp", "'x", "[" * 3000, "1" * 5000, "5\nx = 3"))
        | st.sampled_from(sorted({c for choices in CHOICES.values() for c in choices}))
        | st.text(max_size=20),
    ),
    st.text(max_size=40),
)  # fmt: skip


@hostile(CONFIG_EXAMPLES)
@given(st.lists(assignments, max_size=4))
@example(["federation.rounds=" + "[" * 3000])  # was RecursionError
@example(["federation.rounds=" + "1" * 5000])  # was a ValueError naming no field
@example(["federation.rounds=5\nx = 3"])  # was silently read as rounds = 5
@example(["attack.=" + "[" * 3000])  # was a 3 kB message echoing the whole assignment
def test_config_overrides_are_valid_or_a_clear_error(overrides):
    config = valid_or_clear_error(lambda: ExperimentConfig().with_overrides(overrides))
    if config is None:
        return
    last = {}  # (section, key) -> the value text of its last assignment, which wins
    for assignment in overrides:
        dotted, _, text = assignment.partition("=")
        section, _, key = dotted.strip().partition(".")
        last[(section, key.strip())] = text.strip()
    for (section, key), text in last.items():
        if "\n" in text:  # more than one TOML line: kept whole, as a string
            assert getattr(getattr(config, section), key) == text


def test_override_value_with_a_newline_is_a_string_not_half_a_document():
    with pytest.raises(ValueError, match=r"federation\.rounds must be an integer"):
        ExperimentConfig().with_overrides(["federation.rounds=5\nx = 3"])
    config = ExperimentConfig().with_overrides(["data.csv_path=a.csv\nb = 1"])
    assert config.data.csv_path == "a.csv\nb = 1"


# Valid bases that switch on the cross-field rules (each checked to build in the test below).
VALID_BASES = (
    {},
    {"data": {"dataset": "ngss", "partition": "natural"}, "model": {"name": "minilm-lora"},
     "federation": {"num_clients": 9, "clients_per_round": 9}},
    {"data": {"dataset": "csv", "csv_path": "lab/t_train.csv"}, "model": {"name": "tinyllama-lora"}},
    {"privacy": {"mode": "central", "target_epsilon": 3.0, "max_epsilon": 4.0, "adaptive_clipping": True}},
    {"privacy": {"mode": "local", "noise_multiplier": 1.1}, "system": {"backend": "torch"}},
    {"federation": {"strategy": "bulyan", "num_clients": 20, "clients_per_round": 11, "byzantine_clients": 2}},
    {"federation": {"strategy": "multi_krum", "clients_per_round": 7, "byzantine_clients": 2,
                    "multi_krum_keep": 5}},
    {"federation": {"secure_aggregation": True, "secagg_neighbours": 4, "strategy": "fedadam"}},
    {"federation": {"selection": "power_of_choice", "num_clients": 30, "selection_candidates": 20,
                    "min_clients": 5}},
    {"federation": {"personalization": "fedper", "client_holdout": 0.2, "strategy": "adaptive_weighting"}},
    {"communication": {"compression": "topk"}, "system": {"backend": "mlx"}, "model": {"name": "mlp"}},
    {"federation": {"client_optimizer": "adamw", "strategy": "fedprox", "learning_rate": 0.001}},
)  # fmt: skip


def test_cross_field_bases_are_valid():
    for base in VALID_BASES:
        built = ExperimentConfig.from_dict(base).to_dict()
        assert all(built[s][k] == v for s, table in base.items() for k, v in table.items()), base


@st.composite
def one_field_changed(draw: st.DrawFn) -> tuple[dict, tuple[str, str]]:
    base = json.loads(json.dumps(draw(st.sampled_from(VALID_BASES))))
    section = draw(st.sampled_from(sorted(SECTIONS)))
    key = draw(st.sampled_from(sorted(FIELDS[section])))
    base.setdefault(section, {})[key] = draw(field_values(section, key))
    return base, (section, key)


@hostile(CROSS_FIELD_EXAMPLES)
@given(one_field_changed())
@example(({"federation": {"strategy": "krum"}, "privacy": {"mode": "central"}}, ("federation", "strategy")))
@example(({"federation": {"strategy": "adaptive_weighting"}}, ("federation", "strategy")))
@example(({"federation": {"learning_rate": 10**309}}, ("federation", "learning_rate")))
def test_one_changed_field_of_a_valid_config_is_valid_or_named(case):
    raw, changed = case
    valid_or_clear_error(lambda: ExperimentConfig.from_dict(raw), field=changed)


# ----------------------------------------------------------------------------- CSV strategies


def mostly(good: st.SearchStrategy, bad: st.SearchStrategy) -> st.SearchStrategy:
    """`good` nine times in ten, else `bad`."""
    return st.integers(0, 9).flatmap(lambda roll: bad if roll == 0 else good)


JUNK_HEADER_CELLS = st.sampled_from(
    ("text", "response", " text ", "E1", "e3", "E01", "Group", "school", "", "id", "E", "Ex", "E-1", "E\u0661",
     "\ufeffE1", "E 1")
) | st.text(max_size=6)  # fmt: skip
GOOD_LABEL_CELLS = st.sampled_from(("-1", "0", "1", " 1", "1.0"))
LABEL_CELLS = mostly(
    GOOD_LABEL_CELLS,
    st.sampled_from(("2", "x", "", " 1 ", "1.0", "-0", "nan", "inf", "1e0", "\uff10", "\u0661", "0x1", "1" * 400))
    | st.text(max_size=4),
)  # fmt: skip
GOOD_TEXT_CELLS = st.sampled_from(
    ("A and D are the same", 'say "hi"', "a,b", "line\nbreak", "cr\rhere", "a\x00b", "é", "💥", " padded ")
) | st.text(min_size=1, max_size=30).filter(str.strip)  # fmt: skip
TEXT_CELLS = mostly(
    GOOD_TEXT_CELLS,
    st.sampled_from(("", "  ", "\ufeff", "x" * 3000)) | st.text(max_size=5),
)  # fmt: skip
GOOD_GROUP_CELLS = st.sampled_from(("North", "South", " North ", "Ω"))
GROUP_CELLS = mostly(GOOD_GROUP_CELLS, st.sampled_from(("", " ", "\x00")) | st.text(max_size=5))


@st.composite
def csv_headers(draw: st.DrawFn) -> list[str]:
    """Mostly the lab's layout (a text column, E columns, maybe a group column), perturbed; else junk."""
    if draw(st.integers(0, 4)) == 0:
        return draw(st.lists(JUNK_HEADER_CELLS, min_size=1, max_size=6))
    labels = sorted(draw(st.sets(st.integers(1, 10), min_size=1, max_size=4)))
    header = [draw(st.sampled_from(("text", "response", "Text", " text ", "")))] + [f"E{i}" for i in labels]
    if draw(st.booleans()):
        header.append(draw(st.sampled_from(("Group", "school", "GROUP"))))
    if draw(st.integers(0, 3)) == 0:
        header.insert(draw(st.integers(0, len(header))), draw(JUNK_HEADER_CELLS))
    return draw(st.permutations(header)) if draw(st.integers(0, 3)) == 0 else header


def cell_strategy(column: str, clean: bool) -> st.SearchStrategy:
    name = column.strip().lower()
    if re.fullmatch(r"e\d+", name):
        return GOOD_LABEL_CELLS if clean else LABEL_CELLS
    if name in ("group", "school"):
        return GOOD_GROUP_CELLS if clean else GROUP_CELLS
    return GOOD_TEXT_CELLS if clean else TEXT_CELLS


def csv_line(draw: st.DrawFn, cells: list[str], clean: bool) -> str:
    """Cells joined by commas, each quoted (escaping quotes) or, unless `clean`, by chance raw (which may
    break the row)."""
    parts = []
    for cell in cells:
        quote = clean or draw(st.integers(0, 4)) > 0 or draw(st.booleans()) and any(c in cell for c in ',"\r\n')
        parts.append('"' + cell.replace('"', '""') + '"' if quote else cell)
    return ",".join(parts)


@st.composite
def almost_valid_csvs(draw: st.DrawFn) -> bytes:
    """Half the files are clean rows under a lab-like header (most of those import); the others
    have rows of the wrong width, empty rows, raw cells that break quoting and bad values."""
    header, clean = draw(csv_headers()), draw(st.booleans())
    lines = [csv_line(draw, header, clean)]
    for _ in range(draw(mostly(st.integers(2, 10), st.integers(0, 1)))):
        width = len(header) + (0 if clean else draw(mostly(st.just(0), st.sampled_from((-1, 1)))))
        if not clean and draw(st.integers(0, 9)) == 0:
            lines.append("")  # an empty row
            continue
        columns = (header + [""])[: max(width, 0)]
        lines.append(csv_line(draw, [draw(cell_strategy(column, clean)) for column in columns], clean))
    text = draw(st.sampled_from(("\n", "\r\n", "\r"))).join(lines) + draw(st.sampled_from(("", "\n", "\r\n")))
    encoding = draw(mostly(st.just("utf-8"), st.sampled_from(("utf-8-sig", "latin-1", "utf-16", "cp1252"))))
    encoded = text.encode(encoding, errors="replace")
    if draw(st.integers(0, 9)) == 0:  # a NUL or a stray byte somewhere
        at = draw(st.integers(0, len(encoded)))
        encoded = encoded[:at] + draw(st.sampled_from((b"\x00", b"\xff", b"\xc3", b"\xef\xbb\xbf"))) + encoded[at:]
    return encoded


csv_bytes = st.one_of(almost_valid_csvs(), almost_valid_csvs(), almost_valid_csvs(), st.binary(max_size=300))


# ----------------------------------------------------------------------------- CSV checks


def assert_dataset_invariants(dataset: NgssDataset) -> None:
    K = len(dataset.label_names)
    assert K > 0 and len(set(dataset.label_names)) == K
    assert all(re.fullmatch(r"E\d+", label) for label in dataset.label_names)
    assert dataset.source == "imported" and dataset.school_names and dataset.task
    assert dataset.school_names == sorted(set(dataset.school_names))
    if not dataset.has_groups:
        assert dataset.school_names == ["all"]
    for split in (dataset.train, dataset.test):
        N = len(split.texts)
        assert N > 0
        assert split.labels.shape == (N, K) and split.labels.dtype == np.int8
        assert set(np.unique(split.labels).tolist()) <= {-1, 0, 1}
        assert all(isinstance(text, str) and text.strip() for text in split.texts)
        assert split.schools.shape == (N,) and split.schools.dtype == np.int64
        assert ((split.schools >= 0) & (split.schools < len(dataset.school_names))).all()


def assert_clear_csv_error(error: CsvImportError, names: tuple[str, ...]) -> None:
    assert isinstance(error, ValueError)
    message = str(error)
    assert any(name in message for name in names), message[:2000]


def snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    """Every entry under `folder`: contents and modification time (nanoseconds)."""
    return {
        str(p.relative_to(folder)): (p.read_bytes() if p.is_file() else b"<dir>", p.stat().st_mtime_ns)
        for p in sorted(folder.rglob("*"))
    }


def load_or_error(*args, names: tuple[str, ...], **kwargs) -> NgssDataset | None:
    try:
        dataset = load_csv(*args, **kwargs)
    except CsvImportError as error:
        assert_clear_csv_error(error, names)
        return None
    assert_dataset_invariants(dataset)
    return dataset


@hostile(CSV_EXAMPLES)
@given(csv_bytes)
@example(b"\xef\xbb\xbf")  # a BOM and nothing else: was StopIteration
@example(b"\xef\xbb\xbf \r\n")
@example(b"text,E1\na\x00b,1\nc,0\n")
@example(b'text,E1\n"a\nb",1\n"c""d",0\n')
@example(b"text,E1\n" + b"a" * 200_000 + b",1\nb,0\n")  # a line past the csv module's field limit
@example(b"\xff\xfet\x00e\x00x\x00t\x00")  # UTF-16
def test_uploaded_csv_is_a_valid_dataset_or_a_clear_error(data):
    load_or_error(data, names=("uploaded train file",))


# (train file, the test file `load_csv` pairs with it by name; for x.csv, an unrelated file)
FILE_NAMES = (("gas_filled_balloons_train.csv", "gas_filled_balloons_test.csv"), ("x.csv", "x_test.csv"),
              ("T_TRAIN.csv", "T_test.csv"))  # fmt: skip


@hostile(CSV_EXAMPLES)
@given(csv_bytes, st.none() | csv_bytes, st.sampled_from(FILE_NAMES))
@example(b"\xef\xbb\xbf", None, ("x_train.csv", "x_test.csv"))
def test_csv_files_on_disk_are_a_valid_dataset_or_a_clear_error_and_never_written(train, test, names):
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        train_path, test_path = root / names[0], root / names[1]
        train_path.write_bytes(train)
        if test is not None:
            test_path.write_bytes(test)  # the sibling `load_csv` pairs by name (or, for x.csv, a bystander)
        before = snapshot(root)
        load_or_error(train_path, names=(str(train_path), str(test_path)))
        assert snapshot(root) == before


@st.composite
def train_test_pairs(draw: st.DrawFn) -> tuple[bytes, bytes, list[str], dict[str, list[str]]]:
    """A clean train file, and a test file with its label columns renamed, dropped, added or shuffled."""
    labels = sorted(draw(st.sets(st.integers(1, 6), min_size=1, max_size=4)))
    train_header = ["text", *(f"E{i}" for i in labels)] + (["Group"] if draw(st.booleans()) else [])
    test_labels = [f"E{i}" for i in labels]
    change = draw(st.sampled_from(("same", "shuffle", "shuffle", "drop", "add", "rename", "case", "groups")))
    if change == "drop" and len(test_labels) > 1:
        test_labels.pop(draw(st.integers(0, len(test_labels) - 1)))
    elif change == "add":
        test_labels.append(f"E{draw(st.integers(7, 9))}")
    elif change == "rename":
        test_labels[0] = f"E{draw(st.integers(7, 9))}"
    elif change == "case":
        test_labels = [label.lower() for label in test_labels]
    test_header = ["response", *draw(st.permutations(test_labels))]
    has_groups = "Group" in train_header
    test_header += (["school"] if has_groups != (change == "groups") else [])
    label_cells, group_cells = st.sampled_from(("0", "1", "-1")), st.sampled_from(("North", "South", "East"))

    def table(header: list[str]) -> tuple[bytes, dict[str, list[str]]]:
        rows = draw(st.integers(2, 5))
        columns = {
            column: [draw(st.text(min_size=1, max_size=8).filter(str.strip)) if column in ("text", "response")
                     else draw(group_cells if column in ("Group", "school") else label_cells) for _ in range(rows)]
            for column in header
        }  # fmt: skip
        lines = [",".join(header)] + [
            ",".join('"' + columns[c][r].replace('"', '""') + '"' for c in header) for r in range(rows)
        ]
        return "\n".join(lines).encode(), columns

    train, _ = table(train_header)
    test, test_columns = table(test_header)
    return train, test, [f"E{i}" for i in labels], test_columns


@hostile(CSV_EXAMPLES)
@given(train_test_pairs())
def test_train_and_test_with_different_label_columns_match_by_name_or_are_refused(pair):
    train, test, train_labels, test_columns = pair
    dataset = load_or_error(train, test, names=("uploaded train file", "uploaded test file"))
    if dataset is None:  # refused: the columns really differ (independent of case), or one side has groups
        upper = {c.upper() for c in test_columns if c not in ("response", "school")}
        assert upper != set(train_labels) or ("school" in test_columns) != (b"Group" in train.split(b"\n")[0])
        return
    assert dataset.label_names == train_labels
    for k, label in enumerate(train_labels):  # the test columns are reordered into the train order
        column = next(c for c in test_columns if c.upper() == label)
        assert dataset.test.labels[:, k].tolist() == [int(v) for v in test_columns[column]]


@hostile(CSV_EXAMPLES)
@given(st.binary(min_size=2, max_size=400), st.integers(1, 399))
@example(b"text,E1\nA,1\nB,0\n" * 3, 47)
def test_oversized_input_is_refused_before_it_is_parsed_or_read(data, max_bytes):
    max_bytes = min(max_bytes, len(data) - 1)

    def never(*args, **kwargs):
        raise AssertionError("parsed or read an oversized file")

    with pytest.MonkeyPatch.context() as patch, tempfile.TemporaryDirectory() as folder:
        patch.setattr(ngss_csv, "_parse_table", never)
        with pytest.raises(CsvImportError, match="uploaded train file: .* over the .* limit"):
            load_csv(data, max_bytes=max_bytes)
        path = Path(folder) / "big_train.csv"
        path.write_bytes(data)
        patch.setattr(Path, "read_bytes", never)
        with pytest.raises(CsvImportError, match="big_train.csv: .* over the .* limit"):
            load_csv(path, max_bytes=max_bytes)


# Response texts: commas, quotes, newlines, NUL, any script; never all whitespace (the importer refuses those).
response_texts = st.text(
    st.characters(exclude_categories=("Cs",)) | st.sampled_from(',"\n\r\x00\ufeff'), min_size=1, max_size=25
).filter(str.strip)
school_name_texts = st.text(min_size=1, max_size=10).filter(lambda name: name == name.strip() and name)


@st.composite
def datasets(draw: st.DrawFn) -> NgssDataset:
    """A dataset as `load_csv` would return it: school names sorted, every school used."""
    label_names = [f"E{i}" for i in sorted(draw(st.sets(st.integers(1, 12), min_size=1, max_size=4)))]
    has_groups = draw(st.booleans())
    pool = draw(st.lists(school_name_texts, min_size=1, max_size=4, unique=True)) if has_groups else ["all"]
    sizes = (draw(st.integers(1, 6)), draw(st.integers(1, 6)))
    groups = [[draw(st.sampled_from(pool)) for _ in range(n)] for n in sizes]
    school_names = sorted({g for split in groups for g in split})
    splits = [
        NgssSplit(
            texts=[draw(response_texts) for _ in range(n)],
            labels=np.array(draw(st.lists(st.lists(st.sampled_from((-1, 0, 1)), min_size=len(label_names),
                                                   max_size=len(label_names)), min_size=n, max_size=n)),
                            dtype=np.int8),
            schools=np.array([school_names.index(g) for g in split_groups], dtype=np.int64),
        )
        for n, split_groups in zip(sizes, groups)
    ]  # fmt: skip
    task = draw(st.sampled_from(("gas_filled_balloons", "my-task", "t", "Lab.2025")))
    return NgssDataset(task, label_names, "imported", school_names, splits[0], splits[1], has_groups=has_groups)


def assert_same_dataset(loaded: NgssDataset, written: NgssDataset) -> None:
    assert (loaded.task, loaded.label_names, loaded.source, loaded.school_names, loaded.has_groups) == (
        written.task, written.label_names, written.source, written.school_names, written.has_groups,
    )  # fmt: skip
    for got, want in ((loaded.train, written.train), (loaded.test, written.test)):
        assert got.texts == want.texts
        assert got.labels.dtype == want.labels.dtype and np.array_equal(got.labels, want.labels)
        assert got.schools.dtype == want.schools.dtype and np.array_equal(got.schools, want.schools)


@hostile(ROUND_TRIP_EXAMPLES)
@given(datasets())
def test_write_csv_then_load_csv_gives_the_same_dataset(dataset):
    with tempfile.TemporaryDirectory() as folder:
        train_path, test_path = write_csv(dataset, folder)
        assert_same_dataset(load_csv(train_path), dataset)  # the sibling _test.csv is paired by name
        uploaded = load_csv(train_path.read_bytes(), test_path.read_bytes(), task_name=dataset.task)
        assert_same_dataset(uploaded, dataset)


# ----------------------------------------------------------------------------- static checks


def python_files() -> list[Path]:
    """The project's Python files: not caches, nor any virtual environment (a folder with `pyvenv.cfg`,
    whatever its name: a benchmark's venv holds other Python versions' syntax)."""
    skip = {".git", "__pycache__", ".venv", "node_modules", ".hypothesis", ".pytest_cache", ".ruff_cache"}
    skip |= {p.parent.name for p in REPO.glob("*/pyvenv.cfg")}
    return sorted(p for p in REPO.rglob("*.py") if not skip & set(p.relative_to(REPO).parts))


UNSAFE_MODULES = {"pickle", "_pickle", "cPickle", "dill", "cloudpickle", "shelve", "marshal"}


def unsafe_deserialization(source: str) -> list[str]:
    """Pickle imports, `torch.load` without `weights_only=True`, `np.load(allow_pickle=True)`, `read_pickle`."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [f"import {a.name}" for a in node.names if a.name.split(".")[0] in UNSAFE_MODULES]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in UNSAFE_MODULES:
            found.append(f"from {node.module} import")
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            true = {k.arg for k in node.keywords if isinstance(k.value, ast.Constant) and k.value.value is True}
            owner = ast.unparse(node.func.value)
            if node.func.attr == "load" and owner == "torch" and "weights_only" not in true:
                found.append(f"line {node.lineno}: torch.load without weights_only=True")
            if node.func.attr == "load" and owner in ("np", "numpy") and "allow_pickle" in true:
                found.append(f"line {node.lineno}: np.load(allow_pickle=True)")
            if node.func.attr == "read_pickle":
                found.append(f"line {node.lineno}: read_pickle")
    return found


def test_the_deserialization_check_catches_what_it_looks_for():
    bad = "import pickle\nfrom dill import loads\nimport torch\ntorch.load(f)\ntorch.load(f, weights_only=False)\n"
    assert len(unsafe_deserialization(bad)) == 4
    assert unsafe_deserialization("import torch\ntorch.load(f, weights_only=True)\n") == []


def test_nothing_deserializes_untrusted_pickles():
    files = python_files()
    offenders = {str(p.relative_to(REPO)): found for p in files if (found := unsafe_deserialization(p.read_text()))}
    assert len(files) > 20 and offenders == {}


SQL_CALLS = {"text", "execute", "exec_driver_sql", "executescript", "executemany"}


def built_string(node: ast.expr) -> bool:
    """An f-string, `%` or `+` formatting, `.format()` or `.join()`: a string built at run time."""
    if isinstance(node, ast.JoinedStr):
        return True
    if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Mod, ast.Add)):
        return True
    return isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in ("format", "join")


def sql_from_strings(source: str) -> list[str]:
    """Calls of `text(...)` (SQLAlchemy's raw SQL) with anything but a literal, and `execute(...)`-like
    calls with a string built at run time."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Call) or not node.args:
            continue
        name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
        if name not in SQL_CALLS:
            continue
        argument = node.args[0]
        literal = isinstance(argument, ast.Constant) and isinstance(argument.value, str)
        if (name == "text" and not literal) or built_string(argument):
            found.append(f"line {node.lineno}: {ast.unparse(node)[:80]}")
    return found


def test_the_sql_check_catches_what_it_looks_for():
    bad = (
        "session.execute(text(f'SELECT * FROM t WHERE id = {x}'))\n"
        "conn.execute('DELETE FROM t WHERE id = %s' % x)\n"
        "op.execute('DROP TABLE ' + name)\n"
        "sa.text(query)\n"
    )
    assert len(sql_from_strings(bad)) == 4
    good = (
        "session.execute(text('SELECT 1'))\n"
        "session.execute(select(T).where(T.id == x))\n"
        "cursor.execute('PRAGMA x')\n"
    )
    assert sql_from_strings(good) == []


def test_no_sql_is_built_from_strings():
    files = [REPO / "database.py", *sorted((REPO / "migrations").rglob("*.py"))]
    offenders = {str(p.relative_to(REPO)): found for p in files if (found := sql_from_strings(p.read_text()))}
    assert len(files) > 2 and offenders == {}


def test_the_app_listens_on_localhost_by_default():
    config = tomllib.loads((REPO / ".streamlit" / "config.toml").read_text())
    assert config["server"]["address"] in ("localhost", "127.0.0.1", "::1")


# ----------------------------------------------------------------------------- the CLI's --db, --name and ids

CLI_EXAMPLES = 150  # generated command lines, each run in-process against its own scratch folder
PASSWORD = "hunter2-fpl"  # in every URL that has a password: it must never be printed
TINY_RUN = [
    "--set", "model.name=mlp", "--set", "data.max_train_examples=600", "--set", "federation.num_clients=3",
    "--set", "federation.clients_per_round=2", "--set", "federation.rounds=1",
]  # fmt: skip
ODD_DATABASES = (
    "fresh", "fresh", "fresh", "not a url", "", "folder", "text file", "read-only", "sqlite://",
    f"postgresql+psycopg://fpl:{PASSWORD}@127.0.0.1:9/lab", f"mysql://fpl:{PASSWORD}@127.0.0.1:9/lab",
    f"postgresql://fpl:{PASSWORD}@127.0.0.1:9/lab", "sqlite:///a\x00b.db", "nosuchdialect://x",
)  # fmt: skip
ID_TEXTS = st.integers(1, 3).map(str) | st.integers(-(2**70), 2**70).map(str) | st.sampled_from(
    ("0", "-1", str(2**31 - 1), str(2**31), str(2**63), "1e3", "0x10", " 7 ", "\uff17", "", "1" * 5000)
)  # fmt: skip
NAMES = mostly(
    st.text(st.characters(exclude_categories=("Cc", "Cs", "Zl", "Zp")), max_size=200),
    st.text(max_size=250) | st.sampled_from(("x" * 200, "x" * 201, "\x00", "\x1b[31mred", "\ud800", "a\nb")),
)  # fmt: skip


def database_url(kind: str, folder: Path) -> str:
    """A --db value of the given kind, inside `folder` where it is a file."""
    if kind == "fresh":
        return f"sqlite:///{folder / 'fresh.db'}"
    if kind == "folder":
        return f"sqlite:///{folder}"
    if kind == "text file":
        (folder / "notes.txt").write_text("just text, not a database\n" * 50)
        return f"sqlite:///{folder / 'notes.txt'}"
    if kind == "read-only":
        from database import ExperimentStore

        ExperimentStore(f"sqlite:///{folder / 'ro.db'}").engine.dispose()
        return f"sqlite:///file:{folder / 'ro.db'}?mode=ro&uri=true"
    return kind


@st.composite
def cli_calls(draw: st.DrawFn) -> tuple[str, list[str]]:
    """(database kind, argv without --db): list, show, resume, score with any id, run with any name."""
    command = draw(st.sampled_from(("list", "show", "resume", "score", "run", "run")))
    kind = draw(mostly(st.sampled_from(ODD_DATABASES), st.text(st.characters(exclude_characters="/"), max_size=20)))
    if command == "list":
        return kind, ["list"]
    if command == "run":
        return kind, ["run", "--name", draw(NAMES), *TINY_RUN]
    argv = [command, draw(ID_TEXTS)]
    return kind, argv + (["--text", "a response"] if command == "score" else [])


@hostile(CLI_EXAMPLES)
@given(cli_calls())
@example(("fresh", ["run", "--name", "x" * 201, *TINY_RUN]))
@example(("fresh", ["run", "--name", "a\x00b", *TINY_RUN]))
@example(("fresh", ["show", str(2**63)]))
@example(("read-only", ["run", "--name", "ok", *TINY_RUN]))
@example((f"postgresql+psycopg://fpl:{PASSWORD}@127.0.0.1:9/lab", ["show", "1"]))
def test_cli_database_names_and_ids_give_a_result_or_one_line_error(call):
    """Exit 0, 1 (no such experiment) or 2 (bad input, an unusable database), one line on stderr for an
    error, no traceback, no password; a refused run stores nothing, an accepted one stores its name."""
    import cli
    from database import ExperimentStore

    kind, argv = call
    with tempfile.TemporaryDirectory() as scratch, pytest.MonkeyPatch.context() as patch:
        folder = Path(scratch)
        patch.chdir(folder)  # a relative SQLite path (generated text) lands in the scratch folder
        patch.delenv("DATABASE_URL", raising=False)
        patch.setattr(cli, "_execute", lambda store, experiment_id, config, *, as_json: cli.EXIT_OK)  # store only
        url = database_url(kind, folder)
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = cli.main([*argv, "--db", url])
        out, err = out.getvalue(), err.getvalue()
        event(f"{argv[0]}: exit {code}")  # --hypothesis-show-statistics: how often each outcome came up
        assert code in (0, 1, 2), (code, err)
        assert "Traceback" not in out + err and PASSWORD not in out + err, err
        if code != 0:
            assert err.startswith("error: ") and len(err.splitlines()) == 1, err
        if kind == "fresh" and argv[0] == "run":
            stored = ExperimentStore(url).list_experiments() if (folder / "fresh.db").exists() else []
            name = argv[2]
            if code == 0:
                assert [e.name for e in stored] == [name]
            else:  # refused: a name the database cannot hold (too long, control characters)
                unprintable = [c for c in name if unicodedata.category(c) in ("Cc", "Cs", "Zl", "Zp")
                               or 0x202A <= ord(c) <= 0x202E or 0x2066 <= ord(c) <= 0x2069]  # fmt: skip
                assert stored == [] and (len(name) > 200 or unprintable)
