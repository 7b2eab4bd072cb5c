"""Secure-aggregation overhead per round: a plain weighted sum vs `secure_aggregate`, full graph and SecAgg+.

    python -m bench.secagg [--clients 10,100,1000] [--params 199210] [--plain-round-seconds 3.0]
    python -m bench.secagg --engine-clients 100 [--rounds 3]   # whole engine rounds, measured
    python -m bench.secagg --fit                               # fit runs.preflight's cost model, project

Every client sends a random float32 update of P parameters (default 199,210: the 2-layer MLP of
McMahan et al. on MNIST) with a weight (its number of examples, 100..1000). For each n:
  plain     Σ w_u·x_u in float64: what the server does without secure aggregation.
  full      `secure_aggregate` with every pair of clients masking (Bonawitz et al.): O(n²·P) PRG output.
  secagg+   k = 2·log2(n) rounded to even neighbours (Bell et al.): O(n·k·P).
The full graph is skipped above --full-graph-max-clients (default 100): at 1,000 clients it expands
~10^6 pairwise masks of 1.6 MB and evaluates 2·10^6 Shamir polynomials of degree 500 (over 10 minutes
on one core); the table prints a lower bound extrapolated as n² from the largest full-graph run.

All parties run one after another in this process, so "seconds" is a round's total compute as the
simulation pays it; "critical path" is the server's seconds plus the busiest client's, what a
deployment with clients on their own devices would wait.
Two ratios: "× sum" against the plain weighted sum (the aggregation step alone, a few ms), and
"× round" = (T_round − T_plain_sum + T_secagg) / T_round against a whole plain federated round,
which local training dominates. T_round is a constant you pass in (--plain-round-seconds, default
3.0 s, the order of one FedAvg round of the MLP on MNIST here); measure yours with
`python -m bench.overhead --model mlp` and pass it. The target is × round ≤ 2 at 100 clients, SecAgg+.
Each secure result is checked against the plain sum within the fixed-point bound n·2^-(f+1).

--engine-clients N measures instead of assuming: the engine runs the MLP on all of MNIST with N
clients (IID, all of them every round, E=1, B=50, lr 0.05) with and without SecAgg+ (k as above),
and prints the median seconds per round (training + aggregation, without evaluation) and the ratio.

--fit measures the protocol's CPU seconds (time.process_time: all parties run in this process, one
after another, so CPU time is the round's cost on one core, whatever else loads the machine) at
50, 100 and 200 participants (full graph and SecAgg+; the full graph at 200 only with few parameters,
where Shamir sharing dominates), fits the three coefficients of `runs.preflight.secagg_round_seconds`
(n·k·P mask values, n·k·t Shamir steps, n·P per-value work) by least squares, prints the fit against
each measurement and the round cost it projects at 100 / 1,000 / 10,000 participants for the MLP,
with the coefficients preflight uses beside the new ones.
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np

from engine.secure_aggregation import SecAggConfig, secure_aggregate
from runs import preflight
from runs.preflight import secagg_plus_neighbours

DISTINCT_UPDATES = 32  # clients reuse this many random vectors, to keep 1,000 clients in memory


def make_round(num_clients: int, num_params: int, seed: int) -> tuple[dict[int, np.ndarray], dict[int, float]]:
    rng = np.random.default_rng(seed)
    pool = [rng.normal(scale=0.01, size=num_params).astype(np.float32) for _ in range(DISTINCT_UPDATES)]
    updates = {u: pool[u % DISTINCT_UPDATES] for u in range(num_clients)}
    weights = {u: float(rng.integers(100, 1001)) for u in range(num_clients)}
    return updates, weights


def plain_sum(updates: dict[int, np.ndarray], weights: dict[int, float]) -> tuple[np.ndarray, float]:
    """Σ w_u·x_u in float64, one vector at a time, and its wall seconds (best of 3)."""
    best, total = math.inf, None
    for _ in range(3):
        started = time.perf_counter()
        total = np.zeros(len(next(iter(updates.values()))), dtype=np.float64)
        for u, update in updates.items():
            total += weights[u] * update.astype(np.float64)
        best = min(best, time.perf_counter() - started)
    return total, best


def row(
    clients: int,
    mode: str,
    k: str,
    t: str,
    seconds: float,
    critical: str,
    plain: float,
    args: argparse.Namespace,
    extra: str = "",
) -> None:
    round_ratio = (args.plain_round_seconds - plain + seconds) / args.plain_round_seconds
    print(
        f"{clients:>7} {mode:>8} {k:>4} {t:>4} {seconds:>9.2f} {critical:>9} {seconds / plain:>9.0f} "
        f"{round_ratio:>8.2f}  {extra}"
    )


def engine_rounds(num_clients: int, neighbours: int, rounds: int) -> tuple[float, float]:
    """(median seconds per round, final accuracy) of a real engine run, secure when neighbours > 0."""
    from experiment_config import ExperimentConfig
    from federated_learning import run_experiment

    config = ExperimentConfig.from_dict({
        "model": {"name": "mlp"},
        "federation": {
            "num_clients": num_clients, "clients_per_round": num_clients, "rounds": rounds, "batch_size": 50,
            "learning_rate": 0.05, "secure_aggregation": neighbours > 0, "secagg_neighbours": neighbours,
        },
    })  # fmt: skip
    results = run_experiment(config)
    return float(np.median([r.seconds for r in results])), results[-1].accuracy


def measure_engine(num_clients: int, rounds: int) -> None:
    neighbours = secagg_plus_neighbours(num_clients)
    plain, plain_accuracy = engine_rounds(num_clients, 0, rounds)
    secure, secure_accuracy = engine_rounds(num_clients, neighbours, rounds)
    print(f"engine, MLP on MNIST, {num_clients} clients per round, {rounds} rounds (median s/round):")
    print(f"  plain     {plain:7.2f} s   accuracy {plain_accuracy:.4f}")
    print(f"  secagg+   {secure:7.2f} s   accuracy {secure_accuracy:.4f}   (k = {neighbours})")
    print(f"  ratio     {secure / plain:7.2f} x   (target <= 2)")


# (participants, neighbours: 0 = full graph, parameters) measured by --fit
FIT_POINTS = (
    (50, 0, 199_210), (100, 0, 199_210), (50, 12, 199_210), (100, 14, 199_210), (200, 16, 199_210),
    (50, 0, 1_000), (100, 0, 1_000), (200, 0, 1_000), (400, 0, 1_000), (200, 16, 1_000), (400, 18, 1_000),
)  # fmt: skip
PROJECTED = (100, 1_000, 10_000)


def cost_features(participants: int, neighbours: int, num_params: int, threshold: float) -> list[float]:
    """The cost model's terms (n·k·P, n·k·t, n·k, n·P) for one round; see `preflight.secagg_round_seconds`."""
    k = preflight.secagg_neighbours(participants, neighbours)
    t = max(2, math.ceil(threshold * (k + 1)))
    return [participants * k * num_params, participants * k * t, participants * k, participants * num_params]


def fit_cost_model() -> None:
    """Measure CPU seconds per round at FIT_POINTS, fit the coefficients, project to 10,000 clients."""
    threshold = SecAggConfig().threshold
    features, measured = [], []
    print(f"{'n':>5} {'k':>4} {'P':>8} {'CPU s':>8} {'model s':>8} {'preflight s':>11}")
    for participants, neighbours, num_params in FIT_POINTS:
        updates, weights = make_round(participants, num_params, seed=participants)
        started = time.process_time()
        secure_aggregate(updates, weights, SecAggConfig(neighbours=neighbours))
        measured.append(time.process_time() - started)
        features.append(cost_features(participants, neighbours, num_params, threshold))
        print(
            f"{participants:>5} {neighbours or participants - 1:>4} {num_params:>8,} {measured[-1]:>8.2f}", flush=True
        )
    coefficients = nonnegative_fit(np.array(features, dtype=float), np.array(measured))
    names = ("SECAGG_MASK_SECONDS", "SECAGG_SHARE_SECONDS", "SECAGG_PAIR_SECONDS", "SECAGG_VALUE_SECONDS")
    print("fitted: " + ", ".join(f"{name} = {value:.3e}" for name, value in zip(names, coefficients, strict=True)))
    print("in use: " + ", ".join(f"{name} = {getattr(preflight, name):.3e}" for name in names))
    for point, seconds, row_features in zip(FIT_POINTS, measured, features, strict=True):
        model = float(np.dot(coefficients, row_features))
        in_use = preflight.secagg_round_seconds(point[0], point[1], point[2], threshold)
        print(
            f"{point[0]:>5} {point[1] or point[0] - 1:>4} {point[2]:>8,} {seconds:>8.2f} {model:>8.2f} {in_use:>11.2f}"
        )
    num_params = 199_210  # the MLP
    print(
        f"projected CPU seconds per round, MLP ({num_params:,} parameters), threshold {threshold}, preflight's "
        f"coefficients (limit {preflight.SECAGG_ROUND_LIMIT_SECONDS:.0f} s):"
    )
    for participants in PROJECTED:
        k = secagg_plus_neighbours(participants)
        full = preflight.secagg_round_seconds(participants, 0, num_params, threshold)
        plus = preflight.secagg_round_seconds(participants, k, num_params, threshold)
        print(
            f"  {participants:>6,} participants: full graph {_duration(full):>10}, "
            f"SecAgg+ k = {k}: {_duration(plus):>8}"
        )


def nonnegative_fit(features: np.ndarray, measured: np.ndarray) -> np.ndarray:
    """Least-squares coefficients ≥ 0 for (points, terms) `features`: a term whose coefficient comes out
    negative (no cost is negative; it only soaks up noise where terms move together) is dropped, and the
    rest refitted. Columns are scaled to unit norm first, so terms of very different sizes fit alike."""
    scale = np.linalg.norm(features, axis=0)
    kept = list(range(features.shape[1]))
    while True:
        solved = np.linalg.lstsq(features[:, kept] / scale[kept], measured, rcond=None)[0]
        if (solved >= 0).all():
            coefficients = np.zeros(features.shape[1])
            coefficients[kept] = solved / scale[kept]
            return coefficients
        kept.pop(int(np.argmin(solved)))


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.1f} s"
    return f"{seconds / 60:,.0f} min" if seconds < 7200 else f"{seconds / 3600:,.1f} h"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", default="10,100,1000", help="comma-separated client counts")
    parser.add_argument("--params", type=int, default=199_210, help="P, float32 parameters per update")
    parser.add_argument("--plain-round-seconds", type=float, default=3.0, help="one plain training round, seconds")
    parser.add_argument("--full-graph-max-clients", type=int, default=100, help="skip the full graph above this")
    parser.add_argument("--engine-clients", type=int, default=0, help="measure whole engine rounds at this n")
    parser.add_argument("--rounds", type=int, default=3, help="engine rounds per setting (--engine-clients)")
    parser.add_argument("--fit", action="store_true", help="fit runs.preflight's secure-aggregation cost model")
    args = parser.parse_args()
    if args.fit:
        fit_cost_model()
        return
    if args.engine_clients:
        measure_engine(args.engine_clients, args.rounds)
        return
    config = SecAggConfig()
    print(
        f"P = {args.params:,}; plain upload {4 * args.params / 1e6:.2f} MB/client (float32), masked "
        f"{8 * (args.params + 1) / 1e6:.2f} MB (uint64); plain round = {args.plain_round_seconds} s"
    )
    print(
        f"{'clients':>7} {'mode':>8} {'k':>4} {'t':>4} {'seconds':>9} {'critical':>9} {'x sum':>9} "
        f"{'x round':>8}  crypto s / mask s / MB per client (both directions)"
    )
    full_graph_seen: tuple[int, float] | None = None
    for num_clients in (int(n) for n in args.clients.split(",")):
        updates, weights = make_round(num_clients, args.params, seed=num_clients)
        reference, plain = plain_sum(updates, weights)
        print(f"{num_clients:>7} {'plain':>8} {'-':>4} {'-':>4} {plain:>9.3f} {'-':>9} {1:>9} {1:>8.2f}")
        for mode, neighbours in (("full", 0), ("secagg+", secagg_plus_neighbours(num_clients))):
            if mode == "secagg+" and neighbours >= num_clients - 1:
                print(f"{num_clients:>7} {mode:>8}  k = {neighbours} >= n - 1: the full graph already")
                continue
            if mode == "full" and num_clients > args.full_graph_max_clients:
                estimate = ""
                if full_graph_seen is not None:  # masks grow as n², Shamir sharing as n²·t, so a lower bound
                    seen_clients, seen_seconds = full_graph_seen
                    minutes = seen_seconds * (num_clients / seen_clients) ** 2 / 60
                    estimate = f" (would take over {minutes:.0f} min: n² from n = {seen_clients})"
                print(f"{num_clients:>7} {mode:>8}  skipped{estimate}; --full-graph-max-clients to run it")
                continue
            started = time.perf_counter()
            result = secure_aggregate(updates, weights, SecAggConfig(neighbours=neighbours))
            seconds = time.perf_counter() - started
            error = float(np.max(np.abs(result.weighted_sum - reference)))
            bound = num_clients * 2.0 ** -(config.fractional_bits + 1)
            assert error <= bound + 1e-9, f"secure sum off by {error} > {bound}"
            if mode == "full":
                full_graph_seen = (num_clients, seconds)
            s = result.stats
            row(
                num_clients,
                mode,
                str(neighbours or num_clients - 1),
                str(result.threshold),
                seconds,
                f"{s.server_seconds + s.slowest_client_seconds:.2f}",
                plain,
                args,
                f"{s.crypto_seconds:.2f} / {s.mask_seconds:.2f} / {s.bytes_total / num_clients / 1e6:.2f}",
            )


if __name__ == "__main__":
    main()
