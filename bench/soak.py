"""Soak: the streaming job and the alert service for --minutes at half the maximum rate; RSS and lag.

The RSS of every process at the start and the end, and the lag, sampled all along.

    .venv/bin/python bench/soak.py [--minutes 30] [--rate DOCS_PER_S | --max-rate DOCS_PER_S|pipeline-*.json]

Against the test stack of ``bench_pipeline`` (Kafka 127.0.0.1:29092, Postgres 54339; started if not running,
left running), in a scratch database (dropped at the end) and on fresh topics (deleted at the end):

1. The streaming job (``bench_pipeline.Job``: ``python -m pipeline run``, Spark local[2], one torch thread per
   task, default trigger and batch size) and the alert service (``python -m finpulse alerts run``, the shipped
   rules, the ``log`` receiver only) are started on them; the job is warmed (``bench_pipeline.warm_up``).
2. The rate: ``--rate``; else half of ``--max-rate`` (a number, or a ``bench_pipeline`` results JSON whose
   (b) docs/s is taken); else half of what a burst of ``--burst`` demo documents measures through the warm
   job, as ``bench_pipeline`` (b) does: documents / (last batch finished - first batch started).
3. Demo documents (``bench_pipeline.demo_rows`` / ``documents``, ids unique per 10-second chunk, published_at
   = the time each is due to be sent) are produced at that rate for ``--minutes``.
4. Every ``--sample-seconds``: the RSS of every process (the Kafka broker JVM; Postgres: the postmaster, its
   background processes and the soak database's backends; the job's Python driver, its Spark JVM, the
   PySpark daemon and Python workers; the alert service), documents produced and stored, the lag (produced
   - stored, and the job's ``finpulse_pipeline_lag_records``), documents committed per second.
5. Production stops; the job drains (at most ``--drain-seconds``); then: lost documents (produced ids not in
   ``documents``), dead letters, documents scored more than once or not at all for the job's model version,
   the 1-minute market windows' document count against the scores, produce -> row latency, and whether
   every process is still the one that started.

The start RSS is the first sample at least ``--warmup-seconds`` (120; at most a third of the soak) after
production started; the end RSS is the sample taken as production stops. Writes
``bench/results/soak-<UTC>.json`` (or ``--out``) with the CPU, the command and every sample, and prints a
table. Exit 1 if a process died or a document was lost (not stored after the drain); 130 if interrupted.
"""

from __future__ import annotations

import argparse
import bisect
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import traceback
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

# Importing bench_pipeline sets the test stack's FINPULSE_* defaults (Kafka 29092, Postgres 54339).
from bench.bench_pipeline import (  # noqa: E402
    RESULTS,
    Job,
    count_documents,
    demo_rows,
    documents,
    log,
    process_children,
    produce,
    warm_up,
)
from bench.machine import cpu_model  # noqa: E402

# --own-stack: a stack no other session starts or stops (the test stack's sessions stop it when they end).
OWN_STACK_ENV = {"FINPULSE_HOME": str(REPO / "var" / "soak-stack"), "FINPULSE_KAFKA_PORT": "39092",
                 "FINPULSE_KAFKA_CONTROLLER_PORT": "39093", "FINPULSE_POSTGRES_PORT": "54369"}
QUERY = "soak"
CHUNK_S = 10.0  # documents are built and produced in chunks of this many seconds (ids unique per chunk)
RSS_AIM_PCT = 10.0
# (key, label); the keys in RSS_AIM count towards the "no growth over 10%" aim.
GROUPS = [
    ("kafka", "Kafka broker (JVM)"),
    ("postgres", "Postgres: postmaster + background + soak db backends"),
    ("postgres_all", "Postgres: postmaster + every child (all databases)"),
    ("driver", "pipeline driver (Python)"),
    ("spark_jvm", "Spark JVM"),
    ("pyspark_daemon", "PySpark daemon"),
    ("python_workers", "Python workers (sum)"),
    ("alerts", "alert service (Python)"),
]
RSS_AIM = ("kafka", "postgres", "driver", "spark_jvm", "pyspark_daemon", "python_workers", "alerts")


# --- processes ---------------------------------------------------------------------------------------

def _descendants(pid: int, children: dict[int, list[int]]) -> list[int]:
    out, todo = [], list(children.get(pid, []))
    while todo:
        p = todo.pop()
        out.append(p)
        todo += children.get(p, [])
    return out


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def memory_mb(pid: int) -> dict[str, float] | None:
    """VmRSS, RssAnon and RssShmem of ``pid`` in MB (None when it is gone)."""
    fields = {"VmRSS:": "rss", "RssAnon:": "anon", "RssShmem:": "shmem"}
    out: dict[str, float] = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key = line.split(":", 1)[0] + ":"
            if key in fields:
                out[fields[key]] = int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        return None
    return out if "rss" in out else None


def alive(identity) -> bool | None:
    """Whether the process is still the one identified at the start; None when there is none to watch (external)."""
    return None if identity is None else identity.is_running()


def process_groups(kafka_pid: int | None, postmaster_pid: int | None, soak_backends: list[int],
                   driver_pid: int | None, alerts_pid: int | None) -> dict[str, list[int]]:
    """The pids of each group, found again at every sample (Spark may replace a Python worker)."""
    children = process_children()
    groups: dict[str, list[int]] = {key: [] for key, _ in GROUPS}
    if kafka_pid:
        groups["kafka"] = [kafka_pid]
    if postmaster_pid:
        every = _descendants(postmaster_pid, children)
        groups["postgres_all"] = [postmaster_pid] + every
        groups["postgres"] = [postmaster_pid] + [p for p in every if p in set(soak_backends)]
    if driver_pid:
        groups["driver"] = [driver_pid]
        below = _descendants(driver_pid, children)
        groups["spark_jvm"] = [p for p in below if b"java" in _cmdline(p).split(b"\0")[0]]
        daemons = [c for j in groups["spark_jvm"] for c in children.get(j, []) if b"pyspark" in _cmdline(c)]
        groups["pyspark_daemon"] = daemons
        groups["python_workers"] = [w for d in daemons for w in _descendants(d, children) if b"pyspark" in _cmdline(w)]
    if alerts_pid:
        groups["alerts"] = [alerts_pid]
    return groups


def measure(groups: dict[str, list[int]]) -> dict[str, dict]:
    out = {}
    for key, pids in groups.items():
        per = {p: m for p in pids if (m := memory_mb(p)) is not None}
        out[key] = {"n": len(per), "rss_mb": round(sum(m["rss"] for m in per.values()), 1),
                    "anon_mb": round(sum(m.get("anon", 0.0) for m in per.values()), 1),
                    "shmem_mb": round(sum(m.get("shmem", 0.0) for m in per.values()), 1),
                    "pids": {str(p): round(m["rss"], 1) for p, m in per.items()}}
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def scrape(port: int, names: tuple[str, ...]) -> dict[str, float] | None:
    """The samples of the metric families ``names`` on 127.0.0.1:port/metrics ('name{k="v"}': value); None if down."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    except OSError:
        return None
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name.startswith(names) and not s.name.endswith("_created"):
                labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
                out[s.name + (f"{{{labels}}}" if labels else "")] = int(s.value) if float(s.value).is_integer() else s.value
    return out


PIPELINE_METRICS = ("finpulse_pipeline_lag_records", "finpulse_pipeline_records_total", "finpulse_pipeline_batches_total")
ALERT_METRICS = ("finpulse_alerts_evaluations_total", "finpulse_alerts_is_leader", "finpulse_alerts_transitions_total")


# --- the alert service ---------------------------------------------------------------------------------

class AlertService:
    """``finpulse alerts run`` as a subprocess in its own session, on the soak database, the log receiver only."""

    def __init__(self, settings, workdir: Path, metrics_port: int):
        workdir.mkdir(parents=True, exist_ok=True)
        drop = ("FINPULSE_ALERTS_SMTP_", "FINPULSE_ALERTS_EMAIL_", "FINPULSE_ALERTS_WEBHOOK_")
        self.env = {k: v for k, v in os.environ.items() if not k.upper().startswith(drop)}
        self.env.update({"FINPULSE_DATABASE_URL": settings.database_url.get_secret_value(),
                         "FINPULSE_HOME": str(workdir / "home"), "FINPULSE_ALERTS_METRICS_PORT": str(metrics_port),
                         "PYTHONUNBUFFERED": "1"})
        self.log = workdir / "alerts.log"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 120.0) -> None:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", "finpulse", "alerts", "run"], cwd=REPO, env=self.env,
                                         stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         start_new_session=True)
        deadline = time.monotonic() + timeout
        while b"alert service " not in self.log.read_bytes():  # its first line once the scheduler runs
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the alert service did not start; see {self.log}")
            time.sleep(0.5)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


# --- production -------------------------------------------------------------------------------------------

def stamped(messages: list[tuple[bytes, bytes]], start: datetime, rate: float | None) -> list[tuple[bytes, bytes]]:
    """``messages`` with published_at (and fetched_at) = the time each is due to be sent at ``rate`` from ``start``."""
    out = []
    for i, (key, value) in enumerate(messages):
        doc = json.loads(value)
        at = (start + timedelta(seconds=i / rate if rate else 0.0)).isoformat()
        doc["published_at"] = doc["fetched_at"] = at
        out.append((key, json.dumps(doc).encode()))
    return out


class Producer(threading.Thread):
    """Demo documents at ``rate`` for ``seconds``, in chunks of CHUNK_S produced by ``bench_pipeline.produce``.

    Each chunk's own rate is what is left of the chunk over the time left of its slot, so a slow start of
    a chunk (a new producer connects) does not add up over the run. ``sent`` maps every id to its send time.
    """

    def __init__(self, settings, topic: str, rows, rate: float, seconds: float, prefix: str = "soak"):
        super().__init__(daemon=True)
        self.settings, self.topic, self.rows, self.rate, self.seconds, self.prefix = settings, topic, rows, rate, seconds, prefix
        self.sent: dict[str, datetime] = {}
        self.halt = threading.Event()
        self.error: BaseException | None = None
        self.started_at: float | None = None
        self.finished_at: float | None = None

    def run(self) -> None:
        t0 = self.started_at = time.monotonic()
        pos, k = 0, 0
        try:
            while not self.halt.is_set() and k * CHUNK_S < self.seconds:
                slot_start, slot_end = k * CHUNK_S, min((k + 1) * CHUNK_S, self.seconds)
                n = round(self.rate * slot_end) - round(self.rate * slot_start)
                if self.halt.wait(max(0.0, t0 + slot_start - time.monotonic())):
                    break
                rows = [self.rows[(pos + i) % len(self.rows)] for i in range(n)]
                pos += n
                left = t0 + slot_end - time.monotonic()
                rate = n / left if left > 0.05 else None  # behind: the chunk goes at once
                if n:
                    messages = stamped(documents(rows, f"{self.prefix}-{k}"), datetime.now(timezone.utc), rate)
                    produce(self.settings, self.topic, messages, rate=rate, stamp_ids=self.sent)
                k += 1
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            self.error = exc
        finally:
            self.finished_at = time.monotonic()


# --- the soak database --------------------------------------------------------------------------------------

def db_sample(conn, prefix: str) -> dict:
    import sqlalchemy as sa

    stored = conn.execute(sa.text("SELECT count(*) FROM documents WHERE id LIKE :p"), {"p": f"{prefix}-%"}).scalar_one()
    # Postgres processes of this soak: the background ones and the soak database's backends, not this script's.
    backends = conn.execute(sa.text(
        "SELECT pid FROM pg_stat_activity WHERE pid <> pg_backend_pid() AND "
        "(datname = current_database() OR backend_type <> 'client backend')")).scalars().all()
    return {"stored": int(stored), "backends": [int(p) for p in backends]}


def burst_rate(settings, topic: str, job: Job, n: int, engine) -> dict:
    """Docs/s of ``n`` demo documents produced at once through the warm job: n / (last batch finished - first
    batch started), over the batches after the warm-up (bench_pipeline (b)'s figure)."""
    import sqlalchemy as sa

    with engine.connect() as conn:
        warm_batches = conn.execute(sa.text(
            "SELECT coalesce(max(batch_id), -1) FROM pipeline_batches WHERE query_name = :q"), {"q": QUERY}).scalar_one()
    produce(settings, topic, documents(demo_rows(n), "burst"))
    deadline = time.monotonic() + 900
    while count_documents(settings, "burst-") < n:
        if job.proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"the burst did not go through the job; see {job.log}")
        time.sleep(1.0)
    with engine.connect() as conn:
        row = conn.execute(sa.text(
            "SELECT min(started_at) AS a, max(finished_at) AS b, count(*) AS batches FROM pipeline_batches "
            "WHERE status = 'committed' AND query_name = :q AND batch_id > :w AND n_input > 0"),
            {"q": QUERY, "w": warm_batches}).mappings().one()
    seconds = (row["b"] - row["a"]).total_seconds()
    return {"docs": n, "seconds": round(seconds, 3), "batches": row["batches"], "docs_per_s": round(n / seconds, 1)}


def max_rate_from(value: str) -> tuple[float, str]:
    """(docs/s, where from) of ``--max-rate``: a number, or a bench_pipeline results JSON ((b) docs/s)."""
    try:
        return float(value), "--max-rate"
    except ValueError:
        data = json.loads(Path(value).read_text())
        return float(data["pipeline"]["docs_per_s"]), f"(b) docs/s of {value}"


# --- the summary ------------------------------------------------------------------------------------------

def growth_pct(start: float | None, end: float | None) -> float | None:
    if not start or end is None:
        return None
    return round((end - start) / start * 100, 1)


def summarize_rss(samples: list[dict], warmup_s: float) -> dict:
    """Per group: RSS and anonymous RSS at the start (the first soak sample at t >= warmup_s) and the end (the
    last soak sample), growth in %, process counts, and whether the pids changed between the two."""
    soak = [s for s in samples if s["phase"] == "soak"]
    if not soak:
        return {"start_t": None, "end_t": None, "groups": {}, "aim_met": None}
    start = next((s for s in soak if s["t"] >= warmup_s), soak[-1])
    end = soak[-1]
    groups = {}
    for key, label in GROUPS:
        a, b = start["rss"].get(key, {}), end["rss"].get(key, {})
        groups[key] = {"label": label, "n_start": a.get("n", 0), "n_end": b.get("n", 0),
                       "rss_start_mb": a.get("rss_mb"), "rss_end_mb": b.get("rss_mb"),
                       "growth_pct": growth_pct(a.get("rss_mb"), b.get("rss_mb")),
                       "anon_start_mb": a.get("anon_mb"), "anon_end_mb": b.get("anon_mb"),
                       "anon_growth_pct": growth_pct(a.get("anon_mb"), b.get("anon_mb")),
                       "same_pids": set(a.get("pids", {})) == set(b.get("pids", {})),
                       "in_aim": key in RSS_AIM}
    counted = [g["growth_pct"] for k, g in groups.items() if k in RSS_AIM and g["growth_pct"] is not None]
    return {"start_t": start["t"], "end_t": end["t"], "groups": groups,
            "max_growth_pct": max(counted) if counted else None,
            "aim_met": all(x <= RSS_AIM_PCT for x in counted) if counted else None}


def latencies(sent: dict[str, datetime], ingested: dict[str, datetime], samples: list[dict]) -> dict:
    """Produce -> row latency over all documents, and per sample interval (by send time) into the samples."""
    lat = sorted((ingested[k] - t).total_seconds() for k, t in sent.items() if k in ingested)
    if not lat:
        return {"docs": 0}
    q = statistics.quantiles(lat, n=100) if len(lat) >= 2 else lat * 99
    bounds = [datetime.fromisoformat(s["at"]) for s in samples]
    buckets: dict[int, list[float]] = {}
    for k, t in sent.items():
        if k in ingested:
            buckets.setdefault(bisect.bisect_left(bounds, t), []).append((ingested[k] - t).total_seconds())
    for i, s in enumerate(samples):
        vals = sorted(buckets.get(i, []))
        if len(vals) >= 2:
            qq = statistics.quantiles(vals, n=100)
            s["latency_p50_s"], s["latency_p95_s"] = round(qq[49], 2), round(qq[94], 2)
    return {"docs": len(lat), "p50_s": round(q[49], 3), "p95_s": round(q[94], 3), "max_s": round(lat[-1], 3)}


def table(results: dict) -> str:
    s, rate = results["summary"], results["rate"]
    rss = s["rss"]
    lines = [f"soak: {results['minutes']} min at {rate['docs_per_s']} docs/s ({rate['source']}); "
             f"{results['cpu']}, {results['cpus']} cores, load {results['load_average_at_start']}",
             f"RSS start = sample at t={rss['start_t']} s (warm-up {results['warmup_s']} s), end = t={rss['end_t']} s",
             "", "| process | n start/end | RSS start MB | RSS end MB | growth | anon start MB | anon end MB | anon growth |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]

    def pct(x):
        return "-" if x is None else f"{x:+.1f}%"

    for key, g in rss["groups"].items():
        mark = "" if g["in_aim"] else " (not in the aim)"
        pids = "" if g["same_pids"] else ", pids changed"
        lines.append(f"| {g['label']}{mark} | {g['n_start']}/{g['n_end']}{pids} | {g['rss_start_mb']} | {g['rss_end_mb']} | "
                     f"{pct(g['growth_pct'])} | {g['anon_start_mb']} | {g['anon_end_mb']} | {pct(g['anon_growth_pct'])} |")
    aim = {True: "met", False: "MISSED", None: "unknown"}[rss["aim_met"]]
    lat = s["latency"]
    lines += ["", "| figure | value |", "|---|---|",
              f"| RSS growth aim (<= {RSS_AIM_PCT:.0f}% for every counted process) | {aim} (max {pct(rss['max_growth_pct'])}) |",
              f"| documents produced / stored | {s['produced']:,} / {s['stored']:,} |",
              f"| docs/s produced / committed over the soak | {s['produced_docs_per_s']} / {s['committed_docs_per_s']} |",
              f"| lag, documents produced - stored: max / after the drain | {s['max_lag_docs']:,} / {s['final_lag_docs']:,} "
              f"(drained in {s['drain_s']} s) |",
              f"| lag, pipeline metrics (Kafka records): max / after the drain | {s['max_lag_records']} / {s['final_lag_records']} |",
              "| produce -> row latency p50 / p95 / max | " + (f"{lat['p50_s']} / {lat['p95_s']} / {lat['max_s']} s |"
                                                               if lat.get("docs") else "- |"),
              f"| lost (produced, not stored) / dead letters | {s['lost']} / {s['dead_letters']} |",
              f"| scored twice for {s['model_version']} / not scored / records counted duplicate | "
              f"{s['scored_twice']} / {s['unscored']} / {s['duplicate_records']} |",
              f"| 1-minute market windows: documents / scores | {s['window_docs']:,} / {s['scores']:,} |",
              f"| alert service | {'alive' if s['alive']['alerts'] else 'DEAD'}; evaluations {s['alert_evaluations']} |",
              "| processes alive at the end | " + (", ".join(k for k, v in s["alive"].items() if v is False) + " DEAD"
                                                     if False in s["alive"].values() else "all") + " |",
              f"| Python worker RSS max (0.5 s sampling) | {s['python_worker_rss_mb_max']} MB |"]
    return "\n".join(lines)


# --- main -------------------------------------------------------------------------------------------------------

def _interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=30.0, help="How long documents are produced.")
    parser.add_argument("--rate", type=float, default=None, help="Docs/s (default: half the maximum rate).")
    parser.add_argument("--max-rate", default=None,
                        help="The maximum rate: docs/s, or a bench/results/pipeline-*.json (its (b) docs/s); "
                             "default: measured with a burst of --burst documents first.")
    parser.add_argument("--burst", type=int, default=2000, help="Documents of the burst that measures the maximum rate.")
    parser.add_argument("--sample-seconds", type=float, default=30.0)
    parser.add_argument("--warmup-seconds", type=float, default=120.0,
                        help="The start RSS is the first sample this long after production started "
                             "(at most a third of the soak).")
    parser.add_argument("--drain-seconds", type=float, default=600.0, help="Most seconds to wait for the lag to reach 0.")
    parser.add_argument("--own-stack", action="store_true",
                        help="Use a stack of its own (FINPULSE_HOME=var/soak-stack, Kafka 39092, Postgres 54369), "
                             "stopped at the end if the soak started it, instead of the shared test stack.")
    parser.add_argument("--out", type=Path, default=None, help="Results JSON (default bench/results/soak-<UTC>.json).")
    args = parser.parse_args()
    if args.rate is not None and args.max_rate is not None:
        parser.error("--rate or --max-rate, not both")

    import sqlalchemy as sa

    from finpulse import db
    from finpulse.kafka import admin, ensure_topics
    from finpulse.service import ProcessIdentity
    from finpulse.settings import Settings
    from stack import LocalStack

    signal.signal(signal.SIGTERM, _interrupt)
    if args.own_stack:
        os.environ.update(OWN_STACK_ENV)
    base = Settings()
    stack = LocalStack(base)
    was_running = all(c.healthy for c in stack.status() if c.name in ("kafka", "postgres"))
    stack.up()  # idempotent: reuses a running stack, starts it otherwise (the test stack is left up)
    db.migrate(db.engine(base))
    pids = {c.name: c.pid for c in stack.status()}
    identities = {"kafka": ProcessIdentity.of(pids["kafka"]) if pids.get("kafka") else None,
                  "postgres": ProcessIdentity.of(pids["postgres"]) if pids.get("postgres") else None}
    stamp = f"{datetime.now(timezone.utc):%Y%m%dT%H%M%SZ}"
    work = REPO / "var" / "soak" / stamp
    soak_s = args.minutes * 60
    warmup_s = min(args.warmup_seconds, soak_s / 3)
    results: dict = {"benchmark": "bench/soak.py", "at": datetime.now(timezone.utc).isoformat(),
                     "command": " ".join([Path(sys.executable).name, *sys.argv]), "args": vars(args) | {"out": str(args.out)},
                     "cpu": cpu_model(), "cpus": os.cpu_count(),
                     "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
                     "minutes": args.minutes, "warmup_s": warmup_s, "sample_seconds": args.sample_seconds,
                     "spark_master": "local[2]", "trigger": base.pipeline_trigger,
                     "max_offsets_per_trigger": base.pipeline_max_offsets_per_trigger,
                     "alerts_interval_seconds": base.alerts_interval_seconds, "logs": str(work),
                     "stack": {"home": str(base.home), "kafka": base.bootstrap_servers[0], "postgres_port": base.postgres_port,
                               "own": args.own_stack, "was_running": was_running},
                     "groups": dict(GROUPS), "rss_aim_groups": list(RSS_AIM), "samples": []}
    samples: list[dict] = results["samples"]
    problems: list[str] = []
    interrupted = False
    log(f"soak {args.minutes} min; logs under {work}")
    with db.scratch_database(base, prefix="soak") as settings:
        topic = f"bench.soak.{uuid.uuid4().hex[:8]}"
        ensure_topics([topic, topic + ".dl"], settings=settings)
        engine = db.engine(settings)
        job = Job(settings, topic, work / "job", threads=1)
        job_metrics, alert_metrics = free_port(), free_port()
        job.env["FINPULSE_PIPELINE_METRICS_PORT"] = str(job_metrics)
        alerts = AlertService(settings, work / "alerts", alert_metrics)
        producer: Producer | None = None
        try:
            log("starting the job and the alert service")
            job.start("--query-name", QUERY)
            alerts.start()
            warm_up(settings, topic, job)
            if args.rate is not None:
                rate, source = args.rate, "--rate"
            elif args.max_rate is not None:
                top, where = max_rate_from(args.max_rate)
                rate, source = top / 2, f"half of {top} docs/s, {where}"
            else:
                log(f"maximum rate: a burst of {args.burst} documents")
                burst = burst_rate(settings, topic, job, args.burst, engine)
                results["burst"] = burst
                rate = burst["docs_per_s"] / 2
                source = f"half of {burst['docs_per_s']} docs/s measured by a {args.burst}-document burst"
            rate = round(rate, 1)
            results["rate"] = {"docs_per_s": rate, "source": source}
            log(f"producing {rate} docs/s for {args.minutes} min ({source})")

            def take(phase: str, t: float, last: dict | None) -> dict:
                with engine.connect() as conn:
                    d = db_sample(conn, "soak")
                groups = process_groups(pids.get("kafka"), pids.get("postgres"), d["backends"],
                                        job.proc.pid if job.proc.poll() is None else None,
                                        alerts.proc.pid if alerts.proc.poll() is None else None)
                jm, am = scrape(job_metrics, PIPELINE_METRICS), scrape(alert_metrics, ALERT_METRICS)
                produced = len(producer.sent)
                s = {"phase": phase, "t": round(t, 1), "at": datetime.now(timezone.utc).isoformat(),
                     "produced": produced, "stored": d["stored"], "lag_docs": produced - d["stored"],
                     "lag_records": (jm or {}).get("finpulse_pipeline_lag_records"),
                     "load_average": [round(x, 2) for x in os.getloadavg()], "rss": measure(groups),
                     "pipeline_metrics": jm, "alert_metrics": am,
                     "alive": {"job": job.proc.poll() is None, "alerts": alerts.proc.poll() is None,
                               "kafka": alive(identities["kafka"]), "postgres": alive(identities["postgres"])}}
                if last is not None and t > last["t"]:
                    s["committed_docs_per_s"] = round((s["stored"] - last["stored"]) / (t - last["t"]), 1)
                    s["produced_docs_per_s"] = round((s["produced"] - last["produced"]) / (t - last["t"]), 1)
                r = s["rss"]
                log(f"t={s['t']:>6.0f}s produced {produced:,} stored {s['stored']:,} lag {s['lag_docs']:,} "
                    f"(records {s['lag_records']}) committed {s.get('committed_docs_per_s', '-')}/s | RSS MB "
                    f"kafka {r['kafka']['rss_mb']:.0f} pg {r['postgres']['rss_mb']:.0f} driver {r['driver']['rss_mb']:.0f} "
                    f"jvm {r['spark_jvm']['rss_mb']:.0f} workers {r['python_workers']['rss_mb']:.0f} "
                    f"({r['python_workers']['n']}) alerts {r['alerts']['rss_mb']:.0f}")
                samples.append(s)
                return s

            producer = Producer(settings, topic, demo_rows(5000), rate, soak_s)
            producer.start()
            t0 = time.monotonic()
            last = take("soak", 0.0, None)
            next_t = args.sample_seconds
            while producer.is_alive():
                if job.proc.poll() is not None or alerts.proc.poll() is not None:
                    problems.append("the job died during the soak" if job.proc.poll() is not None
                                    else "the alert service died during the soak")
                    producer.halt.set()
                    break
                if time.monotonic() - t0 >= next_t:
                    last = take("soak", time.monotonic() - t0, last)
                    next_t += args.sample_seconds
                time.sleep(0.5)
            producer.join()
            if producer.error is not None:
                problems.append(f"producing failed: {producer.error!r}")
            end = take("soak", time.monotonic() - t0, last)
            soak_seconds = (producer.finished_at or time.monotonic()) - producer.started_at
            log("production stopped; draining")
            drain_start = time.monotonic()
            while job.proc.poll() is None and time.monotonic() - drain_start < args.drain_seconds:
                if count_documents(settings, "soak-") >= len(producer.sent):
                    break
                time.sleep(1.0)
            drain_s = round(time.monotonic() - drain_start, 1)
            time.sleep(min(args.sample_seconds, 5.0))  # the batch after the last one: the job's lag gauge settles
            drained = take("drained", time.monotonic() - t0, None)

            with engine.connect() as conn:
                ingested = dict(conn.execute(sa.text(
                    "SELECT id, ingested_at FROM documents WHERE id LIKE 'soak-%'")).all())
                version = conn.execute(sa.text(
                    "SELECT model_version FROM pipeline_batches WHERE query_name = :q AND model_version IS NOT NULL "
                    "ORDER BY batch_id DESC LIMIT 1"), {"q": QUERY}).scalar()
                scored_twice = conn.execute(sa.text(
                    "SELECT count(*) FROM (SELECT document_id FROM document_scores WHERE model_version = :v "
                    "GROUP BY document_id HAVING count(*) > 1) x"), {"v": version}).scalar_one()
                unscored = conn.execute(sa.text(
                    "SELECT count(*) FROM documents d WHERE NOT EXISTS (SELECT 1 FROM document_scores s "
                    "WHERE s.document_id = d.id AND s.model_version = :v)"), {"v": version}).scalar_one()
                scores = conn.execute(sa.text("SELECT count(*) FROM document_scores WHERE model_version = :v"),
                                      {"v": version}).scalar_one()
                window_docs = conn.execute(sa.text(
                    "SELECT coalesce(sum(n_docs), 0) FROM sentiment_windows WHERE dimension = 'all' "
                    "AND window_end - window_start = interval '1 minute' AND model_version = :v"), {"v": version}).scalar_one()
                dead = conn.execute(sa.text("SELECT count(*) FROM dead_letters")).scalar_one()
                heartbeat = conn.execute(sa.text(
                    "SELECT extract(epoch FROM now() - heartbeat) FROM alert_leader")).scalar()
            lost = sorted(set(producer.sent) - set(ingested))
            soak_samples = [s for s in samples if s["phase"] == "soak"]
            first_stored = soak_samples[0]["stored"]
            am = drained["alert_metrics"] or end["alert_metrics"] or {}
            results["summary"] = {
                "rss": summarize_rss(samples, warmup_s),
                "produced": len(producer.sent), "stored": len(ingested), "soak_seconds": round(soak_seconds, 1),
                "produced_docs_per_s": round(len(producer.sent) / soak_seconds, 1),
                "committed_docs_per_s": round((end["stored"] - first_stored) / max(end["t"], 1e-9), 1),
                "max_lag_docs": max(s["lag_docs"] for s in samples),
                "max_lag_records": max((s["lag_records"] for s in samples if s["lag_records"] is not None), default=None),
                "final_lag_docs": drained["lag_docs"], "final_lag_records": drained["lag_records"], "drain_s": drain_s,
                "latency": latencies(producer.sent, ingested, soak_samples),
                "lost": len(lost), "lost_ids_first": lost[:20], "dead_letters": dead, "model_version": version,
                "scored_twice": scored_twice, "unscored": unscored, "scores": scores, "window_docs": int(window_docs),
                "duplicate_records": (drained["pipeline_metrics"] or {}).get(
                    'finpulse_pipeline_records_total{outcome="duplicate"}'),
                "alert_evaluations": {k.split('"')[1]: v for k, v in am.items()
                                      if k.startswith("finpulse_alerts_evaluations_total")},
                "alert_leader_heartbeat_age_s": round(float(heartbeat), 1) if heartbeat is not None else None,
                "alive": dict(drained["alive"], spark_jvm=bool(drained["rss"]["spark_jvm"]["n"]),
                              python_workers=bool(drained["rss"]["python_workers"]["n"])),
                "python_worker_rss_mb_max": round(job.max_rss, 1),
            }
            if lost:
                problems.append(f"{len(lost)} document(s) produced and not stored after the drain")
            dead_now = [k for k, v in results["summary"]["alive"].items() if v is False]
            if dead_now:
                problems.append(f"not alive at the end: {', '.join(dead_now)}")
        except KeyboardInterrupt:
            interrupted = True
            problems.append("interrupted")
            log("interrupted: stopping")
        except Exception as exc:  # noqa: BLE001 - reported in the results with the samples so far
            problems.append(f"failed: {exc!r}")
            traceback.print_exc()
            log(f"failed: {exc!r}; stopping")
        finally:
            signal.signal(signal.SIGINT, signal.SIG_IGN)  # the clean-up runs to its end
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            if producer is not None:
                producer.halt.set()
                producer.join(timeout=30)
            job.stop()
            alerts.stop()
            engine.dispose()
            try:
                client = admin(settings)
                try:
                    client.delete_topics([t for t in (topic, topic + ".dl") if t in set(client.list_topics())])
                finally:
                    client.close()
            except Exception as exc:  # noqa: BLE001 - the topics are left; say so
                log(f"topics {topic}* not deleted: {exc!r}")
            shutil.rmtree(work / "job" / "checkpoint", ignore_errors=True)
    if args.own_stack and not was_running:
        log(f"stopping the soak's own stack ({base.home})")
        stack.down()
    results["problems"] = problems
    results["ok"] = not problems
    out = args.out or RESULTS / f"soak-{stamp}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1, default=str))
    if "summary" in results:
        print(table(results))
    for p in problems:
        print(f"PROBLEM: {p}")
    print(f"\nwrote {out}")
    return 130 if interrupted else (1 if problems else 0)


if __name__ == "__main__":
    sys.exit(main())
