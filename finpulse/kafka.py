"""Small shared Kafka helpers (kafka-python): admin client and idempotent topic creation."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable

from kafka import KafkaAdminClient
from kafka.admin import NewTopic
from kafka.errors import TopicAlreadyExistsError

from finpulse.settings import Settings, get_settings

log = logging.getLogger(__name__)


def admin(settings: Settings | None = None, **kwargs) -> KafkaAdminClient:
    settings = settings or get_settings()
    kwargs.setdefault("request_timeout_ms", 15_000)
    return KafkaAdminClient(bootstrap_servers=settings.bootstrap_servers, client_id="finpulse-admin", **kwargs)


def ensure_topics(
    names: Iterable[str],
    *,
    settings: Settings | None = None,
    partitions: int | None = None,
    replication: int | None = None,
) -> list[str]:
    """Create the topics that do not exist yet; return the names created. Safe to call concurrently."""
    settings = settings or get_settings()
    client = admin(settings)
    try:
        existing = set(client.list_topics())
        missing = [n for n in dict.fromkeys(names) if n not in existing]
        created = []
        for name in missing:
            topic = NewTopic(
                name=name,
                num_partitions=partitions or settings.topic_partitions,
                replication_factor=replication or settings.topic_replication,
            )
            try:
                client.create_topics([topic])
                created.append(name)
                log.info("created topic %s (%d partitions)", name, topic.num_partitions)
            except TopicAlreadyExistsError:
                pass  # another process won the race; that is fine
        return created
    finally:
        client.close()


def probe_kafka(bootstrap: list[str], *, timeout_s: float = 5.0) -> str | None:
    """Send a metadata request; return None when the cluster answers, else the reason it did not."""
    with _quiet("kafka"):
        return _describe_cluster(bootstrap, timeout_s)


@contextlib.contextmanager
def _quiet(logger_name: str):
    """A probe expects refused connections while the broker starts: keep them out of the log."""
    logger = logging.getLogger(logger_name)
    previous = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(previous)


def _describe_cluster(bootstrap: list[str], timeout_s: float) -> str | None:
    from kafka.errors import KafkaError

    try:
        client = KafkaAdminClient(
            bootstrap_servers=bootstrap,
            client_id="finpulse-probe",
            request_timeout_ms=int(timeout_s * 1000),
        )
    except (KafkaError, OSError, ValueError) as exc:
        return f"{type(exc).__name__}: {exc}"
    try:
        client.describe_cluster()
        return None
    except (KafkaError, OSError) as exc:
        return f"{type(exc).__name__}: {exc}"
    finally:
        client.close()
