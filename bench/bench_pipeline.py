"""The streaming job against the bare Scorer and against the naive design, on the same texts in one run.

(a) ``scorer``: ``models.scorer.Scorer.score_arrays`` on the texts, in-process (the ceiling).
(b) ``pipeline``: the job (``python -m pipeline run``, Spark local[2], in-process Scorer) from
    Kafka to Postgres; docs/s = documents / (last batch finished - first batch started), from
    ``pipeline_batches``, so Spark's and the model's start-up are not counted.
(c) ``naive``: what people write first: Spark reads the same Kafka topic, a per-row Python UDF
    calls a transformers ``pipeline("text-classification")`` one text at a time (built from the
    same merged encoder, as in bench_scorer.py), and Spark's JDBC writer appends the rows to
    Postgres. Timed from the first read to the last row written (Spark start-up excluded).
(d) ``latency``: the job running warm, documents produced at half of (b)'s rate; produce time
    (in the document) -> ``documents.ingested_at`` (the sink's transaction time), p50 / p95.
Python worker RSS: the largest resident set of a PySpark Python worker seen during (b).

    .venv/bin/python bench/bench_pipeline.py [--n 2000] [--latency-seconds 30] [--skip-naive]

Runs against the test stack (Kafka 127.0.0.1:29092, Postgres 54339) in a scratch database and
fresh topics that it drops/leaves; writes bench/results/pipeline-<UTC>.json and prints a table.
Reads the bundled models/training/data (the texts of bench_scorer.py).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
RESULTS = REPO / "bench" / "results"
WARM_PARTITIONS = 3  # FINPULSE_TOPIC_PARTITIONS of the test stack: every partition gets warm-up documents
TEST_ENV = {
    "FINPULSE_HOME": str(REPO / "var" / "test-stack"),
    "FINPULSE_CACHE_DIR": str(REPO / "var" / "cache"),
    "FINPULSE_KAFKA_PORT": os.environ.get("FINPULSE_TEST_KAFKA_PORT", "29092"),
    "FINPULSE_KAFKA_CONTROLLER_PORT": str(int(os.environ.get("FINPULSE_TEST_KAFKA_PORT", "29092")) + 1),
    "FINPULSE_POSTGRES_PORT": os.environ.get("FINPULSE_TEST_POSTGRES_PORT", "54339"),
}
for _k, _v in TEST_ENV.items():
    os.environ.setdefault(_k, _v)
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from bench.bench_scorer import bench_texts, naive_pipeline  # noqa: E402


def log(msg: str) -> None:
    print(f"[{datetime.now(timezone.utc):%H:%M:%S}] {msg}", file=sys.stderr, flush=True)


def documents(texts: list[str], tag: str, *, stamp: bool = False) -> list[tuple[bytes, bytes]]:
    now = datetime.now(timezone.utc)
    out = []
    for i, text in enumerate(texts):
        doc = {"schema_version": 1, "id": f"{tag}-{i}", "source": "bench", "kind": "news", "text": text,
               "published_at": (now - timedelta(seconds=len(texts) - i)).isoformat(), "fetched_at": now.isoformat(),
               "lang": "en", "tickers": [], "extra": {}}
        out.append((doc["id"].encode(), json.dumps(doc).encode()))
    return out


def produce(settings, topic: str, messages, *, rate: float | None = None, stamp_ids: dict | None = None) -> None:
    from kafka import KafkaProducer

    producer = KafkaProducer(bootstrap_servers=settings.bootstrap_servers, acks="all", linger_ms=5)
    start = time.monotonic()
    for i, (key, value) in enumerate(messages):
        partition = i % WARM_PARTITIONS if key.startswith(b"warm-") else None
        if rate:
            delay = start + i / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        if stamp_ids is not None:
            stamp_ids[key.decode()] = datetime.now(timezone.utc)
        producer.send(topic, key=key, value=value, partition=partition)
    producer.flush()
    producer.close()


def worker_rss_mb(job_pid: int) -> float:
    """Largest RSS (MB) among the PySpark Python processes descended from the job.

    Spark starts its Python daemon in a session of its own, so the workers are found by parent
    pid (job -> JVM -> pyspark.daemon -> forked workers), not by process group.
    """
    children: dict[int, list[int]] = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            for line in (proc / "status").read_text().splitlines():
                if line.startswith("PPid:"):
                    children.setdefault(int(line.split()[1]), []).append(int(proc.name))
                    break
        except OSError:
            continue
    best, todo = 0.0, list(children.get(job_pid, []))
    while todo:
        pid = todo.pop()
        todo += children.get(pid, [])
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
            if b"pyspark" not in cmd:
                continue
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    best = max(best, int(line.split()[1]) / 1024)
        except OSError:
            continue
    return best


class Job:
    """The streaming job as a subprocess in its own process group, on the bench topics and database."""

    def __init__(self, settings, topic: str, workdir: Path, threads: int):
        self.env = {**os.environ, "FINPULSE_DATABASE_URL": settings.database_url.get_secret_value(),
                    "FINPULSE_TOPIC_DOCUMENTS": topic, "FINPULSE_TOPIC_DEAD_LETTERS": topic + ".dl",
                    "FINPULSE_PIPELINE_CHECKPOINT_DIR": str(workdir / "checkpoint"),
                    "FINPULSE_HOME": str(workdir / "home"), "FINPULSE_SPARK_MASTER": "local[2]",
                    "OMP_NUM_THREADS": str(threads)}
        workdir.mkdir(parents=True, exist_ok=True)
        self.log = workdir / "job.log"
        self.proc: subprocess.Popen | None = None
        self.max_rss = 0.0
        self._sampling = False

    def start(self, *args: str) -> None:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", "pipeline", "run", *args], cwd=REPO, env=self.env,
                                         stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        self._sampling = True
        threading.Thread(target=self._sample, daemon=True).start()

    def _sample(self) -> None:
        while self._sampling and self.proc and self.proc.poll() is None:
            self.max_rss = max(self.max_rss, worker_rss_mb(self.proc.pid))
            time.sleep(0.5)

    def wait(self, timeout: float) -> None:
        assert self.proc is not None
        try:
            rc = self.proc.wait(timeout=timeout)
        finally:
            self._sampling = False
        if rc != 0:
            raise RuntimeError(f"job exited {rc}; see {self.log}")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=120)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self._sampling = False


def count_documents(settings, prefix: str = "") -> int:
    import sqlalchemy as sa

    from finpulse import db

    engine = db.engine(settings)
    try:
        with engine.connect() as conn:
            return conn.execute(sa.text("SELECT count(*) FROM documents WHERE id LIKE :p"), {"p": f"{prefix}%"}).scalar_one()
    finally:
        engine.dispose()


def bench_scorer(texts: list[str], threads: int) -> dict:
    import torch

    from models.scorer import get_scorer

    torch.set_num_threads(threads)
    scorer = get_scorer()
    scorer.score_arrays(texts[:64])  # warm-up
    best = float("inf")
    for _ in range(2):
        t0 = time.perf_counter()
        scorer.score_arrays(texts)
        best = min(best, time.perf_counter() - t0)
    return {"texts_per_s": round(len(texts) / best, 1), "seconds": round(best, 3), "threads": threads,
            "model_version": scorer.version, "bf16": bool(getattr(scorer, "bf16", False))}


def warm_up(settings, topic: str, job: "Job") -> None:
    """Documents on every partition through the job before any clock starts, so that Spark is up
    and every Python worker has loaded the model (each loads it at its first task)."""
    warm = documents([f"warm-up document {i}" for i in range(3 * WARM_PARTITIONS)], f"warm-{topic}")
    produce(settings, topic, warm)
    deadline = time.monotonic() + 600
    while count_documents(settings, f"warm-{topic}") < len(warm):
        if time.monotonic() > deadline or job.proc.poll() is not None:
            raise RuntimeError(f"the job did not start; see {job.log}")
        time.sleep(0.5)


def bench_pipeline(settings, texts: list[str], workdir: Path, threads: int) -> dict:
    import sqlalchemy as sa

    from finpulse import db
    from finpulse.kafka import ensure_topics

    topic = f"bench.pipeline.{uuid.uuid4().hex[:8]}"
    ensure_topics([topic, topic + ".dl"], settings=settings)
    job = Job(settings, topic, workdir, threads)
    job.start("--until-idle", "5", "--query-name", "bench")
    warm_up(settings, topic, job)
    engine = db.engine(settings)
    with engine.connect() as conn:
        warm_batches = conn.execute(sa.text(
            "SELECT coalesce(max(batch_id), -1) FROM pipeline_batches WHERE query_name = 'bench'")).scalar_one()
    produce(settings, topic, documents(texts, "e2e"))
    job.wait(timeout=1800)
    with engine.connect() as conn:
        # Only the batches after the warm-up: steady state, Spark's and the model's start-up not counted.
        row = conn.execute(sa.text(
            "SELECT min(started_at) AS a, max(finished_at) AS b, sum(n_scored) AS n, count(*) AS batches "
            "FROM pipeline_batches WHERE status = 'committed' AND query_name = 'bench' AND batch_id > :w "
            "AND n_input > 0"), {"w": warm_batches}).mappings().one()
        # the entity head's share of the work: (document, ticker) links it scored in those documents
        links = conn.execute(sa.text(
            "SELECT count(*) AS links, count(sentiment) AS scored FROM document_entities "
            "WHERE document_id LIKE 'e2e-%'")).mappings().one()
    engine.dispose()
    seconds = (row["b"] - row["a"]).total_seconds()
    n = count_documents(settings, "e2e-")
    return {"docs": n, "seconds": round(seconds, 3), "docs_per_s": round(n / seconds, 1), "batches": row["batches"],
            "entity_links": links["links"], "entity_links_scored": links["scored"],
            "python_worker_rss_mb_max": round(job.max_rss, 1), "topic": topic}


def bench_latency(settings, texts: list[str], workdir: Path, threads: int, rate: float, seconds: float) -> dict:
    import sqlalchemy as sa

    from finpulse import db
    from finpulse.kafka import ensure_topics

    topic = f"bench.latency.{uuid.uuid4().hex[:8]}"
    ensure_topics([topic, topic + ".dl"], settings=settings)
    n = max(1, int(rate * seconds))
    pool = (texts * (n // len(texts) + 1))[:n]
    job = Job(settings, topic, workdir, threads)
    job.start("--until-idle", "8", "--query-name", "latency")
    warm_up(settings, topic, job)
    sent: dict[str, datetime] = {}
    produce(settings, topic, documents(pool, "lat"), rate=rate, stamp_ids=sent)
    job.wait(timeout=1800)
    engine = db.engine(settings)
    with engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT id, ingested_at FROM documents WHERE id LIKE 'lat-%'")).all()
    engine.dispose()
    lat = sorted((r.ingested_at - sent[r.id]).total_seconds() for r in rows if r.id in sent)
    q = statistics.quantiles(lat, n=100) if len(lat) >= 2 else lat * 100
    return {"rate_docs_per_s": round(rate, 1), "docs": len(lat), "p50_s": round(q[49], 3), "p95_s": round(q[94], 3),
            "max_s": round(lat[-1], 3) if lat else None}


def bench_naive(settings, texts: list[str], threads: int) -> dict:
    """Kafka -> per-row Python UDF (transformers pipeline, one text per call) -> Spark JDBC append."""
    from pyspark.sql import SparkSession
    from pyspark.sql import functions as F
    from pyspark.sql.types import FloatType, StringType, StructField, StructType

    import sqlalchemy as sa

    from finpulse.kafka import ensure_topics
    from stack import spark_jars
    from stack.jars import resolve_classpath

    topic = f"bench.naive.{uuid.uuid4().hex[:8]}"
    ensure_topics([topic], settings=settings)
    produce(settings, topic, documents(texts, "naive"))
    jdbc = [str(p) for p in resolve_classpath(str(REPO / "bench" / "postgres-jdbc.pom.xml"), settings)]
    os.environ["PYSPARK_PYTHON"] = sys.executable
    os.environ["OMP_NUM_THREADS"] = str(threads)
    spark = (SparkSession.builder.master("local[2]").appName("finpulse-bench-naive")
             .config("spark.jars", ",".join(spark_jars(settings) + jdbc))
             .config("spark.ui.enabled", "false").config("spark.sql.shuffle.partitions", "2")
             .config("spark.ui.showConsoleProgress", "false").getOrCreate())
    spark.sparkContext.setLogLevel("ERROR")
    folder = tempfile.mkdtemp(prefix="naive-model-")
    from models.scorer import get_scorer

    naive_pipeline(get_scorer(), Path(folder))  # saved once; each Python worker loads it from disk

    result_type = StructType([StructField("label", StringType()), StructField("score", FloatType())])

    @F.udf(result_type)
    def classify(text):
        import builtins

        pipe = getattr(builtins, "_finpulse_naive_pipe", None)
        if pipe is None:
            import torch
            from transformers import pipeline

            torch.set_num_threads(1)
            pipe = pipeline("text-classification", model=folder, device=-1)
            builtins._finpulse_naive_pipe = pipe
        out = pipe(text, truncation=True)[0]
        return out["label"], float(out["score"])

    url = sa.engine.make_url(settings.database_url.get_secret_value())
    jdbc_url = f"jdbc:postgresql://{url.host}:{url.port}/{url.database}"
    schema = "id string, text string, published_at string"
    # Warm: both Python workers load the pipeline before the clock starts, as the job's are warm in (b).
    spark.createDataFrame([(f"warm-up {i}",) for i in range(8)], "text string").repartition(2) \
        .select(classify("text").alias("s")).collect()
    t0 = time.perf_counter()
    frame = (spark.read.format("kafka").option("kafka.bootstrap.servers", ",".join(settings.bootstrap_servers))
             .option("subscribe", topic).option("startingOffsets", "earliest").load()
             .select(F.from_json(F.col("value").cast("string"), schema).alias("d")).select("d.*")
             .withColumn("s", classify("text"))
             .select("id", "published_at", F.col("s.label").alias("sentiment"), F.col("s.score").alias("confidence")))
    (frame.write.format("jdbc").option("url", jdbc_url).option("dbtable", "naive_scores")
     .option("user", url.username).option("password", url.password).option("driver", "org.postgresql.Driver")
     .mode("append").save())
    seconds = time.perf_counter() - t0
    spark.stop()
    engine = sa.create_engine(settings.database_url.get_secret_value())
    with engine.connect() as conn:
        n = conn.execute(sa.text("SELECT count(*) FROM naive_scores")).scalar_one()
    engine.dispose()
    return {"docs": n, "seconds": round(seconds, 3), "docs_per_s": round(n / seconds, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=2000, help="Texts (the same for every stage).")
    parser.add_argument("--threads", type=int, default=2, help="torch threads of the bare Scorer (a).")
    parser.add_argument("--latency-seconds", type=float, default=30.0)
    parser.add_argument("--skip-naive", action="store_true")
    args = parser.parse_args()

    from finpulse.settings import Settings

    from finpulse import db
    from stack import LocalStack

    base = Settings()
    LocalStack(base).up()  # idempotent: reuses a running test stack, starts it otherwise (and leaves it up)
    db.migrate(db.engine(base))
    texts = bench_texts(args.n)
    load = os.getloadavg()
    results: dict = {"benchmark": "bench/bench_pipeline.py", "at": datetime.now(timezone.utc).isoformat(),
                     "n_texts": len(texts), "cpu": platform.machine(), "cpus": os.cpu_count(),
                     "load_average_at_start": [round(x, 2) for x in load],
                     "texts": "bench_scorer.bench_texts: half financial-news tweets, half SEntFiN headlines, seed 0",
                     "spark_master": "local[2]", "trigger": base.pipeline_trigger}
    with db.scratch_database(base, prefix="bench") as settings, \
            tempfile.TemporaryDirectory(prefix="bench-pipeline-") as tmp:
        work = Path(tmp)
        log("(a) bare Scorer")
        results["scorer"] = bench_scorer(texts, args.threads)
        log(f"    {results['scorer']}")
        log("(b) pipeline Kafka -> Postgres")
        results["pipeline"] = bench_pipeline(settings, texts, work / "b", 1)
        log(f"    {results['pipeline']}")
        rate = results["pipeline"]["docs_per_s"] / 2
        log(f"(d) latency at {rate:.0f} docs/s")
        results["latency"] = bench_latency(settings, texts, work / "d", 1, rate, args.latency_seconds)
        log(f"    {results['latency']}")
        if not args.skip_naive:
            log("(c) naive: per-row UDF + transformers pipeline() + JDBC append")
            results["naive"] = bench_naive(settings, texts, 1)
            log(f"    {results['naive']}")
    results["ratios"] = {"pipeline_over_scorer": round(results["pipeline"]["docs_per_s"] / results["scorer"]["texts_per_s"], 2)}
    if "naive" in results:
        results["ratios"]["pipeline_over_naive"] = round(results["pipeline"]["docs_per_s"] / results["naive"]["docs_per_s"], 2)
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"pipeline-{datetime.now(timezone.utc):%Y%m%dT%H%M%SZ}.json"
    out.write_text(json.dumps(results, indent=1, default=str))
    print(f"| stage | figure |\n|---|---|\n"
          f"| (a) bare Scorer | {results['scorer']['texts_per_s']} texts/s |\n"
          f"| (b) pipeline Kafka -> Postgres | {results['pipeline']['docs_per_s']} docs/s "
          f"({results['pipeline']['entity_links_scored']} of {results['pipeline']['entity_links']} entity links scored) |\n"
          + (f"| (c) naive UDF + JDBC | {results['naive']['docs_per_s']} docs/s |\n" if "naive" in results else "")
          + f"| (b)/(a) | {results['ratios']['pipeline_over_scorer']} |\n"
          + (f"| (b)/(c) | {results['ratios']['pipeline_over_naive']} |\n" if "naive" in results else "")
          + f"| latency p50 / p95 at {results['latency']['rate_docs_per_s']} docs/s | "
            f"{results['latency']['p50_s']} s / {results['latency']['p95_s']} s |\n"
          f"| Python worker RSS (max) | {results['pipeline']['python_worker_rss_mb_max']} MB |\n"
          f"\nwrote {out}")


if __name__ == "__main__":
    main()
