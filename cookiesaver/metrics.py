"""Prometheus metrics shared by every area, on one registry per process.

Every request that is not recorded increments L{not_recorded} with a reason,
so nothing is dropped silently. Areas define their own metrics here so the
full list is in one place (docs/metrics.md).
"""

from __future__ import annotations

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
)


class Metrics:
    """All metrics of one process. A fresh instance per test keeps tests independent."""

    def __init__(self) -> None:
        disable_created_metrics()  # the *_created series double the exposition and nobody graphs them
        self.registry = r = CollectorRegistry(auto_describe=True)
        self.requests = Counter("cookiesaver_requests", "Requests answered, by area and status class.", ["area", "status"], registry=r)
        self.not_recorded = Counter(
            "cookiesaver_not_recorded",
            "Requests that recorded nothing, by reason (bad_token, expired_token, test_send, bot, opt_out, too_large, malformed, overload, ...).",
            ["reason"],
            registry=r,
        )
        self.events_accepted = Counter("cookiesaver_events_accepted", "Documents handed to the writer, by collection.", ["collection"], registry=r)
        self.untrusted_forwarded = Counter(
            "cookiesaver_untrusted_forwarded_headers", "Forwarding headers ignored because the peer is not a trusted proxy.", registry=r
        )
        self.connections = Gauge("cookiesaver_connections", "Open client connections.", registry=r)
        self.connections_refused = Counter("cookiesaver_connections_refused", "Connections closed at once because of HTTP_MAX_CONNECTIONS.", registry=r)
        self.http_limit_hits = Counter("cookiesaver_http_limits", "Requests cut off by an HTTP limit, by limit.", ["limit"], registry=r)
        self.tls_reloads = Counter("cookiesaver_tls_reloads", "Certificate reloads, by result.", ["result"], registry=r)
        self.mongo_up = Gauge("cookiesaver_mongo_up", "1 while the last MongoDB ping succeeded.", registry=r)
        # Writer.
        self.queue_docs = Gauge("cookiesaver_writer_queue_documents", "Documents in memory (queued and in flight).", registry=r)
        self.queue_bytes = Gauge("cookiesaver_writer_queue_bytes", "Approximate bytes in memory.", registry=r)
        self.spool_docs = Gauge("cookiesaver_spool_documents", "Documents in the local spool.", registry=r)
        self.spool_bytes = Gauge("cookiesaver_spool_bytes", "Bytes in the local spool.", registry=r)
        self.spool_age = Gauge("cookiesaver_spool_oldest_age_seconds", "Age of the oldest spooled batch.", registry=r)
        self.batch_size = Histogram(
            "cookiesaver_writer_batch_documents", "Documents per batch written.", registry=r, buckets=(1, 10, 50, 100, 250, 500, 1000, 5000)
        )
        self.batch_latency = Histogram("cookiesaver_writer_batch_seconds", "Time to write one batch to MongoDB.", registry=r)
        self.retries = Counter("cookiesaver_writer_retries", "Batch writes retried, by error kind.", ["kind"], registry=r)
        self.dead_letters = Counter("cookiesaver_writer_dead_letters", "Documents MongoDB refused for good, by collection.", ["collection"], registry=r)
        self.stored = Counter("cookiesaver_writer_stored", "Documents confirmed stored, by collection.", ["collection"], registry=r)
        self.dropped = Counter("cookiesaver_writer_dropped", "Documents dropped by the writer, by reason.", ["reason"], registry=r)
