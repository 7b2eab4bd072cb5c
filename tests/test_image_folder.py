"""Your own images (`engine/image_folder.py`, `data.dataset = "folder"`): layouts, the held-out split,
decoding against PIL called directly, the named-file refusals (preflight and CLI: exit 2, nothing
stored), the models built for the folder's shape, and a generated 3-client, 5-label folder trained
end to end from the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import REPO
from PIL import Image, ImageDraw

from engine import image_folder
from engine.image_folder import FolderError, check_folder, load_folder, scan_folder
from engine.workloads import build_model, load_data
from experiment_config import ExperimentConfig
from federated_learning import run_experiment
from model import create_model, get_parameters, parameter_count
from runs import preflight
from runs.preflight import check_data, estimate_round

LABELS = ("circle", "cross", "square", "stripes", "triangle")  # sorted: label k is LABELS[k]
COLOURS = ((220, 40, 40), (40, 180, 40), (40, 80, 230), (230, 200, 30), (180, 40, 200))


def draw(label: int, rng: np.random.Generator, size: int = 24) -> Image.Image:
    """A noisy background with label `label`'s shape in its own colour, at a random place."""
    noise = rng.integers(0, 90, size=(size, size, 3), dtype=np.uint8)
    image = Image.fromarray(noise, "RGB")
    pen = ImageDraw.Draw(image)
    x, y = rng.integers(2, size // 2, size=2)
    box = (int(x), int(y), int(x) + size // 2, int(y) + size // 2)
    colour = COLOURS[label]
    if label == 0:
        pen.ellipse(box, fill=colour)
    elif label == 1:
        pen.line(box, fill=colour, width=3)
        pen.line((box[0], box[3], box[2], box[1]), fill=colour, width=3)
    elif label == 2:
        pen.rectangle(box, fill=colour)
    elif label == 3:
        for row in range(0, size, 4):
            pen.line((0, row, size, row), fill=colour, width=2)
    else:
        pen.polygon([(box[0], box[3]), (box[2], box[3]), ((box[0] + box[2]) // 2, box[1])], fill=colour)
    return image


def make_folder(root: Path, *, clients: tuple[str, ...] = ("alpha", "beta", "gamma"), per_cell: int = 20,
                labels: tuple[str, ...] = LABELS, seed: int = 0) -> Path:  # fmt: skip
    """DIR/<client>/<label>/NN.png (or DIR/<label>/NN.png with no clients), JPEG for every third image."""
    rng = np.random.default_rng(seed)
    for client in clients or ("",):
        for name in labels:
            folder = root / client / name
            folder.mkdir(parents=True)
            for n in range(per_cell):
                suffix = ".jpg" if n % 3 == 2 else ".png"
                draw(LABELS.index(name), rng).save(folder / f"{n:02d}{suffix}")
    return root


def folder_config(path: Path, *sets: str) -> ExperimentConfig:
    return ExperimentConfig().with_overrides(
        ["data.dataset=folder", f"data.folder_path={path}", "data.partition=natural", "federation.num_clients=3",
         "federation.clients_per_round=3", *sets]
    )  # fmt: skip


def test_client_layout_loads_every_image_with_a_seeded_split_per_cell(tmp_path):
    root = make_folder(tmp_path / "images")
    data = load_folder(root, image_size=32, channels=3)
    # 20 images per (client, label) cell: round(0.2 · 20) = 4 held out of each, 3 clients × 5 labels.
    assert (len(data.train_y), len(data.test_y)) == (3 * 5 * 16, 3 * 5 * 4)
    assert data.train_x.shape == (240, 3, 32, 32) and data.train_x.dtype == torch.float32
    assert data.label_names == LABELS and data.num_classes == 5 and data.group_names == ("alpha", "beta", "gamma")
    cells = np.zeros((3, 5), dtype=int)
    np.add.at(cells, (data.test_groups, data.test_y.numpy()), 1)
    assert (cells == 4).all()
    np.add.at(cells, (data.train_groups, data.train_y.numpy()), 1)
    assert (cells == 20).all()
    # Normalised per channel by the training images: mean 0 and std 1 over (N, H, W).
    assert torch.allclose(data.train_x.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-4)
    assert torch.allclose(data.train_x.std(dim=(0, 2, 3)), torch.ones(3), atol=1e-3)
    assert data.info["layout"] == "clients" and data.info["test_images"] == 60


def test_split_is_the_same_on_every_load_and_disjoint(tmp_path):
    root = make_folder(tmp_path / "images", per_cell=7)
    first, second = load_folder(root, image_size=16, channels=1), load_folder(root, image_size=16, channels=1)
    assert torch.equal(first.test_x, second.test_x) and torch.equal(first.train_y, second.train_y)
    layout = scan_folder(root)
    held = image_folder.held_out_rows(layout)
    assert len(held) == 3 * 5 * 1  # round(0.2 · 7) = 1 per cell
    assert len(set(held.tolist())) == len(held)


def test_decoding_matches_pil_called_directly(tmp_path):
    root = make_folder(tmp_path / "images", per_cell=3)
    layout = scan_folder(root)
    files = [file for file, _, _ in layout.train]
    decoded = image_folder.decode_images(root, files, image_size=20, channels=1)
    for row in (0, 2, len(files) - 1):  # a PNG and a JPEG among them
        with Image.open(root / files[row]) as image:
            expected = np.asarray(image.convert("L").resize((20, 20), Image.Resampling.BILINEAR))
        assert np.array_equal(decoded[row, 0].numpy(), expected)


def test_a_test_folder_is_the_test_split(tmp_path):
    root = make_folder(tmp_path / "images", per_cell=5)
    make_folder(root / "test", clients=(), per_cell=4, labels=LABELS[:3], seed=9)
    data = load_folder(root, image_size=16, channels=3)
    assert (len(data.train_y), len(data.test_y)) == (3 * 5 * 5, 3 * 4)
    assert sorted(set(data.test_y.tolist())) == [0, 1, 2] and data.test_groups is None
    assert data.info["test_split"] == "test/ folder"


def test_label_layout_has_no_clients_and_refuses_natural(tmp_path):
    root = make_folder(tmp_path / "images", clients=(), per_cell=10)
    data = load_folder(root, image_size=16, channels=3)
    assert data.train_groups is None and data.group_names == () and len(data.test_y) == 5 * 2
    with pytest.raises(ValueError, match="needs one top folder per client"):
        check_data(folder_config(root))
    check_data(folder_config(root, "data.partition=iid"))  # iid over the pooled images is fine
    assert load_data(folder_config(root, "data.partition=dirichlet")).num_classes == 5


def test_natural_needs_one_client_per_top_folder(tmp_path):
    root = make_folder(tmp_path / "images", per_cell=5)
    check_data(folder_config(root))
    with pytest.raises(ValueError, match="it has 3 client folders .* federation.num_clients must be 3, got 4"):
        check_data(folder_config(root, "federation.num_clients=4"))


def corrupt(root: Path) -> str:
    (root / "beta" / "cross" / "07.png").write_bytes(b"SECRET-CONTENT not an image")
    return "beta/cross/07.png"


def one_label(root: Path) -> str:
    for client in ("alpha", "beta", "gamma"):
        for label in LABELS[1:]:
            for file in (root / client / label).iterdir():
                file.unlink()
            (root / client / label).rmdir()
    return "only one label"


def empty_client(root: Path) -> str:
    (root / "delta").mkdir()
    return "delta: an empty folder"


def empty_label(root: Path) -> str:
    (root / "gamma" / "zebra").mkdir()
    return "gamma/zebra: an empty label folder"


def stray_file(root: Path) -> str:
    (root / "alpha" / "circle" / "notes.txt").write_text("private notes")
    return "alpha/circle/notes.txt: not a .png"


def mixed(root: Path) -> str:
    draw(0, np.random.default_rng(1)).save(root / "gamma" / "loose.png")
    return "gamma: the folder mixes layouts"


def symlink(root: Path) -> str:
    (root / "alpha" / "square" / "link.png").symlink_to(root / "alpha" / "square" / "00.png")
    return "alpha/square/link.png: a symbolic link"


@pytest.mark.parametrize("damage", [corrupt, one_label, empty_client, empty_label, stray_file, mixed, symlink])
def test_bad_folders_are_refused_naming_the_file(tmp_path, damage):
    root = make_folder(tmp_path / "images", per_cell=3)
    expected = damage(root)
    with pytest.raises(FolderError) as refusal:
        check_folder(root, image_size=16, channels=3)
    message = str(refusal.value)
    assert expected in message and message.startswith("data.folder_path: ")
    assert "SECRET" not in message and "private" not in message and "\n" not in message
    with pytest.raises(ValueError, match="data.folder_path"):
        check_data(folder_config(root))


def test_cli_refuses_an_unreadable_image_with_exit_2_and_stores_nothing(tmp_path):
    root = make_folder(tmp_path / "images", per_cell=3)
    corrupt(root)
    database = tmp_path / "runs.db"
    result = run_cli(root, f"sqlite:///{database}")
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.strip().splitlines() == ["error: data.folder_path: beta/cross/07.png: not a readable image"]
    assert not database.exists()


def test_models_take_the_folders_shape(tmp_path):
    # The McMahan CNN for 3 × 32 × 32 and 5 labels, counted by hand: conv1 3·32·25 + 32, conv2 32·64·25 + 64,
    # fc1 (64 · 8 · 8) · 512 + 512, fc2 512 · 5 + 5.
    expected = (3 * 32 * 25 + 32) + (32 * 64 * 25 + 64) + (64 * 8 * 8 * 512 + 512) + (512 * 5 + 5)
    assert parameter_count(get_parameters(create_model("cnn", num_classes=5, channels=3, image_size=32))) == expected
    assert parameter_count(get_parameters(create_model("cnn"))) == 1_663_370  # MNIST's unchanged
    root = make_folder(tmp_path / "images", per_cell=3)
    for name in ("cnn", "mlp", "cnn-dp"):
        config = folder_config(root, f"model.name={name}", "data.image_size=24", "data.image_channels=1")
        data = load_data(config)
        logits = build_model(config, data.num_classes, seed=0)(data.train_x[:4])
        assert logits.shape == (4, 5)


def run_cli(root: Path, db_url: str, *sets: str) -> subprocess.CompletedProcess[str]:
    args = ["--set", "data.dataset=folder", "--set", f"data.folder_path={root}", "--set", "data.partition=natural",
            "--set", "federation.num_clients=3", "--set", "federation.clients_per_round=3"]  # fmt: skip
    for assignment in sets:
        args += ["--set", assignment]
    return subprocess.run(
        [sys.executable, str(REPO / "cli.py"), "run", "--json", "--db", db_url, *args],
        capture_output=True, text=True, timeout=300, cwd=REPO, check=False, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip


def test_a_generated_three_client_five_label_folder_trains_from_the_cli(tmp_path):
    root = make_folder(tmp_path / "images")
    result = run_cli(
        root, f"sqlite:///{tmp_path / 'runs.db'}", "federation.rounds=4", "federation.batch_size=16",
        "federation.learning_rate=0.05", "model.name=cnn-dp", "system.num_workers=1", "privacy.audit_examples=0",
        "data.image_size=24",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    rounds, final = lines[:-1], lines[-1]
    assert len(rounds) == 4 and "experiment_id" in final
    assert sorted(c["num_examples"] for c in rounds[-1]["clients"]) == [80, 80, 80]  # 16 per label, 5 labels
    assert rounds[-1]["accuracy"] > 0.6 > 1 / 5  # chance is 0.2 on the 60 held-out images


def test_local_dp_trains_a_folder_with_an_accountant(tmp_path):
    root = make_folder(tmp_path / "images", per_cell=5)
    config = folder_config(
        root, "model.name=cnn-dp", "data.image_size=16", "federation.rounds=2", "federation.batch_size=10",
        "privacy.mode=local", "privacy.noise_multiplier=1.0", "system.num_workers=1", "privacy.audit_examples=0",
    )  # fmt: skip
    results = run_experiment(config)
    epsilons = [result.epsilon for result in results]
    assert len(results) == 2 and 0 < epsilons[0] < epsilons[1]  # cumulative, from the clients' accountants


@pytest.mark.parametrize(
    ("sets", "expected"),
    [
        (["data.dataset=folder"], "data.dataset = 'folder' needs data.folder_path"),
        (["data.dataset=folder", "data.folder_path=x", "system.backend=mlx"], "data.dataset = 'folder' needs 'torch'"),
        (
            ["data.dataset=folder", "data.folder_path=x", "model.name=minilm-lora"],
            "data.dataset = 'folder' needs model",
        ),
        (["data.image_channels=2"], "data.image_channels must be 1 .* or 3"),
    ],
)
def test_config_refuses_what_a_folder_cannot_do(sets, expected):
    with pytest.raises(ValueError, match=expected):
        ExperimentConfig().with_overrides(sets)


def test_image_options_reach_the_model_only_for_a_folder():
    assert ExperimentConfig().data.image_options() == {}
    config = ExperimentConfig().with_overrides(["data.dataset=folder", "data.folder_path=x", "data.image_size=40"])
    assert config.data.image_options() == {"channels": 3, "image_size": 40}


def test_round_cost_counts_the_model_built_for_the_folder(tmp_path):
    # A rule that reads every update: FedAvg would stream 3 such updates (100 MB; engine.streaming) and hold none.
    config = folder_config(tmp_path, "data.image_size=64", "federation.strategy=median")
    built = parameter_count(get_parameters(create_model("cnn", channels=3, image_size=64)))
    assert estimate_round(config).num_params == built > preflight.IMAGE_MODEL_MAX_PARAMS  # MNIST's bound is not one
    # Memory that fits MNIST's largest model for 3 clients, but not this one's 8.4M parameters.
    available = int((preflight.PROCESS_BYTES + 3 * 2 * 4 * 2_000_000) / preflight.MEMORY_SHARE)
    preflight.check_costs(ExperimentConfig().replace("federation", num_clients=3, clients_per_round=3),
                          available_bytes=available)  # fmt: skip
    with pytest.raises(ValueError, match="federation.clients_per_round = 3: a round of cnn"):
        preflight.check_costs(config, available_bytes=available)


def test_a_name_with_a_control_character_is_refused_escaped(tmp_path):
    root = make_folder(tmp_path / "images", per_cell=3)
    (root / "alpha" / "circle" / "00.png").rename(root / "alpha" / "circle" / "a\x1bb.png")
    with pytest.raises(FolderError, match=r"alpha/circle/a\\x1bb.png': a name with control characters") as refusal:
        scan_folder(root)
    assert "\x1b" not in str(refusal.value)


def test_memory_and_pixel_limits_name_the_setting_or_the_file(tmp_path, monkeypatch):
    root = make_folder(tmp_path / "images", per_cell=3)  # 45 images of 24 × 24
    monkeypatch.setattr(image_folder, "MAX_TENSOR_BYTES", 45 * 3 * 32 * 32 * 4 - 1)  # one byte short at 32²
    with pytest.raises(ValueError, match="data.image_size = 32 with 3 channel.*45 images"):
        check_data(folder_config(root))
    check_folder(root, image_size=31, channels=3)  # fits
    monkeypatch.setattr(image_folder, "MAX_PIXELS", 24 * 24 - 1)
    with pytest.raises(FolderError, match=r"alpha/circle/00.png: 24×24 pixels, over the limit of 575"):
        check_folder(root, image_size=16, channels=3)
