"""Federated Privacy Lab, headless.

    python cli.py run [--config FILE.toml] [--set section.key=value ...] [--db URL] [--json]
    python cli.py list [--db URL] [--json]
    python cli.py show ID [--db URL] [--json | --privacy-report]
    python cli.py score ID --text "a response" [--text ...] [--db URL] [--json]
    python cli.py resume ID [--db URL] [--json]
    python cli.py export ID [--mlflow URI] [--tensorboard DIR] [--db URL] [--json]
    python cli.py serve [--host 127.0.0.1] [--port 8000] [--db URL]
    python cli.py sweep [--config FILE.toml] (--grid section.key=V1,V2 ... | --optuna N --search section.key=log:LOW:HIGH ...)
                        [--objective accuracy|loss|epsilon] [--parallel N] [--name NAME] [--db URL] [--json]

`run` validates the config first: a bad one exits 2 with one line on stderr and
writes nothing. Then every round is committed to the database as it finishes.
With `--json` it prints one JSON object per round, then one with `experiment_id`.
Ctrl-C (or SIGTERM) stops after the current round; a second one aborts. After the
rounds, unless `privacy.audit_examples = 0`, a membership-inference audit of the final
model is stored with the run (`show ID --privacy-report` turns it, and the privacy
guarantee, into a one-page statement). A text-model run (NGSS rubric scoring) also stores
its final LoRA + head weights; `score` applies them to new responses: per rubric element
the probability and 0/1 (≥ 0.5), and the total score (`--json`: one object per response).

Each round is committed together with a checkpoint of the run (global model, strategy
state, privacy accountants, participation tally; every random draw is seeded by round), so a
run that was killed, stopped or failed continues with `resume ID` from its last committed
round and ends exactly where it would have without the interruption. While it runs, the
worker beats a heartbeat into the database every few seconds, mid-round too: `list`,
`show` and the page mark a run whose worker died `interrupted` (at once on this machine,
within 30 s from another one sharing the database).

`sweep` runs one stored experiment per grid point, or an Optuna study of N completed trials (stored in the
same database), one after the other or `--parallel N` workers at once; each trial is an ordinary experiment
tagged `sweep:NAME`. Every grid point (or search range) is validated before anything is stored. The same
command again continues the sweep (`runs.sweeps`): completed trials are not run again.

The page starts runs through the same code: `python cli.py worker ID [ID ...]` runs
experiments already stored (queued) in the database, one after the other (the page hands it the
database URL in `DATABASE_URL`, never on the command line, where `ps` would show a password).

Bad input is refused before anything is stored, with one line on stderr and exit 2: a bad
config, data the run could not use (`runs.preflight.check_data`: a CSV the importer refuses, the
wrong number of schools for `natural`, more clients than examples), a `--name` too long, an id
out of range, or a database that cannot be used (not a URL, a folder, not a database, read-only,
unreachable). A database URL is shown with its password masked (`runs.workers.shown_url`).
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, NoReturn, TextIO

from alembic.util import CommandError
from sqlalchemy import make_url
from sqlalchemy.exc import SQLAlchemyError

from database import RESUMABLE_STATUSES, ExperimentStore, ExperimentSummary, resolve_url
from experiment_config import ExperimentConfig, check_tracking_uri
from ngss.csv_format import summarize_import
from runs import service, studies, sweeps
from runs.intake import build_config, checked_name
from runs.preflight import check_data
from runs.scoring import rubric_elements, score_experiment
from runs.workers import StopSignals, pid_alive, printable, shown_url


EXIT_OK, EXIT_FAILED, EXIT_BAD_CONFIG, EXIT_INTERRUPTED = 0, 1, 2, 130
MAX_ID = 2**31 - 1  # experiment ids are INTEGER columns: 32-bit on PostgreSQL
# What a database (driver, migrations) raises when it cannot be used; opening one, the file system's too.
STORAGE_ERRORS = (SQLAlchemyError, sqlite3.Error, CommandError, OverflowError)


class StorageError(Exception):
    """A database that cannot be used; the message names the problem and the masked URL."""


def problem_line(error: BaseException, url: str) -> str:
    """One line for an error met with the database at `url`: a driver's own message (not SQLAlchemy's,
    which spans lines and quotes its SQL), with the URL and its password masked (a password shorter
    than 4 characters is left: masking it would garble the text) and control characters escaped."""
    cause = getattr(error, "orig", None) or error
    text = " ".join(str(cause).split()) or type(cause).__name__
    text = text.replace(url, shown_url(url)) if url else text
    if (password := _password(url)) and len(password) >= 4:
        text = text.replace(password, "***")
    text = printable(text)
    return text if len(text) <= 300 else f"{text[:297]}..."


def _password(url: str) -> str | None:
    try:
        return make_url(url).password
    except (SQLAlchemyError, ValueError, TypeError):
        return None


def open_store(url: str | None) -> ExperimentStore:
    """The store at `url` (else `DATABASE_URL`, else the default), or StorageError naming why not."""
    if url is not None and not url.strip():
        raise StorageError("--db is empty: give a database URL (sqlite:///experiments.db, postgresql+psycopg://...)")
    resolved = resolve_url(url)
    try:
        return ExperimentStore(resolved)
    # OSError, ValueError: a file system refusal, a NUL in a path; RuntimeError: a schema from newer code;
    # ImportError: the URL's driver is not installed.
    except (*STORAGE_ERRORS, OSError, ValueError, RuntimeError, ImportError) as error:
        problem = problem_line(error, resolved)
        raise StorageError(f"cannot use the database {shown_url(resolved)}: {problem}") from None


def _describe_personalization(result: dict[str, Any]) -> str:
    if "error" in result:
        return f"personalization failed: {result['error']}"
    return (
        f"personalization ({result['method']}), accuracy on each client's own held-out split, mean over "
        f"{len(result['clients'])} clients: global model {100 * result['mean_global_accuracy']:.2f}%, "
        f"personalized {100 * result['mean_personalized_accuracy']:.2f}%"
    )


def _describe_audit(audit: dict[str, Any]) -> str:
    """One line for the membership-inference audit (or its error)."""
    if "error" in audit:
        return f"privacy audit failed: {audit['error']}"
    if "epsilon_lower_bound" in audit:  # privacy.audit = "one_run"
        return (
            f"privacy audit (one training run, {audit['canaries']} canaries): empirical ε >= "
            f"{audit['epsilon_lower_bound']:.4f} at 95% ({audit['correct']} of {audit['guesses']} guesses right)"
        )
    return (
        f"privacy audit (membership inference, loss threshold): AUC {audit['auc']:.4f}, "
        f"advantage {audit['advantage']:.4f} ({audit['members']} members, {audit['non_members']} non-members; "
        "chance: AUC 0.5, advantage 0)"
    )


def _emit(out: TextIO, payload: dict[str, Any]) -> None:
    out.write(json.dumps(payload) + "\n")
    out.flush()


ABSENT = ("dropped", "late")  # selected clients that never trained this round


def _print_round(out: TextIO, row: dict[str, Any], total_rounds: int, as_json: bool) -> None:
    if as_json:
        # `clients`: those that took part (trained); `absent`: selected, but dropped out or too late.
        _emit(out, {
            **row,
            "clients": [c for c in row["clients"] if c["status"] not in ABSENT],
            "absent": [{"id": c["id"], "status": c["status"]} for c in row["clients"] if c["status"] in ABSENT],
        })  # fmt: skip
        return
    privacy = f"  ε {row['epsilon']:.3f}" if row["accountant"] else ""
    arrived = sum(c["status"] in ("ok", "partial") for c in row["clients"])
    clients = f"  {arrived}/{len(row['clients'])} clients" if arrived < len(row["clients"]) else ""
    skipped = f"  not aggregated: {row['skipped']}" if row["skipped"] else ""
    rubric = ""
    if metrics := row.get("metrics"):  # rubric scoring: the accuracy above is per-label accuracy
        rubric = f"  exact match {100 * metrics['exact_match']:5.1f}%  micro-F1 {metrics['micro_f1']:.3f}"
    print(
        f"round {row['round']:>4}/{total_rounds}  accuracy {100 * row['accuracy']:6.2f}%{rubric}  "
        f"loss {row['loss']:.4f}{privacy}  {row['seconds']:6.1f} s train  {row['eval_seconds']:5.1f} s eval"
        f"{clients}{skipped}",
        file=out,
        flush=True,
    )


# -- commands ----------------------------------------------------------------------------


class Printer:
    """The CLI's `runs.service.Reporter`: rounds as text or JSON lines on `out`, notes as text
    (never in JSON mode, whose stdout is one object per line), errors on stderr."""

    def __init__(self, out: TextIO, *, as_json: bool, total_rounds: int) -> None:
        self.out, self.as_json, self.total_rounds = out, as_json, total_rounds

    def round(self, row: dict[str, Any]) -> None:
        with _unless_the_pipe_closed():
            _print_round(self.out, row, self.total_rounds, self.as_json)

    def note(self, text: str) -> None:
        if not self.as_json:
            with _unless_the_pipe_closed():
                print(text, file=self.out, flush=True)

    def error(self, text: str) -> None:
        print(f"error: {printable(text)}", file=sys.stderr)

    def final(self, outcome: service.RunOutcome) -> None:
        """The run's last line: its summary object (JSON), or what it ended as and what came after."""
        final = outcome.final
        if self.as_json:
            if outcome.status != "interrupted":
                _emit(self.out, final)
            return
        if outcome.status in ("failed", "interrupted"):
            return  # said on stderr as it happened
        reason = f" ({final['stop_reason']})" if final.get("stop_reason") else ""
        where = " on Flower" if final.get("runtime") == "flower" else ""
        print(f"experiment {final['experiment_id']} {outcome.status} after {final['rounds']} rounds{where}{reason}",
              file=self.out)  # fmt: skip
        if final.get("audit") is not None:
            print(_describe_audit(final["audit"]), file=self.out)
        if final.get("personalization") is not None:
            print(_describe_personalization(final["personalization"]), file=self.out)
        if (weights := final.get("weights")) is not None and "values" in weights:
            print(f"final weights stored ({weights['values']} values, LoRA + head): cli.py score "
                  f'{final["experiment_id"]} --text "..."', file=self.out)  # fmt: skip


EXIT_CODES = {"completed": EXIT_OK, "stopped": EXIT_OK, "failed": EXIT_FAILED, "interrupted": EXIT_INTERRUPTED}


def _execute(store: ExperimentStore, experiment_id: int, config: ExperimentConfig, *, as_json: bool) -> int:
    printer = Printer(sys.stdout, as_json=as_json, total_rounds=config.federation.rounds)
    outcome = service.execute(store, experiment_id, config, reporter=printer)
    with _unless_the_pipe_closed():
        printer.final(outcome)
    return EXIT_CODES[outcome.status]


def command_run(args: argparse.Namespace) -> int:
    try:  # everything about the input, before the database is even opened
        name = checked_name(args.name)
        config = build_config(args.config, args.set or [])
        check_data(config)
    except ValueError as error:
        print(f"error: {printable(' '.join(str(error).split()))}", file=sys.stderr)
        return EXIT_BAD_CONFIG
    store = open_store(args.db)
    experiment_id = service.create(store, config, name=name)
    if not args.json:
        print(f"experiment {experiment_id}: {_describe(config.to_dict())}  (database {shown_url(store.url)})")
        if config.data.dataset == "csv":
            print(_import_note(config), flush=True)
    return _execute(store, experiment_id, config, as_json=args.json)


def _import_note(config: ExperimentConfig) -> str:
    """`812 + 203 responses imported (train + test) · 3 blank, scored as written · 5 cut to 128 tokens`."""
    from engine.workloads import load_ngss, load_tokenizer  # torch: the run loads it next anyway

    dataset = load_ngss(config)
    try:
        tokenizer = load_tokenizer(config, dataset.train.texts)
    except (OSError, RuntimeError, ValueError):  # a Hub tokenizer offline: the run says why when it needs it
        tokenizer = None
    summary = summarize_import(dataset, tokenizer=tokenizer, max_length=config.model.max_length)
    return summary.text()


def command_worker(args: argparse.Namespace) -> int:
    """Run stored experiments one after the other, each with its own status; exit code of the last that
    failed. The database: `--db`, else `DATABASE_URL` (how the page's `launch_worker` hands it over)."""
    store = open_store(args.db)
    printer = Printer(sys.stdout, as_json=True, total_rounds=0)
    outcomes = service.run_queue(store, args.ids, reporter=printer, signals=StopSignals(), finished=printer.final)
    exit_code = EXIT_OK
    for outcome in outcomes:
        exit_code = EXIT_CODES[outcome.status] if EXIT_CODES[outcome.status] != EXIT_OK else exit_code
    return exit_code


def _open_experiment(args: argparse.Namespace) -> tuple[ExperimentStore, ExperimentSummary | None]:
    """The store and experiment `args.id` (None, said on stderr, if there is none), after marking
    runs whose worker died."""
    store = open_store(args.db)
    experiment = service.find(store, args.id)
    if experiment is None:
        print(f"error: no experiment {args.id} in {shown_url(store.url)}", file=sys.stderr)
    return store, experiment


def command_resume(args: argparse.Namespace) -> int:
    """Continue an interrupted, stopped or failed run from its checkpoint, in this process."""
    store, experiment = _open_experiment(args)
    if experiment is None:
        return EXIT_FAILED
    rounds = experiment.config.get("federation", {}).get("rounds", 0)
    printer = Printer(sys.stdout, as_json=args.json, total_rounds=rounds)
    try:
        outcome = service.resume(store, experiment, reporter=printer)
    except (KeyError, ValueError) as error:
        print(f"error: {printable(str(error))}", file=sys.stderr)
        return EXIT_FAILED
    printer.final(outcome)
    return EXIT_CODES[outcome.status]


def command_serve(args: argparse.Namespace) -> int:
    """Serve the REST API (`api/`) until interrupted: loopback by default; another host needs
    `FPL_API_TOKEN` (refused otherwise, one line, exit 2), which every request must then carry."""
    from api.server import check_binding, check_port, serve  # FastAPI loads only for `serve`

    try:
        token = check_binding(args.host, token=os.environ.get("FPL_API_TOKEN"))
        port = check_port(args.port)
    except ValueError as error:
        print(f"error: {printable(str(error))}", file=sys.stderr)
        return EXIT_BAD_CONFIG
    store = open_store(args.db)
    print(f"serving {shown_url(store.url)} on http://{args.host}:{port} (docs: /docs)", file=sys.stderr)
    serve(store, host=args.host, port=port, token=token)
    return EXIT_OK


def command_export(args: argparse.Namespace) -> int:
    """Export a stored run to an MLflow tracking server and/or TensorBoard event files. Exporting again
    updates the same MLflow run and rewrites the run's TensorBoard folder (`tracking/`)."""
    from tracking.mlflow_export import TrackingError, export_to_mlflow  # mlflow loads only for `export`
    from tracking.tensorboard_export import export_to_tensorboard

    try:
        if args.mlflow is None and args.tensorboard is None:
            raise ValueError("give --mlflow URI, --tensorboard DIR or both")
        if args.mlflow is not None and not check_tracking_uri("--mlflow", args.mlflow.strip()):
            raise ValueError("--mlflow is empty: give a tracking URI, e.g. http://127.0.0.1:5000")
        if args.tensorboard is not None and not args.tensorboard.strip():
            raise ValueError("--tensorboard is empty: give a folder for the event files")
    except ValueError as error:
        print(f"error: {printable(str(error))}", file=sys.stderr)
        return EXIT_BAD_CONFIG
    store, experiment = _open_experiment(args)
    if experiment is None:
        return EXIT_FAILED
    exported, exit_code = {"experiment_id": args.id}, EXIT_OK
    try:
        if args.tensorboard is not None:
            exported["tensorboard"] = str(export_to_tensorboard(store, args.id, args.tensorboard))
        if args.mlflow is not None:
            exported["mlflow_run_id"] = export_to_mlflow(store, args.id, args.mlflow.strip())
    except TrackingError as error:
        print(f"error: {error}", file=sys.stderr)
        exit_code = EXIT_FAILED
    if args.json:
        _emit(sys.stdout, exported)
    if not args.json and "tensorboard" in exported:
        print(f"experiment {args.id}: TensorBoard event files in {printable(exported['tensorboard'])}")
    if not args.json and "mlflow_run_id" in exported:
        print(f"experiment {args.id}: MLflow run {exported['mlflow_run_id']} at {shown_url(args.mlflow.strip())}")
    return exit_code


class SweepPrinter:
    """The CLI's `runs.sweeps.SweepReporter`: one line (or JSON object) per trial started and ended."""

    def __init__(self, out: TextIO, *, as_json: bool, objective: str) -> None:
        self.out, self.as_json, self.objective = out, as_json, objective

    def started(self, plan: sweeps.TrialPlan, experiment_id: int) -> None:
        self.note(f"trial {plan.number}: experiment {experiment_id}  {_varied(plan.values)}")

    def finished(self, result: sweeps.TrialResult) -> None:
        with _unless_the_pipe_closed():
            if self.as_json:
                _emit(self.out, {"trial": result.plan.number, "experiment_id": result.experiment_id,
                                 "values": result.plan.values, "status": result.status,
                                 self.objective: result.value})  # fmt: skip
                return
            value = "" if result.value is None else f", {self.objective} {result.value:.4f}"
            print(f"trial {result.plan.number}: experiment {result.experiment_id} {result.status}{value}",
                  file=self.out, flush=True)  # fmt: skip

    def note(self, text: str) -> None:
        if not self.as_json:
            with _unless_the_pipe_closed():
                print(text, file=self.out, flush=True)


def _varied(values: dict[str, Any]) -> str:
    return "  ".join(f"{key}={value}" for key, value in values.items())


def _plan_sweep(args: argparse.Namespace) -> tuple[ExperimentConfig, sweeps.Sweep, Any]:
    """The base config, the sweep and what it runs (grid plans, or search dimensions), all validated:
    ValueError, one line, before the database is opened."""
    if (args.grid is None) == (args.optuna is None):
        raise ValueError("give either --grid section.key=V1,V2 (repeatable) or --optuna N with --search")
    if args.optuna is None and args.search:
        raise ValueError("--search goes with --optuna N")
    if not 1 <= args.parallel <= 64:
        raise ValueError(f"--parallel must be from 1 to 64, got {args.parallel}")
    base = build_config(args.config, args.set or [])
    check_data(base)
    if args.grid is not None:
        grid = sweeps.parse_grid(args.grid)
        sweep = sweeps.checked_sweep(args.name, args.objective, [base.to_dict(), grid, args.objective])
        return base, sweep, sweeps.plan_grid(base, grid)
    if not 1 <= args.optuna <= 10_000:
        raise ValueError(f"--optuna must be from 1 to 10000 trials, got {args.optuna}")
    dimensions = studies.parse_search(args.search or [])
    studies.check_search(base, dimensions)
    described = [base.to_dict(), [repr(d) for d in dimensions], args.objective]
    return base, sweeps.checked_sweep(args.name, args.objective, described), dimensions


def command_sweep(args: argparse.Namespace) -> int:
    """Run a grid sweep or an Optuna study (`runs.sweeps`), continuing one the same command began; print each
    trial, then the trials best first. Exit 0 when every grid point (or N trials) completed, else 1 (130: a signal)."""
    try:
        base, sweep, work = _plan_sweep(args)
    except ValueError as error:
        print(f"error: {printable(' '.join(str(error).split()))}", file=sys.stderr)
        return EXIT_BAD_CONFIG
    store = open_store(args.db)
    printer = SweepPrinter(sys.stdout, as_json=args.json, objective=sweep.objective)
    try:
        if args.optuna is None:
            source: Any = sweeps.GridSweep(store, sweep, work, printer)
        else:
            source = studies.StudySweep.open(store, base, work, sweep, trials=args.optuna, reporter=printer)
    except ValueError as error:  # a study of that name for another objective or base config
        print(f"error: {printable(str(error))}", file=sys.stderr)
        return EXIT_BAD_CONFIG
    printer.note(f"sweep {sweep.name} ({sweep.direction} {sweep.objective}), database {shown_url(store.url)}")
    signals = StopSignals()
    try:
        sweeps.run_trials(store, source, parallel=args.parallel, reporter=printer, signals=signals)
    except KeyboardInterrupt:  # a second signal while waiting on workers: they go on in their own sessions
        print(f"error: sweep {sweep.name} aborted; its running trials go on: the same command continues it",
              file=sys.stderr)  # fmt: skip
        return EXIT_INTERRUPTED
    table = sweeps.sweep_table(store.list_experiments(), sweep.name)
    done = (table["status"] == "completed").sum() if args.optuna is None else source.completed()
    wanted = len(work) if args.optuna is None else args.optuna
    with _unless_the_pipe_closed():
        if args.json:
            _emit(sys.stdout, {"sweep": sweep.name, "objective": sweep.objective, "completed": int(done),
                               "trials": json.loads(table.to_json(orient="records"))})  # fmt: skip
        else:
            print(f"sweep {sweep.name}: {done} of {wanted} trials completed\n{table.to_string(index=False)}")
    if signals.received.is_set():
        return EXIT_INTERRUPTED
    return EXIT_OK if done >= wanted else EXIT_FAILED


def command_list(args: argparse.Namespace) -> int:
    store = open_store(args.db)
    store.mark_interrupted_if_dead(pid_alive)
    experiments = store.list_experiments()
    if args.json:
        print(json.dumps([e.to_json_dict() for e in experiments]))
        return EXIT_OK
    if not experiments:
        print(f"no experiments in {shown_url(store.url)}")
        return EXIT_OK
    print(f"{'id':>5}  {'status':<11}  {'rounds':>9}  {'accuracy':>8}  {'created':<19}  settings")
    for e in experiments:
        accuracy = f"{100 * e.final_accuracy:.2f}%" if e.final_accuracy is not None else "-"
        total = e.config.get("federation", {}).get("rounds", "?")
        print(
            f"{e.id:>5}  {e.status:<11}  {f'{e.rounds_done}/{total}':>9}  {accuracy:>8}  "
            f"{e.created_at:%Y-%m-%d %H:%M:%S}  {_describe(e.config)}"
        )
    return EXIT_OK


def command_show(args: argparse.Namespace) -> int:
    store, experiment = _open_experiment(args)
    if experiment is None:
        return EXIT_FAILED
    rounds = store.rounds_frame([args.id]).drop(columns=["experiment_id", "created_at"])
    if args.privacy_report:
        from privacy.report import render_markdown

        print(render_markdown(experiment, rounds))
        return EXIT_OK
    if args.json:
        payload = experiment.to_json_dict()  # includes `audit`
        payload["rounds"] = rounds.to_dict(orient="records")
        print(json.dumps(payload))
        return EXIT_OK
    _print_summary(experiment)
    total = experiment.config.get("federation", {}).get("rounds", 0)
    if experiment.status in RESUMABLE_STATUSES and experiment.rounds_done < total:
        if (done := store.checkpoint_round(args.id)) is not None:
            print(f"  resumable from round {done + 1} of {total}: python cli.py resume {args.id}")
    if not rounds.empty:
        print(_rounds_table(rounds))
    if experiment.audit is not None:
        print(_describe_audit(experiment.audit))
    return EXIT_OK


def command_score(args: argparse.Namespace) -> int:
    texts = [text for text in args.text if text.strip()]
    if not texts:
        print("error: give at least one non-empty --text", file=sys.stderr)
        return EXIT_BAD_CONFIG
    store, experiment = _open_experiment(args)  # not score_experiment's LookupError: it shows the raw URL
    if experiment is None:
        return EXIT_FAILED
    try:
        probabilities = score_experiment(store, args.id, texts)
    except (LookupError, ValueError, RuntimeError, OSError) as error:  # RuntimeError: a Hub model unavailable
        print(f"error: {problem_line(error, store.url)}", file=sys.stderr)
        return EXIT_FAILED
    elements = rubric_elements(experiment)
    for text, row in zip(texts, probabilities.tolist()):
        scored = [
            {"label": label, "meaning": meaning, "probability": p, "predicted": int(p >= 0.5)}
            for (label, meaning), p in zip(elements, row)
        ]  # fmt: skip
        total = sum(element["predicted"] for element in scored)
        if args.json:
            _emit(sys.stdout, {"experiment_id": args.id, "text": text, "elements": scored, "total_score": total})
            continue
        print(f"{printable(text)}\n  total score {total}/{len(scored)}")  # a response's ESC codes, shown not obeyed
        for element in scored:
            print(f"  {element['label']:<4} {element['probability']:.3f}  {element['predicted']}  {element['meaning']}")
    return EXIT_OK


# Per-round privacy ledger columns (all zero / empty for a run without privacy).
LEDGER_COLUMNS = ["epsilon", "delta", "noise_multiplier", "max_grad_norm", "sample_rate", "privacy_steps", "accountant"]


def _rounds_table(rounds: Any) -> str:
    """The rounds as text: metrics, then (private runs only) the privacy ledger."""
    metrics = rounds.drop(columns=[c for c in LEDGER_COLUMNS if c in rounds.columns])
    text = metrics.to_string(index=False, formatters={
        "accuracy": "{:.4f}".format, "loss": "{:.4f}".format, "seconds": "{:.2f}".format,
        "eval_seconds": "{:.2f}".format,
    })  # fmt: skip
    ledger = rounds[["round", *LEDGER_COLUMNS]]
    if (ledger["accountant"] == "").all() and (ledger[LEDGER_COLUMNS[:-1]] == 0).all().all():
        return text + "\nprivacy ledger: none (privacy.mode = none: no formal privacy guarantee)"
    ledger_text = ledger.to_string(index=False, formatters={
        "epsilon": "{:.4f}".format, "delta": "{:.3g}".format, "noise_multiplier": "{:.6g}".format,
        "max_grad_norm": "{:.6g}".format, "sample_rate": "{:.6g}".format,
    })  # fmt: skip
    return (
        f"{text}\nprivacy ledger (noise_multiplier = σ, max_grad_norm = C; ε from the accountant, cumulative):\n"
        f"{ledger_text}"
    )


def _print_summary(e: ExperimentSummary) -> None:
    print(f"experiment {e.id}  {e.status}  ({e.runtime}, code {e.code_version})")
    print(f"  created {e.created_at:%Y-%m-%d %H:%M:%S}  rounds done {e.rounds_done}")
    if e.duration_seconds is not None:
        print(f"  duration {e.duration_seconds:.1f} s")
    if e.final_accuracy is not None:
        print(f"  final accuracy {100 * e.final_accuracy:.2f}%  loss {e.final_loss:.4f}")
    if e.error:
        print(f"  error: {printable(e.error)}")
    if e.stop_reason:
        print(f"  stopped early: {printable(e.stop_reason)}")
    print("  config: " + json.dumps(e.config, sort_keys=True))


def _describe(config: dict[str, Any]) -> str:
    data, federation = config.get("data", {}), config.get("federation", {})
    return (
        f"{data.get('dataset')}/{config.get('model', {}).get('name')} {data.get('partition')} "
        f"{federation.get('clients_per_round')}/{federation.get('num_clients')} clients "
        f"{federation.get('strategy')}"
    )


def experiment_id(text: str) -> int:
    """An experiment id argument: a whole number from 1 to MAX_ID (a bigger one fits no id column)."""
    try:
        value = int(text.strip(), 10)
    except ValueError:
        raise argparse.ArgumentTypeError(f"an experiment id is a whole number, got {printable(text)[:40]!r}") from None
    if not 1 <= value <= MAX_ID:
        shown = str(value) if len(text) <= 30 else f"a {len(text.strip())}-digit number"
        raise argparse.ArgumentTypeError(f"an experiment id is from 1 to {MAX_ID}, got {shown}")
    return value


class OneLineParser(argparse.ArgumentParser):
    """argparse, with a usage error as one line on stderr (exit 2), like every other refusal."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_BAD_CONFIG, f"error: {printable(message)} (see {self.prog} --help)\n")


def parser() -> argparse.ArgumentParser:
    root = OneLineParser(prog="cli.py", description="Federated Privacy Lab, headless.")
    commands = root.add_subparsers(dest="command", required=True, metavar="{run,list,show,score,resume,serve,export,sweep}")

    run = commands.add_parser("run", help="run an experiment and store every round")
    run.add_argument("--config", help="TOML file (sections data, model, federation, privacy, system)")
    run.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE", help="override one key (repeatable)")
    run.add_argument("--name", default="", help="a label for the experiment")
    run.set_defaults(handler=command_run)

    listing = commands.add_parser("list", help="list stored experiments")
    listing.set_defaults(handler=command_list)

    show = commands.add_parser("show", help="show one experiment and its rounds")
    show.add_argument("id", type=experiment_id)
    show.add_argument(
        "--privacy-report", action="store_true", help="print the privacy statement (Markdown) for an ethics board"
    )
    show.set_defaults(handler=command_show)

    score = commands.add_parser("score", help="score responses with a finished text-model run's final weights")
    score.add_argument("id", type=experiment_id)
    score.add_argument("--text", action="append", required=True, help="one student response (repeatable)")
    score.set_defaults(handler=command_score)

    resume = commands.add_parser("resume", help="continue an interrupted, stopped or failed run from its checkpoint")
    resume.add_argument("id", type=experiment_id)
    resume.set_defaults(handler=command_resume)

    serve = commands.add_parser("serve", help="serve the REST API (OpenAPI docs at /docs)")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (not loopback: needs FPL_API_TOKEN)")
    serve.add_argument("--port", type=int, default=8000, help="port to listen on (default 8000)")
    serve.add_argument("--db", default=None, help="SQLAlchemy URL (default: $DATABASE_URL or sqlite:///experiments.db)")
    serve.set_defaults(handler=command_serve)

    export = commands.add_parser("export", help="export a stored run to MLflow and/or TensorBoard")
    export.add_argument("id", type=experiment_id)
    export.add_argument("--mlflow", metavar="URI", help="MLflow tracking URI (e.g. http://127.0.0.1:5000)")
    export.add_argument("--tensorboard", metavar="DIR", help="folder for TensorBoard event files")
    export.set_defaults(handler=command_export)

    sweep = commands.add_parser("sweep", help="run a grid of settings or an Optuna study, one experiment per trial")
    sweep.add_argument("--config", help="TOML file: the base config every trial starts from")
    sweep.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE", help="override one base key (repeatable)")
    sweep.add_argument("--grid", action="append", metavar="SECTION.KEY=V1,V2,...", help="values to try (repeatable)")
    sweep.add_argument("--optuna", type=int, metavar="N", help="an Optuna study of N completed trials")
    sweep.add_argument("--search", action="append", metavar="SECTION.KEY=KIND:...",
                       help="a range for --optuna: log:LOW:HIGH, float:LOW:HIGH, int:LOW:HIGH, choice:A,B (repeatable)")
    sweep.add_argument("--objective", choices=list(sweeps.OBJECTIVES), default="accuracy",
                       help="the final round's accuracy (maximized), loss or ε (minimized)")
    sweep.add_argument("--parallel", type=int, default=1, help="trials at once, each in its own worker (default 1)")
    sweep.add_argument("--name", default="", help="the sweep's name (default: from its settings, so a rerun continues it)")
    sweep.set_defaults(handler=command_sweep)

    worker = commands.add_parser("worker")  # no help: the page's, unlisted
    worker.add_argument("ids", type=experiment_id, nargs="+", metavar="ID", help="stored experiments, in this order")
    worker.set_defaults(handler=command_worker)

    for sub in (run, listing, show, score, resume, export, sweep, worker):
        sub.add_argument("--db", default=None, help="SQLAlchemy URL (default: $DATABASE_URL or sqlite:///experiments.db)")
        sub.add_argument("--json", action="store_true", help="machine-readable output")
    return root


def main(argv: list[str] | None = None) -> int:
    """Parse `argv` and run its command at the CLI's edge: a usage error, a database that cannot be
    used or fails midway is one line on stderr and exit 2, never a traceback; a closed stdout
    (`show 1 | head`) ends quietly."""
    try:
        args = parser().parse_args(argv)
    except SystemExit as exit_:  # usage errors (2) and --help (0), as a return code
        return exit_.code if isinstance(exit_.code, int) else EXIT_BAD_CONFIG
    try:
        return args.handler(args)
    except StorageError as error:
        print(f"error: {error}", file=sys.stderr)
    except STORAGE_ERRORS as error:
        url = resolve_url(args.db)
        print(f"error: the database {shown_url(url)} failed: {problem_line(error, url)}", file=sys.stderr)
    except BrokenPipeError:  # the reader went away: nothing left to say to it
        _silence_stdout()
        return EXIT_FAILED
    return EXIT_BAD_CONFIG


def _silence_stdout() -> None:
    """Point stdout at /dev/null, so the interpreter's last flush does not fail again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):  # no file descriptor (a captured stdout): nothing to silence
        pass


@contextmanager
def _unless_the_pipe_closed() -> Iterator[None]:
    """Printing a run's progress: when the reader of stdout is gone (`run | head`), print no more, but
    keep running (the rounds are stored either way)."""
    try:
        yield
    except BrokenPipeError:
        _silence_stdout()


if __name__ == "__main__":
    sys.exit(main())
