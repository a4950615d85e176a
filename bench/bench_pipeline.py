"""The streaming job against the bare model doing the same work, and against the naive design, in one run.

Texts: the bundled demo stream (``ingest/demo``: 5,000 stock-market tweets of 2020 with their cashtags as
the producer's tickers, as ``finpulse ingest demo`` publishes them), the first ``--n`` rows.

(a) ``model``: ``Scorer.score_documents`` (evidence words on, as the job asks) in-process on the same texts and the same entity links the job
    makes (``pipeline.entities.EntityLinker``), at every precision this CPU runs (fp32, int8, and bf16
    where the CPU has it natively), interleaved and best of ``--repeats``; encoder passes per document
    counted by the Scorer (chunks read, plus one pass per link for a pair-mode entity head). With
    ``--before-model DIR`` (e.g. the model shipped before the one-pass entity head) it is measured too.
(b) ``pipeline``: the job (``python -m pipeline run``, Spark local[2], in-process Scorer at the precision
    ``auto`` picks) from Kafka to Postgres; docs/s = documents / (last batch finished - first batch
    started), from ``pipeline_batches``, so Spark's and the model's start-up are not counted; encoder
    passes per document from ``document_scores.n_chunks`` (one pass per chunk; a span entity head reads
    from those passes), plus one per scored link for a model whose entity head reads pairs.
(c) ``naive``: what people write first: Spark reads the same Kafka topic, a per-row Python UDF calls a
    transformers ``pipeline("text-classification")`` one text at a time (the same encoder, fp32), and
    Spark's JDBC writer appends the rows to Postgres; document sentiment only, no entities.
(d) ``latency``: the job running warm, documents produced at half of (b)'s rate; produce time (in the
    document) -> ``documents.ingested_at`` (the sink's transaction time), p50 / p95.
(e) ``accuracy`` per precision: sentiment macro-F1 on the model's sentiment test split and entity
    accuracy (all / mixed headlines) on the held-out entity rows (the int8 bound: at most 0.5 point lost).
Python worker RSS: the largest resident set of a PySpark Python worker seen during (b).

    .venv/bin/python bench/bench_pipeline.py [--n 2000] [--latency-seconds 30] [--skip-naive] [--before-model DIR]

Runs against the test stack (Kafka 127.0.0.1:29092, Postgres 54339) in a scratch database and fresh topics;
writes bench/results/pipeline-<UTC>.json and prints a table, with the CPU it ran on.
"""

from __future__ import annotations

import argparse
import json
import os
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

from bench.bench_scorer import naive_pipeline  # noqa: E402
from bench.machine import cpu_model  # noqa: E402

DEMO_FILE = REPO / "ingest" / "demo" / "stock_market_tweets_2020.csv.gz"


def demo_rows(n: int) -> list[tuple[str, list[str]]]:
    """(text, producer tickers) of the demo stream's first ``n`` rows (looped past 5,000)."""
    import pandas as pd

    table = pd.read_csv(DEMO_FILE, dtype=str, keep_default_na=False)
    rows = [(text, [t.lstrip("$").upper() for t in tags.split() if t.strip("$")])
            for text, tags in zip(table["text"], table["cashtags"])]
    return [rows[i % len(rows)] for i in range(n)]


def log(msg: str) -> None:
    print(f"[{datetime.now(timezone.utc):%H:%M:%S}] {msg}", file=sys.stderr, flush=True)


def documents(rows: list[tuple[str, list[str]]] | list[str], tag: str) -> list[tuple[bytes, bytes]]:
    """Contract documents (comments with their producer tickers, one second apart, ending now) as Kafka messages."""
    now = datetime.now(timezone.utc)
    out = []
    for i, row in enumerate(rows):
        text, tickers = row if isinstance(row, tuple) else (row, [])
        doc = {"schema_version": 1, "id": f"{tag}-{i}", "source": "bench", "kind": "comment", "text": text,
               "published_at": (now - timedelta(seconds=len(rows) - i)).isoformat(), "fetched_at": now.isoformat(),
               "lang": "en", "tickers": tickers, "extra": {}}
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


def process_children() -> dict[int, list[int]]:
    """{pid: its child pids} of every process now running (from /proc)."""
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
    return children


def worker_rss_mb(job_pid: int) -> float:
    """Largest RSS (MB) among the PySpark Python processes descended from the job.

    Spark starts its Python daemon in a session of its own, so the workers are found by parent
    pid (job -> JVM -> pyspark.daemon -> forked workers), not by process group.
    """
    children = process_children()
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


def precisions_here() -> list[str]:
    """The precisions this CPU runs: fp32 and int8 always, bf16 where it is native."""
    import torch

    from models.network import bf16_supported

    return ["fp32", "int8"] + (["bf16"] if bf16_supported(torch.device("cpu")) else [])


def bench_model(rows: list[tuple[str, list[str]]], threads: int, repeats: int, before_model: str | None) -> dict:
    """(a): the Scorer on the job's work (texts and entity links) at each precision, interleaved, best of N."""
    import torch

    from models.scorer import Scorer
    from pipeline.entities import EntityLinker

    torch.set_num_threads(threads)
    linker = EntityLinker.load()
    links = [linker.link(title=None, text=text, tickers=tickers) for text, tickers in rows]
    texts = [text for text, _ in rows]
    names = [[link.names for link in doc] for doc in links]
    scorers = {p: Scorer.load(device="cpu", precision=p) for p in precisions_here()}
    if before_model:
        scorers["before"] = Scorer.load(before_model, device="cpu", precision="fp32")
    best = {k: float("inf") for k in scorers}
    passes = {}
    for scorer in scorers.values():
        scorer.score_documents(texts[:64], names[:64], evidence=True)  # warm-up: oneDNN/fbgemm kernels are made lazily
    for _ in range(repeats):
        for key, scorer in scorers.items():
            before = scorer.passes
            t0 = time.perf_counter()
            scorer.score_documents(texts, names, evidence=True)  # as the job asks
            best[key] = min(best[key], time.perf_counter() - t0)
            passes[key] = scorer.passes - before
    out = {key: {"docs_per_s": round(len(texts) / best[key], 1), "seconds": round(best[key], 3),
                 "passes_per_doc": round(passes[key] / len(texts), 3), "model_version": scorers[key].version,
                 "precision": scorers[key].precision}
           for key in scorers}
    out["entity_links"] = sum(len(doc) for doc in links)
    out["threads"] = threads
    return out


def bench_accuracy(precisions: list[str]) -> dict:
    """(e): test-split sentiment macro-F1 and held-out entity accuracy of the shipped model at each precision."""
    from models.evaluation.entity_eval import entity_eval
    from models.evaluation.metrics import classification_report
    from models.scorer import Scorer
    from models.training import corpus
    from models.training.entity_data import entity_splits
    from pipeline.entities import EntityLinker

    split = corpus.build_split("sentiment", corpus.default_sentiment_frames(), val_fraction=0.1, seed=13, test_share=0.5)
    _, entity_test = entity_splits(seed=13)
    out = {}
    for precision in precisions:
        scorer = Scorer.load(device="cpu", precision=precision)
        texts = split.test["text"].tolist()

        def macro_f1(predicted) -> tuple[float, int]:
            keep = [i for i, p in enumerate(predicted) if p is not None]
            report = classification_report([split.test["label"].iloc[i] for i in keep], [predicted[i] for i in keep],
                                           labels=scorer.labels["sentiment"])
            return round(report["macro_f1"], 4), report["n"]

        f1, n = macro_f1(scorer.score_arrays(texts).sentiment)
        # As the job reads them: with the tickers the job links in each text (a model that marks mentions
        # reads them marked in the document's one pass, and its sentiment comes from that pass).
        linker = EntityLinker.load()
        names = [[link.names for link in linker.link(title=None, text=t, tickers=[])] for t in texts]
        f1_job, _ = macro_f1(scorer.score_documents(texts, names)[0].sentiment)
        entity = entity_eval(scorer, entity_test)["entity_head"] or {}
        out[precision] = {"sentiment_test_macro_f1": f1, "sentiment_test_n": n,
                          "sentiment_test_macro_f1_with_links": f1_job,
                          "texts_with_links": sum(1 for x in names if x),
                          "entity_accuracy_all": round(entity.get("all", {}).get("accuracy", float("nan")), 4),
                          "entity_accuracy_mixed": round(entity.get("mixed", {}).get("accuracy", float("nan")), 4),
                          "entity_n": entity.get("all", {}).get("n")}
    return out


def warm_up(settings, topic: str, job: "Job") -> None:
    """Documents on every partition through the job before any clock starts, so that Spark is up
    and every Python worker has loaded the model (each loads it at its first task)."""
    warm = documents([f"warm-up document {i}" for i in range(3 * WARM_PARTITIONS)], f"warm-{topic}")  # no tickers
    produce(settings, topic, warm)
    deadline = time.monotonic() + 600
    while count_documents(settings, f"warm-{topic}") < len(warm):
        if time.monotonic() > deadline or job.proc.poll() is not None:
            raise RuntimeError(f"the job did not start; see {job.log}")
        time.sleep(0.5)


def bench_pipeline(settings, rows: list[tuple[str, list[str]]], workdir: Path, threads: int) -> dict:
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
    produce(settings, topic, documents(rows, "e2e"))
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
        # one encoder pass per chunk read; a span entity head reads from those passes
        chunks = conn.execute(sa.text(
            "SELECT sum(n_chunks) FROM document_scores WHERE document_id LIKE 'e2e-%'")).scalar_one()
    engine.dispose()
    from models.scorer import get_scorer

    # A model whose entity head reads pairs runs one more pass per link it scored.
    pair_passes = 0 if get_scorer(None, "cpu").network.reads_spans else int(links["scored"] or 0)
    seconds = (row["b"] - row["a"]).total_seconds()
    n = count_documents(settings, "e2e-")
    return {"docs": n, "seconds": round(seconds, 3), "docs_per_s": round(n / seconds, 1), "batches": row["batches"],
            "entity_links": links["links"], "entity_links_scored": links["scored"],
            "passes_per_doc": round((int(chunks or 0) + pair_passes) / max(n, 1), 3),
            "python_worker_rss_mb_max": round(job.max_rss, 1), "topic": topic}


def bench_latency(settings, rows: list[tuple[str, list[str]]], workdir: Path, threads: int, rate: float,
                  seconds: float) -> dict:
    import sqlalchemy as sa

    from finpulse import db
    from finpulse.kafka import ensure_topics

    topic = f"bench.latency.{uuid.uuid4().hex[:8]}"
    ensure_topics([topic, topic + ".dl"], settings=settings)
    n = max(1, int(rate * seconds))
    pool = (rows * (n // len(rows) + 1))[:n]
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


def bench_naive(settings, rows: list[tuple[str, list[str]]], threads: int) -> dict:
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
    produce(settings, topic, documents(rows, "naive"))
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

    naive_pipeline(get_scorer(precision="fp32"), Path(folder))  # saved once; each Python worker loads it from disk

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
    parser.add_argument("--n", type=int, default=2000, help="Demo-stream documents (the same for every stage).")
    parser.add_argument("--threads", type=int, default=2, help="torch threads of the bare model (a).")
    parser.add_argument("--repeats", type=int, default=2, help="Timed rounds of (a), interleaved across precisions.")
    parser.add_argument("--latency-seconds", type=float, default=30.0)
    parser.add_argument("--skip-naive", action="store_true")
    parser.add_argument("--skip-accuracy", action="store_true")
    parser.add_argument("--before-model", default=None,
                        help="Also measure this model folder in (a) (e.g. the one shipped before, with a pair entity head).")
    args = parser.parse_args()

    import torch

    from finpulse import db
    from finpulse.settings import Settings
    from models.scorer import resolve_precision
    from stack import LocalStack

    base = Settings()
    LocalStack(base).up()  # idempotent: reuses a running test stack, starts it otherwise (and leaves it up)
    db.migrate(db.engine(base))
    rows = demo_rows(args.n)
    load = os.getloadavg()
    job_precision = resolve_precision(torch.device("cpu"), base.model_precision)
    results: dict = {"benchmark": "bench/bench_pipeline.py", "at": datetime.now(timezone.utc).isoformat(),
                     "n_docs": len(rows), "cpu": cpu_model(), "cpus": os.cpu_count(),
                     "load_average_at_start": [round(x, 2) for x in load],
                     "docs": "ingest/demo stream, first rows, cashtags as producer tickers",
                     "spark_master": "local[2]", "trigger": base.pipeline_trigger,
                     "max_offsets_per_trigger": base.pipeline_max_offsets_per_trigger, "job_precision": job_precision}
    with db.scratch_database(base, prefix="bench") as settings, \
            tempfile.TemporaryDirectory(prefix="bench-pipeline-") as tmp:
        work = Path(tmp)
        log(f"(a) bare model, precisions {precisions_here()}")
        results["model"] = bench_model(rows, args.threads, args.repeats, args.before_model)
        log(f"    {results['model']}")
        log(f"(b) pipeline Kafka -> Postgres ({job_precision})")
        results["pipeline"] = bench_pipeline(settings, rows, work / "b", 1)
        log(f"    {results['pipeline']}")
        rate = results["pipeline"]["docs_per_s"] / 2
        log(f"(d) latency at {rate:.0f} docs/s")
        results["latency"] = bench_latency(settings, rows, work / "d", 1, rate, args.latency_seconds)
        log(f"    {results['latency']}")
        if not args.skip_naive:
            log("(c) naive: per-row UDF + transformers pipeline() + JDBC append")
            results["naive"] = bench_naive(settings, rows, 1)
            log(f"    {results['naive']}")
    if not args.skip_accuracy:
        log("(e) accuracy per precision")
        results["accuracy"] = bench_accuracy(precisions_here())
        log(f"    {results['accuracy']}")
    model = results["model"]
    results["ratios"] = {
        "pipeline_over_model": round(results["pipeline"]["docs_per_s"] / model[job_precision]["docs_per_s"], 2),
        "int8_over_fp32": round(model["int8"]["docs_per_s"] / model["fp32"]["docs_per_s"], 2),
    }
    if "naive" in results:
        results["ratios"]["pipeline_over_naive"] = round(results["pipeline"]["docs_per_s"] / results["naive"]["docs_per_s"], 2)
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"pipeline-{datetime.now(timezone.utc):%Y%m%dT%H%M%SZ}.json"
    out.write_text(json.dumps(results, indent=1, default=str))
    lines = ["| stage | figure |", "|---|---|", f"| CPU | {results['cpu']}, {results['cpus']} cores |"]
    for key in precisions_here() + (["before"] if "before" in model else []):
        lines.append(f"| (a) model {key} ({model[key]['model_version']}) | {model[key]['docs_per_s']} docs/s, "
                     f"{model[key]['passes_per_doc']} encoder passes/doc |")
    p = results["pipeline"]
    lines += [f"| (b) pipeline Kafka -> Postgres ({job_precision}) | {p['docs_per_s']} docs/s, {p['passes_per_doc']} "
              f"passes/doc ({p['entity_links_scored']} of {p['entity_links']} entity links scored, {p['batches']} batches) |"]
    if "naive" in results:
        lines.append(f"| (c) naive UDF + JDBC | {results['naive']['docs_per_s']} docs/s |")
    lines += [f"| (b)/(a) at {job_precision} | {results['ratios']['pipeline_over_model']} |",
              f"| int8 / fp32 (a) | {results['ratios']['int8_over_fp32']} |"]
    if "naive" in results:
        lines.append(f"| (b)/(c) | {results['ratios']['pipeline_over_naive']} |")
    lines += [f"| (d) latency p50 / p95 at {results['latency']['rate_docs_per_s']} docs/s | "
              f"{results['latency']['p50_s']} s / {results['latency']['p95_s']} s |",
              f"| Python worker RSS (max) | {p['python_worker_rss_mb_max']} MB |"]
    for precision, acc in results.get("accuracy", {}).items():
        lines.append(f"| (e) {precision}: sentiment test macro-F1 (with the job's links) / entity acc all / mixed | "
                     f"{acc['sentiment_test_macro_f1']} ({acc['sentiment_test_macro_f1_with_links']}) / "
                     f"{acc['entity_accuracy_all']} / {acc['entity_accuracy_mixed']} |")
    print("\n".join(lines) + f"\n\nwrote {out}")


if __name__ == "__main__":
    main()
