"""`finpulse ingest` as a person runs it: errors in one actionable line, resume after kill -9."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.ingest.kafka_utils import consume_all, consume_dead_letters

FINPULSE = str(Path(sys.executable).with_name("finpulse"))


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("FINPULSE_KAFKA_BOOTSTRAP", None)
    env.update(extra)
    return env


def _lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


def _sources(tmp_path) -> Path:
    path = tmp_path / "sources.yaml"
    path.write_text(yaml.safe_dump({"sources": [
        {"name": "wire", "type": "rss", "kind": "news", "url": "http://127.0.0.1:9/feed.rss"}]}))
    return path


@pytest.mark.parametrize("command", ["replay", "crawl"])
def test_unreachable_broker_is_one_line_naming_address_and_setting(tmp_path, command):
    csv_path = tmp_path / "t.csv"
    csv_path.write_text("id,created_at,text\n1,2020-01-01T00:00:00Z,hello there\n")
    args = ([FINPULSE, "ingest", "replay", str(csv_path), "--no-progress"] if command == "replay"
            else [FINPULSE, "ingest", "crawl", "--config", str(_sources(tmp_path)), "--once"])
    # The timeout is a safety net against a hang, not a performance bound.
    proc = subprocess.run(args, env=_env(FINPULSE_KAFKA_BOOTSTRAP="127.0.0.1:1"), capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode != 0
    [line] = _lines(proc.stderr + proc.stdout)
    assert "127.0.0.1:1" in line and "FINPULSE_KAFKA_BOOTSTRAP" in line and "Traceback" not in line


def _topics(settings) -> set[str]:
    from finpulse.kafka import admin

    client = admin(settings)
    try:
        return set(client.list_topics())
    finally:
        client.close()


@pytest.mark.parametrize("content", [b"", b"id,created_at,text\n", b"id,when,body\n1,2020-01-01,x\n",
                                     b"\x7fELF\x02\x01\x01\x00" + bytes(range(200))])
def test_bad_file_fails_in_one_line_before_any_topic_exists(stack, unique_topic, tmp_path, content):
    path = tmp_path / "in.csv"
    path.write_bytes(content)
    env = _env(FINPULSE_KAFKA_BOOTSTRAP=",".join(stack.bootstrap_servers))
    proc = subprocess.run([FINPULSE, "ingest", "replay", str(path), "--topic", unique_topic, "--dead-letter-topic",
                           f"{unique_topic}.dead", "--no-progress"], env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode != 0
    [line] = _lines(proc.stderr + proc.stdout)
    assert str(path) in line and "\\x" not in line and "ELF" not in line
    assert not {unique_topic, f"{unique_topic}.dead"} & _topics(stack)


def test_every_kind_of_bad_row_through_the_broker(stack, unique_topic, tmp_path):
    from tests.ingest.test_replay_bad_input import every_kind_of_bad_row

    path = every_kind_of_bad_row(tmp_path)
    env = _env(FINPULSE_KAFKA_BOOTSTRAP=",".join(stack.bootstrap_servers))
    proc = subprocess.run([FINPULSE, "ingest", "replay", str(path), "--topic", unique_topic, "--id-column", "id",
                           "--dead-letter-topic", f"{unique_topic}.dead", "--no-progress", "--lang", "none",
                           "--state-dir", str(tmp_path / "state")],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(
        "rows read 10 = published 2 + dead-lettered 8 (bad_encoding=1, bad_time=1, contract:text=1, extra_fields=1, "
        "missing_fields=1, no_text=1, no_time=1, unclosed_quote=1) + skipped 0 (none);"), proc.stdout
    assert sorted(d.id for _, d in consume_all(stack, unique_topic)) == ["bad:1", "bad:10"]
    letters = consume_dead_letters(stack, f"{unique_topic}.dead")
    assert sorted(int(env["url"].rsplit("=", 1)[1]) for _, env in letters) == [3, 4, 5, 6, 7, 8, 9, 11]


def test_kill_9_then_resume_publishes_each_row_once_but_the_in_flight_ones(stack, unique_topic, tmp_path):
    rows = 3_000
    path = tmp_path / "stream.csv"
    path.write_text("id,created_at,text\n" + "".join(
        f"{i},2020-04-09T00:{i // 60 % 60:02d}:{i % 60:02d}Z,tweet {i} about $ACME\n" for i in range(rows)))
    state = tmp_path / "state"
    env = _env(FINPULSE_KAFKA_BOOTSTRAP=",".join(stack.bootstrap_servers))
    args = [FINPULSE, "ingest", "replay", str(path), "--topic", unique_topic, "--id-column", "id", "--lang", "none",
            "--dead-letter-topic", f"{unique_topic}.dead", "--no-progress", "--state-dir", str(state),
            "--rate", "600"]
    proc = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 120  # a safety net against a hung test, not a performance bound
        done = 0
        while time.monotonic() < deadline and proc.poll() is None and done < 800:
            files = list(state.glob("replay-*.json"))
            if files:
                try:
                    done = json.loads(files[0].read_text())["done"]
                except (ValueError, KeyError):
                    pass
            time.sleep(0.05)
        assert proc.poll() is None and 800 <= done < rows, (done, proc.poll())
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    saved = json.loads(next(state.glob("replay-*.json")).read_text())["done"]
    before = len(consume_all(stack, unique_topic))
    assert saved <= before  # everything up to the saved position was acknowledged

    resumed = subprocess.run(args[:-2] + ["--resume"], env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert f"skipped {saved} (resume_already_delivered={saved})" in resumed.stdout
    ids = [d.id for _, d in consume_all(stack, unique_topic)]
    assert len(set(ids)) == rows  # nothing lost
    repeated = len(ids) - rows
    # Repeats are only the sends between the last saved position and the kill.
    print(f"kill -9 at {before} acknowledged, saved position {saved}, repeated on resume: {repeated}")
    assert repeated == before - saved
