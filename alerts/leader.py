"""Leader election: a session-level Postgres advisory lock held on a dedicated connection.

Every instance calls ``poll()`` once per evaluation interval. The holder keeps the lock as
long as its connection lives; when the leader dies (even ``kill -9``) the server closes its
session and frees the lock, and the next ``poll()`` of a standby takes it: a hot standby takes
over within one interval. TCP keepalives bound how long a half-open connection (a dead host
rather than a dead process) keeps the lock. The lock is per database, so instances pointed at
different databases never compete.
"""

from __future__ import annotations

import logging
import os
import socket

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.pool import NullPool

log = logging.getLogger("alerts.leader")
LEADER_LOCK = 0x66_70_6C_64  # "fpld"


class Leader:
    def __init__(self, url: str, holder: str | None = None):
        self.holder = holder or f"{socket.gethostname()}:{os.getpid()}"
        self._engine: Engine = sa.create_engine(
            url, poolclass=NullPool,
            connect_args={"keepalives": 1, "keepalives_idle": 5, "keepalives_interval": 2, "keepalives_count": 3,
                          "application_name": "finpulse-alerts-leader"})
        self._conn = None
        self.is_leader = False

    def poll(self) -> bool:
        """Keep or try to take the lock; True while this instance leads."""
        try:
            if self._conn is None:
                self._conn = self._engine.raw_connection()
                self._conn.driver_connection.autocommit = True
            cur = self._conn.cursor()
            if self.is_leader:
                cur.execute("SELECT 1")  # the lock lives as long as this session does
            else:
                cur.execute("SELECT pg_try_advisory_lock(%s)", (LEADER_LOCK,))
                if cur.fetchone()[0]:
                    self.is_leader = True
                    log.info("%s is now the leader", self.holder)
            if self.is_leader:
                cur.execute(
                    "INSERT INTO alert_leader (singleton, holder, since, heartbeat) VALUES (true, %s, now(), now()) "
                    "ON CONFLICT (singleton) DO UPDATE SET holder = EXCLUDED.holder, heartbeat = now(), "
                    "since = CASE WHEN alert_leader.holder = EXCLUDED.holder THEN alert_leader.since ELSE now() END",
                    (self.holder,))
            cur.close()
        except Exception as exc:
            if self.is_leader:
                log.error("%s lost the leader lock: %s", self.holder, exc)
            else:
                log.warning("leader election failed (will retry): %s", exc)
            self.is_leader = False
            self._drop()
        return self.is_leader

    def _drop(self) -> None:
        if self._conn is not None:
            try:
                self._conn.invalidate() if hasattr(self._conn, "invalidate") else self._conn.close()
            except Exception:
                pass
        self._conn = None

    def release(self) -> None:
        if self._conn is not None and self.is_leader:
            try:
                cur = self._conn.cursor()
                cur.execute("SELECT pg_advisory_unlock(%s)", (LEADER_LOCK,))
                cur.close()
            except Exception:
                pass
        self.is_leader = False
        self._drop()
        self._engine.dispose()
