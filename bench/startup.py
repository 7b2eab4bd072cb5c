"""Page start-up: seconds from `streamlit run main.py` until the sidebar's Start button can be clicked.

    python -m bench.startup [--repeats 3] [--watcher-cost]

Drives Debian's Chromium (`/usr/bin/chromium`) with Playwright; the first repeat warms
the disk cache, so the median of the rest is the "warm machine" number. Target: <= 3 s.

`--watcher-cost`: also start the page with Streamlit's file watcher on (`fileWatcherType =
"auto"`, Streamlit's default), interleaved with the project's setting ("none",
`.streamlit/config.toml`), and print both medians and their ratio. The watcher watches
main.py's folder recursively, and so every folder under it, `.venv`'s thousands included.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from playwright.sync_api import sync_playwright

REPO = Path(__file__).resolve().parents[1]
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def seconds_to_interactive(browser, database_url: str, *options: str) -> float:
    port = free_port()
    env = {**os.environ, "DATABASE_URL": database_url}
    started = time.perf_counter()
    server = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", "main.py", "--server.port", str(port), "--server.headless", "true",
         *options],
        cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        page = browser.new_page()
        deadline = time.monotonic() + 60
        while True:  # the server needs a moment before it accepts connections
            try:
                page.goto(f"http://localhost:{port}", timeout=2_000)
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        page.get_by_role("button", name="Start").wait_for(state="visible", timeout=60_000)
        elapsed = time.perf_counter() - started
        page.close()
        return elapsed
    finally:
        server.terminate()
        server.wait(timeout=10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--watcher-cost", action="store_true", help="also time the page with the file watcher on")
    args = parser.parse_args()
    watching = ("--server.fileWatcherType", "auto")
    with tempfile.TemporaryDirectory() as folder, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", headless=True, args=CHROMIUM_ARGS)
        url = f"sqlite:///{folder}/startup.db"
        times, watched = [], []
        for _ in range(args.repeats):
            times.append(seconds_to_interactive(browser, url))
            if args.watcher_cost:
                watched.append(seconds_to_interactive(browser, url, *watching))
        browser.close()
    print(f"start-up to interactive: {', '.join(f'{t:.1f}' for t in times)} s; warm median {warm(times):.1f} s "
          "(target <= 3 s)")  # fmt: skip
    if watched:
        print(f"with the file watcher on: {', '.join(f'{t:.1f}' for t in watched)} s; warm median "
              f"{warm(watched):.1f} s ({warm(watched) / warm(times):.2f}x)")  # fmt: skip


def warm(times: list[float]) -> float:
    """The median after the first (disk-cache warming) repeat."""
    return statistics.median(times[1:]) if len(times) > 1 else times[0]


if __name__ == "__main__":
    main()
