"""Notification payloads (Alertmanager's webhook shape + our evidence) and the three senders.

A message is built once, when it is queued in the outbox, and stored there; a sender only
transports it, so a retry sends the same bytes (bar the signature timestamp, which the
Standard Webhooks spec wants fresh per attempt) under the same id.

- ``log``: one log line per alert and one per evidence document; the demo-safe default.
- ``email``: SMTP with optional STARTTLS and login, a text and an HTML part from
  ``templates/``, ``Message-ID`` = the outbox id. The HTML part shows each alert's recent trend
  (``finpulse.charts.trend_png``) inline: multipart/alternative of the text and a
  multipart/related of the HTML and its PNGs (``<img src="cid:...">``). The series a chart
  draws is read when the message is queued and stored in the payload (``charts``), so a retry
  draws the same picture.
- ``webhook``: POST of the JSON, signed per Standard Webhooks with the reference library
  (``webhook-id`` = outbox id, ``webhook-timestamp``, ``webhook-signature``); unsigned only
  for a receiver that allows it (``allow_unsigned``).

Senders raise ``DeliveryError`` (with the HTTP status when there is one) on any failure;
they never log secrets (the SMTP password, the signing secret, credentials in a URL).
"""

from __future__ import annotations

import json
import logging
import smtplib
import ssl
from datetime import datetime, timedelta, timezone
from email.message import EmailMessage
from email.utils import formatdate
from pathlib import Path
from typing import Any

import httpx
import jinja2
from standardwebhooks import Webhook

from alerts import formatting
from alerts.config import Receiver, Rule, labels_of
from alerts.lifecycle import Episode
from finpulse.settings import Settings

log = logging.getLogger("alerts.notify")
TEMPLATES = Path(__file__).resolve().parent / "templates"
_ZERO_TIME = "0001-01-01T00:00:00Z"  # Alertmanager's endsAt of an alert still firing
TREND_WINDOWS = 48  # windows of the rule's width an email's chart shows, up to the last evaluated one
CHARTS_PER_MESSAGE = 10  # a group of more alerts shows the first ten charts (the text lists them all)
_env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=jinja2.select_autoescape(["html.j2"]),
                          undefined=jinja2.ChainableUndefined, keep_trailing_newline=True)
formatting.install(_env)


class DeliveryError(RuntimeError):
    def __init__(self, message: str, response_code: int | None = None):
        super().__init__(message)
        self.response_code = response_code


def _iso(value: datetime | None) -> str:
    if value is None:
        return _ZERO_TIME
    return value.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")


def summary(rule: Rule | None, ep: Episode) -> str:
    """One line a person reads first: what surged and by how much (figures rounded: alerts.formatting)."""
    evaluation = ep.evidence.get("window") or ep.last_eval or {}
    what = f"{ep.dimension} {ep.key}" if ep.dimension != "all" else "the whole market"
    if not evaluation.get("figures"):
        return f"Negative sentiment spike for {what}"
    return f"Negative sentiment about {what}: {formatting.figures(evaluation)}"


def alert_json(rule: Rule | None, ep: Episode, status: str, settings: Settings) -> dict[str, Any]:
    base = (settings.alerts_external_url or "").rstrip("/")
    return {
        "status": status,
        "labels": labels_of(ep.rule, ep.dimension, ep.key, ep.severity, ep.width),
        "annotations": {"summary": summary(rule, ep), "description": (rule.description if rule else "")},
        "startsAt": _iso(ep.starts_at),
        "endsAt": _iso(ep.ends_at) if status == "resolved" else _ZERO_TIME,
        "generatorURL": f"{base}/alerts/{ep.id}" if base else "",
        "fingerprint": ep.fingerprint,
        "episodeId": ep.id,
        "evidence": ep.evidence,
        "peak": ep.peak,
    }


def chart_spec(ep: Episode, series: list[tuple[datetime, int, int]], width: int) -> dict[str, Any]:
    """What an alert's trend chart draws (stored in the outbox payload): the scope's windows
    (start, documents, negative) with the episode shaded and the window that made it fire marked."""
    step = timedelta(seconds=width)
    fired = ep.fired_at or ep.last_window + step
    return {"episodeId": ep.id,
            "title": f"{ep.dimension} {ep.key}: negative share (line) and documents (bars) per "
                     f"{formatting.duration(width)} window",
            "times": [t.isoformat() for t, _, _ in series],
            "negative_share": [k / n if n else None for _, n, k in series],
            "volume": [n for _, n, _ in series],
            "spans": [[ep.starts_at.isoformat(), (ep.ends_at or ep.last_window + step).isoformat()]],
            "marked": [(fired - step).isoformat(), fired.isoformat()]}


def chart_png(chart: dict[str, Any]) -> bytes:
    """The PNG of a stored chart spec (the same bytes for the same spec)."""
    from finpulse.charts import Span, trend_png

    def t(value: str) -> datetime:
        return datetime.fromisoformat(value)

    return trend_png([t(x) for x in chart["times"]], chart["negative_share"], chart["volume"], title=chart["title"],
                     spans=[Span(t(a), t(b)) for a, b in chart["spans"]], marked=Span(*map(t, chart["marked"])))


def build_message(message_id: str, receiver: Receiver, items: list[dict[str, Any]], settings: Settings, *,
                  group_key: str, group_labels: dict[str, str],
                  charts: list[dict[str, Any] | None] | None = None) -> dict[str, Any]:
    """The outbox payload: Alertmanager's webhook JSON (``webhook``), plus rendered email parts and
    the series of their charts."""
    status = "firing" if any(a["status"] == "firing" for a in items) else "resolved"
    common = {k: v for k, v in items[0]["labels"].items() if all(a["labels"].get(k) == v for a in items)}
    common_annotations = {k: v for k, v in items[0]["annotations"].items()
                          if all(a["annotations"].get(k) == v for a in items)}
    body: dict[str, Any] = {
        "version": "4",
        "groupKey": group_key,
        "truncatedAlerts": 0,
        "status": status,
        "receiver": receiver.name,
        "groupLabels": group_labels,
        "commonLabels": common,
        "commonAnnotations": common_annotations,
        "externalURL": settings.alerts_external_url or "",
        "messageId": message_id,
        "alerts": items,
    }
    payload: dict[str, Any] = {"webhook": body}
    if receiver.type == "email":
        stored = []
        for i, chart in enumerate(charts or []):
            if chart is not None:
                stored.append({**chart, "cid": f"trend{i}.{message_id}@finpulse"})
        cids = {c["episodeId"]: c["cid"] for c in stored}
        context = {"status": status, "alerts": items, "receiver": receiver.name, "message_id": message_id,
                   "group_labels": group_labels, "cids": cids}
        names = ", ".join(sorted({f"{a['labels']['alertname']}/{a['labels']['key']}" for a in items}))
        payload["subject"] = f"[finpulse {status.upper()}:{len(items)}] {names}"[:200]
        payload["text"] = _env.get_template("email.txt.j2").render(**context)
        payload["html"] = _env.get_template("email.html.j2").render(**context)
        payload["charts"] = stored
    return payload


# --- senders ------------------------------------------------------------------------------

def send(receiver: Receiver, message_id: str, payload: dict[str, Any], settings: Settings) -> int | None:
    """Deliver one outbox message; returns the response code (webhook) or None; raises DeliveryError."""
    if receiver.type == "log":
        body = payload["webhook"]
        for a in body["alerts"]:
            log.warning("ALERT %s %s %s=%s severity=%s: %s [message %s]", a["status"].upper(),
                        a["labels"]["alertname"], a["labels"]["dimension"], a["labels"]["key"],
                        a["labels"]["severity"], a["annotations"]["summary"], message_id)
            documents = (a.get("evidence") or {}).get("documents") or []
            for i, d in enumerate(documents, 1):
                log.warning("ALERT %s %s=%s evidence %d/%d: %s%s", a["labels"]["alertname"],
                            a["labels"]["dimension"], a["labels"]["key"], i, len(documents),
                            formatting.document_line(d), f" {d['url']}" if d.get("url") else "")
        return None
    if receiver.type == "email":
        return send_email(receiver, message_id, payload, settings)
    return send_webhook(receiver, message_id, payload)


def send_email(receiver: Receiver, message_id: str, payload: dict[str, Any], settings: Settings) -> None:
    msg = EmailMessage()
    msg["Subject"] = payload["subject"]
    msg["From"] = settings.alerts_email_from
    msg["To"] = ", ".join(receiver.to)
    msg["Date"] = formatdate(usegmt=True)
    msg["Message-ID"] = f"<{message_id}@finpulse>"
    msg["X-Finpulse-Message-Id"] = message_id
    msg.set_content(payload["text"])
    msg.add_alternative(payload["html"], subtype="html")
    html = msg.get_payload()[1]
    for chart in payload.get("charts") or []:
        try:
            png = chart_png(chart)
        except Exception:  # a chart that cannot be drawn must not hold back the alert (retries draw the same)
            log.exception("message %s: trend chart %s not drawn; sending without it", message_id, chart["cid"])
            continue
        html.add_related(png, maintype="image", subtype="png", cid=f"<{chart['cid']}>",
                         filename=chart["cid"].split("@")[0] + ".png")
    host, port = settings.alerts_smtp_host, settings.alerts_smtp_port
    try:
        with smtplib.SMTP(host, port, timeout=receiver.timeout) as smtp:
            if settings.alerts_smtp_starttls:
                smtp.starttls(context=ssl.create_default_context())
            if settings.alerts_smtp_user:
                password = settings.alerts_smtp_password.get_secret_value() if settings.alerts_smtp_password else ""
                smtp.login(settings.alerts_smtp_user, password)
            smtp.send_message(msg)
    except smtplib.SMTPResponseException as exc:
        # The server's own text, never our credentials.
        raise DeliveryError(f"SMTP {host}:{port} answered {exc.smtp_code}", exc.smtp_code) from None
    except (OSError, smtplib.SMTPException) as exc:
        raise DeliveryError(f"SMTP {host}:{port}: {type(exc).__name__}: {exc}") from None


def sign(secret: str, message_id: str, body: str, when: datetime | None = None) -> dict[str, str]:
    """Standard Webhooks headers for ``body`` (the reference library does the signing)."""
    when = when or datetime.now(timezone.utc)
    signature = Webhook(secret).sign(message_id, when, body)
    return {"webhook-id": message_id, "webhook-timestamp": str(int(when.timestamp())),
            "webhook-signature": signature}


def send_webhook(receiver: Receiver, message_id: str, payload: dict[str, Any]) -> int:
    body = json.dumps(payload["webhook"], separators=(",", ":"), sort_keys=True, default=str)
    headers = {"content-type": "application/json", "user-agent": "finpulse-alerts/1"}
    if receiver.secret is not None:
        headers.update(sign(receiver.secret.get_secret_value(), message_id, body))
    elif receiver.allow_unsigned:
        headers["webhook-id"] = message_id
    else:  # the loader refuses such a receiver at start; never send unsigned by accident
        raise DeliveryError(f"webhook receiver {receiver.name} has no signing secret and does not allow unsigned")
    try:
        response = httpx.post(receiver.url, content=body.encode(), headers=headers,
                              timeout=receiver.timeout, follow_redirects=False)
    except httpx.HTTPError as exc:
        raise DeliveryError(f"POST {receiver.target}: {type(exc).__name__}: {exc}") from None
    if not 200 <= response.status_code < 300:
        raise DeliveryError(f"POST {receiver.target} answered {response.status_code}", response.status_code)
    return response.status_code


def verify(secret: str, body: bytes | str, headers: dict[str, str]) -> Any:
    """Receiver side: the parsed payload if the signature and timestamp check out, else raises."""
    return Webhook(secret).verify(body, {k.lower(): v for k, v in headers.items()})
