"""Accuracy at small ε as selectable recipes: ScatterNet models (a fixed kymatio scattering transform
computed once per client dataset, a GroupNorm + linear or small CNN head) and the server-side EMA
of the global weights (`federation.server_ema`, post-processing: free in ε).

Checked against independent references: kymatio's own frontends called directly, a hand-computed
EMA of the global weights a run reports, an uninterrupted run for checkpoint/resume, and chance
accuracy for training under local DP."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from data_handler import FederatedData
from engine.scattering import FEATURES, cached_scatter, scatter, with_scattering
from experiment_config import SCATTER_MODELS, ExperimentConfig
from federated_learning import FederatedRun, evaluate
from model import create_model, flatten, get_parameters, set_parameters, unflatten

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def digits(mnist) -> FederatedData:
    """600 training and 300 test digits of the real MNIST, fixed."""
    return FederatedData(mnist.train_x[:600], mnist.train_y[:600], mnist.test_x[:300], mnist.test_y[:300], 10)


def config_with(**sections) -> ExperimentConfig:
    federation = {
        "num_clients": 3, "clients_per_round": 3, "rounds": 3, "batch_size": 25, "learning_rate": 0.1,
        **sections.pop("federation", {}),
    }  # fmt: skip
    return ExperimentConfig.from_dict({
        "model": {"name": sections.pop("model", "mlp")},
        "federation": federation,
        "privacy": {"audit_examples": 0, **sections.pop("privacy", {})},
        "system": {"num_workers": 1, "seed": 5},
        **sections,
    })  # fmt: skip


# -- the scattering transform ----------------------------------------------------------------


def test_scattering_equals_kymatio_called_directly(digits):
    from kymatio.scattering2d.frontend.numpy_frontend import ScatteringNumPy2D
    from kymatio.scattering2d.frontend.torch_frontend import ScatteringTorch2D

    images = digits.train_x[:40]  # (40, 1, 28, 28) real digits
    features = scatter(images, batch_size=16)  # three batches, the last one short

    assert features.shape == (40, 81, 7, 7) and features.dtype == torch.float32
    direct = ScatteringTorch2D(J=2, shape=(28, 28), L=8)(images)  # (40, 1, 81, 7, 7)
    torch.testing.assert_close(features, direct.reshape(40, 81, 7, 7), rtol=0, atol=1e-6)
    numpy_backend = ScatteringNumPy2D(J=2, shape=(28, 28), L=8)(images.numpy())  # another backend altogether
    np.testing.assert_allclose(features.numpy(), numpy_backend.reshape(40, 81, 7, 7), rtol=1e-4, atol=1e-5)
    assert features[:, 1:].abs().sum() > 0  # the digits' edges: wavelet moduli, not all zero


def test_features_are_computed_once_and_the_model_takes_images_or_features(digits):
    config = config_with(model="scatter-cnn")

    featured = with_scattering(config, digits)

    assert featured.info["features"] == FEATURES
    assert featured.train_x.shape == (600, 81, 7, 7) and featured.test_x.shape == (300, 81, 7, 7)
    assert torch.equal(featured.train_y, digits.train_y) and torch.equal(featured.test_y, digits.test_y)
    assert with_scattering(config, featured) is featured  # already features: nothing recomputed
    assert with_scattering(config_with(model="cnn-dp"), digits) is digits  # other models read pixels
    model = create_model("scatter-cnn", seed=0).eval()
    with torch.no_grad():
        torch.testing.assert_close(model(digits.test_x[:8]), model(featured.test_x[:8]), rtol=0, atol=1e-5)


def test_the_feature_cache_is_keyed_by_the_images(digits, tmp_path):
    first, second = digits.train_x[:20], digits.train_x[20:40]

    computed = cached_scatter(first, tmp_path)
    read_back = cached_scatter(first.clone(), tmp_path)  # equal images, another tensor: read from the file
    other = cached_scatter(second, tmp_path)

    assert torch.equal(read_back, computed) and torch.equal(computed, scatter(first))
    assert torch.equal(other, scatter(second))
    assert len(list(tmp_path.glob("scattering-*.pt"))) == 2


@pytest.mark.parametrize("name", SCATTER_MODELS)
def test_scatter_model_has_no_batchnorm_and_exchanges_only_its_head(name):
    model = create_model(name, seed=0)

    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())
    norm = model.norm
    assert isinstance(norm, torch.nn.GroupNorm) and norm.num_groups == 27 and not norm.affine
    assert all(name.startswith("head.") for name in get_parameters(model))  # the transform: buffers, not weights
    assert sum(b.numel() for b in model.scattering.buffers()) > 0


@pytest.mark.parametrize("name", SCATTER_MODELS)
def test_scatter_model_trains_under_local_dp_well_above_chance(name, digits):
    config = config_with(
        model=name, federation={"num_clients": 2, "clients_per_round": 2, "rounds": 3, "batch_size": 50,
                                "learning_rate": 2.0 if name == "scatter-linear" else 1.0},
        privacy={"mode": "local", "noise_multiplier": 1.0, "max_grad_norm": 1.0},
    )  # fmt: skip
    run = FederatedRun(config, data=digits)

    results = list(run.rounds())

    assert run.data.info["features"] == FEATURES  # trained on the features, computed once at the start
    assert len(results) == 3 and 0 < results[0].epsilon < results[-1].epsilon  # accounted, growing
    assert all(c.steps > 0 for c in results[-1].clients)
    assert results[-1].accuracy > 0.5  # chance is 0.1 (300 test digits)


# -- the server-side EMA ----------------------------------------------------------------------


def test_ema_is_the_hand_computed_average_of_the_global_weights_and_is_what_is_evaluated(digits):
    decay = 0.6
    plain = FederatedRun(config_with(), data=digits)
    averaged = FederatedRun(config_with(federation={"server_ema": decay}), data=digits)

    plain_weights = [plain.state.weights.clone() for _ in plain.rounds()]
    results, global_weights = [], []
    for result in averaged.rounds():
        results.append(result)
        global_weights.append(averaged.state.weights.clone())

    for mine, reference in zip(global_weights, plain_weights, strict=True):
        assert torch.equal(mine, reference)  # clients train from w_t: the average never feeds back
    w1, w2, w3 = (w.double() for w in global_weights)
    expected = decay * (decay * w1 + (1 - decay) * w2) + (1 - decay) * w3  # ema_1 = w_1, then the recursion
    torch.testing.assert_close(averaged.state.ema, expected, rtol=0, atol=1e-12)
    assert not torch.allclose(expected, w3.double())
    released = flatten(get_parameters(averaged.model))
    assert torch.equal(released, averaged.state.ema.float())  # the evaluated model is the EMA
    reference = create_model("mlp", seed=0)
    set_parameters(reference, unflatten(expected.float(), get_parameters(reference)))
    accuracy, loss = evaluate(reference, digits.test_x, digits.test_y)
    assert results[-1].accuracy == pytest.approx(accuracy) and results[-1].loss == pytest.approx(loss)
    assert plain.state.ema is None


def test_ema_survives_checkpoint_and_restore_bit_for_bit(digits):
    config = config_with(federation={"server_ema": 0.9, "rounds": 4})
    uninterrupted = FederatedRun(config, data=digits)
    final = list(uninterrupted.rounds())[-1]
    first = FederatedRun(config, data=digits)
    rounds = first.rounds()
    next(rounds), next(rounds)
    blob = first.checkpoint()
    rounds.close()

    resumed = FederatedRun(config, data=digits)
    assert resumed.restore(blob) == 2

    assert torch.equal(resumed.state.ema, first.state.ema) and resumed.state.ema.dtype == torch.float64
    assert torch.equal(flatten(get_parameters(resumed.model)), first.state.ema.float())  # restored: the EMA
    last = list(resumed.rounds())[-1]
    assert torch.equal(resumed.state.ema, uninterrupted.state.ema)
    assert last.accuracy == final.accuracy and last.loss == final.loss


# -- the config -------------------------------------------------------------------------------


@pytest.mark.parametrize("value", [1.0, -0.1, 1.5, float("nan"), "0.9", True])
def test_config_rejects_bad_ema_values_with_one_line(value):
    with pytest.raises(ValueError, match=r"federation\.server_ema") as error:
        ExperimentConfig.from_dict({"federation": {"server_ema": value}})
    assert "\n" not in str(error.value)


def test_config_accepts_ema_and_scatter_models_and_rejects_what_cannot_run_them():
    config = ExperimentConfig.from_dict({"model": {"name": "scatter-linear"}, "federation": {"server_ema": 0.99}})
    assert config.federation.server_ema == 0.99 and ExperimentConfig.from_json(config.to_json()) == config
    assert ExperimentConfig().federation.server_ema == 0.0  # off by default
    with pytest.raises(ValueError, match="power_of_choice"):
        ExperimentConfig.from_dict({"federation": {"server_ema": 0.9, "selection": "power_of_choice"}})
    with pytest.raises(ValueError, match="scattering"):
        ExperimentConfig.from_dict({"model": {"name": "scatter-cnn"}, "system": {"backend": "mlx"}})
    with pytest.raises(ValueError, match="multiple of 4"):
        ExperimentConfig.from_dict({"model": {"name": "scatter-cnn"},
                                    "data": {"dataset": "folder", "folder_path": "x", "image_size": 30}})  # fmt: skip


def test_cli_refuses_a_bad_ema_with_exit_2_and_one_line(tmp_path):
    db = f"sqlite:///{tmp_path / 'runs.db'}"
    completed = subprocess.run(
        [sys.executable, "cli.py", "run", "--set", "federation.server_ema=1.0", "--db", db],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert completed.returncode == 2
    assert completed.stderr.strip().count("\n") == 0 and "federation.server_ema" in completed.stderr
    assert not (tmp_path / "runs.db").exists()  # nothing stored
