"""Execute and resume stored experiments, on any runtime, recording every round.

    outcome = execute(store, experiment_id, config, reporter=reporter)   # RunOutcome
    outcome = resume(store, experiment_id, reporter=reporter)

The engine knows no storage: this module runs it, commits each round with the checkpoint
after it, beats the heartbeat until the run's status is final (the audit, personalization and
final weights come after the last round, and the run is alive while they are computed), and
stores what comes after the rounds. It prints nothing: what happens is told to a `Reporter`
(the CLI prints it; a worker started by the page writes JSON lines to its log).
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import telemetry
from database import FINAL_STATUSES, ClaimLost, ExperimentStore, ExperimentSummary
from experiment_config import TEXT_MODELS, ExperimentConfig
from runs.workers import StopSignals, beating, code_version, following, pid_alive, shown_url

if TYPE_CHECKING:  # the engine (torch) loads only when a run starts, not with the page
    from engine.client_trainers import Trainer
    from federated_learning import FederatedRun


class Reporter(Protocol):
    """Who hears about a run as it goes: each round's row, notes for people, errors."""

    def round(self, row: dict[str, Any]) -> None: ...

    def note(self, text: str) -> None: ...

    def error(self, text: str) -> None: ...


class SilentReporter:
    """A reporter that keeps nothing (errors still go to stderr)."""

    def round(self, row: dict[str, Any]) -> None:
        pass

    def note(self, text: str) -> None:
        pass

    def error(self, text: str) -> None:
        print(f"error: {text}", file=sys.stderr)


class Remote(Protocol):
    """Clients that train elsewhere (Flower SuperNodes: `flower_runtime.server.FlowerRuntime`):
    the run as the remote side plans it, the trainer that reaches its clients, and what must not
    be computed or stored ({"label_counts" | "audit" | "weights": why})."""

    def build_run(self, config: ExperimentConfig) -> FederatedRun: ...

    def trainer(self, run: FederatedRun) -> Trainer: ...

    def cannot_store(self, config: ExperimentConfig) -> dict[str, str]: ...

    def personalize(self, run: FederatedRun) -> dict[str, Any] | None:
        """`FederatedRun.personalize`, computed where the clients' data and heads are."""
        ...


@dataclass(frozen=True)
class RunOutcome:
    """How a run ended: its status (completed, stopped, failed, interrupted) and the final
    summary (`experiment_id`, `status`, rounds, metrics; `error` for a failure; the audit,
    personalization and stored weights when they were computed)."""

    status: str
    final: dict[str, Any] = field(default_factory=dict)


def create(store: ExperimentStore, config: ExperimentConfig, *, name: str = "") -> int:
    """Store a new queued experiment for `config`, tagged with this checkout's code version."""
    return store.create_experiment(config.to_dict(), name=name, code_version=code_version())


def execute(
    store: ExperimentStore,
    experiment_id: int,
    config: ExperimentConfig,
    *,
    reporter: Reporter,
    signals: StopSignals | None = None,
    remote: Remote | None = None,
) -> RunOutcome:
    """Run a stored experiment to the end (from its checkpoint, if it has one), committing each
    round; the run ends completed, stopped, failed or interrupted, and that status is stored.
    `remote`: its clients train there (the Flower ServerApp); else `system.runtime` decides (a
    local Flower deployment, whose ServerApp comes back here with its remote, or this machine).
    With a tracking URI (`system.mlflow_uri`, MLFLOW_TRACKING_URI) the process that owns the run
    (not a Flower ServerApp, whose rounds reach it) also logs it to MLflow (`tracking.live`)."""
    live = None
    if remote is None:  # not in the Flower app bundle (pyproject's fab-include), whose ServerApp has a remote
        from tracking.live import live_mlflow

        live = live_mlflow(store, experiment_id, config, reporter)
    with telemetry.span(  # the run's trace: its rounds, their clients (any process) and database writes
        "run", experiment_id=experiment_id, runtime=config.system.runtime, rounds=config.federation.rounds,
        clients=config.federation.num_clients, privacy=config.privacy.mode,
    ) as span:  # fmt: skip
        outcome = _execute(store, experiment_id, config, reporter=live or reporter, signals=signals, remote=remote)
        span.set(status=outcome.status)
    if live is not None:
        live.finish()
    return outcome


def _execute(
    store: ExperimentStore,
    experiment_id: int,
    config: ExperimentConfig,
    *,
    reporter: Reporter,
    signals: StopSignals | None = None,
    remote: Remote | None = None,
) -> RunOutcome:
    """`execute`, without the live tracking around it."""
    if config.system.runtime == "flower" and remote is None:
        return _execute_on_flower(store, experiment_id, config, reporter=reporter)
    stop_event = (signals or StopSignals()).new_run()
    me = os.getpid()  # every write below is conditional on the run still being this process's
    try:
        store.mark_running(experiment_id, pid=me)
    except ClaimLost as error:  # another worker has it (a second resume), or it was settled: leave it be
        reporter.error(str(error))
        return RunOutcome("failed", {"experiment_id": experiment_id, "status": "failed", "error": str(error)})
    refused = remote.cannot_store(config) if remote is not None else {}
    with beating(store, experiment_id):  # until the status is final: a live run never looks dead
        try:
            run, last = _run_rounds(store, experiment_id, config, stop_event, reporter, remote, refused)
        except KeyboardInterrupt:
            store.finish(experiment_id, "interrupted", error="aborted by a second interrupt",
                         final=last_round(store, experiment_id), worker_pid=me)  # fmt: skip
            reporter.error(f"experiment {experiment_id} aborted")
            return RunOutcome("interrupted", {"experiment_id": experiment_id, "status": "interrupted"})
        except Exception as error:  # recorded with the run, so the page shows it (unless it is no longer ours)
            message = f"{type(error).__name__}: {error}"
            store.finish(experiment_id, "failed", error=message, final=last_round(store, experiment_id), worker_pid=me)
            reporter.error(message)
            return RunOutcome("failed", {"experiment_id": experiment_id, "status": "failed", "error": message})
        stopped = last.get("round", 0) < config.federation.rounds
        status = "stopped" if stopped else "completed"
        reason = run.stop_reason if stopped else None
        audit = _audit(store, experiment_id, run, config, reporter, refused.get("audit")) if last else None
        personalization = _personalize(store, experiment_id, run, reporter, remote) if last else None
        weights = None
        if last and config.model.name in TEXT_MODELS and "weights" not in refused:
            weights = _save_weights(store, experiment_id, run, reporter)
        if not store.finish(experiment_id, status, final=last, stop_reason=reason, worker_pid=me):
            message = f"experiment {experiment_id} was taken over by another worker: this one's result is not stored"
            reporter.error(message)
            return RunOutcome("failed", {"experiment_id": experiment_id, "status": "failed", "error": message})
    return RunOutcome(status, {
        "experiment_id": experiment_id, "status": status, "stop_reason": reason, "rounds": last.get("round", 0),
        "accuracy": last.get("accuracy"), "loss": last.get("loss"), "epsilon": last.get("epsilon", 0.0),
        "audit": audit, "personalization": personalization, "weights": weights,
    })  # fmt: skip


def resume(store: ExperimentStore, experiment: ExperimentSummary, *, reporter: Reporter) -> RunOutcome:
    """Continue an interrupted, stopped or failed run from its checkpoint, in this process.
    Raises ValueError (or KeyError) when it cannot be resumed; nothing is changed then."""
    config = ExperimentConfig.from_dict(experiment.config)
    done = store.reopen(experiment.id)
    reporter.note(f"experiment {experiment.id}: resuming after round {done} of {config.federation.rounds}")
    return execute(store, experiment.id, config, reporter=reporter)


def find(store: ExperimentStore, experiment_id: int) -> ExperimentSummary | None:
    """Experiment `experiment_id` (None if there is none), after marking the runs whose worker died."""
    store.mark_interrupted_if_dead(pid_alive)
    return store.get_experiment(experiment_id)


def run_queue(
    store: ExperimentStore, experiment_ids: list[int], *, reporter: Reporter, signals: StopSignals,
    finished: Callable[[RunOutcome], None] | None = None,
) -> list[RunOutcome]:
    """Run stored experiments one after the other (a worker), each with its own status, calling
    `finished(outcome)` as each ends. After a signal the rest of the queue never starts: stopped
    (first signal) or interrupted (abort)."""
    outcomes = []
    for position, experiment_id in enumerate(experiment_ids):
        outcome = _work_on(store, experiment_id, waited=position > 0, reporter=reporter, signals=signals)
        outcomes.append(outcome)
        if finished is not None:
            finished(outcome)
        if outcome.status == "interrupted" or signals.received.is_set():
            aborted = outcome.status == "interrupted"
            for left in experiment_ids[position + 1 :]:
                if (queued := store.get_experiment(left)) is not None and queued.status == "queued":
                    if aborted:
                        store.finish(left, "interrupted", error="the worker was aborted before this run started")
                    else:
                        store.finish(left, "stopped", stop_reason="the worker was told to stop before this run started")
            break
    return outcomes


def _work_on(
    store: ExperimentStore, experiment_id: int, *, waited: bool, reporter: Reporter, signals: StopSignals
) -> RunOutcome:
    """Run one stored experiment; one whose stop was asked for while it `waited` behind others never starts."""
    experiment = store.get_experiment(experiment_id)
    if experiment is None:
        reporter.error(f"no experiment {experiment_id} in {shown_url(store.url)}")
        return RunOutcome("failed", {"experiment_id": experiment_id, "status": "failed", "error": "no such experiment"})
    if waited and experiment.stop_requested:
        store.finish(experiment_id, "stopped", stop_reason="stopped before it started")
        return RunOutcome("stopped", {"experiment_id": experiment_id, "status": "stopped"})
    try:
        config = ExperimentConfig.from_dict(experiment.config)
    except ValueError as error:
        store.finish(experiment_id, "failed", error=f"invalid stored config: {error}")
        reporter.error(str(error))
        return RunOutcome("failed", {"experiment_id": experiment_id, "status": "failed", "error": str(error)})
    return execute(store, experiment_id, config, reporter=reporter, signals=signals)


def _run_rounds(
    store: ExperimentStore, experiment_id: int, config: ExperimentConfig, stop_event: threading.Event,
    reporter: Reporter, remote: Remote | None, refused: dict[str, str],
) -> tuple[Any, dict[str, Any]]:  # fmt: skip
    """Set up the run (from its checkpoint when it has one: a resume) and commit each round with
    the checkpoint after it. Returns (the run, the last round's row, {} if none)."""
    from federated_learning import FederatedRun  # torch loads only when a run starts

    run = remote.build_run(config) if remote is not None else FederatedRun(config)
    if (saved := store.load_checkpoint(experiment_id)) is not None:
        done = run.restore(saved[1])
        reporter.note(f"resuming after round {done}")
    else:
        if "label_counts" not in refused:
            store.set_label_counts(experiment_id, run.label_counts)
        store.set_dataset_info(experiment_id, run.data.info)
        store.set_client_profiles(experiment_id, run.profiles.table())
        if run.privacy.mode != "none":
            store.set_noise_multiplier(experiment_id, run.privacy.noise_multiplier)
    last = last_round(store, experiment_id)
    trainer = remote.trainer(run) if remote is not None else None
    try:
        with following(store, experiment_id, run, stop_event):  # progress inside a round; a stop within it
            for result in run.rounds(stop_event, trainer=trainer):
                row = result.to_dict()
                with telemetry.span("db.record_round", experiment_id=experiment_id, round=row["round"]) as span:
                    checkpoint = run.checkpoint()
                    span.set(bytes=len(checkpoint))
                    store.record_round(experiment_id, row, checkpoint=checkpoint, worker_pid=os.getpid())
                telemetry.record_round(experiment_id, row)
                last = row
                reporter.round(row)
                if store.stop_requested(experiment_id):
                    stop_event.set()
    finally:
        if trainer is not None:
            trainer.close()
    if run.round_progress is not None and (saved := store.load_checkpoint(experiment_id)) is not None:
        run.restore(saved[1])  # a round given up part-way: back to the state after the last recorded one
    return run, last


def last_round(store: ExperimentStore, experiment_id: int) -> dict[str, Any]:
    """The newest stored round of a run as {round, accuracy, loss, epsilon}, or {} if none."""
    rounds = store.rounds_frame([experiment_id])
    if rounds.empty:
        return {}
    row = rounds.iloc[-1]
    return {"round": int(row["round"]), "accuracy": float(row["accuracy"]), "loss": float(row["loss"]),
            "epsilon": float(row["epsilon"])}  # fmt: skip


def _save_weights(store: ExperimentStore, experiment_id: int, run: Any, reporter: Reporter) -> dict[str, Any]:
    """Store a text model's final exchanged weights (LoRA + head) for scoring: `{"values": n}`.
    A failure is reported as `{"error": ...}`, like the audit's: the run stands."""
    from model import flatten, get_parameters

    try:
        weights = flatten(get_parameters(run.model)).numpy().astype("<f4")  # (values,) little-endian float32
        store.save_weights(experiment_id, weights.tobytes(), int(weights.size))
    except KeyboardInterrupt:  # a second interrupt: skip it, still record the run
        return {"error": "storing the final weights was interrupted"}
    except Exception as error:
        result = {"error": f"could not store the final weights: {type(error).__name__}: {error}"}
        reporter.error(result["error"])
        return result
    return {"values": int(weights.size)}


def _execute_on_flower(
    store: ExperimentStore, experiment_id: int, config: ExperimentConfig, *, reporter: Reporter
) -> RunOutcome:
    """Run a stored experiment on a local Flower deployment (`flower_runtime.deployment`): its
    ServerApp records the rounds into this database; this process waits and reports the outcome."""
    seen = [last_round(store, experiment_id).get("round", 0)]  # a resume prints only the rounds it adds

    def report_new_rounds() -> None:
        for row in store.round_rows(experiment_id, after_round=seen[0]):
            reporter.round(row)
            seen[0] = row["round"]

    try:
        from flower_runtime.deployment import run_local_deployment

        with beating(store, experiment_id):  # the ServerApp records rounds; this process vouches for the run
            run_local_deployment(config, db_url=store.url, experiment_id=experiment_id, on_poll=report_new_rounds)
        report_new_rounds()
    except KeyboardInterrupt:
        reporter.error(f"experiment {experiment_id} aborted")
        return RunOutcome("interrupted", {"experiment_id": experiment_id, "status": "interrupted"})
    except Exception as error:
        message = f"{type(error).__name__}: {error}"
        summary = store.get_experiment(experiment_id)
        if summary is not None and summary.status not in FINAL_STATUSES:
            store.finish(experiment_id, "failed", error=message)
        reporter.error(message)
        return RunOutcome("failed", {"experiment_id": experiment_id, "status": "failed", "error": message})
    summary = store.get_experiment(experiment_id)
    rounds = store.rounds_frame([experiment_id])
    return RunOutcome(summary.status, {
        "experiment_id": experiment_id, "status": summary.status, "runtime": "flower", "rounds": len(rounds),
        "accuracy": summary.final_accuracy, "loss": summary.final_loss, "epsilon": summary.final_epsilon or 0.0,
        "error": summary.error,
    })  # fmt: skip


def _audit(
    store: ExperimentStore, experiment_id: int, run: Any, config: ExperimentConfig, reporter: Reporter,
    refused: str | None,
) -> dict[str, Any] | None:  # fmt: skip
    """The privacy audit of the final model (`privacy.audit`: loss threshold, or the one-run ε lower
    bound from the run's canaries), stored with the run; None if its size (`privacy.audit_examples`,
    `privacy.audit_canaries`) is 0. `refused`: why it cannot be run here (stored as its error)."""
    if config.privacy.audit_size() <= 0:
        return None

    def compute() -> dict[str, Any] | None:
        if refused:
            raise ValueError(refused)
        return run.audit(config.privacy.audit_examples)

    return _after_run(compute, lambda r: store.set_audit(experiment_id, r), "the audit", reporter)


def _personalize(
    store: ExperimentStore, experiment_id: int, run: Any, reporter: Reporter, remote: Remote | None
) -> dict[str, Any] | None:
    """Personalized vs global accuracy per client (`FederatedRun.personalize`, or the remote
    clients' own), stored with the run; None without personalization."""
    compute = run.personalize if remote is None else lambda: remote.personalize(run)
    return _after_run(
        compute, lambda r: store.set_personalization(experiment_id, r), "the personalization results",
        reporter,
    )  # fmt: skip


def _after_run(
    compute: Callable[[], dict[str, Any] | None], save: Callable[[dict[str, Any]], None], what: str, reporter: Reporter
) -> dict[str, Any] | None:
    """Work after the last round (`compute()` → a JSON-able dict or None), saved with `save`.
    A failure is recorded as `{"error": ...}`: the run's rounds and status stand either way."""
    try:
        result = compute()
    except KeyboardInterrupt:  # a second interrupt: skip it, still record the run
        result = {"error": f"{what} was interrupted"}
    except Exception as error:
        result = {"error": f"{type(error).__name__}: {error}"}
    if result is None:
        return None
    try:
        save(result)
    except Exception as error:
        result = {"error": f"could not store {what}: {type(error).__name__}: {error}"}
        reporter.error(result["error"])
    return result
