"""The page follows the browser's colour scheme: with `prefers-color-scheme: dark` Streamlit draws its dark
theme (with the project's accent colour), with light its light one, and a chart as drawn has a paper of the
page's shade and a title that reads on it. Only a browser shows this (AppTest runs no CSS). Streamlit's chart
theme sets those colours as drawn; the figures themselves name none either (tests/test_page_charts.py), so they
also read where they are shown without it. Saves docs/dark-theme.png. Needs /usr/bin/chromium (test_browser.py).

Before `.streamlit/config.toml` set the accent under [theme.light] and [theme.dark], its one [theme] option made
a single custom light theme and the page stayed white in a dark browser: this test failed then."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import test_browser
from test_browser import CHROMIUM, CHROMIUM_ARGS, REPO, need_chromium

from database import ExperimentStore
from experiment_config import ExperimentConfig

server_url = test_browser.server_url  # the fixture: `streamlit run main.py` on a free port, stopped after

DARK_SCREENSHOT = REPO / "docs" / "dark-theme.png"
BACKGROUND = "() => getComputedStyle(document.querySelector('[data-testid=stApp]')).backgroundColor"
# The first chart's paper (Plotly's `rect.bg`) and its title's text colour, as drawn.
CHART_COLOURS = """() => { const chart = document.querySelector('.js-plotly-plot');
    const paper = getComputedStyle(chart.querySelector('rect.bg'));  // Plotly: colour and opacity apart
    const [r, g, b] = paper.fill.match(/[\\d.]+/g);
    return [`rgba(${r}, ${g}, ${b}, ${paper.fillOpacity})`, getComputedStyle(chart.querySelector('.gtitle')).fill]; }"""


def luminance(css_color: str, under: str = "rgb(0, 0, 0)") -> float:
    """Relative luminance (0 black … 1 white) of an `rgb(r, g, b)` / `rgba(r, g, b, a)` colour drawn over
    `under` (a transparent paper shows the page)."""
    *rgb, alpha = [float(value) for value in re.findall(r"[\d.]+", css_color)] + [1.0]
    if len(rgb) == 4:  # rgba: the fourth number was the alpha
        *rgb, alpha = rgb
    below = [float(value) for value in re.findall(r"[\d.]+", under)[:3]]
    red, green, blue = (alpha * value + (1 - alpha) * base for value, base in zip(rgb[:3], below))
    return (0.2126 * red + 0.7152 * green + 0.0722 * blue) / 255


def page_colours(url: str, scheme: str, screenshot: Path | None = None) -> tuple[str, str, str]:
    """(the app's background, the first chart's paper, its title's colour) in headless Chromium told the system
    prefers `scheme`."""
    need_chromium()
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900}, color_scheme=scheme)
            page.goto(url)
            expect(page.locator(".st-key-start button")).to_be_visible(timeout=90_000)
            page.locator(".js-plotly-plot .gtitle").first.wait_for(timeout=90_000)
            if screenshot is not None:
                page.screenshot(path=str(screenshot))
            return page.evaluate(BACKGROUND), *page.evaluate(CHART_COLOURS)
        finally:
            browser.close()


@pytest.fixture
def stored_run(tmp_path: Path) -> None:
    """One finished run in the server's database (test_browser's fixture puts it at tmp_path), so charts show."""
    store = ExperimentStore(f"sqlite:///{tmp_path / 'experiments.db'}")
    config = ExperimentConfig.from_dict(
        {"model": {"name": "mlp"}, "federation": {"rounds": 2, "num_clients": 2, "clients_per_round": 2}}
    )
    experiment_id = store.create_experiment(config.to_dict(), name="dark check")
    for number in (1, 2):
        store.record_round(experiment_id, {
            "round": number, "accuracy": 0.5 + 0.2 * number, "loss": 1.0 / number, "seconds": 1.0,
            "bytes_up": 10, "bytes_down": 10, "clients": [{"id": 0, "num_examples": 5, "steps": 1, "loss": 0.4}],
        })  # fmt: skip
    store.finish(experiment_id, "completed", final={"accuracy": 0.9, "loss": 0.5})
    store.engine.dispose()


def test_the_page_is_dark_when_the_browser_prefers_dark_and_light_when_it_prefers_light(stored_run, server_url):
    dark, dark_paper, dark_title = page_colours(server_url, "dark", screenshot=DARK_SCREENSHOT)
    light, light_paper, light_title = page_colours(server_url, "light")
    assert luminance(dark) < 0.2 and luminance(dark_paper, under=dark) < 0.2, (dark, dark_paper)
    assert luminance(dark_title) > 0.6, dark_title  # light text on the dark chart
    assert luminance(light) > 0.8 and luminance(light_paper, under=light) > 0.8, (light, light_paper)
    assert luminance(light_title) < 0.4, light_title
