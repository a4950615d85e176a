"""`finpulse run` (what `make run` calls): the stack, the pipeline service, the sample replayed once (`finpulse ingest demo`).

Runs against the shared test broker and a scratch database as *external* services (so it starts
nothing embedded), with its own topics and state dir, and a 120-row slice of the sample.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import uuid

import pytest
import sqlalchemy as sa

from tests.conftest import scratch_database
from tests.pipeline.conftest import REPO

pytestmark = [pytest.mark.spark, pytest.mark.slow, pytest.mark.stack]

LIMIT = 120


def _counts(settings) -> dict[str, int]:
    from finpulse import db

    engine = db.engine(settings)
    try:
        with engine.connect() as conn:
            return {t: conn.execute(sa.text(f"SELECT count(*) FROM {t}")).scalar_one()
                    for t in ("documents", "document_scores", "document_entities", "dead_letters", "sentiment_windows")}
    finally:
        engine.dispose()


def test_finpulse_run_replays_the_sample_once_and_reports(stack, tmp_path):
    tag = uuid.uuid4().hex[:10]
    with scratch_database(stack) as settings:
        env = {
            **os.environ,
            "FINPULSE_HOME": str(tmp_path / "home"),
            "FINPULSE_KAFKA_BOOTSTRAP": ",".join(stack.bootstrap_servers),
            "FINPULSE_DATABASE_URL": settings.database_url.get_secret_value(),
            "FINPULSE_TOPIC_DOCUMENTS": f"test.run.{tag}.docs",
            "FINPULSE_TOPIC_DEAD_LETTERS": f"test.run.{tag}.dl",
            "FINPULSE_SPARK_MASTER": "local[2]",
            "FINPULSE_PIPELINE_TRIGGER": "1s",
            "OMP_NUM_THREADS": "1",
        }

        def finpulse(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
            return subprocess.run([sys.executable, "-m", "finpulse", *args], cwd=REPO, env=env, capture_output=True,
                                  text=True, timeout=timeout)

        try:
            first = finpulse("run", "--demo-limit", str(LIMIT), "--wait", "400")
            assert first.returncode == 0, first.stdout + first.stderr
            counts = _counts(settings)
            assert counts["documents"] + counts["dead_letters"] == LIMIT, (counts, first.stdout)
            assert counts["document_scores"] == counts["documents"] > LIMIT // 2
            assert counts["sentiment_windows"] > 0 and counts["document_entities"] > 0
            assert re.search(rf"In Postgres now: {counts['documents']} documents", first.stdout), first.stdout
            assert "Top tickers:" in first.stdout and "SELECT" in first.stdout
            # progress while it waited, and the line that ended the wait
            assert re.search(r"pipeline: [\d,]+ records scored, none to go", first.stdout), first.stdout

            status = finpulse("pipeline", "status")
            assert status.returncode == 0 and "running" in status.stdout and "lag: 0" in status.stdout, status.stdout

            second = finpulse("run", "--demo-limit", str(LIMIT), "--wait", "400")
            assert second.returncode == 0, second.stdout + second.stderr
            assert "already replayed" in second.stdout and "already running" in second.stdout
            assert _counts(settings) == counts
        finally:
            stop = finpulse("pipeline", "stop", timeout=180)
            finpulse("alerts", "stop", timeout=120)
        assert stop.returncode == 0 and "pipeline stopped" in stop.stdout, stop.stdout + stop.stderr
        log = (tmp_path / "home" / "pipeline" / "pipeline.log").read_text()
        # SIGTERM stopped it between batches: the job said so and exited through its own path.
        assert "stop requested (SIGTERM)" in log and "stopped after" in log, log[-3000:]


def test_every_query_make_run_prints_runs(fresh_db):
    """The psql examples `finpulse run` prints are SQL an analyst pastes: each must run on the schema."""
    from finpulse import db
    from finpulse.run import PSQL_EXAMPLES, TOP_TICKERS_SQL

    statements = [" ".join(chunk.split()) for chunk in
                  "\n".join(line for line in PSQL_EXAMPLES.splitlines()[1:] if not line.strip().startswith("--"))
                  .split(";") if chunk.strip()]
    assert len(statements) == 5, statements
    engine = db.engine(fresh_db)
    try:
        with engine.connect() as conn:
            for statement in statements + [TOP_TICKERS_SQL]:  # and the summary's top tickers
                conn.execute(sa.text(statement)).all()
    finally:
        engine.dispose()


def test_progress_counts_records_to_go_per_partition_and_gives_an_eta():
    from finpulse.run import progress_line, records_to_go

    ends = {"docs": {"0": 100, "1": 50, "2": 0}, "dl": {"0": 3}}
    assert records_to_go(ends, {}) == 153
    assert records_to_go(ends, {"docs": {"0": 100, "1": 20}, "dl": {"0": 5}}) == 30  # never negative
    assert progress_line(1240, 3760, 148.0) == "1,240 records scored, 3,760 to go (148/s, about 25 s left)"
    assert progress_line(0, 5000, None) == "0 records scored, 5,000 to go (the first batch loads the model)"
