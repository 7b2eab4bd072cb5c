"""Sweeps over any setting: one stored experiment per trial, tagged with its sweep (`sweep:<name>`,
`objective:<name>`, `<key>=<value>`); the trials come from a grid (here) or an Optuna study (`runs.studies`).

    grid = parse_grid(["federation.learning_rate=0.01,0.05", "federation.local_epochs=1,2"])
    plans = plan_grid(base, grid)                          # every point validated before anything is stored
    results = run_trials(store, GridSweep(store, sweep, plans, reporter), parallel=2, reporter=reporter)
    table = sweep_table(store.list_experiments(), sweep.name)   # one row per trial, best first
    launch_grid(store, sweep, plans, parallel=2)           # the page's way: store, start workers, return

Trials run one after the other in this process (`service.execute`), or with `parallel` > 1 each in
its own worker process (`workers.launch_worker`), at most `parallel` at once. Running the same command
again continues the sweep: a grid point that a completed experiment of the sweep ran is not run again.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from database import ACTIVE_STATUSES, MAX_TAG_CHARS, ExperimentStore, ExperimentSummary
from experiment_config import SECTIONS, ExperimentConfig
from runs import service
from runs import workers as processes

if TYPE_CHECKING:
    import pandas as pd

OBJECTIVES = {"accuracy": "maximize", "loss": "minimize", "epsilon": "minimize"}  # of the final round
SWEEP_TAG, OBJECTIVE_TAG = "sweep:", "objective:"
MAX_SWEEP_NAME = MAX_TAG_CHARS - len(SWEEP_TAG)  # the name travels in a tag
POLL_SECONDS = 0.5  # how often running workers are looked at
MAX_GRID_POINTS = 1000
SUMMARY_COLUMNS = {"accuracy": "final_accuracy", "loss": "final_loss", "epsilon": "final_epsilon"}


@dataclass(frozen=True)
class Sweep:
    """A sweep's name (its tag and Optuna study name) and objective (accuracy, loss or epsilon)."""

    name: str
    objective: str = "accuracy"

    @property
    def direction(self) -> str:
        return OBJECTIVES[self.objective]


@dataclass(frozen=True)
class TrialPlan:
    """One trial to run: its number in the sweep, the values it varies ({"section.key": value}), its config."""

    number: int
    values: dict[str, Any]
    config: ExperimentConfig


@dataclass(frozen=True)
class TrialResult:
    """How a trial ended: its experiment, status and objective value (None unless completed with one)."""

    plan: TrialPlan
    experiment_id: int
    status: str
    value: float | None


class SweepReporter(Protocol):
    """Who hears about a sweep: a trial stored and started, a trial ended, notes for people."""

    def started(self, plan: TrialPlan, experiment_id: int) -> None: ...

    def finished(self, result: TrialResult) -> None: ...

    def note(self, text: str) -> None: ...


class TrialSource(Protocol):
    """Where trials come from (a grid, an Optuna study) and where their results go."""

    sweep: Sweep

    def adopted(self) -> dict[int, TrialPlan]:
        """Trials of an earlier process still running in live workers: {experiment id: plan}."""
        ...

    def next_plan(self, running: int) -> TrialPlan | None:
        """The next trial to start, `running` being started and not yet ended; None when no more are needed."""
        ...

    def stored(self, plan: TrialPlan, experiment_id: int) -> None: ...

    def done(self, result: TrialResult) -> None: ...


# -- what the user typed --------------------------------------------------------------------------


def split_key(text: str, flag: str, shape: str) -> tuple[str, str]:
    """("section.key", what follows "="), or ValueError naming the flag and the expected shape."""
    dotted, sep, rest = text.partition("=")
    section, dot, key = dotted.strip().partition(".")
    if not sep or not dot or not key.strip() or not rest.strip():
        raise ValueError(f"{flag} expects {shape}, got {text[:80]!r}")
    if section not in SECTIONS:
        raise ValueError(f"{flag}: unknown config section {section[:40]!r}; sections: {', '.join(SECTIONS)}")
    return f"{section}.{key.strip()}", rest.strip()


def parse_grid(texts: list[str]) -> dict[str, list[str]]:
    """`section.key=v1,v2,...` strings as {"section.key": ["v1", "v2", ...]} (values parsed by the config, as
    `--set` parses them). ValueError, one line, for a bad shape, an empty or repeated value, a repeated key."""
    grid: dict[str, list[str]] = {}
    for text in texts:
        key, rest = split_key(text, "--grid", "section.key=value1,value2,...")
        values = [value.strip() for value in rest.split(",")]
        if any(not value for value in values):
            raise ValueError(f"--grid {key}: an empty value in {rest[:80]!r}")
        if len(set(values)) < len(values):
            raise ValueError(f"--grid {key}: a value given twice in {rest[:80]!r}")
        if key in grid:
            raise ValueError(f"--grid {key} is given twice: list all its values in one --grid")
        grid[key] = values
    if not grid:
        raise ValueError("a grid sweep needs at least one --grid section.key=value1,value2,...")
    return grid


def checked_sweep(name: str, objective: str, described: Any) -> Sweep:
    """The sweep: `name` if given (it travels in a tag: at most MAX_SWEEP_NAME printable characters), else
    `sweep-` and a digest of `described` (the base config and what varies), so running the same command
    again finds the same sweep."""
    if objective not in OBJECTIVES:
        raise ValueError(f"--objective must be one of {', '.join(OBJECTIVES)}, got {objective[:40]!r}")
    name = name.strip()
    if not name:
        digest = hashlib.sha256(json.dumps(described, sort_keys=True, default=str).encode()).hexdigest()
        name = f"sweep-{digest[:10]}"
    if len(name) > MAX_SWEEP_NAME or not name.isprintable():
        raise ValueError(f"--name: a sweep name is at most {MAX_SWEEP_NAME} printable characters")
    return Sweep(name, objective)


def _value(config: ExperimentConfig, dotted: str) -> Any:
    section, key = dotted.split(".", 1)
    return getattr(getattr(config, section), key)


def configured(base: ExperimentConfig, texts: dict[str, str]) -> tuple[dict[str, Any], ExperimentConfig]:
    """`base` with {"section.key": value text} applied and validated: (the values as the config holds them,
    the config). ValueError, one line, naming the point, when the config rejects it or a key is unknown."""
    try:
        config = base.with_overrides([f"{key}={value}" for key, value in texts.items()])
    except ValueError as error:
        point = ", ".join(f"{key}={value}" for key, value in texts.items())
        raise ValueError(f"{point}: {' '.join(str(error).split())}") from None
    return {key: _value(config, key) for key in texts}, config


def plan_grid(base: ExperimentConfig, grid: dict[str, list[str]]) -> list[TrialPlan]:
    """Every point of the grid (the product of the values, first key slowest), each config validated: a
    point the config rejects raises ValueError before any is stored."""
    keys = list(grid)
    if (points := math.prod(len(values) for values in grid.values())) > MAX_GRID_POINTS:
        raise ValueError(f"--grid: {points} points, at most {MAX_GRID_POINTS}")
    plans = []
    for number, point in enumerate(itertools.product(*grid.values())):
        values, config = configured(base, dict(zip(keys, point)))
        plans.append(TrialPlan(number, values, config))
    return plans


def trial_tags(sweep: Sweep, values: dict[str, Any]) -> list[str]:
    """A trial's tags: its sweep, the objective, and each varied value that fits a tag (the config has them all)."""
    pairs = [f"{key}={value}" for key, value in values.items()]
    return [
        f"{SWEEP_TAG}{sweep.name}",
        f"{OBJECTIVE_TAG}{sweep.objective}",
        *(p for p in pairs if len(p) <= MAX_TAG_CHARS),
    ]


# -- running trials ---------------------------------------------------------------------------------


def store_trial(store: ExperimentStore, sweep: Sweep, plan: TrialPlan) -> int:
    """Store a trial as a queued experiment, named and tagged for its sweep."""
    varied = ", ".join(f"{key.split('.', 1)[1]}={value}" for key, value in plan.values.items())
    experiment_id = service.create(store, plan.config, name=f"{sweep.name} #{plan.number}: {varied}"[:200])
    store.set_tags(experiment_id, trial_tags(sweep, plan.values))
    return experiment_id


def objective_value(experiment: ExperimentSummary | None, objective: str) -> float | None:
    """The objective of a completed experiment's final round, or None (not completed, no finite value)."""
    if experiment is None or experiment.status != "completed":
        return None
    value = getattr(experiment, SUMMARY_COLUMNS[objective])
    if objective == "epsilon" and value is None:
        value = 0.0  # a run without privacy records no ε
    return float(value) if value is not None and math.isfinite(value) else None


def _result(store: ExperimentStore, source: TrialSource, plan: TrialPlan, experiment_id: int) -> TrialResult:
    experiment = store.get_experiment(experiment_id)
    status = experiment.status if experiment is not None else "failed"
    return TrialResult(plan, experiment_id, status, objective_value(experiment, source.sweep.objective))


def run_trials(
    store: ExperimentStore, source: TrialSource, *, parallel: int, reporter: SweepReporter,
    signals: processes.StopSignals | None = None,
) -> list[TrialResult]:  # fmt: skip
    """Run the source's trials to the end: in this process one after the other (`parallel` 1), else each in its
    own worker, at most `parallel` at once. After a signal no trial starts; running workers are asked to stop."""
    signals = signals or processes.StopSignals(handle=False)
    results: list[TrialResult] = []
    running = {experiment_id: (plan, None) for experiment_id, plan in source.adopted().items()}
    while True:
        while len(running) < parallel and not signals.received.is_set():
            if (plan := source.next_plan(len(running))) is None:
                break
            experiment_id = store_trial(store, source.sweep, plan)
            source.stored(plan, experiment_id)
            reporter.started(plan, experiment_id)
            if parallel == 1:
                store.set_worker(experiment_id, os.getpid())  # killed before it starts: marked interrupted
                service.execute(store, experiment_id, plan.config, reporter=service.SilentReporter(), signals=signals)
                results.append(_finish(store, source, reporter, plan, experiment_id))
                continue
            try:
                running[experiment_id] = (plan, processes.launch_worker(store, experiment_id))
            except OSError as error:  # no process to run it: the trial fails, the sweep goes on
                store.finish(experiment_id, "failed", error=f"could not start the worker: {error}")
                results.append(_finish(store, source, reporter, plan, experiment_id))
        if not running:
            return results
        time.sleep(POLL_SECONDS)
        results += _collect(store, source, reporter, running, stopping=signals.received.is_set())


def _collect(
    store: ExperimentStore, source: TrialSource, reporter: SweepReporter, running: dict[int, tuple[TrialPlan, Any]],
    *, stopping: bool,
) -> list[TrialResult]:  # fmt: skip
    """The running trials that ended (a dead worker's is marked interrupted), taken out of `running`. A trial
    ends when its status is final and its worker has exited: a slot frees only once its process is gone."""
    exited = {eid: process is None or process.poll() is not None for eid, (_, process) in running.items()}
    store.mark_interrupted_if_dead(processes.pid_alive)  # after the polls above reaped the ended workers
    ended = []
    for experiment_id, (plan, _) in list(running.items()):
        experiment = store.get_experiment(experiment_id)
        if experiment is not None and experiment.status in ACTIVE_STATUSES:
            if stopping and not experiment.stop_requested:
                store.request_stop(experiment_id)
            continue
        if not exited[experiment_id]:
            continue
        del running[experiment_id]
        ended.append(_finish(store, source, reporter, plan, experiment_id))
    return ended


def _finish(store: ExperimentStore, source: TrialSource, reporter: SweepReporter, plan: TrialPlan,
            experiment_id: int) -> TrialResult:  # fmt: skip
    result = _result(store, source, plan, experiment_id)
    source.done(result)
    reporter.finished(result)
    return result


@dataclass
class GridSweep:
    """The points of a grid, less those a completed experiment of the same sweep already ran (same config)."""

    store: ExperimentStore
    sweep: Sweep
    plans: list[TrialPlan]
    reporter: SweepReporter
    _left: Iterator[TrialPlan] = field(init=False)

    def __post_init__(self) -> None:
        done = {
            json.dumps(e.config, sort_keys=True): e.id
            for e in sweep_members(self.store.list_experiments(), self.sweep.name) if e.status == "completed"
        }  # fmt: skip
        left = []
        for plan in self.plans:
            if (experiment_id := done.get(plan.config.to_json())) is not None:
                self.reporter.note(f"trial {plan.number}: already completed as experiment {experiment_id}")
            else:
                left.append(plan)
        self._left = iter(left)

    def adopted(self) -> dict[int, TrialPlan]:
        return {}

    def next_plan(self, running: int) -> TrialPlan | None:
        return next(self._left, None)

    def stored(self, plan: TrialPlan, experiment_id: int) -> None:
        pass

    def done(self, result: TrialResult) -> None:
        pass


# -- reading sweeps back ----------------------------------------------------------------------------


def sweep_names(experiments: list[ExperimentSummary]) -> list[str]:
    """The sweeps among the experiments, newest first."""
    names = (tag[len(SWEEP_TAG) :] for e in experiments for tag in e.tags if tag.startswith(SWEEP_TAG))
    return list(dict.fromkeys(names))


def sweep_members(experiments: list[ExperimentSummary], name: str) -> list[ExperimentSummary]:
    return [e for e in experiments if f"{SWEEP_TAG}{name}" in e.tags]


def sweep_objective(members: list[ExperimentSummary]) -> str:
    tags = (tag[len(OBJECTIVE_TAG) :] for e in members for tag in e.tags if tag.startswith(OBJECTIVE_TAG))
    return next((tag for tag in tags if tag in OBJECTIVES), "accuracy")


def sweep_table(experiments: list[ExperimentSummary], name: str) -> pd.DataFrame:
    """One row per trial of sweep `name`: experiment, status, the settings that differ between its trials, final
    accuracy, loss and ε; best objective first (unfinished trials last)."""
    import pandas as pd  # (~0.4 s to import) not before the page's sidebar is drawn

    members = sweep_members(experiments, name)
    flat = pd.DataFrame([
        {f"{section}.{key}": value for section, table in e.config.items() for key, value in table.items()}
        for e in members
    ])  # fmt: skip
    varied = [column for column in flat.columns if flat[column].astype(str).nunique() > 1]
    table = flat[varied].copy()
    table.insert(0, "status", [e.status for e in members])
    table.insert(0, "experiment", [e.id for e in members])
    for objective, column in SUMMARY_COLUMNS.items():
        table[objective] = [getattr(e, column) for e in members]
    objective = sweep_objective(members)
    ascending = OBJECTIVES[objective] == "minimize"
    return table.sort_values(objective, ascending=ascending, na_position="last", kind="stable").reset_index(drop=True)


def launch_grid(store: ExperimentStore, sweep: Sweep, plans: list[TrialPlan], *, parallel: int) -> list[Any]:
    """Store every trial of a grid, then start `parallel` workers (fewer for fewer trials), each running its
    share in order (trial i goes to worker i mod `parallel`): the page's way, which never waits on them.
    Returns [(worker process, its experiment ids)]."""
    experiment_ids = [store_trial(store, sweep, plan) for plan in plans]
    shares = [experiment_ids[start::parallel] for start in range(min(parallel, len(experiment_ids)))]
    return [(processes.launch_worker(store, *share), share) for share in shares]
