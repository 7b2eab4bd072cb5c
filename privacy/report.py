"""A one-page privacy statement of a stored run, in Markdown, for an ethics board.

It says what data and clients the run had and its final accuracy, what mechanism ran, what
one unit of privacy is and the neighbouring relation, the final (ε, δ) and the settings
behind it (σ, C, sampling, accountant, rounds), ε from every accountant that applies, the
empirical membership audit and what it means for this dataset, and what the guarantee does
and does not cover. Every number comes from the stored run (its config, its round ledger,
its audit); only the other accountants' ε are computed, by `privacy.accounting`, from the
ledger's (σ, q, steps). No torch at import, no streamlit: the CLI and the page both call it.

    text = render_markdown(store.get_experiment(7), store.rounds_frame([7]))
    python cli.py show 7 --privacy-report > experiment-7-privacy.md
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import PurePath
from typing import TYPE_CHECKING, Any

from database import ExperimentSummary
from privacy.audit import advantage_bound, advantage_chance_level, auc_chance_sd
from privacy.one_run_audit import METHOD as ONE_RUN

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["render_markdown", "report_filename"]

MECHANISMS = {
    "none": "none: federated averaging without differential privacy",
    "local": "local differential privacy: DP-SGD (Opacus) on every client",
    "central": "central differential privacy: DP-FedAvg (clipped client updates, Gaussian noise added by the server)",
}
DISTRIBUTED_MECHANISM = (
    "central differential privacy under secure aggregation: DP-FedAvg with clipped client updates, the "
    "Gaussian noise added in shares by the clients (distributed noise); the server sees only the noised sum"
)
# privacy.distributed_noise = "skellam" (privacy/skellam.py): the discrete mechanism and its accountant.
SKELLAM_MECHANISM = (
    "central differential privacy under secure aggregation: DP-FedAvg with clipped client updates scaled to "
    "integers and stochastically rounded, integer Skellam noise added in shares by the clients (Agarwal et al. "
    "2021), summed exactly in the protocol's integer ring; the server sees only the noised sum"
)
SKELLAM_ACCOUNTANT = "skellam-rdp"
SKELLAM_ACCOUNTANT_NAME = (
    "RDP of the Skellam mechanism (Agarwal et al. 2021, with the L2 and L1 sensitivities after conditional "
    "rounding), Poisson client sampling by Zhu & Wang's (2019) general bound, composed over rounds, converted as "
    "Opacus's RDP accountant does"
)
UNITS = {
    "none": "none (no formal guarantee)",
    "local": "one training example (sample-level), for each client separately",
    "central": "one client's whole dataset (user-level): all of its examples together",
}
ACCOUNTANT_NAMES = {
    "rdp": "RDP (Rényi differential privacy; Opacus `RDPAccountant`)",
    "prv": "PRV (privacy loss random variables; Opacus `PRVAccountant`)",
    "pld": "PLD (privacy loss distributions; Google's `dp_accounting`)",
}
FIXED_RDP_NAME = "RDP for sampling without replacement (dp_accounting `RdpAccountant`, replace one)"
# DP-FTRL (privacy.mechanism = "dp-ftrl", privacy/ftrl.py): its mechanism and accountant, as the report names them.
TREE_MECHANISM = (
    "central differential privacy: DP-FTRL (Kairouz et al. 2021): clipped client updates summed by the server, "
    "the running sum released with the correlated noise of a binary tree (each node N(0, σ²C²)), no sampling "
    "assumed"
)
TREE_ACCOUNTANT_NAME = (
    "zCDP of the tree over the run's participation schedule, ρ = Δ²/(2σ²C²), converted by ε = ρ + 2√(ρ·ln(1/δ)) "
    "(Bun & Steinke 2016)"
)
# The neighbouring relation of runs recorded before the ledger stated it (central DP then sampled by Poisson).
OLD_RELATIONS = {"local": "add/remove one example", "central": "add/remove one client"}
# Why the membership audit's members and non-members may differ even without memorisation, per dataset.
SPLIT_NOTES = {
    "mnist": "The two come from MNIST's training and test splits, which were written by different people "
    "(different writers), so a small gap can come from that rather than from memorisation.",
    "ngss": "The two come from the task's synthetic training and test responses, drawn by the same seeded "
    "generator from the same schools and distribution, so a gap is not explained by a shift between the splits.",
    "csv": "The two come from the imported data's training rows and its test rows (the lab's test file, or a "
    "seeded share of each school split off the training file); if the test responses were collected "
    "differently (another year, other classes, other raters), a small gap can come from that rather than "
    "from memorisation.",
}


def delta_concern(delta: float, population: int, unit: str) -> str | None:
    """Why δ makes an (ε, δ) guarantee hollow, or None: δ ≥ 0.5, or δ ≥ 1/N for the N `unit`s it
    protects (examples of a client for local DP, clients for central DP; 0: unknown). Such a δ lets a
    mechanism reveal a whole unit outright with probability δ and still meet the guarantee. The page
    (before Start and in the run view) and this report state the same rule."""
    if delta >= 0.5:
        return f"δ = {delta:g} promises nothing: the (ε, δ) guarantee may fail half the time or more."
    if population > 0 and delta >= 1.0 / population:
        return (f"δ = {delta:g} is not below 1/N = {1.0 / population:.2g} (N = {population:,} {unit}): a mechanism "
                "may reveal a whole unit outright and still meet the guarantee. Keep δ well below 1/N.")  # fmt: skip
    return None


def report_filename(experiment: ExperimentSummary) -> str:
    """A file name for the downloaded statement, e.g. `experiment-7-privacy.md`."""
    return f"experiment-{experiment.id}-privacy.md"


@dataclass(frozen=True)
class _Facts:
    """The numbers the statement quotes, taken from the stored run."""

    mode: str
    rounds_run: int
    rounds_planned: int
    epsilon: float
    delta: float
    noise_multiplier: float
    clip_norms: tuple[float, ...]  # C of every round run (one value unless adaptive)
    sample_rate: float  # central: q; local: the largest per-client q recorded
    privacy_steps: int
    accountant: str
    client_sampling: str  # central: poisson | fixed
    neighbouring_relation: str
    mechanism: str = ""  # central: dp-fedavg | dp-ftrl


def _num(value: float) -> str:
    """Exact enough to check against the ledger, short enough to read: 6 significant digits."""
    return f"{value:.6g}"


def _facts(experiment: ExperimentSummary, rounds: pd.DataFrame) -> _Facts:
    privacy = experiment.config.get("privacy", {})
    mode = privacy.get("mode", "none")
    ran = not rounds.empty
    last = rounds.iloc[-1] if ran else None
    clip_norms = [float(c) for c in rounds["max_grad_norm"]] if ran else [float(privacy.get("max_grad_norm", 0.0))]
    sigma = experiment.noise_multiplier
    if sigma is None:
        sigma = float(last["noise_multiplier"]) if ran else float(privacy.get("noise_multiplier", 0.0))
    relation = str(last["neighbouring_relation"]) if ran and "neighbouring_relation" in rounds else ""
    sampling = str(experiment.config.get("federation", {}).get("client_sampling", "poisson"))
    if not relation and mode == "central":
        relation = "replace one client" if sampling == "fixed" else OLD_RELATIONS["central"]
    tree = mode == "central" and privacy.get("mechanism") == "dp-ftrl"
    return _Facts(
        mode=mode,
        rounds_run=len(rounds),
        rounds_planned=int(experiment.config.get("federation", {}).get("rounds", 0)),
        epsilon=float(last["epsilon"]) if ran else 0.0,
        delta=float(last["delta"]) if ran and mode != "none" else float(privacy.get("delta", 0.0)),
        noise_multiplier=float(sigma),
        clip_norms=tuple(clip_norms),
        sample_rate=float(rounds["sample_rate"].max()) if ran else 0.0,
        privacy_steps=int(rounds["privacy_steps"].max()) if ran else 0,  # local: cumulative, max over clients
        accountant=("zcdp" if tree else SKELLAM_ACCOUNTANT if _skellam(experiment)
                    else str(privacy.get("accountant", "rdp"))),  # fmt: skip
        client_sampling=sampling,
        neighbouring_relation=relation or OLD_RELATIONS.get(mode, ""),
        mechanism=str(privacy.get("mechanism", "dp-fedavg")) if mode == "central" else "",
    )


def _skellam(experiment: ExperimentSummary) -> bool:
    """Whether the run's distributed noise was the discrete Skellam mechanism (privacy/skellam.py)."""
    privacy = experiment.config.get("privacy", {})
    return privacy.get("mode") == "central" and privacy.get("distributed_noise", "gaussian") == "skellam"


def render_markdown(experiment: ExperimentSummary, rounds: pd.DataFrame) -> str:
    """The privacy statement of one run as Markdown.

    experiment: the stored run (`ExperimentStore.get_experiment`); rounds: its round ledger
    (`ExperimentStore.rounds_frame([id])`: columns round, epsilon, delta, noise_multiplier,
    max_grad_norm, sample_rate, privacy_steps, accountant; others are ignored).
    """
    rounds = rounds.sort_values("round") if not rounds.empty else rounds
    facts = _facts(experiment, rounds)
    sections = [
        _header(experiment, facts),
        _summary_table(experiment, facts),
        _meaning(experiment, facts),
        _audit_section(experiment.audit, facts, experiment.config.get("data", {}).get("dataset", "mnist")),
        _coverage(experiment, facts),
    ]
    return "\n\n".join(sections).rstrip() + "\n"


def _header(experiment: ExperimentSummary, facts: _Facts) -> str:
    name = f" ({experiment.name})" if experiment.name else ""
    finished = f", finished {experiment.finished_at:%Y-%m-%d %H:%M:%S} UTC" if experiment.finished_at else ""
    lines = [
        f"# Privacy statement: experiment {experiment.id}{name}",
        "",
        f"Status **{experiment.status}**: {facts.rounds_run} of {facts.rounds_planned} planned rounds run"
        f"{finished}; code version `{experiment.code_version}`.",
    ]
    if experiment.stop_reason:
        lines.append(f"The run stopped early: {experiment.stop_reason}.")
    if experiment.error:
        lines.append(f"The run failed: {experiment.error}")
    return "\n".join(lines)


def _summary_table(experiment: ExperimentSummary, facts: _Facts) -> str:
    mechanism = MECHANISMS.get(facts.mode, facts.mode)
    if facts.mode == "central" and experiment.config.get("federation", {}).get("secure_aggregation"):
        mechanism = SKELLAM_MECHANISM if _skellam(experiment) else DISTRIBUTED_MECHANISM
    if facts.mechanism == "dp-ftrl":
        mechanism = TREE_MECHANISM
    rows = [*_data_rows(experiment), ("Mechanism", mechanism), ("Unit of privacy", UNITS.get(facts.mode, "?"))]
    if facts.mode == "none":
        rows.append(("Guarantee", "**no formal privacy guarantee**"))
    else:
        rows += [
            ("Guarantee", f"(ε = {_num(facts.epsilon)}, δ = {_num(facts.delta)})-differential privacy"),
            ("Neighbouring relation", f"{facts.neighbouring_relation} (the neighbouring datasets ε compares)"),
            ("Noise multiplier σ", _sigma_text(experiment, facts)),
            ("Clipping bound C", _clip_text(experiment, facts)),
            ("Sampling", _sampling_text(experiment, facts)),
            ("Accountant", _accountant_name(facts)),
            ("ε by accountant", _epsilons_text(facts)),
            ("Noise source", _noise_source_text(experiment)),
        ]  # fmt: skip
    rows.append(("Rounds", f"{facts.rounds_run} of {facts.rounds_planned} planned"))
    if facts.mode != "none" and float(experiment.config.get("privacy", {}).get("max_epsilon", 0.0)) > 0:
        rows.append(("Budget", f"stop before ε would pass {_num(experiment.config['privacy']['max_epsilon'])}"))
    rows.append(("Stopped early", experiment.stop_reason or "no"))
    rows.append(("Membership audit", _audit_cell(experiment.audit)))
    table = ["| | |", "|---|---|", *(f"| {key} | {value} |" for key, value in rows)]
    return "## Summary\n\n" + "\n".join(table)


def _dataset_text(experiment: ExperimentSummary) -> str:
    """What the run trained on: MNIST, a synthetic NGSS task, or an imported CSV (its file name only)."""
    data, info = experiment.config.get("data", {}), experiment.dataset_info or {}
    dataset = data.get("dataset", "mnist")
    if dataset == "mnist":
        return "MNIST handwritten digits (60,000 training, 10,000 test images)"
    task = info.get("task") or data.get("ngss_task", "")
    if dataset == "ngss":
        return f"NGSS rubric scoring, task `{task}`: synthetic student responses (generated, not real students)"
    name = PurePath(str(info.get("csv_path") or data.get("csv_path") or "")).name
    return f"NGSS rubric scoring, imported from `{name}`: real student responses in the lab's CSV format"


def _data_rows(experiment: ExperimentSummary) -> list[tuple[str, str]]:
    """The dataset, the training subset, the clients and the final accuracy."""
    data, federation = experiment.config.get("data", {}), experiment.config.get("federation", {})
    info = experiment.dataset_info or {}
    limit = int(data.get("max_train_examples", 0))
    total = info.get("train_responses")
    subset = f"a seeded random subset of {limit:,} training examples" if limit else "the whole training split"
    if total and not limit:
        subset += f" ({int(total):,} responses)"
    sizes = _client_sizes(experiment)
    clients = (
        f"{federation.get('num_clients')} clients (partition `{data.get('partition', 'iid')}`), "
        f"{federation.get('clients_per_round')} per round"
    )
    if sizes:
        clients += f"; they train on {sum(sizes):,} examples in all"
    accuracy = "not recorded"
    if experiment.final_accuracy is not None:
        kind = "per-label accuracy" if data.get("dataset", "mnist") in ("ngss", "csv") else "accuracy"
        accuracy = f"{100 * experiment.final_accuracy:.2f}% ({kind} of the global model on the test split)"
    return [("Data", _dataset_text(experiment)), ("Training subset", subset), ("Clients", clients),
            ("Final accuracy", accuracy)]  # fmt: skip


def _accountant_name(facts: _Facts) -> str:
    if facts.mechanism == "dp-ftrl":
        return TREE_ACCOUNTANT_NAME
    if facts.accountant == SKELLAM_ACCOUNTANT:
        return SKELLAM_ACCOUNTANT_NAME
    if facts.mode == "central" and facts.client_sampling == "fixed":
        return FIXED_RDP_NAME
    return ACCOUNTANT_NAMES.get(facts.accountant, facts.accountant)


def _epsilons_text(facts: _Facts) -> str:
    """ε from every accountant that applies, the one the run used marked: its ε is the ledger's;
    the others are computed from the ledger's (σ, q, steps). Fixed-size client sampling has RDP only."""
    used = f"{facts.accountant.upper()} {_num(facts.epsilon)} (**used**, the ledger's)"
    if facts.mechanism == "dp-ftrl":
        return f"{used}; RDP, PRV and PLD do not apply: they account DP-FedAvg's sampled Gaussian, not the tree"
    if facts.accountant == SKELLAM_ACCOUNTANT:
        return f"{used}; RDP, PRV and PLD do not apply: they account a continuous Gaussian, not integer Skellam noise"
    if facts.mode == "central" and facts.client_sampling == "fixed":
        return f"{used}; PRV and PLD do not apply: they have no bound for sampling without replacement"
    if facts.privacy_steps <= 0 or facts.sample_rate <= 0 or facts.noise_multiplier <= 0:
        return used
    # opacus and dp_accounting (~2 s to import) load only when a private run's statement is rendered
    from privacy.accounting import epsilons_by_accountant

    history = [(facts.noise_multiplier, min(facts.sample_rate, 1.0), facts.privacy_steps)]
    try:
        others = epsilons_by_accountant(history, facts.delta)
    except (ValueError, RuntimeError) as error:  # e.g. PRV cannot represent the loss at these settings
        return f"{used}; the others could not be computed: {error}"
    shown = [used] + [f"{name.upper()} {_num(value)}" for name, value in others.items() if name != facts.accountant]
    text = ", ".join(shown) + " (all upper bounds on the same mechanism; they differ in tightness)"
    if facts.mode == "local":
        text += "; the others are for a client with the largest q_k and the most steps, a bound on every client's ε"
    return text


def _noise_source_text(experiment: ExperimentSummary) -> str:
    privacy, seed = experiment.config.get("privacy", {}), experiment.config.get("system", {}).get("seed", "?")
    if privacy.get("secure_noise"):
        return ("the operating system's cryptographically secure generator (`os.urandom`), for the noise and "
                "for which clients each round sampled: not reproducible from the seed")  # fmt: skip
    return f"a seeded pseudo-random generator (torch, seed {seed}): reproducible, not cryptographically secure"


def _sigma_text(experiment: ExperimentSummary, facts: _Facts) -> str:
    privacy = experiment.config.get("privacy", {})
    target = float(privacy.get("target_epsilon", 0.0))
    if target > 0:
        planned = facts.rounds_planned
        how = f"calibrated before the run so that all {planned} planned rounds end at ε ≤ {_num(target)}"
    else:
        how = "set in the configuration (not calibrated to a target ε)"
    return f"{_num(facts.noise_multiplier)}, {how}"


def _clip_text(experiment: ExperimentSummary, facts: _Facts) -> str:
    what = "per-example gradient L2 norm" if facts.mode == "local" else "per-client update L2 norm"
    privacy = experiment.config.get("privacy", {})
    if privacy.get("adaptive_clipping"):
        low, high = min(facts.clip_norms), max(facts.clip_norms)
        return (
            f"adaptive ({what}): started at {_num(float(privacy.get('max_grad_norm', 0.0)))}, moved each round "
            f"towards the {_num(float(privacy.get('target_quantile', 0.5)))} quantile of update norms "
            f"(Andrew et al. 2021); ranged {_num(low)} to {_num(high)}, last {_num(facts.clip_norms[-1])}"
        )
    copies = int(privacy.get("augmentations", 0))
    if copies:  # the clipped quantity changes, its bound does not
        what += (f", of each example's gradient averaged over {copies} random shifts of it (augmentation "
                 "multiplicity, De et al. 2022; one example still moves the sum by at most C)")  # fmt: skip
    return f"{_num(facts.clip_norms[-1])} ({what})"


def _client_sizes(experiment: ExperimentSummary) -> list[int]:
    return [int(sum(counts)) for counts in experiment.label_counts or []]


def _sampling_text(experiment: ExperimentSummary, facts: _Facts) -> str:
    federation = experiment.config.get("federation", {})
    if facts.mechanism == "dp-ftrl":
        k, n = federation.get("clients_per_round"), federation.get("num_clients")
        schedule = f"exactly {k} of the {n} clients each round, from a seeded schedule fixed before the run"
        if facts.client_sampling == "cyclic":
            schedule = (f"cyclic participation: the {n} clients in one seeded order, each round the next {k} of it, "
                        f"so each client once every {_num(n / k)} rounds")  # fmt: skip
        return (
            f"{schedule}; DP-FTRL takes no amplification from it: each client is charged for every round it took "
            f"part in; {facts.privacy_steps} released prefix sums accounted"
        )
    if facts.mode == "central" and facts.client_sampling == "fixed":
        return (
            f"fixed-size client sampling: each round exactly {federation.get('clients_per_round')} of the "
            f"{federation.get('num_clients')} clients, uniformly without replacement (q = k/n = "
            f"{_num(facts.sample_rate)}), accounted by RDP for sampling without replacement (Wang, Balle & "
            f"Kasiviswanathan 2019); {facts.privacy_steps} noised rounds accounted"
        )
    if facts.mode == "central":
        return (
            f"Poisson client sampling: each round, each of the {federation.get('num_clients')} clients takes part "
            f"independently with probability q = clients_per_round / num_clients = "
            f"{federation.get('clients_per_round')}/{federation.get('num_clients')} = {_num(facts.sample_rate)}; "
            f"{facts.privacy_steps} noised rounds accounted"
        )
    batch = int(federation.get("batch_size", 0))
    sizes = [n for n in _client_sizes(experiment) if n > 0]
    spread = ""
    if sizes and batch:
        low, high = min(1.0, batch / max(sizes)), min(1.0, batch / min(sizes))
        if min(sizes) == max(sizes):
            spread = f"; every client holds N_k = {min(sizes)} examples, so q_k = {_num(low)}"
        else:
            spread = (
                f"; clients hold N_k = {min(sizes)} to {max(sizes)} examples, so q_k = {_num(low)} to {_num(high)}"
            )
    return (
        f"Poisson batches on each client: every example joins each DP-SGD step independently with "
        f"probability q_k = B/N_k, B = {batch}{spread}; largest q_k used: {_num(facts.sample_rate)}; "
        f"most DP-SGD steps of any client: {facts.privacy_steps}"
    )


def _audit_cell(audit: dict[str, Any] | None) -> str:
    if audit is None:
        return "not run"
    if "error" in audit:
        return f"failed: {audit['error']}"
    if audit.get("method") == ONE_RUN:
        return f"one-run: empirical ε ≥ {_num(audit['epsilon_lower_bound'])} ({audit['canaries']} canaries, 95%)"
    return (
        f"AUC {audit['auc']:.4f}, advantage {audit['advantage']:.4f} "
        f"({audit['members']} members, {audit['non_members']} non-members)"
    )


def _meaning(experiment: ExperimentSummary, facts: _Facts) -> str:
    if facts.mode == "none":
        return (
            "## What this means\n\n"
            "This run used **no formal privacy**. Raw data stayed on each client, but the model updates "
            "clients sent, and the final model, can reveal information about individual training examples. "
            "Nothing bounds that leakage; do not describe this run as private."
        )
    unit = "training example" if facts.mode == "local" else "client (all of its examples together)"
    change = f"Adding or removing any one {unit}"
    if facts.neighbouring_relation == "replace one client":
        change = "Replacing any one client's whole dataset by any other (the number of clients is public)"
    if facts.neighbouring_relation == "zero-out one client":
        change = "Replacing every update of any one client by zeros (who takes part in each round is public)"
    factor = math.exp(facts.epsilon) if facts.epsilon < 700 else math.inf
    text = (
        f"## What this means\n\n"
        f"{change} changes the probability of any outcome of the training "
        f"(any model it could release) by a factor of at most e^ε = {_num(factor)}, "
        f"except with probability at most δ = {_num(facts.delta)}. Smaller ε is stronger; "
        "values above about 10 give little protection in practice."
    )
    if facts.mode == "local":
        text += (
            " ε is the largest over all clients; each client's ε is cumulative over every round it took "
            "part in. The noise is added on the client, so the guarantee holds against the server too."
        )
    else:
        text += f" ε covers all {facts.privacy_steps} rounds run, each one noised release of the model."
    units = _client_sizes(experiment) if facts.mode == "local" else []
    population = max(units) if units else int(experiment.config.get("federation", {}).get("num_clients", 0))
    if population > 0:
        side = "**not** below" if delta_concern(facts.delta, population, "") else "below"
        text += (
            f" δ = {_num(facts.delta)} is {side} 1/N = {_num(1.0 / population)} "
            f"(N = {population} {'examples on the largest client' if facts.mode == 'local' else 'clients'}); "
            "it should be well below it."
        )
    return text


def _audit_section(audit: dict[str, Any] | None, facts: _Facts, dataset: str) -> str:
    head = "## Empirical audit (membership inference)\n\n"
    if audit is None:
        return head + "No audit was run (`privacy.audit_examples = 0`, or no client trained)."
    if "error" in audit:
        return head + f"The audit failed, so there is no empirical result: {audit['error']}"
    if audit.get("method") == ONE_RUN:
        return _one_run_section(audit, facts)
    members, non_members = int(audit["members"]), int(audit["non_members"])
    auc_band, advantage_band = 2 * auc_chance_sd(members, non_members), advantage_chance_level(members, non_members)
    lines = [
        f"The loss-threshold attack (Yeom et al. 2018) guesses that an example was trained on when the final "
        f"model's loss on it is low. It was run on {members} examples the clients trained on (members) and "
        f"{non_members} held-out test examples (non-members), a seeded sample of each. "
        + SPLIT_NOTES.get(dataset, SPLIT_NOTES["csv"]),
        "",
        f"- AUC = {audit['auc']:.4f}: the probability that a random member looks more like a member than a "
        "random non-member (0.5 = a coin flip, 1 = always right).",
        f"- Membership advantage = {audit['advantage']:.4f}: true-positive rate minus false-positive rate at "
        f"the best loss threshold ({_num(float(audit['threshold']))} nats), chosen in hindsight "
        "(0 = no better than guessing, 1 = perfect).",
    ]
    if "member_loss" in audit:
        lines.append(
            f"- Mean loss: members {_num(float(audit['member_loss']))}, "
            f"non-members {_num(float(audit['non_member_loss']))} nats."
        )
    lines += ["", _audit_verdict(audit, auc_band, advantage_band), "", _audit_bound(facts)]
    return head + "\n".join(lines).rstrip()


def _one_run_section(audit: dict[str, Any], facts: _Facts) -> str:
    """The empirical ε of the one-run audit (Steinke, Nasr & Jagielski 2023) beside the accountant's."""
    bound, confidence = float(audit["epsilon_lower_bound"]), 100 * float(audit["confidence"])
    lines = [
        "## Empirical ε (one training run)\n",
        (
            f"Before training, {audit['canaries']} canaries (test images, each relabelled with a random wrong class) "
            f"were drawn; each joined one client's training data with probability 1/2 ({audit['included']} did). "
            "After training, the final model's loss on each canary's label scored it, and the auditor guessed "
            f"\"trained on\" for the lowest losses and \"not\" for the highest: {audit['correct']} of "
            f"{audit['guesses']} guesses were right. Mean loss: included {_num(float(audit['included_loss']))}, "
            f"excluded {_num(float(audit['excluded_loss']))} nats."
        ),
        "",
        (
            f"- **Empirical ε ≥ {_num(bound)}** at {confidence:g}% confidence (δ = {_num(float(audit['delta']))}): "
            "were training (ε, δ)-DP with any smaller ε, this many right guesses would happen less than "
            f"{100 - confidence:g}% of the time (Theorem 7 of the paper; the number of guesses was picked among a "
            "few fixed choices, paid for by splitting the confidence between them)."
        ),
    ]
    # Central DP: a canary changes one client's data, i.e. replaces that client: twice an add/remove ε.
    replaced = facts.mode == "central" and facts.neighbouring_relation != "replace one client"
    limit = 2 * facts.epsilon if replaced else facts.epsilon
    if facts.mode == "none":
        lines.append("- Accountant's ε: none, this run has no formal guarantee.")
    else:
        lines.append(f"- Accountant's ε = {_num(facts.epsilon)}: the upper bound the mechanism guarantees.")
    if replaced:
        lines.append(
            f"  A canary changes one client's data, which the add/remove-one-client relation counts as two "
            f"steps (group privacy): the audit is measured against 2ε = {_num(limit)}."
        )
    if facts.mode != "none" and bound > limit:
        verdict = (
            "**The lower bound exceeds the accountant's ε**: one of the two is wrong (the accounting, the "
            "mechanism or the audit). Do not rely on this run's guarantee until that is explained."
        )
    elif bound > 0:
        verdict = "The run provably leaks: no (ε, δ)-DP claim with ε below the empirical value can hold."
    else:
        verdict = "The canaries showed no leakage this audit can prove."
    lines += ["", verdict + " An audit is a *lower* bound from one attack on the final model, usually far "
              "below the accountant's ε; it can prove leakage, never privacy."]  # fmt: skip
    return "\n".join(lines)


def _audit_verdict(audit: dict[str, Any], auc_band: float, advantage_band: float) -> str:
    chance = (
        f"With these sample sizes, chance alone gives an AUC within 0.5 ± {auc_band:.4f} (two standard "
        f"deviations) and an advantage below {advantage_band:.4f} (95%)."
    )
    if audit["auc"] <= 0.5 + auc_band and audit["advantage"] <= advantage_band:
        verdict = "**No measurable leakage by this attack**: the result is within what chance produces."
    else:
        verdict = (
            "**Measurable leakage**: the attack tells training examples from held-out ones better than chance "
            "explains, evidence that the model reveals which examples it was trained on."
        )
    return (
        f"{chance} {verdict} An audit gives a *lower bound* on leakage, not a proof of privacy: it tries one "
        "simple attack on a sample of examples, and stronger attacks (likelihood-ratio attacks with shadow "
        "models, attacks on the individual updates a server sees) may learn more."
    )


def _audit_bound(facts: _Facts) -> str:
    if facts.mode == "none":
        return "Without differential privacy nothing limits what a stronger attack could achieve."
    if facts.epsilon > 700:
        return f"At ε = {_num(facts.epsilon)} differential privacy places no useful limit on any attack."
    bound = advantage_bound(facts.epsilon, facts.delta)
    return (
        f"For comparison, (ε, δ)-differential privacy at these values limits the membership advantage of *any* "
        f"attack to (e^ε − 1 + 2δ)/(e^ε + 1) = {_num(bound)} for independently drawn examples "
        "(Kairouz et al. 2015; Humphries et al. 2020); the measured value is a "
        "noisy, hindsight estimate on a finite sample, so it may exceed that slightly by chance."
    )


def _distributed_items(experiment: ExperimentSummary) -> tuple[list[str], list[str]]:
    """(covered, not covered) of central DP under secure aggregation: the clients' noise shares, Gaussian
    on the fixed-point grid or integer Skellam noise (privacy/skellam.py)."""
    covered: list[str] = []
    not_covered: list[str] = []
    federation = experiment.config.get("federation", {})
    share = "N(0, σ²C²/m)"
    if _skellam(experiment):
        share = "integer Skellam noise Sk(μ/m), μ = (σ·γC)² (σ²C² once decoded)"
    covered.append(
        "Each client's whole dataset, against anyone who sees the released global models, the server "
        "included: under secure aggregation the server sees only the sum, and the clients add the noise "
        f"themselves (distributed noise). Every client of the population takes part in each round (those "
        f"not sampled send zeros), each adding {share} with m = ⌈secagg_threshold · num_clients⌉ = "
        f"⌈{federation.get('secagg_threshold')} · {federation.get('num_clients')}⌉; a sum with fewer than m "
        "inputs is never released, so every released sum carries at least the noise the accountant assumes, "
        "and the server does not learn who was sampled."
    )
    not_covered.append(
        "Clients that collude with the server: each client's noise share alone is too small, so a client "
        "that reveals its share (or a server that controls clients) weakens the guarantee. Clipping is done "
        "by each client's own software, which must be trusted to clip."
    )
    if _skellam(experiment):
        covered.append(
            "Rounding: each client scales its clipped update by γ = 2^20/C and rounds it to integers, redrawing "
            "until its L2 norm is within the conditional-rounding bound; the protocol sums integers exactly, and "
            "the accountant is the discrete mechanism's, with the sensitivities after rounding."
        )
    else:
        not_covered.append(
            "Fixed-point rounding: each masked input is rounded to a 2^-24 grid before summing; the accountant "
            "treats the noise as a continuous Gaussian (`privacy.distributed_noise = \"skellam\"` closes this "
            "gap with integer noise accounted for the discrete mechanism)."
        )
    return covered, not_covered


def _noise_items(experiment: ExperimentSummary) -> tuple[list[str], list[str]]:
    """(covered, not covered): what the noise's source protects against."""
    if experiment.config.get("privacy", {}).get("secure_noise"):
        sampled = "which clients each round sampled were"
        if experiment.config.get("privacy", {}).get("mode") == "local":
            sampled = "DP-SGD's Poisson batches (a generator seeded with 64 bits of `os.urandom`) were"
        secure = (
            f"Someone who knows the seed: the noise was drawn from the operating system's cryptographically secure "
            f"generator (`os.urandom`; `privacy.secure_noise`), each normal as the sum of four draws against "
            f"floating-point attacks, as Opacus's secure mode, and {sampled} unseeded too."
        )
        if _skellam(experiment):  # privacy/skellam.py: secure_generator
            secure = (
                "Someone who knows the seed: which clients each round sampled came from `os.urandom`, and each "
                "client's Skellam noise and rounding from numpy's PCG64DXSM keyed with 128 bits from the operating "
                "system's cryptographically secure generator (`privacy.secure_noise`): a keyed PRNG, not a CSPRNG."
            )
        return [secure], []
    seed = experiment.config.get("system", {}).get("seed", "?")
    advice = (
        "A deployment should set `privacy.secure_noise` (the noise from `os.urandom`, and the sampling unseeded)."
    )
    if experiment.config.get("privacy", {}).get("mechanism") == "dp-ftrl":
        advice = "DP-FTRL has no `privacy.secure_noise` yet: its accountant reads the seeded schedule before the run."
    seeded = (
        f"Cryptographic strength of the noise: it is drawn from a seeded, non-cryptographic generator "
        f"(torch, seed {seed}) so runs are reproducible; someone who knows the seed could reproduce the "
        f"noise and the sampling. {advice}"
    )
    return [], [seeded]


def _coverage(experiment: ExperimentSummary, facts: _Facts) -> str:
    covered: list[str] = []
    not_covered: list[str] = []
    if facts.mode == "none":
        not_covered.append("Anything: mode `none` offers no formal privacy guarantee.")
    elif facts.mode == "local":
        covered.append(
            "Each training example, against everything its client sends (the server, other clients, anyone "
            "who sees the models); the server need not be trusted."
        )
        not_covered.append(
            "People or institutions as a whole: it protects examples, not users. Someone who contributed "
            "k examples is protected only at roughly k·ε (group privacy)."
        )
    elif experiment.config.get("federation", {}).get("secure_aggregation"):
        distributed_covered, distributed_not_covered = _distributed_items(experiment)
        covered += distributed_covered
        not_covered += distributed_not_covered
    else:
        covered.append("Each client's whole dataset, against anyone who sees the released global models.")
        not_covered.append(
            "The server: it sees every participating client's individual, un-noised update. The guarantee "
            "holds only if the server is trusted to clip and add the noise as stated."
        )
    if facts.mechanism == "dp-ftrl":
        not_covered.append(
            "Who took part in which round: DP-FTRL's schedule is seeded and treated as public. The server's "
            "checkpoints hold the tree's exact (un-noised) partial sums and must be kept as private as the server."
        )
    if facts.mode != "none":
        noise_covered, noise_not_covered = _noise_items(experiment)
        covered += noise_covered
        not_covered += noise_not_covered
        not_covered.append(
            "Releases outside training: the accuracy and loss reported each round are computed on the "
            "held-out test set, which the guarantee does not cover."
        )
    lines = ["## What the guarantee covers", ""]
    lines += [f"- {item}" for item in covered] or ["- Nothing."]
    lines += ["", "## What it does not cover", ""]
    lines += [f"- {item}" for item in not_covered]
    return "\n".join(lines)
