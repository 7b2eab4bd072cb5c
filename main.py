"""Federated Privacy Lab — the Streamlit page.

    streamlit run main.py        # DATABASE_URL picks the database, FPL_DATA_DIR the data

UI only. The sidebar form builds an `ExperimentConfig`; Start stores the experiment
and launches a worker process (`runs.workers.launch_worker`) that runs it and writes every
round to the database. The page never trains: fragments poll the database, so a
reload or a second tab shows the same run. Tabs: Live (the run in progress or just
started), History (every experiment: charts, config, re-run, a baseline without
privacy, export, delete; the privacy–utility trade-off across runs), Compare
(overlaid curves of several experiments) and Score (a finished NGSS run's final model
applied to new responses). A target-ε sweep stores one experiment per value and runs
them in sequence in one worker. NGSS rubric scoring (synthetic or uploaded CSV data,
text models with LoRA) is set in the sidebar's "NGSS rubric scoring" group.

This file sets up the page, the header and the tabs; the parts live in `app_pages/`:
`sidebar.py` (the form) with `config_fields.py` (what it asks) and `csv_upload.py` (the
lab's CSV files, checked and saved), `live.py`, `history.py`, `compare.py` and `score.py`
(the tabs; History's filters in `history_filters.py`), `run_view.py` (one experiment) with
`federation.py` (its clients, attackers, compression and personalization), `labels.py` (its
name and tags), `round_progress.py` (where a running round stands), `import_summary.py` (what an
imported CSV brought in) and `common.py` (store, worker launch, formatting). The theme follows
the browser's light or dark setting (`.streamlit/config.toml`).

Imports stay light (no torch) so the page is interactive within seconds; the sidebar's need no
pandas, and the tabs' are imported once it is drawn.
"""

from __future__ import annotations

from pathlib import Path

import streamlit as st
from sqlalchemy.engine import make_url

from app_pages.common import TABS, absolute_db_url, get_store, list_experiments
from app_pages.sidebar import render_sidebar
from database import DatabaseCorrupted, resolve_url

# Streamlit's default top padding (6rem) pushes the charts below the fold of a laptop screen.
COMPACT_TOP = "<style>[data-testid='stMainBlockContainer'] { padding-top: 2.5rem; }</style>"


def main() -> None:
    st.set_page_config(page_title="Federated Privacy Lab", page_icon=":material/shield_lock:", layout="wide")
    url = absolute_db_url(resolve_url())  # the worker runs in the repository directory
    try:
        store = get_store(url)
    except DatabaseCorrupted as error:  # a damaged SQLite file: say so, touch nothing
        st.error(str(error))
        st.stop()
    render_sidebar(store)  # before the tabs: Start switches to the Live tab
    # The tabs' modules (pandas, ~0.4 s to import) load after the sidebar is drawn: Start is usable sooner.
    from app_pages.compare import render_compare
    from app_pages.history import render_history
    from app_pages.live import render_live
    from app_pages.score import render_score

    experiments = list_experiments(store)
    st.html(COMPACT_TOP)
    st.title(":material/shield_lock: Federated Privacy Lab")
    parsed = make_url(url)
    database = Path(parsed.database).name if parsed.get_backend_name() == "sqlite" and parsed.database else parsed.host
    st.caption(
        f"Federated learning experiments with differential privacy · database `{database}`",
        help=f"`{parsed.render_as_string(hide_password=True)}` (set DATABASE_URL to change it)",
    )
    if flash := st.session_state.pop("flash", None):
        getattr(st, flash[0])(flash[1])
    live, history, compare, score = st.tabs(TABS, key="view", on_change="rerun")
    with live:
        if live.open:
            render_live(store, experiments)
    with history:
        if history.open:
            render_history(store, experiments)
    with compare:
        if compare.open:
            render_compare(store, experiments)
    with score:
        if score.open:
            render_score(store, experiments)


main()
