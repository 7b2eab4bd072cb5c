"""The REST API over the runs service: what the page does with runs, over HTTP.

    app = create_app(store, token=os.environ.get("FPL_API_TOKEN"))   # served by `cli.py serve`

    POST   /runs                      create a run from a config, started in a worker process (201)
    GET    /runs                      list, newest first (?status= repeatable, dataset, model, privacy, name, limit)
    GET    /runs/{id}                 one run, as `cli.py show ID --json` without its rounds
    GET    /runs/{id}/rounds?after=k  the stored rounds after round k
    GET    /runs/{id}/stream          server-sent events: rounds, progress, end (`api.streams`)
    POST   /runs/{id}/stop            ask its worker to stop after the current round (202)
    POST   /runs/{id}/resume          continue from its checkpoint in a new worker (202)
    DELETE /runs/{id}                 delete a run that no worker has (204)
    GET    /runs/{id}/privacy-report  the one-page privacy statement (Markdown)
    POST   /runs/{id}/score           score texts with a finished text-model run's weights

Runs train in worker processes (`runs.workers.launch_worker`, as the page starts them), never in the
server. A config is refused as `cli.py run` refuses it, with the same one-line message (422), before
anything is stored. With a token every request must carry `Authorization: Bearer <token>` (401
otherwise), compared in constant time. Bodies, errors and events are JSON with NaN written as null.
"""

from __future__ import annotations

import hmac
import math
import subprocess
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import anyio.to_thread
from fastapi import APIRouter, Depends, FastAPI, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.streams import Feeds, run_events
from database import STATUSES, ExperimentStore, ExperimentSummary, json_dumps
from experiment_config import ExperimentConfig, default_data_dir
from privacy.report import render_markdown
from runs import intake, service
from runs import workers as processes
from runs.preflight import check_data
from runs.scoring import rubric_elements, score_experiment

DATABASE_THREADS = 8  # SQLAlchemy's pool holds 5 connections (+10 overflow); SQLite readers do not block
SWEEP_SECONDS = 1.0  # how stale "is its worker alive?" may be: a dead worker's run shows interrupted within this
RunId = Annotated[int, Field(ge=1, description="the experiment id")]


class SafeJSONResponse(JSONResponse):
    """JSON as the database writes it: NaN and ±infinity become null (plain `json` would refuse)."""

    def render(self, content: Any) -> bytes:
        return json_dumps(content).encode("utf-8")


class RunRequest(BaseModel):
    """A run to create: the config as `{section: {key: value}}` (the TOML layout; missing keys take
    their defaults), then `section.key=value` overrides as `cli.py run --set` takes them."""

    config: dict[str, Any] = Field(
        default_factory=dict, examples=[{"model": {"name": "mlp"}, "federation": {"rounds": 2}}]
    )
    set: list[str] = Field(default_factory=list, examples=[["federation.num_clients=3"]])
    name: str = ""


class ScoreRequest(BaseModel):
    """Student responses to score (empty ones are skipped)."""

    texts: list[str] = Field(min_length=1, examples=[["Gases A and D have the same density, so ..."]])


def one_line(error: BaseException) -> str:
    """An error's message as `cli.py` prints it after `error: `: one line, control characters escaped."""
    return processes.printable(" ".join(str(error).split()))


def checked_request(request: RunRequest) -> tuple[ExperimentConfig, str]:
    """(the validated config, the name) of a request, or ValueError with the CLI's message: the
    name (`intake.checked_name`), the config and its overrides (`intake.build_config`), then the data."""
    name = intake.checked_name(request.name)
    config = intake.build_config(request.config, request.set)
    check_csv_path(config)
    check_data(config)
    return config, name


def check_csv_path(config: ExperimentConfig) -> None:
    """Refuse a `data.csv_path` outside the server's data directory (`FPL_DATA_DIR`, else `data`). The
    importer's refusals quote a file's header and cells: through them a client could read the first
    lines of any file the server can; the CLI and the page read only what their own user names."""
    if config.data.dataset != "csv" and not config.data.csv_path.strip():
        return
    root = Path(default_data_dir()).expanduser().resolve()
    if not Path(config.data.csv_path).expanduser().resolve().is_relative_to(root):
        raise ValueError(f"data.csv_path must name a file under the server's data directory {root} (FPL_DATA_DIR)")


class Workers:
    """The worker processes this server started, and the sweep that settles ended ones: reaped (no
    zombies), a run whose worker exited before starting it marked failed with the exit code (as the
    page does), and any run whose worker died marked interrupted (`runs.service.find`'s rule)."""

    def __init__(self) -> None:
        self._handles: dict[int, subprocess.Popen[bytes]] = {}
        self._lock = threading.Lock()
        self._sweeping = threading.Lock()
        self._swept_at = -math.inf

    def start(self, store: ExperimentStore, experiment_id: int) -> None:
        """Start a worker on a queued run; if it cannot start, the run is failed and OSError raised."""
        try:
            handle = processes.launch_worker(store, experiment_id)
        except OSError as error:
            store.finish(experiment_id, "failed", error=f"could not start the worker: {error}")
            raise
        with self._lock:
            self._handles[experiment_id] = handle

    def sweep(self, store: ExperimentStore) -> None:
        """Settle ended workers, at most once per SWEEP_SECONDS: every read sweeps first, and 50
        readers a second need not all write; a request that finds a sweep under way goes on."""
        if time.monotonic() - self._swept_at < SWEEP_SECONDS or not self._sweeping.acquire(blocking=False):
            return
        try:
            with self._lock:  # `start` adds handles from other threads
                ended = intake.ended_workers(self._handles)
            intake.fail_unstarted(store, ended)
            store.mark_interrupted_if_dead(processes.pid_alive)
            self._swept_at = time.monotonic()
        finally:
            self._sweeping.release()


class TokenGate:
    """ASGI middleware: every HTTP request must carry `Authorization: Bearer <token>`, else 401.
    `hmac.compare_digest` compares in time independent of where the texts differ."""

    def __init__(self, app: ASGIApp, token: str) -> None:
        self.app, self.expected = app, f"Bearer {token}".encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            given = dict(scope["headers"]).get(b"authorization", b"")
            if not hmac.compare_digest(given, self.expected):
                response = SafeJSONResponse(
                    {"detail": "missing or wrong token: send Authorization: Bearer $FPL_API_TOKEN"},
                    status_code=401, headers={"WWW-Authenticate": "Bearer"},
                )  # fmt: skip
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


class ServerTiming:
    """ASGI middleware: `Server-Timing: app;dur=<ms>` on every response, the time from the request
    to the response's headers in this server (a load check sets it beside what its clients see)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()

        async def timed(message: Message) -> None:
            if message["type"] == "http.response.start":
                took = f"app;dur={1000 * (time.perf_counter() - started):.1f}".encode()
                message = {**message, "headers": [*message.get("headers", []), (b"server-timing", took)]}
            await send(message)

        await self.app(scope, receive, timed)


@dataclass(frozen=True)
class Context:
    """What every route works with: the store and the workers this server started."""

    store: ExperimentStore
    workers: Workers
    feeds: Feeds

    def found(self, experiment_id: int) -> ExperimentSummary:
        """The run (after a sweep of ended workers, `Workers.sweep`), or 404."""
        self.workers.sweep(self.store)
        experiment = self.store.get_experiment(experiment_id)
        if experiment is None:
            raise HTTPException(404, f"no experiment {experiment_id}")
        return experiment

    def start_worker(self, experiment_id: int) -> None:
        try:
            self.workers.start(self.store, experiment_id)
        except OSError as error:
            raise HTTPException(500, f"experiment {experiment_id}: could not start the worker: {error}") from None


def context(request: Request) -> Context:
    return request.app.state.context


Ctx = Annotated[Context, Depends(context)]
routes = APIRouter(prefix="/runs", tags=["runs"])


def create_app(store: ExperimentStore, *, token: str | None = None) -> FastAPI:
    """The API over `store`; with `token`, every request must carry it (see `TokenGate`)."""
    app = FastAPI(
        title="Federated Privacy Lab", version="1", default_response_class=SafeJSONResponse, lifespan=few_threads,
        description="Runs of federated learning with differential privacy: create, follow, stop, resume, report.",
    )  # fmt: skip
    workers = Workers()
    app.state.context = Context(store, workers, Feeds(store, sweep=workers.sweep))
    app.include_router(routes)
    app.add_exception_handler(RequestValidationError, refused)
    app.add_middleware(ServerTiming)
    if token:
        app.add_middleware(TokenGate, token=token)
    return app


@asynccontextmanager
async def few_threads(_app: FastAPI) -> AsyncIterator[None]:
    """Run the routes' database work on at most DATABASE_THREADS threads (anyio's default: 40). More
    threads than the connection pool only wait, and every one of them competes for the GIL with the
    event loop that streams the events and accepts the requests."""
    anyio.to_thread.current_default_thread_limiter().total_tokens = DATABASE_THREADS
    yield


async def refused(_request: Request, error: Exception) -> Response:
    """A malformed request (not the JSON a route takes): 422 with one line, like every refusal."""
    first = error.errors()[0] if isinstance(error, RequestValidationError) and error.errors() else {}
    where = ".".join(str(part) for part in first.get("loc", ()))
    return SafeJSONResponse({"detail": processes.printable(f"{where}: {first.get('msg', 'invalid request')}")}, 422)


@routes.post("", status_code=201, summary="Create a run and start its worker")
def create_run(request: RunRequest, ctx: Ctx) -> dict[str, Any]:
    try:
        config, name = checked_request(request)
    except ValueError as error:
        raise HTTPException(422, one_line(error)) from None
    experiment_id = service.create(ctx.store, config, name=name)
    ctx.start_worker(experiment_id)
    return ctx.store.get_experiment(experiment_id).to_json_dict()


@routes.get("", summary="List runs, newest first")
def list_runs(
    ctx: Ctx,
    status: Annotated[list[str] | None, Query(description=f"any of {', '.join(STATUSES)} (repeatable)")] = None,
    dataset: Annotated[str | None, Query(description="data.dataset: mnist, ngss or csv")] = None,
    model: Annotated[str | None, Query(description="model.name")] = None,
    privacy: Annotated[str | None, Query(description="privacy.mode: none, local or central")] = None,
    name: Annotated[str | None, Query(description="a part of the name, any case")] = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
) -> list[dict[str, Any]]:
    if unknown := [s for s in status or [] if s not in STATUSES]:
        raise HTTPException(
            422, processes.printable(f"status must be one of {', '.join(STATUSES)}, got {unknown[0]!r}")
        )
    ctx.workers.sweep(ctx.store)
    wanted = {("data", "dataset"): dataset, ("model", "name"): model, ("privacy", "mode"): privacy}
    matching = [
        e for e in ctx.store.list_experiments()
        if (not status or e.status in status) and (name is None or name.casefold() in e.name.casefold())
        and all(v is None or e.config.get(s, {}).get(k) == v for (s, k), v in wanted.items())
    ]  # fmt: skip
    return [e.to_json_dict() for e in matching[:limit]]


@routes.get("/{experiment_id}", summary="One run: status, config, final metrics, audit, checkpoint")
def show_run(experiment_id: RunId, ctx: Ctx) -> dict[str, Any]:
    experiment = ctx.found(experiment_id)
    return {**experiment.to_json_dict(), "checkpoint_round": ctx.store.checkpoint_round(experiment_id)}


@routes.get("/{experiment_id}/rounds", summary="The stored rounds after round `after`")
def run_rounds(experiment_id: RunId, ctx: Ctx, after: Annotated[int, Query(ge=0)] = 0) -> list[dict[str, Any]]:
    ctx.found(experiment_id)
    return ctx.store.round_rows(experiment_id, after_round=after)


@routes.get(
    "/{experiment_id}/stream", response_class=StreamingResponse,
    summary="Server-sent events: each round once (id = round), progress, then end",
)  # fmt: skip
async def stream_run(
    request: Request, experiment_id: RunId, ctx: Ctx, after: Annotated[int | None, Query(ge=0)] = None
) -> StreamingResponse:
    await run_in_threadpool(ctx.found, experiment_id)
    start = after if after is not None else _last_event_id(request)
    events = run_events(ctx.feeds, experiment_id, after=start, is_disconnected=request.is_disconnected)
    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    return StreamingResponse(events, media_type="text/event-stream", headers=headers)


@routes.post("/{experiment_id}/stop", status_code=202, summary="Stop after the current round")
def stop_run(experiment_id: RunId, ctx: Ctx) -> dict[str, Any]:
    experiment = ctx.found(experiment_id)
    if experiment.status not in ("queued", "running"):
        raise HTTPException(409, f"experiment {experiment_id} is {experiment.status}: nothing to stop")
    ctx.store.request_stop(experiment_id)
    return {"id": experiment_id, "status": experiment.status, "stop_requested": True}


@routes.post("/{experiment_id}/resume", status_code=202, summary="Continue from the checkpoint in a new worker")
def resume_run(experiment_id: RunId, ctx: Ctx) -> dict[str, Any]:
    ctx.found(experiment_id)
    try:
        done = ctx.store.reopen(experiment_id)
    except KeyError:  # deleted meanwhile
        raise HTTPException(404, f"no experiment {experiment_id}") from None
    except ValueError as error:  # no checkpoint, all rounds done, another worker has it
        raise HTTPException(409, one_line(error)) from None
    ctx.start_worker(experiment_id)
    return {"id": experiment_id, "status": "queued", "resumes_after_round": done}


@routes.delete("/{experiment_id}", status_code=204, summary="Delete a run that no worker has")
def delete_run(experiment_id: RunId, ctx: Ctx) -> Response:
    ctx.found(experiment_id)
    try:
        ctx.store.delete_experiment(experiment_id)
    except ValueError as error:  # a worker has it: stop it first
        raise HTTPException(409, one_line(error)) from None
    return Response(status_code=204)


@routes.get(
    "/{experiment_id}/privacy-report", response_class=PlainTextResponse,
    summary="The one-page privacy statement in Markdown (as `cli.py show ID --privacy-report`)",
)  # fmt: skip
def privacy_report(experiment_id: RunId, ctx: Ctx) -> PlainTextResponse:
    experiment = ctx.found(experiment_id)
    rounds = ctx.store.rounds_frame([experiment_id]).drop(columns=["experiment_id", "created_at"])
    return PlainTextResponse(render_markdown(experiment, rounds), media_type="text/markdown; charset=utf-8")


@routes.post("/{experiment_id}/score", summary="Score texts with a finished text-model run (as `cli.py score`)")
def score_run(experiment_id: RunId, request: ScoreRequest, ctx: Ctx) -> list[dict[str, Any]]:
    texts = [text for text in request.texts if text.strip()]
    if not texts:
        raise HTTPException(422, "give at least one non-empty text")
    experiment = ctx.found(experiment_id)
    try:
        probabilities = score_experiment(ctx.store, experiment_id, texts)
    # LookupError: no stored weights (not a text-model run, or none finished a round); RuntimeError: no Hub model.
    except (LookupError, ValueError, RuntimeError, OSError) as error:
        raise HTTPException(409, one_line(error).replace(ctx.store.url, processes.shown_url(ctx.store.url))) from None
    elements = rubric_elements(experiment)
    return [scored(experiment_id, text, elements, row) for text, row in zip(texts, probabilities.tolist())]


def scored(experiment_id: int, text: str, elements: list[tuple[str, str]], row: list[float]) -> dict[str, Any]:
    """One response's scores, as `cli.py score --json` prints them: per element the probability and
    0/1 (≥ 0.5), and the total."""
    marks = [
        {"label": label, "meaning": meaning, "probability": p, "predicted": int(p >= 0.5)}
        for (label, meaning), p in zip(elements, row)
    ]  # fmt: skip
    return {"experiment_id": experiment_id, "text": text, "elements": marks,
            "total_score": sum(m["predicted"] for m in marks)}  # fmt: skip


def _last_event_id(request: Request) -> int:
    """The last round a reconnecting EventSource saw (`Last-Event-ID`), else 0."""
    text = request.headers.get("last-event-id", "").strip()
    return int(text) if text.isdigit() and len(text) <= 10 else 0
