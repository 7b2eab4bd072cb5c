"""Serve the API with uvicorn: on loopback by default; anywhere else only behind a token.

    check_binding("127.0.0.2", token=os.environ.get("FPL_API_TOKEN"))   # ValueError: one line
    serve(store, host="127.0.0.1", port=8000, token=None)               # until SIGINT/SIGTERM

A server reachable from other machines starts and deletes runs, and reads their configs and results:
bound to anything but 127.0.0.1, localhost or ::1 it refuses to start without `FPL_API_TOKEN`, and
with a token set every request must carry it. The token is never printed.
"""

from __future__ import annotations

import uvicorn

from api.app import create_app
from database import ExperimentStore

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")  # the default host and its names
MIN_TOKEN_CHARS = 16  # a shorter token is guessable over the network
SHUTDOWN_SECONDS = 3  # open event streams are closed after this on SIGINT/SIGTERM


def check_binding(host: str, *, token: str | None) -> str | None:
    """The token the server must require (None: none), or ValueError when `host` is not loopback-only
    and there is no usable token, or the token set is too short."""
    token = (token or "").strip() or None
    if token is not None and len(token) < MIN_TOKEN_CHARS:
        raise ValueError(f"FPL_API_TOKEN must be at least {MIN_TOKEN_CHARS} characters, got {len(token)}")
    if token is None and host not in LOOPBACK_HOSTS:
        raise ValueError(
            f"serving on {host} (not {', '.join(LOOPBACK_HOSTS)}) needs a token: set FPL_API_TOKEN "
            f"(at least {MIN_TOKEN_CHARS} characters); clients send it as Authorization: Bearer <token>"
        )
    return token


def check_port(port: int) -> int:
    if not 1 <= port <= 65535:
        raise ValueError(f"--port must be from 1 to 65535, got {port}")
    return port


def serve(store: ExperimentStore, *, host: str, port: int, token: str | None) -> None:
    """Run the API until interrupted. Workers it started go on (each in its own session, as the
    page's): the database keeps their rounds, and a later server or the page follows them."""
    uvicorn.run(
        create_app(store, token=token), host=host, port=port, log_level="warning",
        timeout_graceful_shutdown=SHUTDOWN_SECONDS,
    )  # fmt: skip
