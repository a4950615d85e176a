"""The dashboard in a real browser (headless Chromium) against a real Postgres holding the seed data:
each page loads with no console error and no request leaving the dashboard's own address, and its
charts and tables show the values the seed wrote."""

from __future__ import annotations

from datetime import timedelta

import pytest
import sqlalchemy as sa
from pydantic import SecretStr
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from tests.conftest import free_port
from tests.dashboard import seed as seeddata

TIMEOUT = 30


def open_page(browser, url: str, page: str) -> None:
    browser.get(url)
    WebDriverWait(browser, TIMEOUT).until(lambda d: d.find_elements(By.ID, f"{page}-status"))


def graph(browser, graph_id: str) -> dict:
    """The figure a dcc.Graph drew: its traces' x/y and its layout's shapes, as Plotly holds them."""
    WebDriverWait(browser, TIMEOUT).until(
        lambda d: d.execute_script(f"return !!document.querySelector('#{graph_id} .js-plotly-plot')"))
    return browser.execute_script(f"""
        const plot = document.querySelector('#{graph_id} .js-plotly-plot');
        return {{traces: plot.data.map(t => ({{name: t.name, x: t.x, y: t.y}})),
                 shapes: (plot.layout.shapes || []).map(s => ({{x0: s.x0, x1: s.x1}})),
                 title: plot.layout.title && plot.layout.title.text}};""")


def trace(figure: dict, name: str) -> list:
    return next(t for t in figure["traces"] if t["name"] == name)["y"]


def assert_clean(browser, base: str) -> None:
    """No console error, and every resource the page loaded came from the dashboard itself."""
    errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert errors == [], errors
    resources = browser.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
    assert resources and all(r.startswith(base) for r in resources), [r for r in resources if not r.startswith(base)]


def rows(browser, table_id: str) -> list[list[str]]:
    """The cells' text of a table, read in one script (a live refresh may replace the table between reads)."""
    WebDriverWait(browser, TIMEOUT).until(lambda d: d.find_elements(By.ID, table_id))
    return browser.execute_script(f"""
        return Array.from(document.querySelectorAll('#{table_id} tr'))
            .map(tr => Array.from(tr.querySelectorAll('td')).map(td => td.innerText.trim()))
            .filter(cells => cells.length);""")


def test_market_page_shows_the_trend_the_movers_and_the_firing_alerts(served, browser, screenshots):
    base, _, seeded, _ = served
    open_page(browser, base + "/", "market")
    figure = graph(browser, "market-trend")
    shares = [round(s, 3) for s in trace(figure, "negative share") if s is not None]
    volumes = trace(figure, "documents")
    # 30 days of hourly market windows: the surge hours at 36/110, the others at 20/100; the old model's
    # 999-document window is not among them.
    assert shares.count(round(36 / 110, 3)) == seeddata.SURGE_HOURS and set(shares) == {round(36 / 110, 3), 0.2}
    assert 999 not in volumes and set(volumes) == {100, 110}
    movers = rows(browser, "movers-table")
    assert movers[0][:2] == ["ticker ACME", str(6 * 30 + 18 * 20)] and movers[0][4].startswith("+")
    firing = rows(browser, "firing-table")
    assert [r[:2] for r in firing] == [["ticker-negative-share", "ticker ACME"]] and firing[0][4] == "1.5e-07"
    browser.save_screenshot(str(screenshots / "dashboard-market.png"))
    assert_clean(browser, base)

    # The 1-minute view of the same page: the 180 minute windows of the last 3 hours.
    browser.execute_script("Array.from(document.querySelectorAll('.widths a')).find(a => a.innerText === '1m').click()")
    WebDriverWait(browser, TIMEOUT).until(lambda d: "1m windows" in (graph(d, "market-trend")["title"] or ""))
    assert len(trace(graph(browser, "market-trend"), "documents")) == 180
    assert_clean(browser, base)


def test_ticker_page_shades_its_episode_and_lists_documents_with_evidence(served, browser, screenshots):
    base, _, seeded, _ = served
    open_page(browser, base + "/scope?dimension=ticker&key=ACME", "scope")
    figure = graph(browser, "scope-trend")
    assert [round(s, 3) for s in trace(figure, "negative share")].count(0.6) == seeddata.SURGE_HOURS
    # The firing episode shaded from its first window on.
    assert len(figure["shapes"]) == 1
    assert figure["shapes"][0]["x0"].startswith(seeded.acme_window.strftime("%Y-%m-%dT%H:%M"))
    documents = rows(browser, "documents-table")  # newest first
    top = documents[1]
    assert top[1].startswith(seeddata.TOP_TITLE) and "recalls 2 million widgets" in top[1]
    assert top[4] == "negative" and top[5] == "negative" and top[7] == "recalls, fires, fall"
    hrefs = browser.execute_script(
        "return Array.from(document.querySelectorAll('#documents-table a')).filter(a => a.innerText === arguments[0])"
        ".map(a => [a.href, a.target])", seeddata.TOP_TITLE)
    assert hrefs == [[seeddata.TOP_URL, "_blank"]]
    assert [d[1].split(" — ")[0] for d in documents] == [
        "Regulator opens probe into ACME widgets", seeddata.TOP_TITLE, "ACME fans queue for new phone"]
    assert documents[0][7] == "-"  # evidence NULL: shown as none, not as an error
    # The document the entity head never scored: its own sentiment stands in, and says so.
    assert documents[2][4] == "positive (document's)"
    # Sentiment towards ACME per day for the last 7 days, from its daily windows (480 documents, 48 negative).
    towards = graph(browser, "scope-towards")
    by_name = {t["name"]: t["y"] for t in towards["traces"]}
    assert by_name["negative"] == [48] * 7 and by_name["positive"] == [216] * 7 and by_name["neutral"] == [216] * 7
    browser.save_screenshot(str(screenshots / "dashboard-ticker.png"))
    assert_clean(browser, base)

    # The BOLT story: positive as a document, negative towards BOLT.
    open_page(browser, base + "/scope?dimension=ticker&key=bolt", "scope")
    bolt = rows(browser, "documents-table")[0]
    assert (bolt[4], bolt[5]) == ("negative", "positive")
    assert_clean(browser, base)


def test_alerts_page_lists_history_and_one_episodes_events_and_deliveries(served, browser, screenshots):
    base, _, _, _ = served
    open_page(browser, base + "/alerts", "alerts")
    history = rows(browser, "alerts-table")
    assert [(r[0], r[3]) for r in history] == [("firing", "ticker ACME"), ("resolved", "ticker BOLT")]
    acme = history[0]
    assert acme[7] == "1.5e-07" and acme[8] == "60.0% vs 10.0%" and acme[9] == "1/2"
    assert seeddata.TOP_TITLE in acme[10]
    browser.execute_script(  # a client-side link (dcc.Link), clicked in the page
        "document.querySelector('#alerts-table a[href=\"/alerts?episode=' + arguments[0] + '\"]').click()",
        seeddata.ACME_EPISODE)
    WebDriverWait(browser, TIMEOUT).until(lambda d: d.find_elements(By.ID, "deliveries-table"))
    assert [r[0] for r in rows(browser, "events-table")] == ["pending", "firing", "notified"]
    deliveries = rows(browser, "deliveries-table")
    assert [(d[0], d[4], d[6], d[8]) for d in deliveries] == [("hook", "pending", "no", "connection refused"),
                                                              ("mail", "sent", "yes", "")]
    browser.save_screenshot(str(screenshots / "dashboard-alerts.png"))
    assert_clean(browser, base)


def test_pages_refresh_live_without_a_reload(served, browser):
    base, _, seeded, owner = served
    open_page(browser, base + "/scope?dimension=ticker&key=ACME", "scope")
    browser.execute_script("window.__not_reloaded = true;")
    with owner.begin() as conn:
        conn.execute(sa.text(seeddata.WINDOWS_SQL), [seeddata._window(
            "ticker", "ACME", seeded.hour + timedelta(hours=1), 3600, 77, 7)])
    WebDriverWait(browser, TIMEOUT).until(lambda d: 77 in trace(graph(d, "scope-trend"), "documents"))
    assert browser.execute_script("return window.__not_reloaded === true")
    assert_clean(browser, base)


def test_a_database_outage_is_said_on_the_page(seeded_db, browser):
    import threading

    import waitress

    from dashboard.app import create_app

    settings, _, _ = seeded_db
    dead = sa.engine.make_url(settings.analyst_database_url.get_secret_value()).set(port=free_port())
    engine = sa.create_engine(dead)
    server = waitress.create_server(create_app(settings, engine=engine).server, host="127.0.0.1", port=free_port())
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        browser.get(f"http://127.0.0.1:{server.effective_port}/")
        WebDriverWait(browser, TIMEOUT).until(lambda d: d.find_elements(By.ID, "page-error"))
        message = browser.find_element(By.ID, "page-error").text
        assert message.startswith("Postgres is not answering") and "password" not in message.lower()
    finally:
        server.close()
        engine.dispose()


@pytest.mark.parametrize("path", ["/nowhere"])
def test_an_unknown_page_says_so(served, browser, path):
    base, _, _, _ = served
    browser.get(base + path)
    WebDriverWait(browser, TIMEOUT).until(lambda d: "No page at /nowhere" in d.page_source)


def test_inbox_page_lists_what_the_receivers_caught(served, browser, screenshots):
    from stack.receivers import Receivers
    from tests.stack.test_receivers import SECRET, send_mail, send_webhook

    base, settings, _, _ = served
    settings = settings.model_copy(update={"receivers_smtp_port": free_port(), "receivers_webhook_port": free_port(),
                                           "alerts_webhook_secret": SecretStr(SECRET)})
    with Receivers(settings):
        send_mail(settings, "[FIRING] ticker-negative-share ACME")
        assert send_webhook(settings, SECRET).status_code == 204
    open_page(browser, base + "/inbox", "inbox")
    listed = sorted((r[0], r[2], r[3], r[4]) for r in rows(browser, "inbox-table"))
    assert listed == [("mail", "[FIRING] ticker-negative-share ACME", "desk@example.com, hidden@example.com", "-"),
                      ("webhook", "[firing] ticker-negative-share ticker=ACME", "/hook", "yes")]
    browser.save_screenshot(str(screenshots / "dashboard-inbox.png"))
    assert_clean(browser, base)
