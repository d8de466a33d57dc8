"""The monitor's status page: a realistic synthetic ``StatusData`` -> HTML, its tables' numbers
recomputed from the input, its plots checked for data, the page looked at in headless Chromium."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
from browser import has_data, inline_pngs, screenshot

from hybridft.monitor.records import Alert, DriftReport, KpiSeries, StatusData
from hybridft.monitor.status_page import render_status, sorted_alerts

T0 = 1_767_225_600.0  # 2026-01-01T00:00:00Z
HOUR = 3600.0
LENGTH_BINS = [f"{a}-{a + 32}" for a in range(0, 256, 32)]  # input-length bins, tokens


class _Tables(HTMLParser):
    """Cell texts (unescaped) of every table, by the table's class; plus the page's text."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: dict[str, list[list[str]]] = {}
        self.text: list[str] = []
        self._table: str | None = None
        self._cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "table":
            self._table = dict(attrs).get("class") or ""
            self.tables[self._table] = []
        elif tag == "tr" and self._table is not None:
            self.tables[self._table].append([])
        elif tag in ("td", "th"):
            self._cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None and self._table is not None:
            self.tables[self._table][-1].append("".join(self._cell))
            self._cell = None
        elif tag == "table":
            self._table = None

    def handle_data(self, data: str) -> None:
        self.text.append(data)
        if self._cell is not None:
            self._cell.append(data)


def _parse(page: Path) -> _Tables:
    parser = _Tables()
    parser.feed(page.read_text(encoding="utf-8"))
    return parser


def _body(parsed: _Tables, cls: str) -> list[list[str]]:
    return parsed.tables[cls][1:]  # without the header row


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _kpi(
    name: str, version: str, unit: str, base: float, direction: str, rng: np.random.Generator
) -> KpiSeries:
    """24 hourly buckets, one empty, the last out of control and heading for the threshold."""
    n, sigma = 24, 0.03
    sign = -1.0 if direction == "below" else 1.0  # the bad direction
    times = [T0 + i * HOUR for i in range(n)]
    values: list[float | None] = [float(base + 0.02 * rng.standard_normal()) for _ in range(n)]
    values[5] = None  # a bucket without observations
    values[-1] = base + sign * 0.15  # out of control
    return KpiSeries(
        name=name, version=version, unit=unit, times=times, values=values,
        counts=[0 if v is None else 40 for v in values], center=base,
        lower=[base - 3 * sigma] * n, upper=[base + 3 * sigma] * n, anomalies=[n - 1],
        threshold=base + sign * 0.2, direction=direction,
        forecast_times=[times[-1] + (i + 1) * HOUR for i in range(4)],
        forecast_values=[base + sign * (0.15 + 0.03 * (i + 1)) for i in range(4)],
        forecast_crossing=times[-1] + 2 * HOUR,
    )  # fmt: skip


def _synthetic() -> StatusData:
    rng = np.random.default_rng(0)
    versions = [
        {"model": "helpdesk", "version": "3", "aliases": ["champion"], "arm": "primary",
         "weight": 0.8, "requests": 12_345, "errors": 37, "error_rate": 37 / 12_345,
         "latency_p95_s": 0.842, "success_rate": 0.913, "flagged": 21},
        {"model": "helpdesk", "version": "4", "aliases": ["canary", "candidate"], "arm": "canary",
         "weight": 0.2, "requests": 3_086, "errors": 15, "error_rate": 15 / 3_086,
         "latency_p95_s": None, "success_rate": 0.87, "flagged": 9},
    ]  # fmt: skip
    history = [
        {"at": T0 + i * HOUR, "decision": d, "weight": w, "reason": r, "who": "controller"}
        for i, (d, w, r) in enumerate(
            [("start", 0.05, "canary 4 started"), ("advance", 0.1, "checks pass"),
             ("hold", 0.1, "too few samples (12 < 30)"), ("advance", 0.2, "checks pass"),
             ("hold", 0.2, "success test undecided")]
        )
    ]  # fmt: skip
    canary = {
        "model": "helpdesk", "primary": "3", "canary": "4", "status": "running",
        "mode": "weighted", "weight": 0.2, "intervals": 5, "failed_checks": 1, "history": history,
    }  # fmt: skip
    drift = [
        DriftReport(
            monitor="intent", version="4", n_reference=2_000, n_current=640, psi=0.2871,
            log_evidence=6.2, p_value=math.exp(-6.2), alpha=0.05, drifted=True,
            detected_after=212, reference_dist={"network": 0.4, "access": 0.35, "hardware": 0.25},
            current_dist={"network": 0.2, "access": 0.3, "hardware": 0.3, "billing": 0.2},
            reason="billing tickets appeared",
        ),
        DriftReport(
            monitor="input_length", version="3", n_reference=2_000, n_current=1_900, psi=0.0123,
            log_evidence=0.4, p_value=1.0, alpha=0.05, drifted=False, detected_after=None,
            reference_dist={b: 0.125 for b in LENGTH_BINS},
            current_dist={b: 0.14 if i < 4 else 0.11 for i, b in enumerate(LENGTH_BINS)},
            reason="within tolerance",
        ),
    ]  # fmt: skip
    kpis = [
        _kpi("task_success", "4", "share", 0.9, "below", rng),
        _kpi("escalation_rate", "4", "share", 0.3, "above", rng),
        _kpi("latency_p95_s", "3", "s", 1.0, "above", rng),
    ]
    alerts = [
        Alert("kpi.task_success", "warning", "4", "task_success out of control limits", 0.75,
              0.81, T0 + 23 * HOUR),
        Alert("drift.intent", "critical", "4", "intent drift: billing tickets appeared", 0.2871,
              0.05, T0 + 20 * HOUR),
        Alert("forecast.task_success", "warning", "4", "task_success will cross 0.700 in 2 h",
              None, 0.7, T0 + 23.5 * HOUR),
    ]  # fmt: skip
    return StatusData(
        generated_at=T0 + 24 * HOUR, traffic_root="/srv/hybridft/traffic", model="helpdesk",
        versions=versions, canary=canary, drift=drift, kpis=kpis, alerts=alerts,
        review={"open": 30, "resolved": 112},
        problems=["skipped partition day=2026-01-01/version=4: not a Parquet file"],
        retrain={"fire": True, "reasons": ["intent drift on 4"], "new_labels": 112},
    )  # fmt: skip


def test_status_page_tables_plots_and_screenshot(tmp_path) -> None:
    data = _synthetic()
    page = render_status(data, tmp_path / "status.html")
    parsed = _parse(page)
    text = "".join(parsed.text)
    critical = sum(a.severity == "critical" for a in data.alerts)
    assert f"{len(data.alerts)} alerts ({critical} critical)" in text
    assert _iso(data.generated_at) in text and data.traffic_root in text

    # alerts: critical first, every message, value and threshold as given
    alerts = _body(parsed, "alerts")
    assert [r[3] for r in alerts] == [a.message for a in sorted_alerts(data.alerts)]
    assert alerts[0][0] == "critical"
    for row, a in zip(alerts, sorted_alerts(data.alerts), strict=True):
        assert row[4] == ("–" if a.value is None else f"{a.value:.3f}")
        assert row[5] == f"{a.threshold:.3f}" and row[6] == _iso(a.at)

    versions = _body(parsed, "versions")
    for row, v in zip(versions, data.versions, strict=True):
        assert row[0] == v["version"] and row[1] == " ".join("@" + a for a in v["aliases"])
        assert row[3] == f"{v['weight'] * 100:.1f}%" and row[4] == f"{v['requests']:,}"
        assert row[5] == f"{v['error_rate'] * 100:.2f}%" and row[8] == str(v["flagged"])
    assert versions[1][6] == "–"  # no latency measured

    history = _body(parsed, "canary-history")
    newest = max(data.canary["history"], key=lambda d: d["at"])
    assert len(history) == len(data.canary["history"])
    assert history[0][:4] == [_iso(newest["at"]), newest["decision"],
                              f"{newest['weight'] * 100:.1f}%", newest["reason"]]  # fmt: skip

    drift = _body(parsed, "drift")
    for row, r in zip(drift, data.drift, strict=True):
        assert row[2] == f"{r.n_reference:,} / {r.n_current:,}" and row[3] == f"{r.psi:.3f}"
        assert row[6] == ("drift" if r.drifted else "no drift") and row[7] == r.reason
    assert drift[0][5] == str(data.drift[0].detected_after) and drift[1][5] == "–"

    kpis = _body(parsed, "kpis")
    for row, s in zip(kpis, data.kpis, strict=True):
        last = [v for v in s.values if v is not None][-1]
        assert row[3] == f"{last:.3f}" and row[4] == f"{s.threshold:.3f}"
        assert row[5] == s.direction and row[7] == _iso(s.forecast_crossing)
    assert _body(parsed, "review") == [[str(data.review["open"]), str(data.review["resolved"])]]
    assert data.problems[0] in text and "fire: retrain" in text and "new_labels: 112" in text

    # one canary weight plot, one per drift report, one per KPI series: all with data
    plots = inline_pngs(page.read_text())
    assert len(plots) == 1 + len(data.drift) + len(data.kpis)
    assert all(has_data(p) for p in plots)
    assert page.stat().st_size < 600_000

    shot = screenshot(page, tmp_path / "status.png")  # kept in the test's output directory
    assert shot.shape[0] >= 2000 and has_data(shot)
    # the page runs past the window: its lower part is drawn too (plots, not blank)
    assert has_data(shot[shot.shape[0] // 2 :])


def test_empty_status_renders_without_plots(tmp_path) -> None:
    page = render_status(
        StatusData(generated_at=T0, traffic_root="t", model="m"), tmp_path / "e.html"
    )
    text = "".join(_parse(page).text)
    assert "all clear" in text and "no alerts" in text and "no canary" in text
    assert "not evaluated" in text and "Problems" not in text
    assert inline_pngs(page.read_text()) == []  # no empty plot passing as data

    # sections present but with nothing to draw: "no data", never an empty image
    series = KpiSeries(name="task_success", version="1", unit="share", times=[T0, T0 + HOUR],
                       values=[None, None], counts=[0, 0])  # fmt: skip
    report = DriftReport(monitor="intent", version="1", n_reference=0, n_current=0, psi=0.0,
                         log_evidence=0.0, p_value=1.0, alpha=0.05, drifted=False,
                         detected_after=None, reference_dist={}, current_dist={}, reason="empty")  # fmt: skip
    canary = {"model": "m", "primary": "1", "canary": None, "status": "idle", "history": []}
    sparse = StatusData(generated_at=T0, traffic_root="t", model="m", canary=canary,
                        drift=[report], kpis=[series])  # fmt: skip
    page = render_status(sparse, tmp_path / "sparse.html")
    assert inline_pngs(page.read_text()) == []
    assert page.read_text().count("no data") == 3


def test_hostile_text_is_escaped_and_problems_box_only_with_problems(tmp_path) -> None:
    hostile = "<script>alert('x')</script>"
    data = _synthetic()
    data.model = hostile
    data.alerts.append(Alert("threshold.x", "warning", hostile, hostile))
    data.problems.append(f"skipped partition day={hostile}")
    data.canary["history"][-1]["reason"] = hostile
    path = render_status(data, tmp_path / "hostile.html")
    page = path.read_text()
    assert "<script>" not in page and "&lt;script&gt;" in page
    assert hostile in [row[3] for row in _body(_parse(path), "alerts")]  # shown as text
    assert "class='box warn problems'" in page

    data.problems = []
    page = render_status(data, tmp_path / "clean.html").read_text()
    assert "problems" not in page and "Problems" not in page
    assert not list(tmp_path.glob(".*.tmp"))  # the atomic write left no temporary file
