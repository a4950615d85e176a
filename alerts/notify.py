"""Notification payloads (Alertmanager's webhook shape + our evidence) and the three senders.

A message is built once, when it is queued in the outbox, and stored there; a sender only
transports it, so a retry sends the same bytes (bar the signature timestamp, which the
Standard Webhooks spec wants fresh per attempt) under the same id.

- ``log``: one log line per alert; the demo-safe default.
- ``email``: SMTP with optional STARTTLS and login, a text and an HTML part from
  ``templates/``, ``Message-ID`` = the outbox id.
- ``webhook``: POST of the JSON, signed per Standard Webhooks with the reference library
  (``webhook-id`` = outbox id, ``webhook-timestamp``, ``webhook-signature``).

Senders raise ``DeliveryError`` (with the HTTP status when there is one) on any failure;
they never log secrets (the SMTP password, the signing secret, credentials in a URL).
"""

from __future__ import annotations

import json
import logging
import smtplib
import ssl
from datetime import datetime, timezone
from email.message import EmailMessage
from email.utils import formatdate
from pathlib import Path
from typing import Any

import httpx
import jinja2
from standardwebhooks import Webhook

from alerts.config import Receiver, Rule
from alerts.lifecycle import Episode
from finpulse.settings import Settings

log = logging.getLogger("alerts.notify")
TEMPLATES = Path(__file__).resolve().parent / "templates"
_ZERO_TIME = "0001-01-01T00:00:00Z"  # Alertmanager's endsAt of an alert still firing
_env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=jinja2.select_autoescape(["html.j2"]),
                          undefined=jinja2.ChainableUndefined, keep_trailing_newline=True)


class DeliveryError(RuntimeError):
    def __init__(self, message: str, response_code: int | None = None):
        super().__init__(message)
        self.response_code = response_code


def _iso(value: datetime | None) -> str:
    if value is None:
        return _ZERO_TIME
    return value.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")


def summary(rule: Rule | None, ep: Episode) -> str:
    fig = (ep.evidence.get("window") or ep.last_eval or {}).get("figures", {})
    what = f"{ep.dimension} {ep.key}" if ep.dimension != "all" else "the whole market"
    if "share" in fig:
        return (f"Negative share of {what} at {100 * fig['share']:.0f}% of {fig['n_docs']} documents "
                f"vs a baseline of {100 * fig['baseline_share']:.0f}%")
    if "ratio" in fig:
        return (f"{fig['n_negative']} negative documents about {what}, {fig['ratio']:.1f}x "
                f"the baseline of {fig['baseline_rate']:.1f} per window")
    return f"Negative sentiment spike for {what}"


def alert_json(rule: Rule | None, ep: Episode, status: str, settings: Settings) -> dict[str, Any]:
    labels = {"alertname": ep.rule, "dimension": ep.dimension, "key": ep.key, "severity": ep.severity,
              "width": str(ep.width)}
    base = (settings.alerts_external_url or "").rstrip("/")
    return {
        "status": status,
        "labels": labels,
        "annotations": {"summary": summary(rule, ep), "description": (rule.description if rule else "")},
        "startsAt": _iso(ep.starts_at),
        "endsAt": _iso(ep.ends_at) if status == "resolved" else _ZERO_TIME,
        "generatorURL": f"{base}/alerts/{ep.id}" if base else "",
        "fingerprint": ep.fingerprint,
        "episodeId": ep.id,
        "evidence": ep.evidence,
        "peak": ep.peak,
    }


def build_message(message_id: str, receiver: Receiver, items: list[dict[str, Any]], settings: Settings) -> dict[str, Any]:
    """The outbox payload: Alertmanager's webhook JSON (``webhook``), plus rendered email parts."""
    status = "firing" if any(a["status"] == "firing" for a in items) else "resolved"
    common = {k: v for k, v in items[0]["labels"].items() if all(a["labels"].get(k) == v for a in items)}
    body: dict[str, Any] = {
        "version": "4",
        "groupKey": f'{{}}:{{receiver="{receiver.name}"}}',
        "truncatedAlerts": 0,
        "status": status,
        "receiver": receiver.name,
        "groupLabels": {},
        "commonLabels": common,
        "commonAnnotations": {},
        "externalURL": settings.alerts_external_url or "",
        "messageId": message_id,
        "alerts": items,
    }
    payload: dict[str, Any] = {"webhook": body}
    if receiver.type == "email":
        context = {"status": status, "alerts": items, "receiver": receiver.name, "message_id": message_id}
        names = ", ".join(sorted({f"{a['labels']['alertname']}/{a['labels']['key']}" for a in items}))
        payload["subject"] = f"[finpulse {status.upper()}:{len(items)}] {names}"[:200]
        payload["text"] = _env.get_template("email.txt.j2").render(**context)
        payload["html"] = _env.get_template("email.html.j2").render(**context)
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
    else:
        headers["webhook-id"] = message_id
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
