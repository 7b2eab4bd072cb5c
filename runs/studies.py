"""Optuna studies as sweeps: search ranges (`--search section.key=log:1e-3:1`), the study stored by Optuna's
RDBStorage in the experiment database, and the `TrialSource` that asks it for trials and tells it their results.

    dimensions = parse_search(["federation.learning_rate=log:1e-3:1", "federation.local_epochs=int:1:3"])
    check_search(base, dimensions)                        # the config accepts every range's ends
    study = StudySweep.open(store, base, dimensions, sweep, trials=8, reporter=reporter)
    sweeps.run_trials(store, study, parallel=2, reporter=reporter)

Opening a study again continues it: its completed trials stay, a trial whose process was killed is settled
(its experiment was marked interrupted: FAIL; a worker still alive is waited for; one that completed is told
its value), and new trials are asked for until the study holds the number of completed trials asked for.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sqlalchemy import make_url, text

from database import ACTIVE_STATUSES, ExperimentStore
from experiment_config import ExperimentConfig
from runs import workers as processes
from runs.sweeps import Sweep, SweepReporter, TrialPlan, TrialResult, configured, objective_value, split_key

if TYPE_CHECKING:  # optuna loads only when a study runs, not with the page or the CLI's other commands
    import optuna

SEARCH_KINDS = ("float", "log", "int", "choice")


@dataclass(frozen=True)
class SearchDimension:
    """One `--search` setting: `float:LOW:HIGH`, `log:LOW:HIGH` (log-uniform), `int:LOW:HIGH` or `choice:A,B`."""

    key: str
    kind: str
    low: float = 0.0
    high: float = 0.0
    choices: tuple[Any, ...] = ()

    def texts(self) -> list[str]:
        """The values a config must accept for this range to be searchable: its ends, or every choice."""
        if self.kind == "choice":
            return [str(choice) for choice in self.choices]
        ends = (int(self.low), int(self.high)) if self.kind == "int" else (self.low, self.high)
        return [repr(end) for end in ends]


def parse_search(texts: list[str]) -> list[SearchDimension]:
    """`section.key=KIND:...` strings as search dimensions (kinds: `SearchDimension`). ValueError, one line,
    for a bad shape, an unknown kind, bounds that are not numbers or not low < high (> 0 for log)."""
    dimensions: dict[str, SearchDimension] = {}
    for entry in texts:
        key, rest = split_key(entry, "--search", "section.key=log:LOW:HIGH (or float:, int:, choice:A,B)")
        kind, _, spec = rest.partition(":")
        if kind not in SEARCH_KINDS:
            raise ValueError(f"--search {key}: unknown kind {kind[:20]!r}; kinds: {', '.join(SEARCH_KINDS)}")
        if key in dimensions:
            raise ValueError(f"--search {key} is given twice")
        dimensions[key] = _dimension(key, kind, spec)
    if not dimensions:
        raise ValueError("an Optuna sweep needs at least one --search section.key=log:LOW:HIGH")
    return list(dimensions.values())


def _dimension(key: str, kind: str, spec: str) -> SearchDimension:
    if kind == "choice":
        choices = tuple(choice.strip() for choice in spec.split(","))
        if not spec.strip() or any(not choice for choice in choices) or len(set(choices)) < len(choices):
            raise ValueError(f"--search {key}: choice:A,B,... needs distinct non-empty values, got {spec[:80]!r}")
        return SearchDimension(key, kind, choices=choices)
    low_text, sep, high_text = spec.partition(":")
    try:
        low, high = (int(low_text), int(high_text)) if kind == "int" else (float(low_text), float(high_text))
    except ValueError:
        raise ValueError(f"--search {key}: {kind}:LOW:HIGH needs two {kind} numbers, got {spec[:80]!r}") from None
    if not sep or not (math.isfinite(low) and math.isfinite(high)) or low >= high:
        raise ValueError(f"--search {key}: {kind}:LOW:HIGH needs finite LOW < HIGH, got {spec[:80]!r}")
    if kind == "log" and low <= 0:
        raise ValueError(f"--search {key}: log:LOW:HIGH needs LOW > 0, got {low}")
    return SearchDimension(key, kind, low=low, high=high)


def check_search(base: ExperimentConfig, dimensions: list[SearchDimension]) -> None:
    """ValueError, one line, unless the config accepts each dimension's ends (or every choice) with the others'
    lows: an unknown key or a range the config rejects is refused before the study is stored."""
    for dimension in dimensions:
        others = {d.key: d.texts()[0] for d in dimensions if d is not dimension}
        for value in dimension.texts():
            configured(base, {**others, dimension.key: value})


# -- the study -------------------------------------------------------------------------------------------


def optuna_storage(store: ExperimentStore) -> optuna.storages.RDBStorage:
    """Optuna's RDBStorage on the store's database, which the store has already migrated. Its tables (studies,
    trials, version_info, ...) are not ours, but it keeps its schema revision in Alembic's default
    `alembic_version` table, which holds ours: its own check would read our revision and refuse, and on a
    database it opened first it would stamp its own, which ours would refuse. So its Alembic check is skipped
    and its schema version (version_info) is compared with the installed Optuna's instead."""
    import optuna
    from optuna.storages._rdb.models import SCHEMA_VERSION  # what the pinned Optuna's tables are

    sqlite = make_url(store.url).get_backend_name() == "sqlite"
    kwargs = {"connect_args": {"timeout": 30}} if sqlite else {}  # workers write beside it: wait, do not fail
    storage = optuna.storages.RDBStorage(store.url, engine_kwargs=kwargs, skip_compatibility_check=True)
    with storage.engine.connect() as connection:
        found = connection.execute(text("SELECT schema_version FROM version_info")).scalar()
    if found != SCHEMA_VERSION:
        raise ValueError(f"the Optuna tables in {processes.shown_url(store.url)} are schema {found}; "
                         f"the installed Optuna {optuna.__version__} needs {SCHEMA_VERSION}")  # fmt: skip
    return storage


def distribution(dimension: SearchDimension) -> optuna.distributions.BaseDistribution:
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    if dimension.kind == "choice":
        return CategoricalDistribution(list(dimension.choices))
    if dimension.kind == "int":
        return IntDistribution(int(dimension.low), int(dimension.high))
    return FloatDistribution(dimension.low, dimension.high, log=dimension.kind == "log")


@dataclass
class StudySweep:
    """An Optuna study of `trials` completed trials: each trial asked of the study, run as an experiment, told
    its objective (FAIL when its run did not complete). Open it with `StudySweep.open`."""

    store: ExperimentStore
    sweep: Sweep
    study: optuna.Study
    base: ExperimentConfig
    dimensions: list[SearchDimension]
    trials: int
    reporter: SweepReporter
    failures_left: int = 0
    _asked: dict[int, optuna.trial.Trial] = field(default_factory=dict)
    _adopted: dict[int, TrialPlan] = field(default_factory=dict)

    @classmethod
    def open(cls, store: ExperimentStore, base: ExperimentConfig, dimensions: list[SearchDimension], sweep: Sweep,
             *, trials: int, reporter: SweepReporter) -> StudySweep:  # fmt: skip
        """Create the study, or load it (same name): ValueError if it was made for another objective or base
        config. Trials an earlier process left running are settled (`_settle`)."""
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)  # the reporter says what happens
        study = optuna.create_study(
            storage=optuna_storage(store), study_name=sweep.name, direction=sweep.direction, load_if_exists=True,
            sampler=optuna.samplers.TPESampler(seed=base.system.seed),
        )  # fmt: skip
        stored = study.user_attrs.get("base_config")
        if study.direction.name.lower() != sweep.direction or stored not in (None, base.to_json()):
            raise ValueError(f"sweep {sweep.name} exists for another objective or base config: give another --name")
        study.set_user_attr("base_config", base.to_json())
        study.set_user_attr("objective", sweep.objective)
        # A study whose every trial fails would ask forever: give up after as many failures as trials asked.
        opened = cls(store, sweep, study, base, dimensions, trials, reporter, failures_left=trials)
        opened._settle()
        return opened

    def _settle(self) -> None:
        """Trials left RUNNING by an earlier process: one whose experiment still runs in a live worker is
        adopted (waited for), one that completed is told its value, any other is told FAIL (its experiment
        was marked interrupted when its process was found dead)."""
        from optuna.trial import TrialState

        self.store.mark_interrupted_if_dead(processes.pid_alive)
        for trial in self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            experiment_id = trial.user_attrs.get("experiment_id")
            experiment = self.store.get_experiment(experiment_id) if experiment_id is not None else None
            if experiment is not None and experiment.status in ACTIVE_STATUSES:
                config = ExperimentConfig.from_stored(experiment.config)
                self._adopted[experiment_id] = TrialPlan(trial.number, dict(trial.params), config)
                self.reporter.note(f"trial {trial.number}: experiment {experiment_id} still runs, waiting for it")
                continue
            value = objective_value(experiment, self.sweep.objective)
            self.study.tell(trial.number, value, state=TrialState.COMPLETE if value is not None else TrialState.FAIL)
            what = "completed" if value is not None else f"marked FAIL (experiment {experiment_id or 'never stored'})"
            self.reporter.note(f"trial {trial.number} of an earlier process: {what}")

    def completed(self) -> int:
        from optuna.trial import TrialState

        return len(self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))

    def adopted(self) -> dict[int, TrialPlan]:
        return dict(self._adopted)

    def next_plan(self, running: int) -> TrialPlan | None:
        """Ask the study for a trial while completed + running trials fall short of `trials`."""
        from optuna.trial import TrialState

        distributions = {dimension.key: distribution(dimension) for dimension in self.dimensions}
        while self.completed() + running < self.trials and self.failures_left > 0:
            trial = self.study.ask(distributions)
            try:
                values, config = configured(self.base, {key: str(value) for key, value in trial.params.items()})
            except ValueError as error:  # a sampled point the config rejects (a bound inside the range)
                self.study.tell(trial, state=TrialState.FAIL)
                self.failures_left -= 1
                self.reporter.note(f"trial {trial.number} FAIL: {error}")
                continue
            self._asked[trial.number] = trial
            return TrialPlan(trial.number, values, config)
        return None

    def stored(self, plan: TrialPlan, experiment_id: int) -> None:
        self._asked[plan.number].set_user_attr("experiment_id", experiment_id)

    def done(self, result: TrialResult) -> None:
        """Tell the study how the trial ended (an adopted trial may have been told by another process meanwhile:
        `skip_if_finished`)."""
        from optuna.trial import TrialState

        trial = self._asked.pop(result.plan.number, result.plan.number)
        if result.value is None:
            self.failures_left -= 1
            self.study.tell(trial, state=TrialState.FAIL, skip_if_finished=True)
        else:
            self.study.tell(trial, result.value, skip_if_finished=True)
