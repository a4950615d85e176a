"""Embedded Postgres: a project-local cluster (initdb/pg_ctl) under HOME/postgres on its own port.

Postgres refuses to run as root. When we are root the cluster belongs to the ``postgres``
system user and every server command runs through ``runuser``; if that user cannot reach
HOME (a private checkout, say), the cluster lives in its home directory instead and
HOME/postgres/cluster links to it. The password is generated at first start and kept in
HOME/postgres/password (mode 600), never in the repo.
"""

from __future__ import annotations

import glob
import hashlib
import logging
import os
import pwd
import secrets
import shutil
import subprocess
import time
from pathlib import Path

import sqlalchemy as sa

from finpulse.service import ProcessIdentity

from stack.base import Component, ComponentStatus, StackError, ensure_port_free, require_tool, tail, write_private

log = logging.getLogger(__name__)

START_TIMEOUT_S = 60


def _pg_bin(tool: str) -> str:
    found = shutil.which(tool)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{tool}"), reverse=True)
    if not candidates:
        raise StackError(f"{tool} not found: install the Postgres server (apt-get install postgresql)")
    return candidates[0]


def _redacted(url: str) -> str:
    return sa.engine.make_url(url).render_as_string(hide_password=True)


def probe_postgres(url: str, *, timeout_s: int = 5) -> str | None:
    """None when the database accepts a connection, else the reason (password never shown).

    It connects with exactly the arguments SQLAlchemy gives psycopg2 for ``url``, libpq query
    parameters (``sslmode``, ``application_name``, ...) included.
    """
    import psycopg2

    parsed = sa.engine.make_url(url)
    args, kwargs = sa.create_engine(parsed).dialect.create_connect_args(parsed)
    kwargs.setdefault("connect_timeout", timeout_s)
    try:
        conn = psycopg2.connect(*args, **kwargs)
    except psycopg2.Error as exc:
        return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    conn.close()
    return None


class EmbeddedPostgres(Component):
    name = "postgres"

    @property
    def external(self) -> bool:
        return not self.settings.embedded_postgres

    @property
    def dir(self) -> Path:
        return self.settings.home / "postgres"

    @property
    def cluster(self) -> Path:
        return self.dir / "cluster"

    @property
    def data_dir(self) -> Path:
        # The real path: when the cluster lives in the postgres home, HOME may be closed to that user.
        return self.cluster.resolve() / "data"

    @property
    def log_file(self) -> Path:
        return self.cluster.resolve() / "postgres.log"

    @property
    def address(self) -> str:
        if self.external:
            return _redacted(self.settings.sqlalchemy_url().get_secret_value())
        return f"127.0.0.1:{self.settings.postgres_port}/finpulse"

    # -- running commands as the cluster owner -------------------------------------------------
    @property
    def _as_root(self) -> bool:
        return os.geteuid() == 0

    def _owner_cmd(self, cmd: list[str]) -> list[str]:
        if self._as_root:
            return [require_tool("runuser", "apt-get install util-linux"), "-u", "postgres", "--", *cmd]
        return cmd

    def _run(self, cmd: list[str], what: str) -> subprocess.CompletedProcess:
        proc = subprocess.run(self._owner_cmd(cmd), capture_output=True, text=True, check=False,
                              stdin=subprocess.DEVNULL, cwd="/")
        if proc.returncode != 0:
            lines = (proc.stderr or proc.stdout).strip().splitlines() or ["no output"]
            raise StackError(f"{what} failed: {lines[-1][:300]}")
        return proc

    def _chown(self, path: Path) -> None:
        if self._as_root:
            user = pwd.getpwnam("postgres")
            os.chown(path, user.pw_uid, user.pw_gid)

    def _make_cluster_dir(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        if self.cluster.is_symlink() and not self.cluster.exists():
            self.cluster.unlink()  # its target was purged
        if self.cluster.exists():
            return
        if not self._as_root:
            self.cluster.mkdir()
            return
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            raise StackError("running as root needs the 'postgres' system user (apt-get install postgresql)") from None
        self.cluster.mkdir()
        self._chown(self.cluster)
        if subprocess.run(self._owner_cmd(["test", "-w", str(self.cluster)]), check=False).returncode != 0:
            # The postgres user cannot traverse HOME's parents: keep the cluster in its own home.
            self.cluster.rmdir()
            key = hashlib.sha256(str(self.dir).encode()).hexdigest()[:16]
            target = Path(pwd.getpwnam("postgres").pw_dir) / "finpulse" / key
            target.mkdir(parents=True, exist_ok=True)
            self._chown(target.parent)
            self._chown(target)
            self.cluster.symlink_to(target)

    # -- lifecycle --------------------------------------------------------------------------------
    def _pid(self) -> int | None:
        """The postmaster's pid, if the one its lock file names is running.

        The lock file (postmaster.pid) records the pid and the start time; a pid that now
        belongs to another process (a crash left the file, the pid was reused) is stale: the file
        is removed (Postgres would refuse to start over it) and nothing is signalled.
        """
        lock = self.data_dir / "postmaster.pid"
        try:
            lines = lock.read_text().splitlines()
            pid, started = int(lines[0]), float(lines[2])
        except (OSError, ValueError, IndexError):
            return None
        process = ProcessIdentity.of(pid)
        if process is None:
            return None  # gone: Postgres itself replaces a lock file of a dead pid
        if Path(process.cmdline[0] if process.cmdline else "").name == "postgres" and \
                abs(process.started_at() - started) <= 2.0:
            return pid
        log.warning("%s names pid %d, which is now another process (%s): removed, nothing signalled",
                    lock, pid, " ".join(process.cmdline)[:120] or "?")
        lock.unlink(missing_ok=True)
        return None

    def status(self) -> ComponentStatus:
        if self.external:
            problem = probe_postgres(self.settings.sqlalchemy_url().get_secret_value(), timeout_s=3)
            return ComponentStatus(self.name, self.address, None, problem is None, problem or "external")
        pid = self._pid()
        if not self.settings.postgres_password_file.exists():
            return ComponentStatus(self.name, self.address, pid, False, "not initialised")
        problem = probe_postgres(self.settings.sqlalchemy_url().get_secret_value(), timeout_s=3)
        return ComponentStatus(self.name, self.address, pid, problem is None,
                               f"data {self.data_dir}" if problem is None else problem)

    def up(self) -> ComponentStatus:
        if self.external:
            url = self.settings.sqlalchemy_url().get_secret_value()
            problem = probe_postgres(url, timeout_s=10)
            if problem:
                raise StackError(f"external Postgres at {_redacted(url)} (FINPULSE_DATABASE_URL) is unreachable: {problem}")
            return self.status()
        if self._pid() is None:
            self._make_cluster_dir()
            if not (self.data_dir / "PG_VERSION").exists():
                self._initdb()
            self._write_conf()
            ensure_port_free(self.settings.postgres_port, "Postgres", "FINPULSE_POSTGRES_PORT")
            try:
                self._run([_pg_bin("pg_ctl"), "-D", str(self.data_dir), "-l", str(self.log_file),
                           "-w", "-t", str(START_TIMEOUT_S), "start"], "starting Postgres")
            except StackError as exc:
                raise StackError(f"{exc}; last lines of {self.log_file}:\n{tail(self.log_file)}") from None
        self._ensure_database()
        return self.status()

    def _initdb(self) -> None:
        password = secrets.token_urlsafe(24)
        pwfile = self.cluster.resolve() / ".initdb-password"
        write_private(pwfile, password + "\n")
        self._chown(pwfile)
        try:
            self._run([_pg_bin("initdb"), "-D", str(self.data_dir), "-U", "finpulse", f"--pwfile={pwfile}",
                       "--auth=scram-sha-256", "--encoding=UTF8", "--no-locale"], "initdb")
        finally:
            pwfile.unlink(missing_ok=True)
        write_private(self.settings.postgres_password_file, password + "\n")
        with open(self.data_dir / "postgresql.conf", "a") as conf:
            conf.write("\ninclude_if_exists = 'finpulse.conf'\n")

    def _write_conf(self) -> None:
        conf = self.data_dir / "finpulse.conf"
        conf.write_text(
            "# Written by `finpulse stack up` from FINPULSE_* settings; edits are overwritten.\n"
            f"port = {self.settings.postgres_port}\n"
            "listen_addresses = '127.0.0.1'\n"
            # TCP only: socket paths under a deep HOME can exceed the 107-byte limit.
            "unix_socket_directories = ''\n"
            "timezone = 'UTC'\n"
            "log_timezone = 'UTC'\n"
            "max_connections = 100\n"
            "shared_buffers = 128MB\n"
        )
        self._chown(conf)

    def _ensure_database(self) -> None:
        import psycopg2

        password = self.settings.postgres_password_file.read_text().strip()
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            try:
                conn = psycopg2.connect(host="127.0.0.1", port=self.settings.postgres_port, user="finpulse",
                                        password=password, dbname="postgres", connect_timeout=5)
                break
            except psycopg2.OperationalError as exc:
                if time.monotonic() > deadline:
                    raise StackError(f"Postgres on port {self.settings.postgres_port} refuses connections: "
                                     f"{str(exc).strip().splitlines()[0]}") from None
                time.sleep(0.5)
        try:
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute("SELECT 1 FROM pg_database WHERE datname = 'finpulse'")
                if cur.fetchone() is None:
                    cur.execute("CREATE DATABASE finpulse")
        finally:
            conn.close()

    def purge_paths(self) -> list[tuple[Path, str]]:
        if self.external or not self.dir.exists():
            return []
        paths = [(self.dir, "Postgres cluster and its password")]
        if self.cluster.is_symlink():
            paths.append((self.cluster.resolve(), "Postgres cluster (in the postgres user's home)"))
        return paths

    def down(self, *, purge: bool = False) -> None:
        if self.external:
            return
        if self._pid() is not None:
            self._run([_pg_bin("pg_ctl"), "-D", str(self.data_dir), "-m", "fast", "-w", "-t", "60", "stop"],
                      "stopping Postgres")
        if purge:
            if self.cluster.is_symlink():
                shutil.rmtree(self.cluster.resolve(), ignore_errors=True)
            shutil.rmtree(self.dir, ignore_errors=True)
