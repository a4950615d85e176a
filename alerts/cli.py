"""``finpulse alerts``: run, check, backtest, silence, verify, and the background service."""

from __future__ import annotations

import base64
import json
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import click

from finpulse.settings import get_settings

RULES_OPTION = click.option("--rules", "rules_path", type=click.Path(path_type=Path), default=None,
                            help="Rules YAML (default: FINPULSE_ALERTS_RULES or the shipped alerts/rules.yaml).")


def _config(rules_path: Path | None, *, sending: bool = False):
    """The rules; ``sending`` (validate, run, start, check) also refuses unsigned webhooks."""
    from alerts.config import RulesError, load

    try:
        config = load(rules_path)
        if sending:
            config.check_signing()
        return config
    except RulesError as exc:
        raise click.ClickException(str(exc)) from None


def _engine():
    from finpulse import db

    return db.engine(get_settings())


def _when(value: str) -> datetime:
    try:
        t = datetime.fromisoformat(value)
    except ValueError:
        raise click.BadParameter(f"{value!r} is not an ISO date/time (e.g. 2026-11-01 or 2026-11-01T12:00Z)") from None
    return t if t.tzinfo else t.replace(tzinfo=timezone.utc)


@click.group("alerts")
def cli() -> None:
    """Negative-sentiment spike alerts: rules, evaluation, delivery (email, signed webhooks)."""


@cli.command("run")
@RULES_OPTION
def run(rules_path: Path | None) -> None:
    """Run the alert service in the foreground (leader election, evaluation, delivery, /metrics)."""
    from alerts.service import AlertService
    from finpulse.metrics import MetricsPortError

    try:
        AlertService(_config(rules_path, sending=True), get_settings()).run()
    except MetricsPortError as exc:
        raise click.ClickException(str(exc)) from None


@cli.command("check")
@RULES_OPTION
@click.option("--once", is_flag=True, required=True, help="One evaluation, then exit.")
@click.option("--dry-run", is_flag=True, help="Print what would be sent; change and send nothing.")
def check(rules_path: Path | None, once: bool, dry_run: bool) -> None:
    """One evaluation now; without --dry-run its messages are queued and delivered before exiting."""
    from alerts.delivery import Dispatcher
    from alerts.engine import Evaluator

    config, settings, engine = _config(rules_path, sending=True), get_settings(), _engine()
    report = Evaluator(engine, config, settings, holder="check").run_once(dry_run=dry_run)
    if report.skipped:
        click.echo(f"skipped: {report.skipped}")
    click.echo(f"evaluated {report.windows} window(s); {len(report.transitions)} transition(s)")
    for event, rule, key, start in report.transitions:
        click.echo(f"  {event:9} {rule} {key} window {start}")
    for reason, rule, key in report.muted:
        click.echo(f"  muted ({reason}) {rule} {key}")
    for msg in report.messages:
        alerts = msg.payload["webhook"]["alerts"]
        click.echo(f"{'would send' if dry_run else 'queued'} {msg.status} to {msg.receiver} ({msg.channel}): "
                   + ", ".join(f"{a['labels']['alertname']}/{a['labels']['key']}:{a['status']}" for a in alerts))
        if dry_run:
            click.echo(json.dumps(msg.payload["webhook"], indent=2, default=str))
    if not dry_run and report.messages:
        import time

        dispatcher = Dispatcher(engine, config, settings, holder="check")
        deadline = time.monotonic() + max(r.timeout for r in config.receivers.values()) + 5
        dispatcher.dispatch()
        dispatcher.drain(timeout=max(0.0, deadline - time.monotonic()))
        click.echo("delivery attempted; failures stay in the outbox and are retried by the service")


@cli.command("backtest")
@RULES_OPTION
@click.option("--since", required=True, help="Start (ISO, UTC if no offset).")
@click.option("--until", required=True, help="End (ISO, UTC if no offset).")
@click.option("--json", "as_json", is_flag=True, help="Episodes as JSON lines.")
def backtest_cmd(rules_path: Path | None, since: str, until: str, as_json: bool) -> None:
    """Episodes the rules would have fired over stored windows; sends and writes nothing."""
    from alerts.backtest import backtest, format_episode

    config, settings = _config(rules_path), get_settings()
    result = backtest(_engine(), config, _when(since), _when(until), settings.alerts_model_version, settings)
    for ep in result.episodes:
        if as_json:
            click.echo(json.dumps({"rule": ep.rule, "dimension": ep.dimension, "key": ep.key,
                                   "starts_at": ep.starts_at, "fired_at": ep.fired_at, "ends_at": ep.ends_at,
                                   "peak": ep.peak, "evidence": ep.evidence}, default=str))
        else:
            click.echo(format_episode(ep))
    click.echo(f"{len(result.episodes)} episode(s) over {result.windows} rule-window(s) "
               f"(model {result.model_version or 'none: no windows stored'})", err=as_json)


@cli.command("validate")
@RULES_OPTION
def validate(rules_path: Path | None) -> None:
    """Check a rules file; lists every error with file, line and field (and unsigned webhooks)."""
    config = _config(rules_path, sending=True)
    click.echo(f"{config.path}: {len(config.rules)} rule(s) OK; receivers on: {', '.join(config.receivers)}"
               + "".join(f"; {n} off ({why})" for n, why in config.unconfigured.items()))


@cli.command("verify")
@click.argument("body", type=click.File("rb"), required=False)
@click.option("-H", "--header", "headers", multiple=True,
              help="'name: value' of the received request: webhook-id, webhook-timestamp and webhook-signature.")
@click.option("--saved", "saved", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="A webhook saved by the demo receiver ($FINPULSE_HOME/receivers/webhooks/*.json): body and "
                   "headers come from it (instead of BODY and -H).")
@click.option("--secret-env", default="FINPULSE_ALERTS_WEBHOOK_SECRET", show_default=True,
              help="Environment variable holding the whsec_ secret.")
@click.option("--secret-file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="File holding the secret; default when the variable is unset: the one `finpulse run` "
                   "generated for the demo, $FINPULSE_HOME/demo/webhook-secret.")
@click.option("--max-age", type=click.IntRange(min=1), default=None,
              help="Also refuse a signature timestamp more than this many seconds away from now (what a live "
                   "receiver does against replays; off by default, so a saved webhook can be checked later).")
def verify_cmd(body, headers: tuple[str, ...], saved: Path | None, secret_env: str, secret_file: Path | None,
               max_age: int | None) -> None:
    """Check a received webhook's Standard Webhooks signature: prints ok (exit 0) or mismatch (exit 1).

    The signature is recomputed with the function delivery signs with (alerts.notify.sign) over the
    body, webhook-id and webhook-timestamp as received, and compared with each signature in
    webhook-signature."""
    import hmac
    import time

    from alerts.notify import sign

    if saved is not None:
        if body is not None or headers:
            raise click.UsageError("give either --saved FILE or BODY with -H headers, not both")
        try:
            record = json.loads(saved.read_text())
            raw = (base64.b64decode(record["body_base64"]) if record.get("body_base64")
                   else record["body"].encode("utf-8"))
            parsed = {str(k).lower(): str(v) for k, v in record["headers"].items()}
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise click.ClickException(f"{saved} is not a webhook saved by the receiver ({type(exc).__name__})") from None
    else:
        if body is None:
            raise click.UsageError("give BODY with -H headers, or --saved FILE")
        raw = body.read()
        parsed = {}
        for h in headers:
            name, sep, value = h.partition(":")
            if not sep:
                raise click.BadParameter(f"{h!r} is not 'name: value'", param_hint="-H")
            parsed[name.strip().lower()] = value.strip()
    secret, where = _verify_secret(secret_env, secret_file)

    def mismatch(why: str) -> None:
        click.echo(f"mismatch: {why}", err=True)
        sys.exit(1)

    missing = [h for h in ("webhook-id", "webhook-timestamp", "webhook-signature") if not parsed.get(h)]
    if missing:
        mismatch(f"no {', '.join(missing)} header")
    try:
        stamp = int(parsed["webhook-timestamp"])
    except ValueError:
        mismatch("webhook-timestamp is not a Unix time")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        mismatch("the body is not UTF-8 (finpulse signs JSON text)")
    try:
        expected = sign(secret, parsed["webhook-id"], text, datetime.fromtimestamp(stamp, timezone.utc))
    except Exception as exc:  # noqa: BLE001 - a malformed secret: say so, never print it
        raise click.ClickException(f"the secret from {where} cannot sign ({type(exc).__name__})") from None
    received = parsed["webhook-signature"].split()
    if not any(hmac.compare_digest(expected["webhook-signature"].encode(), r.encode()) for r in received):
        mismatch(f"webhook-signature does not match the body and headers signed with the secret from {where}")
    age = time.time() - stamp
    if max_age is not None and abs(age) > max_age:
        mismatch(f"the signature is valid but its timestamp is {age:.0f}s old (--max-age {max_age})")
    click.echo(f"ok: {parsed['webhook-id']} signed with the secret from {where}, {age:.0f}s ago")


def _verify_secret(secret_env: str, secret_file: Path | None) -> tuple[str, str]:
    """(secret, where it came from): --secret-file, else the variable, else the demo's secret file."""
    import os

    from finpulse.inbox import demo_secret_file

    if secret_file is None:
        value = os.environ.get(secret_env)
        if value:
            return value.strip(), secret_env
        secret_file = demo_secret_file(get_settings())
        if not secret_file.exists():
            raise click.ClickException(f"{secret_env} is not set and there is no demo secret at {secret_file}")
    try:
        value = secret_file.read_text().strip()
    except OSError as exc:
        raise click.ClickException(f"cannot read {secret_file}: {exc.strerror or exc}") from None
    if not value:
        raise click.ClickException(f"{secret_file} is empty")
    return value, str(secret_file)


@cli.group("silence")
def silence() -> None:
    """Mute notifications for a scope and time range (alerts are still recorded)."""


@silence.command("add")
@click.option("--rule", default=None, help="Rule name (default: any).")
@click.option("--dimension", type=click.Choice(["all", "topic", "ticker", "source"]), default=None)
@click.option("--key", "key_pattern", default="*", show_default=True, help="Key or fnmatch pattern.")
@click.option("--duration", default="2h", show_default=True, help="How long (e.g. 30m, 2h, 1d).")
@click.option("--starts", default=None, help="Start (ISO; default now).")
@click.option("--author", required=True)
@click.option("--comment", required=True)
def silence_add(rule, dimension, key_pattern, duration, starts, author, comment) -> None:
    import sqlalchemy as sa

    from finpulse import durations

    try:
        seconds = durations.parse_seconds(duration, whole=True, positive=True)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--duration") from None
    now = datetime.now(timezone.utc)
    start = _when(starts) if starts else now
    with _engine().begin() as conn:
        sid = conn.execute(sa.text(
            "INSERT INTO alert_silences (rule, dimension, key_pattern, starts_at, ends_at, author, comment) "
            "VALUES (:r, :d, :k, :s, :e, :a, :c) RETURNING id"),
            {"r": rule, "d": dimension, "k": key_pattern, "s": start, "e": start + timedelta(seconds=seconds),
             "a": author, "c": comment}).scalar()
    state = "pending" if start > now else "active"
    click.echo(f"silence {sid}: {state} rule={rule or '*'} dimension={dimension or '*'} key={key_pattern} "
               f"from {start.isoformat()} until {(start + timedelta(seconds=seconds)).isoformat()}")


def silence_state(row, now: datetime) -> str:
    """expired (by hand or past its end), pending (starts later: mutes nothing yet) or active."""
    if row.expired_at is not None or row.ends_at <= now:
        return "expired"
    return "pending" if row.starts_at > now else "active"


@silence.command("list")
@click.option("--all", "show_all", is_flag=True, help="Include expired silences.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per silence, one per line.")
def silence_list(show_all: bool, as_json: bool) -> None:
    """Silences now active or pending (starting later), and with --all the expired ones."""
    import sqlalchemy as sa

    where = "" if show_all else "WHERE expired_at IS NULL AND ends_at > now()"
    with _engine().connect() as conn:
        now = conn.execute(sa.text("SELECT now()")).scalar()
        rows = conn.execute(sa.text(f"SELECT * FROM alert_silences {where} ORDER BY id")).all()
    for r in rows:
        state = silence_state(r, now)
        if as_json:
            click.echo(json.dumps({"id": r.id, "state": state, "rule": r.rule, "dimension": r.dimension,
                                   "key_pattern": r.key_pattern, "starts_at": r.starts_at.isoformat(),
                                   "ends_at": r.ends_at.isoformat(), "author": r.author, "comment": r.comment,
                                   "expired_at": r.expired_at.isoformat() if r.expired_at else None}))
            continue
        click.echo(f"{r.id:>4} {state:8} rule={r.rule or '*'} dimension={r.dimension or '*'} key={r.key_pattern} "
                   f"{r.starts_at.isoformat()} -> {r.ends_at.isoformat()} by {r.author}: {r.comment}")
    if not rows and not as_json:
        click.echo("no silences")


@silence.command("expire")
@click.argument("silence_id", type=int)
def silence_expire(silence_id: int) -> None:
    import sqlalchemy as sa

    with _engine().begin() as conn:
        n = conn.execute(sa.text("UPDATE alert_silences SET expired_at = now() WHERE id = :i AND expired_at IS NULL"),
                         {"i": silence_id}).rowcount
    if not n:
        raise click.ClickException(f"no active silence {silence_id}")
    click.echo(f"silence {silence_id} expired")


def _service(rules_path: Path | None = None):
    from finpulse.service import ManagedService, python_module_argv

    args = ["alerts", "run"] + (["--rules", str(rules_path.resolve())] if rules_path else [])
    return ManagedService("alerts", python_module_argv("finpulse", *args))


@cli.command("start")
@RULES_OPTION
def start(rules_path: Path | None) -> None:
    """Start the service in the background (pid and log under FINPULSE_HOME/alerts/)."""
    from finpulse.service import ServiceError

    _config(rules_path, sending=True)  # refuse to start on invalid rules, here rather than in a log
    service = _service(rules_path)
    offset = service.log_file.stat().st_size if service.log_file.exists() else 0

    def ready() -> bool:
        # Started = the scheduler is up (its first line after loading rules and settings).
        with service.log_file.open("rb") as log:
            log.seek(offset)
            return b"alert service " in log.read()

    try:
        status = service.start(ready=ready, timeout=60)
    except ServiceError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(status.line())


@cli.command("stop")
def stop() -> None:
    """Stop the background service (SIGTERM: in-flight sends finish first)."""
    click.echo("stopped" if _service().stop() else "not running")


@cli.command("status")
@click.option("--json", "as_json", is_flag=True, help="One JSON object (for `finpulse status` and scripts).")
def status(as_json: bool) -> None:
    """Whether the background service runs, which instance leads, episodes, outbox, last evaluation."""
    service = _service().status()
    out = {"service": {"running": service.running, "pid": service.pid, "log": str(service.log)}}
    try:
        out.update(status_figures(_engine()))
        out["database"] = {"ok": True}
    except Exception as exc:  # noqa: BLE001 - status reports a database outage, it does not crash on it
        out["database"] = {"ok": False, "error": type(exc).__name__}
    if as_json:
        click.echo(json.dumps(out, default=str))
        return
    click.echo(service.line())
    if not out["database"]["ok"]:
        click.echo(f"database: unavailable ({out['database']['error']})")
        return
    leader, ev = out["leader"], out["last_evaluation"]
    if leader:
        click.echo(f"leader       {leader['holder']} since {leader['since']} "
                   f"(heartbeat {leader['heartbeat_age_seconds']:.0f}s ago)")
    else:
        click.echo("leader       none")
    click.echo(f"alerts       {out['episodes']['firing']} firing, {out['episodes']['pending']} pending")
    click.echo(f"outbox       {out['outbox']['pending']} pending, {out['outbox']['dead']} dead")
    click.echo("evaluation   " + (f"last at {ev['at']} ({ev['age_seconds']:.0f}s ago) by {ev['holder']}: "
                                  f"{ev['windows']} window(s), {ev['transitions']} transition(s), "
                                  f"{ev['messages']} message(s)" + (f"; skipped: {ev['skipped']}" if ev['skipped'] else "")
                                  if ev else "none yet"))


def status_figures(engine) -> dict:
    """Leader, episode and outbox counts and the last evaluation, with ages measured by the database clock."""
    import sqlalchemy as sa

    with engine.connect() as conn:
        leader = conn.execute(sa.text(
            "SELECT holder, since, heartbeat, extract(epoch FROM now() - heartbeat)::float8 AS age "
            "FROM alert_leader")).first()
        episodes = dict(conn.execute(sa.text(
            "SELECT status, count(*) FROM alerts WHERE status IN ('pending', 'firing') GROUP BY status")).all())
        outbox = dict(conn.execute(sa.text(
            "SELECT state, count(*) FROM alert_outbox WHERE state IN ('pending', 'dead') GROUP BY state")).all())
        ev = conn.execute(sa.text(
            "SELECT at, holder, windows, transitions, messages, skipped, duration_ms, "
            "extract(epoch FROM now() - at)::float8 AS age FROM alert_evaluations")).first()
    return {
        "leader": None if leader is None else {
            "holder": leader.holder, "since": leader.since.isoformat(), "heartbeat": leader.heartbeat.isoformat(),
            "heartbeat_age_seconds": leader.age},
        "episodes": {"firing": episodes.get("firing", 0), "pending": episodes.get("pending", 0)},
        "outbox": {"pending": outbox.get("pending", 0), "dead": outbox.get("dead", 0)},
        "last_evaluation": None if ev is None else {
            "at": ev.at.isoformat(), "age_seconds": ev.age, "holder": ev.holder, "windows": ev.windows,
            "transitions": ev.transitions, "messages": ev.messages, "skipped": ev.skipped,
            "duration_ms": ev.duration_ms},
    }
