"""The privacy statement names the data, the clients and the final accuracy, lists ε from every
accountant that applies (the one used marked), states the neighbouring relation and the noise
source, and explains the audit's members/non-members in words that fit the dataset."""

from __future__ import annotations

import re

import pytest

from database import ExperimentStore
from experiment_config import ExperimentConfig
from privacy.report import render_markdown

AUDIT = {"auc": 0.52, "advantage": 0.03, "threshold": 0.3, "members": 500, "non_members": 500}
NGSS = ["data.dataset=ngss", "model.name=tinyllama-lora", "data.ngss_task=gas_filled_balloons"]


def stored_run(db_url: str, overrides: list[str], ledger: list[dict], *, info: dict | None = None,
               accuracy: float = 0.9123) -> tuple:  # fmt: skip
    """A fabricated finished run: config, dataset info, round ledger, audit and final accuracy."""
    store = ExperimentStore(db_url)
    config = ExperimentConfig().with_overrides(["federation.rounds=3", *overrides])
    experiment_id = store.create_experiment(config.to_dict(), name="report facts")
    store.mark_running(experiment_id)
    store.set_label_counts(experiment_id, [[30] * 10, [30] * 10])  # two clients of 300 examples
    if info is not None:
        store.set_dataset_info(experiment_id, info)
    for row in ledger:
        store.record_round(experiment_id, row)
    store.set_audit(experiment_id, AUDIT)
    final = {**ledger[-1], "accuracy": accuracy}
    store.finish(experiment_id, "completed", final=final)
    return store.get_experiment(experiment_id), store.rounds_frame([experiment_id])


def central_ledger(epsilon: float, *, rounds: int = 3, relation: str = "add/remove one client",
                   accountant: str = "rdp", sample_rate: float = 0.3) -> list[dict]:  # fmt: skip
    return [
        {"round": r, "accuracy": 0.5, "loss": 1.0, "seconds": 1.0, "bytes_up": 1, "bytes_down": 1, "clients": [],
         "epsilon": epsilon * r / rounds, "delta": 1e-5, "noise_multiplier": 1.1, "max_grad_norm": 1.0,
         "sample_rate": sample_rate, "privacy_steps": r, "accountant": accountant, "neighbouring_relation": relation}
        for r in range(1, rounds + 1)
    ]  # fmt: skip


def cell(text: str, row: str) -> str:
    """The value of one row of the summary table."""
    match = re.search(rf"^\| {re.escape(row)} \| (.*) \|$", text, re.MULTILINE)
    assert match, f"no row {row!r} in the statement"
    return match.group(1)


def test_mnist_statement_names_data_clients_accuracy_and_the_writers_caveat(db_url):
    ledger = central_ledger(2.0)
    overrides = ["privacy.mode=central", "privacy.noise_multiplier=1.1", "federation.num_clients=10",
                 "federation.clients_per_round=3", "data.max_train_examples=600"]  # fmt: skip
    experiment, rounds = stored_run(db_url, overrides, ledger, info={"source": "mnist"})

    text = render_markdown(experiment, rounds)

    assert cell(text, "Data").startswith("MNIST handwritten digits")
    assert cell(text, "Training subset") == "a seeded random subset of 600 training examples"
    assert cell(text, "Clients").startswith("10 clients (partition `iid`), 3 per round")
    assert cell(text, "Final accuracy").startswith("91.23% (accuracy")
    assert cell(text, "Neighbouring relation").startswith("add/remove one client")
    assert "different writers" in text
    assert "Adding or removing any one client" in text


def test_every_applicable_accountant_is_listed_with_the_used_one_marked(db_url):
    import dp_accounting

    ledger = central_ledger(9.99, accountant="prv")  # the ledger's ε is quoted as it is, not recomputed
    overrides = ["privacy.mode=central", "privacy.noise_multiplier=1.1", "privacy.accountant=prv",
                 "federation.num_clients=10", "federation.clients_per_round=3"]  # fmt: skip
    experiment, rounds = stored_run(db_url, overrides, ledger)

    listed = cell(render_markdown(experiment, rounds), "ε by accountant")

    assert listed.startswith("PRV 9.99 (**used**, the ledger's)")
    values = dict(re.findall(r"(RDP|PLD) ([0-9.]+)", listed))
    # Independent references: dp_accounting's own RDP and PLD accountants, Poisson q = 0.3, 3 rounds, σ = 1.1.
    event = dp_accounting.SelfComposedDpEvent(
        dp_accounting.PoissonSampledDpEvent(0.3, dp_accounting.GaussianDpEvent(1.1)), 3
    )
    rdp = dp_accounting.rdp.RdpAccountant().compose(event).get_epsilon(1e-5)
    pld = dp_accounting.pld.PLDAccountant(value_discretization_interval=1e-4).compose(event).get_epsilon(1e-5)
    assert float(values["RDP"]) == pytest.approx(rdp, rel=2e-2)  # Opacus's RDP orders differ slightly
    assert float(values["PLD"]) == pytest.approx(pld, rel=1e-2)
    assert float(values["PLD"]) < float(values["RDP"])  # PLD is the tighter bound


def test_fixed_size_sampling_states_replace_one_and_rdp_only(db_url):
    ledger = central_ledger(3.5, relation="replace one client")
    overrides = ["privacy.mode=central", "privacy.noise_multiplier=1.1", "federation.num_clients=10",
                 "federation.clients_per_round=3", "federation.client_sampling=fixed"]  # fmt: skip
    experiment, rounds = stored_run(db_url, overrides, ledger)

    text = render_markdown(experiment, rounds)

    assert cell(text, "Neighbouring relation").startswith("replace one client")
    assert "exactly 3 of the 10 clients, uniformly without replacement" in cell(text, "Sampling")
    assert "PRV and PLD do not apply" in cell(text, "ε by accountant")
    assert "Replacing any one client's whole dataset by any other" in text
    assert "Poisson" not in cell(text, "Sampling")


def test_a_ledger_written_before_the_relation_was_recorded_reads_as_add_remove(db_url):
    ledger = central_ledger(2.0, relation="")
    experiment, rounds = stored_run(db_url, ["privacy.mode=central", "federation.clients_per_round=3"], ledger)

    assert cell(render_markdown(experiment, rounds), "Neighbouring relation").startswith("add/remove one client")


def test_ngss_synthetic_statement_has_its_own_audit_wording(db_url):
    info = {"source": "synthetic", "task": "gas_filled_balloons", "train_responses": 1234}
    ledger = central_ledger(2.0)
    overrides = [*NGSS, "privacy.mode=central", "federation.num_clients=9", "federation.clients_per_round=3"]
    experiment, rounds = stored_run(db_url, overrides, ledger, info=info, accuracy=0.8)

    text = render_markdown(experiment, rounds)

    assert cell(text, "Data").startswith("NGSS rubric scoring, task `gas_filled_balloons`: synthetic")
    assert cell(text, "Training subset") == "the whole training split (1,234 responses)"
    assert cell(text, "Final accuracy").startswith("80.00% (per-label accuracy")
    assert "same seeded generator" in text
    assert "writers" not in text


def test_csv_statement_names_the_file_not_its_folder_and_warns_about_collection(db_url):
    overrides = ["data.dataset=csv", "model.name=tinyllama-lora", "data.csv_path=/home/lab/secret/pasta_train.csv",
                 "privacy.mode=central", "federation.clients_per_round=3"]  # fmt: skip
    info = {"source": "imported", "task": "pasta", "csv_path": "/home/lab/secret/pasta_train.csv"}
    experiment, rounds = stored_run(db_url, overrides, central_ledger(2.0), info=info)

    text = render_markdown(experiment, rounds)

    assert "imported from `pasta_train.csv`" in cell(text, "Data")
    assert "/home/lab/secret" not in text
    assert "collected differently" in text and "writers" not in text


def test_the_noise_source_is_stated(db_url):
    overrides = ["privacy.mode=central", "federation.clients_per_round=3"]
    seeded, seeded_rounds = stored_run(db_url, [*overrides, "system.seed=7"], central_ledger(1.0))
    secure, secure_rounds = stored_run(db_url, [*overrides, "privacy.secure_noise=true"], central_ledger(1.0))

    seeded_text, secure_text = render_markdown(seeded, seeded_rounds), render_markdown(secure, secure_rounds)

    assert "seed 7" in cell(seeded_text, "Noise source") and "non-cryptographic" in seeded_text
    assert "os.urandom" in cell(secure_text, "Noise source") and "non-cryptographic" not in secure_text
    assert "Releases outside training" in seeded_text and "Releases outside training" in secure_text


def test_augmentation_multiplicity_is_stated_beside_the_clip_norm(db_url):
    overrides = ["privacy.mode=local", "model.name=cnn-dp"]
    ledger = [{**row, "neighbouring_relation": "add/remove one example"} for row in central_ledger(1.0)]
    plain, plain_rounds = stored_run(db_url, overrides, ledger)
    copies, copies_rounds = stored_run(db_url, [*overrides, "privacy.augmentations=4"], ledger)

    plain_text, copies_text = render_markdown(plain, plain_rounds), render_markdown(copies, copies_rounds)

    assert "per-example gradient" in plain_text and "random shifts" not in plain_text
    assert "averaged over 4 random shifts" in copies_text
