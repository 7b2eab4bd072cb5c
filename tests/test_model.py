from __future__ import annotations

from collections import OrderedDict

import pytest
import torch

from model import (
    clean_name,
    create_model,
    flatten,
    get_parameters,
    parameter_bytes,
    parameter_count,
    set_parameters,
    unflatten,
)


def test_parameter_counts_match_the_architectures():
    # conv1 1·32·25+32, conv2 32·64·25+64, fc1 3136·512+512, fc2 512·10+10
    assert parameter_count(get_parameters(create_model("cnn"))) == 832 + 51_264 + 1_606_144 + 5_130
    # 784·200+200, 200·200+200, 200·10+10
    assert parameter_count(get_parameters(create_model("mlp"))) == 157_000 + 40_200 + 2_010


@pytest.mark.parametrize("name", ["cnn", "mlp"])
def test_models_have_no_batch_norm_and_give_logits(name):
    model = create_model(name)
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())
    assert model(torch.zeros(3, 1, 28, 28)).shape == (3, 10)


def test_seeded_models_are_identical_and_unseeded_differ():
    a, b = flatten(get_parameters(create_model("mlp", seed=5))), flatten(get_parameters(create_model("mlp", seed=5)))
    assert torch.equal(a, b)
    assert not torch.equal(a, flatten(get_parameters(create_model("mlp", seed=6))))


def test_unknown_model_is_an_error():
    with pytest.raises(ValueError, match="model.name"):
        create_model("resnet")


def test_get_and_set_parameters_round_trip():
    source, target = create_model("cnn", seed=1), create_model("cnn", seed=2)
    set_parameters(target, get_parameters(source))
    x = torch.randn(2, 1, 28, 28)
    assert torch.equal(source(x), target(x))
    assert parameter_bytes(get_parameters(source)) == 4 * 1_663_370


def test_set_parameters_rejects_wrong_names_and_shapes():
    model = create_model("mlp")
    params = get_parameters(model)
    with pytest.raises(ValueError, match="missing"):
        set_parameters(model, OrderedDict(list(params.items())[1:]))
    bad = OrderedDict(params)
    bad["fc1.weight"] = torch.zeros(3, 3)
    with pytest.raises(ValueError, match="fc1.weight"):
        set_parameters(model, bad)


def test_clean_names_strip_wrapper_prefixes():
    assert clean_name("_module.fc1.weight") == "fc1.weight"
    assert clean_name("_orig_mod._module.conv1.bias") == "conv1.bias"
    assert clean_name("fc1.module_weight") == "fc1.module_weight"


def test_flatten_and_unflatten_are_inverse():
    params = get_parameters(create_model("mlp", seed=0))
    vector = flatten(params)
    assert vector.shape == (199_210,)
    for name, tensor in unflatten(vector, params).items():
        assert torch.equal(tensor, params[name])
    with pytest.raises(ValueError):
        unflatten(vector[:-1], params)
