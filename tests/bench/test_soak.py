"""bench/soak.py's bookkeeping without a stack: which samples are the start and the end, growth, pacing, ids."""

from __future__ import annotations

import json
import os
import subprocess
from datetime import datetime, timedelta, timezone

import pytest

soak = pytest.importorskip("bench.soak")


def _sample(phase: str, t: float, rss: dict[str, float], pids: dict[str, list[int]] | None = None) -> dict:
    pids = pids or {}
    return {"phase": phase, "t": t, "at": datetime.now(timezone.utc).isoformat(),
            "rss": {k: {"n": len(pids.get(k, [1])), "rss_mb": v, "anon_mb": v / 2, "shmem_mb": 0.0,
                        "pids": {str(p): v for p in pids.get(k, [1])}} for k, v in rss.items()}}


def test_start_is_the_first_sample_after_the_warm_up_and_end_the_last_soak_sample():
    samples = [_sample("soak", 0, {"driver": 50.0, "python_workers": 100.0, "postgres_all": 10.0}),
               _sample("soak", 30, {"driver": 90.0, "python_workers": 200.0, "postgres_all": 10.0}),
               _sample("soak", 120, {"driver": 100.0, "python_workers": 1000.0, "postgres_all": 10.0},
                       {"python_workers": [7, 8]}),
               _sample("soak", 150, {"driver": 104.0, "python_workers": 1200.0, "postgres_all": 30.0},
                       {"python_workers": [7, 9]}),
               _sample("drained", 160, {"driver": 500.0, "python_workers": 5000.0, "postgres_all": 10.0})]
    out = soak.summarize_rss(samples, warmup_s=120)
    assert (out["start_t"], out["end_t"]) == (120, 150)
    g = out["groups"]
    assert g["driver"]["growth_pct"] == 4.0 and g["driver"]["anon_growth_pct"] == 4.0
    assert g["python_workers"]["growth_pct"] == 20.0
    assert g["python_workers"]["same_pids"] is False  # a replaced worker would hide growth: shown
    assert g["postgres_all"]["growth_pct"] == 200.0 and g["postgres_all"]["in_aim"] is False
    assert out["max_growth_pct"] == 20.0 and out["aim_met"] is False  # postgres_all is not counted
    assert g["kafka"]["growth_pct"] is None  # no such process in the samples


def test_a_soak_shorter_than_the_warm_up_starts_at_its_last_sample():
    out = soak.summarize_rss([_sample("soak", 0, {"driver": 50.0}), _sample("soak", 30, {"driver": 51.0})], 120)
    assert out["start_t"] == out["end_t"] == 30 and out["groups"]["driver"]["growth_pct"] == 0.0
    assert soak.summarize_rss([], 120)["aim_met"] is None


def test_stamped_sets_published_at_to_the_send_schedule():
    start = datetime(2026, 12, 1, 12, 0, tzinfo=timezone.utc)
    messages = soak.documents([("text one", ["AAPL"]), ("text two", [])], "soak-3")
    out = soak.stamped(messages, start, rate=4.0)
    docs = [json.loads(v) for _, v in out]
    assert [k for k, _ in out] == [b"soak-3-0", b"soak-3-1"]
    assert [d["published_at"] for d in docs] == [start.isoformat(), (start + timedelta(seconds=0.25)).isoformat()]
    assert all(d["fetched_at"] == d["published_at"] for d in docs)
    assert docs[0]["tickers"] == ["AAPL"]


def test_producer_keeps_the_rate_with_unique_ids(monkeypatch):
    produced: list[bytes] = []

    def fake_produce(settings, topic, messages, *, rate=None, stamp_ids=None):
        for key, _ in messages:
            stamp_ids[key.decode()] = datetime.now(timezone.utc)
            produced.append(key)

    monkeypatch.setattr(soak, "produce", fake_produce)
    monkeypatch.setattr(soak, "CHUNK_S", 0.25)
    producer = soak.Producer(None, "t", [("a", []), ("b", [])], rate=40.0, seconds=1.0)
    producer.start()
    producer.join(timeout=10)
    assert producer.error is None
    assert len(produced) == 40 and len(set(produced)) == 40 and len(producer.sent) == 40
    assert 0.7 <= producer.finished_at - producer.started_at <= 2.0


def test_latency_is_bucketed_by_send_time_into_the_samples():
    t0 = datetime(2026, 12, 1, 12, 0, tzinfo=timezone.utc)
    samples = [{"at": (t0 + timedelta(seconds=s)).isoformat()} for s in (0, 10, 20)]
    sent = {f"d{i}": t0 + timedelta(seconds=i) for i in range(1, 20)}
    ingested = {k: t + timedelta(seconds=1 if t < t0 + timedelta(seconds=10) else 3) for k, t in sent.items()}
    out = soak.latencies(sent, ingested, samples)
    assert out["docs"] == 19 and out["max_s"] == 3.0
    assert samples[1]["latency_p50_s"] == 1.0 and samples[2]["latency_p50_s"] == 3.0
    assert soak.latencies({}, {}, [])["docs"] == 0


def test_memory_of_this_process_and_of_none():
    own = soak.memory_mb(os.getpid())
    assert own is not None and own["rss"] > 0 and "anon" in own
    assert soak.memory_mb(2**22 + 12345) is None
    # A child without children of its own as the "driver": pytest itself may hold a Spark JVM (other tests').
    lone = subprocess.Popen(["sleep", "30"])
    try:
        groups = soak.process_groups(None, None, [], lone.pid, None)
    finally:
        lone.kill()
        lone.wait()
    assert groups["driver"] == [lone.pid] and groups["spark_jvm"] == [] and groups["python_workers"] == []
