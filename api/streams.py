"""Server-sent events of a run: each stored round once, progress as it changes, then the end.

    feeds = Feeds(store, sweep=lambda store: store.mark_interrupted_if_dead(pid_alive))  # one per server
    async for chunk in run_events(feeds, experiment_id, after=0, is_disconnected=request.is_disconnected):
        ...                                   # `text/event-stream` chunks

The database is the source of truth: the stream polls it (the worker commits each round in its own
transaction), so every reader, in any process, sees the same rounds in the same order; the streams
of one run share one poll (`RunFeed`). A round goes out as `event: round` with `id: <round>`; a
reader that reconnects with `Last-Event-ID` (or `?after=k`) gets the rounds after it, none twice. `event: progress` says the status and how far
the run is whenever either changes; `event: end` closes the stream once the run's status is final
(completed, failed, stopped, interrupted) or the run was deleted. A resumed run is a new stream.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

from starlette.concurrency import run_in_threadpool

from database import FINAL_STATUSES, ExperimentStore, ExperimentSummary, json_dumps

POLL_SECONDS = 0.5  # how often a stream reads the database (a round takes seconds to minutes)
KEEPALIVE_SECONDS = 15.0  # a comment line this often keeps proxies from closing an idle stream


def sse(event: str, payload: dict[str, Any], *, event_id: int | None = None) -> str:
    """One server-sent event: `id:` (rounds only, so `Last-Event-ID` names the last round seen),
    `event:`, one `data:` line of JSON (NaN and ±infinity as null, like the database stores them)."""
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}event: {event}\ndata: {json_dumps(payload)}\n\n"


def progress(experiment: ExperimentSummary) -> dict[str, Any]:
    """What a progress bar needs: status, rounds stored of the total, the stop request, the end, and
    where the running round stands (`round_progress`: the worker's in-round row, while it is newer
    than the last stored round; stores from before that row have none)."""
    inside = getattr(experiment, "progress", None)
    current = inside if inside and int(inside.get("round", 0)) > experiment.rounds_done else None
    return {
        "id": experiment.id, "status": experiment.status, "rounds_done": experiment.rounds_done,
        "total_rounds": int(experiment.config.get("federation", {}).get("rounds", 0)),
        "stop_requested": experiment.stop_requested, "error": experiment.error, "stop_reason": experiment.stop_reason,
        "round_progress": current if experiment.status == "running" else None,
    }  # fmt: skip


class RunFeed:
    """One run's progress and stored rounds, read from the database at most once per `poll_seconds`
    however many streams follow the run: 50 readers of one run cost one reader's queries."""

    def __init__(
        self, store: ExperimentStore, experiment_id: int, poll_seconds: float, sweep: Callable[[ExperimentStore], None]
    ) -> None:
        self.store, self.experiment_id, self.poll_seconds, self.sweep = store, experiment_id, poll_seconds, sweep
        self.experiment: ExperimentSummary | None = None
        self.rows: list[dict[str, Any]] = []  # every stored round so far, in order (rounds 1, 2, ...)
        self.subscribers = 0
        self._read_at = -math.inf
        self._lock = asyncio.Lock()

    async def refresh(self) -> None:
        """Read the database unless a stream did less than `poll_seconds` ago; streams that ask
        meanwhile wait for that one read instead of making their own."""
        async with self._lock:
            if time.monotonic() - self._read_at >= self.poll_seconds:
                await run_in_threadpool(self._read)
                self._read_at = time.monotonic()

    def _read(self) -> None:
        """The run (after `sweep`, which marks runs whose worker died), then the rounds stored since
        the last read. The status is read first: a run is final only after its last round was
        committed, so the rounds read after a final status are all of them."""
        self.sweep(self.store)
        experiment = self.store.get_experiment(self.experiment_id)
        if experiment is not None and experiment.rounds_done < len(self.rows):  # a resume dropped rounds
            self.rows = []
        if experiment is not None and (experiment.rounds_done > len(self.rows) or experiment.status in FINAL_STATUSES):
            self.rows = self.rows + self.store.round_rows(self.experiment_id, after_round=len(self.rows))
        self.experiment = experiment


class Feeds:
    """The feeds of the runs being streamed, one per run, dropped when its last stream ends."""

    def __init__(
        self, store: ExperimentStore, *, sweep: Callable[[ExperimentStore], None], poll_seconds: float = POLL_SECONDS
    ) -> None:
        self.store, self.sweep, self.poll_seconds = store, sweep, poll_seconds
        self._feeds: dict[int, RunFeed] = {}

    @asynccontextmanager
    async def follow(self, experiment_id: int) -> AsyncIterator[RunFeed]:
        feed = self._feeds.setdefault(experiment_id, RunFeed(self.store, experiment_id, self.poll_seconds, self.sweep))
        feed.subscribers += 1
        try:
            yield feed
        finally:
            feed.subscribers -= 1
            if feed.subscribers == 0 and self._feeds.get(experiment_id) is feed:
                del self._feeds[experiment_id]


async def run_events(
    feeds: Feeds, experiment_id: int, *, after: int, is_disconnected: Callable[[], Awaitable[bool]]
) -> AsyncIterator[str]:
    """The event stream of run `experiment_id` from round `after` on (see the module docstring)."""
    sent, shown, quiet_since = after, None, time.monotonic()
    async with feeds.follow(experiment_id) as feed:
        while not await is_disconnected():
            await feed.refresh()
            experiment, rows = feed.experiment, feed.rows
            if experiment is None:
                yield sse("end", {"id": experiment_id, "status": "deleted"})
                return
            fresh = [row for row in rows if row["round"] > sent]
            chunks = [sse("round", row, event_id=row["round"]) for row in fresh]
            sent = fresh[-1]["round"] if fresh else sent
            if (state := progress(experiment)) != shown:
                chunks.append(sse("progress", state))
                shown = state
            if experiment.status in FINAL_STATUSES:
                yield "".join(chunks) + sse("end", state)
                return
            if chunks:
                yield "".join(chunks)
                quiet_since = time.monotonic()
            elif time.monotonic() - quiet_since >= KEEPALIVE_SECONDS:
                yield ": keep-alive\n\n"
                quiet_since = time.monotonic()
            await asyncio.sleep(feeds.poll_seconds)
