"""The analysts' Postgres (sql/0004_analyst.sql): views, the read-only role, the README's examples,
and `finpulse db url|psql --analyst`, on the real test cluster."""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import sqlalchemy as sa
from click.testing import CliRunner

from finpulse import db
from finpulse.cli import main
from tests.conftest import REPO, TEST_ENV, scratch_database
from tests.dashboard import seed as seeddata

EXAMPLES = REPO / "sql" / "examples" / "for_analysts.sql"
README = REPO / "README.md"


@pytest.fixture(scope="module")
def seeded(stack):
    """A scratch database holding the seed data set; yields (settings, Seeded)."""
    with scratch_database(stack) as settings:
        owner = db.engine(settings)
        seeded = seeddata.seed(owner)
        owner.dispose()
        yield settings, seeded


@pytest.fixture(scope="module")
def analyst(seeded):
    engine = db.analyst_engine(seeded[0])
    yield engine
    engine.dispose()


def _relations(engine, kind: str) -> list[str]:
    with engine.connect() as conn:
        return list(conn.execute(sa.text(
            "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = 'public' AND c.relkind = :k ORDER BY 1"), {"k": kind}).scalars())


def _refused(engine, statement: str) -> str:
    """The error Postgres gives the analyst for ``statement``, run in a read-write transaction (so the
    role's read-only default is not what stops it: the privileges are)."""
    with engine.connect() as conn:
        conn.execute(sa.text("SET TRANSACTION READ WRITE"))
        try:
            conn.execute(sa.text(statement))
        except sa.exc.DBAPIError as exc:
            return str(exc.orig).splitlines()[0]
        finally:
            conn.rollback()
    pytest.fail(f"the analyst role could run: {statement}")


def test_the_analyst_reads_every_view_and_table_and_changes_nothing(seeded, analyst):
    settings, _ = seeded
    views, tables = _relations(analyst, "v"), _relations(analyst, "r")
    assert {"sentiment_trend", "scope_leaderboard", "ticker_leaderboard", "document_detail", "ticker_mentions",
            "alert_history", "alert_history_events", "alert_history_deliveries", "latest_model_version"} <= set(views)
    with analyst.connect() as conn:
        assert conn.execute(sa.text("SELECT current_user")).scalar() == db.ANALYST_ROLE
        for name in views + tables:
            conn.execute(sa.text(f"SELECT * FROM {name} LIMIT 1")).all()
        # Every view is documented.
        undocumented = conn.execute(sa.text(
            "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = 'public' AND c.relkind = 'v' AND c.relname <> 'document_sentiment' "
            "AND obj_description(c.oid, 'pg_class') IS NULL")).scalars().all()
        assert undocumented == []
    for table in tables:
        for statement in (f"INSERT INTO {table} DEFAULT VALUES", f"UPDATE {table} SET ctid = ctid",
                          f"DELETE FROM {table}", f"TRUNCATE {table}", f"DROP TABLE {table}",
                          f"ALTER TABLE {table} ADD COLUMN x int"):
            message = _refused(analyst, statement.replace("SET ctid = ctid", "SET " + _first_column(analyst, table)))
            assert "permission denied" in message or "must be owner" in message, (statement, message)
    for statement in ("CREATE TABLE analyst_scratch (x int)", "CREATE TEMP TABLE analyst_scratch (x int)",
                      "CREATE VIEW analyst_view AS SELECT 1", "CREATE SCHEMA analyst_schema",
                      "CREATE FUNCTION analyst_f() RETURNS int LANGUAGE sql AS 'SELECT 1'",
                      "CREATE INDEX analyst_idx ON documents (lang)"):
        message = _refused(analyst, statement)
        assert "permission denied" in message or "must be owner" in message, (statement, message)
    # The default is read-only too (a BI tool that forgets what it is connected as).
    with analyst.connect() as conn:
        with pytest.raises(sa.exc.DBAPIError, match="read-only transaction"):
            conn.execute(sa.text("CREATE TEMP TABLE analyst_scratch (x int)"))


def _first_column(engine, table: str) -> str:
    with engine.connect() as conn:
        column = conn.execute(sa.text(
            "SELECT column_name FROM information_schema.columns WHERE table_name = :t "
            "AND is_generated = 'NEVER' ORDER BY ordinal_position LIMIT 1"), {"t": table}).scalar()
    return f"{column} = {column}"


def test_tables_and_views_of_later_migrations_are_readable_by_the_analyst(stack, tmp_path):
    for path in db.SQL_DIR.glob("*.sql"):
        shutil.copy(path, tmp_path / path.name)
    (tmp_path / "9998_later.sql").write_text(
        "CREATE TABLE later_things (id int PRIMARY KEY, what text);\n"
        "INSERT INTO later_things VALUES (1, 'made later');\n"
        "CREATE VIEW later_view AS SELECT what FROM later_things;\n")
    name = f"later_{uuid.uuid4().hex[:10]}"
    admin = db.engine(stack, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f"CREATE DATABASE {name}"))
    owner_url = sa.engine.make_url(stack.sqlalchemy_url().get_secret_value()).set(database=name)
    owner = sa.create_engine(owner_url)
    try:
        db.migrate(owner, tmp_path)
        analyst = sa.create_engine(owner_url.set(username=db.ANALYST_ROLE, password=db.ensure_analyst_login(stack)))
        with analyst.connect() as conn:
            assert conn.execute(sa.text("SELECT what FROM later_view")).scalar() == "made later"
            assert conn.execute(sa.text("SELECT count(*) FROM later_things")).scalar() == 1
        assert "permission denied" in _refused(analyst, "DELETE FROM later_things")
        analyst.dispose()
    finally:
        owner.dispose()
        with admin.connect() as conn:
            conn.execute(sa.text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        admin.dispose()


# --- README "For analysts" ------------------------------------------------------------------------

def example_queries() -> list[tuple[str, str]]:
    """(what it answers, query) for each block of sql/examples/for_analysts.sql."""
    blocks = re.split(r"^-- what it answers: ", EXAMPLES.read_text(), flags=re.M)
    out = []
    for block in blocks[1:]:
        question, _, query = block.partition("\n")
        out.append((question.strip(), query.strip().rstrip(";")))
    return out


def test_readme_embeds_the_example_file_verbatim():
    assert f"```sql\n{EXAMPLES.read_text()}```" in README.read_text()
    assert len(example_queries()) == 5


def test_every_example_query_answers_its_question_as_the_analyst(seeded, analyst):
    _, seeded_at = seeded
    queries = example_queries()
    with analyst.connect() as conn:
        results = [conn.execute(sa.text(q)).mappings().all() for _, q in queries]
    market, movers, daily, towards, episodes = results

    # 1. The market hour by hour: the last 24 windows (25 on the hour), the old model's window left out,
    # the surge hours at 36/110 and the others at 20/100.
    assert len(market) in (24, 25) and all(r["n_docs"] != 999 for r in market)
    assert [r["window_start"] for r in market] == sorted(r["window_start"] for r in market)
    for r in market:
        surge = r["window_start"] > seeded_at.hour - sa_hours(seeddata.SURGE_HOURS)
        assert (r["n_docs"], float(r["negative_share"])) == ((110, 0.327) if surge else (100, 0.2)), r

    # 2. ACME rose most: 24 h = 6 surge hours (30/18) + 18 quiet ones (20/2) against 10% the week before.
    assert [r["ticker"] for r in movers] == ["ACME", "BOLT"]
    acme = movers[0]
    assert acme["docs_24h"] == 6 * 30 + 18 * 20
    assert float(acme["share_24h"]) == round((6 * 18 + 18 * 2) / (6 * 30 + 18 * 20), 3)
    assert float(acme["share_7d"]) == 0.1 and float(movers[1]["change"]) == 0.0

    # 3. ACME daily over 30 days: 30 (or 31) days of 480 documents, 10% negative.
    assert len(daily) in (30, 31) and {r["n_docs"] for r in daily} == {480}
    assert {float(r["negative_share"]) for r in daily} == {0.1}

    # 4. The recall story first, negative towards ACME by the entity head, with its evidence words; the
    # NULL-evidence story is listed too.
    assert towards[0]["title"] == seeddata.TOP_TITLE and towards[0]["towards_acme"] == "negative"
    assert towards[0]["entity_level"] is True and towards[0]["evidence_words"] == ["recalls", "fires", "fall"]
    assert towards[0]["url"] == seeddata.TOP_URL
    assert [r["title"] for r in towards][1] == "Regulator opens probe into ACME widgets"
    assert towards[1]["evidence_words"] is None

    # 5. The episodes of the week: ACME firing (p-value, 1 of 2 notifications delivered), BOLT resolved.
    assert [(r["key"], r["status"]) for r in episodes] == [("ACME", "firing"), ("BOLT", "resolved")]
    assert episodes[0]["p_value"] == pytest.approx(seeddata.ACME_P_VALUE)
    assert (episodes[0]["n_notifications"], episodes[0]["n_delivered"], episodes[0]["n_dead"]) == (2, 1, 0)
    assert float(episodes[0]["share"]) == 0.6 and float(episodes[0]["baseline"]) == 0.1
    assert episodes[1]["ends_at"] is not None


def sa_hours(n: int):
    from datetime import timedelta

    return timedelta(hours=n)


def test_views_give_entity_level_sentiment_and_delivery_attempts(analyst):
    with analyst.connect() as conn:
        mixed = conn.execute(sa.text("SELECT * FROM ticker_mentions WHERE document_id = :id"),
                             {"id": seeddata.BOLT_MIXED_ID}).mappings().one()
        detail = conn.execute(sa.text("SELECT entities FROM document_detail WHERE id = :id"),
                              {"id": seeddata.BOLT_MIXED_ID}).scalar_one()
        bare = conn.execute(sa.text("SELECT * FROM ticker_mentions WHERE document_id = 'acme-fans'")).mappings().one()
        attempts = conn.execute(sa.text(
            "SELECT receiver, channel, message_state, ok, response_code, error FROM alert_history_deliveries "
            "WHERE episode_id = :e ORDER BY receiver"), {"e": seeddata.ACME_EPISODE}).all()
        events = conn.execute(sa.text("SELECT event, p_value FROM alert_history_events WHERE episode_id = :e "
                                      "ORDER BY event_id"), {"e": seeddata.ACME_EPISODE}).all()
    # The document is positive, the sentiment towards BOLT negative: the mention says so, once.
    assert (mixed["document_sentiment"], mixed["sentiment"], mixed["entity_level"]) == ("positive", "negative", True)
    assert [e["entity"] for e in detail] == ["BOLT"] and detail[0]["sentiment"] == "negative"
    # A link the entity head never scored counts with the document's sentiment.
    assert (bare["sentiment"], bare["entity_level"]) == ("positive", False)
    assert attempts == [("hook", "webhook", "pending", False, None, "connection refused"),
                        ("mail", "email", "sent", True, 250, None)]
    assert [e.event for e in events] == ["pending", "firing", "notified"]
    assert events[1].p_value == pytest.approx(seeddata.ACME_P_VALUE)


# --- finpulse db url / psql --analyst (embedded cluster of the test stack) ---------------------------

@pytest.fixture(autouse=True)
def _fresh_settings():
    """CliRunner runs in this process: each invocation must read its own environment."""
    from finpulse.settings import get_settings

    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


def _cli_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("FINPULSE_DATABASE_URL", "FINPULSE_ANALYST_DATABASE_URL")}
    return {**env, **TEST_ENV}


def test_db_url_analyst_hides_the_generated_password_unless_asked(stack):
    runner = CliRunner()
    hidden = runner.invoke(main, ["db", "url", "--analyst"], env=_cli_env())
    shown = runner.invoke(main, ["db", "url", "--analyst", "--show-password"], env=_cli_env())
    assert hidden.exit_code == 0 and shown.exit_code == 0, hidden.output + shown.output
    password = stack.analyst_password_file.read_text().strip()
    assert stat.S_IMODE(stack.analyst_password_file.stat().st_mode) == 0o600
    assert hidden.output.strip() == f"postgresql://finpulse_analyst:***@127.0.0.1:{stack.postgres_port}/finpulse"
    assert password not in hidden.output and f"finpulse_analyst:{password}@" in shown.output
    # The printed URL works for libpq (psql), as the analyst.
    out = subprocess.run(["psql", shown.output.strip(), "-At", "-c", "SELECT current_user"],
                         capture_output=True, text=True, check=True).stdout
    assert out.strip() == "finpulse_analyst"


def test_db_url_analyst_on_an_external_database_says_what_to_set():
    env = {**_cli_env(), "FINPULSE_DATABASE_URL": "postgresql+psycopg2://finpulse:x@db.invalid:5432/finpulse"}
    result = CliRunner().invoke(main, ["db", "url", "--analyst"], env=env)
    assert result.exit_code != 0 and "FINPULSE_ANALYST_DATABASE_URL is unset" in result.output


def _children(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    out.append(int(entry.name))
            except (OSError, IndexError, ValueError):
                pass
    return out


def test_db_psql_passes_the_password_in_a_private_pgpass_file_only(stack):
    password = db.ensure_analyst_login(stack)
    proc = subprocess.Popen([sys.executable, "-m", "finpulse", "db", "psql", "--analyst", "-At", "-c",
                             "SELECT current_user, pg_sleep(3)"],
                            env=_cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline, psql = time.monotonic() + 20, None
    while psql is None and time.monotonic() < deadline and proc.poll() is None:
        psql = next(iter(_children(proc.pid)), None)
        time.sleep(0.05)
    assert psql is not None, proc.communicate()
    cmdline = Path(f"/proc/{psql}/cmdline").read_bytes().decode()
    environ = dict(kv.split("=", 1) for kv in Path(f"/proc/{psql}/environ").read_bytes().decode().split("\0") if "=" in kv)
    pgpass = Path(environ["PGPASSFILE"])
    assert password not in cmdline and "PGPASSWORD" not in environ
    assert stat.S_IMODE(pgpass.stat().st_mode) == 0o600 and password in pgpass.read_text()
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert out.strip().startswith("finpulse_analyst|")
    assert not pgpass.exists()
