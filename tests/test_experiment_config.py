from __future__ import annotations

import dataclasses
import json
import math

import pytest

import experiment_config
from experiment_config import (
    BOUNDS,
    OPTIONS,
    SECTIONS,
    ExperimentConfig,
    check_boolean,
    check_integer,
    check_number,
    check_one_of,
    check_string,
    default_data_dir,
)

# For every field: values that must be rejected (wrong type, out of range, unknown name).
BAD_VALUES = {
    "data.dataset": ["imagenet", 3, None],
    "data.partition": ["random", ""],
    "data.dirichlet_alpha": [0.0, -1.0, float("nan"), "0.5"],
    "data.ngss_task": [5, None, "balloons"],
    "data.csv_path": [1, None],
    "data.data_dir": ["", "   ", 7],
    "data.max_train_examples": [-1, 1.5, "10"],
    "data.max_test_examples": [-1, True],
    "data.folder_path": [1, None],
    "data.image_size": [15, 129, 32.0, "32"],
    "data.image_channels": [0, 2, 4, "3", True],
    "model.name": ["resnet", None],
    "model.pretrained": ["yes", 1],
    "model.lora_rank": [0, 257, 8.0],
    "model.lora_alpha": [0.0, -1.0, "32"],
    "model.lora_dropout": [-0.1, 0.95, None],
    "model.lora_targets": [3, None],
    "model.max_length": [4, 4096, "128"],
    "model.lora_layers": [-1, 65, 2.0, "2", True],
    "model.pooling": ["max", "CLS", None, 1],
    "federation.num_clients": [0, -3, 2.0, "10", True],
    "federation.clients_per_round": [0, 11, 1.0],
    "federation.rounds": [0, 100_001, "5"],
    "federation.local_epochs": [0, 2.5],
    "federation.batch_size": [0, -50, "50"],
    "federation.learning_rate": [0.0, -0.1, float("inf"), "fast"],
    "federation.client_optimizer": ["adam", "SGD", "", None, 1],
    "federation.bucket_by_length": ["yes", 1, None],
    "federation.strategy": ["fedsomething", 1],
    "privacy.mode": ["sometimes", 0],
    "privacy.noise_multiplier": [-1.0, "1", float("nan")],
    "privacy.max_grad_norm": [0.0, -1.0],
    "privacy.target_epsilon": [-0.5, "3"],
    "privacy.delta": [0.0, 1.0, 1.5, -1e-5],
    "privacy.accountant": ["moments", None],
    "privacy.mechanism": ["dp-sgd", "DP-FTRL", None],
    "privacy.audit_examples": [-1, 100_001, 10.0, "1000", True],
    "privacy.audit": ["none", "ONE_RUN", None, 1],
    "privacy.audit_canaries": [-1, 100_001, 10.0, "1000", True],
    "privacy.augmentations": [-1, 65, 2.0, "4", True],
    "data.examples_per_client": [-1, 100_001, 6.0, "6", True],
    "privacy.max_epsilon": [-1.0, "2", float("inf")],
    "privacy.adaptive_clipping": [1, "yes", None],
    "privacy.secure_noise": [1, "yes", None],
    "privacy.distributed_noise": ["discrete", "Skellam", None],
    "privacy.target_quantile": [0.0, 1.0, "0.5"],
    "privacy.clip_learning_rate": [0.0, -0.2, 100.0],
    "system.seed": [-1, 2**32, 1.5, "0"],
    "system.num_workers": [-1, 1000, "2"],
    "system.backend": ["cuda", 1],
    "system.runtime": ["ray", None],
    "system.precision": ["fp16", "BF16", 16],
    "system.mlflow_uri": [3, None, "mlruns", "ftp://host", "http://a b", "http://user:secret@127.0.0.1:5000"],
    "federation.proximal_mu": [-0.1, "0.01"],
    "federation.server_learning_rate": [-1.0, 1000.0],
    "federation.server_momentum": [1.0, -0.5],
    "federation.server_ema": [1.0, -0.1],
    "federation.beta1": [1.0, None],
    "federation.beta2": [1.0, -0.1],
    "federation.tau": [0.0, 11.0],
    "federation.trim_fraction": [0.5, -0.1],
    "federation.byzantine_clients": [-1, 1.5],
    "federation.multi_krum_keep": [-1, "2"],
    "federation.weighting_exponent": [1.5, -0.5],
    "federation.qffl_q": [-0.5, 51.0, float("nan")],
    "federation.qffl_lipschitz": [-1.0, float("inf"), "1"],
    "federation.selection": ["loudest", 0],
    "federation.client_sampling": ["random", "Poisson", 1],
    "federation.selection_candidates": [-1, 2.0],
    "federation.dropout_probability": [-0.1, 1.0, "0.3"],
    "federation.dropout_stage": ["after", None],
    "federation.dropout_heterogeneous": [1, "no"],
    "federation.min_clients": [0, 11],
    "federation.speed_spread": [-1.0, 4.0],
    "federation.round_deadline": [-1.0, "1"],
    "federation.straggler_policy": ["wait", 1],
    "federation.client_holdout": [-0.1, 0.6],
    "federation.personalization": ["fedbn", None],
    "federation.finetune_epochs": [0, 1.5],
    "attack.fraction": [-0.1, 1.5, "0.3"],
    "attack.behaviour": ["backdoor", 3],
    "attack.scale": [-1.0, float("inf")],
    "attack.noise_std": [-1.0, "1"],
    "communication.compression": ["zip", None],
    "communication.topk_fraction": [0.0, 1.5],
    "communication.error_feedback": [1, None],
    "communication.quantization_bits": [1, 17, 8.0],
    "communication.topk_momentum": [-0.1, 1.0, "0.9", True],
    "communication.topk_warmup_rounds": [-1, 1.5, 1001],
    "communication.bandwidth_mbps": [0.0, -1.0],
    "communication.bandwidth_spread": [-0.1, 5.0],
    "communication.latency_ms": [-1.0, "50"],
    "communication.latency_spread": [-1.0, 4.0],
    "federation.secure_aggregation": [1, "yes"],
    "federation.secagg_threshold": [0.0, 1.5],
    "federation.secagg_neighbours": [-2, 2.0],
    "federation.exclusion": ["all", True, ""],
    "federation.exclusion_flags": [0, 1.5, 1001],
    "federation.exclusion_window": [0, "3"],
    "federation.mode": ["asynchronous", 1, ""],
    "federation.buffer_size": [0, 2.5, 100_001],
    "federation.max_concurrency": [0, "4"],
    "federation.staleness_exponent": [-0.5, 11.0, "half"],
}


def all_fields() -> list[str]:
    return [f"{s}.{f.name}" for s, cls in SECTIONS.items() for f in dataclasses.fields(cls)]


def test_every_field_has_bad_values_listed():
    assert sorted(BAD_VALUES) == sorted(all_fields())


@pytest.mark.parametrize(("dotted", "value"), [(k, v) for k, vs in BAD_VALUES.items() for v in vs])
def test_bad_value_raises_naming_the_field(dotted: str, value: object):
    section, key = dotted.split(".")
    with pytest.raises(ValueError, match=dotted.replace(".", r"\.")):
        ExperimentConfig.from_dict({section: {key: value}})


def test_defaults_are_design_defaults():
    config = ExperimentConfig()
    assert (config.data.dataset, config.data.partition, config.model.name) == ("mnist", "iid", "cnn")
    assert (config.federation.num_clients, config.federation.rounds, config.federation.batch_size) == (10, 20, 50)
    assert config.federation.learning_rate == 0.05
    assert (config.privacy.mode, config.privacy.delta) == ("none", 1e-5)


def test_round_trip_through_dict_json_and_toml(tmp_path):
    config = ExperimentConfig().with_overrides(
        ["model.name=mlp", "federation.learning_rate=0.1", "data.partition=dirichlet", "data.dirichlet_alpha=0.3"]
    )
    assert ExperimentConfig.from_dict(config.to_dict()) == config
    assert ExperimentConfig.from_json(json.dumps(config.to_dict())) == config
    path = tmp_path / "c.toml"
    path.write_text('[model]\nname = "mlp"\n[federation]\nlearning_rate = 1\nrounds = 3\n')
    loaded = ExperimentConfig.from_toml(path)
    assert loaded.model.name == "mlp" and loaded.federation.rounds == 3
    assert loaded.federation.learning_rate == 1.0 and isinstance(loaded.federation.learning_rate, float)


def test_unknown_sections_keys_and_bad_files_are_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown config section 'optim'"):
        ExperimentConfig.from_dict({"optim": {}})
    with pytest.raises(ValueError, match="unknown key federation.lr"):
        ExperimentConfig.from_dict({"federation": {"lr": 0.1}})
    with pytest.raises(ValueError, match="section.key=value"):
        ExperimentConfig().with_overrides(["rounds=3"])
    with pytest.raises(ValueError, match="not found"):
        ExperimentConfig.from_toml(tmp_path / "missing.toml")
    (tmp_path / "bad.toml").write_text("[federation\n")
    with pytest.raises(ValueError, match="not valid TOML"):
        ExperimentConfig.from_toml(tmp_path / "bad.toml")


def test_private_modes_need_noise_or_a_target():
    with pytest.raises(ValueError, match="privacy.noise_multiplier must be > 0"):
        ExperimentConfig.from_dict({"privacy": {"mode": "local", "noise_multiplier": 0.0}})
    calibrated = ExperimentConfig.from_dict({"privacy": {"mode": "central", "noise_multiplier": 0.0, "target_epsilon": 2}})
    assert (calibrated.privacy.mode, calibrated.privacy.noise_multiplier) == ("central", 0.0)
    with pytest.raises(ValueError, match="privacy.max_epsilon"):
        ExperimentConfig.from_dict({"privacy": {"mode": "local", "target_epsilon": 3, "max_epsilon": 2}})


def test_overrides_parse_scalars_as_toml():
    config = ExperimentConfig().with_overrides(["federation.rounds=7", "data.partition=shards", "system.seed=42"])
    assert (config.federation.rounds, config.data.partition, config.system.seed) == (7, "shards", 42)


def test_data_dir_default_follows_environment(monkeypatch):
    monkeypatch.setenv("FPL_DATA_DIR", "/somewhere/else")
    assert default_data_dir() == "/somewhere/else" == ExperimentConfig().data.data_dir
    monkeypatch.delenv("FPL_DATA_DIR")
    assert ExperimentConfig().data.data_dir == "data"


def test_config_is_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        ExperimentConfig().federation.rounds = 3  # type: ignore[misc]


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"federation": {"strategy": "krum", "byzantine_clients": 4}}, "clients_per_round >= 11"),
        ({"federation": {"strategy": "bulyan", "byzantine_clients": 2}}, "clients_per_round >= 11"),
        ({"federation": {"strategy": "multi_krum", "byzantine_clients": 1, "multi_krum_keep": 20}}, "multi_krum_keep"),
        ({"federation": {"personalization": "fedper"}}, "client_holdout > 0"),
        ({"federation": {"strategy": "adaptive_weighting"}}, "client_holdout > 0"),
        ({"federation": {"selection": "power_of_choice", "selection_candidates": 5}}, "selection_candidates"),
        ({"federation": {"min_clients": 5, "clients_per_round": 4}}, "min_clients"),
        ({"privacy": {"mode": "central"}, "federation": {"selection": "availability"}}, "Poisson"),
        (
            {"privacy": {"mode": "central"}, "federation": {"personalization": "fedper", "client_holdout": 0.1}},
            "fedper",
        ),
    ],
)
def test_cross_field_rules(raw, message):
    with pytest.raises(ValueError, match=message):
        ExperimentConfig.from_dict(raw)


def test_realistic_federation_config_round_trips(tmp_path):
    config = ExperimentConfig.from_dict(
        {
            "federation": {
                "strategy": "bulyan", "byzantine_clients": 1, "clients_per_round": 10, "dropout_probability": 0.3,
                "dropout_stage": "during", "speed_spread": 0.5, "round_deadline": 1.5, "client_holdout": 0.1,
                "personalization": "finetune",
            },
            "attack": {"fraction": 0.3, "behaviour": "label_flip"},
            "communication": {"compression": "topk", "topk_fraction": 0.01},
        }
    )  # fmt: skip
    assert ExperimentConfig.from_json(config.to_json()) == config
    assert config.attack.fraction == 0.3 and config.communication.compression == "topk"


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"federation": {"secure_aggregation": True, "strategy": "median"}}, "needs each update"),
        ({"federation": {"secure_aggregation": True, "personalization": "fedper", "client_holdout": 0.1}}, "fedper"),
        ({"federation": {"secure_aggregation": True}, "communication": {"compression": "topk"}}, "dense"),
        ({"federation": {"secagg_neighbours": 3}}, "even"),
    ],
)
def test_secure_aggregation_rules(raw, message):
    with pytest.raises(ValueError, match=message):
        ExperimentConfig.from_dict(raw)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"data": {"dataset": "ngss"}}, "model.name must be one of tinyllama-lora, minilm-lora"),
        ({"model": {"name": "minilm-lora"}}, "needs model.name cnn or mlp"),
        ({"data": {"partition": "natural"}}, "needs data with schools"),
        ({"data": {"dataset": "ngss", "partition": "natural"}, "model": {"name": "minilm-lora"}}, "must be 9"),
        ({"data": {"dataset": "csv"}, "model": {"name": "minilm-lora"}}, "needs data.csv_path"),
        ({"system": {"backend": "mlx"}, "privacy": {"mode": "local"}}, "no DP-SGD"),
        ({"system": {"backend": "mlx"}, "data": {"dataset": "ngss"}, "model": {"name": "minilm-lora"}}, "MNIST"),
    ],
)
def test_workload_rules(raw, message):
    with pytest.raises(ValueError, match=message):
        ExperimentConfig.from_dict(raw)


ADAMW = {"client_optimizer": "adamw"}


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"federation": {**ADAMW, "strategy": "scaffold"}}, r"'scaffold' derives .*client_optimizer must be 'sgd'"),
        ({"federation": {**ADAMW, "personalization": "finetune", "client_holdout": 0.1}}, "'finetune' fine-tunes with"),
        ({"federation": ADAMW, "privacy": {"mode": "local"}}, r"runs DP-SGD .*client_optimizer must be 'sgd'"),
    ],
)
def test_adamw_is_refused_where_local_training_assumes_sgd(raw, message):
    with pytest.raises(ValueError, match=message):
        ExperimentConfig.from_dict(raw)


@pytest.mark.parametrize(
    "raw",
    [
        {"federation": {**ADAMW, "strategy": "fedprox"}},  # the proximal term joins AdamW's gradient
        {"federation": {**ADAMW, "strategy": "fednova"}},
        {"federation": ADAMW, "privacy": {"mode": "central"}},  # DP-FedAvg clips and noises whole updates
        {"federation": {**ADAMW, "personalization": "fedper", "client_holdout": 0.1}},
    ],
)
def test_adamw_is_accepted_elsewhere_and_round_trips(raw):
    config = ExperimentConfig.from_dict(raw)
    assert config.federation.client_optimizer == "adamw"
    assert ExperimentConfig.from_json(config.to_json()) == config
    assert ExperimentConfig().federation.client_optimizer == "sgd"  # the default is unchanged


def test_an_ngss_config_and_its_text_options():
    config = ExperimentConfig.from_dict({
        "data": {"dataset": "ngss", "partition": "natural", "ngss_task": "layers_in_test_tube"},
        "model": {"name": "tinyllama-lora", "pretrained": False, "lora_targets": "q_proj, k_proj ,v_proj"},
        "federation": {"num_clients": 9, "clients_per_round": 9},
    })  # fmt: skip
    assert config.model.text_options() == {
        "pretrained": False, "lora_rank": 8, "lora_alpha": 32.0, "lora_dropout": 0.1,
        "lora_targets": ("q_proj", "k_proj", "v_proj"), "pooling": "", "lora_layers": 0,
    }  # fmt: skip
    assert ExperimentConfig.from_json(config.to_json()) == config


def test_text_pooling_defaults_per_model_and_each_model_takes_only_its_own():
    from experiment_config import text_pooling

    assert (text_pooling("minilm-lora", ""), text_pooling("tinyllama-lora", "")) == ("mean", "last")
    ngss = {"data": {"dataset": "ngss", "partition": "natural"}, "federation": {"num_clients": 9, "clients_per_round": 9}}
    for name, pooling in (("minilm-lora", "cls"), ("minilm-lora", "mean"), ("tinyllama-lora", "mean")):
        ExperimentConfig.from_dict({**ngss, "model": {"name": name, "pooling": pooling}})
    with pytest.raises(ValueError, match="model.pooling for minilm-lora must be one of mean, cls .*default, mean.*'last'"):
        ExperimentConfig.from_dict({**ngss, "model": {"name": "minilm-lora", "pooling": "last"}})
    with pytest.raises(ValueError, match="model.pooling must be one of , mean, cls, last; got 'max'"):
        ExperimentConfig.from_dict({**ngss, "model": {"name": "minilm-lora", "pooling": "max"}})
    mlx = {**ngss, "system": {"backend": "mlx"}}
    ExperimentConfig.from_dict({**mlx, "model": {"name": "tinyllama-lora", "pooling": "last"}})
    with pytest.raises(ValueError, match="'mlx' reads the last token .*not 'mean'"):
        ExperimentConfig.from_dict({**mlx, "model": {"name": "tinyllama-lora", "pooling": "mean"}})


def test_the_config_knows_the_nine_ngss_tasks_in_the_generators_order():
    from experiment_config import NGSS_TASKS
    from ngss.data import TASKS

    assert NGSS_TASKS == tuple(TASKS)  # the order seeds each task's generator (ngss/data.py)


# -- the one home of bounds and options, and the checks everyone uses ----------------------------


def test_every_numeric_key_has_bounds_and_every_choice_its_options():
    keys = {f"{s}.{f.name}": f.type for s, cls in SECTIONS.items() for f in dataclasses.fields(cls)}

    numeric = {key for key, kind in keys.items() if kind in ("int", "float")}
    choices = {key for key, kind in keys.items() if kind == "str" and key in OPTIONS}

    assert set(BOUNDS) == numeric
    assert set(OPTIONS) == choices
    for key, (low, high) in BOUNDS.items():  # the sidebar's number inputs need the key's own type
        assert type(low) is type(high) and type(low).__name__ == keys[key], key


@pytest.mark.parametrize("key", sorted(BOUNDS))
def test_bounds_are_what_validation_enforces(key):
    section, name = key.split(".")
    low, high = BOUNDS[key]
    step = 1 if isinstance(low, int) else max(abs(high), 1.0) * 1e-9
    shown = f"[{low}, {high}]" if isinstance(low, int) else f"[{low:g}, {high:g}]"

    for outside in (low - step, high + step):
        with pytest.raises(ValueError) as raised:
            ExperimentConfig().replace(section, **{name: outside})
        assert str(raised.value).startswith(f"{key} must be in {shown}, got "), str(raised.value)


def test_sidebar_options_are_the_configs():
    assert OPTIONS["federation.strategy"] is experiment_config.STRATEGIES
    assert OPTIONS["privacy.accountant"] == ("rdp", "prv", "pld")
    assert OPTIONS["model.pooling"] == ("", "mean", "cls", "last")


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: check_number("delta", 1.0, low=0.0, high=1.0, low_open=True, high_open=True),
         r"^delta must be in \(0, 1\), got 1.0$"),
        (lambda: check_number("sample_rate", 0.0, low=0.0, high=1.0, low_open=True), r"in \(0, 1\], got 0.0$"),
        (lambda: check_number("max_norm", 0, low=0.0, low_open=True), r"^max_norm must be > 0, got 0$"),
        (lambda: check_number("noise_multiplier", -1.0, low=0.0), r"^noise_multiplier must be >= 0, got -1.0$"),
        (lambda: check_number("learning_rate", math.inf, low=0.0, low_open=True), "must be a finite number, got inf"),
        (lambda: check_number("learning_rate", math.nan, low=0.0), "must be >= 0, got nan"),
        (lambda: check_number("x", True), "x must be a number, got True"),
        (lambda: check_number("x", 10**400, low=0), "x must be a finite number"),
        (lambda: check_integer("steps", -1, low=0), r"^steps must be an integer >= 0, got -1$"),
        (lambda: check_integer("rounds", 0, low=1, high=5), r"^rounds must be in \[1, 5\], got 0$"),
        (lambda: check_integer("rounds", 2.0, low=1), "rounds must be an integer, got 2.0"),
        (lambda: check_one_of("accountant", "gdp", ("rdp", "prv")), "^accountant must be one of rdp, prv; got 'gdp'$"),
        (lambda: check_boolean("flag", 1), "flag must be true or false, got 1"),
        (lambda: check_string("path", None), "path must be a string, got None"),
    ],
)
def test_checks_name_the_field_and_the_allowed_range(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_checks_return_the_checked_value():
    assert check_number("x", 2, low=0.0) == 2.0 and isinstance(check_number("x", 2, low=0.0), float)
    assert check_integer("n", 3, low=1, high=3) == 3
    assert check_one_of("mode", "local", ("none", "local")) == "local"
    assert check_boolean("b", False) is False and check_string("s", "") == ""


def test_the_sidebar_reads_its_ranges_and_options_from_here():
    from app_pages import config_fields

    groups = [value for name, value in vars(config_fields).items() if name.endswith("_FIELDS")]
    fields = [field for group in groups for field in group]
    narrower = {"privacy.delta": (1e-12, 0.5), "communication.topk_fraction": (1e-4, 1.0)}  # see config_fields

    assert len(fields) > 60
    for field in fields:
        key = f"{field.section}.{field.name}"
        if key in BOUNDS:
            assert field.bounds() == narrower.get(key, BOUNDS[key]), key
        if key in OPTIONS:
            assert field.choices == OPTIONS[key], key
        else:
            assert field.choices == (), key
