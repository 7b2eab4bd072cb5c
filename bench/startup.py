"""Page start-up: seconds from `streamlit run main.py` until the sidebar's Start button can be clicked.

    python -m bench.startup [--repeats 3]

Drives Debian's Chromium (`/usr/bin/chromium`) with Playwright; the first repeat warms
the disk cache, so the median of the rest is the "warm machine" number. Target: <= 5 s.
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


def seconds_to_interactive(browser, database_url: str) -> float:
    port = free_port()
    env = {**os.environ, "DATABASE_URL": database_url}
    started = time.perf_counter()
    server = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", "main.py", "--server.port", str(port), "--server.headless", "true"],
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
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", headless=True, args=CHROMIUM_ARGS)
        times = [seconds_to_interactive(browser, f"sqlite:///{folder}/startup.db") for _ in range(args.repeats)]
        browser.close()
    warm = statistics.median(times[1:]) if len(times) > 1 else times[0]
    print(f"start-up to interactive: {', '.join(f'{t:.1f}' for t in times)} s; warm median {warm:.1f} s (target <= 5 s)")


if __name__ == "__main__":
    main()
