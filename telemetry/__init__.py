"""OpenTelemetry traces and metrics of a run: off unless the standard OTel variables ask for it.

    OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:4318 python cli.py run ...

On when `OTEL_EXPORTER_OTLP_ENDPOINT` (or `..._TRACES_ENDPOINT` / `..._METRICS_ENDPOINT`) or
`OTEL_TRACES_EXPORTER` (`otlp` or `console`) is set; `OTEL_SDK_DISABLED=true` or
`OTEL_TRACES_EXPORTER=none` keeps it off. Spans and metrics leave through OTLP/HTTP (protobuf)
from a batching processor's thread, so a round never waits for the collector.

    with telemetry.span("round", round=3) as span:   # a no-op costing a function call when off
        carrier = telemetry.inject()                  # {"traceparent": ...}: travels with a task
        ...
        span.set(arrived=8)
    with telemetry.span("client.train", parent=carrier, client_id=7): ...   # in a worker process
    telemetry.record_round(experiment_id, row)        # round seconds, bytes, ε, clients arrived/lost

Attributes are named `fpl.<key>` and hold counts, ids and statuses, never data or weights.
Telemetry never fails a run: a set-up error turns it off with one line on stderr, and an error
inside a span's own bookkeeping is dropped. The SDK loads only when telemetry is on, so
importing this module costs nothing at start-up. State is per process (a forked or spawned
trainer notices the new pid and sets up its own exporter: the parent's export thread and HTTP
connection do not survive a fork); `shutdown()` flushes what is buffered (a trainer process
calls it before it exits; the main process at exit).
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator, Mapping
from typing import Any, Self

from telemetry.settings import SERVICE_NAME, SHUTDOWN_MILLIS, attributes_of, carrier_from, message_fields, wanted

__all__ = [
    "NOOP", "SHUTDOWN_MILLIS", "attributes_of", "carrier_from", "enabled", "inject", "message_fields", "record_round",
    "shutdown", "span", "wanted",
]  # fmt: skip


class _Noop:
    """The span handle and context manager when telemetry is off: every call does nothing."""

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> bool:
        return False

    def set(self, **attributes: Any) -> None:
        pass


NOOP = _Noop()


class _State:
    """This process's telemetry: None until first asked, then off or the live SDK objects."""

    def __init__(self) -> None:
        self.pid = -1  # the process it was set up in; another pid (a fork) sets up afresh
        self.live: Any = None  # telemetry.sdk.Live when on


_state = _State()


def _live() -> Any:
    """The live SDK objects of this process, or None when telemetry is off."""
    if _state.pid == os.getpid():
        return _state.live
    _state.pid, _state.live = os.getpid(), None
    if not wanted(os.environ):
        return None
    try:
        from telemetry import sdk  # the OTel SDK: loaded only when telemetry is on

        _state.live = sdk.start(os.environ, service_name=SERVICE_NAME)
    except Exception as error:  # telemetry never fails a run
        print(f"telemetry: off ({type(error).__name__}: {error})", file=sys.stderr)
    return _state.live


def enabled() -> bool:
    """Whether spans and metrics of this process are exported."""
    return _live() is not None


def span(name: str, *, parent: Mapping[str, str] | None = None, **attributes: Any) -> Any:
    """A context manager around one step of work, yielding a handle whose `set(**attributes)`
    adds attributes as they become known. `parent`: a carrier from `inject()` in another
    process (the task message); default: the span open in this thread. An exception leaving
    the block marks the span `status=error` and goes on unchanged."""
    live = _live()
    if live is None:
        return NOOP
    return _recorded(live, name, parent, attributes)


@contextlib.contextmanager
def _recorded(live: Any, name: str, parent: Mapping[str, str] | None, attributes: dict[str, Any]) -> Iterator[Any]:
    try:
        opened = live.open(name, parent, attributes_of(attributes))
    except Exception:  # never in the way of the work itself
        opened = None
    if opened is None:
        yield NOOP
        return
    try:
        yield opened
    except BaseException as error:
        opened.close(error)
        raise
    opened.close(None)


def inject() -> dict[str, str] | None:
    """The current span's context as plain strings (W3C `traceparent`), for a task message;
    None when telemetry is off or no span is open."""
    live = _live()
    if live is None:
        return None
    try:
        return live.inject() or None
    except Exception:
        return None


def record_round(experiment_id: int, row: Mapping[str, Any]) -> None:
    """Metrics of one finished round from its record (`RoundResult.to_dict()`): round seconds,
    bytes up and down, ε, and the clients that arrived (status ok/partial) or were lost (any other)."""
    live = _live()
    if live is None:
        return
    try:
        live.record_round(experiment_id, row)
    except Exception:
        pass


def shutdown() -> None:
    """Flush and stop this process's exporters (a trainer process before it exits); a later
    span sets telemetry up again from the environment."""
    live, _state.live, _state.pid = (_state.live if _state.pid == os.getpid() else None), None, -1
    if live is not None:
        with contextlib.suppress(Exception):
            live.shutdown(SHUTDOWN_MILLIS)
