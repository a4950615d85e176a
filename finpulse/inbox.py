"""The demo receivers' inbox: how stack/receivers.py saves what it receives and how the dashboard
lists it. Shared here because the writer (stack) and the reader (dashboard) must agree on it.

- ``$FINPULSE_HOME/receivers/mail/<time>-<hash>.eml``: each message as the SMTP client sent it, with
  three headers in front: ``X-Finpulse-Received-At`` (UTC), ``X-Finpulse-Envelope-From`` and
  ``X-Finpulse-Envelope-To`` (the RCPT TO addresses, Bcc included).
- ``$FINPULSE_HOME/receivers/webhooks/<time>-<hash>.json``: ``received_at``, ``method``, ``path``,
  ``headers``, ``body`` (text; ``body_base64`` too when it was not UTF-8), ``verified`` (the
  Standard Webhooks signature checked: true/false; null when no secret was configured) and
  ``verify_error``.

Files are written to a temporary name and renamed, so a reader never sees half a message.
"""

from __future__ import annotations

import base64
import email
import email.policy
import hashlib
import json
import os
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from finpulse.settings import Settings

MAIL = "mail"
WEBHOOK = "webhook"


def mail_dir(settings: Settings) -> Path:
    return settings.receivers_dir / MAIL


def webhook_dir(settings: Settings) -> Path:
    return settings.receivers_dir / "webhooks"


def _write_atomically(folder: Path, received_at: datetime, payload: bytes, suffix: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256(payload).hexdigest()[:12]
    path = folder / f"{received_at.strftime('%Y%m%dT%H%M%S.%fZ')}-{digest}{suffix}"
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as out:
        out.write(payload)
        out.flush()
        os.fsync(out.fileno())
    tmp.replace(path)
    return path


def save_mail(settings: Settings, raw: bytes, *, mail_from: str, rcpt_tos: list[str],
              received_at: datetime | None = None) -> Path:
    received_at = received_at or datetime.now(timezone.utc)
    head = (f"X-Finpulse-Received-At: {received_at.isoformat()}\r\n"
            f"X-Finpulse-Envelope-From: {mail_from}\r\n"
            f"X-Finpulse-Envelope-To: {', '.join(rcpt_tos)}\r\n").encode()
    return _write_atomically(mail_dir(settings), received_at, head + raw, ".eml")


def save_webhook(settings: Settings, *, method: str, path: str, headers: dict[str, str], body: bytes,
                 verified: bool | None, verify_error: str | None, received_at: datetime | None = None) -> Path:
    received_at = received_at or datetime.now(timezone.utc)
    record: dict = {"received_at": received_at.isoformat(), "method": method, "path": path, "headers": headers,
                    "verified": verified, "verify_error": verify_error}
    try:
        record["body"] = body.decode("utf-8")
    except UnicodeDecodeError:
        record["body"] = body.decode("utf-8", errors="replace")
        record["body_base64"] = base64.b64encode(body).decode()
    return _write_atomically(webhook_dir(settings), received_at, json.dumps(record, indent=1).encode(), ".json")


@dataclass(frozen=True)
class InboxItem:
    kind: str  # MAIL | WEBHOOK
    received_at: datetime | None
    subject: str
    recipients: str
    verified: bool | None  # webhooks: signature checked; mail: None
    path: Path
    error: str | None = None  # the file could not be read: why


def _mail_item(path: Path) -> InboxItem:
    message = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
    received = message.get("X-Finpulse-Received-At")
    return InboxItem(MAIL, datetime.fromisoformat(received) if received else None, str(message.get("Subject", "")),
                     str(message.get("X-Finpulse-Envelope-To") or message.get("To", "")), None, path)


def webhook_subject(body: str) -> str:
    """One line for a webhook body: an alert payload's status and alerts, else the body's start."""
    try:
        payload = json.loads(body)
    except ValueError:
        return body[:80]
    if isinstance(payload, dict) and isinstance(payload.get("alerts"), list):
        names = []
        for alert in payload["alerts"][:3]:
            labels = alert.get("labels", {}) if isinstance(alert, dict) else {}
            names.append(f"{labels.get('alertname', '?')} {labels.get('dimension', '')}={labels.get('key', '')}")
        more = f" (+{len(payload['alerts']) - 3})" if len(payload["alerts"]) > 3 else ""
        return f"[{payload.get('status', '?')}] " + ", ".join(names) + more
    return body[:80]


def _webhook_item(path: Path) -> InboxItem:
    record = json.loads(path.read_text())
    return InboxItem(WEBHOOK, datetime.fromisoformat(record["received_at"]),
                     webhook_subject(record.get("body", "")), record.get("path", ""), record.get("verified"), path)


def read_inbox(settings: Settings, limit: int = 200) -> list[InboxItem]:
    """What the receivers saved, newest first; a file that cannot be read is listed with its error."""
    items = []
    for kind, folder, reader, suffix in ((MAIL, mail_dir(settings), _mail_item, ".eml"),
                                         (WEBHOOK, webhook_dir(settings), _webhook_item, ".json")):
        if not folder.is_dir():
            continue
        for path in sorted(folder.glob(f"*{suffix}"), reverse=True)[:limit]:
            try:
                items.append(reader(path))
            except (OSError, ValueError, KeyError, TypeError) as exc:
                items.append(InboxItem(kind, None, "", "", None, path,
                                       f"unreadable: {type(exc).__name__}: {exc}"))
    far_past = datetime.min.replace(tzinfo=timezone.utc)
    items.sort(key=lambda i: (i.received_at or far_past, i.path.name), reverse=True)
    return items[:limit]


# --- the demo's webhook signing secret ----------------------------------------------------------

def demo_secret_file(settings: Settings) -> Path:
    """Where ``finpulse run`` keeps the signing secret it gives the demo's alert service and webhook
    receiver: under HOME (never in the repository), mode 600."""
    return settings.home / "demo" / "webhook-secret"


def demo_webhook_secret(settings: Settings, *, create: bool = False) -> str | None:
    """The demo's ``whsec_`` secret; with ``create``, generated once (32 random bytes) into a file made
    mode 600 from the start (``O_EXCL``: never readable by others, not even for a moment)."""
    path = demo_secret_file(settings)
    try:
        return path.read_text().strip() or None
    except FileNotFoundError:
        if not create:
            return None
    path.parent.mkdir(parents=True, exist_ok=True)
    secret = "whsec_" + base64.b64encode(os.urandom(32)).decode()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another run made it meanwhile: use that one
        return path.read_text().strip() or None
    with os.fdopen(fd, "w") as out:
        out.write(secret + "\n")
    return secret
