"""One settings model for every finpulse component.

Every field reads the environment variable ``FINPULSE_<FIELD>`` (case-insensitive), so an
operator configures a deployment without touching files. Secrets are ``SecretStr``: their
repr and str are masked, so they never reach a log line by accident.
"""

from __future__ import annotations

import functools
import os
import re
from datetime import timedelta
from pathlib import Path

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

REPO_ROOT = Path(__file__).resolve().parents[1]


class EmbeddedPostgresMissing(RuntimeError):
    """The embedded cluster was never started under this state dir, so there is no password to use."""


class Settings(BaseSettings):
    """Runtime configuration. Unset external URLs mean "use the embedded local stack"."""

    model_config = SettingsConfigDict(env_prefix="FINPULSE_", extra="ignore", validate_default=True)

    home: Path = Field(Path("./var"), description="State dir: embedded Kafka/Postgres data, logs, pid files.")
    cache_dir: Path | None = Field(None, description="Maven repository and resolved jars; default HOME/cache.")

    database_url: SecretStr | None = Field(
        None, description="SQLAlchemy URL of an external Postgres; unset = embedded cluster under HOME."
    )
    postgres_port: int = Field(54329, description="Port of the embedded Postgres.")

    kafka_bootstrap: str | None = Field(
        None, description="Comma-separated bootstrap servers of an external Kafka; unset = embedded broker."
    )
    kafka_port: int = Field(19092, description="Client port of the embedded Kafka broker.")
    kafka_controller_port: int = Field(19093, description="KRaft controller port of the embedded broker.")
    kafka_heap: str = Field("512m", description="JVM max heap of the embedded broker.")

    topic_documents: str = Field("finpulse.documents", description="Topic the crawlers publish documents to.")
    topic_dead_letters: str = Field("finpulse.dead-letters", description="Topic for rejected messages.")
    topic_partitions: int = Field(3, ge=1, description="Partitions for topics finpulse creates.")
    topic_replication: int = Field(1, ge=1, description="Replication factor for topics finpulse creates.")

    model_dir: Path | None = Field(None, description="Model to score with; unset = the shipped model.")
    log_level: str = Field("INFO", description="Python log level.")

    # --- pipeline (pipeline/, the Spark streaming job) ---
    spark_master: str = Field("local[*]", description="Spark master of `finpulse pipeline run` (ignored under spark-submit).")
    spark_ui: bool = Field(False, description="Start the Spark web UI for the pipeline job.")
    pipeline_query_name: str = Field("finpulse-documents", description="Streaming query name: names its checkpoint and its pipeline_batches rows.")
    pipeline_checkpoint_dir: Path | None = Field(None, description="Streaming checkpoints, one folder per query name; default HOME/pipeline/checkpoint.")
    pipeline_trigger: str = Field("2s", description="Micro-batch trigger interval (e.g. 2s, 500ms, 1m).")
    pipeline_max_offsets_per_trigger: int | None = Field(10_000, ge=1, description="Most Kafka records read per micro-batch; unset = no limit.")
    pipeline_shuffle_partitions: int = Field(2, ge=1, description="spark.sql.shuffle.partitions for the job (Spark's 200 costs seconds a batch).")
    pipeline_scorer_url: str | None = Field(None, description="Model server URL (`finpulse model serve`); unset = score in-process.")
    # pipeline core (pipeline/process.py, entities.py, sink.py, windows.py)
    pipeline_windows: str = Field("1m,1h,1d", description="Trend window widths, comma-separated (s, m, h, d).")
    pipeline_lateness: str = Field("1d", description="How far behind the newest event time a document may arrive and still fold into its windows in streaming; older ones wait for `pipeline backfill`.")
    pipeline_max_chunks: int = Field(4, ge=1, description="Most chunks of a long document the model reads (title and lead first).")
    pipeline_max_message_bytes: int = Field(1_048_576, ge=1, description="Bigger Kafka records are dead-lettered (reason oversize), never parsed or scored.")
    pipeline_aliases_files: str | None = Field(None, description="Extra company-alias CSVs (comma-separated paths) on top of pipeline/data/aliases.csv.")

    # --- alerts (alerts/, the alert service) ---
    alerts_rules: Path | None = Field(None, description="Alert rules YAML; unset = the shipped alerts/rules.yaml.")
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
    alerts_backoff_base_seconds: float = Field(2.0, gt=0, description="First retry delay; doubles per attempt, with jitter.")
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
        None, description="Standard Webhooks signing secret (whsec_...) of the `webhook` receiver (secret)."
    )
    alerts_external_url: str | None = Field(
        None, description="Base URL put in each alert's generatorURL; unset = empty."
    )

    # --- analysts: the read-only role, retention, the dashboard and the demo receivers ---
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

    @field_validator("home", "cache_dir")
    @classmethod
    def _absolute(cls, value: Path | None) -> Path | None:
        # Absolute, because the stack hands these paths to child processes with other cwds.
        return None if value is None else Path(os.path.abspath(os.path.expanduser(value)))

    @property
    def cache(self) -> Path:
        return self.cache_dir or self.home / "cache"

    @property
    def embedded_kafka(self) -> bool:
        return not self.kafka_bootstrap

    @property
    def embedded_postgres(self) -> bool:
        return self.database_url is None

    @property
    def bootstrap_servers(self) -> list[str]:
        if self.kafka_bootstrap:
            return [s.strip() for s in self.kafka_bootstrap.split(",") if s.strip()]
        return [f"127.0.0.1:{self.kafka_port}"]

    @property
    def postgres_password_file(self) -> Path:
        return self.home / "postgres" / "password"

    @property
    def analyst_password_file(self) -> Path:
        return self.home / "postgres" / "analyst-password"

    @property
    def receivers_dir(self) -> Path:
        return self.home / "receivers"

    @property
    def dashboard_url(self) -> str:
        host = "127.0.0.1" if self.dashboard_host in ("0.0.0.0", "::", "") else self.dashboard_host
        return f"http://{host}:{self.dashboard_port}/"

    def sqlalchemy_url(self) -> SecretStr:
        """The database URL, with the embedded cluster's generated password filled in."""
        if self.database_url is not None:
            return self.database_url
        try:
            password = self.postgres_password_file.read_text().strip()
        except FileNotFoundError:
            raise EmbeddedPostgresMissing(
                f"embedded Postgres is not initialised under {self.home}: run `finpulse stack up`"
            ) from None
        return SecretStr(f"postgresql+psycopg2://finpulse:{password}@127.0.0.1:{self.postgres_port}/finpulse")


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
    """(variable, default, description) for every setting; the README's table is made from it."""
    rows = []
    for name, field in Settings.model_fields.items():
        default = field.default
        shown = "(unset)" if default is None else str(default)
        rows.append((f"FINPULSE_{name.upper()}", shown, field.description or ""))
    return rows
