"""The privacy statement: the right numbers and the right caveats for each mode."""

from __future__ import annotations

import re
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO
from database import ExperimentStore
from experiment_config import ExperimentConfig
from privacy.report import render_markdown, report_filename

AUDIT = {
    "auc": 0.61234, "advantage": 0.18765, "threshold": 0.0421, "members": 800, "non_members": 800,
    "member_loss": 0.12, "non_member_loss": 0.48, "attack": "loss threshold (Yeom et al. 2018)",
}  # fmt: skip


def ledger_row(round_number: int, **privacy: float | int | str) -> dict:
    return {
        "round": round_number, "accuracy": 0.5, "loss": 1.0, "seconds": 1.0, "bytes_up": 1, "bytes_down": 1,
        "clients": [], **privacy,
    }  # fmt: skip


def stored_run(db_url: str, overrides: list[str], rows: list[dict], *, sigma=None, audit=None, **finish):
    """A fabricated run in a fresh database: config, round ledger, σ, audit, final status."""
    store = ExperimentStore(db_url)
    config = ExperimentConfig().with_overrides(["federation.rounds=5", *overrides])
    experiment_id = store.create_experiment(config.to_dict(), name="board review")
    store.mark_running(experiment_id)
    store.set_label_counts(experiment_id, [[10] * 10, [20] * 10, [40] * 10])  # clients hold 100, 200, 400
    if sigma is not None:
        store.set_noise_multiplier(experiment_id, sigma)
    for row in rows:
        store.record_round(experiment_id, row)
    if audit is not None:
        store.set_audit(experiment_id, audit)
    store.finish(experiment_id, finish.pop("status", "completed"), final=rows[-1] if rows else None, **finish)
    return store.get_experiment(experiment_id), store.rounds_frame([experiment_id])


def test_local_dp_statement_quotes_the_ledger(db_url):
    rows = [
        ledger_row(r, epsilon=eps, delta=1e-5, noise_multiplier=1.2345678, max_grad_norm=0.7, sample_rate=0.5,
                   privacy_steps=steps, accountant="rdp")
        for r, eps, steps in [(1, 1.1, 4), (2, 1.7, 8), (3, 2.3456789, 12)]
    ]  # fmt: skip
    experiment, rounds = stored_run(
        db_url, ["privacy.mode=local", "privacy.target_epsilon=3.0", "privacy.max_epsilon=3.5",
                 "privacy.max_grad_norm=0.7", "federation.batch_size=50"],
        rows, sigma=1.2345678, audit=AUDIT, status="stopped",
        stop_reason="privacy budget: round 4 would take client 2 past ε = 3.5",
    )  # fmt: skip

    text = render_markdown(experiment, rounds)

    assert text.startswith(f"# Privacy statement: experiment {experiment.id} (board review)")
    assert "DP-SGD" in text and "one training example (sample-level)" in text
    assert "(ε = 2.34568, δ = 1e-05)-differential privacy" in text
    assert "1.23457, calibrated before the run so that all 5 planned rounds end at ε ≤ 3" in text
    assert "0.7 (per-example gradient L2 norm)" in text
    assert "q_k = B/N_k, B = 50" in text and "N_k = 100 to 400 examples, so q_k = 0.125 to 0.5" in text
    assert "most DP-SGD steps of any client: 12" in text
    assert "RDP" in text and "| Rounds | 3 of 5 planned |" in text
    assert "privacy budget: round 4 would take client 2 past ε = 3.5" in text and "ε would pass 3.5" in text
    assert "AUC = 0.6123" in text and "advantage = 0.1877" in text and "800 examples" in text
    assert "**Measurable leakage**" in text and "lower bound" in text
    assert "examples, not users" in text and "non-cryptographic" in text
    assert "no formal privacy" not in text


def test_central_dp_statement_names_the_trusted_server_and_client_sampling(db_url):
    rows = [
        ledger_row(r, epsilon=0.5 * r, delta=1e-6, noise_multiplier=0.9, max_grad_norm=0.05, sample_rate=0.3,
                   privacy_steps=r, accountant="prv")
        for r in range(1, 6)
    ]  # fmt: skip
    experiment, rounds = stored_run(
        db_url, ["privacy.mode=central", "privacy.noise_multiplier=0.9", "privacy.max_grad_norm=0.05",
                 "privacy.delta=1e-6", "privacy.accountant=prv", "federation.num_clients=10",
                 "federation.clients_per_round=3"],
        rows, sigma=0.9, audit={**AUDIT, "auc": 0.5012, "advantage": 0.021},
    )  # fmt: skip

    text = render_markdown(experiment, rounds)

    assert "DP-FedAvg" in text and "one client's whole dataset (user-level)" in text
    assert "(ε = 2.5, δ = 1e-06)-differential privacy" in text
    assert "0.9, set in the configuration (not calibrated to a target ε)" in text
    assert "0.05 (per-client update L2 norm)" in text
    assert "q = clients_per_round / num_clients = 3/10 = 0.3" in text and "5 noised rounds" in text
    assert "PRV" in text and "| Rounds | 5 of 5 planned |" in text and "| Stopped early | no |" in text
    assert "server is trusted" in text
    assert "**No measurable leakage by this attack**" in text and "lower bound" in text
    assert "(N = 10 clients)" in text


def test_central_dp_under_secure_aggregation_names_the_distributed_noise(db_url):
    rows = [ledger_row(1, epsilon=0.7, delta=1e-5, noise_multiplier=1.1, max_grad_norm=0.5, sample_rate=0.3,
                       privacy_steps=1, accountant="rdp")]  # fmt: skip
    experiment, rounds = stored_run(
        db_url, ["privacy.mode=central", "privacy.noise_multiplier=1.1", "federation.num_clients=10",
                 "federation.clients_per_round=3", "federation.secure_aggregation=true",
                 "federation.secagg_threshold=0.75"],
        rows, sigma=1.1,
    )  # fmt: skip

    text = render_markdown(experiment, rounds)

    assert "noise added in shares by the clients" in text
    assert "m = ⌈secagg_threshold · num_clients⌉ = ⌈0.75 · 10⌉" in text
    assert "the server does not learn who was sampled" in text and "collude with the server" in text
    assert "server is trusted" not in text


def test_adaptive_clipping_reports_the_range_of_c(db_url):
    rows = [
        ledger_row(r, epsilon=0.4 * r, delta=1e-5, noise_multiplier=0.8, max_grad_norm=c, sample_rate=0.5,
                   privacy_steps=r, accountant="rdp")
        for r, c in [(1, 0.1), (2, 0.0905), (3, 0.12)]
    ]  # fmt: skip
    experiment, rounds = stored_run(
        db_url, ["privacy.mode=central", "privacy.adaptive_clipping=true", "privacy.max_grad_norm=0.1",
                 "privacy.target_quantile=0.6", "federation.rounds=3"],
        rows, sigma=0.8,
    )  # fmt: skip

    text = render_markdown(experiment, rounds)

    assert "adaptive (per-client update L2 norm): started at 0.1" in text and "0.6 quantile" in text
    assert "ranged 0.0905 to 0.12, last 0.12" in text


def test_non_private_statement_says_no_formal_privacy(db_url):
    rows = [ledger_row(r) for r in (1, 2)]
    experiment, rounds = stored_run(db_url, ["federation.rounds=2"], rows, audit={"error": "ValueError: boom"})

    text = render_markdown(experiment, rounds)

    assert "**no formal privacy guarantee**" in text and "no formal privacy" in text
    assert "do not describe this run as private" in text
    assert "(ε =" not in text and "Accountant" not in text
    assert "failed: ValueError: boom" in text and "| Rounds | 2 of 2 planned |" in text


def test_a_run_without_rounds_or_audit_still_renders(db_url):
    experiment, rounds = stored_run(
        db_url, ["privacy.mode=central"], [], status="failed", error="PrivacyError: no σ reaches ε"
    )
    text = render_markdown(experiment, rounds)
    assert "0 of 5 planned" in text and "PrivacyError: no σ reaches ε" in text and "No audit was run" in text
    assert report_filename(experiment) == f"experiment-{experiment.id}-privacy.md"


@pytest.mark.parametrize("epsilon", [0.0, 1.0, 8.0])
def test_the_quoted_dp_bound_on_the_advantage_is_the_hypothesis_test_limit(db_url, epsilon):
    rows = [ledger_row(1, epsilon=epsilon, delta=1e-5, noise_multiplier=1.0, max_grad_norm=1.0, sample_rate=0.5,
                       privacy_steps=1, accountant="rdp")]  # fmt: skip
    experiment, rounds = stored_run(db_url, ["privacy.mode=central", "federation.rounds=1"], rows, audit=AUDIT)

    quoted = re.search(r"\(e\^ε − 1 \+ 2δ\)/\(e\^ε \+ 1\) = ([0-9.e+-]+)", render_markdown(experiment, rounds))

    # Best TPR − FPR under TPR <= e^ε·FPR + δ and 1 − FPR <= e^ε·(1 − TPR) + δ, on a grid of FPR.
    fpr = np.linspace(0, 1, 200_001)
    tpr = np.minimum.reduce([np.exp(epsilon) * fpr + 1e-5, 1 - (1 - fpr - 1e-5) / np.exp(epsilon), np.ones_like(fpr)])
    assert quoted and float(quoted.group(1)) == pytest.approx((tpr - fpr).max(), abs=1e-4)


def test_the_report_module_needs_no_torch():
    code = "import sys; from privacy import report; assert 'torch' not in sys.modules and 'streamlit' not in sys.modules"
    assert subprocess.run([sys.executable, "-c", code], cwd=REPO).returncode == 0


def test_one_delta_rule_for_the_page_and_the_report():
    from privacy.report import delta_concern

    assert delta_concern(0.5, 0, "clients").startswith("δ = 0.5 promises nothing")
    assert delta_concern(1e-3, 1_000, "clients").startswith("δ = 0.001 is not below 1/N = 0.001 (N = 1,000 clients)")
    assert delta_concern(9.99e-4, 1_000, "clients") is None  # just below 1/N
    assert delta_concern(1e-5, 0, "examples") is None  # N unknown: only the 0.5 rule applies
