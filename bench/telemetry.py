"""Cost of telemetry: the same rounds with OpenTelemetry on (exporting to an OTLP/HTTP receiver on
127.0.0.1) and off, interleaved, in fresh processes; prints the ratio of median round seconds.

    python -m bench.telemetry [--pairs 3] [--rounds 3] [--model mlp] [--workers 2] [--clients 10]

Telemetry is decided once per process from the OTel variables, so each run is its own process:
on, off, on, off, ... (drift on a shared machine hits both). Each run trains `clients` clients
on all of MNIST (one epoch, B=50) with `workers` trainer processes, inside a "run" span with the
round metrics recorded, as `runs.service` does. A round's seconds are its whole wall clock
(training, aggregation, evaluation); round 1 (warm-up) is left out. Required: ratio <= 1.02.
On a busy machine the ratio is mostly noise, so it also prints the CPU a span costs (export
included, measured in a process of its own) times the spans of a round, over the round's seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from telemetry.sink import Sink

HERE = Path(__file__).resolve().parents[1]


def one_run(args: argparse.Namespace) -> list[float]:
    """This process's rounds (telemetry as the environment says): wall-clock seconds of each."""
    import telemetry
    from data_handler import load_mnist
    from experiment_config import ExperimentConfig
    from federated_learning import FederatedRun

    data = load_mnist(args.data_dir, download=False)
    config = ExperimentConfig.from_dict({
        "model": {"name": args.model},
        "federation": {"num_clients": args.clients, "clients_per_round": args.clients, "rounds": args.rounds},
        "system": {"num_workers": args.workers},
    })  # fmt: skip
    seconds = []
    with telemetry.span("run", experiment_id=0, rounds=args.rounds):
        rounds = FederatedRun(config, data=data).rounds()
        while True:
            started = time.perf_counter()
            result = next(rounds, None)
            if result is None:
                break
            seconds.append(time.perf_counter() - started)
            telemetry.record_round(0, result.to_dict())
    telemetry.shutdown()
    return seconds


def span_cpu_seconds(count: int = 2_000) -> float:
    """CPU seconds per span with telemetry on, export included (opened, attributes set, closed, then
    flushed to the receiver): a noise-free bound on what spans add to a round on a busy machine."""
    import telemetry

    started = time.process_time()
    with telemetry.span("run", experiment_id=0):
        for number in range(count):
            with telemetry.span("client.train", round=1, client_id=number, examples=600) as span:
                telemetry.inject()
                span.set(steps=12, status="ok")
    telemetry.shutdown()
    return (time.process_time() - started) / count


def child(args: argparse.Namespace, endpoint: str | None) -> list[float]:
    """`one_run` in a fresh process, telemetry on (exporting to `endpoint`) or off (None)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    if endpoint is not None:
        env["OTEL_EXPORTER_OTLP_ENDPOINT"] = endpoint
    command = [sys.executable, "-m", "bench.telemetry", "--child", "--rounds", str(args.rounds), "--model", args.model,
               "--workers", str(args.workers), "--clients", str(args.clients), "--data-dir", args.data_dir]  # fmt: skip
    out = subprocess.run(command, capture_output=True, text=True, cwd=HERE, env=env, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--model", default="mlp", choices=("cnn", "mlp"))
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--data-dir", default=os.environ.get("FPL_DATA_DIR") or str(HERE.parent / "shared" / "data"))
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(span_cpu_seconds() if args.rounds == 0 else one_run(args)))
        return

    on: list[float] = []
    off: list[float] = []
    with Sink() as sink:
        for pair in range(args.pairs):
            on_rounds, off_rounds = child(args, sink.endpoint), child(args, None)
            on += on_rounds[1:]
            off += off_rounds[1:]
            print(f"pair {pair + 1}: on {', '.join(f'{s:.2f}' for s in on_rounds)} s; "
                  f"off {', '.join(f'{s:.2f}' for s in off_rounds)} s", flush=True)  # fmt: skip
        spans, requests = len(sink.spans), sink.requests
    ratio = statistics.median(on) / statistics.median(off)
    with Sink() as sink:  # the per-span cost, in a process of its own (telemetry on)
        per_span = child(argparse.Namespace(**{**vars(args), "rounds": 0}), sink.endpoint)
    spans_per_round = args.clients + 4  # the round, its clients' trainings, aggregation, evaluation, the write
    print(f"{args.model}, {args.clients} clients, {args.workers} workers, rounds after the first: "
          f"median on {statistics.median(on):.2f} s, off {statistics.median(off):.2f} s; "
          f"ratio {ratio:.3f} (required <= 1.02); {spans} spans received in {requests} exports")  # fmt: skip
    print(f"CPU per span, export included: {per_span * 1e6:.0f} us; {spans_per_round} spans a round: "
          f"{spans_per_round * per_span * 1e3:.2f} ms of a {statistics.median(off):.2f} s round "
          f"(bound on the ratio: {1 + spans_per_round * per_span / statistics.median(off):.4f})")  # fmt: skip


if __name__ == "__main__":
    main()
