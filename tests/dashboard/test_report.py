"""`finpulse report` on the seed data in real Postgres, run as the CLI runs it."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import timedelta
from html.parser import HTMLParser

import pytest
from PIL import Image

from tests.dashboard import seed as seeddata


class _Page(HTMLParser):
    def __init__(self):
        super().__init__()
        self.images: list[str] = []
        self.links: dict[str, str] = {}
        self._href: str | None = None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "img":
            self.images.append(attrs["src"])
        if tag == "a":
            self._href = attrs.get("href")

    def handle_data(self, data):
        if self._href is not None and data.strip():
            self.links[data.strip()] = self._href

    def handle_endtag(self, tag):
        if tag == "a":
            self._href = None


def _report(settings, out, *args) -> subprocess.CompletedProcess:
    env = {**os.environ, "FINPULSE_DATABASE_URL": settings.database_url.get_secret_value(),
           "FINPULSE_ANALYST_DATABASE_URL": settings.analyst_database_url.get_secret_value()}
    return subprocess.run([sys.executable, "-m", "finpulse", "report", "--out", str(out), *args],
                          env=env, capture_output=True, text=True, timeout=120)


def test_report_page_links_its_charts_and_shows_the_top_document(seeded_db, tmp_path):
    settings, seeded, _ = seeded_db
    since = (seeded.hour - timedelta(days=2)).isoformat()
    until = (seeded.hour + timedelta(hours=1)).isoformat()
    out = tmp_path / "report"
    done = _report(settings, out, "--since", since, "--until", until)
    assert done.returncode == 0, done.stderr
    page = out / "report.html"
    assert done.stdout.strip() == str(page)
    html = page.read_text()
    parsed = _Page()
    parsed.feed(html)
    # Market, tickers, topics, and one chart for the scope with an episode in the period (ACME; BOLT's is older).
    assert parsed.images == ["market.png", "tickers.png", "topics.png", "episode-1.png"]
    for name in parsed.images:
        with Image.open(out / name) as image:
            image.load()  # decodes the whole PNG
            assert image.format == "PNG" and image.width > 400 and image.height > 100
    assert "ticker ACME, 1h windows (alert episodes shaded)" in html
    # The most negative document of the period first, linked, with the start of its text and its words.
    assert parsed.links[seeddata.TOP_TITLE] == seeddata.TOP_URL
    assert html.index(seeddata.TOP_TITLE) < html.index("Regulator opens probe")
    assert "ACME Corp recalls 2 million widgets" in html and "recalls, fires, fall" in html
    assert "Markets steady" not in html  # neutral: not among the negative documents
    assert "1.5e-07" in html  # the firing episode with its p-value


def test_report_refuses_an_inverted_period_in_one_line(seeded_db, tmp_path):
    settings, _, _ = seeded_db
    done = _report(settings, tmp_path / "r", "--since", "2026-11-02", "--until", "2026-11-01")
    assert done.returncode != 0 and "is not after --since" in done.stderr
    assert "Traceback" not in done.stderr and not (tmp_path / "r").exists()
    done = _report(settings, tmp_path / "r", "--since", "yesterday")
    assert done.returncode != 0 and "not an ISO 8601 time" in done.stderr


@pytest.mark.parametrize("hours,width", [(3, "1m"), (24 * 7, "1h"), (24 * 30, "1d")])
def test_report_width_follows_the_period(hours, width):
    from datetime import datetime, timezone

    from dashboard.report import report_width

    until = datetime(2026, 11, 1, tzinfo=timezone.utc)
    assert report_width(until - timedelta(hours=hours), until) == width
