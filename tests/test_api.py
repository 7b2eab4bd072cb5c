"""The REST API (`cli.py serve`, api/) against a real uvicorn on loopback, driven with httpx.

One server (a subprocess on a free 127.0.0.1 port, stopped by PID with any worker it left running)
serves the module; the token test starts its own on 127.0.0.2. References: the CLI on the same
database (messages, listings, the privacy report, scores) and the store read directly (rounds).
"""

from __future__ import annotations

import asyncio
import json
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from api.server import check_binding
from bench.api_load import api_server, load
from conftest import REPO
from database import ExperimentStore
from experiment_config import ExperimentConfig
from runs import service

TINY = {
    "model": {"name": "mlp"}, "data": {"max_train_examples": 600, "max_test_examples": 500},
    "federation": {"num_clients": 3, "clients_per_round": 2, "rounds": 2},
    "privacy": {"audit_examples": 0}, "system": {"num_workers": 1},
}  # fmt: skip
STREAM_SECONDS = 300.0  # a run of tiny rounds on a machine shared with other test suites


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(REPO / "cli.py"), *args], capture_output=True, text=True,
                          timeout=120, cwd=REPO, check=False)  # fmt: skip


def tiny(**federation: Any) -> dict[str, Any]:
    return {**TINY, "federation": {**TINY["federation"], **federation}}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[httpx.Client, str, int]]:
    """(a client of the module's server, its database URL, its PID)."""
    folder = tmp_path_factory.mktemp("api")
    db_url = f"sqlite:///{folder / 'experiments.db'}"
    with (
        api_server(db_url, log=folder / "server.log") as (base_url, pid),
        httpx.Client(base_url=base_url, timeout=60) as client,
    ):
        yield client, db_url, pid


def events(client: httpx.Client, experiment_id: int, **headers: str) -> Iterator[dict[str, Any]]:
    """The server-sent events of a run's stream, each {"event", "id", "data"}, until `end`."""
    deadline = time.monotonic() + STREAM_SECONDS
    with client.stream("GET", f"/runs/{experiment_id}/stream", headers=headers) as response:
        assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
        event: dict[str, Any] = {}
        for line in response.iter_lines():
            assert time.monotonic() < deadline, "the run did not end in time"
            if line.startswith(("id: ", "event: ")):
                key, _, value = line.partition(": ")
                event[key] = value
            elif line.startswith("data: "):
                event["data"] = json.loads(line.removeprefix("data: "))
            elif not line and event:
                yield event
                if event.get("event") == "end":
                    return
                event = {}


def test_a_run_lives_through_create_stream_stop_resume_report(server):
    client, db_url, server_pid = server
    store = ExperimentStore(db_url)
    body = {"name": "life", "config": tiny(rounds=8) | {"privacy": {"mode": "central", "audit_examples": 0}}}

    created = client.post("/runs", json=body)
    assert created.status_code == 201 and created.json()["status"] == "queued", created.text
    experiment_id = created.json()["id"]
    seen, ends = [], []
    for event in events(client, experiment_id):
        if event["event"] == "round":
            assert int(event["id"]) == event["data"]["round"]
            seen.append(event["data"]["round"])
            if len(seen) == 1:
                assert client.post(f"/runs/{experiment_id}/stop").status_code == 202
        elif event["event"] == "end":
            ends.append(event["data"])
    stopped_at = len(seen)
    assert seen == list(range(1, stopped_at + 1)) and stopped_at < 8  # each round once, in order
    assert ends[0]["status"] == "stopped" and ends[0]["rounds_done"] == stopped_at
    experiment = store.get_experiment(experiment_id)
    assert experiment.worker_pid not in (None, server_pid)  # trained in a worker, not in the server
    assert client.get(f"/runs/{experiment_id}/rounds").json() == json.loads(json.dumps(store.round_rows(experiment_id)))
    assert [r["round"] for r in client.get(f"/runs/{experiment_id}/rounds?after=1").json()] == seen[1:]

    resumed = client.post(f"/runs/{experiment_id}/resume")
    assert resumed.status_code == 202 and resumed.json()["resumes_after_round"] == stopped_at
    again = client.post(f"/runs/{experiment_id}/resume")
    assert again.status_code == 409 and "already" in again.json()["detail"]
    rest = [e["data"]["round"] for e in events(client, experiment_id, **{"Last-Event-ID": str(stopped_at)})
            if e["event"] == "round"]  # fmt: skip
    assert rest == list(range(stopped_at + 1, 9))

    shown = client.get(f"/runs/{experiment_id}").json()
    assert (shown["status"], shown["rounds_done"], shown["name"]) == ("completed", 8, "life")
    assert shown["final_epsilon"] == store.rounds_frame([experiment_id])["epsilon"].iloc[-1] > 0
    report = client.get(f"/runs/{experiment_id}/privacy-report")
    assert report.status_code == 200 and report.headers["content-type"].startswith("text/markdown")
    assert report.text + "\n" == cli("show", str(experiment_id), "--privacy-report", "--db", db_url).stdout
    assert client.post(f"/runs/{experiment_id}/stop").status_code == 409
    assert client.delete(f"/runs/{experiment_id}").status_code == 204
    assert client.get(f"/runs/{experiment_id}").status_code == 404 and store.get_experiment(experiment_id) is None


BAD_REQUESTS = [
    ({"set": ["federation.rounds=0"]}, ["--set", "federation.rounds=0"]),
    ({"config": {"model": {"name": "vgg"}}}, ["--set", "model.name=vgg"]),
    ({"config": {"federation": {"rounds": 5}}, "set": ["federation"]}, ["--set", "federation"]),
    ({"set": ["data.max_train_examples=2"]}, ["--set", "data.max_train_examples=2"]),  # the data check
    ({"name": "x" * 201}, ["--name", "x" * 201]),
]


def test_bad_configs_are_422_with_the_clis_message_and_store_nothing(server, tmp_path):
    client, db_url, _ = server
    before = client.get("/runs").json()
    toml = tmp_path / "bad.toml"
    toml.write_text("[nope]\nx = 1\n")
    cases = [*BAD_REQUESTS, ({"config": {"nope": {"x": 1}}}, ["--config", str(toml)])]
    untouched = tmp_path / "untouched.db"
    for body, arguments in cases:
        response = client.post("/runs", json=body)
        reference = cli("run", "--db", f"sqlite:///{untouched}", *arguments)
        assert response.status_code == 422 and reference.returncode == 2
        assert reference.stderr == f"error: {response.json()['detail']}\n"
    for malformed in ({"config": "x"}, [1], {"set": "federation.rounds=2"}):
        response = client.post("/runs", json=malformed)
        assert response.status_code == 422 and isinstance(response.json()["detail"], str)
        assert "\n" not in response.json()["detail"]
    outside = {"config": {"data": {"dataset": "csv", "csv_path": str(toml)}, "model": {"name": "minilm-lora"}}}
    response = client.post("/runs", json=outside)  # a file the server could read, outside its data directory
    assert response.status_code == 422 and response.json()["detail"].startswith("data.csv_path must name a file under")
    assert client.get("/runs").json() == before and len(ExperimentStore(db_url).list_experiments()) == len(before)
    assert not untouched.exists()


def test_unknown_runs_are_404_and_bad_queries_422(server):
    client, _, _ = server
    for method, path in [("GET", ""), ("GET", "/rounds"), ("GET", "/stream"), ("POST", "/stop"),
                         ("POST", "/resume"), ("DELETE", ""), ("GET", "/privacy-report")]:  # fmt: skip
        response = client.request(method, f"/runs/987654{path}")
        assert response.status_code == 404 and response.json()["detail"] == "no experiment 987654", (method, path)
    response = client.post("/runs/987654/score", json={"texts": ["a response"]})
    assert response.status_code == 404
    assert client.post("/runs/987654/score", json={"texts": [" "]}).status_code == 422
    assert client.get("/runs?status=finished").status_code == 422
    assert client.get("/runs/abc").status_code == 422 and client.get("/runs/1/rounds?after=-1").status_code == 422


def test_the_list_filters_as_asked_and_matches_the_cli(server):
    client, db_url, _ = server
    store = ExperimentStore(db_url)
    made = {}
    for name, model, mode in [("alpha", "mlp", "none"), ("Beta", "cnn", "central"), ("alphabet", "mlp", "local")]:
        config = ExperimentConfig.from_dict({"model": {"name": model}, "privacy": {"mode": mode}})
        made[name] = service.create(store, config, name=f"filters {name}")
    store.finish(made["Beta"], "failed", error="made up for the test")

    def ids(query: str) -> list[int]:
        response = client.get(f"/runs?{query}")
        assert response.status_code == 200, response.text
        return [e["id"] for e in response.json() if e["name"].startswith("filters ")]

    assert ids("model=mlp") == [made["alphabet"], made["alpha"]]  # newest first
    assert ids("status=failed") == [made["Beta"]]
    assert ids("status=failed&status=queued") == [made["alphabet"], made["Beta"], made["alpha"]]
    assert ids("name=ALPHA") == [made["alphabet"], made["alpha"]] and ids("privacy=central") == [made["Beta"]]
    assert ids("dataset=mnist&model=mlp&privacy=local") == [made["alphabet"]] and ids("dataset=ngss") == []
    assert len(client.get("/runs?limit=1").json()) == 1
    assert client.get("/runs").json() == json.loads(cli("list", "--json", "--db", db_url).stdout)


def test_the_openapi_docs_are_served(server):
    client, _, _ = server
    assert client.get("/docs").status_code == 200 and "swagger" in client.get("/docs").text.lower()
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/runs", "/runs/{experiment_id}/stream", "/runs/{experiment_id}/score"} <= set(paths)


def test_score_applies_a_finished_ngss_run_as_the_cli_does(server):
    client, db_url, _ = server
    config = {
        "data": {"dataset": "ngss", "partition": "natural", "ngss_task": "gas_filled_balloons", "max_train_examples": 100},
        "model": {"name": "tinyllama-lora", "pretrained": False, "max_length": 32},
        "federation": {"num_clients": 9, "clients_per_round": 9, "rounds": 1, "batch_size": 16},
        "privacy": {"audit_examples": 0}, "system": {"num_workers": 1, "seed": 3},
    }  # fmt: skip
    experiment_id = client.post("/runs", json={"config": config}).json()["id"]
    (end,) = [e["data"] for e in events(client, experiment_id) if e["event"] == "end"]
    assert end["status"] == "completed", end
    texts = ["Gases A and D could be the same substance because both have the same density.", "idk"]

    response = client.post(f"/runs/{experiment_id}/score", json={"texts": [*texts, "  "]})

    assert response.status_code == 200, response.text
    reference = cli("score", str(experiment_id), *(a for t in texts for a in ("--text", t)), "--json", "--db", db_url)
    expected = [json.loads(line) for line in reference.stdout.splitlines()]
    assert [r["text"] for r in response.json()] == texts and len(expected) == 2
    for got, want in zip(response.json(), expected):
        assert got["total_score"] == want["total_score"] and len(got["elements"]) == len(want["elements"]) == 3
        for a, b in zip(got["elements"], want["elements"]):
            assert (a["label"], a["predicted"]) == (b["label"], b["predicted"])
            assert a["probability"] == pytest.approx(b["probability"], abs=1e-6)
    mnist = service.create(ExperimentStore(db_url), ExperimentConfig.from_dict(TINY))  # no weights: never ran
    refused = client.post(f"/runs/{mnist}/score", json={"texts": ["a response"]})
    assert refused.status_code == 409 and "has no stored weights" in refused.json()["detail"]


def test_readers_polling_and_streaming_while_two_runs_train_see_every_round_once(server):
    client, _, _ = server  # the light version of `python -m bench.api_load`; no timing asserted here

    figures = asyncio.run(load(str(client.base_url), readers=6, rounds=3, train_examples=600, pause=0.2,
                               deadline=STREAM_SECONDS))  # fmt: skip

    assert figures["errors"] == 0, figures["first_errors"]
    assert figures["streams_ended"] == 6 and figures["every_round_once"]
    assert set(figures["statuses"].values()) == {"completed"} and set(figures["rounds_stored"].values()) == {3}
    assert figures["requests"] > 0


def test_another_host_needs_a_token_and_every_request_then_carries_it(tmp_path):
    db_file = tmp_path / "experiments.db"
    refused = cli("serve", "--host", "127.0.0.2", "--port", "8", "--db", f"sqlite:///{db_file}")
    assert refused.returncode == 2 and refused.stdout == "" and not db_file.exists()
    assert refused.stderr.startswith("error: ") and len(refused.stderr.splitlines()) == 1
    token = secrets.token_urlsafe(24)
    log = tmp_path / "server.log"

    with (
        api_server(f"sqlite:///{db_file}", host="127.0.0.2", token=token, log=log) as (base_url, _),
        httpx.Client(base_url=base_url, timeout=60) as client,
    ):
        for request in (("GET", "/runs"), ("GET", "/docs"), ("GET", "/openapi.json"), ("GET", "/runs/1/stream")):
            response = client.request(*request)
            assert response.status_code == 401 and response.headers["www-authenticate"] == "Bearer", request
        assert client.post("/runs", json={"config": TINY}).status_code == 401
        wrong = {"Authorization": f"Bearer {token[:-1]}x"}
        assert client.get("/runs", headers=wrong).status_code == 401
        good = {"Authorization": f"Bearer {token}"}
        assert client.get("/runs", headers=good).json() == []  # the refused create stored nothing
        assert client.get("/openapi.json", headers=good).status_code == 200

    assert token not in log.read_text()


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "::1"])
def test_the_loopback_defaults_need_no_token_but_take_one(host):
    assert check_binding(host, token=None) is None and check_binding(host, token="  ") is None
    assert check_binding(host, token="x" * 16) == "x" * 16  # set: required on loopback too


@pytest.mark.parametrize("host", ["127.0.0.2", "0.0.0.0", "192.168.1.5", "::"])
def test_any_other_host_needs_a_long_enough_token(host):
    with pytest.raises(ValueError, match="needs a token: set FPL_API_TOKEN"):
        check_binding(host, token=None)
    with pytest.raises(ValueError, match="at least 16 characters, got 15"):
        check_binding(host, token="y" * 15)
    assert check_binding(host, token="z" * 24) == "z" * 24
