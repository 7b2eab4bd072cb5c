"""runs.preflight's cost estimates (issue 18): a round that cannot fit the memory available, or a
secure-aggregation round estimated over its time limit, is refused before anything is stored."""

from __future__ import annotations

import math

import pytest

import cli
from experiment_config import IMAGE_MODELS, ExperimentConfig
from runs import preflight
from runs.preflight import check_costs, estimate_round, model_parameter_count, secagg_round_seconds

MLP_PARAMS = 784 * 200 + 200 + 200 * 200 + 200 + 200 * 10 + 10  # 199,210: the 2NN, by hand
CNN_PARAMS = (25 * 32 + 32) + (32 * 25 * 64 + 64) + (64 * 7 * 7 * 512 + 512) + (512 * 10 + 10)  # 1,663,370


def config(
    model: str = "mlp", *, clients: int, per_round: int, privacy: str = "none", **federation
) -> ExperimentConfig:
    """A round of a rule that reads every update (median; secure aggregation's mean) unless `strategy`
    says otherwise: FedAvg's big rounds stream (`engine.streaming`) and hold no update (test_streaming)."""
    if not federation.get("secure_aggregation"):
        federation.setdefault("strategy", "median")
    return ExperimentConfig.from_dict({
        "model": {"name": model},
        "federation": {"num_clients": clients, "clients_per_round": per_round, **federation},
        "privacy": {"mode": privacy},
    })  # fmt: skip


def test_the_parameter_count_is_the_models_own_and_within_the_bound_for_every_image_model():
    assert model_parameter_count("mlp") == MLP_PARAMS == 199_210
    assert model_parameter_count("cnn") == CNN_PARAMS == 1_663_370
    assert max(model_parameter_count(name) for name in IMAGE_MODELS) <= preflight.IMAGE_MODEL_MAX_PARAMS


def test_a_config_far_below_the_limits_is_accepted_without_building_its_model(monkeypatch):
    monkeypatch.setattr(preflight, "model_parameter_count", lambda name: pytest.fail("the model was built"))
    check_costs(config(clients=100, per_round=100, secure_aggregation=True), available_bytes=8 * 10**9)


def test_a_round_holds_two_float32_copies_of_every_update_of_the_round():
    cost = estimate_round(config(clients=2_000, per_round=2_000))

    assert cost.memory_bytes == preflight.PROCESS_BYTES + 2 * 4 * MLP_PARAMS * 2_000
    assert (cost.num_params, cost.clients_held, cost.secagg_participants) == (MLP_PARAMS, 2_000, 0)


def test_a_round_over_the_memory_limit_is_refused_with_the_estimate_and_the_limit():
    available = 4_000_000_000  # 4.0 GB; the limit is 80% of it, 3.2 GB
    estimate = preflight.PROCESS_BYTES + 2 * 4 * MLP_PARAMS * 2_000  # 4.80 GB, by the formula above

    with pytest.raises(ValueError) as refused:
        check_costs(config(clients=2_000, per_round=2_000), available_bytes=available)

    message = str(refused.value)
    assert "\n" not in message
    assert f"needs about {estimate / 1e9:.1f} GB" in message  # 4.8 GB
    assert "over the limit of 3.2 GB (80% of the 4.0 GB available)" in message
    fitting = int(message.rsplit("at most ", 1)[1].replace(",", ""))
    check_costs(config(clients=2_000, per_round=fitting), available_bytes=available)  # the count it names fits
    with pytest.raises(ValueError, match="over the limit"):
        check_costs(config(clients=2_000, per_round=fitting + 1), available_bytes=available)  # and is the largest
    check_costs(config(clients=2_000, per_round=2_000), available_bytes=10**10)  # the MLP's own 4.8 GB fit 8 GB


def test_under_central_dp_the_whole_population_joins_secure_aggregation():
    central = estimate_round(config(clients=1_000, per_round=10, privacy="central", secure_aggregation=True))
    local = estimate_round(config(clients=1_000, per_round=10, secure_aggregation=True))

    assert (central.secagg_participants, local.secagg_participants) == (1_000, 10)
    assert central.memory_bytes - local.memory_bytes == preflight.SECAGG_COPIES * 4 * MLP_PARAMS * (1_000 - 10)
    assert central.secagg_seconds > 100 * local.secagg_seconds


def test_the_secure_aggregation_cost_model_counts_pairs_shares_and_values_by_hand():
    # 100 participants, full graph: k = 99 neighbours, t = ceil(0.5 · 100) = 50; P = 1,000.
    expected = (
        preflight.SECAGG_MASK_SECONDS * 100 * 99 * 1_000 + preflight.SECAGG_SHARE_SECONDS * 100 * 99 * 50
        + preflight.SECAGG_PAIR_SECONDS * 100 * 99 + preflight.SECAGG_VALUE_SECONDS * 100 * 1_000
    )  # fmt: skip
    assert math.isclose(secagg_round_seconds(100, 0, 1_000, 0.5), expected, rel_tol=1e-12)
    # SecAgg+ with k = 14: t = ceil(0.5 · 15) = 8; k >= n - 1 is the full graph again.
    plus = secagg_round_seconds(100, 14, 1_000, 0.5)
    assert math.isclose(
        plus,
        preflight.SECAGG_MASK_SECONDS * 1_400 * 1_000 + preflight.SECAGG_SHARE_SECONDS * 1_400 * 8
        + preflight.SECAGG_PAIR_SECONDS * 1_400 + preflight.SECAGG_VALUE_SECONDS * 100 * 1_000,
        rel_tol=1e-12,
    )  # fmt: skip
    assert secagg_round_seconds(10, 12, 1_000, 0.5) == secagg_round_seconds(10, 0, 1_000, 0.5)
    assert secagg_round_seconds(1, 0, 1_000, 0.5) == 0.0


def test_a_secure_aggregation_round_over_the_time_limit_is_refused_and_secagg_plus_is_not():
    full = config(clients=2_000, per_round=2_000, secure_aggregation=True)

    with pytest.raises(ValueError, match=r"2,000 participants masking with everyone \(full graph\) is estimated at "
                                         r"[\d,]+ min of protocol, over the limit of 10 min"):  # fmt: skip
        check_costs(full, available_bytes=10**13)
    plus = config(clients=2_000, per_round=2_000, secure_aggregation=True, secagg_neighbours=22)
    check_costs(plus, available_bytes=10**13)
    cost = estimate_round(plus)
    assert cost.secagg_neighbours == 22 and cost.secagg_seconds < preflight.SECAGG_ROUND_LIMIT_SECONDS


def test_text_models_are_not_estimated():
    text = ExperimentConfig.from_dict({"data": {"dataset": "ngss"}, "model": {"name": "tinyllama-lora"}})
    assert check_costs(text, available_bytes=1) is None


def test_the_cli_refuses_a_run_that_cannot_fit_before_storing_anything(tmp_path, capsys):
    database = tmp_path / "experiments.db"
    argv = ["run", "--db", f"sqlite:///{database}", "--set", "model.name=cnn",
            "--set", "federation.num_clients=50000", "--set", "federation.clients_per_round=50000",
            "--set", "federation.strategy=median"]  # fmt: skip  (FedAvg would stream: test_streaming)

    exit_code = cli.main(argv)

    err = capsys.readouterr().err
    assert exit_code == cli.EXIT_BAD_CONFIG
    assert err.count("\n") == 1 and "federation.clients_per_round = 50,000" in err and "over the limit of" in err
    estimate = preflight.PROCESS_BYTES + 2 * 4 * CNN_PARAMS * 50_000  # 666.9 GB
    assert f"({CNN_PARAMS:,} parameters) needs about {estimate / 1e9:,.1f} GB" in err
    assert not database.exists()
