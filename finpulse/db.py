"""Database handle and the migration runner for the numbered SQL files in ``sql/``.

Migrations are ``sql/NNNN_name.sql`` in the repo; an installed wheel carries them as
``finpulse/sql/`` (pyproject.toml maps the one to the other). Each runs in its own transaction and is recorded in
``schema_migrations`` with a checksum; a Postgres advisory lock serialises concurrent
``migrate`` calls, so two starting services never apply a file twice. An applied file whose
text changed is an error: ship a new migration instead of editing an old one.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import os
import re
import secrets
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from pydantic import SecretStr

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
    off) on exit; yields Settings whose ``database_url`` names it (and ``analyst_database_url``, the
    read-only analyst role on it, where the cluster's analyst password is known). For tests and benchmarks."""
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
        # The analyst role of the same cluster, on the new database (the migration granted it).
        if settings.analyst_database_url is not None:
            analyst = sa.engine.make_url(settings.analyst_database_url.get_secret_value()).set(database=name)
        elif settings.embedded_postgres:
            analyst = url.set(username=ANALYST_ROLE, password=ensure_analyst_login(scratch))
        else:
            analyst = None
        if analyst is not None:
            scratch = scratch.model_copy(update={
                "analyst_database_url": SecretStr(analyst.render_as_string(hide_password=False))})
        try:
            yield scratch
        finally:
            with admin.connect() as conn:
                conn.execute(sa.text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
    finally:
        admin.dispose()


# --- the analysts' role (sql/0004_analyst.sql) ---------------------------------------------------

ANALYST_ROLE = "finpulse_analyst"


class AnalystUnavailable(RuntimeError):
    """The analyst role cannot be used yet. The message is one line that says what to do."""


def scram_verifier(password: str, *, salt: bytes | None = None, iterations: int = 4096) -> str:
    """The SCRAM-SHA-256 verifier Postgres stores for ``password`` (RFC 5802/7677), so ALTER ROLE
    never sends the password itself (a server log of the statement shows only the verifier)."""
    salt = salt if salt is not None else secrets.token_bytes(16)
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    server_key = hmac.new(salted, b"Server Key", hashlib.sha256).digest()
    b64 = lambda raw: base64.b64encode(raw).decode()  # noqa: E731
    return (f"SCRAM-SHA-256${iterations}:{b64(salt)}"
            f"${b64(hashlib.sha256(client_key).digest())}:{b64(server_key)}")


def _analyst_password(settings: Settings) -> str:
    """The embedded cluster's analyst password: generated once into its file, created mode 0600."""
    path = settings.analyst_password_file
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    password = secrets.token_urlsafe(24)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process made it first: use theirs
        return path.read_text().strip()
    with os.fdopen(fd, "w") as out:
        out.write(password + "\n")
    return password


def ensure_analyst_login(settings: Settings) -> str:
    """Embedded cluster: give ``finpulse_analyst`` its generated password (idempotent); return it."""
    password = _analyst_password(settings)
    admin = engine(settings)
    try:
        with admin.begin() as conn:
            if conn.execute(sa.text("SELECT 1 FROM pg_roles WHERE rolname = :r"), {"r": ANALYST_ROLE}).first() is None:
                raise AnalystUnavailable(f"role {ANALYST_ROLE} does not exist yet: run `finpulse db migrate`")
            conn.execute(sa.text(f"ALTER ROLE {ANALYST_ROLE} WITH LOGIN PASSWORD :v"), {"v": scram_verifier(password)})
    finally:
        admin.dispose()
    return password


def analyst_url(settings: Settings | None = None) -> SecretStr:
    """The SQLAlchemy URL of the read-only analyst role: FINPULSE_ANALYST_DATABASE_URL, or on the
    embedded cluster the same database with the role's generated password (set on first use)."""
    settings = settings or get_settings()
    if settings.analyst_database_url is not None:
        return settings.analyst_database_url
    if not settings.embedded_postgres:
        raise AnalystUnavailable(
            f"FINPULSE_ANALYST_DATABASE_URL is unset: with an external database (FINPULSE_DATABASE_URL) the DBA "
            f"gives {ANALYST_ROLE} a password and you set its URL (README, For analysts)")
    password = ensure_analyst_login(settings)
    url = sa.engine.make_url(settings.sqlalchemy_url().get_secret_value())
    return SecretStr(url.set(username=ANALYST_ROLE, password=password).render_as_string(hide_password=False))


def analyst_engine(settings: Settings | None = None, **kwargs) -> Engine:
    """A pooled engine that connects as the read-only analyst role (what the dashboard and report use)."""
    kwargs.setdefault("pool_pre_ping", True)
    return sa.create_engine(analyst_url(settings).get_secret_value(), **kwargs)
