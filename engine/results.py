"""What a round yields: `RoundResult` with one `ClientResult` per selected client. The one
definition of the per-round and per-client fields: the engine fills them, `database` stores
them (its columns carry the same names) and reads them back into DataFrames, `cli.py run --json`
prints them. Plain data, no torch: the page imports it through the database.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any


@dataclass(frozen=True)
class ClientResult:
    """One client in one round. With local DP, `steps` and `epsilon` are cumulative over
    every round the client took part in (its accountant's totals); otherwise `steps` are
    this round's SGD steps and `epsilon` is 0."""

    id: int
    num_examples: int
    steps: int
    loss: float
    epsilon: float = 0.0
    sample_rate: float = 0.0
    # ok | partial (straggler: fewer steps) | lost (trained; update never arrived) |
    # dropped (never started) | late (could not finish before the deadline; dropped) |
    # failed (its training raised, or it returned NaN/inf: excluded, `error` says why) |
    # excluded (arrived, but left out of the aggregate as suspicious: federation.exclusion = "flagged")
    status: str = "ok"
    malicious: bool = False
    bytes_up: int = 0  # after compression
    bytes_down: int = 0
    simulated_seconds: float = 0.0  # download + compute at its speed + upload, over its simulated link
    validation_accuracy: float | None = None  # its new local model on its own held-out split
    error: str = ""  # why a failed client was excluded
    global_accuracy: float | None = None  # the round's aggregated GLOBAL model on its held-out split (fairness)
    # Byzantine clients (`engine.suspicion`): its update's suspicion score in [0, 1] and whether that flagged it;
    # None / False where the server did not score it (it sent nothing, secure aggregation, central DP, < 3 updates).
    suspicion: float | None = None
    flagged: bool = False
    # Asynchronous FL (federation.mode = "async"): how many server steps the global model moved on while this
    # update trained (0 = fresh); None under synchronous rounds.
    staleness: int | None = None


@dataclass(frozen=True)
class RoundResult:
    """One finished round. `seconds` is client training + aggregation, without evaluation.

    The privacy ledger: `epsilon` (the run's ε so far: max over clients for local DP),
    `delta`, `noise_multiplier` σ, `max_grad_norm` C, `sample_rate` (central: client
    sampling rate q; local: the largest per-client batch sampling rate this round),
    `privacy_steps` (central: rounds so far; local: the most DP-SGD steps of a client),
    the `accountant` and the `neighbouring_relation` ε is stated for ("add/remove one client",
    "replace one client", "add/remove one example"). All zero / empty without privacy.
    """

    round: int
    accuracy: float
    loss: float
    epsilon: float
    delta: float
    seconds: float
    eval_seconds: float
    bytes_up: int
    bytes_down: int
    clients: list[ClientResult] = field(default_factory=list)
    noise_multiplier: float = 0.0
    max_grad_norm: float = 0.0
    sample_rate: float = 0.0
    privacy_steps: int = 0
    accountant: str = ""
    neighbouring_relation: str = ""
    skipped: str = ""  # why the global model was not updated this round ("" when it was)
    secure_aggregation: dict[str, Any] | None = None  # the protocol's statistics, when it ran
    simulated_seconds: float = 0.0  # the round's duration over the simulated network and speeds
    # Rubric scoring (multi-label): `ngss.metrics.rubric_metrics` of the global model on the test
    # split (exact match, micro/macro F1, score MAE, per label), overall and per school.
    metrics: dict[str, Any] | None = None
    # Fairness (`engine.fairness`, with federation.client_holdout > 0; else None): the aggregated global
    # model's accuracy on every client's held-out split, summarised over all clients (not only the selected):
    # unweighted mean, mean of the worst 10%, population variance and Gini coefficient.
    client_accuracy_mean: float | None = None
    client_accuracy_worst10: float | None = None
    client_accuracy_variance: float | None = None
    client_accuracy_gini: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# The stored fields, in order: a round's without its clients, and a client's (the database's
# `rounds` and `client_rounds` columns, and the DataFrames read back from them).
ROUND_FIELDS = tuple(f.name for f in fields(RoundResult) if f.name != "clients")
CLIENT_FIELDS = tuple(f.name for f in fields(ClientResult))
