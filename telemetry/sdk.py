"""The OpenTelemetry SDK behind `telemetry`: a tracer and a meter for this process, exported by
OTLP/HTTP (or the console) from batching background threads. Imported only when telemetry is on.

    live = start(os.environ, service_name="federated-privacy-lab")
    opened = live.open("round", None, {"fpl.round": 3}); ...; opened.close(None)
    live.shutdown(5_000)

The exporters read the standard variables themselves (endpoint, headers, timeout, compression,
OTEL_BSP_* batch sizes, OTEL_METRIC_EXPORT_INTERVAL); each process builds its own (a forked one
too: the parent's export thread and HTTP connection are not usable after a fork).
"""

from __future__ import annotations

import atexit
import os
import threading
from collections.abc import Mapping
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import ConsoleMetricExporter, MetricExporter, PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter
from opentelemetry.trace import Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from telemetry.settings import EXPORTERS, SHUTDOWN_MILLIS, attributes_of

INSTRUMENTATION = "federated-privacy-lab"
ARRIVED = ("ok", "partial")  # client statuses whose update reached the server (engine.results)
PROPAGATOR = TraceContextTextMapPropagator()  # W3C traceparent/tracestate: plain strings


def _exporter_name(environ: Mapping[str, str], variable: str) -> str:
    name = environ.get(variable, "").strip().lower() or "otlp"
    if name not in EXPORTERS:
        raise ValueError(f"{variable}={name!r} is not supported here (otlp, console or none)")
    return name


def _span_exporter(name: str) -> SpanExporter:
    if name == "console":
        return ConsoleSpanExporter()
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    return OTLPSpanExporter()


def _metric_exporter(name: str) -> MetricExporter:
    if name == "console":
        return ConsoleMetricExporter()
    from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter

    return OTLPMetricExporter()


class Opened:
    """One open span, current in this thread until `close`."""

    def __init__(self, span: trace.Span, token: object) -> None:
        self.span, self.token = span, token

    def set(self, **attributes: Any) -> None:
        """Add attributes (`fpl.`-prefixed like the opening ones)."""
        try:
            self.span.set_attributes(attributes_of(attributes))
        except Exception:
            pass

    def close(self, error: BaseException | None) -> None:
        try:
            otel_context.detach(self.token)
            if error is not None:  # its type only: a message could quote a value of the data
                self.span.set_attributes({"fpl.status": "error", "fpl.error_type": type(error).__name__})
                self.span.set_status(Status(StatusCode.ERROR, type(error).__name__))
            self.span.end()
        except Exception:
            pass


class Live:
    """This process's tracer and round metrics."""

    def __init__(self, environ: Mapping[str, str], service_name: str) -> None:
        self.pid, self.closed = os.getpid(), False
        resource = Resource.create({
            "service.name": environ.get("OTEL_SERVICE_NAME") or service_name, "process.pid": self.pid,
        })  # fmt: skip
        self.tracer_provider = TracerProvider(resource=resource, shutdown_on_exit=False)
        self.processor = BatchSpanProcessor(_span_exporter(_exporter_name(environ, "OTEL_TRACES_EXPORTER")))
        self.tracer_provider.add_span_processor(self.processor)
        self.tracer = self.tracer_provider.get_tracer(INSTRUMENTATION)
        self.meter_provider: MeterProvider | None = None
        metrics = _exporter_name(environ, "OTEL_METRICS_EXPORTER")
        if metrics != "none":
            reader = PeriodicExportingMetricReader(_metric_exporter(metrics))
            self.meter_provider = MeterProvider(resource=resource, metric_readers=[reader], shutdown_on_exit=False)
            meter = self.meter_provider.get_meter(INSTRUMENTATION)
            self.round_seconds = meter.create_histogram("fpl.round.duration", unit="s", description="round wall clock")
            self.bytes_up = meter.create_counter("fpl.round.bytes_up", unit="By", description="client uploads")
            self.bytes_down = meter.create_counter("fpl.round.bytes_down", unit="By", description="client downloads")
            self.epsilon = meter.create_gauge("fpl.privacy.epsilon", description="the run's ε after the round")
            self.arrived = meter.create_counter("fpl.clients.arrived", description="updates that reached the server")
            self.lost = meter.create_counter("fpl.clients.lost", description="selected clients without an update")

    def open(self, name: str, parent: Mapping[str, str] | None, attributes: dict[str, Any]) -> Opened:
        parent_context = PROPAGATOR.extract(dict(parent)) if parent else None
        span = self.tracer.start_span(name, context=parent_context, attributes=attributes)
        return Opened(span, otel_context.attach(trace.set_span_in_context(span)))

    def inject(self) -> dict[str, str]:
        carrier: dict[str, str] = {}
        PROPAGATOR.inject(carrier)
        return carrier

    def record_round(self, experiment_id: int, row: Mapping[str, Any]) -> None:
        if self.meter_provider is None:
            return
        where = {"fpl.experiment_id": int(experiment_id)}
        clients = row.get("clients") or []
        arrived = sum(1 for c in clients if c.get("status", "ok") in ARRIVED)
        self.round_seconds.record(float(row.get("seconds", 0.0)), where)
        self.bytes_up.add(int(row.get("bytes_up", 0)), where)
        self.bytes_down.add(int(row.get("bytes_down", 0)), where)
        self.epsilon.set(float(row.get("epsilon", 0.0)), where)
        self.arrived.add(arrived, where)
        self.lost.add(len(clients) - arrived, where)

    def shutdown(self, timeout_millis: int) -> None:
        """Export what is buffered, then stop; waits at most `timeout_millis` in all (an unreachable
        collector's exporter retries for its whole OTEL_EXPORTER_OTLP_TIMEOUT: it is left behind)."""
        if os.getpid() != self.pid or self.closed:  # inherited through a fork: the parent's to flush
            return
        self.closed = True
        flushing = threading.Thread(target=self._stop, name="otel-shutdown", daemon=True)
        flushing.start()
        flushing.join(timeout_millis / 1000)

    def _stop(self) -> None:
        self.tracer_provider.shutdown()  # exports the spans still queued
        if self.meter_provider is not None:
            self.meter_provider.shutdown()  # one last collection and export


def start(environ: Mapping[str, str], *, service_name: str) -> Live:
    """Tracing and metrics for this process, flushed when it exits normally."""
    live = Live(environ, service_name)
    atexit.register(live.shutdown, SHUTDOWN_MILLIS)
    return live
