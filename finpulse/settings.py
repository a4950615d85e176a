"""One settings model for every finpulse component.

Every field reads the environment variable ``FINPULSE_<FIELD>`` (case-insensitive), so an
operator configures a deployment without touching files. Secrets are ``SecretStr``: their
repr and str are masked, so they never reach a log line by accident.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

REPO_ROOT = Path(__file__).resolve().parents[1]


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

    # --- alerts (alerts/, the alert service) ---

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

    def sqlalchemy_url(self) -> SecretStr:
        """The database URL, with the embedded cluster's generated password filled in."""
        if self.database_url is not None:
            return self.database_url
        try:
            password = self.postgres_password_file.read_text().strip()
        except FileNotFoundError:
            raise RuntimeError(
                f"embedded Postgres is not initialised under {self.home}: run `finpulse stack up`"
            ) from None
        return SecretStr(f"postgresql+psycopg2://finpulse:{password}@127.0.0.1:{self.postgres_port}/finpulse")


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
