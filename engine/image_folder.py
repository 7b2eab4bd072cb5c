"""Your own images: an ImageFolder-style directory as a federated dataset (`data.dataset = "folder"`).

Two layouts, told apart by what the top folders hold:

    DIR/<client>/<label>/*.png|jpg     clients: one top folder per client (`data.partition = "natural"`)
    DIR/<label>/*.png|jpg              labels: one pool, split across clients by iid / dirichlet / shards

The held-out test split: `DIR/test/<label>/*` when the folder has one (in either layout); otherwise
TEST_FRACTION of the images of every (client, label) cell, chosen with a fixed seed (SPLIT_SEED), so
every run on the same folder is scored on the same test images whatever its `system.seed` (the split
belongs to the data, like MNIST's t10k file, not to the run).

Every image is decoded once per load (PIL), converted to `channels` (1: grey, 3: RGB), resized to
`image_size`² (bilinear) and held in memory as one float32 tensor, normalised per channel by the
training images' mean and std; clients take batches by index, as with MNIST.

    layout = scan_folder("my_images")                          # FolderError names the file if anything is off
    data = load_folder("my_images", image_size=32, channels=3)  # FederatedData, groups = clients

Errors name the file or folder by its path relative to DIR and never show a file's contents.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from data_handler import FederatedData

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
TEST_FOLDER = "test"  # DIR/test/<label>/*: the held-out split, when the folder brings its own
TEST_FRACTION = 0.2  # else this share of each (client, label) cell is held out (rounded, at least one left)
SPLIT_SEED = 0x1F01D  # the held-out images are the same for every run on a folder
MAX_IMAGES = 100_000  # images in one folder: more is not a lab's own data set
MAX_PIXELS = 40_000_000  # per image, read from its header before decoding (a decompression bomb is refused)
MAX_TENSOR_BYTES = 4 * 2**30  # the decoded float32 tensors of the whole folder
IGNORED_PREFIXES = (".", "__MACOSX")  # .DS_Store, ._resource forks, macOS's zip folder: not images


class FolderError(ValueError):
    """The image folder cannot be used; the message names the file or folder (relative to DIR),
    after the setting it concerns (`data.folder_path: cats/3.png: not a readable image`)."""

    def __init__(self, message: str) -> None:
        super().__init__(message if message.startswith("data.") else f"data.folder_path: {message}")


@dataclass(frozen=True)
class FolderLayout:
    """What `scan_folder` found, nothing decoded yet. `clients` is empty in the labels layout;
    `train` / `test` list (path relative to the root, label index, client index or −1)."""

    root: Path
    clients: tuple[str, ...]
    labels: tuple[str, ...]
    train: tuple[tuple[str, int, int], ...]
    test: tuple[tuple[str, int, int], ...]

    @property
    def has_test_folder(self) -> bool:
        return bool(self.test)


def scan_folder(path: str | Path) -> FolderLayout:
    """The layout of `path` (see the module docstring), refusing with `FolderError` a folder that is
    missing, mixes layouts, holds anything but images in label folders, has an empty client or label
    folder, a symlink, fewer than two labels, or more than MAX_IMAGES images."""
    root = Path(path).expanduser()
    if not root.is_dir():
        raise FolderError(
            f"data.folder_path: {path} is not a folder (expected DIR/<client>/<label>/*.png or DIR/<label>/*.png)"
        )
    tops = _entries(root, root)
    test_dir = next((entry for entry in tops if entry.name == TEST_FOLDER and entry.is_dir()), None)
    tops = [entry for entry in tops if entry is not test_dir]
    loose = [entry for entry in tops if not entry.is_dir()]
    if loose:
        raise FolderError(
            f"{_rel(loose[0], root)}: a file at the top of the folder; put images in DIR/<label>/ or "
            "DIR/<client>/<label>/"
        )
    if not tops:
        raise FolderError(f"data.folder_path: {path} has no label or client folders")
    client_layout = _is_client_folder(tops[0], root)
    for top in tops[1:]:
        if _is_client_folder(top, root) != client_layout:
            raise FolderError(
                f"{_rel(top, root)}: the folder mixes layouts ({_rel(tops[0], root)} holds "
                f"{'label folders' if client_layout else 'images'}, this one does not): use DIR/<client>/<label>/ "
                "or DIR/<label>/ throughout"
            )
    if client_layout:
        cells = {(top.name, label.name): _images(label, root) for top in tops for label in _entries(top, root)}
        clients = tuple(top.name for top in tops)
    else:
        cells = {("", top.name): _images(top, root) for top in tops}
        clients = ()
    labels = tuple(sorted({label for _, label in cells}))
    if len(labels) < 2:
        raise FolderError(
            f"data.folder_path: only one label ({labels[0]}): a classifier needs at least two label folders"
        )
    client_index = {name: k for k, name in enumerate(clients)}
    train = tuple(
        (file, labels.index(label), client_index.get(client, -1))
        for (client, label), files in sorted(cells.items()) for file in files
    )  # fmt: skip
    test = _test_images(test_dir, root, labels) if test_dir is not None else ()
    if len(train) + len(test) > MAX_IMAGES:
        raise FolderError(f"data.folder_path: {len(train) + len(test):,} images, over the limit of {MAX_IMAGES:,}")
    return FolderLayout(root, clients, labels, train, test)


def _entries(folder: Path, root: Path) -> list[Path]:
    """The visible entries of `folder`, sorted by name; a symlink (it could point anywhere) or a name with
    control characters is refused."""
    try:
        listing = list(folder.iterdir())
    except OSError as error:  # no permission, gone meanwhile
        raise FolderError(f"{_rel(folder, root)}: cannot be read ({error.strerror or type(error).__name__})") from None
    entries = sorted((entry for entry in listing if not entry.name.startswith(IGNORED_PREFIXES)), key=lambda e: e.name)
    for entry in entries:
        if not entry.name.isprintable():  # labels and clients are shown and stored: one line each
            raise FolderError(f"{_rel(entry, root)}: a name with control characters; rename it")
        if entry.is_symlink():
            raise FolderError(f"{_rel(entry, root)}: a symbolic link; copy the images into the folder instead")
    return entries


def _is_client_folder(top: Path, root: Path) -> bool:
    """A top folder of folders (a client) rather than of images (a label); an empty one is refused."""
    entries = _entries(top, root)
    if not entries:
        raise FolderError(f"{_rel(top, root)}: an empty folder (no images or label folders)")
    return all(entry.is_dir() for entry in entries)


def _images(label: Path, root: Path) -> list[str]:
    """The image files of one label folder, relative to the root; anything else is refused."""
    files = []
    for entry in _entries(label, root):
        if entry.is_dir() or entry.suffix.lower() not in IMAGE_SUFFIXES:
            kind = "a folder" if entry.is_dir() else "not a .png/.jpg/.jpeg image"
            raise FolderError(f"{_rel(entry, root)}: {kind} inside the label folder {_rel(label, root)}")
        files.append(entry.relative_to(root).as_posix())  # the real name; messages show it through `_shown`
    if not files:
        raise FolderError(f"{_rel(label, root)}: an empty label folder (no images)")
    return files


def _test_images(test_dir: Path, root: Path, labels: tuple[str, ...]) -> tuple[tuple[str, int, int], ...]:
    """DIR/test/<label>/*, each label one the training folders have."""
    rows = []
    for label in _entries(test_dir, root):
        if not label.is_dir():
            raise FolderError(f"{_rel(label, root)}: put test images in {TEST_FOLDER}/<label>/")
        if label.name not in labels:
            raise FolderError(
                f"{_rel(label, root)}: a test label the training images do not have ({', '.join(labels)})"
            )
        rows.extend((file, labels.index(label.name), -1) for file in _images(label, root))
    if not rows:
        raise FolderError(f"{TEST_FOLDER}: an empty test folder")
    return tuple(rows)


def _rel(path: Path, root: Path) -> str:
    """`path` relative to the root, printable (a strange name is shown escaped, never raw)."""
    text = path.relative_to(root).as_posix()
    return text if text.isprintable() else ascii(text)


def decode_images(root: Path, files: list[str], *, image_size: int, channels: int) -> torch.Tensor:
    """(N, channels, image_size, image_size) uint8: each file decoded, converted and resized.
    FolderError names the first file PIL cannot read (its contents are never shown)."""
    mode = "L" if channels == 1 else "RGB"
    out = np.empty((len(files), image_size, image_size, channels), dtype=np.uint8)
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)  # PIL's own bomb limit: refused, not warned
        for row, file in enumerate(files):
            out[row] = _decode(root, file, mode=mode, image_size=image_size).reshape(image_size, image_size, channels)
    return torch.from_numpy(out).permute(0, 3, 1, 2).contiguous()  # (N, C, S, S)


def _decode(root: Path, file: str, *, mode: str, image_size: int) -> np.ndarray:
    """One image as (image_size, image_size[, 3]) uint8, in PIL `mode` ("L" or "RGB")."""
    try:
        with Image.open(root / file) as image:
            if image.width * image.height > MAX_PIXELS:
                raise FolderError(
                    f"{_shown(file)}: {image.width}×{image.height} pixels, over the limit of {MAX_PIXELS:,}"
                )
            picture = image.convert(mode).resize((image_size, image_size), Image.Resampling.BILINEAR)
    except FolderError:
        raise
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombWarning, Image.DecompressionBombError):
        raise FolderError(f"{_shown(file)}: not a readable image") from None
    return np.asarray(picture, dtype=np.uint8)


def _shown(file: str) -> str:
    """A relative path for a message: printable as it is, else escaped (never raw control characters)."""
    return file if file.isprintable() else ascii(file)


def held_out_rows(layout: FolderLayout) -> np.ndarray:
    """Indices into `layout.train` held out for testing when the folder has no test folder: in each
    (client, label) cell of n images, round(TEST_FRACTION · n) of them (at most n − 1), seeded by
    SPLIT_SEED and the cell, so the split never depends on the run."""
    if layout.has_test_folder:
        return np.zeros(0, dtype=np.int64)
    cells: dict[tuple[int, int], list[int]] = {}
    for row, (_, label, client) in enumerate(layout.train):
        cells.setdefault((client, label), []).append(row)
    held = []
    for (client, label), rows in sorted(cells.items()):
        count = min(int(TEST_FRACTION * len(rows) + 0.5), len(rows) - 1)
        order = np.random.default_rng([SPLIT_SEED, client + 1, label]).permutation(len(rows))
        held.extend(rows[i] for i in order[:count])
    return np.sort(np.asarray(held, dtype=np.int64))


def check_tensor_size(layout: FolderLayout, *, image_size: int, channels: int) -> None:
    """Refuse a folder whose decoded float32 tensors would pass MAX_TENSOR_BYTES."""
    images = len(layout.train) + len(layout.test)
    needed = images * channels * image_size**2 * 4
    if needed > MAX_TENSOR_BYTES:
        raise FolderError(
            f"data.image_size = {image_size} with {channels} channel(s): {images:,} images "
            f"need {needed / 2**30:.1f} GiB in memory, over {MAX_TENSOR_BYTES / 2**30:.0f} GiB: lower data.image_size"
        )


def check_folder(path: str | Path, *, image_size: int, channels: int) -> FolderLayout:
    """Everything a run's load would refuse, refused now (`runs.preflight`, before a run is stored):
    the layout (`scan_folder`), the memory the tensors need, every image decoded once, and a test split."""
    layout = scan_folder(path)
    check_tensor_size(layout, image_size=image_size, channels=channels)
    decode_images(layout.root, [file for file, _, _ in layout.train + layout.test], image_size=image_size,
                  channels=channels)  # fmt: skip
    test_mask(layout)
    return layout


def test_mask(layout: FolderLayout) -> np.ndarray:
    """(N,) bool over `layout.train + layout.test`: true for the held-out test images."""
    is_test = np.zeros(len(layout.train) + len(layout.test), dtype=bool)
    is_test[held_out_rows(layout)] = True
    is_test[len(layout.train) :] = True
    if not is_test.any():
        raise FolderError(
            "data.folder_path: too few images to hold out a test split (a label folder needs 3 or more images), "
            f"or add {TEST_FOLDER}/<label>/ images"
        )
    return is_test


def load_folder(path: str | Path, *, image_size: int, channels: int) -> FederatedData:
    """The folder as `FederatedData`: x (N, channels, image_size, image_size) float32 normalised per
    channel by the training images' mean and std, y (N,) int64 label indices (`label_names` sorted);
    in the clients layout `train_groups` / `group_names` give each image's client (`natural`)."""
    layout = scan_folder(path)
    check_tensor_size(layout, image_size=image_size, channels=channels)
    rows = layout.train + layout.test
    images = decode_images(layout.root, [file for file, _, _ in rows], image_size=image_size,
                           channels=channels).to(torch.float32).div_(255.0)  # (N, C, S, S) in [0, 1]  # fmt: skip
    labels = torch.tensor([label for _, label, _ in rows], dtype=torch.int64)
    groups = np.array([client for _, _, client in rows], dtype=np.int64)
    is_test = test_mask(layout)
    train_rows, test_rows = np.flatnonzero(~is_test), np.flatnonzero(is_test)
    mean = images[train_rows].mean(dim=(0, 2, 3), keepdim=True)  # (1, C, 1, 1)
    std = images[train_rows].std(dim=(0, 2, 3), keepdim=True).clamp_min(1e-3)  # a blank channel stays finite
    images.sub_(mean).div_(std)
    grouped = bool(layout.clients)
    return FederatedData(
        train_x=images[train_rows].contiguous(), train_y=labels[train_rows].contiguous(),
        test_x=images[test_rows].contiguous(), test_y=labels[test_rows].contiguous(), num_classes=len(layout.labels),
        train_groups=groups[train_rows] if grouped else None,
        test_groups=groups[test_rows] if grouped and not layout.has_test_folder else None,
        group_names=layout.clients, label_names=layout.labels,
        info=_info(path, layout, image_size=image_size, channels=channels, train=len(train_rows), test=len(test_rows)),
    )  # fmt: skip


def _info(path: str | Path, layout: FolderLayout, *, image_size: int, channels: int, train: int, test: int) -> dict:
    """Where the data came from and how it was read, stored with the run."""
    held_out = f"{TEST_FRACTION:.0%} of each label folder" + (" of each client" if layout.clients else "")
    return {
        "source": "folder", "folder_path": str(path), "layout": "clients" if layout.clients else "labels",
        "labels": list(layout.labels), "clients": list(layout.clients), "image_size": image_size,
        "channels": channels, "train_images": train, "test_images": test,
        "test_split": f"{TEST_FOLDER}/ folder" if layout.has_test_folder else held_out,
    }  # fmt: skip
