"""The lab's CSV format for NGSS responses (NGSS.md, "Real data"): `load_csv` imports and
validates a train file (and its test file), `write_csv` writes a dataset back, and
`summarize_import` says what an import brought in (blank answers, responses cut to a model's
max_length). Every failure is a `CsvImportError` naming the file, and nothing is half-imported.

An error message never quotes the file: a path can name any file (`/proc/self/environ`, a
symlink to a secret), and the message is stored with the run and shown. It says what is wrong
and where (line, column number; a column's name only when it is one of the format's: text,
response, Group, school, E1, E2, ...), and quotes a cell only when it sits in a rubric-element
column of a file whose header parsed as the lab's and is short and printable ('2', 'yes'). The
file's name is shown with control characters escaped, so a message is one line and holds no NUL.
"""

from __future__ import annotations

import csv
import io
import math
import re
import unicodedata
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ngss.tasks import NgssDataset, NgssSplit

# ----------------------------------------------------------------------------- CSV import / export


class CsvImportError(ValueError):
    """A CSV file that cannot be imported; the message names the file and, where it helps, the line/column."""


_LABEL_COLUMN = re.compile(r"[Ee]\d+")
_TEXT_COLUMNS = ("text", "response")
_GROUP_COLUMNS = ("group", "school")
_SPLIT_FILE = re.compile(r"(?P<slug>.+)_(?P<split>train|test)\.csv", re.IGNORECASE)


@dataclass(frozen=True)
class _Table:
    """One parsed file: texts, (N, K) int8 labels, label names, and group names per row (or None)."""

    name: str
    texts: list[str]
    labels: np.ndarray
    label_names: list[str]
    groups: list[str] | None


def _shown_path(path: str | Path) -> str:
    """A file name for a message: control characters, line separators and lone surrogates escaped
    (one line, no NUL; the rule of `runs.workers.printable`, which this package cannot import)."""
    escaped = ("Cc", "Cs", "Zl", "Zp")  # controls, lone surrogates, line and paragraph separators
    return "".join(
        char.encode("unicode_escape").decode("ascii") if unicodedata.category(char) in escaped else char
        for char in str(path)
    )


def _read_text(source: str | Path | bytes, role: str, max_bytes: int) -> tuple[str, str]:
    """(display name, decoded text) of a path or uploaded bytes, size- and encoding-checked.
    Reads at most `max_bytes` + 1 bytes: a file that reports no size (`/proc`) is bounded too."""
    limit = f"{max_bytes / 2**20:.1f} MiB"
    if isinstance(source, (bytes, bytearray)):
        name, data = f"uploaded {role} file", bytes(source)
    else:
        path = Path(source).expanduser()
        name = _shown_path(path)
        if not path.exists():
            raise CsvImportError(f"{name}: no such file")
        if not path.is_file():
            raise CsvImportError(f"{name}: not a regular file (a folder or a device): give a CSV file")
        try:
            if path.stat().st_size > max_bytes:
                raise CsvImportError(f"{name}: {path.stat().st_size / 2**20:.1f} MiB is over the {limit} limit")
            with path.open("rb") as handle:
                data = handle.read(max_bytes + 1)
        except OSError as error:  # no permission, a file gone since
            raise CsvImportError(f"{name}: cannot be read ({error.strerror or type(error).__name__})") from None
    if len(data) > max_bytes:
        raise CsvImportError(f"{name}: {len(data) / 2**20:.1f} MiB is over the {limit} limit")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise CsvImportError(
            f"{name}: not UTF-8 text (invalid byte at offset {error.start}); save it as 'CSV UTF-8'"
        ) from None
    if not text.strip():  # after decoding: a byte-order mark alone is empty too
        raise CsvImportError(f"{name}: the file is empty")
    return name, text


_SHOWN_CELL_CHARS = 12  # a rubric cell longer than this (or not printable) is described, not quoted


def _label_value(name: str, line: int, column: str, cell: str) -> int:
    value = cell.strip()
    if value in ("0", "1", "-1"):
        return int(value)
    try:
        number = float(value)
    except ValueError:
        number = math.nan
    if number in (0.0, 1.0, -1.0):  # "1.0" from a spreadsheet
        return int(number)
    if not cell.strip():
        shown = "an empty cell"
    elif len(cell) <= _SHOWN_CELL_CHARS and cell.isprintable():  # a cell of a parsed rubric column: "2", "yes"
        shown = repr(cell)
    else:
        shown = f"a {len(cell)}-character value"
    raise CsvImportError(f"{name}: line {line}, column {column}: {shown} is not 0, 1 or -1 (-1 = unscored)")


def _one_column(name: str, header: list[str], vocabulary: tuple[str, ...], what: str) -> int | None:
    """The index of the one header column whose name (any case) is in `vocabulary`, None if none.
    Two of them (text and response, Group and school, a name twice) raise CsvImportError naming
    both: taking either would silently ignore the other column's values."""
    matches = [i for i, column in enumerate(header) if column.lower() in vocabulary]
    if len(matches) > 1:
        first, second = matches[:2]
        raise CsvImportError(
            f"{name}: two {what} columns, {header[first]!r} (column {first + 1}) and {header[second]!r} "
            f"(column {second + 1}): keep one of them"
        )
    return matches[0] if matches else None


def _parse_table(name: str, text: str) -> _Table:
    """Validate and parse the lab's layout: text column, E* columns, optional Group/school column."""
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = [column.strip() for column in next(reader)]
        records = [(reader.line_num, row) for row in reader if row]
    except csv.Error as error:
        raise CsvImportError(f"{name}: line {reader.line_num}: not valid CSV ({error})") from None
    label_columns = [i for i, column in enumerate(header) if _LABEL_COLUMN.fullmatch(column)]
    group_column = _one_column(name, header, _GROUP_COLUMNS, "group (Group/school)")
    text_column = _one_column(name, header, _TEXT_COLUMNS, "text (text/response)")
    text_column = 0 if text_column is None else text_column
    if not label_columns:
        raise CsvImportError(
            f"{name}: not a CSV file in the lab's format: its first line ({len(header)} field(s)) names no "
            "rubric-element columns (E1, E2, ...)"
        )
    if text_column in label_columns or text_column == group_column:
        raise CsvImportError(
            f"{name}: no text column: name it 'text' or 'response', or put the responses in the first column "
            f"(the first column is {'a rubric element' if text_column in label_columns else 'the group column'})"
        )
    label_names = [header[i].upper() for i in label_columns]
    if len(set(label_names)) < len(label_names):
        raise CsvImportError(f"{name}: a rubric-element column appears twice: {', '.join(label_names)}")
    if not records:
        raise CsvImportError(f"{name}: the file has a header but no rows")
    texts, labels, groups = [], np.zeros((len(records), len(label_columns)), dtype=np.int8), []
    for row_index, (line, row) in enumerate(records):
        if len(row) != len(header):
            raise CsvImportError(f"{name}: line {line}: {len(row)} field(s), but the header has {len(header)}")
        texts.append(row[text_column])  # a blank answer is a real one: kept, scored as written (`count_blank`)
        for k, i in enumerate(label_columns):
            labels[row_index, k] = _label_value(name, line, header[i], row[i])
        if group_column is not None:
            group = row[group_column].strip()
            if not group:
                raise CsvImportError(f"{name}: line {line}: empty {header[group_column]!r} value")
            groups.append(group)
    return _Table(name, texts, labels, label_names, groups if group_column is not None else None)


def _matched_test(train: _Table, test: _Table) -> _Table:
    """The test table with its label columns in the train table's order; mismatches raise."""
    if set(test.label_names) != set(train.label_names):
        raise CsvImportError(
            f"{test.name}: rubric-element columns {', '.join(test.label_names)} differ from "
            f"{train.name}'s {', '.join(train.label_names)}"
        )
    if (train.groups is None) != (test.groups is None):
        with_groups, without = (train, test) if train.groups is not None else (test, train)
        raise CsvImportError(f"{without.name}: no Group/school column, but {with_groups.name} has one")
    order = [test.label_names.index(label) for label in train.label_names]
    return _Table(test.name, test.texts, test.labels[:, order], train.label_names, test.groups)


def _split_off_test(
    schools: np.ndarray, test_fraction: float, seed: int, name: str
) -> tuple[np.ndarray, np.ndarray]:
    """(train rows, test rows), sorted: `test_fraction` of each school (at least one row of
    any school with two or more), seeded."""
    rng = np.random.default_rng(seed)
    test_rows = []
    for school in np.unique(schools):
        rows = rng.permutation(np.flatnonzero(schools == school))
        count = min(max(round(len(rows) * test_fraction), 1), len(rows) - 1)
        test_rows.append(rows[:count])
    test = np.sort(np.concatenate(test_rows))
    if len(test) == 0:
        raise CsvImportError(f"{name}: too few rows to split off a test set (give a test file)")
    return np.setdiff1d(np.arange(len(schools)), test), test


def _subset(texts: list[str], labels: np.ndarray, schools: np.ndarray, rows: np.ndarray) -> NgssSplit:
    return NgssSplit([texts[i] for i in rows], labels[rows], schools[rows])


def load_csv(
    train: str | Path | bytes,
    test: str | Path | bytes | None = None,
    *,
    task_name: str | None = None,
    max_bytes: int = 20 * 1024 * 1024,
    test_fraction: float = 0.2,
    seed: int = 0,
) -> NgssDataset:
    """Import the lab's CSV files (NGSS.md, "Real data") as an NgssDataset with source "imported".

    Layout: the response text in the first column (or a column named `text`/`response`;
    a blank one is a student's answer, kept as written: `summarize_import` counts them),
    one column per rubric element `E1`, `E2`, ... holding 0, 1 or -1 (unscored, kept as
    -1), an optional `Group` or `school` column naming each row's school. Without `test`,
    a path named `{slug}_train.csv` takes its sibling `{slug}_test.csv` if there is one;
    otherwise `test_fraction` of each school is split off, seeded. Without a group column
    every row is school 0 ("all") and `has_groups` is false. School indices follow the
    sorted school names. Any problem raises `CsvImportError` and nothing is returned;
    each file is read whole and at most `max_bytes` long.
    """
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    if max_bytes <= 0:
        raise ValueError(f"max_bytes must be positive, got {max_bytes}")
    slug = None
    if not isinstance(train, (bytes, bytearray)):
        match = _SPLIT_FILE.fullmatch(Path(train).name)
        slug = match.group("slug") if match else Path(train).stem
        sibling = Path(train).with_name(f"{match.group('slug')}_test.csv") if match else None
        if test is None and sibling is not None and sibling.is_file():
            test = sibling
    train_table = _parse_table(*_read_text(train, "train", max_bytes))
    test_table = None
    if test is not None:
        test_table = _matched_test(train_table, _parse_table(*_read_text(test, "test", max_bytes)))
    has_groups = train_table.groups is not None
    tables = [train_table] + ([test_table] if test_table is not None else [])
    school_names = sorted({g for table in tables for g in table.groups}) if has_groups else ["all"]
    index = {school: i for i, school in enumerate(school_names)}

    def schools_of(table: _Table) -> np.ndarray:
        return np.array([index[g] for g in table.groups] if has_groups else [0] * len(table.texts), dtype=np.int64)

    train_schools = schools_of(train_table)
    if test_table is None:
        train_rows, test_rows = _split_off_test(train_schools, test_fraction, seed, train_table.name)
        train_split = _subset(train_table.texts, train_table.labels, train_schools, train_rows)
        test_split = _subset(train_table.texts, train_table.labels, train_schools, test_rows)
    else:
        train_split = NgssSplit(train_table.texts, train_table.labels, train_schools)
        test_split = NgssSplit(test_table.texts, test_table.labels, schools_of(test_table))
    return NgssDataset(
        task=task_name or slug or "imported",
        label_names=train_table.label_names,
        source="imported",
        school_names=school_names,
        train=train_split,
        test=test_split,
        has_groups=has_groups,
    )


def write_csv(dataset: NgssDataset, directory: str | Path) -> tuple[Path, Path]:
    """Write `{task}_train.csv` and `{task}_test.csv` in the lab's layout (text, E*, Group);
    `load_csv` on the train path reads the same dataset back. Returns (train path, test path)."""
    directory = Path(directory).expanduser()
    directory.mkdir(parents=True, exist_ok=True)
    paths = (directory / f"{dataset.task}_train.csv", directory / f"{dataset.task}_test.csv")
    header = ["text", *dataset.label_names] + (["Group"] if dataset.has_groups else [])
    for path, split in zip(paths, (dataset.train, dataset.test)):
        with path.open("w", encoding="utf-8", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(header)
            for text, labels, school in zip(split.texts, split.labels.tolist(), split.schools.tolist()):
                group = [dataset.school_names[school]] if dataset.has_groups else []
                writer.writerow([text, *labels, *group])
    return paths


# ----------------------------------------------------------------------------- import summary


@dataclass(frozen=True)
class ImportSummary:
    """What an import brought in, for the page and the CLI to say: responses (train, test), how many of them are
    blank (kept: a blank answer is a student's answer and is scored as written), and how many are longer than
    the model reads (`max_length` tokens, special tokens included: cut there), None when not counted."""

    train: int
    test: int
    blank: int
    truncated: int | None = None
    max_length: int | None = None

    def text(self) -> str:
        """`812 + 203 responses imported (train + test) · 3 blank, scored as written · 5 cut to 128 tokens`."""
        parts = [f"{self.train} + {self.test} responses imported (train + test)"]
        if self.blank:
            parts.append(f"{self.blank} blank, scored as written")
        if self.truncated is not None:
            parts.append(f"{self.truncated} cut to {self.max_length} tokens")
        return " · ".join(parts)


def count_blank(texts: Sequence[str]) -> int:
    """How many responses are empty or only whitespace."""
    return sum(not text.strip() for text in texts)


Tokenizer = Callable[..., Mapping[str, list[list[int]]]]  # a Hugging Face tokenizer: texts → {"input_ids": ...}


def count_truncated(tokenizer: Tokenizer, texts: Sequence[str], *, max_length: int) -> int:
    """How many of `texts` a Hugging Face `tokenizer` turns into more than `max_length` tokens (special tokens
    included, as `text_models.encode` counts them), so the model reads only their first `max_length`."""
    if not texts:
        return 0
    lengths = [len(ids) for ids in tokenizer(list(texts), add_special_tokens=True)["input_ids"]]
    return sum(length > max_length for length in lengths)


def summarize_import(
    dataset: NgssDataset, *, tokenizer: Tokenizer | None = None, max_length: int | None = None
) -> ImportSummary:
    """The `ImportSummary` of a loaded dataset; truncation is counted only with a tokenizer and `max_length`."""
    texts = [*dataset.train.texts, *dataset.test.texts]
    truncated = None
    if tokenizer is not None and max_length is not None:
        truncated = count_truncated(tokenizer, texts, max_length=max_length)
    return ImportSummary(len(dataset.train), len(dataset.test), count_blank(texts), truncated, max_length)
