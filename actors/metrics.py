"""Prometheus metrics of one service: jobs, upstream latency and errors, webhooks, and the
actor tree.

Each service has its own :class:`CollectorRegistry`, so several services (in
tests, say) never share counters. The actor-tree gauges are read from a
runtime snapshot at scrape time.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from runtime import ActorSnapshot

__all__ = ["ServiceMetrics"]


class ServiceMetrics:
    """The counters the actors update, and :meth:`render` for ``GET /metrics``."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.jobs_started = Counter("troupe_jobs_started", "Jobs started.", registry=self.registry)
        self.jobs_finished = Counter(
            "troupe_jobs_finished",
            "Jobs that reached a terminal status, by status.",
            ["status"],
            registry=self.registry,
        )
        self.jobs_running = Gauge(
            "troupe_jobs_running", "Jobs queued or streaming now.", registry=self.registry
        )
        self.upstream_first_token = Histogram(
            "troupe_upstream_first_token_seconds",
            "Time from the upstream request to its first delta.",
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60),
            registry=self.registry,
        )
        self.upstream_errors = Counter(
            "troupe_upstream_errors",
            "Upstream streams that failed, by error code.",
            ["code"],
            registry=self.registry,
        )
        self.followers_dropped = Counter(
            "troupe_followers_dropped",
            "Event streams whose connection ended while a write to the client waited for it "
            "to read: clients that stopped reading, cut off after http_send_timeout.",
            registry=self.registry,
        )
        self.webhook_outbox_depth = Gauge(
            "troupe_webhook_outbox_depth",
            "Webhook events waiting for delivery, as of the sender's last round.",
            registry=self.registry,
        )
        self.webhook_deliveries = Counter(
            "troupe_webhook_deliveries",
            "Webhook delivery outcomes: delivered, failed (an attempt, to be retried or "
            "not) and given_up (past webhook_max_age).",
            ["result"],
            registry=self.registry,
        )
        self.webhook_endpoint_disabled = Gauge(
            "troupe_webhook_endpoint_disabled",
            "1 while the webhook endpoint is disabled (it answered 410 Gone), else 0.",
            registry=self.registry,
        )
        self.requests_rate_limited = Counter(
            "troupe_requests_rate_limited",
            "Requests to start a job refused with 429 by the per-user rate limit.",
            registry=self.registry,
        )

    def watch_tree(self, snapshot: Callable[[], ActorSnapshot]) -> None:
        """Export mailbox depths, restarts and active streams from ``snapshot()`` at scrape time."""
        self.registry.register(_TreeCollector(snapshot))

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric."""
        return generate_latest(self.registry)


class _TreeCollector(Collector):
    def __init__(self, snapshot: Callable[[], ActorSnapshot]) -> None:
        self._snapshot = snapshot

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        depth = GaugeMetricFamily(
            "troupe_actor_mailbox_depth", "Messages waiting in an actor's mailbox.", labels=["path"]
        )
        restarts = CounterMetricFamily(
            "troupe_actor_restarts", "Restarts of an actor.", labels=["path"]
        )
        streams = GaugeMetricFamily("troupe_active_streams", "Upstream streams running now.")
        active = 0
        for node in self._snapshot().walk():
            if not node.path:
                continue
            if node.path.startswith("service/streams/"):
                active += 1
                continue  # one series per job would grow without bound
            depth.add_metric([node.path], node.mailbox_size)
            restarts.add_metric([node.path], node.restarts)
        streams.add_metric([], active)
        yield depth
        yield restarts
        yield streams
