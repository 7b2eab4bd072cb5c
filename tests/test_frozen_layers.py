"""model.lora_layers: LoRA on the top layers only, the frozen layers below computed once per response
and cached (ngss/frozen_layers.py). References: the Hugging Face model's own forward pass and its
hidden states, run without the split."""

from __future__ import annotations

import copy

import pytest
import torch

from conftest import assert_opacus_per_sample_gradients
from experiment_config import ExperimentConfig
from model import create_model, get_parameters

LABELS = 3


def scorer(name: str, top: int, pooling: str = "", **options) -> torch.nn.Module:
    """A random-weight backbone with LoRA B drawn too, so that the adapters change what layers compute."""
    model = create_model(name, num_classes=LABELS, seed=0, pretrained=False, lora_layers=top, pooling=pooling, **options)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if ".lora_B." in n:
                p.copy_(0.2 * torch.randn(p.shape, generator=generator))
    return model


def batch() -> torch.Tensor:
    """(4, 12) right-padded ids (pad 0 for both backbones); rows of 12, 7, 3 and 9 tokens."""
    ids = torch.randint(5, 300, (4, 12), generator=torch.Generator().manual_seed(2))
    for row, length in enumerate((12, 7, 3, 9)):
        ids[row, length:] = 0
    return ids


def full_forward(model, ids):
    """The same model through the Hugging Face forward pass, every layer computed, no cache."""
    split, model.split = model.split, None
    try:
        return model(ids)
    finally:
        model.split = split


CASES = [("minilm-lora", "mean"), ("minilm-lora", "cls"), ("tinyllama-lora", "last"), ("tinyllama-lora", "mean")]


@pytest.mark.parametrize(("name", "pooling"), CASES)
def test_split_forward_and_gradients_equal_the_full_model(name, pooling):
    model = scorer(name, 2, pooling).eval()  # eval: no dropout anywhere, so the two paths compute the same
    ids, labels = batch(), torch.tensor([[1.0, 0, 1], [0, 1, 1], [1, 1, 0], [0, 0, 1]])
    grads = []
    for forward in (model, lambda x: full_forward(model, x)):
        model.zero_grad(set_to_none=True)
        logits = forward(ids)
        torch.nn.functional.binary_cross_entropy_with_logits(logits, labels).backward()
        grads.append((logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}))
    (split_logits, split_grads), (full_logits, full_grads) = grads
    torch.testing.assert_close(split_logits, full_logits, rtol=1e-5, atol=1e-5)
    assert split_grads.keys() == full_grads.keys()
    for n in split_grads:
        torch.testing.assert_close(split_grads[n], full_grads[n], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize(("name", "layers", "width"), [("minilm-lora", 6, 384), ("tinyllama-lora", 8, 64)])
def test_only_the_top_layers_get_lora_and_travel(name, layers, width):
    for top in (1, 2, layers):
        params = get_parameters(scorer(name, top))
        lora = [n for n in params if ".lora_" in n]
        indices = {int(n.split(".layers." if name == "tinyllama-lora" else ".layer.")[1].split(".")[0]) for n in lora}
        assert indices == set(range(layers - top, layers))
        assert sum(params[n].numel() for n in lora) == top * 2 * 8 * (width + width)  # q and v, r = 8
    every = get_parameters(create_model(name, num_classes=LABELS, seed=0, pretrained=False))
    assert get_parameters(scorer(name, layers)).keys() == every.keys()  # N = every layer: the same adapters


@pytest.mark.parametrize("name", ["minilm-lora", "tinyllama-lora"])
def test_the_cached_states_are_the_frozen_layers_output_without_dropout(name):
    model = scorer(name, 2, lora_dropout=0.3).train()  # training mode: the frozen part still runs without dropout
    split = model.split
    ids = batch()[1, :7]
    states = split.frozen_states(ids)
    hf = split.base.eval()
    reference = hf(input_ids=ids[None], output_hidden_states=True).hidden_states[split.frozen][0]
    torch.testing.assert_close(states, reference, rtol=1e-5, atol=1e-6)
    assert not states.requires_grad


def test_each_response_is_computed_once_and_alone():
    model = scorer("minilm-lora", 2).eval()
    split, ids = model.split, batch()
    computed = []
    frozen_states = split.frozen_states
    split.frozen_states = lambda tokens: computed.append(len(tokens)) or frozen_states(tokens)
    first = model(ids)
    assert sorted(computed) == [3, 7, 9, 12] and len(split.cache.rows) == 4  # each row alone at its own length
    second = model(ids[[2, 0]])
    assert len(computed) == 4  # all from the cache
    assert torch.equal(second, model(ids)[[2, 0]]) and torch.equal(first, model(ids))
    # Which batch first met a response does not change its states, nor does a cache that holds nothing.
    other = scorer("minilm-lora", 2).eval()
    other(ids[[3, 1]])
    key = ids[1, :7].numpy().tobytes()
    assert torch.equal(other.split.cache.get(key), split.cache.get(key))
    uncached = scorer("minilm-lora", 2).eval()
    uncached.split.cache.budget_bytes = 0
    assert torch.equal(uncached(ids), first) and uncached.split.cache.rows == {}


def test_copies_share_the_cache_and_another_process_starts_empty():
    model = scorer("tinyllama-lora", 1).eval()
    model(batch())
    cache = model.split.cache
    assert copy.deepcopy(model).split.cache is cache and len(cache.rows) == 4
    rebuild, args = cache.__reduce__()  # what pickling sends to another process: an empty cache, same budget
    fresh = rebuild(*args)
    assert fresh.rows == {} and fresh.bytes == 0 and fresh.budget_bytes == cache.budget_bytes


def test_an_empty_batch_still_gives_empty_logits():
    model = scorer("minilm-lora", 1)
    logits = model(torch.zeros((0, 5), dtype=torch.int64))
    assert logits.shape == (0, LABELS)


def text_config(**model) -> ExperimentConfig:
    return ExperimentConfig.from_dict({
        "data": {"dataset": "ngss", "partition": "natural"},
        "model": {"name": "minilm-lora", "pretrained": False, **model},
        "federation": {"num_clients": 9, "clients_per_round": 9},
    })  # fmt: skip


def test_config_takes_the_layer_count_and_refuses_what_the_model_lacks():
    assert text_config(lora_layers=2).model.text_options()["lora_layers"] == 2
    with pytest.raises(ValueError, match="at most minilm-lora's 6 layers"):
        text_config(lora_layers=7)
    with pytest.raises(ValueError, match="model.lora_layers"):
        text_config(lora_layers=-1)
    with pytest.raises(ValueError, match="mlx.*lora_layers"):
        ExperimentConfig.from_dict({
            "data": {"dataset": "ngss", "partition": "natural"},
            "model": {"name": "tinyllama-lora", "pretrained": False, "lora_layers": 2},
            "federation": {"num_clients": 9, "clients_per_round": 9}, "system": {"backend": "mlx"},
        })  # fmt: skip


@pytest.mark.filterwarnings("ignore:Full backward hook is firing")
def test_opacus_per_sample_gradients_through_the_split_are_each_examples_own():
    model = scorer("tinyllama-lora", 2, lora_dropout=0.0)  # Opacus needs train mode; no dropout keeps it exact
    assert_opacus_per_sample_gradients(model, batch()[:3], torch.tensor([[1.0, 0, 1], [0, 1, 1], [1, 1, 0]]))
