"""Small shared Kafka helpers (kafka-python): admin client and idempotent topic creation."""

from __future__ import annotations

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
