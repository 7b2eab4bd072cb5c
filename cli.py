"""Federated Privacy Lab, headless.

    python cli.py run [--config FILE.toml] [--set section.key=value ...] [--db URL] [--json]
    python cli.py list [--db URL] [--json]
    python cli.py show ID [--db URL] [--json | --privacy-report]
    python cli.py score ID --text "a response" [--text ...] [--db URL] [--json]
    python cli.py resume ID [--db URL] [--json]

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

The page starts runs through the same code: `python cli.py worker ID [ID ...]` runs
experiments already stored (queued) in the database, one after the other.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any, TextIO

from database import FINAL_STATUSES, RESUMABLE_STATUSES, ExperimentStore, ExperimentSummary
from experiment_config import TEXT_MODELS, ExperimentConfig

EXIT_OK, EXIT_FAILED, EXIT_BAD_CONFIG, EXIT_INTERRUPTED = 0, 1, 2, 130


def build_config(config_path: str | None, assignments: list[str]) -> ExperimentConfig:
    """Defaults, then the TOML file, then `--set` assignments, validated once."""
    config = ExperimentConfig.from_toml(config_path) if config_path else ExperimentConfig()
    return config.with_overrides(assignments) if assignments else config


def execute(
    store: ExperimentStore,
    experiment_id: int,
    config: ExperimentConfig,
    *,
    out: TextIO,
    as_json: bool,
    signals: StopSignals | None = None,
) -> int:
    """Run a stored experiment to the end, committing each round; returns the exit code."""
    if config.system.runtime == "flower":
        return _execute_on_flower(store, experiment_id, config, out=out, as_json=as_json)
    stop_event = (signals or StopSignals()).new_run()
    store.mark_running(experiment_id)
    try:
        with store.beating(experiment_id):  # mid-round too: a dead worker shows `interrupted` within seconds
            run, last = _run_rounds(store, experiment_id, config, stop_event, out=out, as_json=as_json)
    except KeyboardInterrupt:
        store.finish(experiment_id, "interrupted", error="aborted by a second interrupt", final=_last_round(store, experiment_id))
        print(f"error: experiment {experiment_id} aborted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as error:  # recorded with the run, so the page shows it
        message = f"{type(error).__name__}: {error}"
        store.finish(experiment_id, "failed", error=message, final=_last_round(store, experiment_id))
        print(f"error: {message}", file=sys.stderr)
        if as_json:
            _emit(out, {"experiment_id": experiment_id, "status": "failed", "error": message})
        return EXIT_FAILED
    stopped = last.get("round", 0) < config.federation.rounds
    status = "stopped" if stopped else "completed"
    reason = run.stop_reason if stopped else None
    audit = _audit(store, experiment_id, run, config) if last else None
    personalization = _personalize(store, experiment_id, run) if last else None
    weights = _save_weights(store, experiment_id, run) if last and config.model.name in TEXT_MODELS else None
    store.finish(experiment_id, status, final=last, stop_reason=reason)
    final = {
        "experiment_id": experiment_id,
        "status": status,
        "stop_reason": reason,
        "rounds": last.get("round", 0),
        "accuracy": last.get("accuracy"),
        "loss": last.get("loss"),
        "epsilon": last.get("epsilon", 0.0),
        "audit": audit,
        "personalization": personalization,
        "weights": weights,
    }
    if as_json:
        _emit(out, final)
    else:
        why = f" ({reason})" if reason else ""
        print(f"experiment {experiment_id} {status} after {final['rounds']} rounds{why}", file=out)
        if audit is not None:
            print(_describe_audit(audit), file=out)
        if personalization is not None:
            print(_describe_personalization(personalization), file=out)
        if weights is not None and "values" in weights:
            print(f"final weights stored ({weights['values']} values, LoRA + head): cli.py score {experiment_id} "
                  '--text "..."', file=out)  # fmt: skip
    return EXIT_OK


def _run_rounds(
    store: ExperimentStore, experiment_id: int, config: ExperimentConfig, stop_event: threading.Event, *,
    out: TextIO, as_json: bool,
) -> tuple[Any, dict[str, Any]]:  # fmt: skip
    """Set up the run (from its checkpoint when it has one: a resume) and commit each round with
    the checkpoint after it. Returns (the run, the last round's row, {} if none)."""
    from federated_learning import FederatedRun  # torch loads only when a run starts

    run = FederatedRun(config)
    if (saved := store.load_checkpoint(experiment_id)) is not None:
        done = run.restore(saved[1])
        if not as_json:
            print(f"resuming after round {done}", file=out, flush=True)
    else:
        store.set_label_counts(experiment_id, run.label_counts.tolist())
        store.set_dataset_info(experiment_id, run.data.info)
        store.set_client_profiles(experiment_id, [p.to_dict() for p in run.profiles])
        if run.privacy.mode != "none":
            store.set_noise_multiplier(experiment_id, run.privacy.noise_multiplier)
    last = _last_round(store, experiment_id)
    for result in run.rounds(stop_event):
        row = result.to_dict()
        store.record_round(experiment_id, row, checkpoint=run.checkpoint())
        last = row
        _print_round(out, row, config.federation.rounds, as_json)
        if store.stop_requested(experiment_id):
            stop_event.set()
    return run, last


def _last_round(store: ExperimentStore, experiment_id: int) -> dict[str, Any]:
    """The newest stored round of a run as {round, accuracy, loss, epsilon}, or {} if none."""
    rounds = store.rounds_frame([experiment_id])
    if rounds.empty:
        return {}
    row = rounds.iloc[-1]
    return {"round": int(row["round"]), "accuracy": float(row["accuracy"]), "loss": float(row["loss"]),
            "epsilon": float(row["epsilon"])}  # fmt: skip


def _save_weights(store: ExperimentStore, experiment_id: int, run: Any) -> dict[str, Any]:
    """Store a text model's final exchanged weights (LoRA + head) for scoring: `{"values": n}`.
    A failure is reported as `{"error": ...}` (and on stderr), like the audit's: the run stands."""
    from model import flatten, get_parameters

    try:
        weights = flatten(get_parameters(run.model)).numpy().astype("<f4")  # (values,) little-endian float32
        store.save_weights(experiment_id, weights.tobytes(), int(weights.size))
    except KeyboardInterrupt:  # a second interrupt: skip it, still record the run
        return {"error": "storing the final weights was interrupted"}
    except Exception as error:
        result = {"error": f"could not store the final weights: {type(error).__name__}: {error}"}
        print(f"error: {result['error']}", file=sys.stderr)
        return result
    return {"values": int(weights.size)}


def _execute_on_flower(
    store: ExperimentStore, experiment_id: int, config: ExperimentConfig, *, out: TextIO, as_json: bool
) -> int:
    """Run a stored experiment on a local Flower deployment (`flower_deployment`): its ServerApp
    records the rounds into this database; this process waits and reports the outcome."""
    try:
        from flower_deployment import run_local_deployment

        with store.beating(experiment_id):  # the ServerApp records rounds; this process vouches for the run
            run_local_deployment(config, db_url=store.url, experiment_id=experiment_id)
    except KeyboardInterrupt:
        print(f"error: experiment {experiment_id} aborted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as error:
        message = f"{type(error).__name__}: {error}"
        summary = store.get_experiment(experiment_id)
        if summary is not None and summary.status not in FINAL_STATUSES:
            store.finish(experiment_id, "failed", error=message)
        print(f"error: {message}", file=sys.stderr)
        if as_json:
            _emit(out, {"experiment_id": experiment_id, "status": "failed", "error": message})
        return EXIT_FAILED
    summary = store.get_experiment(experiment_id)
    rounds = store.rounds_frame([experiment_id])
    final = {
        "experiment_id": experiment_id, "status": summary.status, "runtime": "flower", "rounds": len(rounds),
        "accuracy": summary.final_accuracy, "loss": summary.final_loss, "epsilon": summary.final_epsilon or 0.0,
    }  # fmt: skip
    if as_json:
        _emit(out, final)
    else:
        print(f"experiment {experiment_id} {summary.status} after {len(rounds)} rounds on Flower", file=out)
    return EXIT_OK if summary.status == "completed" else EXIT_FAILED


def _audit(store: ExperimentStore, experiment_id: int, run: Any, config: ExperimentConfig) -> dict[str, Any] | None:
    """The membership-inference audit of the final model, stored with the run; None if
    `privacy.audit_examples` is 0."""
    if config.privacy.audit_examples <= 0:
        return None
    return _after_run(
        lambda: run.audit(config.privacy.audit_examples), lambda r: store.set_audit(experiment_id, r), "the audit"
    )


def _personalize(store: ExperimentStore, experiment_id: int, run: Any) -> dict[str, Any] | None:
    """Personalized vs global accuracy per client (`FederatedRun.personalize`), stored with
    the run; None without personalization."""
    return _after_run(
        run.personalize, lambda r: store.set_personalization(experiment_id, r), "the personalization results"
    )


def _after_run(compute: Any, save: Any, what: str) -> dict[str, Any] | None:
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
        print(f"error: {result['error']}", file=sys.stderr)
    return result


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
    return (
        f"privacy audit (membership inference, loss threshold): AUC {audit['auc']:.4f}, "
        f"advantage {audit['advantage']:.4f} ({audit['members']} members, {audit['non_members']} non-members; "
        "chance: AUC 0.5, advantage 0)"
    )


class StopSignals:
    """SIGINT/SIGTERM for a process that runs one or more experiments in turn.

    The first signal stops the current run after its round and keeps later runs from
    starting (`received`); a second one aborts at once. A stop asked for through the
    database ends only its own run: each run gets its own event from `new_run`.
    """

    def __init__(self) -> None:
        self.received = threading.Event()
        self.current = threading.Event()
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, self._handle)
            signal.signal(signal.SIGTERM, self._handle)

    def new_run(self) -> threading.Event:
        self.current = threading.Event()
        if self.received.is_set():
            self.current.set()
        return self.current

    def _handle(self, _signum: int, _frame: Any) -> None:
        if self.received.is_set():
            raise KeyboardInterrupt
        self.received.set()
        self.current.set()
        print("stopping after the current round (interrupt again to abort)", file=sys.stderr)


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


def launch_worker(store: ExperimentStore, *experiment_ids: int) -> subprocess.Popen[bytes]:
    """Start one `cli.py worker ID [ID ...]` in its own session (it outlives page reruns).

    The worker runs the experiments in the order given; its PID is recorded on every one
    of them, so a worker that dies leaves none of them `queued` forever.
    """
    if not experiment_ids:
        raise ValueError("launch_worker needs at least one experiment id")
    suffix = f"{experiment_ids[0]}" if len(experiment_ids) == 1 else f"{experiment_ids[0]}-{experiment_ids[-1]}"
    log_path = Path(tempfile.gettempdir()) / f"fpl-worker-{suffix}.log"
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "worker", *map(str, experiment_ids), "--db", store.url],
            cwd=Path(__file__).resolve().parent,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=log,
            start_new_session=True,
        )
    for experiment_id in experiment_ids:
        store.set_worker(experiment_id, process.pid)
    return process


def pid_alive(pid: int) -> bool:
    """Whether a process with this PID exists on this machine and is not a zombie."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True


# -- commands ----------------------------------------------------------------------------


def command_run(args: argparse.Namespace) -> int:
    try:
        config = build_config(args.config, args.set or [])
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_BAD_CONFIG
    store = ExperimentStore(args.db)
    experiment_id = store.create_experiment(config.to_dict(), name=args.name)
    if not args.json:
        print(f"experiment {experiment_id}: {_describe(config.to_dict())}  (database {store.url})")
    return execute(store, experiment_id, config, out=sys.stdout, as_json=args.json)


def command_worker(args: argparse.Namespace) -> int:
    """Run stored experiments one after the other, each with its own status; exit code of the last that failed."""
    store = ExperimentStore(args.db)
    signals = StopSignals()
    exit_code = EXIT_OK
    for position, experiment_id in enumerate(args.ids):
        code = _work_on(store, experiment_id, waited=position > 0, signals=signals)
        exit_code = code if code != EXIT_OK else exit_code
        if code == EXIT_INTERRUPTED or signals.received.is_set():  # the rest of the queue must not start
            aborted = code == EXIT_INTERRUPTED
            for left in args.ids[position + 1 :]:
                if (queued := store.get_experiment(left)) is not None and queued.status == "queued":
                    if aborted:
                        store.finish(left, "interrupted", error="the worker was aborted before this run started")
                    else:
                        store.finish(left, "stopped", stop_reason="the worker was told to stop before this run started")
            break
    return exit_code


def _work_on(store: ExperimentStore, experiment_id: int, *, waited: bool, signals: StopSignals) -> int:
    """Run one stored experiment; one whose stop was asked for while it `waited` behind others never starts."""
    experiment = store.get_experiment(experiment_id)
    if experiment is None:
        print(f"error: no experiment {experiment_id} in {store.url}", file=sys.stderr)
        return EXIT_FAILED
    if waited and experiment.stop_requested:
        store.finish(experiment_id, "stopped", stop_reason="stopped before it started")
        return EXIT_OK
    try:
        config = ExperimentConfig.from_dict(experiment.config)
    except ValueError as error:
        store.finish(experiment_id, "failed", error=f"invalid stored config: {error}")
        print(f"error: {error}", file=sys.stderr)
        return EXIT_BAD_CONFIG
    return execute(store, experiment_id, config, out=sys.stdout, as_json=True, signals=signals)


def _open_experiment(args: argparse.Namespace) -> tuple[ExperimentStore, ExperimentSummary | None]:
    """The store and experiment `args.id` (None, said on stderr, if there is none), after marking
    runs whose worker died."""
    store = ExperimentStore(args.db)
    store.mark_interrupted_if_dead(pid_alive)
    experiment = store.get_experiment(args.id)
    if experiment is None:
        print(f"error: no experiment {args.id} in {store.url}", file=sys.stderr)
    return store, experiment


def command_resume(args: argparse.Namespace) -> int:
    """Continue an interrupted, stopped or failed run from its checkpoint, in this process."""
    store, experiment = _open_experiment(args)
    if experiment is None:
        return EXIT_FAILED
    try:
        config = ExperimentConfig.from_dict(experiment.config)
        done = store.reopen(args.id)
    except (KeyError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_FAILED
    if not args.json:
        print(f"experiment {args.id}: resuming after round {done} of {config.federation.rounds}  (database {store.url})")
    return execute(store, args.id, config, out=sys.stdout, as_json=args.json)


def command_list(args: argparse.Namespace) -> int:
    store = ExperimentStore(args.db)
    store.mark_interrupted_if_dead(pid_alive)
    experiments = store.list_experiments()
    if args.json:
        print(json.dumps([e.to_json_dict() for e in experiments]))
        return EXIT_OK
    if not experiments:
        print(f"no experiments in {store.url}")
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
        from privacy_report import render_markdown

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


def rubric_elements(experiment: ExperimentSummary) -> list[tuple[str, str]]:
    """(label, meaning) of each rubric element a run's model scores, in its output order: the
    labels from its `dataset_info`, meanings from `ngss_data.TASKS` ("" where the task or label
    is not one of the nine tasks', e.g. an imported file of another task)."""
    import ngss_data

    info = experiment.dataset_info or {}
    task = info.get("task") or experiment.config.get("data", {}).get("ngss_task", "")
    spec = ngss_data.TASKS.get(task)
    meanings = {element.label: element.meaning for element in spec.elements} if spec else {}
    labels = info.get("labels") or (list(spec.label_ids) if spec else [])
    return [(label, meanings.get(label, "")) for label in labels]


def score_experiment(store: ExperimentStore, experiment_id: int, texts: list[str]) -> Any:
    """(N, K) probabilities of `texts` under a stored run's final weights (`workloads.score_responses`).

    Raises LookupError when the run or its weights are missing, ValueError when it cannot be scored.
    """
    experiment = store.get_experiment(experiment_id)
    if experiment is None:
        raise LookupError(f"no experiment {experiment_id} in {store.url}")
    stored = store.load_weights(experiment_id)
    if stored is None:
        raise LookupError(
            f"experiment {experiment_id} has no stored weights: only text-model runs "
            f"({', '.join(TEXT_MODELS)}) that finished a round store their final LoRA + head"
        )
    import torch  # only now: scoring is the only part that needs the model

    from workloads import score_responses

    config = ExperimentConfig.from_dict(experiment.config)
    return score_responses(config, torch.from_numpy(stored.values().copy()), texts)


def command_score(args: argparse.Namespace) -> int:
    texts = [text for text in args.text if text.strip()]
    if not texts:
        print("error: give at least one non-empty --text", file=sys.stderr)
        return EXIT_BAD_CONFIG
    store = ExperimentStore(args.db)
    try:
        probabilities = score_experiment(store, args.id, texts)
    except (LookupError, ValueError, RuntimeError, OSError) as error:  # RuntimeError: a Hub model unavailable
        print(f"error: {error}", file=sys.stderr)
        return EXIT_FAILED
    elements = rubric_elements(store.get_experiment(args.id))
    for text, row in zip(texts, probabilities.tolist()):
        scored = [
            {"label": label, "meaning": meaning, "probability": p, "predicted": int(p >= 0.5)}
            for (label, meaning), p in zip(elements, row)
        ]  # fmt: skip
        total = sum(element["predicted"] for element in scored)
        if args.json:
            _emit(sys.stdout, {"experiment_id": args.id, "text": text, "elements": scored, "total_score": total})
            continue
        print(f"{text}\n  total score {total}/{len(scored)}")
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
        print(f"  error: {e.error}")
    if e.stop_reason:
        print(f"  stopped early: {e.stop_reason}")
    print("  config: " + json.dumps(e.config, sort_keys=True))


def _describe(config: dict[str, Any]) -> str:
    data, federation = config.get("data", {}), config.get("federation", {})
    return (
        f"{data.get('dataset')}/{config.get('model', {}).get('name')} {data.get('partition')} "
        f"{federation.get('clients_per_round')}/{federation.get('num_clients')} clients "
        f"{federation.get('strategy')}"
    )


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="cli.py", description="Federated Privacy Lab, headless.")
    commands = root.add_subparsers(dest="command", required=True, metavar="{run,list,show,score,resume}")

    run = commands.add_parser("run", help="run an experiment and store every round")
    run.add_argument("--config", help="TOML file (sections data, model, federation, privacy, system)")
    run.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE", help="override one key (repeatable)")
    run.add_argument("--name", default="", help="a label for the experiment")
    run.set_defaults(handler=command_run)

    listing = commands.add_parser("list", help="list stored experiments")
    listing.set_defaults(handler=command_list)

    show = commands.add_parser("show", help="show one experiment and its rounds")
    show.add_argument("id", type=int)
    show.add_argument(
        "--privacy-report", action="store_true", help="print the privacy statement (Markdown) for an ethics board"
    )
    show.set_defaults(handler=command_show)

    score = commands.add_parser("score", help="score responses with a finished text-model run's final weights")
    score.add_argument("id", type=int)
    score.add_argument("--text", action="append", required=True, help="one student response (repeatable)")
    score.set_defaults(handler=command_score)

    resume = commands.add_parser("resume", help="continue an interrupted, stopped or failed run from its checkpoint")
    resume.add_argument("id", type=int)
    resume.set_defaults(handler=command_resume)

    worker = commands.add_parser("worker")  # no help: the page's, unlisted
    worker.add_argument("ids", type=int, nargs="+", metavar="ID", help="stored experiments, run in this order")
    worker.set_defaults(handler=command_worker)

    for sub in (run, listing, show, score, resume, worker):
        sub.add_argument("--db", default=None, help="SQLAlchemy URL (default: $DATABASE_URL or sqlite:///experiments.db)")
        sub.add_argument("--json", action="store_true", help="machine-readable output")
    return root


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
