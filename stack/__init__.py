"""The local stack: embedded Kafka broker, Postgres cluster and Spark's Kafka jars.

Used when no external Kafka/Postgres is configured (FINPULSE_KAFKA_BOOTSTRAP,
FINPULSE_DATABASE_URL); with them set, ``up`` only checks that they answer.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from finpulse.service import read_pid
from finpulse.settings import Settings, get_settings

from stack.base import Component, ComponentStatus, StackError
from stack.kafka import EmbeddedKafka
from stack.postgres import EmbeddedPostgres
from stack.spark import SparkKafkaJars

__all__ = ["LocalStack", "StackError", "ComponentStatus", "spark_jars", "derived_state"]

log = logging.getLogger("stack")
# Services that read the embedded Kafka/Postgres (finpulse.service layout: HOME/<name>/<name>.pid).
_SERVICES = ("pipeline", "alerts")
# What `finpulse run` starts for the demo beside them; `stack down` stops these too (they hold ports).
DEMO_SERVICES = ("dashboard", "receivers")


def derived_state(settings: Settings, *, kafka: bool, postgres: bool) -> list[tuple[Path, str]]:
    """(path, what it is) of the state under HOME made from the data of a purged Kafka and/or Postgres.

    Kept after a purge it would lie: a checkpoint pointing at offsets of topics that no longer
    exist, a demo marker saying the sample is in a database that is empty, a seen-store that
    stops ingest from ever republishing what the broker lost.
    """
    home = settings.home
    state: list[tuple[Path, str]] = []
    if kafka or postgres:
        state += [
            # the pipeline's checkpoints are its progress through Kafka into Postgres
            (settings.pipeline_checkpoint_root, "pipeline checkpoints"),
            (home / "pipeline" / "queries", "pipeline progress files"),  # pipeline.job.state_dir
            (home / "demo", "demo replay marker"),  # `finpulse run`: HOME/demo/<sample>.replayed
        ]
    if kafka:
        state.append((home / "ingest", "ingest replay positions and seen-store"))
    return state


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

    def down(self, *, purge: bool = False) -> list[tuple[Path, str]]:
        """Stop every component; with ``purge`` also delete their data and every piece of state made
        from it (:func:`derived_state`). Returns (path, what) of everything deleted, each also logged."""
        if purge:
            self._refuse_purge_under_services()
        doomed = [(component, component.purge_paths()) for component in self.components] if purge else []
        self.stop_demo_services()
        errors, failed = [], set()
        for component in reversed(self.components):
            try:
                component.down(purge=purge)
            except StackError as exc:  # stop the others even if one fails
                errors.append(str(exc))
                failed.add(component.name)
        deleted = [(path, what) for _, paths in doomed for path, what in paths if not path.exists()]
        if purge:
            # Only what was made from data that is really gone now.
            purged = {c.name for c in self.components if not c.external and c.name not in failed}
            for path, what in derived_state(self.settings, kafka="kafka" in purged, postgres="postgres" in purged):
                if not path.exists():
                    continue
                try:
                    shutil.rmtree(path)
                    deleted.append((path, what))
                except OSError as exc:
                    errors.append(f"cannot delete {path} ({what}): {exc.strerror or exc}")
        for path, what in deleted:
            log.info("deleted %s (%s)", path, what)
        if errors:
            raise StackError("; ".join(errors))
        return deleted

    def stop_demo_services(self) -> list[str]:
        """Stop the dashboard and the demo receivers if they run (their pid files); returns the names stopped."""
        from finpulse.service import ManagedService

        stopped = []
        for name in DEMO_SERVICES:
            if ManagedService(name, [], settings=self.settings).stop(timeout=20):
                log.info("stopped the %s service", name)
                stopped.append(name)
        return stopped

    def _refuse_purge_under_services(self) -> None:
        for name in _SERVICES:
            pid = read_pid(self.settings.home / name / f"{name}.pid")
            if pid is not None:
                raise StackError(f"the {name} service is running (pid {pid}) on the data a purge deletes: "
                                 f"stop it first (`finpulse {name} stop`, or `make stop`)")

    def status(self) -> list[ComponentStatus]:
        return [component.status() for component in self.components]


def spark_jars(settings: Settings | None = None) -> list[str]:
    """Paths for ``spark.jars``: Spark's Kafka source at the installed pyspark version."""
    from stack.jars import spark_kafka_jars

    return [str(p) for p in spark_kafka_jars(settings or get_settings())]
