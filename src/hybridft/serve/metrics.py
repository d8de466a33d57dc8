"""Prometheus metrics of the serving router, in a registry of their own.

A dedicated ``CollectorRegistry`` per :class:`Metrics` keeps tests and several routers in one
process apart (the global registry refuses a second registration of a name). Each process
exposes its own counts; Prometheus sums replicas at query time (``sum by (version)``), which is
how ``serve/grafana_dashboard.json`` queries them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from hybridft.serve.canary import CanaryState

# 1 ms .. 30 s: a cached or refused request at the low end, a long generation at the top.
LATENCY_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0,
)  # fmt: skip
CONFIDENCE_BUCKETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0)
TOKEN_KINDS = ("prompt", "completion")


class Metrics:
    """The router's counters, histograms and gauges (names as in the Grafana dashboard)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "hybridft_requests",
            "Requests answered, by version, routing arm, route and HTTP status.",
            ["version", "arm", "route", "status"],
            registry=r,
        )
        self.errors = Counter(
            "hybridft_errors",
            "Requests that failed on the server side (HTTP status >= 500).",
            ["version", "arm"],
            registry=r,
        )
        self.latency = Histogram(
            "hybridft_request_latency_seconds",
            "Request latency in seconds, as the router saw it.",
            ["version", "arm"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.tokens = Counter(
            "hybridft_tokens", "Tokens processed, by kind.", ["version", "kind"], registry=r
        )
        self.confidence = Histogram(
            "hybridft_confidence",
            "Answer confidence (the predicted label's probability), 0..1.",
            ["version"],
            buckets=CONFIDENCE_BUCKETS,
            registry=r,
        )
        self.weight = Gauge(
            "hybridft_canary_weight",
            "Share of traffic routed to a version (0..1).",
            ["model", "version"],
            registry=r,
        )
        self.decisions = Counter(
            "hybridft_canary_decisions",
            "Canary controller decisions (advance, hold, promote, rollback, ...).",
            ["model", "decision"],
            registry=r,
        )
        self.review_flags = Counter(
            "hybridft_review_flagged",
            "Answers sent to human review.",
            ["version"],
            registry=r,
        )
        self.upstream = Counter(
            "hybridft_router_upstream_calls",
            "How the router reached a version: channel (direct, loopback), handle (Serve), "
            "channel_failed or channel_draining (a replica shutting down; both resent through "
            "the handle).",
            ["version", "transport"],
            registry=r,
        )
        self._weighted: dict[str, set[str]] = {}

    def observe_request(
        self,
        version: str,
        arm: str,
        route: str,
        status: int,
        latency_s: float,
        prompt_tokens: int = 0,
        completion_tokens: int = 0,
        confidence: float | None = None,
    ) -> None:
        """Count one request; a status >= 500 also counts as an error of ``version``."""
        self.requests.labels(version=version, arm=arm, route=route, status=str(status)).inc()
        if status >= 500:
            self.errors.labels(version=version, arm=arm).inc()
        self.latency.labels(version=version, arm=arm).observe(latency_s)
        for kind, count in zip(TOKEN_KINDS, (prompt_tokens, completion_tokens), strict=True):
            if count:
                self.tokens.labels(version=version, kind=kind).inc(count)
        if confidence is not None:
            self.confidence.labels(version=version).observe(confidence)

    def set_weight(self, model: str, version: str, weight: float) -> None:
        if not 0.0 <= weight <= 1.0:
            raise ValueError(f"canary weight must be in [0, 1], got {weight}")
        self.weight.labels(model=model, version=version).set(weight)
        self._weighted.setdefault(model, set()).add(version)

    def set_weights(self, model: str, weights: Mapping[str, float]) -> None:
        """Set every version's weight for ``model``; versions left out lose their series."""
        for version, weight in weights.items():
            self.set_weight(model, version, weight)
        for version in self._weighted.get(model, set()) - set(weights):
            self.weight.remove(model, version)
            self._weighted[model].discard(version)

    def decision(self, model: str, decision: str) -> None:
        self.decisions.labels(model=model, decision=decision).inc()

    def upstream_call(self, version: str, transport: str) -> None:
        self.upstream.labels(version=version, transport=transport).inc()

    def flagged(self, version: str) -> None:
        self.review_flags.labels(version=version).inc()

    def exposition(self) -> tuple[bytes, str]:
        """The text exposition and its content type, for a ``/metrics`` response."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class CanaryGauges:
    """The canary's weights and decisions on the metrics, refreshed from its state on each
    scrape: decisions counted once, weights set when they change."""

    def __init__(self, metrics: Metrics, decisions_seen: int) -> None:
        self.metrics = metrics
        self.decisions_seen = decisions_seen
        self.shown: tuple[Any, ...] = ()

    def show(self, state: CanaryState) -> None:
        for decision in state.history[self.decisions_seen :]:
            self.metrics.decision(state.model, decision.decision)
        self.decisions_seen = len(state.history)
        table = state.route_table()
        shown = (table.primary, table.canary, table.weight)
        if shown != self.shown:
            weights = {table.primary: 1.0 - table.weight}
            if table.canary is not None:
                weights[table.canary] = table.weight
            self.metrics.set_weights(table.model, weights)
            self.shown = shown
