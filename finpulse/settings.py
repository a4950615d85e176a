"""The settings of every finpulse component: one part per component, composed into one ``Settings``.

Every field reads the environment variable ``FINPULSE_<FIELD>`` (case-insensitive), so an
operator configures a deployment without touching files. Secrets are ``SecretStr``: their
repr and str are masked, and validation errors never echo an input, so they never reach a log
line by accident. The README's configuration table is generated from the fields
(``python -m finpulse.settings --write README.md``; a test checks it is current).
"""

from __future__ import annotations

import functools
import os
import re
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal
from urllib.parse import parse_qsl, quote, urlsplit

from pydantic import Field, FilePath, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

REPO_ROOT = Path(__file__).resolve().parents[1]

KafkaSecurityProtocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
KafkaSaslMechanism = Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]
# The URL schemes FINPULSE_DATABASE_URL accepts; all of them mean psycopg2, the driver we ship.
_POSTGRES_SCHEMES = ("postgresql", "postgres", "postgresql+psycopg2")
_DRIVER = "postgresql+psycopg2"


class EmbeddedPostgresMissing(RuntimeError):
    """The embedded cluster was never started under this state dir, so there is no password to use."""


def _absolute_path(value: Path | None) -> Path | None:
    # Absolute, because the stack hands these paths to child processes with other cwds.
    return None if value is None else Path(os.path.abspath(os.path.expanduser(value)))


def _shown(text: str) -> dict[str, Any]:
    """How the README shows a default that is computed (or spelled differently) at run time."""
    return {"default_shown": text}


class _Part(BaseSettings):
    """What every part shares: ``FINPULSE_<FIELD>`` from the environment, secrets never echoed in errors."""

    model_config = SettingsConfigDict(env_prefix="FINPULSE_", extra="ignore", validate_default=True,
                                      hide_input_in_errors=True)


class StackSettings(_Part):
    """Where finpulse keeps its state and how it logs: read by every component."""

    home: Path = Field(Path("./var"), description="State dir: embedded Kafka/Postgres data, logs, pid files.",
                       json_schema_extra=_shown("./var"))
    cache_dir: Path | None = Field(None, description="Maven repository, resolved jars and the int8 (ONNX) encoders.",
                                   json_schema_extra=_shown("$FINPULSE_HOME/cache"))
    log_level: str = Field("INFO", description="Python log level.")

    @field_validator("home", "cache_dir")
    @classmethod
    def _absolute_state_paths(cls, value: Path | None) -> Path | None:
        return _absolute_path(value)

    @property
    def cache(self) -> Path:
        return self.cache_dir or self.home / "cache"


class PostgresSettings(_Part):
    """The database (finpulse.db; pipeline, alerts and the analysts read and write it)."""

    database_url: SecretStr | None = Field(
        None, description="URL of an external Postgres, `postgresql://user:password@host:5432/db` (the form "
                          "`finpulse db url` prints; `postgresql+psycopg2://` too), libpq parameters such as "
                          "`?sslmode=verify-full` passed on to psycopg2; unset = embedded cluster under HOME (secret)."
    )
    postgres_port: int = Field(54329, description="Port of the embedded Postgres.")

    @field_validator("database_url", mode="before")
    @classmethod
    def _psycopg2_url(cls, value: Any) -> Any:
        if isinstance(value, SecretStr):
            value = value.get_secret_value()
        return None if value is None else SecretStr(normalize_database_url(str(value)))

    @property
    def embedded_postgres(self) -> bool:
        return self.database_url is None


class KafkaSettings(_Part):
    """The broker, its security and the topics (finpulse.kafka; ingest publishes, the pipeline reads)."""

    kafka_bootstrap: str | None = Field(
        None, description="Comma-separated bootstrap servers of an external Kafka; unset = embedded broker."
    )
    kafka_port: int = Field(19092, description="Client port of the embedded Kafka broker.")
    kafka_controller_port: int = Field(19093, description="KRaft controller port of the embedded broker.")
    kafka_heap: str = Field("512m", description="JVM max heap of the embedded broker.")
    kafka_security_protocol: KafkaSecurityProtocol = Field(
        "PLAINTEXT", description="How every Kafka client (ingest, the pipeline, the stack) connects: `PLAINTEXT`, "
                                 "`SSL`, `SASL_PLAINTEXT` or `SASL_SSL`.")
    kafka_sasl_mechanism: KafkaSaslMechanism = Field(
        "PLAIN", description="SASL mechanism of the `SASL_*` protocols: `PLAIN`, `SCRAM-SHA-256` or `SCRAM-SHA-512`.")
    kafka_sasl_username: str | None = Field(None, description="SASL user name (the `SASL_*` protocols).")
    kafka_sasl_password: SecretStr | None = Field(None, description="SASL password (secret).")
    kafka_ssl_cafile: FilePath | None = Field(
        None, description="CA certificates (PEM) the brokers' certificates are checked against (`SSL`, `SASL_SSL`); "
                          "unset = the system's CAs.")
    kafka_ssl_certfile: FilePath | None = Field(
        None, description="Client certificate (PEM) for brokers that authenticate clients by TLS; needs "
                          "`FINPULSE_KAFKA_SSL_KEYFILE`.")
    kafka_ssl_keyfile: FilePath | None = Field(
        None, description="Private key (PEM, PKCS#8 for Spark) of `FINPULSE_KAFKA_SSL_CERTFILE`.")
    kafka_ssl_key_password: SecretStr | None = Field(
        None, description="Password of an encrypted `FINPULSE_KAFKA_SSL_KEYFILE` (secret).")
    kafka_ssl_check_hostname: bool = Field(
        True, description="Check that a broker's certificate names the host connected to.")
    kafka_sasl_port: int | None = Field(
        None, description="Port of a `SASL_PLAINTEXT` listener (PLAIN, SCRAM-SHA-256, SCRAM-SHA-512) on the embedded "
                          "broker, for the user `FINPULSE_KAFKA_SASL_USERNAME`; with "
                          "`FINPULSE_KAFKA_SECURITY_PROTOCOL=SASL_PLAINTEXT` every client uses it; unset = none.")
    topic_documents: str = Field("finpulse.documents", description="Topic the crawlers publish documents to.")
    topic_dead_letters: str = Field("finpulse.dead-letters", description="Topic for rejected messages.")
    topic_partitions: int = Field(3, ge=1, description="Partitions for topics finpulse creates.")
    topic_replication: int = Field(1, ge=1, description="Replication factor for topics finpulse creates.")

    @field_validator("kafka_ssl_cafile", "kafka_ssl_certfile", "kafka_ssl_keyfile")
    @classmethod
    def _absolute_tls_files(cls, value: Path | None) -> Path | None:
        return _absolute_path(value)

    @field_validator("kafka_security_protocol", "kafka_sasl_mechanism", mode="before")
    @classmethod
    def _upper(cls, value: Any) -> Any:
        return value.strip().upper() if isinstance(value, str) else value

    @model_validator(mode="after")
    def _kafka_security_is_complete(self) -> KafkaSettings:
        problems = kafka_security_problems(self)
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @property
    def embedded_kafka(self) -> bool:
        return not self.kafka_bootstrap

    @property
    def bootstrap_servers(self) -> list[str]:
        if self.kafka_bootstrap:
            return [s.strip() for s in self.kafka_bootstrap.split(",") if s.strip()]
        if self.kafka_security_protocol == "SASL_PLAINTEXT" and self.kafka_sasl_port:
            return [f"127.0.0.1:{self.kafka_sasl_port}"]
        return [f"127.0.0.1:{self.kafka_port}"]


class ModelSettings(_Part):
    """Which model scores and how it computes (models/; the pipeline and the model server load it)."""

    model_dir: Path | None = Field(None, description="Model to score with; unset = the shipped model.")
    model_precision: Literal["auto", "fp32", "bf16", "int8"] = Field(
        "auto", description="How the model computes: auto = bf16 on a GPU or a CPU with native bf16 (AVX512-BF16/AMX), "
        "int8 on other CPUs (the encoder in ONNX Runtime dynamic int8, exported once into the cache folder); fp32, bf16 or int8 (CPU only) to choose.")


class PipelineSettings(_Part):
    """The streaming job (pipeline/)."""

    spark_master: str = Field("local[*]", description="Spark master of `finpulse pipeline run` (ignored under `spark-submit`).")
    spark_ui: bool = Field(False, description="Start the Spark web UI for the pipeline job.")
    pipeline_query_name: str = Field("finpulse-documents", description="Streaming query name: names its checkpoint and its `pipeline_batches` rows.")
    pipeline_checkpoint_dir: Path | None = Field(None, description="Streaming checkpoints, one folder per query name.",
                                                 json_schema_extra=_shown("$FINPULSE_HOME/pipeline/checkpoint"))
    pipeline_trigger: str = Field("2s", description="Micro-batch trigger interval (`2s`, `500ms`, `1m`).")
    pipeline_max_offsets_per_trigger: int | None = Field(
        2_000, ge=1, description="Most Kafka records read per micro-batch (a backlog commits as it goes, about every 10 s on "
        "2 cores); empty = no limit.")
    pipeline_shuffle_partitions: int = Field(2, ge=1, description="`spark.sql.shuffle.partitions` of the job (Spark's 200 costs seconds a batch).")
    pipeline_scorer_url: str | None = Field(None, description="Model server URL (`finpulse model serve`); unset = score in-process.")
    pipeline_windows: str = Field("1m,1h,1d", description="Trend window widths, comma-separated (`s`, `m`, `h`, `d`).")
    pipeline_lateness: str = Field("1d", description="How far behind the newest event time a document may arrive and still fold into its windows in streaming; older ones are stored, scored and counted late until `pipeline backfill`.")
    pipeline_storage_outage: str = Field("5m", description="How long a micro-batch waits for an unreachable Postgres (retrying with backoff, its scored rows kept) before the query fails and restarts.")
    pipeline_max_chunks: int = Field(4, ge=1, description="Most chunks of a long document the model reads (title and lead first).")
    pipeline_max_message_bytes: int = Field(1_048_576, ge=1, description="Bigger Kafka records are dead-lettered (reason `oversize`), never parsed or scored.")
    pipeline_aliases_files: str | None = Field(None, description="Extra company-alias CSVs (comma-separated paths) on top of `pipeline/data/aliases.csv`.")
    pipeline_metrics_port: int = Field(
        9110, ge=0, le=65535, description="Port of the streaming job's Prometheus /metrics (`pipeline run`); 0 = off."
    )
    pipeline_metrics_host: str = Field("127.0.0.1", description="Address the streaming job's /metrics listens on.")

    @field_validator("pipeline_max_offsets_per_trigger", mode="before")
    @classmethod
    def _empty_is_no_limit(cls, value: Any) -> Any:
        return None if isinstance(value, str) and not value.strip() else value


class AlertSettings(_Part):
    """The alert service (alerts/): evaluation, delivery, its metrics."""

    alerts_rules: Path | None = Field(None, description="Alert rules YAML; unset = the shipped `alerts/rules.yaml`.")
    alerts_interval_seconds: float = Field(60.0, gt=0, description="Seconds between two alert evaluations.")
    alerts_settle_seconds: float = Field(
        120.0, ge=0, description="Seconds after a window ends before it is evaluated (late rows land first)."
    )
    alerts_catchup_windows: int = Field(
        24, ge=1, description="Most closed windows per rule evaluated in one run (at first start and after downtime)."
    )
    alerts_model_version: str | None = Field(
        None, description="Model version whose windows are evaluated; unset = that of the newest window."
    )
    alerts_delivery_interval_seconds: float = Field(2.0, gt=0, description="Seconds between two outbox scans.")
    alerts_delivery_workers: int = Field(8, ge=1, description="Concurrent deliveries (at most 2 per receiver).")
    alerts_delivery_timeout_seconds: float = Field(
        10.0, gt=0, description="Timeout of one SMTP or webhook delivery attempt."
    )
    alerts_delivery_max_age_seconds: float = Field(
        86400.0, gt=0, description="A notification still undelivered after this long is marked dead (and kept)."
    )
    alerts_backoff_base_seconds: float = Field(
        2.0, gt=0, description="Ceiling of the first retry delay; doubles per attempt; the delay is between half "
                               "the ceiling and the ceiling (equal jitter)."
    )
    alerts_backoff_max_seconds: float = Field(300.0, gt=0, description="Longest retry delay.")
    alerts_smtp_host: str | None = Field(None, description="SMTP server for the `email` receiver; unset = no email.")
    alerts_smtp_port: int = Field(587, description="SMTP port.")
    alerts_smtp_starttls: bool = Field(True, description="Upgrade the SMTP connection with STARTTLS.")
    alerts_smtp_user: str | None = Field(None, description="SMTP login; unset = no authentication.")
    alerts_smtp_password: SecretStr | None = Field(None, description="SMTP password (secret).")
    alerts_email_from: str = Field("finpulse@localhost", description="From address of alert emails.")
    alerts_email_to: str | None = Field(
        None, description="Comma-separated recipients of the `email` receiver; unset = no email."
    )
    alerts_webhook_url: str | None = Field(None, description="URL of the `webhook` receiver; unset = no webhook.")
    alerts_webhook_secret: SecretStr | None = Field(
        None, description="Standard Webhooks signing secret (`whsec_...`) of the `webhook` receiver (secret)."
    )
    alerts_webhook_allow_unsigned: bool = Field(
        False, description="Let the `webhook` receiver send unsigned while FINPULSE_ALERTS_WEBHOOK_SECRET is unset "
                           "(otherwise the service refuses to start)."
    )
    alerts_metrics_port: int = Field(
        9109, ge=0, le=65535, description="Port of the alert service's Prometheus /metrics; 0 = off."
    )
    alerts_metrics_host: str = Field("127.0.0.1", description="Address the alert service's /metrics listens on.")
    alerts_external_url: str | None = Field(
        None, description="Base URL put in each alert's `generatorURL`; unset = empty."
    )


class AnalystSettings(_Part):
    """The analysts' side: their read-only role, retention, the dashboard, the demo receivers."""

    analyst_database_url: SecretStr | None = Field(
        None, description="SQLAlchemy URL of the finpulse_analyst role on an external Postgres (the dashboard and "
                          "report read through it); unset = the embedded cluster's generated analyst password."
    )
    retention_document_text: str = Field(
        "30d", description="Document text is emptied this long after publication (`finpulse db prune`); "
                           "the row, scores and entities stay. `forever` = never."
    )
    retention_minute_windows: str = Field("48h", description="Windows narrower than 1h are deleted this long after they start; `forever` = kept.")
    retention_hour_windows: str = Field("90d", description="Windows of 1h up to 1d (exclusive) are deleted this long after they start; `forever` = kept.")
    retention_day_windows: str = Field("forever", description="Windows of 1d and wider are deleted this long after they start; `forever` = kept.")
    retention_batch_size: int = Field(5000, ge=1, description="Rows one prune statement changes (one short transaction each).")
    dashboard_host: str = Field("127.0.0.1", description="Address `finpulse dashboard` listens on.")
    dashboard_port: int = Field(8050, description="Port of `finpulse dashboard`.")
    dashboard_refresh_seconds: float = Field(30.0, gt=0, description="Seconds between two live refreshes of a dashboard page.")
    receivers_host: str = Field("127.0.0.1", description="Address the demo receivers (`python -m stack.receivers`) listen on.")
    receivers_smtp_port: int = Field(2525, description="Port of the demo SMTP mail catcher.")
    receivers_webhook_port: int = Field(9099, description="Port of the demo webhook receiver.")

    @field_validator("retention_document_text", "retention_minute_windows", "retention_hour_windows",
                     "retention_day_windows")
    @classmethod
    def _retention(cls, value: str) -> str:
        retention_age(value)  # refuses a bad value at start, naming it
        return value

    @property
    def dashboard_url(self) -> str:
        host = "127.0.0.1" if self.dashboard_host in ("0.0.0.0", "::", "") else self.dashboard_host
        return f"http://{host}:{self.dashboard_port}/"


class Settings(AnalystSettings, AlertSettings, PipelineSettings, ModelSettings, KafkaSettings, PostgresSettings,
               StackSettings):
    """Runtime configuration: every component's part in one model (fields in the order of the parts, stack first).
    Unset external URLs mean "use the embedded local stack". A component reads its own part's fields; what
    needs several parts (paths under ``home``, the database URL with the embedded password) lives here."""

    @property
    def postgres_password_file(self) -> Path:
        return self.home / "postgres" / "password"

    def pipeline_progress_file(self, query_name: str | None = None) -> Path:
        """The progress file the streaming job rewrites after every batch (``finpulse pipeline status`` and
        ``finpulse run`` read it): state, pid, last batch, committed offsets, totals."""
        return self.home / "pipeline" / "queries" / (query_name or self.pipeline_query_name) / "progress.json"

    @property
    def pipeline_checkpoint_root(self) -> Path:
        """Where the streaming job keeps its checkpoints (one folder per query name)."""
        root = self.pipeline_checkpoint_dir or self.home / "pipeline" / "checkpoint"
        return Path(os.path.abspath(os.path.expanduser(root)))

    @property
    def analyst_password_file(self) -> Path:
        return self.home / "postgres" / "analyst-password"

    @property
    def receivers_dir(self) -> Path:
        return self.home / "receivers"

    def sqlalchemy_url(self) -> SecretStr:
        """The database URL, with the embedded cluster's generated password filled in."""
        if self.database_url is not None:
            # Normalised again: a model_copy(update=...) skips the validators.
            return SecretStr(normalize_database_url(self.database_url.get_secret_value()))
        try:
            password = self.postgres_password_file.read_text().strip()
        except FileNotFoundError:
            raise EmbeddedPostgresMissing(
                f"embedded Postgres is not initialised under {self.home}: run `finpulse stack up`"
            ) from None
        return SecretStr(f"{_DRIVER}://finpulse:{password}@127.0.0.1:{self.postgres_port}/finpulse")


def normalize_database_url(url: str) -> str:
    """``url`` with the scheme SQLAlchemy needs for psycopg2; ValueError (without the URL) for any other driver.

    SQLAlchemy 2.1 maps a bare ``postgresql://`` (libpq's form, what ``finpulse db url``
    prints) to psycopg 3, which finpulse does not install; ``postgres://`` it does not know.
    """
    scheme, sep, rest = url.strip().partition("://")
    if not sep:
        raise ValueError("not a URL: write postgresql://user:password@host:5432/database")
    if scheme.lower() not in _POSTGRES_SCHEMES:
        raise ValueError(f"scheme {scheme!r} is not supported: write postgresql://user:password@host:5432/database "
                         f"(or {_DRIVER}://...; finpulse talks to Postgres through psycopg2)")
    return f"{_DRIVER}://{rest}"


def kafka_security_problems(s: KafkaSettings) -> list[str]:
    """What is missing or contradictory in the Kafka security settings (empty when they are usable)."""
    problems = []
    protocol = s.kafka_security_protocol
    credentials = s.kafka_sasl_username is not None or s.kafka_sasl_password is not None
    complete = s.kafka_sasl_username is not None and s.kafka_sasl_password is not None
    if protocol.startswith("SASL_") and not complete:
        problems.append(f"FINPULSE_KAFKA_SECURITY_PROTOCOL={protocol} needs FINPULSE_KAFKA_SASL_USERNAME and "
                        "FINPULSE_KAFKA_SASL_PASSWORD")
    if s.kafka_sasl_port is not None and not complete:
        problems.append("FINPULSE_KAFKA_SASL_PORT (the embedded broker's SASL listener) needs "
                        "FINPULSE_KAFKA_SASL_USERNAME and FINPULSE_KAFKA_SASL_PASSWORD")
    if s.kafka_sasl_port is not None and s.kafka_sasl_username and not re.fullmatch(r"[A-Za-z0-9._-]+",
                                                                                  s.kafka_sasl_username):
        problems.append("FINPULSE_KAFKA_SASL_USERNAME: the embedded broker's SASL listener takes letters, digits, "
                        "'.', '_' and '-' only")
    if credentials and not protocol.startswith("SASL_") and s.kafka_sasl_port is None:
        problems.append(f"FINPULSE_KAFKA_SASL_USERNAME/PASSWORD are set but FINPULSE_KAFKA_SECURITY_PROTOCOL="
                        f"{protocol} sends no credentials: set it to SASL_SSL or SASL_PLAINTEXT")
    tls_files = [name for name, value in (("FINPULSE_KAFKA_SSL_CAFILE", s.kafka_ssl_cafile),
                                          ("FINPULSE_KAFKA_SSL_CERTFILE", s.kafka_ssl_certfile),
                                          ("FINPULSE_KAFKA_SSL_KEYFILE", s.kafka_ssl_keyfile)) if value is not None]
    if tls_files and protocol not in ("SSL", "SASL_SSL"):
        problems.append(f"{', '.join(tls_files)} set but FINPULSE_KAFKA_SECURITY_PROTOCOL={protocol} does not "
                        "use TLS: set it to SSL or SASL_SSL")
    if (s.kafka_ssl_certfile is None) != (s.kafka_ssl_keyfile is None):
        problems.append("FINPULSE_KAFKA_SSL_CERTFILE and FINPULSE_KAFKA_SSL_KEYFILE go together")
    if s.embedded_kafka and protocol in ("SSL", "SASL_SSL"):
        problems.append(f"FINPULSE_KAFKA_SECURITY_PROTOCOL={protocol}: the embedded broker has no TLS listener; "
                        "set FINPULSE_KAFKA_BOOTSTRAP to the external brokers")
    if s.embedded_kafka and protocol == "SASL_PLAINTEXT" and s.kafka_sasl_port is None:
        problems.append("FINPULSE_KAFKA_SECURITY_PROTOCOL=SASL_PLAINTEXT with the embedded broker needs "
                        "FINPULSE_KAFKA_SASL_PORT (its SASL listener), or set FINPULSE_KAFKA_BOOTSTRAP")
    return problems


def settings_error_line(exc: ValidationError) -> str:
    """One line naming each bad variable and what is wrong with it; never the value (it may be a secret)."""
    parts = []
    for error in exc.errors(include_url=False, include_input=False):
        message = error["msg"].removeprefix("Value error, ")
        parts.append(f"FINPULSE_{str(error['loc'][0]).upper()}: {message}" if error["loc"] else message)
    return "invalid settings: " + "; ".join(parts)


def redact_url(url: str) -> str:
    """``url`` with everything but its scheme, host and port masked: user info, path, query values, fragment.

    Webhook URLs carry their credential in any of those (``hooks.slack.com/services/T../B../X..``,
    ``https://user:pw@host``, ``?token=...``, ``?sig=...``).
    """
    parts = urlsplit(url.strip())
    if not parts.scheme or not parts.netloc:
        return "***"  # not a URL we can take apart: show nothing of it
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    try:
        port = f":{parts.port}" if parts.port is not None else ""
    except ValueError:
        port = ""
    out = f"{parts.scheme}://{'***@' if '@' in parts.netloc else ''}{host}{port}"
    if parts.path not in ("", "/"):
        out += "/***"
    if parts.query:
        out += "?" + "&".join(f"{quote(key, safe='')}=***" for key, _ in parse_qsl(parts.query, keep_blank_values=True))
    if parts.fragment:
        out += "#***"
    return out


_AGE = re.compile(r"^\s*(\d+)\s*(m|h|d)\s*$")
_AGE_UNIT = {"m": 60, "h": 3600, "d": 86400}
FOREVER = "forever"


def retention_age(value: str) -> timedelta | None:
    """A retention setting as a timedelta (``30d``, ``48h``, ``90m``); None for ``forever``."""
    if value.strip().lower() == FOREVER:
        return None
    match = _AGE.match(value)
    if not match or int(match.group(1)) == 0:
        raise ValueError(f"{value!r} is not a retention age: write e.g. 30d, 48h, 90m or {FOREVER}")
    return timedelta(seconds=int(match.group(1)) * _AGE_UNIT[match.group(2)])


@functools.cache
def get_settings() -> Settings:
    """Process-wide settings, read once from the environment."""
    return Settings()


def env_table() -> list[tuple[str, str, str]]:
    """(variable, default as the README shows it, description) for every setting."""
    rows = []
    for name, field in Settings.model_fields.items():
        extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
        default = field.default
        if "default_shown" in extra:
            shown = f"`{extra['default_shown']}`"
        elif default is None:
            shown = "(unset)"
        else:
            shown = f"`{int(default) if isinstance(default, float) and default.is_integer() else default}`"
        rows.append((f"FINPULSE_{name.upper()}", shown, field.description or ""))
    return rows


README_TABLE_START = "<!-- settings table: generated from finpulse/settings.py by `python -m finpulse.settings --write README.md` -->"
README_TABLE_END = "<!-- end of settings table -->"


def readme_table() -> str:
    """The README's configuration table, between its two marker comments."""
    lines = [README_TABLE_START, "| variable | default | meaning |", "|---|---|---|"]
    lines += [f"| `{var}` | {shown} | {description} |" for var, shown, description in env_table()]
    lines.append(README_TABLE_END)
    return "\n".join(lines)


def readme_with_table(readme: str) -> str:
    """``readme`` with the text between the markers replaced by :func:`readme_table`; ValueError without markers."""
    pattern = re.compile(re.escape(README_TABLE_START) + r".*?" + re.escape(README_TABLE_END), re.S)
    if not pattern.search(readme):
        raise ValueError(f"no settings table markers ({README_TABLE_START!r} ... {README_TABLE_END!r})")
    return pattern.sub(lambda _: readme_table(), readme, count=1)


def _main(argv: list[str]) -> int:
    """``python -m finpulse.settings``: print the table; ``--write README.md``: put it into that file."""
    if len(argv) == 2 and argv[0] == "--write":
        path = Path(argv[1])
        text = path.read_text(encoding="utf-8")
        updated = readme_with_table(text)
        if updated != text:
            path.write_text(updated, encoding="utf-8")
            print(f"{path}: settings table updated")
        else:
            print(f"{path}: settings table already current")
        return 0
    if argv:
        print("usage: python -m finpulse.settings [--write README.md]", file=sys.stderr)
        return 2
    print(readme_table())
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
