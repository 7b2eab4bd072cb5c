"""What the environment asks of telemetry and how attributes are named: pure functions, no SDK.

    wanted(os.environ)                      # True when OTEL_EXPORTER_OTLP_ENDPOINT etc. are set
    attributes_of({"round": 3})             # {"fpl.round": 3}
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

ENDPOINT_VARIABLES = (
    "OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
)  # fmt: skip
EXPORTERS = ("otlp", "console", "none")  # values of OTEL_TRACES_EXPORTER / OTEL_METRICS_EXPORTER honoured
SERVICE_NAME = "federated-privacy-lab"
PREFIX = "fpl."
SHUTDOWN_MILLIS = 2_000  # at most this long flushing at exit (a loopback or LAN collector answers in ms)


def wanted(environ: Mapping[str, str]) -> bool:
    """Whether the OTel variables in `environ` ask for telemetry (pure: no SDK, no state)."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    exporter = environ.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if exporter == "none":
        return False
    return bool(exporter) or any(environ.get(name, "").strip() for name in ENDPOINT_VARIABLES)


def attributes_of(values: Mapping[str, Any]) -> dict[str, Any]:
    """`values` as span attributes: keys prefixed `fpl.`, None dropped, numpy scalars and
    anything else that is not bool/int/float/str turned into plain values or strings."""
    out: dict[str, Any] = {}
    for key, value in values.items():
        if value is None:
            continue
        if not isinstance(value, bool | int | float | str):
            value = value.item() if hasattr(value, "item") else str(value)
        out[PREFIX + key] = value
    return out


MESSAGE_PREFIX = "trace-"  # a task message's config fields carrying the carrier: "trace-traceparent", ...


def message_fields(carrier: Mapping[str, str] | None) -> dict[str, str]:
    """A carrier (`telemetry.inject()`) as fields of a task message's config record (strings only)."""
    return {f"{MESSAGE_PREFIX}{key}": str(value) for key, value in (carrier or {}).items()}


def carrier_from(fields: Mapping[str, Any]) -> dict[str, str] | None:
    """The carrier a task message's config record brought (`message_fields`), or None."""
    prefix = len(MESSAGE_PREFIX)
    carrier = {key[prefix:]: str(value) for key, value in fields.items() if key.startswith(MESSAGE_PREFIX)}
    return carrier or None
