"""Evaluations against a real Postgres (fresh database), windows written straight into the table.

The evaluator runs in-process with a fixed "now"; delivery goes to a real SMTP server and a
real HTTP receiver through the outbox (Dispatcher), exactly as the service does it.
"""

from __future__ import annotations

import json
import re
import time
from datetime import datetime, timedelta, timezone

import pytest
import sqlalchemy as sa

from alerts.config import load
from alerts.delivery import Dispatcher
from alerts.engine import Evaluator
from alerts.notify import verify
from finpulse import db
from tests.alerts.conftest import (SECRET, add_documents, hour_floor, surge_series, wait_for, write_rules,
                                   write_windows)

NOW = datetime(2026, 11, 20, 12, 0, 30, tzinfo=timezone.utc)
END = hour_floor(NOW)  # the last closed window ends here (settle 0)


@pytest.fixture
def engine(alert_settings):
    eng = db.engine(alert_settings)
    yield eng
    eng.dispose()


def _evaluator(engine, settings, rules, now=NOW):
    return Evaluator(engine, load(rules, settings), settings, now=lambda: now)


def _deliver_all(engine, config, settings, expect: int):
    dispatcher = Dispatcher(engine, config, settings, holder="test")
    try:
        def done():
            dispatcher.dispatch()
            with engine.connect() as conn:
                return conn.execute(sa.text("SELECT count(*) FROM alert_outbox WHERE state = 'sent'")).scalar() >= expect
        wait_for(done, timeout=60, what=f"{expect} sent messages")
    finally:
        dispatcher.drain(5)


def _rows(engine, sql, **params):
    with engine.connect() as conn:
        return conn.execute(sa.text(sql), params).all()


def test_empty_window_table_raises_nothing(engine, alert_settings, tmp_path, hook):
    report = _evaluator(engine, alert_settings, write_rules(tmp_path / "r.yaml", port=hook.port)).run_once()
    assert report.skipped and not report.transitions and not report.messages
    assert _rows(engine, "SELECT count(*) FROM alerts")[0][0] == 0


def test_quiet_then_surge_fires_once_per_route_then_resolves_once(engine, alert_settings, tmp_path, hook, mailbox):
    rows = surge_series(END, key="ACME") + surge_series(END, key="QUIET", surge_at=())
    write_windows(engine, rows)
    surge_start = END - timedelta(hours=9)
    add_documents(engine, key="ACME", start=surge_start + timedelta(hours=1))  # the window that fires
    rules = write_rules(tmp_path / "r.yaml", port=hook.port)
    report = _evaluator(engine, alert_settings, rules).run_once()
    events = [(e, k) for e, _, k, _ in report.transitions]
    assert events == [("pending", "ACME"), ("firing", "ACME"), ("resolved", "ACME")]
    assert sorted((m.receiver, m.status) for m in report.messages) == [
        ("hook", "firing"), ("hook", "resolved"), ("mail", "firing"), ("mail", "resolved")]
    # A second evaluation at the same time changes nothing and queues nothing.
    again = _evaluator(engine, alert_settings, rules).run_once()
    assert again.windows == 0 and not again.messages

    config = load(rules, alert_settings)
    _deliver_all(engine, config, alert_settings, expect=4)
    received = hook.unique()
    assert len(hook.requests) == 2 and len(received) == 2
    statuses = sorted(r.json["status"] for r in received.values())
    assert statuses == ["firing", "resolved"]
    for r in received.values():
        payload = verify(SECRET, r.body, r.headers)  # the reference library checks the signature
        assert payload["version"] == "4" and payload["receiver"] == "hook"
        alert = payload["alerts"][0]
        assert set(alert) >= {"status", "labels", "annotations", "startsAt", "endsAt", "fingerprint",
                              "generatorURL", "evidence"}
        assert alert["labels"]["key"] == "ACME" and alert["labels"]["alertname"] == "ticker-share"
    firing = next(r.json for r in received.values() if r.json["status"] == "firing")
    evidence = firing["alerts"][0]["evidence"]
    assert evidence["window"]["figures"]["n_negative"] == 40 and evidence["window"]["p_value"] < 0.001
    # baseline: the 24 windows before the firing one (23 quiet 8/40 + the first surge window 40/60), smoothed
    assert evidence["window"]["figures"]["baseline_share"] == pytest.approx((23 * 8 + 40 + 1) / (23 * 40 + 60 + 3))
    docs = evidence["documents"]
    assert [d["first_story"] for d in docs] == [True, True, False, False]  # first stories first
    assert docs[0]["p_negative"] >= docs[1]["p_negative"]
    assert len(mailbox.messages) == 2
    subjects = sorted(m["Subject"] for m in mailbox.messages)
    assert "FIRING" in subjects[0] and "RESOLVED" in subjects[1]
    mail = next(m for m in mailbox.messages if "FIRING" in m["Subject"])
    parts = {p.get_content_type(): p.get_content() for p in mail.walk() if not p.is_multipart()}
    assert "ACME slumps" in parts["text/plain"] and "<a href=" in parts["text/html"]
    assert mail["Message-ID"].startswith("<msg_")
    # Full history in Postgres.
    history = [r.event for r in _rows(engine, "SELECT event FROM alert_events ORDER BY id")]
    assert history.count("notified") == 4 and history[:2] == ["pending", "firing"]


def test_a_silence_mutes_and_is_recorded(engine, alert_settings, tmp_path, hook):
    write_windows(engine, surge_series(END, key="ACME", surge_at=(2, 1, 0)))
    with engine.begin() as conn:
        conn.execute(sa.text("INSERT INTO alert_silences (dimension, key_pattern, starts_at, ends_at, author, comment) "
                             "VALUES ('ticker', 'AC*', :s, :e, 'ops', 'known story')"),
                     {"s": NOW - timedelta(hours=1), "e": NOW + timedelta(hours=1)})
    rules = write_rules(tmp_path / "r.yaml", port=hook.port)
    report = _evaluator(engine, alert_settings, rules).run_once()
    assert ("firing", "ticker-share", "ACME") in [(e, r, k) for e, r, k, _ in report.transitions]
    assert not report.messages
    assert ("silenced", "ticker-share", "ACME") in report.muted
    assert _rows(engine, "SELECT count(*) FROM alert_events WHERE event = 'silenced'")[0][0] == 1
    # Evaluating again while the silence lasts records nothing new (no history spam).
    again = _evaluator(engine, alert_settings, rules, now=NOW).run_once()
    assert ("silenced", "ticker-share", "ACME") in again.muted and not again.messages
    assert _rows(engine, "SELECT count(*) FROM alert_events WHERE event = 'silenced'")[0][0] == 1
    # Once the silence is expired, the still-firing alert is notified at the next evaluation.
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE alert_silences SET expired_at = now()"))
    later = _evaluator(engine, alert_settings, rules, now=NOW).run_once()
    assert {(m.receiver, m.status) for m in later.messages} == {("hook", "firing"), ("mail", "firing")}


def test_a_market_wide_alert_inhibits_the_ticker_alerts_it_explains(engine, alert_settings, tmp_path, hook):
    rows = (surge_series(END, key="ACME", surge_at=(2, 1, 0))
            + surge_series(END, key="*", dimension="all", surge_at=(2, 1, 0), quiet=(400, 80), surge=(500, 330)))
    write_windows(engine, rows)
    report = _evaluator(engine, alert_settings, write_rules(tmp_path / "r.yaml", port=hook.port)).run_once()
    fired = {(r, k) for e, r, k, _ in report.transitions if e == "firing"}
    assert fired == {("ticker-share", "ACME"), ("market-share", "*")}
    notified = {a["labels"]["alertname"] for m in report.messages for a in m.payload["webhook"]["alerts"]}
    assert notified == {"market-share"}
    assert ("inhibited", "ticker-share", "ACME") in report.muted


def test_dry_run_changes_and_queues_nothing(engine, alert_settings, tmp_path, hook):
    write_windows(engine, surge_series(END, key="ACME", surge_at=(2, 1, 0)))
    rules = write_rules(tmp_path / "r.yaml", port=hook.port)
    report = _evaluator(engine, alert_settings, rules).run_once(dry_run=True)
    assert report.messages
    for table in ("alerts", "alert_outbox", "alert_cursors", "alert_events"):
        assert _rows(engine, f"SELECT count(*) FROM {table}")[0][0] == 0, table


def test_receiver_down_during_firing_is_delivered_once_after_it_returns(engine, alert_settings, tmp_path, hook):
    write_windows(engine, surge_series(END, key="ACME"))
    port = hook.port
    hook.stop()  # the receiver is down when the alert fires
    rules = write_rules(tmp_path / "r.yaml", port=port, routes="hook")
    config = load(rules, alert_settings)
    _evaluator(engine, alert_settings, rules).run_once()
    dispatcher = Dispatcher(engine, config, alert_settings, holder="test")
    try:
        wait_for(lambda: dispatcher.dispatch() is not None and _rows(
            engine, "SELECT count(*) FROM alert_deliveries WHERE NOT ok")[0][0] >= 3, what="failed attempts")
        failed = _rows(engine, "SELECT error FROM alert_deliveries WHERE NOT ok")
        assert all("ConnectError" in r.error for r in failed)
        assert _rows(engine, "SELECT count(*) FROM alert_outbox WHERE state = 'pending'")[0][0] == 2
        hook.port = port
        hook.start()
        wait_for(lambda: dispatcher.dispatch() is not None and _rows(
            engine, "SELECT count(*) FROM alert_outbox WHERE state = 'sent'")[0][0] == 2, what="delivery")
    finally:
        dispatcher.drain(5)
    assert sorted(r.json["status"] for r in hook.requests) == ["firing", "resolved"]
    assert len({r.id for r in hook.requests}) == 2


@pytest.mark.parametrize("failure", ["500", "timeout", "refused", "dns", "smtp-down"])
def test_failing_receivers_are_retried_and_recorded_never_lost(engine, alert_settings, tmp_path, hook, mailbox,
                                                               failure):
    settings = alert_settings
    port = hook.port
    routes = "hook"
    if failure == "500":
        hook.status = 500
    elif failure == "timeout":
        hook.delay = 3  # longer than the 1 s receiver timeout below
    elif failure == "refused":
        hook.stop()
    elif failure == "smtp-down":
        routes = "mail"
        settings = settings.model_copy(update={"alerts_smtp_port": port})  # nothing speaks SMTP there
        hook.stop()
    rules = write_rules(tmp_path / "r.yaml", port=port, routes=routes, timeout=1)
    if failure == "dns":
        rules.write_text(rules.read_text().replace("127.0.0.1", "alerts-receiver.invalid"))
    write_windows(engine, surge_series(END, key="ACME", surge_at=(2, 1, 0)))
    config = load(rules, settings)
    _evaluator(engine, settings, rules).run_once()
    dispatcher = Dispatcher(engine, config, settings, holder="test")
    try:
        wait_for(lambda: dispatcher.dispatch() is not None and _rows(
            engine, "SELECT count(*) FROM alert_deliveries WHERE NOT ok")[0][0] >= 2, what="two failed attempts")
    finally:
        dispatcher.drain(5)
    outbox = _rows(engine, "SELECT state, attempts, last_error, response_code FROM alert_outbox")
    assert len(outbox) == 1 and outbox[0].state == "pending" and outbox[0].attempts >= 2
    assert outbox[0].last_error
    if failure == "500":
        assert outbox[0].response_code == 500
    assert "whsec" not in outbox[0].last_error and SECRET not in outbox[0].last_error


def test_too_old_messages_are_marked_dead_not_deleted(engine, alert_settings, tmp_path, hook):
    hook.status = 500
    settings = alert_settings.model_copy(update={"alerts_delivery_max_age_seconds": 0.1})
    rules = write_rules(tmp_path / "r.yaml", port=hook.port, routes="hook")
    write_windows(engine, surge_series(END, key="ACME", surge_at=(2, 1, 0)))
    _evaluator(engine, settings, rules).run_once()
    time.sleep(0.2)
    dispatcher = Dispatcher(engine, load(rules, settings), settings, holder="test")
    try:
        wait_for(lambda: dispatcher.dispatch() is not None and _rows(
            engine, "SELECT count(*) FROM alert_outbox WHERE state = 'dead'")[0][0] == 1, what="dead message")
    finally:
        dispatcher.drain(5)
    assert _rows(engine, "SELECT last_error FROM alert_outbox")[0].last_error.endswith("500")


def test_a_slow_receiver_does_not_stall_the_others(engine, alert_settings, tmp_path, hook, mailbox):
    hook.delay = 30  # far beyond its timeout: every attempt hangs until the timeout
    rules = write_rules(tmp_path / "r.yaml", port=hook.port, timeout=30)
    write_windows(engine, surge_series(END, key="ACME"))
    config = load(rules, alert_settings)
    _evaluator(engine, alert_settings, rules).run_once()
    dispatcher = Dispatcher(engine, config, alert_settings, holder="test")
    try:
        dispatcher.dispatch()
        wait_for(lambda: hook.started.is_set(), what="the slow receiver to be called")
        # Mail (firing and resolved) goes out while the webhook is still hanging.
        wait_for(lambda: dispatcher.dispatch() is not None and len(mailbox.messages) == 2, what="mail")
        assert not hook.requests  # the slow receiver has not even answered yet
    finally:
        hook.delay = 0
        dispatcher.drain(1)


def test_repeat_interval_renotifies_a_long_firing_alert(engine, alert_settings, tmp_path, hook):
    write_windows(engine, surge_series(END, key="ACME", surge_at=tuple(range(0, 20))))
    rules = write_rules(tmp_path / "r.yaml", port=hook.port, routes="hook")
    rules.write_text(rules.read_text().replace("repeat_interval: 1d", "repeat_interval: 6h"))
    report = _evaluator(engine, alert_settings, rules).run_once()
    firing_messages = [m for m in report.messages if m.status == "firing"]
    assert len(firing_messages) >= 2
    by_episode: dict[str, list[int]] = {}
    for r in _rows(engine, "SELECT alert_id, seq FROM alert_notifications WHERE status = 'firing' ORDER BY seq"):
        by_episode.setdefault(r.alert_id, []).append(r.seq)
    assert all(seqs == list(range(len(seqs))) for seqs in by_episode.values())
    assert max(len(seqs) for seqs in by_episode.values()) >= 2  # a repeat of the same episode


def test_a_message_in_flight_is_not_claimed_again(engine, alert_settings, tmp_path, hook):
    hook.delay = 2.0  # still answering while the dispatcher scans the outbox several more times
    rules = write_rules(tmp_path / "r.yaml", port=hook.port, routes="hook", timeout=5)
    write_windows(engine, surge_series(END, key="ACME", surge_at=(2, 1, 0)))  # still firing: one message
    _evaluator(engine, alert_settings, rules).run_once()
    dispatcher = Dispatcher(engine, load(rules, alert_settings), alert_settings, holder="test")
    try:
        wait_for(lambda: dispatcher.dispatch() is not None and _rows(
            engine, "SELECT count(*) FROM alert_outbox WHERE state = 'sent'")[0][0] == 1, interval=0.1, what="sent")
    finally:
        dispatcher.drain(5)
    assert len(hook.requests) == 1
    assert _rows(engine, "SELECT attempts FROM alert_outbox")[0].attempts == 1


@pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")
@pytest.mark.parametrize("password,delivered", [("s3cret-pw", True), ("wrong-pw", False)])
def test_smtp_auth_and_the_password_never_reaches_logs_or_the_database(engine, alert_settings, tmp_path, hook,
                                                                        caplog, password, delivered):
    from tests.alerts.conftest import MailBox, free_port

    box = MailBox(free_port(), password="s3cret-pw").start()
    try:
        settings = alert_settings.model_copy(update={
            "alerts_smtp_port": box.port, "alerts_smtp_user": "alerts",
            "alerts_smtp_password": __import__("pydantic").SecretStr(password)})
        rules = write_rules(tmp_path / "r.yaml", port=hook.port, routes="mail")
        write_windows(engine, surge_series(END, key="ACME", surge_at=(2, 1, 0)))
        _evaluator(engine, settings, rules).run_once()
        dispatcher = Dispatcher(engine, load(rules, settings), settings, holder="test")
        caplog.set_level("DEBUG")
        try:
            wait_for(lambda: dispatcher.dispatch() is not None and _rows(
                engine, "SELECT count(*) FROM alert_deliveries")[0][0] >= 1, what="an attempt")
        finally:
            dispatcher.drain(5)
        assert (len(box.messages) == 1) is delivered
        if not delivered:
            # Refused login: recorded as a failed attempt, the message still pending for a retry.
            assert not _rows(engine, "SELECT ok FROM alert_deliveries")[0].ok
            assert _rows(engine, "SELECT state FROM alert_outbox")[0].state == "pending"
        stored = json.dumps([list(r) for r in _rows(engine, "SELECT * FROM alert_deliveries")], default=str)
        stored += json.dumps([list(r) for r in _rows(engine, "SELECT last_error, payload FROM alert_outbox")], default=str)
        assert password not in caplog.text and password not in stored
    finally:
        box.stop()


def test_a_slow_but_live_send_keeps_its_lease(engine, alert_settings, tmp_path, hook):
    # Each socket read is within the 1 s timeout, but the whole answer takes ~9 s, longer than
    # the first lease (timeout + 5 s): the sender renews it, so nobody sends the message again.
    hook.drip = 18
    rules = write_rules(tmp_path / "r.yaml", port=hook.port, routes="hook", timeout=1)
    write_windows(engine, surge_series(END, key="ACME", surge_at=(2, 1, 0)))
    _evaluator(engine, alert_settings, rules).run_once()
    dispatcher = Dispatcher(engine, load(rules, alert_settings), alert_settings, holder="test")
    try:
        wait_for(lambda: dispatcher.dispatch() is not None and _rows(
            engine, "SELECT count(*) FROM alert_outbox WHERE state = 'sent'")[0][0] == 1, interval=0.5, what="sent")
    finally:
        dispatcher.drain(15)
    assert len(hook.requests) == 1
    assert [r.ok for r in _rows(engine, "SELECT ok FROM alert_deliveries")] == [True]


def test_first_stories_only_counts_a_syndicated_story_once(engine, alert_settings, tmp_path, hook):
    # ACME: 40 negative documents an hour for 3 hours, but they are copies of 2 stories an hour.
    # BETA: the same volume, all first stories. Only BETA is a surge of negative first stories.
    rows = []
    for key, first in (("ACME", 2), ("BETA", 40)):
        for r in surge_series(END, key=key, quiet=(20, 3), surge=(60, 40), surge_at=(2, 1, 0)):
            surge = r["n_negative"] == 40
            r["n_first_stories"] = (first + 5) if surge else r["n_docs"]
            r["n_negative_first"] = first if surge else r["n_negative"]
            rows.append(r)
    write_windows(engine, rows)
    rules = tmp_path / "r.yaml"
    rules.write_text("""
rules:
  - name: first-stories
    scope: {dimension: ticker}
    width: 1h
    detector: negative_volume
    first_stories_only: true
    params: {min_count: 10, min_ratio: 3}
    for_windows: 1
    routes: [log]
  - name: all-documents
    scope: {dimension: ticker}
    width: 1h
    detector: negative_volume
    params: {min_count: 10, min_ratio: 3}
    for_windows: 1
    routes: [log]
""")
    report = _evaluator(engine, alert_settings, rules).run_once()
    fired = {(r, k) for e, r, k, _ in report.transitions if e == "firing"}
    assert fired == {("first-stories", "BETA"), ("all-documents", "ACME"), ("all-documents", "BETA")}


def test_an_open_episode_of_a_removed_rule_is_closed_not_left_open(engine, alert_settings, tmp_path, hook):
    write_windows(engine, surge_series(END, key="ACME", surge_at=(1, 0)))  # still surging at the last window
    rules = write_rules(tmp_path / "r.yaml", port=hook.port)
    first = _evaluator(engine, alert_settings, rules).run_once()
    assert ("firing", "ACME") in [(e, k) for e, _, k, _ in first.transitions]
    # The operator deletes the ticker rule; the next evaluation closes its firing episode.
    text = rules.read_text()
    start, end = text.index("  - name: ticker-share"), text.index("  - name: market-share")
    rules.write_text(text[:start] + text[end:])
    later = NOW + timedelta(minutes=5)
    second = _evaluator(engine, alert_settings, rules, now=later).run_once()
    assert [(e, r, k) for e, r, k, _ in second.transitions] == [("rule_removed", "ticker-share", "ACME")]
    assert [tuple(r) for r in _rows(engine, "SELECT status, ends_at FROM alerts WHERE rule = 'ticker-share'")] == [
        ("resolved", later)]
    assert _rows(engine, "SELECT count(*) FROM alert_events WHERE event = 'rule_removed'")[0][0] == 1
    assert not _evaluator(engine, alert_settings, rules, now=later).run_once().transitions  # closed once


LONG_TEXT = ("Shares of ACME Corp fell sharply in early trading after the company cut its full-year revenue "
             "guidance, citing weaker demand in its largest market and rising input costs; analysts at two "
             "brokers lowered their price targets and warned of further downgrades to come this quarter.")


def _document(conn, doc_id, start, *, title, text, sentiment, p_negative, entity=None, tickers=("ACME",),
              minute=10):
    """One scored document in the window at ``start``; ``entity`` = (model_version, sentiment, p_negative) of
    its ACME link (sentiment None: a bare link, counted with the document's score), None = no link."""
    t = start + timedelta(minutes=minute)
    rest = (1 - p_negative) / 2
    conn.execute(sa.text("""
        INSERT INTO documents (id, schema_version, source, kind, url, title, text, published_at, fetched_at,
                               tickers, novelty)
        VALUES (:id, 1, 'benzinga', 'news', :url, :title, :text, :t, :t, :tickers, true)"""),
        {"id": doc_id, "url": None if title is None else f"https://news.example/{doc_id}", "title": title,
         "text": text, "t": t, "tickers": list(tickers)})
    conn.execute(sa.text("""
        INSERT INTO document_scores (document_id, model_version, published_at, sentiment, p_negative, p_neutral,
                                     p_positive, topic, topic_confidence)
        VALUES (:id, 'test-model@1', :t, :s, :p, :rest, :rest, 'earnings', 0.9)"""),
        {"id": doc_id, "t": t, "s": sentiment, "p": p_negative, "rest": rest})
    if entity is not None:
        mv, es, ep = entity
        conn.execute(sa.text("""
            INSERT INTO document_entities (document_id, entity, model_version, sentiment, p_negative, p_neutral,
                                           p_positive)
            VALUES (:id, 'ACME', :mv, :s, :p, :rest, :rest)"""),
            {"id": doc_id, "mv": mv, "s": es, "p": ep, "rest": None if ep is None else (1 - ep) / 2})


def test_evidence_is_what_the_window_counted_and_shows_what_was_said(engine, alert_settings, tmp_path, hook,
                                                                       mailbox, caplog):
    write_windows(engine, surge_series(END, key="ACME"))
    fired = END - timedelta(hours=8)  # the window that makes ACME fire (pending at -9 h, firing at -8 h)
    with engine.begin() as conn:
        # Positive overall, negative towards ACME (the entity head's score): the window counted it negative.
        _document(conn, "pos-doc-neg-acme", fired, title=None, text=LONG_TEXT, sentiment="positive",
                  p_negative=0.05, entity=("test-model@1", "negative", 0.91), minute=5)
        # Negative overall, positive towards ACME: the window counted it positive. Not evidence.
        _document(conn, "neg-doc-pos-acme", fired, title="Market slides; ACME a rare winner", text="x",
                  sentiment="negative", p_negative=0.97, entity=("test-model@1", "positive", 0.02))
        # A bare link (no entity score): counted with the document's own score.
        _document(conn, "bare-link", fired, title="ACME recalls a product", text="y", sentiment="negative",
                  p_negative=0.8, entity=("", None, None))
        # Tagged ACME by the producer but not linked: windows never counted it. Not evidence.
        _document(conn, "unlinked", fired, title="ACME mentioned in passing", text="z", sentiment="negative",
                  p_negative=0.99, entity=None)
    caplog.set_level("WARNING", logger="alerts.notify")
    rules = write_rules(tmp_path / "r.yaml", port=hook.port, routes="log, mail, hook")
    report = _evaluator(engine, alert_settings, rules).run_once()
    evidence = next(m.payload for m in report.messages if m.receiver == "hook")["webhook"]["alerts"][0]["evidence"]
    docs = evidence["documents"]
    assert [(d["id"], d["measure"]) for d in docs] == [("pos-doc-neg-acme", "entity"), ("bare-link", "document")]
    assert docs[0]["p_negative"] == pytest.approx(0.91, abs=1e-6)  # the entity's score, exact in the JSON
    assert evidence["documents_measure"].startswith("the sentiment towards the ticker")
    # No title: the start of the text, cut at a word boundary, with an ellipsis.
    assert docs[0]["title"] is None
    assert docs[0]["excerpt"] == LONG_TEXT[:LONG_TEXT.rindex(" ", 0, 200)].rstrip(",;") + "…"
    assert 150 < len(docs[0]["excerpt"]) <= 201
    config = load(rules, alert_settings)
    _deliver_all(engine, config, alert_settings, expect=6)
    mail = next(m for m in mailbox.messages if "FIRING" in m["Subject"])
    text = next(p.get_content() for p in mail.walk() if p.get_content_type() == "text/plain")
    lines = text.splitlines()
    first = lines.index(f"  - [0.91] {docs[0]['excerpt']} — benzinga, {(fired + timedelta(minutes=5)):%Y-%m-%d %H:%M} "
                        "UTC (first story)")
    assert lines[first + 1] == ("  - [0.80] ACME recalls a product — benzinga, "
                                f"{(fired + timedelta(minutes=10)):%Y-%m-%d %H:%M} UTC (first story)")
    assert lines[first + 2] == "    https://news.example/bare-link"
    assert "(no title)" not in text and "p = " in text and " points" in text
    assert not re.search(r"\d\.\d{5,}", text)  # no raw floats for people
    logged = [r.getMessage() for r in caplog.records if "evidence 1/2" in r.getMessage()]
    assert logged and docs[0]["excerpt"] in logged[0]


def test_the_email_shows_the_trend_inline_and_a_retry_draws_what_was_queued(engine, alert_settings, tmp_path, hook,
                                                                             mailbox):
    from io import BytesIO

    from matplotlib import image

    from alerts.notify import chart_png

    write_windows(engine, surge_series(END, key="ACME", surge_at=(2, 1, 0)))  # still firing: one message
    rules = write_rules(tmp_path / "r.yaml", port=hook.port, routes="mail")
    report = _evaluator(engine, alert_settings, rules).run_once()
    (queued,) = report.messages
    chart = queued.payload["charts"][0]
    assert len(chart["times"]) == 48 and chart["volume"][-3:] == [40, 60, 60]  # up to the window that fired
    assert chart["negative_share"][-1] == pytest.approx(40 / 60)
    assert chart["marked"] == [(END - timedelta(hours=2)).isoformat(), (END - timedelta(hours=1)).isoformat()]
    # The table changes after the message was queued (late rows): what is sent is what was queued.
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE sentiment_windows SET n_docs = 1, n_negative = 0"))
    _deliver_all(engine, load(rules, alert_settings), alert_settings, expect=1)
    (mail,) = mailbox.messages
    assert mail.get_content_type() == "multipart/alternative"
    text, related = mail.get_payload()
    assert text.get_content_type() == "text/plain" and "ACME" in text.get_content()
    assert related.get_content_type() == "multipart/related"
    html, png = related.get_payload()
    cid = chart["cid"]
    assert f'<img src="cid:{cid}"' in html.get_content()
    assert png.get_content_type() == "image/png" and png["Content-ID"] == f"<{cid}>"
    pixels = image.imread(BytesIO(png.get_content()), format="png")
    assert pixels.shape[0] > 100 and pixels.shape[1] > 400
    assert png.get_content() == chart_png(chart)  # drawn from the stored series: a retry sends the same
    changed = {**chart, "volume": [1] * len(chart["volume"])}
    assert chart_png(changed) != png.get_content()  # (and a different series would show)


def test_backtest_and_live_evaluation_decide_the_same_transitions_and_evidence(engine, alert_settings, tmp_path,
                                                                             hook):
    from alerts.backtest import backtest

    write_windows(engine, surge_series(END, key="ACME") + surge_series(END, key="BETA", surge_at=(5, 4, 3, 2)))
    add_documents(engine, key="ACME", start=END - timedelta(hours=8))
    add_documents(engine, key="BETA", start=END - timedelta(hours=5))  # its firing window
    rules = write_rules(tmp_path / "r.yaml", port=hook.port, routes="log")
    config = load(rules, alert_settings)
    live = Evaluator(engine, config, alert_settings, now=lambda: NOW).run_once()
    past = backtest(engine, config, END - timedelta(hours=24), END, settings=alert_settings)
    assert past.transitions == live.transitions and past.windows == live.windows
    assert {e for e, *_ in live.transitions} == {"pending", "firing", "resolved"}
    stored = {r.id: r.evidence for r in _rows(engine, "SELECT id, evidence FROM alerts WHERE fired_at IS NOT NULL")}
    assert set(stored) == {ep.id for ep in past.episodes} and len(stored) == 2
    for ep in past.episodes:
        assert json.loads(json.dumps(ep.evidence, default=str)) == stored[ep.id]
        assert ep.evidence["documents"] and ep.evidence["model_version"] == "test-model@1"
