"""Your own images uploaded in the sidebar as one zip: checked, then saved where the worker reads them.

No Streamlit here: the sidebar hands in the zip's bytes. `check_zip` refuses an unsafe archive before
anything is written (an absolute path, a `..` part, a symbolic link, more than MAX_FILES files or
MAX_UNCOMPRESSED_MB once unpacked: a zip bomb), then unpacks it into a private temporary folder and
checks it as a run would load it (`image_folder.check_folder`: layout, every image decoded, a test
split), removing that folder whatever the outcome. `FolderUpload.save` then writes the images under
`<data_dir>/uploads/<sha256 prefix>/images/`, all or nothing, as the CSV upload does (csv_upload.py:
the same uploads folder, digest and `remove_upload`, which removes a folder upload's digest folder too).

    upload = check_zip(data, image_size=32, channels=3)  # FolderError (one line, the entry named) if not
    path = upload.folder_path(data_dir)                   # for data.folder_path, before saving
    upload.save(data_dir)                                 # the same path, images in place

A zip of one folder (`my_images/<client>/<label>/…`, as "compress folder" makes it) is unwrapped to that
folder's contents; macOS's `__MACOSX/` and hidden files are left out.
"""

from __future__ import annotations

import hashlib
import io
import shutil
import stat
import tempfile
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from app_pages.csv_upload import DIGEST_CHARS

MAX_ZIP_MB = 200  # the upload itself (the sidebar's max_upload_size)
MAX_UNCOMPRESSED_MB = 200  # everything in it, unpacked, by the sizes its entries declare (zipfile reads no more)
MAX_FILES = 20_000
IMAGES_FOLDER = "images"  # <data_dir>/uploads/<digest>/images: data.folder_path


@dataclass(frozen=True)
class FolderUpload:
    """A checked image zip: `files` maps each image's path inside the folder (POSIX) to its bytes."""

    files: dict[str, bytes]

    def folder(self, data_dir: str | Path) -> Path:
        """`<data_dir>/uploads/<the first 16 hex digits of the sha256 of the names and bytes>`."""
        digest = hashlib.sha256()
        for name in sorted(self.files):
            digest.update(f"{name}\0{len(self.files[name])}\0".encode())
            digest.update(self.files[name])
        return Path(data_dir).expanduser() / "uploads" / digest.hexdigest()[:DIGEST_CHARS]

    def folder_path(self, data_dir: str | Path) -> Path:
        """What data.folder_path names: the images folder inside the upload's digest folder."""
        return self.folder(data_dir) / IMAGES_FOLDER

    def save(self, data_dir: str | Path) -> Path:
        """Write the images (once: the same zip is already there under the same digest); returns the folder path."""
        folder = self.folder(data_dir)
        if folder.is_dir():
            return self.folder_path(data_dir)
        folder.parent.mkdir(parents=True, exist_ok=True)
        partial = Path(tempfile.mkdtemp(prefix=".partial-", dir=folder.parent))
        try:
            write_files(self.files, partial / IMAGES_FOLDER)
            partial.rename(folder)
        except OSError:
            shutil.rmtree(partial, ignore_errors=True)
            if not folder.is_dir():  # another session saved the same images first: theirs serve
                raise
        return self.folder_path(data_dir)


def check_zip(data: bytes, *, image_size: int, channels: int) -> FolderUpload:
    """Validate an uploaded zip of images (see the module docstring); raises `FolderError` naming the
    entry or the limit. Nothing is left on disk either way."""
    from engine.image_folder import FolderError, check_folder  # torch, PIL: at Start only

    if len(data) > MAX_ZIP_MB * 2**20:
        raise FolderError(f"the zip is {len(data) / 2**20:.1f} MiB, over the {MAX_ZIP_MB} MiB limit")
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            entries = safe_entries(archive)
            files = {name: archive.read(info) for name, info in unwrapped(entries).items()}
    except FolderError:
        raise
    except (zipfile.BadZipFile, zipfile.LargeZipFile, NotImplementedError, RuntimeError, EOFError, ValueError,
            zlib.error) as error:  # fmt: skip
        # not a zip, a damaged entry (bad CRC, broken deflate stream), an unsupported compression, encryption
        raise FolderError(f"the upload is not a readable zip archive ({type(error).__name__})") from None
    if not files:
        raise FolderError("the zip holds no images: zip a folder of <client>/<label>/ or <label>/ folders")
    with tempfile.TemporaryDirectory(prefix="fpl-folder-check-") as scratch:
        root = Path(scratch) / IMAGES_FOLDER
        try:
            write_files(files, root)
        except OSError:
            raise FolderError("the zip's entries clash (a file and a folder of the same name)") from None
        check_folder(root, image_size=image_size, channels=channels)
    return FolderUpload(files)


def safe_entries(archive: zipfile.ZipFile) -> dict[str, zipfile.ZipInfo]:
    """The archive's files by their POSIX path, refusing unsafe names, links and sizes; directories and
    hidden or `__MACOSX` entries are left out."""
    from engine.image_folder import IGNORED_PREFIXES, FolderError  # torch, PIL: at Start only

    entries: dict[str, zipfile.ZipInfo] = {}
    total = 0
    for info in archive.infolist():
        name = info.filename
        shown = name if name.isprintable() else ascii(name)
        parts = PurePosixPath(name).parts
        if name.startswith(("/", "\\")) or "\\" in name or (len(name) > 1 and name[1] == ":") or ".." in parts:
            raise FolderError(f"{shown}: an absolute path or '..' in the zip; zip the image folder itself")
        if not name.isprintable():
            raise FolderError(f"{shown}: a name with control characters in the zip")
        if stat.S_ISLNK(info.external_attr >> 16):
            raise FolderError(f"{shown}: a symbolic link in the zip; zip the images themselves")
        if info.is_dir() or any(part.startswith(IGNORED_PREFIXES) for part in parts):
            continue
        total += info.file_size
        if len(entries) >= MAX_FILES or total > MAX_UNCOMPRESSED_MB * 2**20:
            raise FolderError(
                f"the zip unpacks to more than {MAX_FILES:,} files or {MAX_UNCOMPRESSED_MB} MiB (at {shown})"
            )
        path = PurePosixPath(*parts).as_posix()
        if path in entries:
            raise FolderError(f"{shown}: twice in the zip")
        entries[path] = info
    return entries


def unwrapped(entries: dict[str, zipfile.ZipInfo]) -> dict[str, zipfile.ZipInfo]:
    """Entries with a single common top folder (not `test/`) taken off their paths: a zipped folder's contents."""
    from engine.image_folder import TEST_FOLDER  # torch, PIL: at Start only

    tops = {name.split("/", 1)[0] for name in entries}
    if len(tops) != 1 or tops == {TEST_FOLDER} or not all("/" in name for name in entries):
        return entries
    return {name.split("/", 1)[1]: info for name, info in entries.items()}


def write_files(files: dict[str, bytes], root: Path) -> None:
    """Write `files` (POSIX paths already checked by `safe_entries`) under `root`."""
    for name, content in files.items():
        target = root.joinpath(*PurePosixPath(name).parts)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(content)
