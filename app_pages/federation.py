"""The Federation panel of one experiment: the clients as set up (speed, who is malicious), what happened to each
in each round (status grid, skipped rounds), what compression saved, and personalized against global accuracy.

Only the parts with something to say are drawn: no status grid when every selected client delivered and nobody is
malicious, no speed chart when all clients are equally fast and honest, nothing at all for a plain run.
"""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go
import streamlit as st

import visualization as viz
from app_pages.common import client_names, format_bytes
from database import ExperimentSummary
from engine.suspicion import flag_quality

Metric = tuple[str, str, str | None, str]  # label, value, delta (or None), help


def federation_figures(experiment: ExperimentSummary, clients: pd.DataFrame) -> dict[str, go.Figure]:
    """The panel's charts that apply to this run, by key, in display order."""
    figures: dict[str, go.Figure] = {}
    profiles, names = experiment.client_profiles or [], client_names(experiment)
    speeds = {round(float(p.get("speed", 1.0)), 6) for p in profiles}
    if len(speeds) > 1 or any(p.get("malicious") for p in profiles):
        figures["profiles"] = viz.client_profile_figure(profiles, client_names=names)
    flagged = not clients.empty and "flagged" in clients and clients["flagged"].fillna(False).astype(bool).any()
    if not clients.empty and ((clients["status"] != "ok").any() or clients["malicious"].any() or flagged):
        figures["status"] = viz.client_status_figure(clients, client_names=names)
    if compression(experiment) != "none" and not clients.empty:
        figures["upload"] = viz.upload_figure(clients)
    if (experiment.personalization or {}).get("clients"):
        figures["personalization"] = viz.personalization_figure(experiment.personalization, client_names=names)
    return figures


def compression(experiment: ExperimentSummary) -> str:
    return experiment.config.get("communication", {}).get("compression", "none")


def federation_metrics(experiment: ExperimentSummary, rounds: pd.DataFrame, clients: pd.DataFrame) -> list[Metric]:
    """Headline numbers of the panel: arrivals, skipped rounds, attackers, compression, personalization."""
    metrics: list[Metric] = []
    if not clients.empty and (clients["status"] != "ok").any():
        arrived = int(clients["status"].isin(viz.ARRIVED_STATUSES).sum())
        counts = clients["status"].value_counts()
        missing = ", ".join(f"{counts[s]} {s}" for s in viz.CLIENT_STATUSES if s != "ok" and s in counts)
        metrics.append((
            "Arrived", f"{arrived}/{len(clients)}", None,
            f"Over all rounds: updates that reached the server (ok or partial) of the clients selected ({missing}).",
        ))  # fmt: skip
    skipped = int((rounds["skipped"] != "").sum()) if "skipped" in rounds else 0
    if skipped:
        metrics.append(("Skipped", f"{skipped} of {len(rounds)}", None, "Rounds in which the global model was not "
                        "updated (listed below)."))
    profiles = experiment.client_profiles or []
    malicious = sum(bool(p.get("malicious")) for p in profiles)
    if malicious:
        behaviour = experiment.config.get("attack", {}).get("behaviour", "?")
        metrics.append((
            "Malicious", f"{malicious} of {len(profiles)}", None,
            f"They send {behaviour} updates in every round they are selected.",
        ))  # fmt: skip
    quality = flag_quality(clients.to_dict("records")) if malicious and "suspicion" in clients else None
    if quality is not None:
        precision = "—" if quality["precision"] is None else f"{quality['precision']:.2f}"
        metrics.append((
            "Flags P / R", f"{precision} / {quality['recall']:.2f}", None,
            f"Suspicion flags against who really was malicious, over every scored client-round: precision "
            f"{quality['true_positives']} of {quality['true_positives'] + quality['false_positives']} flags, "
            f"recall {quality['true_positives']} of {quality['true_positives'] + quality['false_negatives']} attacks.",
        ))  # fmt: skip
    arrived = clients[clients["status"].isin(viz.ARRIVED_STATUSES)] if not clients.empty else clients
    if compression(experiment) != "none" and not arrived.empty and arrived["bytes_up"].sum() > 0:
        sent, dense = float(arrived["bytes_up"].sum()), float(arrived["bytes_down"].sum())
        metrics.append((
            "Compression", f"{dense / sent:.1f}×", None,
            f"Uncompressed size of the updates that arrived / bytes sent: {format_bytes(dense)} as "
            f"{format_bytes(sent)} ({compression(experiment)}).",
        ))  # fmt: skip
    personalization = experiment.personalization or {}
    mean_global, mean_personal = (personalization.get(f"mean_{k}_accuracy") for k in ("global", "personalized"))
    if mean_global is not None and mean_personal is not None:
        own = "Mean over clients of the accuracy on each client's own held-out split"
        method = personalization.get("method", "?")
        metrics.append(("Global model", f"{mean_global:.2%}", None, f"{own}: the final global model."))
        metrics.append((
            "Personalized", f"{mean_personal:.2%}", f"{(mean_personal - mean_global) * 100:+.2f} pp",
            f"{own}: each client's own model ({method}).",
        ))  # fmt: skip
    return metrics


def secure_aggregation_table(rounds: pd.DataFrame) -> pd.DataFrame:
    """Per round, what secure aggregation cost: protocol bytes, dropouts unmasked, seconds."""
    if "secure_aggregation" not in rounds:
        return pd.DataFrame()
    rows = [(r, s) for r, s in zip(rounds["round"], rounds["secure_aggregation"]) if isinstance(s, dict)]
    return pd.DataFrame(
        {
            "Round": [r for r, _ in rows],
            "Clients (t)": [f"{s['survivors']}/{s['participants']} (t={s['threshold']})" for _, s in rows],
            "Keys": [format_bytes(s["bytes_keys"]) for _, s in rows],
            "Shares": [format_bytes(s["bytes_shares"]) for _, s in rows],
            "Masked vectors": [format_bytes(s["bytes_masked"]) for _, s in rows],
            "Unmasking": [format_bytes(s["bytes_unmasking"]) for _, s in rows],
            "Dropouts unmasked": [s["dropouts_recovered"] for _, s in rows],
            "Crypto s": [round(s["crypto_seconds"], 3) for _, s in rows],
            "Masking s": [round(s["mask_seconds"], 3) for _, s in rows],
        }
    )


def skipped_rounds(rounds: pd.DataFrame) -> pd.DataFrame:
    """Round and reason of every round whose model was not updated."""
    if "skipped" not in rounds:
        return pd.DataFrame(columns=["Round", "Reason"])
    rows = rounds[rounds["skipped"] != ""]
    return pd.DataFrame({"Round": rows["round"].to_numpy(), "Reason": rows["skipped"].to_numpy()})


def render_federation(experiment: ExperimentSummary, rounds: pd.DataFrame, clients: pd.DataFrame, where: str) -> None:
    """The panel, under the run's charts; nothing when no part of it applies."""
    figures = federation_figures(experiment, clients)
    metrics = federation_metrics(experiment, rounds, clients)
    skipped = skipped_rounds(rounds)
    error = (experiment.personalization or {}).get("error")
    secure = secure_aggregation_table(rounds)
    if not (figures or metrics or not skipped.empty or error or not secure.empty):
        return
    st.markdown("##### :material/hub: Federation")
    for column, (label, value, delta, help_text) in zip(st.columns(max(len(metrics), 5)), metrics):
        column.metric(label, value, delta, border=True, help=help_text)  # at most 6: one row
    if error:
        st.warning(f"Personalization failed: {error}", icon=":material/person_off:")
    if not skipped.empty:
        st.caption("Rounds in which the global model was not updated")
        st.dataframe(skipped, hide_index=True, key=f"{where}-skipped", height=min(38 + 35 * len(skipped), 220))
    if not secure.empty:
        st.caption(":material/lock: Secure aggregation: the server saw only the sum; what the protocol cost per round")
        st.dataframe(secure, hide_index=True, key=f"{where}-secagg", height=min(38 + 35 * len(secure), 250))
    names = list(figures)
    for start in range(0, len(names), 2):
        for column, name in zip(st.columns(2), names[start : start + 2]):
            column.plotly_chart(figures[name], key=f"{where}-{name}", config={"displaylogo": False})
