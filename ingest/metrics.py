"""Prometheus counters of the crawler, labelled by source.

Each :class:`IngestMetrics` has its own ``CollectorRegistry`` (not the global default), so a
process -- or a test -- can create many crawlers without "duplicated timeseries" errors.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter

EVENTS = ("fetched", "published", "duplicate", "near_duplicate", "failed", "dead_lettered", "dead_letter_failed")


class IngestMetrics:
    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = registry or CollectorRegistry()
        self.fetched = Counter("finpulse_ingest_fetched", "Raw items fetched from a source.", ["source"], registry=self.registry)
        self.published = Counter("finpulse_ingest_published", "Documents acked by the broker.", ["source"], registry=self.registry)
        self.duplicate = Counter("finpulse_ingest_duplicate", "Exact duplicates not republished.", ["source"], registry=self.registry)
        self.near_duplicate = Counter(
            "finpulse_ingest_near_duplicate", "Near-duplicates published with novelty=false.", ["source"], registry=self.registry
        )
        self.failed = Counter(
            "finpulse_ingest_failed", "Items or polls that failed (reason label).", ["source", "reason"], registry=self.registry
        )
        self.dead_lettered = Counter(
            "finpulse_ingest_dead_lettered", "Rejected items whose dead letter the broker acked (reason label).",
            ["source", "reason"], registry=self.registry,
        )
        # Alert on this one: a dead letter that could not be delivered is the only place ingest loses data.
        self.dead_letter_failed = Counter(
            "finpulse_ingest_dead_letter_failed", "Dead letters not delivered even after retries (reason label).",
            ["source", "reason"], registry=self.registry,
        )

    def value(self, event: str, source: str, reason: str | None = None) -> float:
        """Current value of a counter for a source (labelled by reason: one reason, or summed over reasons)."""
        total = 0.0
        for metric in getattr(self, event).collect():
            for sample in metric.samples:
                if (
                    sample.name.endswith("_total")
                    and sample.labels.get("source") == source
                    and (reason is None or sample.labels.get("reason") == reason)
                ):
                    total += sample.value
        return total
