"""Local receivers for the demo: an SMTP mail catcher and an HTTP webhook receiver.

- SMTP (aiosmtpd) on FINPULSE_RECEIVERS_HOST:FINPULSE_RECEIVERS_SMTP_PORT (127.0.0.1:2525): every
  message is saved as ``.eml`` under ``$FINPULSE_HOME/receivers/mail/`` before the server answers
  250; a message it cannot save gets 451, so the sender keeps it and retries. No TLS, no login:
  point the alert service at it with FINPULSE_ALERTS_SMTP_HOST=127.0.0.1,
  FINPULSE_ALERTS_SMTP_PORT=2525, FINPULSE_ALERTS_SMTP_STARTTLS=false.
- HTTP on FINPULSE_RECEIVERS_HOST:FINPULSE_RECEIVERS_WEBHOOK_PORT (127.0.0.1:9099): every POST or
  PUT, any path, is saved with its headers under ``$FINPULSE_HOME/receivers/webhooks/``, its Standard
  Webhooks signature checked with FINPULSE_ALERTS_WEBHOOK_SECRET (recorded ``verified`` true or
  false; null when no secret is set). Answers 204 when verified (or unsigned without a secret), 401
  when the signature is wrong or missing, 413 over 10 MiB. ``GET /healthz`` says how much was saved.

The file layout is finpulse.inbox's (the dashboard's Inbox page reads it). Run it in the foreground
with ``python -m stack.receivers``, or as a background service with ``start`` / ``stop`` /
``status [--json]`` (pid and log under ``$FINPULSE_HOME/receivers/``).
"""

from __future__ import annotations

import json
import logging
import signal
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import click

from finpulse.inbox import mail_dir, save_mail, save_webhook, webhook_dir
from finpulse.service import ManagedService, ServiceError, ServiceStatus, port_answers, python_module_argv
from finpulse.settings import Settings, get_settings

log = logging.getLogger("stack.receivers")
NAME = "receivers"
MAX_BODY = 10 * 1024 * 1024


# --- SMTP -----------------------------------------------------------------------------------------

class MailCatcher:
    """aiosmtpd handler: the message is on disk before the client hears 250."""

    def __init__(self, settings: Settings):
        self.settings = settings

    async def handle_DATA(self, server, session, envelope) -> str:  # noqa: N802 - aiosmtpd's hook name
        raw = envelope.original_content or envelope.content
        if isinstance(raw, str):
            raw = raw.encode("utf-8", errors="surrogateescape")
        try:
            path = save_mail(self.settings, raw, mail_from=envelope.mail_from or "",
                             rcpt_tos=list(envelope.rcpt_tos))
        except OSError as exc:
            log.error("mail from %s not saved: %s", envelope.mail_from, exc)
            return "451 Requested action aborted: local error in processing"
        log.info("mail from %s to %s saved as %s", envelope.mail_from, ", ".join(envelope.rcpt_tos), path.name)
        return "250 Message accepted for delivery"


def smtp_controller(settings: Settings):
    from aiosmtpd.controller import Controller

    return Controller(MailCatcher(settings), hostname=settings.receivers_host, port=settings.receivers_smtp_port,
                      ready_timeout=10)


# --- webhooks -------------------------------------------------------------------------------------

def verify_signature(secret: str | None, body: bytes, headers: dict[str, str]) -> tuple[bool | None, str | None]:
    """(verified, why not): the Standard Webhooks check with the reference library; (None, None) without a secret."""
    if not secret:
        return None, None
    from standardwebhooks import Webhook, WebhookVerificationError

    lowered = {k.lower(): v for k, v in headers.items()}
    try:
        Webhook(secret).verify(body, lowered, json_parse=False)
    except WebhookVerificationError as exc:
        return False, str(exc) or type(exc).__name__
    except Exception as exc:  # noqa: BLE001 - a malformed secret or header is a failed check, recorded
        return False, f"{type(exc).__name__}: {exc}"
    return True, None


def _webhook_handler(settings: Settings) -> type[BaseHTTPRequestHandler]:
    secret = settings.alerts_webhook_secret.get_secret_value() if settings.alerts_webhook_secret else None

    class Handler(BaseHTTPRequestHandler):
        server_version = "finpulse-receivers"

        def _reply(self, code: int, body: dict | None = None) -> None:
            payload = json.dumps(body).encode() if body is not None else b""
            self.send_response(code)
            if payload:
                self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            if self.path.split("?")[0] != "/healthz":
                self._reply(404, {"error": "POST webhooks to any path; GET /healthz"})
                return
            self._reply(200, {"mail": _count(mail_dir(settings), ".eml"),
                              "webhooks": _count(webhook_dir(settings), ".json")})

        def do_POST(self) -> None:  # noqa: N802
            try:
                length = int(self.headers.get("Content-Length", "0"))
            except ValueError:
                self._reply(400, {"error": "bad Content-Length"})
                return
            if length > MAX_BODY:
                self._reply(413, {"error": f"body over {MAX_BODY} bytes"})
                return
            body = self.rfile.read(length)
            headers = dict(self.headers.items())
            verified, why = verify_signature(secret, body, headers)
            try:
                path = save_webhook(settings, method=self.command, path=self.path, headers=headers, body=body,
                                    verified=verified, verify_error=why)
            except OSError as exc:
                log.error("webhook to %s not saved: %s", self.path, exc)
                self._reply(500, {"error": "not saved"})
                return
            log.info("webhook %s %s (id %s) saved as %s, signature %s", self.command, self.path,
                     headers.get("webhook-id", "-"), path.name,
                     {True: "verified", False: f"NOT verified ({why})", None: "not checked (no secret)"}[verified])
            if verified is False:
                self._reply(401, {"error": "signature not verified", "saved": path.name})
            else:
                self._reply(204)

        do_PUT = do_POST

        def log_message(self, fmt: str, *args: Any) -> None:  # the save line above says it all
            log.debug(fmt, *args)

    return Handler


def _count(folder, suffix: str) -> int:
    return sum(1 for _ in folder.glob(f"*{suffix}")) if folder.is_dir() else 0


def webhook_server(settings: Settings) -> ThreadingHTTPServer:
    server = ThreadingHTTPServer((settings.receivers_host, settings.receivers_webhook_port), _webhook_handler(settings))
    server.daemon_threads = True
    return server


# --- running them -----------------------------------------------------------------------------------

class Receivers:
    """Both receivers in this process (threads): ``start()``, ``stop()``; also a context manager."""

    def __init__(self, settings: Settings | None = None):
        self.settings = settings or get_settings()
        self._smtp = None
        self._http: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> Receivers:
        for port, setting in ((self.settings.receivers_smtp_port, "FINPULSE_RECEIVERS_SMTP_PORT"),
                              (self.settings.receivers_webhook_port, "FINPULSE_RECEIVERS_WEBHOOK_PORT")):
            if port_answers(self.settings.receivers_host, port):
                raise ServiceError(f"port {port} on {self.settings.receivers_host} is taken: stop what listens "
                                   f"there or choose another with {setting}")
        mail_dir(self.settings).mkdir(parents=True, exist_ok=True)
        webhook_dir(self.settings).mkdir(parents=True, exist_ok=True)
        self._http = webhook_server(self.settings)
        self._thread = threading.Thread(target=self._http.serve_forever, name="webhooks", daemon=True)
        self._thread.start()
        self._smtp = smtp_controller(self.settings)
        self._smtp.start()
        return self

    def stop(self) -> None:
        if self._smtp is not None:
            self._smtp.stop()
            self._smtp = None
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None

    def __enter__(self) -> Receivers:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()



def service(settings: Settings | None = None) -> ManagedService:
    return ManagedService(NAME, python_module_argv("stack.receivers", "serve"), settings=settings)


def start(settings: Settings | None = None, *, timeout: float = 30.0) -> ServiceStatus:
    """Start both receivers as a background service (idempotent); waits until both ports answer."""
    settings = settings or get_settings()
    return service(settings).start(
        ready=lambda: port_answers(settings.receivers_host, settings.receivers_smtp_port)
        and port_answers(settings.receivers_host, settings.receivers_webhook_port), timeout=timeout)


def stop(settings: Settings | None = None) -> bool:
    """Stop the background receivers; True if they were running."""
    return service(settings).stop(timeout=15)


def status(settings: Settings | None = None) -> dict[str, Any]:
    """Whether the service runs, each receiver answers, and how much each has saved."""
    settings = settings or get_settings()
    current = service(settings).status()
    host = settings.receivers_host
    return {
        "running": current.running, "pid": current.pid, "log": str(current.log),
        "smtp": {"address": f"{host}:{settings.receivers_smtp_port}",
                 "answers": port_answers(host, settings.receivers_smtp_port),
                 "saved": _count(mail_dir(settings), ".eml"), "dir": str(mail_dir(settings))},
        "webhook": {"address": f"http://{host}:{settings.receivers_webhook_port}/",
                    "answers": port_answers(host, settings.receivers_webhook_port),
                    "saved": _count(webhook_dir(settings), ".json"), "dir": str(webhook_dir(settings)),
                    "verifies_signatures": settings.alerts_webhook_secret is not None},
    }


def serve(settings: Settings | None = None) -> None:
    """Both receivers in the foreground until SIGTERM or Ctrl-C."""
    settings = settings or get_settings()
    stopped = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopped.set())
    with Receivers(settings):
        log.info("mail catcher on %s:%s, saving to %s", settings.receivers_host, settings.receivers_smtp_port,
                 mail_dir(settings))
        log.info("webhook receiver on http://%s:%s/, saving to %s (signatures %s)", settings.receivers_host,
                 settings.receivers_webhook_port, webhook_dir(settings),
                 "checked" if settings.alerts_webhook_secret else "not checked: FINPULSE_ALERTS_WEBHOOK_SECRET unset")
        try:
            stopped.wait()
        except KeyboardInterrupt:
            pass
    log.info("receivers stopped")


# --- python -m stack.receivers ------------------------------------------------------------------------

@click.group(invoke_without_command=True)
@click.pass_context
def cli(ctx: click.Context) -> None:
    """The demo's SMTP mail catcher and webhook receiver (default: serve in the foreground)."""
    from finpulse.cli import setup_logging

    setup_logging()
    if ctx.invoked_subcommand is None:
        ctx.invoke(serve_command)


@cli.command("serve")
def serve_command() -> None:
    """Run both receivers in the foreground until SIGTERM or Ctrl-C."""
    try:
        serve()
    except ServiceError as exc:
        raise click.ClickException(str(exc)) from None


@cli.command("start")
def start_command() -> None:
    """Start them as a background service (pid and log under $FINPULSE_HOME/receivers/)."""
    try:
        click.echo(start().line())
    except ServiceError as exc:
        raise click.ClickException(str(exc)) from None


@cli.command("stop")
def stop_command() -> None:
    click.echo("receivers stopped" if stop() else "receivers were not running")


@cli.command("status")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def status_command(as_json: bool) -> None:
    """Whether both receivers answer (exit 0) or not (exit 3), and what they saved."""
    report = status()
    if as_json:
        click.echo(json.dumps(report))
    else:
        click.echo(f"receivers    {'running (pid ' + str(report['pid']) + ')' if report['running'] else 'stopped'}")
        for name in ("smtp", "webhook"):
            r = report[name]
            click.echo(f"  {name:<8} {r['address']:<28} {'answers' if r['answers'] else 'DOWN':<8} "
                       f"{r['saved']} saved in {r['dir']}")
    sys.exit(0 if report["smtp"]["answers"] and report["webhook"]["answers"] else 3)


if __name__ == "__main__":
    cli(prog_name="python -m stack.receivers")
