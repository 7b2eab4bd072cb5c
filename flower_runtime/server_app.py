"""The ServerApp: one experiment over the connected SuperNodes, with the engine's round loop
(`FederatedRun.rounds`) and `server.FlowerTrainer` as its trainer, recorded (and resumed from
its checkpoint) by the runs service exactly as an in-process run.
"""

from __future__ import annotations

from logging import INFO, WARNING
from typing import Any

from flwr.app import Context
from flwr.common import log
from flwr.serverapp import Grid, ServerApp

from database import ExperimentStore
from experiment_config import ExperimentConfig
from flower_runtime.messages import RUNTIME, RunOptions, check_supported
from flower_runtime.server import FlowerRuntime
from runs import service
from runs.workers import StopSignals

server_app = ServerApp()


@server_app.main()
def server_main(grid: Grid, context: Context) -> None:
    """Run one experiment over the connected SuperNodes with the engine's round loop, recorded
    (and resumed from its checkpoint) by the runs service exactly as an in-process run."""
    options = RunOptions.from_run_config(context.run_config)
    store = ExperimentStore(options.db_url or None)
    try:
        config = options.config()
        check_supported(config)
    except ValueError as error:
        if options.experiment_id:
            store.finish(options.experiment_id, "failed", error=f"ValueError: {error}")
        raise
    experiment_id = options.experiment_id or store.create_experiment(config.to_dict(), runtime=RUNTIME)
    outcome = record_experiment(grid, config, options, store, experiment_id)
    if outcome.status == "failed":  # Flower records the run failed too
        raise RuntimeError(outcome.final.get("error", "the run failed"))


def record_experiment(
    grid: Grid, config: ExperimentConfig, options: RunOptions, store: ExperimentStore, experiment_id: int
) -> service.RunOutcome:
    """Run (or resume, from its checkpoint) a stored experiment on the SuperNodes `grid` reaches:
    the engine's round loop with `FlowerTrainer`, each round committed with its checkpoint."""
    return service.execute(store, experiment_id, config, reporter=FlowerLog(), signals=StopSignals(handle=False),
                           remote=FlowerRuntime(grid, options))  # fmt: skip


class FlowerLog:
    """The ServerApp's `runs.service.Reporter`: Flower's log."""

    def round(self, row: dict[str, Any]) -> None:
        arrived = sum(c["status"] in ("ok", "partial") for c in row["clients"])
        log(INFO, "round %d: accuracy %.4f, %d of %d updates arrived, %.1f s", row["round"], row["accuracy"],
            arrived, len(row["clients"]), row["seconds"])  # fmt: skip

    def note(self, text: str) -> None:
        log(INFO, "%s", text)

    def error(self, text: str) -> None:
        log(WARNING, "%s", text)
