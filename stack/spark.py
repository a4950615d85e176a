"""Spark's Kafka connector jars, resolved once into the cache dir and handed to Spark as spark.jars."""

from __future__ import annotations

from stack.base import Component, ComponentStatus, StackError
from stack.jars import spark_kafka_jars


class SparkKafkaJars(Component):
    name = "spark-jars"

    def _describe(self) -> ComponentStatus:
        import pyspark

        jars = spark_kafka_jars(self.settings)
        names = ", ".join(j.name for j in jars)
        return ComponentStatus(self.name, f"pyspark {pyspark.__version__}", None, True, f"{len(jars)} jars: {names}")

    def up(self) -> ComponentStatus:
        return self._describe()

    def status(self) -> ComponentStatus:
        try:
            return self._describe()
        except StackError as exc:
            return ComponentStatus(self.name, "-", None, False, str(exc))

    def down(self, *, purge: bool = False) -> None:
        """Jars are a cache shared by every state dir; `down --purge` keeps them."""
