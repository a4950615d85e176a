"""Dashboard fixtures: a seeded scratch database, the app served by waitress (as `finpulse
dashboard` serves it) and a real headless Chromium driven by selenium (Debian's chromium and
chromium-driver)."""

from __future__ import annotations

import os
import shutil
import threading
from pathlib import Path

import pytest

from finpulse import db
from tests.conftest import free_port, scratch_database
from tests.dashboard import seed as seeddata

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"


@pytest.fixture(scope="module")
def seeded_db(stack, tmp_path_factory):
    """A scratch database with the seed data set; its settings' HOME is a fresh folder (for the inbox)."""
    home = tmp_path_factory.mktemp("dashboard-home")
    with scratch_database(stack) as settings:
        owner = db.engine(settings)
        seeded = seeddata.seed(owner)
        yield settings.model_copy(update={"home": home}), seeded, owner
        owner.dispose()


@pytest.fixture(scope="module")
def served(seeded_db):
    """The dashboard on a free port with a 1 s refresh; yields (base URL, settings, Seeded, owner engine)."""
    import waitress

    from dashboard.app import create_app

    settings, seeded, owner = seeded_db
    settings = settings.model_copy(update={"dashboard_refresh_seconds": 1.0})
    server = waitress.create_server(create_app(settings).server, host="127.0.0.1", port=free_port(), threads=8)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.effective_port}", settings, seeded, owner
    server.close()
    thread.join(timeout=10)


@pytest.fixture(scope="module")
def browser():
    if not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()):
        pytest.fail("chromium and chromium-driver are missing: bash stack/bootstrap-system.sh installs them")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1400,1300",
                "--no-first-run", "--disable-extensions", "--disable-background-networking"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


@pytest.fixture(scope="session")
def screenshots(tmp_path_factory) -> Path:
    """Where the browser tests save their screenshots (FINPULSE_TEST_SCREENSHOTS to keep them)."""
    folder = os.environ.get("FINPULSE_TEST_SCREENSHOTS")
    path = Path(folder) if folder else tmp_path_factory.mktemp("screenshots")
    path.mkdir(parents=True, exist_ok=True)
    return path
