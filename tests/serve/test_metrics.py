"""Prometheus metrics: the exposition parses and adds up; the Grafana dashboard queries them."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from hybridft.serve.metrics import Metrics

DASHBOARD = Path(__file__).resolve().parents[2] / "serve" / "grafana_dashboard.json"


def _samples(metrics: Metrics) -> list:
    body, _ = metrics.exposition()
    return [s for family in text_string_to_metric_families(body.decode()) for s in family.samples]


def _value(samples: list, name: str, **labels: str) -> float:
    return sum(s.value for s in samples if s.name == name and labels.items() <= s.labels.items())


@pytest.fixture
def metrics() -> Metrics:
    m = Metrics()
    for i in range(10):
        m.observe_request("3", "primary", "/v1/chat/completions", 200, 0.02 * (i + 1), 12, 3, 0.9)
    for _ in range(3):
        m.observe_request("4", "canary", "/v1/chat/completions", 200, 0.5, 10, 2, 0.55)
    m.observe_request("4", "canary", "/v1/chat/completions", 503, 31.0)
    m.observe_request("4", "forced", "/v1/completions", 401, 0.001)
    m.set_weights("m", {"3": 0.9, "4": 0.1})
    m.decision("m", "advance")
    m.decision("m", "hold")
    m.decision("m", "advance")
    m.flagged("4")
    m.flagged("4")
    return m


def test_exposition_parses_and_counts_add_up(metrics: Metrics) -> None:
    body, content_type = metrics.exposition()
    assert content_type.startswith("text/plain") and body.startswith(b"# HELP")
    s = _samples(metrics)
    assert _value(s, "hybridft_requests_total") == 15
    assert _value(s, "hybridft_requests_total", version="4", arm="canary", status="503") == 1
    assert _value(s, "hybridft_errors_total") == 1  # the 401 is the client's, not an error
    assert _value(s, "hybridft_errors_total", version="4", arm="canary") == 1
    assert _value(s, "hybridft_request_latency_seconds_count") == 15
    assert _value(s, "hybridft_request_latency_seconds_sum", version="3") == pytest.approx(1.1)
    # 31 s is past the top bucket (30 s): only +Inf holds it.
    assert (
        _value(s, "hybridft_request_latency_seconds_bucket", version="4", arm="canary", le="30.0")
        == 3
    )
    assert (
        _value(s, "hybridft_request_latency_seconds_bucket", version="4", arm="canary", le="+Inf")
        == 4
    )
    assert _value(s, "hybridft_request_latency_seconds_bucket", version="3", le="0.001") == 0
    assert _value(s, "hybridft_tokens_total", version="3", kind="prompt") == 120
    assert _value(s, "hybridft_tokens_total", version="4", kind="completion") == 6
    assert _value(s, "hybridft_confidence_count") == 13
    assert _value(s, "hybridft_confidence_sum", version="4") == pytest.approx(1.65)
    assert _value(s, "hybridft_confidence_bucket", version="4", le="0.6") == 3
    assert _value(s, "hybridft_canary_weight", model="m", version="4") == pytest.approx(0.1)
    assert _value(s, "hybridft_canary_decisions_total", decision="advance") == 2
    assert _value(s, "hybridft_review_flagged_total", version="4") == 2


def test_set_weights_drops_retired_versions(metrics: Metrics) -> None:
    metrics.set_weights("m", {"4": 1.0})
    weights = {
        s.labels["version"]: s.value
        for s in _samples(metrics)
        if s.name == "hybridft_canary_weight"
    }
    assert weights == {"4": 1.0}
    with pytest.raises(ValueError, match="weight"):
        metrics.set_weight("m", "4", 1.5)


def test_registries_are_independent() -> None:
    a, b = Metrics(), Metrics()  # no "Duplicated timeseries" from a shared global registry
    a.flagged("1")
    assert _value(_samples(b), "hybridft_review_flagged_total") == 0


def _dashboard_queries(dashboard: dict) -> list[str]:
    queries = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    for var in dashboard["templating"]["list"]:
        if var["type"] == "query":
            queries.append(
                var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
            )
    return queries


def test_dashboard_queries_only_defined_metrics_and_labels(metrics: Metrics) -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["schemaVersion"] >= 39
    assert [v["name"] for v in dashboard["templating"]["list"]][0] == "DS_PROMETHEUS"
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids)) == 8
    for panel in dashboard["panels"]:
        assert panel["datasource"]["uid"] == "${DS_PROMETHEUS}" and panel["gridPos"]["w"] > 0

    labels_by_name: dict[str, set[str]] = {}
    for s in _samples(metrics):
        labels_by_name.setdefault(s.name, set()).update(s.labels)
    used = set()
    for query in _dashboard_queries(dashboard):
        names = re.findall(r"\bhybridft_[a-z_]+", query)
        assert names, query
        for name in names:
            assert name in labels_by_name, f"{name} is not exported by metrics.py: {query}"
            used.add(name)
        for name, matchers in re.findall(r"\b(hybridft_[a-z_]+)\{([^}]*)\}", query):
            for label in re.findall(r"(\w+)\s*[=!]~?", matchers):
                assert label in labels_by_name[name], f"{name} has no label {label!r}"
    families = {re.sub(r"_(total|bucket|sum|count)$", "", n) for n in used}
    defined = {re.sub(r"_(total|bucket|sum|count|created)$", "", n) for n in labels_by_name}
    assert families == defined  # every metric has a panel
