"""`finpulse ingest ...` through the real CLI entry point, into the real broker."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import yaml
from click.testing import CliRunner

from finpulse.cli import main

from tests.ingest import feeds
from tests.ingest.kafka_utils import consume_all, consume_dead_letters
from tests.conftest import free_port

CSV = """id,created_at,text,cashtags
3,2020-04-09 00:00:30+00:00,third $AAPL,$AAPL
1,2020-04-09 00:00:10+00:00,first &amp; foremost,
2,2020-04-09 00:00:20+00:00,second,$TSLA
4,,no time,
"""
FINPULSE = str(Path(sys.executable).with_name("finpulse"))


def _sigterm_when(proc: subprocess.Popen, ready: Callable[[], bool], *, within: float) -> str:
    """Poll ``ready()`` until it holds or the process ends (``within`` seconds at most: a safety net
    against a hung test, not a performance bound), then SIGTERM the process and return its output;
    it is killed if it outlives that."""
    try:
        deadline = time.monotonic() + within
        while time.monotonic() < deadline and proc.poll() is None and not ready():
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        return proc.communicate(timeout=60)[0]
    finally:
        if proc.poll() is None:
            proc.kill()


def test_help_lists_commands():
    result = CliRunner().invoke(main, ["ingest", "--help"])
    assert result.exit_code == 0, result.output
    assert "crawl" in result.output and "replay" in result.output


def test_replay_into_broker(stack, unique_topic, tmp_path):
    from datetime import timedelta

    path = tmp_path / "tweets.csv"
    path.write_text(CSV)
    result = CliRunner().invoke(
        main,
        ["ingest", "replay", str(path), "--topic", unique_topic, "--id-column", "id", "--ticker-column", "cashtags",
         "--source", "tw", "--lang", "en", "--shift-to-now", "--rate", "1000", "--no-progress", "--partitions", "1",
         "--dead-letter-topic", f"{unique_topic}.dead", "--state-dir", str(tmp_path / "state")],
    )
    assert result.exit_code == 0, result.output
    assert "rows read 4 = published 3 + dead-lettered 1 (no_time=1) + skipped 0 (none)" in result.output
    [(key, letter)] = consume_dead_letters(stack, f"{unique_topic}.dead")
    assert key == b"tw"
    assert (letter["stage"], letter["reason"], letter["detail"]) == ("replay", "no_time",
                                                                     "line 5: time: empty (column 'created_at')")
    assert letter["raw"] == "4,,no time,"
    assert letter["url"] == path.resolve().as_uri() + "#line=5"
    docs = [doc for _, doc in consume_all(stack, unique_topic)]
    # One partition, so the log order is the publish order: event time, not file order (3, 1, 2).
    assert [d.id for d in docs] == ["tw:1", "tw:2", "tw:3"]
    by_id = {d.id: d for d in docs}
    assert by_id["tw:1"].text == "first & foremost" and by_id["tw:3"].tickers == ["AAPL"]
    # Shifted to now, the recorded gaps are kept: 10 s between rows 1 and 2, 20 s between 1 and 3.
    assert by_id["tw:2"].published_at - by_id["tw:1"].published_at == timedelta(seconds=10)
    assert by_id["tw:3"].published_at - by_id["tw:1"].published_at == timedelta(seconds=20)
    assert by_id["tw:3"].extra["published_at_original"] == "2020-04-09T00:00:30+00:00"
    assert all(d.lang == "en" and d.extra["replay"] is True for d in docs)


def test_replay_stopped_by_sigterm_says_how_far_it_got_and_resume_finishes(stack, unique_topic, tmp_path):
    path = tmp_path / "slow.csv"
    path.write_text("id,created_at,text\n" + "".join(f"{i},2020-04-09 00:{i // 60:02d}:{i % 60:02d}+00:00,row {i}\n"
                                                    for i in range(400)))
    state = tmp_path / "state"
    args = [FINPULSE, "ingest", "replay", str(path), "--topic", unique_topic,
            "--id-column", "id", "--source", "tw", "--lang", "en", "--no-progress", "--partitions", "1",
            "--dead-letter-topic", f"{unique_topic}.dead", "--state-dir", str(state)]
    proc = subprocess.Popen(args + ["--rate", "40"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    def a_position_is_saved() -> bool:
        saved = [json.loads(f.read_text()) for f in state.glob("replay-*.json")] if state.exists() else []
        return bool(saved) and saved[0]["done"] > 0

    output = _sigterm_when(proc, a_position_is_saved, within=60)
    assert proc.returncode == 130, output
    assert "interrupted: of 400 rows read, " in output and f"saved in {state}" in output
    published = int(output.split("rows read, ")[1].split(" published")[0])
    assert 0 < published < 400
    rest = subprocess.run(args + ["--rate", "10000", "--resume"], capture_output=True, text=True, timeout=120)
    assert rest.returncode == 0, rest.stdout + rest.stderr
    assert {d.id for _, d in consume_all(stack, unique_topic)} == {f"tw:{i}" for i in range(400)}  # nothing lost


def test_replay_shared_tweets_into_broker(stack, unique_topic, shared_data, tmp_path):
    path = shared_data / "replay" / "stock_market_tweets_2020.csv"
    result = CliRunner().invoke(
        main,
        ["ingest", "replay", str(path), "--topic", unique_topic, "--id-column", "id", "--ticker-column", "cashtags",
         "--lang", "none", "--no-progress", "--partitions", "1", "--dead-letter-topic", f"{unique_topic}.dead",
         "--state-dir", str(tmp_path / "state")],
    )
    assert result.exit_code == 0, result.output
    docs = [doc for _, doc in consume_all(stack, unique_topic)]
    assert len(docs) == 5000 == len({d.id for d in docs})
    # one partition: the log order is the publish order, which must be event-time order
    assert all(a.published_at <= b.published_at for a, b in zip(docs, docs[1:]))


def test_crawl_once_into_broker(stack, unique_topic, http_server, tmp_path, monkeypatch):
    monkeypatch.setenv("FP_FORUM_TOKEN", "t0ken")
    feeds.install(http_server)
    config_path = tmp_path / "sources.yaml"
    config_path.write_text(yaml.safe_dump(feeds.crawler_config(http_server.base, good_only=True)))
    args = ["ingest", "crawl", "--config", str(config_path), "--once", "--topic", unique_topic,
            "--dead-letter-topic", f"{unique_topic}.dead", "--state-dir", str(tmp_path / "state")]
    first = CliRunner().invoke(main, args)
    assert first.exit_code == 0, first.output
    count = len(consume_all(stack, unique_topic))
    assert count == 13  # wire 7 + boerse 2 + forum 4 (see test_crawler.expected_first_poll)
    dead = sorted((key, env["reason"]) for key, env in consume_dead_letters(stack, f"{unique_topic}.dead"))
    assert dead == [(b"forum", "contract"), (b"forum", "item_not_object"), (b"forum", "no_url_or_id"),
                    (b"wire", "empty"), (b"wire", "no_url_or_id")]
    second = CliRunner().invoke(main, args)
    assert second.exit_code == 0, second.output
    assert len(consume_all(stack, unique_topic)) == count


def test_crawl_rejects_bad_config(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("sources: []\n")
    result = CliRunner().invoke(main, ["ingest", "crawl", "--config", str(path), "--once"])
    assert result.exit_code != 0 and "invalid sources config" in result.output




def _published(metrics_text: str) -> float:
    total = 0.0
    for line in metrics_text.splitlines():
        if line.startswith("finpulse_ingest_published_total{"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_crawl_daemon_serves_metrics_and_stops_on_sigterm(stack, unique_topic, http_server, tmp_path, monkeypatch):
    import httpx

    monkeypatch.setenv("FP_FORUM_TOKEN", "t0ken")
    feeds.install(http_server)
    config = feeds.crawler_config(http_server.base, good_only=True)
    for source in config["sources"]:
        source["interval"] = 0.5
    config_path = tmp_path / "sources.yaml"
    config_path.write_text(yaml.safe_dump(config))
    port = free_port()
    proc = subprocess.Popen(
        [FINPULSE, "ingest", "crawl", "--config", str(config_path), "--topic", unique_topic,
         "--dead-letter-topic", f"{unique_topic}.dead",
         "--state-dir", str(tmp_path / "state"), "--metrics-port", str(port)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    published = [0.0]

    def all_published_and_polled_twice() -> bool:
        try:
            published[0] = _published(httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=2).text)
        except httpx.HTTPError:
            pass
        return published[0] >= 13 and len(http_server.hits("/api/comments")) >= 6  # >= 2 polls of the API

    output = _sigterm_when(proc, all_published_and_polled_twice, within=120)
    assert published[0] == 13, output
    assert proc.returncode == 0, output
    assert "crawler stopped" in output
    assert "poll source=forum fetched=7 published=4" in output  # the one-line summary per poll
    assert "failed=3 dead_lettered=3" in output
    assert "poll source=forum fetched=7 published=0 duplicate=4" in output
    assert len(consume_all(stack, unique_topic)) == 13
