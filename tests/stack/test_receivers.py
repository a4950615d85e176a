"""The demo receivers (stack/receivers.py): a real email over SMTP and real signed webhooks over HTTP,
saved where finpulse.inbox lists them; and the background service's start / status / stop."""

from __future__ import annotations

import base64
import email
import email.policy
import json
import os
import smtplib
import subprocess
import sys
from datetime import datetime, timezone
from email.message import EmailMessage

import httpx
import pytest
from standardwebhooks import Webhook

from finpulse.inbox import MAIL, WEBHOOK, mail_dir, read_inbox, webhook_dir
from finpulse.settings import Settings
from stack.receivers import Receivers
from tests.conftest import free_port

SECRET = "whsec_" + base64.b64encode(b"receivers-test-secret-0123456789").decode()
ALERT_BODY = {"version": "4", "status": "firing", "alerts": [
    {"status": "firing", "labels": {"alertname": "ticker-negative-share", "dimension": "ticker", "key": "ACME"}}]}


def receiver_settings(home, secret: str | None = SECRET) -> Settings:
    return Settings(home=home, receivers_smtp_port=free_port(), receivers_webhook_port=free_port(),
                    alerts_webhook_secret=secret)


def send_mail(settings: Settings, subject: str) -> None:
    message = EmailMessage()
    message["From"], message["To"], message["Subject"] = "finpulse@localhost", "desk@example.com", subject
    message["Message-ID"] = "<msg-1@finpulse>"
    message.set_content("ACME negative share 60% (baseline 10%)")
    message.add_alternative("<p>ACME negative share <b>60%</b></p>", subtype="html")
    with smtplib.SMTP(settings.receivers_host, settings.receivers_smtp_port, timeout=10) as smtp:
        smtp.send_message(message, to_addrs=["desk@example.com", "hidden@example.com"])  # the second as Bcc


def send_webhook(settings: Settings, secret: str, *, msg_id: str = "msg-hook-1") -> httpx.Response:
    body = json.dumps(ALERT_BODY)
    now = datetime.now(timezone.utc)
    signature = Webhook(secret).sign(msg_id, now, body)
    headers = {"webhook-id": msg_id, "webhook-timestamp": str(int(now.timestamp())), "webhook-signature": signature,
               "content-type": "application/json"}
    return httpx.post(f"http://{settings.receivers_host}:{settings.receivers_webhook_port}/hook", content=body,
                      headers=headers, timeout=10)


def test_mail_and_signed_webhooks_are_saved_verified_and_listed(tmp_path):
    settings = receiver_settings(tmp_path)
    with Receivers(settings):
        send_mail(settings, "[FIRING] ticker-negative-share ACME")
        good = send_webhook(settings, SECRET)
        forged = send_webhook(settings, "whsec_" + base64.b64encode(b"not-the-secret-at-all-0123456789").decode(),
                              msg_id="msg-forged")
        health = httpx.get(f"http://127.0.0.1:{settings.receivers_webhook_port}/healthz", timeout=5).json()
    assert (good.status_code, forged.status_code) == (204, 401)
    assert health == {"mail": 1, "webhooks": 2}

    [eml] = list(mail_dir(settings).glob("*.eml"))
    saved = email.message_from_bytes(eml.read_bytes(), policy=email.policy.default)
    assert saved["Subject"] == "[FIRING] ticker-negative-share ACME" and saved["Message-ID"] == "<msg-1@finpulse>"
    assert saved["X-Finpulse-Envelope-To"] == "desk@example.com, hidden@example.com"
    assert "60%" in saved.get_body(("plain",)).get_content()
    records = {json.loads(p.read_text())["headers"]["webhook-id"]: json.loads(p.read_text())
               for p in webhook_dir(settings).glob("*.json")}
    assert records["msg-hook-1"]["verified"] is True and json.loads(records["msg-hook-1"]["body"]) == ALERT_BODY
    assert records["msg-forged"]["verified"] is False and records["msg-forged"]["verify_error"]
    assert records["msg-hook-1"]["path"] == "/hook" and records["msg-hook-1"]["method"] == "POST"
    assert not list(settings.receivers_dir.rglob(".*.tmp"))  # written atomically

    items = read_inbox(settings)
    assert [(i.kind, i.verified) for i in items if i.kind == WEBHOOK] and len(items) == 3
    mail = next(i for i in items if i.kind == MAIL)
    assert (mail.subject, mail.recipients, mail.verified) == (
        "[FIRING] ticker-negative-share ACME", "desk@example.com, hidden@example.com", None)
    hooks = {i.verified: i for i in items if i.kind == WEBHOOK}
    assert hooks[True].subject == "[firing] ticker-negative-share ticker=ACME" and hooks[True].recipients == "/hook"
    assert set(hooks) == {True, False}


def test_without_a_secret_webhooks_are_saved_unchecked_and_a_bad_file_is_listed_not_hidden(tmp_path):
    settings = receiver_settings(tmp_path, secret=None)
    with Receivers(settings):
        assert send_webhook(settings, SECRET).status_code == 204
    (webhook_dir(settings) / "20260101T000000.000000Z-broken.json").write_text("{not json")
    items = read_inbox(settings)
    assert sorted((i.verified, i.error is not None) for i in items) == [(None, False), (None, True)]
    assert next(i for i in items if i.error).error.startswith("unreadable: JSONDecodeError")


def test_a_taken_port_is_refused_with_the_setting_to_change(tmp_path):
    from finpulse.service import ServiceError

    settings = receiver_settings(tmp_path)
    with Receivers(settings):
        with pytest.raises(ServiceError, match="FINPULSE_RECEIVERS_SMTP_PORT"):
            Receivers(settings).start()


def test_background_service_starts_answers_saves_and_stops(tmp_path):
    settings = receiver_settings(tmp_path)
    env = {**os.environ, "FINPULSE_HOME": str(tmp_path), "FINPULSE_RECEIVERS_SMTP_PORT": str(settings.receivers_smtp_port),
           "FINPULSE_RECEIVERS_WEBHOOK_PORT": str(settings.receivers_webhook_port),
           "FINPULSE_ALERTS_WEBHOOK_SECRET": SECRET}

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "stack.receivers", *args], env=env, capture_output=True,
                              text=True, timeout=60)

    started = run("start")
    try:
        assert started.returncode == 0, started.stderr
        send_mail(settings, "via the service")
        assert send_webhook(settings, SECRET).status_code == 204
        report = json.loads(run("status", "--json").stdout)
        assert report["running"] and report["smtp"]["answers"] and report["webhook"]["answers"]
        assert (report["smtp"]["saved"], report["webhook"]["saved"]) == (1, 1)
        assert report["webhook"]["verifies_signatures"] is True
        assert SECRET not in (tmp_path / "receivers" / "receivers.log").read_text()
    finally:
        stopped = run("stop")
    assert stopped.stdout.strip() == "receivers stopped"
    down = run("status", "--json")
    assert down.returncode == 3 and not json.loads(down.stdout)["smtp"]["answers"]
