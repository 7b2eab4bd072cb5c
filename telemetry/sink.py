"""A small OTLP/HTTP receiver on loopback: what a collector would get, decoded (tests, benchmarks,
and a quick look at what a run exports without installing a collector).

    with Sink() as sink:                       # listens on 127.0.0.1, an ephemeral port
        os.environ["OTEL_EXPORTER_OTLP_ENDPOINT"] = sink.endpoint
        ...                                    # run something
        sink.spans                             # [{"name", "trace_id", "span_id", "parent_id", "attributes", ...}]
        sink.points("fpl.round.bytes_up")      # [(value, attributes), ...]

    python -m telemetry.sink [--port 4318]     # print each span as it arrives

It accepts protobuf bodies (gzip too) on /v1/traces and /v1/metrics and answers 200 with an
empty response message, as the OTLP/HTTP specification says. It decodes with the message
classes `opentelemetry-proto` ships, independently of the SDK that encoded them.
"""

from __future__ import annotations

import argparse
import gzip
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self

from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)  # fmt: skip
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)  # fmt: skip
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

MAX_BODY_BYTES = 64 * 1024 * 1024


def plain(value: AnyValue) -> Any:
    """An OTLP attribute value as a Python value."""
    kind = value.WhichOneof("value")
    if kind == "array_value":
        return [plain(v) for v in value.array_value.values]
    return getattr(value, kind) if kind else None


def attributes(pairs: list[KeyValue]) -> dict[str, Any]:
    return {pair.key: plain(pair.value) for pair in pairs}


def decode_spans(body: bytes) -> list[dict[str, Any]]:
    """Every span of an ExportTraceServiceRequest, flat, with its resource's attributes."""
    request = ExportTraceServiceRequest.FromString(body)
    spans = []
    for resource_spans in request.resource_spans:
        resource = attributes(resource_spans.resource.attributes)
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                spans.append({
                    "name": span.name, "trace_id": span.trace_id.hex(), "span_id": span.span_id.hex(),
                    "parent_id": span.parent_span_id.hex(), "attributes": attributes(span.attributes),
                    "status": span.status.code, "seconds": (span.end_time_unix_nano - span.start_time_unix_nano) / 1e9,
                    "resource": resource,
                })  # fmt: skip
    return spans


def decode_points(body: bytes) -> list[tuple[str, float, dict[str, Any]]]:
    """(metric name, value, attributes) of every sum, gauge and histogram point (a histogram's: its sum)."""
    request = ExportMetricsServiceRequest.FromString(body)
    points = []
    for resource_metrics in request.resource_metrics:
        for scope_metrics in resource_metrics.scope_metrics:
            for metric in scope_metrics.metrics:
                kind = metric.WhichOneof("data")
                for point in getattr(metric, kind).data_points:
                    if kind == "histogram":
                        value = point.sum
                    else:
                        value = point.as_double if point.WhichOneof("value") == "as_double" else point.as_int
                    points.append((metric.name, value, attributes(point.attributes)))
    return points


class Sink:
    """An OTLP/HTTP receiver on 127.0.0.1 in a background thread; use it as a context manager."""

    def __init__(self, port: int = 0, on_span: Callable[[dict[str, Any]], None] | None = None) -> None:
        self.spans: list[dict[str, Any]] = []
        self.metric_points: list[tuple[str, float, dict[str, Any]]] = []
        self.requests = 0
        self.lock = threading.Lock()
        self.on_span = on_span
        self.server = ThreadingHTTPServer(("127.0.0.1", port), _handler(self))
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, name="otlp-sink", daemon=True)

    @property
    def endpoint(self) -> str:
        """The base URL for OTEL_EXPORTER_OTLP_ENDPOINT (the exporters add /v1/traces, /v1/metrics)."""
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def points(self, name: str) -> list[tuple[float, dict[str, Any]]]:
        with self.lock:
            return [(value, attrs) for metric, value, attrs in self.metric_points if metric == name]

    def receive(self, path: str, body: bytes) -> bytes:
        """Decode one export; returns the response message (raises on a body that is not OTLP)."""
        if path == "/v1/traces":
            spans = decode_spans(body)
            with self.lock:
                self.spans.extend(spans)
                self.requests += 1
            for span in spans if self.on_span else ():
                self.on_span(span)
            return ExportTraceServiceResponse().SerializeToString()
        if path == "/v1/metrics":
            points = decode_points(body)
            with self.lock:
                self.metric_points.extend(points)
                self.requests += 1
            return ExportMetricsServiceResponse().SerializeToString()
        raise LookupError(path)

    def __enter__(self) -> Self:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


def _handler(sink: Sink) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(min(length, MAX_BODY_BYTES))
            try:
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                answer, status = sink.receive(self.path, body), 200
            except LookupError:
                answer, status = b"", 404
            except Exception:  # not an OTLP message
                answer, status = b"", 400
            self.send_response(status)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, *args: Any) -> None:  # quiet: tests and benchmarks read the decoded spans
            pass

    return Handler


def main() -> None:
    parser = argparse.ArgumentParser(description="Print the spans an OTLP/HTTP exporter sends to 127.0.0.1.")
    parser.add_argument("--port", type=int, default=4318)
    port = parser.parse_args().port

    def show(span: dict[str, Any]) -> None:
        print(f"{span['trace_id'][:8]} {span['parent_id'][:8] or '-':8} {span['name']:16} {span['attributes']}")

    with Sink(port, on_span=show) as sink:
        print(f"listening on {sink.endpoint} (Ctrl-C stops)")
        try:
            sink.thread.join()
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
