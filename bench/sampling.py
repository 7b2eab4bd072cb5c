"""Central DP's ε for the two client-sampling schemes, side by side (`federation.client_sampling`).

    python -m bench.sampling [--noise 1.0] [--delta 1e-5] [--cases 10/100x100,100/1000x100,...]

Each case k/n×T is T rounds of DP-FedAvg at noise multiplier σ, taking k of n clients a round:
  poisson   each client independently with q = k/n; ε under add/remove one client, from each
            accountant (RDP, PRV, PLD: `epsilons_by_accountant`), what the engine records.
  fixed     exactly k of n, uniformly without replacement; ε under replace one client, from
            dp_accounting's RDP for sampling without replacement (`fixed_size_epsilon`): replacing one
            update moves the sum by up to 2C, so the Gaussian inside has multiplier σ/2.
  2ε (gp)   poisson's PLD ε doubled: by group privacy, an add/remove (ε, δ) guarantee gives replace-one
            (2ε, (1 + e^ε)δ), a rough way to put the two relations on one scale (its δ is larger).
The two ε are different guarantees (add/remove vs replace one); the table shows what each costs
at the same σ, and `calibrate` (--target) the σ each needs to end the run at a target ε. All numbers
come from the accountants; nothing is timed. A few seconds per case (PRV is the slowest).
"""

from __future__ import annotations

import argparse
import warnings

from differential_privacy import calibrate_fixed_size_noise, calibrate_noise, epsilons_by_accountant, fixed_size_epsilon

DEFAULT_CASES = "10/100x100,10/100x1000,100/1000x100,100/1000x1000,3/10x20,30/100x50"


def parse_cases(text: str) -> list[tuple[int, int, int]]:
    """'k/nxT,...' → [(clients_per_round, num_clients, rounds), ...]."""
    cases = []
    for item in text.split(","):
        share, rounds = item.strip().split("x")
        k, n = share.split("/")
        cases.append((int(k), int(n), int(rounds)))
    return cases


def compare(clients_per_round: int, num_clients: int, rounds: int, *, noise_multiplier: float, delta: float) -> dict:
    """ε of both schemes for one case (the row the table prints)."""
    poisson = epsilons_by_accountant([(noise_multiplier, clients_per_round / num_clients, rounds)], delta)
    fixed = fixed_size_epsilon(
        noise_multiplier=noise_multiplier, clients_per_round=clients_per_round, num_clients=num_clients,
        rounds=rounds, delta=delta,
    )  # fmt: skip
    return {"poisson": poisson, "fixed": fixed, "group": 2.0 * poisson["pld"]}


def calibrated(clients_per_round: int, num_clients: int, rounds: int, *, target: float, delta: float) -> tuple[float, float]:
    """(σ for Poisson with RDP, σ for fixed size) that end `rounds` rounds at ε <= target."""
    poisson = calibrate_noise(target_epsilon=target, delta=delta, sample_rate=clients_per_round / num_clients, steps=rounds)
    fixed = calibrate_fixed_size_noise(
        target_epsilon=target, delta=delta, clients_per_round=clients_per_round, num_clients=num_clients, rounds=rounds
    )
    return poisson, fixed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--noise", type=float, default=1.0, help="noise multiplier σ (default 1.0)")
    parser.add_argument("--delta", type=float, default=1e-5)
    parser.add_argument("--cases", default=DEFAULT_CASES, help="k/nxT,... (clients per round / clients x rounds)")
    parser.add_argument("--target", type=float, default=0.0, help="> 0: also the σ each scheme needs for this ε")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")  # RDP's "optimal order is the largest alpha", dp_accounting's convergence notes
    print(f"σ = {args.noise}, δ = {args.delta}")
    header = f"{'k/n':>10} {'rounds':>6} {'q':>6} | {'poisson RDP':>11} {'PRV':>8} {'PLD':>8} | {'fixed RDP':>9} {'2ε (gp)':>8}"
    print(header + (f" | σ poisson  σ fixed (ε = {args.target})" if args.target > 0 else ""))
    for k, n, rounds in parse_cases(args.cases):
        row = compare(k, n, rounds, noise_multiplier=args.noise, delta=args.delta)
        poisson = row["poisson"]
        line = (
            f"{f'{k}/{n}':>10} {rounds:>6} {k / n:>6.3f} | {poisson['rdp']:>11.3f} {poisson['prv']:>8.3f} "
            f"{poisson['pld']:>8.3f} | {row['fixed']:>9.3f} {row['group']:>8.3f}"
        )
        if args.target > 0:
            sigma_poisson, sigma_fixed = calibrated(k, n, rounds, target=args.target, delta=args.delta)
            line += f" | {sigma_poisson:>10.3f} {sigma_fixed:>8.3f}"
        print(line, flush=True)


if __name__ == "__main__":
    main()
