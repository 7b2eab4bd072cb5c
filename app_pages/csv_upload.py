"""The lab's CSV files uploaded in the sidebar: checked, then saved where the worker reads them.

No Streamlit here: the sidebar hands in (file name, bytes) pairs. `check_upload` validates
them completely (names, sizes, `ngss_data.load_csv`) without writing anything; `CsvUpload.save`
then writes them under `<data_dir>/uploads/<sha256 prefix>/`, all or nothing: into a
temporary folder first, renamed into place once every file is complete.

    upload = check_upload([("balloons_train.csv", data)])   # CsvImportError if anything is wrong
    path = upload.train_path(data_dir)                       # for data.csv_path, before saving
    upload.save(data_dir)                                    # the same path, files in place
    remove_upload(store.delete_experiment(experiment_id))    # its folder goes once no run names it
"""

from __future__ import annotations

import hashlib
import re
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ngss.data import CsvImportError, load_csv

MAX_UPLOAD_MB = 20  # per file, as ngss_data.load_csv's default limit
MAX_FILE_BYTES = MAX_UPLOAD_MB * 2**20
DIGEST_CHARS = 16  # of the sha256 hex digest naming the folder
_DIGEST_FOLDER = re.compile(rf"[0-9a-f]{{{DIGEST_CHARS}}}")
_SPLIT_NAME = re.compile(r"(?P<slug>[A-Za-z0-9][A-Za-z0-9_.-]*)_(?P<split>train|test)\.csv", re.IGNORECASE)


@dataclass(frozen=True)
class CsvUpload:
    """Validated upload: the task slug, the train file's bytes and, if given, the test file's."""

    slug: str
    train: bytes
    test: bytes | None

    def files(self) -> dict[str, bytes]:
        """Saved name → bytes: `{slug}_train.csv` and `{slug}_test.csv`, the names `load_csv` pairs."""
        named = {f"{self.slug}_train.csv": self.train}
        if self.test is not None:
            named[f"{self.slug}_test.csv"] = self.test
        return named

    def folder(self, data_dir: str | Path) -> Path:
        """`<data_dir>/uploads/<the first 16 hex digits of the sha256 of the files>`."""
        digest = hashlib.sha256()
        for name, data in self.files().items():
            digest.update(f"{name}\0{len(data)}\0".encode())
            digest.update(data)
        return Path(data_dir).expanduser() / "uploads" / digest.hexdigest()[:DIGEST_CHARS]

    def train_path(self, data_dir: str | Path) -> Path:
        return self.folder(data_dir) / f"{self.slug}_train.csv"

    def save(self, data_dir: str | Path) -> Path:
        """Write the files (once: the same files are already there under the same digest); returns the train path."""
        folder = self.folder(data_dir)
        if folder.is_dir():
            return self.train_path(data_dir)
        folder.parent.mkdir(parents=True, exist_ok=True)
        partial = Path(tempfile.mkdtemp(prefix=".partial-", dir=folder.parent))
        try:
            for name, data in self.files().items():
                (partial / name).write_bytes(data)
            partial.rename(folder)
        except OSError:
            shutil.rmtree(partial, ignore_errors=True)
            if not folder.is_dir():  # another session saved the same files first: theirs serve
                raise
        return self.train_path(data_dir)


def remove_upload(csv_path: str | None) -> bool:
    """Remove the upload folder that `csv_path` lies in (`<data_dir>/uploads/<digest>/`, with its
    test file), and say whether one was removed. `csv_path` is what `ExperimentStore.delete_experiment`
    returns: the deleted run's data file once no stored experiment names it (None otherwise). A file
    that is not an upload (a path the user typed, anywhere else) is never touched."""
    if not csv_path:
        return False
    folder = Path(csv_path).expanduser().parent
    if folder.parent.name != "uploads" or not _DIGEST_FOLDER.fullmatch(folder.name) or not folder.is_dir():
        return False
    if folder.is_symlink():  # not a folder `save` made: leave what it points at alone
        return False
    shutil.rmtree(folder, ignore_errors=True)  # the run is gone already: a file held open elsewhere stays
    return not folder.exists()


def check_upload(files: Sequence[tuple[str, bytes]]) -> CsvUpload:
    """Validate uploaded (name, bytes) pairs: one `{slug}_train.csv` and at most its `{slug}_test.csv`,
    each at most 20 MiB, in the lab's format (`ngss_data.load_csv`). Raises `CsvImportError` naming the file."""
    if not files:
        raise CsvImportError("no file uploaded: add the lab's {task}_train.csv (and optionally its _test.csv)")
    by_split: dict[str, tuple[str, str, bytes]] = {}
    for name, data in files:
        base = Path(name).name
        match = _SPLIT_NAME.fullmatch(base)
        if match is None:
            raise CsvImportError(
                f"{base}: name the files {{task}}_train.csv and {{task}}_test.csv (letters, digits, _ . -)"
            )
        split = match.group("split").lower()
        if split in by_split:
            raise CsvImportError(f"{base}: a second {split} file; upload one {split} file ({by_split[split][0]})")
        if len(data) > MAX_FILE_BYTES:
            raise CsvImportError(f"{base}: {len(data) / 2**20:.1f} MiB is over the {MAX_UPLOAD_MB} MiB limit")
        by_split[split] = (base, match.group("slug"), bytes(data))
    if "train" not in by_split:
        raise CsvImportError(f"{by_split['test'][0]}: a test file needs its {by_split['test'][1]}_train.csv")
    train_name, slug, train = by_split["train"]
    test_name, test = None, None
    if "test" in by_split:
        test_name, test_slug, test = by_split["test"]
        if test_slug != slug:
            raise CsvImportError(f"{test_name}: the test file of {train_name} must be named {slug}_test.csv")
    try:
        load_csv(train, test, task_name=slug, max_bytes=MAX_FILE_BYTES)
    except CsvImportError as error:  # load_csv calls bytes "uploaded train/test file": name them
        message = str(error).replace("uploaded train file", train_name)
        raise CsvImportError(message.replace("uploaded test file", test_name or "the test file")) from None
    return CsvUpload(slug, train, test)
