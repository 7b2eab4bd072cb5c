"""The page's zip upload of your own images (`app_pages/folder_upload.py`): a zipped folder is unpacked to
the same images `load_folder` reads from the original; unsafe archives (absolute paths, `..`, links, too many
files, a zip bomb) and bad images are refused naming the entry, with nothing left on disk."""

from __future__ import annotations

import io
import stat
import tempfile
import zipfile
from pathlib import Path

import pytest
import torch
from test_image_folder import make_folder

from app_pages import folder_upload
from app_pages.csv_upload import remove_upload
from app_pages.folder_upload import check_zip
from engine.image_folder import FolderError, load_folder


def zipped(root: Path, *, wrapper: str = "my_images", extra: dict[str, bytes] | None = None) -> bytes:
    """`root`'s files zipped under `wrapper/` (as "compress folder" does), plus `extra` entries as given."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(root.rglob("*")):
            if path.is_file():
                archive.write(path, f"{wrapper}/{path.relative_to(root).as_posix()}" if wrapper else
                              path.relative_to(root).as_posix())  # fmt: skip
        for name, content in (extra or {}).items():
            archive.writestr(name, content)
    return buffer.getvalue()


@pytest.fixture
def scratch(tmp_path, monkeypatch) -> Path:
    """Where temporary folders go: empty again after every check, refused or not."""
    folder = tmp_path / "scratch"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    return folder


def test_a_zipped_folder_saves_the_images_load_folder_reads(tmp_path, scratch):
    root = make_folder(tmp_path / "images", per_cell=4)
    data = zipped(root, extra={"__MACOSX/my_images/._alpha": b"resource fork", "my_images/.DS_Store": b"x"})
    upload = check_zip(data, image_size=16, channels=3)
    data_dir = tmp_path / "data"
    assert not data_dir.exists() and not any(scratch.iterdir())  # checking wrote nothing that stays
    path = upload.save(data_dir)
    assert path == upload.folder_path(data_dir) and path.parent.parent == data_dir / "uploads"
    assert upload.save(data_dir) == path  # the same zip again: the same folder
    saved, original = load_folder(path, image_size=16, channels=3), load_folder(root, image_size=16, channels=3)
    assert torch.equal(saved.train_x, original.train_x) and torch.equal(saved.test_y, original.test_y)
    assert saved.group_names == original.group_names == ("alpha", "beta", "gamma")


def test_a_zip_of_label_folders_needs_no_wrapper(tmp_path, scratch):
    root = make_folder(tmp_path / "images", clients=(), per_cell=4)
    upload = check_zip(zipped(root, wrapper=""), image_size=16, channels=1)
    assert sorted({name.split("/")[0] for name in upload.files}) == ["circle", "cross", "square", "stripes", "triangle"]


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        ("/etc/evil.png", "/etc/evil.png: an absolute path or '..'"),
        ("my_images/../../evil.png", "my_images/../../evil.png: an absolute path or '..'"),
        ("C:/evil.png", "an absolute path"),
        ("my_images\\alpha\\x.png", "an absolute path"),
        ("my_images/alpha/circle/bad.png", "alpha/circle/bad.png: not a readable image"),
        ("my_images/alpha/circle/notes.txt", "alpha/circle/notes.txt: not a .png"),
    ],
)
def test_unsafe_or_bad_entries_are_refused_by_name(tmp_path, scratch, entry, expected):
    root = make_folder(tmp_path / "images", per_cell=3)
    with pytest.raises(FolderError) as refusal:
        check_zip(zipped(root, extra={entry: b"SECRET bytes"}), image_size=16, channels=3)
    message = str(refusal.value)
    assert expected in message and "SECRET" not in message
    assert not any(scratch.iterdir()) and not (tmp_path / "data").exists()


def test_a_symbolic_link_entry_is_refused(tmp_path, scratch):
    root = make_folder(tmp_path / "images", per_cell=3)
    buffer = io.BytesIO(zipped(root))
    with zipfile.ZipFile(buffer, "a") as archive:
        link = zipfile.ZipInfo("my_images/alpha/circle/link.png")
        link.external_attr = (stat.S_IFLNK | 0o777) << 16
        archive.writestr(link, "/etc/passwd")
    with pytest.raises(FolderError, match="link.png: a symbolic link"):
        check_zip(buffer.getvalue(), image_size=16, channels=3)


def test_a_zip_bomb_and_too_many_files_are_refused_before_unpacking(tmp_path, scratch, monkeypatch):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("bomb/a/zeros.png", bytes(3 * 2**20))  # 3 MiB of zeros: a few KiB deflated
    assert len(buffer.getvalue()) < 2**16
    monkeypatch.setattr(folder_upload, "MAX_UNCOMPRESSED_MB", 1)
    with pytest.raises(FolderError, match="more than .* files or 1 MiB"):
        check_zip(buffer.getvalue(), image_size=16, channels=3)
    monkeypatch.setattr(folder_upload, "MAX_UNCOMPRESSED_MB", 200)
    monkeypatch.setattr(folder_upload, "MAX_FILES", 10)
    root = make_folder(tmp_path / "images", per_cell=3)
    with pytest.raises(FolderError, match="more than 10 files"):
        check_zip(zipped(root), image_size=16, channels=3)
    assert not any(scratch.iterdir())


def test_not_a_zip_is_one_clear_line(scratch):
    with pytest.raises(FolderError, match="^data.folder_path: the upload is not a readable zip archive"):
        check_zip(b"PK\x03\x04 definitely not a zip", image_size=16, channels=3)


def test_remove_upload_takes_a_saved_folder_away(tmp_path, scratch):
    root = make_folder(tmp_path / "images", per_cell=3)
    path = check_zip(zipped(root), image_size=16, channels=3).save(tmp_path / "data")
    assert remove_upload(str(path)) and not path.parent.exists()
    assert (tmp_path / "data" / "uploads").is_dir()  # only the digest folder goes
