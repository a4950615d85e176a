"""`finpulse status`: every component on one screen, and whether all of them are healthy.

finpulse/ imports none of the components: the pipeline answers through its CLI
(`finpulse pipeline status --json`, a subprocess), the alert service and the model through the
tables they write, the dashboard and the demo receivers over their own ports (HTTP, TCP), the
services' pid files through finpulse.service. The checks run side by side, each with a timeout.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any

import sqlalchemy as sa

from finpulse.service import port_answers, read_pid
from finpulse.settings import Settings, get_settings

CLI_TIMEOUT = 60.0
THROUGHPUT_SECONDS = 300  # docs/s is measured over the batches of the last 5 minutes


@dataclass
class Component:
    name: str
    healthy: bool
    address: str = ""
    detail: str = ""
    required: bool = True  # False: shown, but not counted (a demo helper that is not running)
    facts: dict[str, Any] = field(default_factory=dict)

    def line(self) -> str:
        state = "ok" if self.healthy else ("DOWN" if self.required else "off")
        return f"{self.name:<11} {state:<5} {self.address:<34} {self.detail}"


@dataclass
class Status:
    components: list[Component]
    checked_at: str

    @property
    def healthy(self) -> bool:
        return all(c.healthy for c in self.components if c.required)

    def as_dict(self) -> dict[str, Any]:
        return {"healthy": self.healthy, "checked_at": self.checked_at,
                "components": [asdict(c) for c in self.components]}


def _redacted_database(settings: Settings) -> str:
    try:
        url = sa.engine.make_url(settings.sqlalchemy_url().get_secret_value())
    except Exception:  # noqa: BLE001 - no embedded password yet: the address alone
        return f"127.0.0.1:{settings.postgres_port}/finpulse"
    return f"{url.host}:{url.port or 5432}/{url.database}"


def _one_line(exc: BaseException) -> str:
    orig = getattr(exc, "orig", None)
    text = str(orig if orig is not None else exc).strip()
    return (text.splitlines() or [type(exc).__name__])[0][:200]


def check_broker(settings: Settings) -> Component:
    from finpulse.kafka import probe_kafka

    address = ",".join(settings.bootstrap_servers)
    problem = probe_kafka(settings, timeout_s=3.0)
    return Component("broker", problem is None, address, problem or ("external" if settings.kafka_bootstrap else "embedded"))


def _with_database(settings: Settings, name: str, address: str, body: Callable[[sa.engine.Connection], Component]) -> Component:
    from finpulse import db

    engine = None
    try:
        engine = db.engine(settings, poolclass=sa.pool.NullPool, connect_args={"connect_timeout": 3})
        with engine.connect() as conn:
            return body(conn)
    except Exception as exc:  # noqa: BLE001 - status reports a failure, it never raises it
        return Component(name, False, address, f"database: {_one_line(exc)}")
    finally:
        if engine is not None:
            engine.dispose()


def check_postgres(settings: Settings) -> Component:
    from finpulse import db

    def body(conn) -> Component:
        known = [m.version for m in db.discover()]
        applied = set()
        if sa.inspect(conn).has_table("schema_migrations"):
            applied = set(conn.execute(sa.text("SELECT version FROM schema_migrations")).scalars())
        version = max(applied, default=0)
        pending = [v for v in known if v not in applied]
        detail = f"schema version {version}" + (f", {len(pending)} pending: run `finpulse db migrate`" if pending else "")
        return Component("postgres", not pending, _redacted_database(settings), detail,
                         facts={"schema_version": version, "pending": pending})

    return _with_database(settings, "postgres", _redacted_database(settings), body)


def _cli_json(*args: str) -> tuple[dict[str, Any] | None, str]:
    """(the JSON a `finpulse ...` subcommand printed last, or None; why not)."""
    try:
        proc = subprocess.run([sys.executable, "-m", "finpulse", *args], capture_output=True, text=True,
                              timeout=CLI_TIMEOUT, check=False)
    except subprocess.TimeoutExpired:
        return None, f"`finpulse {' '.join(args)}` did not answer within {CLI_TIMEOUT:.0f}s"
    lines = proc.stdout.strip().splitlines()
    try:
        return json.loads(lines[-1]), ""
    except (ValueError, IndexError):
        err = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return None, f"`finpulse {' '.join(args)}` gave no status: {err[:200]}"


def check_pipeline(settings: Settings) -> Component:
    report, why = _cli_json("pipeline", "status", "--json")
    if report is None:
        return Component("pipeline", False, "", why)
    batch = report.get("last_batch") or {}
    facts: dict[str, Any] = {"running": report.get("running"), "pid": report.get("pid"), "lag": report.get("lag"),
                             "state": report.get("state"), "last_batch_at": batch.get("finished_at"),
                             "last_batch_id": batch.get("batch_id"), "docs_per_second": None}

    def throughput(conn) -> Component:
        scored, seconds = conn.execute(sa.text(
            "SELECT coalesce(sum(n_scored), 0), coalesce(sum(duration_ms), 0) / 1000.0 FROM pipeline_batches "
            "WHERE query_name = :q AND status = 'committed' "
            "AND finished_at > now() - make_interval(secs => :s)"),
            {"q": report.get("query_name") or settings.pipeline_query_name, "s": THROUGHPUT_SECONDS}).one()
        facts["docs_per_second"] = round(scored / THROUGHPUT_SECONDS, 1)
        facts["docs_per_busy_second"] = round(float(scored) / float(seconds), 1) if seconds else None
        return Component("pipeline", True)

    _with_database(settings, "pipeline", "", throughput)
    lag = report.get("lag")
    parts = [f"pid {report['pid']}" if report.get("running") else "not running",
             f"lag {lag}" if lag is not None else f"lag unknown ({report.get('kafka_error', '?')})",
             f"last batch {batch.get('batch_id')} at {batch.get('finished_at')}" if batch else "no batch yet",
             f"{facts['docs_per_second']} docs/s over {THROUGHPUT_SECONDS // 60} min"
             if facts["docs_per_second"] is not None else "docs/s unknown"]
    if report.get("last_error"):
        parts.append(f"last error: {str(report['last_error'])[:120]}")
    healthy = bool(report.get("running")) and lag is not None and not report.get("last_error")
    return Component("pipeline", healthy, settings.pipeline_query_name, ", ".join(parts), facts=facts)


def check_alerts(settings: Settings) -> Component:
    pid = read_pid(settings.home / "alerts" / "alerts.pid")
    stale_after = 3 * settings.alerts_interval_seconds

    def body(conn) -> Component:
        leader = conn.execute(sa.text(
            "SELECT holder, heartbeat, extract(epoch FROM now() - heartbeat) AS age FROM alert_leader")).first()
        firing = conn.execute(sa.text("SELECT count(*) FROM alerts WHERE status = 'firing'")).scalar()
        outbox = dict(conn.execute(sa.text("SELECT state, count(*) FROM alert_outbox "
                                           "WHERE state IN ('pending', 'dead') GROUP BY state")).all())
        facts = {"service_pid": pid, "leader": leader.holder if leader else None,
                 "leader_heartbeat": leader.heartbeat.isoformat() if leader else None, "firing": firing,
                 "outbox_pending": outbox.get("pending", 0), "outbox_dead": outbox.get("dead", 0)}
        leading = leader is not None and float(leader.age) <= stale_after
        parts = [f"leader {leader.holder} (heartbeat {float(leader.age):.0f}s ago)" if leader else "no leader yet",
                 f"{firing} firing", f"outbox {facts['outbox_pending']} pending, {facts['outbox_dead']} dead"]
        if pid is None:
            parts.insert(0, "service not running here")
        if leader is not None and not leading:
            parts.append(f"heartbeat older than {stale_after:.0f}s")
        return Component("alerts", leading and facts["outbox_dead"] == 0, "", ", ".join(parts), facts=facts)

    return _with_database(settings, "alerts", "", body)


def check_model(settings: Settings) -> Component:
    def body(conn) -> Component:
        row = conn.execute(sa.text("SELECT model_version, published_at, scored_at FROM document_scores "
                                   "ORDER BY published_at DESC LIMIT 1")).first()
        if row is None:
            return Component("model", False, "", "no document scored yet")
        return Component("model", True, row.model_version, f"newest score of a document published {row.published_at.isoformat()}",
                         facts={"model_version": row.model_version, "published_at": row.published_at.isoformat(),
                                "scored_at": row.scored_at.isoformat()})

    return _with_database(settings, "model", "", body)


def probe_dashboard(url: str, timeout: float = 3.0) -> dict[str, Any]:
    """What the dashboard at ``url`` says of itself (GET /healthz), or why it does not answer."""
    import httpx

    try:
        response = httpx.get(url.rstrip("/") + "/healthz", timeout=timeout)
    except httpx.HTTPError as exc:
        return {"answers": False, "healthy": False, "detail": f"no answer: {type(exc).__name__}"}
    try:
        body = response.json()
    except ValueError:
        body = {"detail": response.text[:200]}
    return {"answers": True, **body, "healthy": response.status_code == 200 and bool(body.get("healthy"))}


def check_dashboard(settings: Settings) -> Component:
    report = probe_dashboard(settings.dashboard_url)
    pid = read_pid(settings.home / "dashboard" / "dashboard.pid")
    detail = ("answers" + (f", model {report.get('model_version')}" if report.get("model_version") else "")
              if report["healthy"] else report.get("detail") or "does not answer")
    return Component("dashboard", report["healthy"], settings.dashboard_url,
                     detail + ("" if pid else " (no service started here)"), facts={**report, "pid": pid})



def check_receivers(settings: Settings) -> Component:
    """The demo receivers: counted only while their service runs."""
    pid = read_pid(settings.receivers_dir / "receivers.pid")
    smtp = port_answers(settings.receivers_host, settings.receivers_smtp_port)
    hook = port_answers(settings.receivers_host, settings.receivers_webhook_port)
    address = f"smtp :{settings.receivers_smtp_port}, webhook :{settings.receivers_webhook_port}"
    if pid is None:
        return Component("receivers", False, address, "not started (demo only)", required=False)
    return Component("receivers", smtp and hook, address,
                     f"pid {pid}, smtp {'answers' if smtp else 'DOWN'}, webhook {'answers' if hook else 'DOWN'}",
                     facts={"pid": pid, "smtp": smtp, "webhook": hook})


CHECKS: tuple[Callable[[Settings], Component], ...] = (
    check_broker, check_postgres, check_pipeline, check_alerts, check_model, check_dashboard, check_receivers)


def collect(settings: Settings | None = None) -> Status:
    """Every check, side by side; a check that raises is a component that is down, with why."""
    settings = settings or get_settings()

    def run(check: Callable[[Settings], Component]) -> Component:
        try:
            return check(settings)
        except Exception as exc:  # noqa: BLE001 - one broken check must not hide the others
            return Component(check.__name__.removeprefix("check_"), False, "", f"check failed: {_one_line(exc)}")

    with ThreadPoolExecutor(max_workers=len(CHECKS)) as pool:
        components = list(pool.map(run, CHECKS))
    return Status(components, datetime.now(timezone.utc).isoformat())
