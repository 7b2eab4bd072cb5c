"""The Flower runtime: the ServerApp and ClientApp over this project's engine, the data each
site trains on, and a local deployment (SuperLink + SuperNodes on loopback, stopped by PID)."""

import os

# flwr reads these once, when it is imported (by any module of this package): no telemetry, no
# update check (offline use).
os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")
