from __future__ import annotations

import json
from collections import OrderedDict

import numpy as np
import pytest
import torch

from conftest import assert_opacus_per_sample_gradients
from model import (
    clean_name,
    create_model,
    flatten,
    get_parameters,
    head_size,
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
    # conv1 1·16·64+16, conv2 16·32·16+32, fc1 512·32+32, fc2 32·10+10 (Papernot et al. 2021's 26,010)
    assert parameter_count(get_parameters(create_model("cnn-dp"))) == 1_040 + 8_224 + 16_416 + 330


def test_dp_cnn_feature_maps_have_the_published_shapes():
    model = create_model("cnn-dp", seed=0)
    x = torch.randn(2, 1, 28, 28)
    first = model.pool(torch.tanh(model.conv1(x)))
    second = model.pool(torch.tanh(model.conv2(first)))
    assert first.shape == (2, 16, 13, 13) and second.shape == (2, 32, 4, 4)
    assert not any(isinstance(m, torch.nn.ReLU) for m in model.modules())  # bounded activations: tanh only


@pytest.mark.parametrize("name", ["cnn", "mlp", "cnn-dp"])
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


# ---- text models (text_models.py through create_model) ----------------------------------------

LABELS = 4
CORPUS = [
    "Gases A and D could be the same because both are flammable and have the same density.",
    "A and D",
    "idk",
    "Gas B and C are different substances because their densities are 1.422 and 1.981 g/L.",
    "Density and flammability are characteristic properties; volume is not.",
    "The layers have different properties than the starting substances, so a reaction happened.",
    "Atoms regroup into new molecules, but the number of atoms stays the same.",
    "héllo wörld ΔH 🙂 <s> <unk>",  # non-ASCII and literal special-token strings are plain text
]


def tinyllama(seed: int = 0, **options) -> torch.nn.Module:
    return create_model("tinyllama-lora", num_classes=LABELS, seed=seed, pretrained=False, **options)


@pytest.fixture(scope="module")
def text_models():
    from ngss import text_models

    return text_models


@pytest.fixture(scope="module")
def tiny_config(text_models):
    return text_models.tinyllama_config(num_labels=LABELS)


@pytest.fixture(scope="module")
def local_tokenizer(text_models):
    return text_models.load_tokenizer("tinyllama-lora", pretrained=False, corpus=CORPUS, vocab_size=400)


@pytest.fixture(scope="module")
def token_ids(local_tokenizer, text_models):
    """(8, L) ids of CORPUS; the first row is the longest, so it has no padding."""
    return text_models.encode(local_tokenizer, CORPUS, max_length=128)


def lora_values(params) -> int:
    return sum(t.numel() for name, t in params.items() if ".lora_A." in name or ".lora_B." in name)


def test_tinyllama_v0_architecture_has_the_published_parameter_count(tiny_config):
    from transformers import LlamaForCausalLM

    model = LlamaForCausalLM(tiny_config)
    count = sum(p.numel() for p in model.parameters())
    # embeddings + untied lm_head 2·32000·64; per layer q,k,v,o 4·64² + MLP 3·64·256 + 2 norms; final norm
    assert count == 2 * 32_000 * 64 + 8 * (4 * 64 * 64 + 3 * 64 * 256 + 2 * 64) + 64 == 4_621_376
    heads = (tiny_config.num_attention_heads, tiny_config.num_key_value_heads, tiny_config.head_dim)
    assert heads == (16, 16, 4) and tiny_config.rms_norm_eps == 1e-6 and not tiny_config.tie_word_embeddings


def test_tinyllama_lora_exchanges_only_lora_and_head():
    model = tinyllama()
    params = get_parameters(model)
    # 8 layers × {q_proj, v_proj} × (A: 8×64 + B: 64×8)
    assert lora_values(params) == 8 * 2 * (8 * 64 + 64 * 8) == 16_384
    prefix = "backbone.base_model.model."
    assert list(params)[:2] == [
        prefix + "model.layers.0.self_attn.q_proj.lora_A.default.weight",
        prefix + "model.layers.0.self_attn.q_proj.lora_B.default.weight",
    ]
    head = {name: t for name, t in params.items() if ".lora_" not in name}
    assert list(head) == [prefix + "score.weight"] and head[prefix + "score.weight"].shape == (LABELS, 64)
    assert all(".self_attn.q_proj.lora_" in n or ".self_attn.v_proj.lora_" in n for n in params if ".lora_" in n)
    assert parameter_count(params) == 16_384 + 64 * LABELS
    assert head_size(params) == 64 * LABELS
    assert parameter_bytes(params) <= 0.01 * 4 * 4_621_376
    assert list(params) == list(get_parameters(tinyllama(seed=9)))  # names are stable


def test_lora_targets_and_rank_are_options():
    params = get_parameters(tinyllama(lora_rank=4, lora_targets=["q_proj", "k_proj", "v_proj", "o_proj"]))
    assert lora_values(params) == 8 * 4 * (4 * 64 + 64 * 4)
    assert any(".o_proj.lora_A." in name for name in params)


def test_lora_starts_as_a_no_op(tiny_config, text_models, token_ids):
    from transformers import LlamaForSequenceClassification

    torch.manual_seed(0)
    base = LlamaForSequenceClassification(tiny_config).eval()
    with torch.no_grad():
        expected = base(input_ids=token_ids, attention_mask=(token_ids != 0).long()).logits
    scorer = text_models.with_lora(base, head="score", targets=("q_proj", "v_proj")).eval()
    with torch.no_grad():
        assert torch.equal(scorer(token_ids), expected)


def test_logits_ignore_right_padding_and_the_batch_is_trimmed(token_ids):
    model = tinyllama().eval()
    lengths = []
    model.backbone.get_input_embeddings().register_forward_hook(lambda m, args, out: lengths.append(args[0].shape[1]))
    padded = torch.nn.functional.pad(token_ids, (0, 128 - token_ids.shape[1]), value=model.pad_token_id)
    with torch.no_grad():
        unpadded_logits, padded_logits = model(token_ids), model(padded)
        alone = torch.cat([model(row[row != model.pad_token_id][None]) for row in token_ids])
    assert torch.equal(padded_logits, unpadded_logits)
    assert lengths[:2] == [token_ids.shape[1]] * 2  # padded to 128, computed at the longest row
    torch.testing.assert_close(alone, unpadded_logits, rtol=0, atol=1e-6)
    assert unpadded_logits.shape == (len(CORPUS), LABELS)


def test_an_empty_batch_gives_empty_logits_and_zero_gradients():
    model = tinyllama()
    logits = model(torch.zeros(0, 7, dtype=torch.long))  # Poisson sampling draws these
    assert logits.shape == (0, LABELS)
    torch.nn.functional.binary_cross_entropy_with_logits(logits, torch.zeros(0, LABELS), reduction="sum").backward()
    assert all(torch.equal(p.grad, torch.zeros_like(p)) for p in model.parameters() if p.requires_grad)


def test_a_step_changes_only_trainable_parameters_and_frozen_ones_get_no_gradient(token_ids):
    model = tinyllama()
    before = {name: t.clone() for name, t in model.state_dict().items()}
    trainable = {clean_name(n) for n, p in model.named_parameters() if p.requires_grad}
    labels = torch.randint(0, 2, (len(CORPUS), LABELS), generator=torch.Generator().manual_seed(0)).float()
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1.0)
    torch.nn.functional.binary_cross_entropy_with_logits(model(token_ids), labels).backward()
    assert all(p.grad is None for p in model.parameters() if not p.requires_grad)
    optimizer.step()
    changed = {name for name, t in model.state_dict().items() if not torch.equal(t, before[name])}
    assert changed <= trainable
    assert "backbone.base_model.model.score.weight" in changed
    assert any(".lora_B." in name for name in changed)  # B moves first; A's gradient is 0 while B = 0
    frozen = sum(p.numel() for n, p in model.named_parameters() if clean_name(n) not in trainable)
    assert frozen == 32_000 * 64 + 8 * (4 * 64 * 64 + 3 * 64 * 256 + 2 * 64) + 64  # the Llama body, no lm_head


def test_text_parameters_round_trip(token_ids):
    source, target = tinyllama(seed=1), tinyllama(seed=1)
    with torch.no_grad():
        for tensor in get_parameters(source).values():
            tensor.normal_(0, 0.5, generator=torch.Generator().manual_seed(tensor.numel()))
    source.eval(), target.eval()
    assert not torch.allclose(source(token_ids), target(token_ids))
    set_parameters(target, unflatten(flatten(get_parameters(source)), get_parameters(source)))
    assert torch.equal(source(token_ids), target(token_ids))


def test_seeded_text_models_are_reproducible_and_leave_the_global_rng_alone():
    rng_before = torch.random.get_rng_state()
    first, second, other = tinyllama(seed=3), tinyllama(seed=3), tinyllama(seed=4)
    assert torch.equal(torch.random.get_rng_state(), rng_before)
    for name, tensor in first.state_dict().items():
        assert torch.equal(tensor, second.state_dict()[name]), name
    assert not torch.equal(flatten(get_parameters(first)), flatten(get_parameters(other)))


@pytest.mark.parametrize(
    "options, message",
    [
        ({"lora_rank": 0}, "lora_rank"),
        ({"lora_rank": 2.0}, "lora_rank"),
        ({"lora_alpha": 0}, "lora_alpha"),
        ({"lora_dropout": 1.0}, "lora_dropout"),
        ({"lora_targets": "q_proj"}, "lora_targets"),
        ({"lora_targets": ["query"]}, "no module named"),
        ({"lora_targets": ["q_proj", "score"]}, "head"),
        ({"pretrained": "no"}, "pretrained"),
        ({"rank": 8}, "unknown text model options"),
    ],
)
def test_bad_text_options_are_errors(options, message):
    with pytest.raises(ValueError, match=message):
        create_model("tinyllama-lora", num_classes=LABELS, **{"pretrained": False, **options})


def test_text_options_on_image_models_and_bad_label_counts_are_errors():
    with pytest.raises(ValueError, match="only to text models"):
        create_model("cnn", pretrained=False)
    with pytest.raises(ValueError, match="num_classes"):
        create_model("tinyllama-lora", num_classes=0, pretrained=False)


def test_local_tokenizer_is_deterministic_and_pads_with_the_model_pad_id(text_models, local_tokenizer, token_ids):
    again = text_models.load_tokenizer("tinyllama-lora", pretrained=False, corpus=CORPUS, vocab_size=400)
    assert again.get_vocab() == local_tokenizer.get_vocab()
    assert torch.equal(text_models.encode(again, CORPUS), token_ids)
    assert (local_tokenizer.pad_token_id, local_tokenizer.bos_token_id, local_tokenizer.eos_token_id) == (0, 1, 2)
    assert local_tokenizer.pad_token_id == tinyllama().pad_token_id
    assert len(local_tokenizer) <= 400 and int(token_ids.max()) < len(local_tokenizer)
    assert (token_ids[:, 0] == 1).all()
    lengths = [len(local_tokenizer(text)["input_ids"]) for text in CORPUS]
    assert token_ids.shape == (len(CORPUS), max(lengths))
    for row, length in zip(token_ids, lengths):
        assert (row[:length] != 0).all() and (row[length:] == 0).all()  # text never yields the pad id
    assert local_tokenizer.decode(token_ids[-1], skip_special_tokens=True).strip() == CORPUS[-1]


def test_encode_truncates_at_max_length(text_models, local_tokenizer):
    ids = text_models.encode(local_tokenizer, CORPUS, max_length=6)
    assert ids.shape == (len(CORPUS), 6) and ids.dtype == torch.int64
    assert ids[0, 0] == 1
    short = text_models.encode(local_tokenizer, ["idk", "A and D"], max_length=128)
    assert short.shape[1] == max(len(local_tokenizer(t)["input_ids"]) for t in ["idk", "A and D"])
    with pytest.raises(ValueError, match="max_length"):
        text_models.encode(local_tokenizer, CORPUS, max_length=1)
    with pytest.raises(ValueError, match="texts"):
        text_models.encode(local_tokenizer, [])
    with pytest.raises(ValueError, match="corpus"):
        text_models.load_tokenizer("tinyllama-lora", pretrained=False)


@pytest.fixture()
def offline_hub(monkeypatch, tmp_path):
    """No network and an empty cache: the Hub library fails at once instead of retrying."""
    import huggingface_hub

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))


def test_pretrained_tinyllama_without_network_is_a_clear_error(text_models, offline_hub):
    unavailable = text_models.PretrainedUnavailableError
    with pytest.raises(unavailable, match="model 'Maykeye/TinyLLama-v0'.*pretrained=False.*minilm-lora"):
        create_model("tinyllama-lora", num_classes=LABELS)
    with pytest.raises(unavailable, match="tokenizer 'Maykeye/TinyLLama-v0'.*pretrained=False"):
        text_models.load_tokenizer("tinyllama-lora")


def test_pretrained_tinyllama_loads_a_causal_lm_checkpoint(text_models, tiny_config, monkeypatch, tmp_path):
    """The Hub code path, pointed at a local copy saved the way the Hub holds TinyLLama-v0."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(**{**tiny_config.to_dict(), "pad_token_id": None, "use_cache": True})  # as on the Hub
    torch.manual_seed(5)
    LlamaForCausalLM(config).save_pretrained(tmp_path)
    monkeypatch.setattr(text_models, "TINYLLAMA_REPO", str(tmp_path))
    model = create_model("tinyllama-lora", num_classes=LABELS, seed=0)
    saved = LlamaForCausalLM.from_pretrained(tmp_path).model.embed_tokens.weight
    assert torch.equal(model.backbone.get_input_embeddings().weight, saved)
    assert model.pad_token_id == 0 and model.backbone.config.use_cache is False
    assert list(get_parameters(model)) == list(get_parameters(tinyllama()))


def test_pretrained_tinyllama_tokenizer_gets_the_unk_pad(text_models, local_tokenizer, monkeypatch, tmp_path):
    """The Hub code path for the tokenizer, pointed at a local one saved without a pad token."""
    local_tokenizer.save_pretrained(tmp_path)
    config_path = tmp_path / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config.update(pad_token=None, padding_side="left", split_special_tokens=False)  # as TinyLLama-v0's
    config_path.write_text(json.dumps(config))
    monkeypatch.setattr(text_models, "TINYLLAMA_REPO", str(tmp_path))
    tokenizer = text_models.load_tokenizer("tinyllama-lora")
    assert (tokenizer.pad_token_id, tokenizer.padding_side) == (0, "right")
    ids = text_models.encode(tokenizer, ["idk <s>", CORPUS[0]])
    assert ids[0, 0] == 1 and (ids[0, 1:] != 1).all() and ids[0, -1] == 0


@pytest.fixture(scope="module")
def minilm():
    return create_model("minilm-lora", num_classes=LABELS, seed=0)


def test_minilm_loads_the_packaged_pretrained_weights(text_models, minilm):
    from safetensors.torch import load_file

    checkpoint = load_file(str(text_models.minilm_dir() / "model.safetensors"))
    bert = minilm.backbone.base_model.model.bert
    words = checkpoint["embeddings.word_embeddings.weight"]
    assert torch.equal(bert.embeddings.word_embeddings.weight, words)
    assert words.shape == (30_522, 384) and abs(words.double().norm().item() - 190.42729) < 1e-4
    assert torch.equal(bert.pooler.dense.weight, checkpoint["pooler.dense.weight"])
    assert torch.equal(
        bert.encoder.layer[5].attention.self.value.base_layer.weight,
        checkpoint["encoder.layer.5.attention.self.value.weight"],
    )


def test_minilm_exchanges_only_lora_and_classifier(minilm):
    params = get_parameters(minilm)
    assert lora_values(params) == 6 * 2 * (8 * 384 + 384 * 8)  # 6 layers × {query, value}
    head = [name for name in params if ".lora_" not in name]
    assert head == ["backbone.base_model.model.classifier.weight", "backbone.base_model.model.classifier.bias"]
    assert parameter_count(params) == 73_728 + 384 * LABELS + LABELS
    assert all(not p.requires_grad for n, p in minilm.named_parameters() if ".pooler." in n)


def test_minilm_without_pretrained_weights_is_random_with_the_same_names(minilm):
    model = create_model("minilm-lora", num_classes=LABELS, seed=0, pretrained=False)
    assert list(get_parameters(model)) == list(get_parameters(minilm))
    random_words = model.backbone.get_input_embeddings().weight
    assert random_words.shape == (30_522, 384)
    assert not torch.equal(random_words, minilm.backbone.get_input_embeddings().weight)


def test_minilm_tokenizer_and_padding(text_models, minilm):
    tokenizer = text_models.load_tokenizer("minilm-lora")
    ids = text_models.encode(tokenizer, CORPUS[:4])
    assert tokenizer.pad_token_id == minilm.pad_token_id == 0 and (ids[:, 0] == tokenizer.cls_token_id).all()
    minilm.eval()
    padded = torch.nn.functional.pad(ids, (0, 128 - ids.shape[1]))
    with torch.no_grad():
        logits = minilm(ids)
        assert torch.equal(minilm(padded), logits)
        alone = torch.cat([minilm(row[row != 0][None]) for row in ids])
    torch.testing.assert_close(alone, logits, rtol=0, atol=1e-5)


def test_minilm_pools_the_mean_of_its_tokens_by_default_as_sentence_transformers_does(text_models, minilm):
    tokenizer = text_models.load_tokenizer("minilm-lora")
    ids = text_models.encode(tokenizer, CORPUS[:4])
    hf = minilm.backbone.base_model.model
    minilm.eval()
    with torch.no_grad():
        logits = minilm(ids).double().numpy()
        hidden = hf.bert(input_ids=ids, attention_mask=(ids != 0).long()).last_hidden_state.double().numpy()
    mask = (ids != 0).numpy()[:, :, None]
    pooled = (hidden * mask).sum(axis=1) / mask.sum(axis=1)  # numpy reference: padding left out
    weight, bias = hf.classifier.weight.detach().double().numpy(), hf.classifier.bias.detach().double().numpy()
    np.testing.assert_allclose(logits, pooled @ weight.T + bias, rtol=0, atol=1e-5)
    assert text_models.text_pooling("minilm-lora", "") == "mean"


def test_minilm_cls_pooling_is_berts_own_head_with_the_same_parameters(text_models, minilm):
    cls = create_model("minilm-lora", num_classes=LABELS, seed=0, pooling="cls").eval()
    assert {n: t.shape for n, t in get_parameters(cls).items()} == {
        n: t.shape for n, t in get_parameters(minilm).items()
    }  # fmt: skip
    set_parameters(cls, get_parameters(minilm))
    ids = text_models.encode(text_models.load_tokenizer("minilm-lora"), CORPUS[:4])
    with torch.no_grad():
        native = cls.backbone(input_ids=ids, attention_mask=(ids != 0).long()).logits
        torch.testing.assert_close(cls(ids), native, rtol=0, atol=0)
        assert not torch.allclose(cls(ids), minilm.eval()(ids), atol=1e-3)


def test_tinyllama_can_mean_pool_and_refuses_cls(token_ids, text_models):
    last, mean = tinyllama().eval(), tinyllama(pooling="mean").eval()
    set_parameters(mean, get_parameters(last))
    padded = torch.nn.functional.pad(token_ids, (0, 5))
    with torch.no_grad():
        torch.testing.assert_close(mean(padded), mean(token_ids), rtol=0, atol=1e-6)
        alone = torch.cat([mean(row[row != 0][None]) for row in token_ids])
        torch.testing.assert_close(alone, mean(token_ids), rtol=0, atol=1e-5)
        assert not torch.allclose(mean(token_ids), last(token_ids), atol=1e-4)
    with pytest.raises(ValueError, match="model.pooling for tinyllama-lora must be one of last, mean.*'cls'"):
        tinyllama(pooling="cls")
    with pytest.raises(ValueError, match="pooling must be a string"):
        tinyllama(pooling=1)


@pytest.mark.filterwarnings("ignore:Full backward hook is firing")  # layer 0's LoRA input needs no grad
@pytest.mark.parametrize("pooling", ["last", "mean"])
def test_opacus_computes_per_sample_gradients_for_lora_and_head(token_ids, pooling):
    from opacus.validators import ModuleValidator

    model = tinyllama(lora_dropout=0.0, pooling=pooling)  # Opacus needs train mode; no dropout keeps the reference exact
    assert ModuleValidator.validate(model, strict=False) == []
    labels = torch.tensor([[1.0, 0, 1, 0], [0, 1, 1, 0], [1, 1, 0, 1]])
    assert_opacus_per_sample_gradients(model, token_ids[:3], labels)
