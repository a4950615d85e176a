"""The local stack: embedded Kafka broker, Postgres cluster and Spark's Kafka jars.

Used when no external Kafka/Postgres is configured (FINPULSE_KAFKA_BOOTSTRAP,
FINPULSE_DATABASE_URL); with them set, ``up`` only checks that they answer.
"""

from __future__ import annotations

from finpulse.settings import Settings, get_settings

from stack.base import Component, ComponentStatus, StackError
from stack.kafka import EmbeddedKafka
from stack.postgres import EmbeddedPostgres
from stack.spark import SparkKafkaJars

__all__ = ["LocalStack", "StackError", "ComponentStatus", "spark_jars"]


class LocalStack:
    """All components; ``up`` is idempotent, ``down`` keeps data unless ``purge``."""

    def __init__(self, settings: Settings | None = None):
        self.settings = settings or get_settings()
        self.components: list[Component] = [
            EmbeddedPostgres(settings=self.settings),
            EmbeddedKafka(settings=self.settings),
            SparkKafkaJars(settings=self.settings),
        ]

    def up(self) -> list[ComponentStatus]:
        self.settings.home.mkdir(parents=True, exist_ok=True)
        return [component.up() for component in self.components]

    def down(self, *, purge: bool = False) -> None:
        errors = []
        for component in reversed(self.components):
            try:
                component.down(purge=purge)
            except StackError as exc:  # stop the others even if one fails
                errors.append(str(exc))
        if errors:
            raise StackError("; ".join(errors))

    def status(self) -> list[ComponentStatus]:
        return [component.status() for component in self.components]


def spark_jars(settings: Settings | None = None) -> list[str]:
    """Paths for ``spark.jars``: Spark's Kafka source at the installed pyspark version."""
    from stack.jars import spark_kafka_jars

    return [str(p) for p in spark_kafka_jars(settings or get_settings())]
