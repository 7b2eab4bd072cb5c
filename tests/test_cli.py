from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO
from database import ExperimentStore

TINY = [
    "--set", "model.name=mlp", "--set", "data.max_train_examples=600", "--set", "data.max_test_examples=500",
    "--set", "federation.num_clients=3", "--set", "federation.clients_per_round=2",
    "--set", "federation.rounds=2", "--set", "system.num_workers=1",
]  # fmt: skip


def cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(REPO / "cli.py"), *args], capture_output=True, text=True, timeout=timeout, cwd=REPO
    )


def test_run_json_separates_absent_clients_and_reports_personalization(db_url):
    result = cli(
        "run", "--json", "--db", db_url, *TINY, "--set", "federation.dropout_probability=0.5",
        "--set", "federation.rounds=3", "--set", "federation.client_holdout=0.2",
        "--set", "federation.personalization=finetune", "--set", "privacy.audit_examples=0",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    rounds, final = lines[:-1], lines[-1]
    for row in rounds:
        assert all(c["status"] in ("ok", "partial", "lost") for c in row["clients"])
        assert all(a["status"] in ("dropped", "late") for a in row["absent"])
        assert len(row["clients"]) + len(row["absent"]) == 2
    assert any(row["absent"] for row in rounds)
    assert final["personalization"]["method"] == "finetune" and len(final["personalization"]["clients"]) == 3
    stored = ExperimentStore(db_url).get_experiment(final["experiment_id"])
    assert stored.personalization == final["personalization"] and len(stored.client_profiles) == 3


def test_run_json_prints_rounds_then_the_experiment_id(db_url):
    result = cli("run", "--json", "--db", db_url, *TINY)
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    rounds, final = lines[:-1], lines[-1]
    assert [r["round"] for r in rounds] == [1, 2]
    for row in rounds:
        assert set(row) >= {"round", "accuracy", "loss", "epsilon", "delta", "seconds", "bytes_up", "bytes_down", "clients"}
        assert len(row["clients"]) == 2
        assert set(row["clients"][0]) >= {"id", "num_examples", "steps", "loss", "epsilon"}
    assert final["status"] == "completed" and final["accuracy"] == rounds[-1]["accuracy"]

    store = ExperimentStore(db_url)
    stored = store.rounds_frame([final["experiment_id"]])
    assert stored["accuracy"].tolist() == [r["accuracy"] for r in rounds]

    listed = json.loads(cli("list", "--json", "--db", db_url).stdout)
    assert [e["id"] for e in listed] == [final["experiment_id"]] and listed[0]["status"] == "completed"
    shown = json.loads(cli("show", str(final["experiment_id"]), "--json", "--db", db_url).stdout)
    assert [r["round"] for r in shown["rounds"]] == [1, 2] and shown["config"]["model"]["name"] == "mlp"
    assert "completed" in cli("list", "--db", db_url).stdout
    assert final["weights"] is None and store.load_weights(final["experiment_id"]) is None  # image models: none
    scored = cli("score", str(final["experiment_id"]), "--text", "a response", "--db", db_url)
    assert scored.returncode == 1 and "has no stored weights" in scored.stderr


def test_bad_config_exits_2_with_one_line_and_writes_nothing(tmp_path):
    db_file = tmp_path / "untouched.db"
    for args in (["--set", "federation.rounds=0"], ["--set", "model.name=vgg"], ["--config", str(tmp_path / "none.toml")]):
        result = cli("run", "--db", f"sqlite:///{db_file}", *args)
        assert result.returncode == 2
        assert len(result.stderr.strip().splitlines()) == 1 and result.stderr.startswith("error: ")
        assert result.stdout == ""
    assert not db_file.exists()


def test_config_file_and_overrides_combine(tmp_path, db_url):
    config = tmp_path / "exp.toml"
    config.write_text('[model]\nname = "cnn"\n[federation]\nrounds = 5\n')
    result = cli("run", "--json", "--db", db_url, "--config", str(config), *TINY, "--set", "federation.rounds=1")
    assert result.returncode == 0, result.stderr
    final = json.loads(result.stdout.splitlines()[-1])
    stored = ExperimentStore(db_url).get_experiment(final["experiment_id"]).config
    assert stored["model"]["name"] == "mlp" and stored["federation"]["rounds"] == 1


def test_show_unknown_experiment_fails_clearly(db_url):
    result = cli("show", "42", "--db", db_url)
    assert result.returncode == 1 and "no experiment 42" in result.stderr


def test_worker_runs_a_queued_experiment_and_honours_stop(db_url):
    from experiment_config import ExperimentConfig

    store = ExperimentStore(db_url)
    config = ExperimentConfig().with_overrides([a for a in TINY if a != "--set"] + ["federation.rounds=50"])
    experiment_id = store.create_experiment(config.to_dict())
    store.request_stop(experiment_id)  # asked before it starts: it stops after round 1
    result = cli("worker", str(experiment_id), "--db", db_url)
    assert result.returncode == 0, result.stderr
    experiment = store.get_experiment(experiment_id)
    assert experiment.status == "stopped" and experiment.rounds_done == 1


def test_launch_worker_detaches_and_completes(db_url):
    from runs.workers import launch_worker, pid_alive
    from experiment_config import ExperimentConfig

    store = ExperimentStore(db_url)
    config = ExperimentConfig().with_overrides([a for a in TINY if a != "--set"])
    experiment_id = store.create_experiment(config.to_dict())
    process = launch_worker(store, experiment_id)
    assert store.get_experiment(experiment_id).worker_pid == process.pid
    process.wait(timeout=120)
    assert not pid_alive(process.pid)
    experiment = store.get_experiment(experiment_id)
    assert experiment.status == "completed" and experiment.rounds_done == 2


def test_failed_run_records_its_error(db_url, tmp_path):
    result = cli("run", "--db", db_url, *TINY, "--set", f"data.data_dir={tmp_path / 'nothing'}")
    # Offline the download fails; the run is stored as failed with the reason.
    assert result.returncode == 1
    (experiment,) = ExperimentStore(db_url).list_experiments()
    assert experiment.status == "failed" and "MNIST not found" in experiment.error


def test_interrupt_stops_after_the_current_round(db_url):
    process = subprocess.Popen(
        [sys.executable, str(REPO / "cli.py"), "run", "--json", "--db", db_url, *TINY, "--set", "federation.rounds=200"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
    )  # fmt: skip
    first = process.stdout.readline()  # wait until a round has been written
    assert json.loads(first)["round"] == 1
    process.send_signal(2)
    out, _ = process.communicate(timeout=60)
    final = json.loads(out.splitlines()[-1])
    assert process.returncode == 0 and final["status"] == "stopped" and final["rounds"] < 200


def test_private_run_prints_and_stores_the_ledger_and_stops_at_its_budget(db_url):
    private = [
        "--set", "privacy.mode=central", "--set", "privacy.noise_multiplier=3.0",
        "--set", "privacy.max_grad_norm=0.01", "--set", "federation.rounds=10", "--set", "privacy.max_epsilon=3.0",
    ]  # fmt: skip
    result = cli("run", "--json", "--db", db_url, *TINY, *private)
    assert result.returncode == 0, result.stderr
    *rounds, final = [json.loads(line) for line in result.stdout.splitlines()]
    assert final["status"] == "stopped" and final["stop_reason"].startswith("privacy budget")
    assert len(rounds) == 7 and all(0 < r["epsilon"] <= 3.0 for r in rounds)  # ε(8 rounds) = 3.05
    for row in rounds:
        assert (row["noise_multiplier"], row["max_grad_norm"], row["accountant"], row["delta"]) == (3.0, 0.01, "rdp", 1e-5)
        assert row["sample_rate"] == pytest.approx(2 / 3) and row["privacy_steps"] == row["round"]

    store = ExperimentStore(db_url)
    experiment = store.get_experiment(final["experiment_id"])
    assert experiment.status == "stopped" and experiment.stop_reason == final["stop_reason"]
    assert experiment.noise_multiplier == 3.0 and experiment.final_epsilon == rounds[-1]["epsilon"]
    ledger = store.rounds_frame([experiment.id])
    assert ledger["epsilon"].tolist() == [r["epsilon"] for r in rounds]
    assert set(ledger["accountant"]) == {"rdp"} and ledger["privacy_steps"].tolist() == [r["round"] for r in rounds]


LEDGER_HEADERS = ("epsilon", "delta", "noise_multiplier", "max_grad_norm", "sample_rate", "privacy_steps", "accountant")


def test_run_audits_the_final_model_and_show_reports_it(db_url):
    local = [
        "--set", "privacy.mode=local", "--set", "privacy.noise_multiplier=1.1", "--set", "privacy.audit_examples=400",
    ]  # fmt: skip
    result = cli("run", "--json", "--db", db_url, *TINY, *local)
    assert result.returncode == 0, result.stderr
    final = json.loads(result.stdout.splitlines()[-1])
    audit = final["audit"]
    assert 0.0 <= audit["auc"] <= 1.0 and 0.0 <= audit["advantage"] <= 1.0
    assert audit["members"] == audit["non_members"] == 400 and audit["threshold"] > 0
    experiment_id = str(final["experiment_id"])
    assert ExperimentStore(db_url).get_experiment(final["experiment_id"]).audit == audit

    assert json.loads(cli("show", experiment_id, "--json", "--db", db_url).stdout)["audit"] == audit
    report = cli("show", experiment_id, "--privacy-report", "--db", db_url)
    assert report.returncode == 0, report.stderr
    assert report.stdout.startswith(f"# Privacy statement: experiment {experiment_id}")
    assert f"AUC = {audit['auc']:.4f}" in report.stdout and "DP-SGD" in report.stdout
    assert f"ε = {final['epsilon']:.6g}" in report.stdout

    shown = cli("show", experiment_id, "--db", db_url).stdout
    ledger = shown[shown.index("privacy ledger") :].splitlines()
    assert all(header in ledger[1].split() for header in LEDGER_HEADERS)
    assert ledger[3].split()[:4] == ["2", f"{final['epsilon']:.4f}", "1e-05", "1.1"] and "rdp" in ledger[3]
    assert f"AUC {audit['auc']:.4f}" in shown


def test_non_private_show_hides_the_empty_ledger_and_audit_can_be_off(db_url):
    result = cli("run", "--json", "--db", db_url, *TINY, "--set", "privacy.audit_examples=0")
    assert result.returncode == 0, result.stderr
    final = json.loads(result.stdout.splitlines()[-1])
    assert final["audit"] is None and ExperimentStore(db_url).get_experiment(final["experiment_id"]).audit is None

    shown = cli("show", str(final["experiment_id"]), "--db", db_url).stdout
    table = shown[shown.index(" round") :]
    assert "accuracy" in table and not any(header in table.split() for header in LEDGER_HEADERS)
    assert "no formal privacy" in shown and "privacy audit" not in shown


def test_an_audit_failure_keeps_the_run(db_url, monkeypatch):
    from experiment_config import ExperimentConfig
    from federated_learning import FederatedRun
    from runs import service
    from runs.workers import StopSignals

    def broken(self, num_examples):
        raise RuntimeError("audit exploded")

    monkeypatch.setattr(FederatedRun, "audit", broken)
    store = ExperimentStore(db_url)
    config = ExperimentConfig().with_overrides([a for a in TINY if a != "--set"])
    experiment_id = store.create_experiment(config.to_dict())
    outcome = service.execute(store, experiment_id, config, reporter=service.SilentReporter(),
                              signals=StopSignals(handle=False))  # leave pytest's signal handlers alone

    final = outcome.final
    assert final["status"] == "completed" and final["rounds"] == 2
    assert final["audit"] == {"error": "RuntimeError: audit exploded"}
    experiment = store.get_experiment(experiment_id)
    assert experiment.status == "completed" and experiment.rounds_done == 2 and experiment.error is None
    assert experiment.audit == final["audit"] and experiment.final_accuracy == final["accuracy"]


def test_sigterm_to_a_sweep_worker_stops_the_current_run_and_the_queue(db_url):
    from experiment_config import ExperimentConfig

    store = ExperimentStore(db_url)
    config = ExperimentConfig().with_overrides([a for a in TINY if a != "--set"] + ["federation.rounds=200"])
    first, second = store.create_experiment(config.to_dict()), store.create_experiment(config.to_dict())
    process = subprocess.Popen(
        [sys.executable, str(REPO / "cli.py"), "worker", str(first), str(second), "--db", db_url],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
    )  # fmt: skip
    assert json.loads(process.stdout.readline())["round"] == 1  # the first run is training
    process.terminate()
    process.communicate(timeout=60)
    assert process.returncode == 0
    stopped, never_started = store.get_experiment(first), store.get_experiment(second)
    assert stopped.status == "stopped" and 1 <= stopped.rounds_done < 200
    assert never_started.status == "stopped" and never_started.rounds_done == 0
    assert "before this run started" in never_started.stop_reason


TEXT = [
    "--set", "data.dataset=ngss", "--set", "data.partition=natural", "--set", "model.name=tinyllama-lora",
    "--set", "model.pretrained=false", "--set", "model.max_length=32", "--set", "federation.num_clients=9",
    "--set", "federation.clients_per_round=9", "--set", "federation.rounds=1", "--set", "federation.batch_size=16",
    "--set", "data.max_train_examples=90", "--set", "data.max_test_examples=30", "--set", "system.num_workers=1",
    "--set", "privacy.audit_examples=0",
]  # fmt: skip


def test_a_text_run_stores_its_final_weights_and_score_applies_them(db_url):
    from ngss.data import TASKS

    result = cli("run", "--json", "--db", db_url, *TEXT, timeout=300)
    assert result.returncode == 0, result.stderr
    final = json.loads(result.stdout.splitlines()[-1])
    experiment_id = final["experiment_id"]
    stored = ExperimentStore(db_url).load_weights(experiment_id)
    assert final["weights"] == {"values": 16_384 + 64 * 3} == {"values": stored.num_values}  # LoRA + 3-label head
    assert np.isfinite(stored.values()).all() and np.abs(stored.values()).max() > 0

    texts = ["Gases A and D are the same: both flammable, same density.", "idk"]
    scored = cli("score", str(experiment_id), "--json", "--db", db_url, "--text", texts[0], "--text", texts[1])

    assert scored.returncode == 0, scored.stderr
    rows = [json.loads(line) for line in scored.stdout.splitlines()]
    assert [row["text"] for row in rows] == texts
    elements = TASKS["gas_filled_balloons"].elements
    for row in rows:
        assert [(e["label"], e["meaning"]) for e in row["elements"]] == [(e.label, e.meaning) for e in elements]
        assert all(e["predicted"] == int(e["probability"] >= 0.5) for e in row["elements"])
        assert row["total_score"] == sum(e["predicted"] for e in row["elements"])
    plain = cli("score", str(experiment_id), "--db", db_url, "--text", texts[1]).stdout
    probability = rows[1]["elements"][0]["probability"]
    assert plain.startswith("idk\n  total score ") and f"E1   {probability:.3f}  " in plain


def test_a_failure_to_store_the_weights_keeps_the_run(db_url, monkeypatch):
    from experiment_config import ExperimentConfig
    from runs import service
    from runs.workers import StopSignals

    def broken(self, experiment_id, tensor_bytes, num_values):
        raise OSError("disk full")

    monkeypatch.setattr(ExperimentStore, "save_weights", broken)
    store = ExperimentStore(db_url)
    config = ExperimentConfig().with_overrides([a for a in TEXT if a != "--set"])
    experiment_id = store.create_experiment(config.to_dict())
    outcome = service.execute(store, experiment_id, config, reporter=service.SilentReporter(),
                              signals=StopSignals(handle=False))  # leave pytest's signal handlers alone

    final = outcome.final
    assert final["status"] == "completed"
    assert final["weights"] == {"error": "could not store the final weights: OSError: disk full"}
    experiment = store.get_experiment(experiment_id)
    assert (experiment.status, experiment.rounds_done, experiment.error) == ("completed", 1, None)
    assert store.load_weights(experiment_id) is None


def test_a_worker_runs_a_flower_runtime_experiment_on_a_local_deployment(db_url):
    pytest.importorskip("flwr")
    store = ExperimentStore(db_url)
    from cli import build_config

    assignments = [value for value in TINY if value != "--set"] + ["system.runtime=flower", "federation.clients_per_round=3"]
    config = build_config(None, assignments)
    experiment_id = store.create_experiment(config.to_dict(), name="on flower")
    result = cli("worker", str(experiment_id), "--db", db_url, timeout=300)
    assert result.returncode == 0, result.stderr
    stored = store.get_experiment(experiment_id)
    assert stored.status == "completed" and stored.runtime == "flower" and stored.rounds_done == 2
    assert (store.rounds_frame([experiment_id])["num_clients"] == 3).all()


# -- hardening (issue 18): no file content, no password, bad input refused up front, one-line errors --

SECRET_VALUE = "fpl-7c1e9a-do-not-leak"  # what must never reach the database, a log or the terminal
TEXT_MODEL = ["--set", "model.name=tinyllama-lora", "--set", "model.pretrained=false"]


def database_bytes(db_url: str) -> bytes:
    """The SQLite database's files as they are on disk (the WAL too): what a grep of it would see."""
    path = Path(db_url.removeprefix("sqlite:///"))
    return b"".join(p.read_bytes() for p in path.parent.glob(path.name + "*"))


def test_a_secret_file_given_as_the_csv_is_refused_by_name_never_quoted(tmp_path, db_url):
    secret = tmp_path / "service.env"
    secret.write_text(f"SECRET_TOKEN={SECRET_VALUE}\nOTHER=1,E1,2\n")
    link = tmp_path / "innocent_train.csv"
    link.symlink_to(secret)
    for path in (secret, link):
        result = cli("run", "--db", db_url, "--set", "data.dataset=csv", "--set", f"data.csv_path={path}", *TEXT_MODEL)
        assert result.returncode == 2, result.stderr
        assert result.stderr.startswith(f"error: {path}: ") and len(result.stderr.splitlines()) == 1
        assert SECRET_VALUE not in result.stdout + result.stderr and "SECRET_TOKEN" not in result.stderr
    assert not Path(db_url.removeprefix("sqlite:///")).exists()  # refused before the database was opened

    # The same configs stored as the page stores them (and /proc/self/environ), run by a worker.
    from experiment_config import ExperimentConfig

    store = ExperimentStore(db_url)
    paths = [secret, link, Path("/proc/self/environ")]
    ids = [
        store.create_experiment(ExperimentConfig().with_overrides(
            ["data.dataset=csv", f"data.csv_path={path}", "model.name=tinyllama-lora", "model.pretrained=false"]
        ).to_dict())
        for path in paths
    ]  # fmt: skip
    environment = {**os.environ, "FPL_TEST_SECRET": SECRET_VALUE}
    result = subprocess.run(
        [sys.executable, str(REPO / "cli.py"), "worker", *map(str, ids), "--db", db_url],
        capture_output=True, text=True, timeout=300, cwd=REPO, env=environment,
    )  # fmt: skip
    assert result.returncode == 1
    for experiment_id, path in zip(ids, paths):
        experiment = store.get_experiment(experiment_id)
        assert experiment.status == "failed" and str(path) in experiment.error, experiment.error
        assert SECRET_VALUE not in experiment.error and "SECRET_TOKEN" not in experiment.error
        assert "\x00" not in experiment.error
        shown = cli("show", str(experiment_id), "--db", db_url)
        assert shown.returncode == 0 and SECRET_VALUE not in shown.stdout
    assert SECRET_VALUE not in result.stdout + result.stderr
    assert SECRET_VALUE.encode() not in database_bytes(db_url)


def test_shown_url_masks_passwords_and_never_raises():
    from runs.workers import shown_url

    assert shown_url("postgresql+psycopg://fpl:hunter2@db.example:5432/lab") == "postgresql+psycopg://fpl:***@db.example:5432/lab"
    assert "hunter2" not in shown_url("postgresql+psycopg://fpl@db/lab?password=hunter2&sslmode=require")
    assert "sslmode=require" in shown_url("postgresql+psycopg://fpl@db/lab?password=hunter2&sslmode=require")
    assert "hunter2" not in shown_url("postgresql://fpl:hunter2@db:notaport/lab")  # SQLAlchemy cannot parse it
    assert shown_url("sqlite:///experiments.db") == "sqlite:///experiments.db"
    assert shown_url("not a url") == "not a url" and shown_url("a\x00b\nc") == "a\\x00b\\nc"


def test_a_worker_gets_the_url_in_its_environment_never_on_its_command_line(db_url, tmp_path, monkeypatch):
    from experiment_config import ExperimentConfig
    from runs.workers import launch_worker, worker_command, worker_environment, worker_log_path

    url = "postgresql+psycopg://fpl:hunter2@127.0.0.1:9/lab"
    assert not any("hunter2" in part or "--db" == part for part in worker_command([3, 4]))
    assert worker_environment(url, {"PATH": "/bin"}) == {"PATH": "/bin", "DATABASE_URL": url}

    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    store = ExperimentStore(db_url)
    config = ExperimentConfig().with_overrides([a for a in TINY if a != "--set"] + ["federation.rounds=200"])
    experiment_id = store.create_experiment(config.to_dict())
    process = launch_worker(store, experiment_id)
    try:
        deadline = time.monotonic() + 60
        while store.get_experiment(experiment_id).status != "running" and time.monotonic() < deadline:
            time.sleep(0.2)  # running: the worker has exec'd cli.py (before, /proc shows our own command line)
        command_line = Path(f"/proc/{process.pid}/cmdline").read_bytes().split(b"\x00")
        environment = Path(f"/proc/{process.pid}/environ").read_bytes().split(b"\x00")
    finally:
        store.request_stop(experiment_id)
        process.wait(timeout=120)
    assert b"worker" in command_line and b"--db" not in command_line
    assert not any(db_url.removeprefix("sqlite:///").encode() in part for part in command_line)
    assert f"DATABASE_URL={db_url}".encode() in environment
    assert store.get_experiment(experiment_id).status == "stopped"
    log = worker_log_path(db_url, [experiment_id])
    assert log.exists() and log.parent == tmp_path / "state" / "fpl" / "logs" and "experiments" in log.name
    assert log.stat().st_mode & 0o777 == 0o600 and log.parent.stat().st_mode & 0o777 == 0o700
    other = worker_log_path(f"sqlite:///{tmp_path / 'other' / 'experiments.db'}", [experiment_id])
    assert other != log  # two databases never share a log


def test_a_password_is_never_printed(tmp_path):
    url = "postgresql+psycopg://fpl:hunter2@127.0.0.1:9/lab"  # nothing listens on port 9: refused at once
    for args in (["list"], ["show", "1"], ["run", *TINY]):
        result = cli(*args, "--db", url, timeout=60)
        assert result.returncode == 2, result.stderr
        assert "hunter2" not in result.stdout + result.stderr and "fpl:***@127.0.0.1:9/lab" in result.stderr
        assert len(result.stderr.splitlines()) == 1 and "Traceback" not in result.stderr


def test_storage_errors_and_bad_ids_or_names_are_one_line_and_exit_2(tmp_path, monkeypatch, capsys):
    import cli as cli_module

    monkeypatch.chdir(tmp_path)  # a relative SQLite path lands here
    monkeypatch.delenv("DATABASE_URL", raising=False)
    not_sqlite = tmp_path / "notes.txt"
    not_sqlite.write_text("not a database, just text\n" * 100)
    good = tmp_path / "good.db"
    ExperimentStore(f"sqlite:///{good}")
    cases = {
        "not a url": ["list", "--db", "not a url"],
        "empty": ["list", "--db", ""],
        "a folder": ["list", "--db", f"sqlite:///{tmp_path}"],
        "not sqlite": ["list", "--db", f"sqlite:///{not_sqlite}"],
        "no driver": ["list", "--db", "mysql://fpl:hunter2@127.0.0.1:9/lab"],
        "read-only": ["run", *TINY, "--db", f"sqlite:///file:{good}?mode=ro&uri=true"],
        "id past int64": ["show", str(2**63), "--db", f"sqlite:///{good}"],
        "id past int32": ["resume", str(2**31), "--db", f"sqlite:///{good}"],
        "id zero": ["score", "0", "--text", "a", "--db", f"sqlite:///{good}"],
        "long name": ["run", "--name", "x" * 201, *TINY, "--db", f"sqlite:///{good}"],
        "NUL in name": ["run", "--name", "a\x00b", *TINY, "--db", f"sqlite:///{good}"],
    }
    for case, argv in cases.items():
        code = cli_module.main(argv)
        out, err = capsys.readouterr()
        assert code == 2, (case, out, err)
        assert err.startswith("error: ") and len(err.splitlines()) == 1, (case, err)
        assert "Traceback" not in out + err and "hunter2" not in out + err, (case, err)
    assert ExperimentStore(f"sqlite:///{good}").list_experiments() == []


def test_data_the_run_cannot_use_exits_2_and_stores_nothing(tmp_path):
    db_file = tmp_path / "untouched.db"
    bad_csv = tmp_path / "lab_train.csv"
    bad_csv.write_text("text,E1,Group\nhello,1,A\nbye,0,B\nok,1,C\nfine,0,C\n")
    nul_in_data_dir = tmp_path / "nul.toml"
    nul_in_data_dir.write_text('[data]\ndata_dir = "a\\u0000b"\n')  # argv cannot carry a NUL; TOML can
    for args in (
        ["--set", "federation.num_clients=100000"],  # 60,000 MNIST examples
        ["--set", "data.dataset=csv", "--set", f"data.csv_path={bad_csv}", *TEXT_MODEL,
         "--set", "data.partition=natural", "--set", "federation.num_clients=9",
         "--set", "federation.clients_per_round=3"],
        ["--config", str(nul_in_data_dir)],
        ["--set", "data.data_dir=a\x1b[2Jb"],
    ):  # fmt: skip
        result = cli("run", "--db", f"sqlite:///{db_file}", *args)
        assert result.returncode == 2, result.stderr
        assert len(result.stderr.splitlines()) == 1 and result.stderr.startswith("error: ") and result.stdout == ""
    assert not db_file.exists()


def test_show_into_a_closed_pipe_ends_quietly(db_url):
    store = ExperimentStore(db_url)
    experiment_id = store.create_experiment({"data": {}})
    store.finish(experiment_id, "failed", error="x" * 1_000_000)  # far more than a pipe's buffer
    show = subprocess.Popen([sys.executable, str(REPO / "cli.py"), "show", str(experiment_id), "--db", db_url],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=REPO)  # fmt: skip
    head = subprocess.run(["head", "-c", "10"], stdin=show.stdout, capture_output=True, timeout=60)
    show.stdout.close()
    stderr = show.stderr.read().decode()
    assert show.wait(timeout=60) == 1 and head.stdout == b"experiment"
    assert stderr == "", stderr


def test_score_escapes_control_characters_of_a_response(db_url, monkeypatch, capsys):
    import cli as cli_module

    store = ExperimentStore(db_url)
    experiment_id = store.create_experiment({"data": {}})
    monkeypatch.setattr(cli_module, "score_experiment", lambda store, run_id, texts: np.full((len(texts), 1), 0.9))
    monkeypatch.setattr(cli_module, "rubric_elements", lambda experiment: [("E1", "claims the gas spreads")])
    hostile = "\x1b]0;pwned\x07\x1b[2Jgood answer\r\nnext"
    assert cli_module.main(["score", str(experiment_id), "--text", hostile, "--db", db_url]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\x07" not in out and "\r" not in out
    assert "\\x1b]0;pwned\\x07\\x1b[2Jgood answer\\r\\nnext" in out and "total score 1/1" in out


def test_resume_of_a_running_experiment_names_the_worker_that_has_it(db_url):
    store = ExperimentStore(db_url)
    experiment_id = store.create_experiment({"federation": {"rounds": 3}})
    store.mark_running(experiment_id)  # this test's process: alive, so never marked interrupted

    done = cli("resume", str(experiment_id), "--db", db_url)

    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    assert f"experiment {experiment_id} is already running (by PID {os.getpid()} on " in done.stderr
    assert store.get_experiment(experiment_id).status == "running"  # the refusal changed nothing
