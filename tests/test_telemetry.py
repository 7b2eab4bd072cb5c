"""Telemetry: off by default; on, a run's spans reach an OTLP/HTTP receiver on 127.0.0.1 as one
trace (run → rounds → client trainings in forked trainer processes), with the round metrics.

The receiver decodes with opentelemetry-proto's message classes; the expected values come from
the run's own `--json` lines, not from the telemetry code."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from conftest import REPO

import telemetry
from telemetry.settings import attributes_of, wanted
from telemetry.sink import Sink

TINY = [
    "--set", "model.name=mlp", "--set", "data.max_train_examples=600", "--set", "data.max_test_examples=500",
    "--set", "federation.num_clients=3", "--set", "federation.clients_per_round=2",
    "--set", "federation.rounds=2", "--set", "system.num_workers=2",
]  # fmt: skip
OTEL_VARIABLES = [name for name in os.environ if name.startswith("OTEL_")]


def run_cli(db_url: str, extra_env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")} | extra_env
    return subprocess.run(
        [sys.executable, str(REPO / "cli.py"), "run", "--json", "--db", db_url, *TINY, *args],
        capture_output=True, text=True, timeout=180, cwd=REPO, env=env, check=False,
    )  # fmt: skip


@pytest.fixture
def no_otel_env(monkeypatch: pytest.MonkeyPatch):
    for name in OTEL_VARIABLES:
        monkeypatch.delenv(name)
    telemetry.shutdown()
    yield
    telemetry.shutdown()


def test_wanted_reads_the_standard_variables():
    assert not wanted({})
    assert wanted({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"})
    assert wanted({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://127.0.0.1:4318/v1/traces"})
    assert wanted({"OTEL_TRACES_EXPORTER": "otlp"})
    assert not wanted({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"})
    assert not wanted({"OTEL_SDK_DISABLED": "true", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"})
    assert not wanted({"OTEL_EXPORTER_OTLP_ENDPOINT": "  "})


def test_attributes_are_prefixed_and_plain():
    import numpy as np

    assert attributes_of({"round": np.int64(3), "error": None, "status": "ok", "x": 1.5}) == {
        "fpl.round": 3, "fpl.status": "ok", "fpl.x": 1.5,
    }  # fmt: skip
    assert type(attributes_of({"round": np.int64(3)})["fpl.round"]) is int


def test_off_by_default_loads_no_sdk_and_records_nothing():
    code = (
        "import sys, cli, federated_learning, telemetry\n"
        "with telemetry.span('run', experiment_id=1) as s: s.set(status='ok'); c = telemetry.inject()\n"
        "telemetry.record_round(1, {'seconds': 1.0})\n"
        "print(telemetry.enabled(), c, any(m.startswith('opentelemetry.sdk') for m in sys.modules))"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, env=env, timeout=120, check=False
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["False", "None", "False"]


def test_a_span_in_process_nests_marks_errors_and_propagates_them(no_otel_env, monkeypatch):
    with Sink() as sink:
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", sink.endpoint)
        monkeypatch.setenv("OTEL_METRICS_EXPORTER", "none")
        with telemetry.span("outer", experiment_id=5):
            carrier = telemetry.inject()
            with pytest.raises(ZeroDivisionError), telemetry.span("inner", round=1):
                raise ZeroDivisionError("the error under test")
        with telemetry.span("remote", parent=carrier, client_id=2):
            pass
        telemetry.shutdown()
    spans = {s["name"]: s for s in sink.spans}
    assert set(spans) == {"outer", "inner", "remote"}
    assert carrier is not None and set(carrier) == {"traceparent"}
    assert carrier["traceparent"].split("-")[1] == spans["outer"]["trace_id"]
    assert spans["inner"]["parent_id"] == spans["outer"]["span_id"] == spans["remote"]["parent_id"]
    assert spans["outer"]["parent_id"] == ""
    assert spans["inner"]["attributes"] == {"fpl.round": 1, "fpl.status": "error", "fpl.error_type": "ZeroDivisionError"}
    assert spans["inner"]["status"] == 2  # STATUS_CODE_ERROR
    assert spans["outer"]["status"] != 2 and spans["outer"]["attributes"] == {"fpl.experiment_id": 5}


def test_a_run_exports_one_trace_of_rounds_and_client_trainings(db_url, tmp_path: Path):
    with Sink() as sink:
        result = run_cli(db_url, {"OTEL_EXPORTER_OTLP_ENDPOINT": sink.endpoint, "OTEL_SERVICE_NAME": "fpl-test"})
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    rows, final = lines[:-1], lines[-1]
    by_name: dict[str, list[dict]] = {}
    for span in sink.spans:
        by_name.setdefault(span["name"], []).append(span)
    (run,) = by_name["run"]
    assert run["parent_id"] == "" and run["attributes"]["fpl.experiment_id"] == final["experiment_id"]
    assert run["attributes"]["fpl.status"] == "completed" and run["resource"]["service.name"] == "fpl-test"
    assert {s["trace_id"] for s in sink.spans} == {run["trace_id"]}  # every process's spans: one trace
    rounds = {s["attributes"]["fpl.round"]: s for s in by_name["round"]}
    assert sorted(rounds) == [row["round"] for row in rows] == [1, 2]
    for row in rows:
        span = rounds[row["round"]]
        assert span["parent_id"] == run["span_id"]
        attributes = span["attributes"]
        assert (attributes["fpl.bytes_up"], attributes["fpl.bytes_down"]) == (row["bytes_up"], row["bytes_down"])
        trained = {c["id"]: c for c in row["clients"] if c["steps"] > 0}
        clients = [s for s in by_name["client.train"] if s["parent_id"] == span["span_id"]]
        assert {s["attributes"]["fpl.client_id"]: s["attributes"]["fpl.steps"] for s in clients} == {
            cid: c["steps"] for cid, c in trained.items()
        }  # fmt: skip
        assert all(s["attributes"]["fpl.examples"] == trained[s["attributes"]["fpl.client_id"]]["num_examples"]
                   for s in clients)  # fmt: skip
        assert all(s["attributes"]["fpl.status"] == "ok" for s in clients)
        children = Counter(s["name"] for s in sink.spans if s["parent_id"] == span["span_id"])
        assert children == {"client.train": len(trained), "aggregate": 1, "evaluate": 1}
    # Client training ran in the forked trainer processes, not in the process that ran the rounds.
    trainer_pids = {s["attributes"]["fpl.pid"] for s in by_name["client.train"]}
    assert len(trainer_pids) >= 1 and run["resource"]["process.pid"] not in trainer_pids
    assert {s["resource"]["process.pid"] for s in by_name["client.train"]} == trainer_pids
    writes = by_name["db.record_round"]
    assert sorted(s["attributes"]["fpl.round"] for s in writes) == [1, 2]
    assert all(s["parent_id"] == run["span_id"] and s["attributes"]["fpl.bytes"] > 0 for s in writes)
    # Metrics: the sums over the run equal the sums of its rows.
    assert sum(v for v, _ in sink.points("fpl.round.bytes_up")) == sum(r["bytes_up"] for r in rows)
    assert sum(v for v, _ in sink.points("fpl.round.bytes_down")) == sum(r["bytes_down"] for r in rows)
    assert sum(v for v, _ in sink.points("fpl.clients.arrived")) == sum(len(r["clients"]) for r in rows)
    assert sum(v for v, _ in sink.points("fpl.clients.lost")) == 0
    assert sum(v for v, _ in sink.points("fpl.round.duration")) == pytest.approx(sum(r["seconds"] for r in rows))
    assert {a["fpl.experiment_id"] for _, a in sink.points("fpl.round.duration")} == {final["experiment_id"]}


def test_an_unreachable_collector_never_fails_a_run(db_url):
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{port}", "OTEL_EXPORTER_OTLP_TIMEOUT": "1"}
    result = run_cli(db_url, env, "--set", "federation.rounds=1")
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert lines[0]["round"] == 1 and "experiment_id" in lines[-1]


def test_telemetry_changes_no_result(db_url, tmp_path: Path):
    """The same seeded run with telemetry on and off: identical rounds (spans observe, never steer)."""
    with Sink() as sink:
        on = run_cli(db_url, {"OTEL_EXPORTER_OTLP_ENDPOINT": sink.endpoint}, "--set", "federation.rounds=1")
    off = run_cli(f"sqlite:///{tmp_path / 'off.db'}", {}, "--set", "federation.rounds=1")
    assert on.returncode == 0 and off.returncode == 0, on.stderr + off.stderr
    drop = ("seconds", "eval_seconds", "simulated_seconds", "experiment_id")

    def rounds(out: str) -> list[dict]:
        rows = [json.loads(line) for line in out.splitlines() if line.startswith('{"round"')]
        return [{k: v for k, v in row.items() if k not in drop and k != "clients"} for row in rows]

    assert rounds(on.stdout) == rounds(off.stdout) and rounds(on.stdout)
    assert sink.spans


def test_a_flower_task_message_carries_the_round_context_to_the_node(no_otel_env, monkeypatch):
    """The server's task message (`FlowerTrainer._message`) carries the carrier as strings in its
    config record; what the node reads back (`carrier_from`) parents its span in the round's trace."""
    from types import SimpleNamespace

    import numpy as np
    from flwr.app import ArrayRecord

    from engine.client_trainers import TrainTask
    from flower_runtime import server
    from flower_runtime.messages import TASK

    # A real Message needs a running Flower app (its run id); the content is what travels.
    monkeypatch.setattr(server, "Message", lambda content, **_routing: SimpleNamespace(content=content))

    with Sink() as sink:
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", sink.endpoint)
        monkeypatch.setenv("OTEL_METRICS_EXPORTER", "none")
        with telemetry.span("round", round=4):
            task = TrainTask(0, 1, np.arange(3), seed=9, round_number=4, trace_context=telemetry.inject())
        trainer = SimpleNamespace(
            noise_multiplier=0.0, malicious={1: False}, site_records={}, corrections=None,
            options=SimpleNamespace(round_timeout_s=60.0), nodes=SimpleNamespace(nodes={1: 7}),
        )  # fmt: skip
        record = server.FlowerTrainer._message(trainer, task, ArrayRecord()).content.config_records[TASK]
        fields = {key: value for key, value in record.items() if key.startswith("trace-")}
        with telemetry.span("client.train", parent=telemetry.carrier_from(record), client_id=1):
            pass
        telemetry.shutdown()
    assert fields == {"trace-traceparent": task.trace_context["traceparent"]}
    spans = {s["name"]: s for s in sink.spans}
    assert spans["client.train"]["trace_id"] == spans["round"]["trace_id"]
    assert spans["client.train"]["parent_id"] == spans["round"]["span_id"]
    assert telemetry.carrier_from({"seed": 9}) is None and telemetry.message_fields(None) == {}
