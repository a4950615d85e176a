"""Database handle and the migration runner for the numbered SQL files in ``sql/``.

Migrations are ``sql/NNNN_name.sql`` in the repo; an installed wheel carries them as
``finpulse/sql/`` (pyproject.toml maps the one to the other). Each runs in its own transaction and is recorded in
``schema_migrations`` with a checksum; a Postgres advisory lock serialises concurrent
``migrate`` calls, so two starting services never apply a file twice. An applied file whose
text changed is an error: ship a new migration instead of editing an old one.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from finpulse.settings import REPO_ROOT, Settings, get_settings



def _sql_dir() -> Path:
    """The migrations: inside the installed package (a wheel), else sql/ of the checkout (editable)."""
    packaged = Path(__file__).resolve().parent / "sql"
    return packaged if packaged.is_dir() else REPO_ROOT / "sql"


SQL_DIR = _sql_dir()
_FILE = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
_LOCK_KEY = 0x66_70_75_6C  # "fpul": arbitrary but fixed advisory-lock id


class MigrationError(RuntimeError):
    """A migration could not be applied, or the applied history disagrees with sql/."""


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    path: Path

    @property
    def sql(self) -> str:
        return self.path.read_text(encoding="utf-8")

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode("utf-8")).hexdigest()


def engine(settings: Settings | None = None, **kwargs) -> Engine:
    """A pooled engine for the configured database (embedded cluster unless FINPULSE_DATABASE_URL)."""
    settings = settings or get_settings()
    kwargs.setdefault("pool_pre_ping", True)
    return sa.create_engine(settings.sqlalchemy_url().get_secret_value(), **kwargs)


def discover(sql_dir: Path = SQL_DIR) -> list[Migration]:
    """The migrations in ``sql_dir`` in order; MigrationError when there is none (a broken install
    would otherwise look like an empty, up-to-date schema)."""
    migrations = []
    for path in sorted(sql_dir.glob("*.sql")):
        match = _FILE.match(path.name)
        if not match:
            raise MigrationError(f"{path.name}: migration files are named NNNN_lower_snake.sql")
        migrations.append(Migration(int(match.group(1)), match.group(2), path))
    if not migrations:
        raise MigrationError(f"no migration files (NNNN_name.sql) in {sql_dir}: finpulse is installed without "
                             "its migrations; reinstall it (pip install .) from a checkout")
    versions = [m.version for m in migrations]
    if len(set(versions)) != len(versions):
        raise MigrationError(f"duplicate migration numbers in {sql_dir}")
    return migrations


_BOOKKEEPING = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version     integer PRIMARY KEY,
    name        text NOT NULL,
    checksum    text NOT NULL,
    applied_at  timestamptz NOT NULL DEFAULT now()
)
"""


def applied_versions(eng: Engine) -> list[int]:
    with eng.connect() as conn:
        if not sa.inspect(conn).has_table("schema_migrations"):
            return []
        return [row[0] for row in conn.execute(sa.text("SELECT version FROM schema_migrations ORDER BY version"))]


def current_version(eng: Engine) -> int:
    versions = applied_versions(eng)
    return versions[-1] if versions else 0


def migrate(eng: Engine, sql_dir: Path = SQL_DIR) -> list[str]:
    """Apply every pending migration in order; return the names applied (empty when up to date)."""
    applied: list[str] = []
    with eng.connect() as conn:
        conn.execute(sa.text("SELECT pg_advisory_lock(:k)"), {"k": _LOCK_KEY})
        try:
            conn.execute(sa.text(_BOOKKEEPING))
            conn.commit()
            done = {
                row.version: row.checksum
                for row in conn.execute(sa.text("SELECT version, checksum FROM schema_migrations"))
            }
            conn.commit()
            for migration in discover(sql_dir):
                if migration.version in done:
                    if done[migration.version] != migration.checksum:
                        raise MigrationError(
                            f"{migration.path.name} was changed after it was applied; add a new migration instead"
                        )
                    continue
                try:
                    conn.exec_driver_sql(migration.sql)
                    conn.execute(
                        sa.text("INSERT INTO schema_migrations (version, name, checksum) VALUES (:v, :n, :c)"),
                        {"v": migration.version, "n": migration.name, "c": migration.checksum},
                    )
                    conn.commit()
                except sa.exc.DBAPIError as exc:
                    conn.rollback()
                    raise MigrationError(f"{migration.path.name} failed: {exc.orig}") from exc
                applied.append(f"{migration.version:04d}_{migration.name}")
        finally:
            conn.execute(sa.text("SELECT pg_advisory_unlock(:k)"), {"k": _LOCK_KEY})
            conn.commit()
    return applied


@contextlib.contextmanager
def scratch_database(settings: Settings, *, prefix: str = "scratch") -> Iterator[Settings]:
    """A new, migrated database on the cluster ``settings`` points at, dropped (connections forced
    off) on exit; yields Settings whose ``database_url`` names it. For tests and benchmarks."""
    from pydantic import SecretStr

    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    admin = engine(settings, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(sa.text(f"CREATE DATABASE {name}"))
        url = sa.engine.make_url(settings.sqlalchemy_url().get_secret_value()).set(database=name)
        scratch = settings.model_copy(update={"database_url": SecretStr(url.render_as_string(hide_password=False))})
        scratch_engine = engine(scratch)
        try:
            migrate(scratch_engine)
        finally:
            scratch_engine.dispose()
        try:
            yield scratch
        finally:
            with admin.connect() as conn:
                conn.execute(sa.text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
    finally:
        admin.dispose()
