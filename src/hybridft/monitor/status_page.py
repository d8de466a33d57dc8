"""The monitor's status page: one self-contained HTML file an on-call engineer reads.

Input is plain data (``StatusData``, gathered by ``monitor.status``); every number on the page comes
from it. Plots are PNGs inlined as data URIs, drawn with matplotlib's object API on the Agg canvas
(no pyplot global state), like ``sweep.report_html``. A plot with nothing to draw is replaced by a
"no data" line, never an empty image. All text from the data is escaped.
"""

from __future__ import annotations

import base64
import html
import io
import os
import re
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from hybridft.monitor.records import Alert, DriftReport, KpiSeries, StatusData

DPI = 90
HISTORY_ROWS = 10  # canary decisions shown, newest first

CSS = """
body{font-family:system-ui,sans-serif;max-width:1000px;margin:2em auto;color:#222}
h1{margin-bottom:0}.sub{color:#666;margin-top:.2em}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;text-align:left}
th{background:#f3f3f3}td.n{text-align:right;white-space:nowrap}
img{max-width:100%;border:1px solid #eee;margin:.3em 0}
.state{padding:.7em 1em;font-size:1.15em;font-weight:bold;border-left:6px solid}
.box{padding:.7em 1em;border-left:6px solid;margin:1em 0}.nodata{color:#888;font-style:italic}
.ok{background:#eef7ee;border-color:#2a7;color:#175}.warn{background:#fff6e5;border-color:#e90}
.bad{background:#fdecec;border-color:#c22;color:#911}
tr.critical td,tr.drifted td{background:#fdecec}tr.warning td{background:#fff6e5}
"""


def _dt(t: float) -> datetime:
    return datetime.fromtimestamp(t, UTC)


def _iso(t: float | None) -> str | None:
    """Unix seconds as an ISO UTC time (``None`` stays missing)."""
    return None if t is None else _dt(t).isoformat(timespec="seconds").replace("+00:00", "Z")


def _pct(x: float | None, digits: int = 1) -> str | None:
    return None if x is None else f"{x * 100:.{digits}f}%"


def _fmt(x: Any, spec: str) -> str | None:
    return None if x is None else format(x, spec)


def _cell(x: Any) -> str:
    if x is None or x == "":
        return "<td class='n'>–</td>"
    text = format(x, ".3f") if isinstance(x, float) else str(x)
    # numbers, percentages and times line up on the right; words on the left
    numeric = isinstance(x, int | float) or re.fullmatch(r"[-+0-9.,:%/ TZ]+", text)
    return f"<td class='n'>{html.escape(text)}</td>" if numeric else f"<td>{html.escape(text)}</td>"


def _table(
    headers: Sequence[str],
    rows: Sequence[Sequence[Any]],
    cls: str,
    row_classes: Sequence[str] | None = None,
) -> str:
    """An escaped HTML table; ``None`` cells show as "–", floats with three decimals."""
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    classes = row_classes or [""] * len(rows)
    body = "".join(
        f'<tr class="{html.escape(rc)}">' + "".join(_cell(c) for c in row) + "</tr>"
        for row, rc in zip(rows, classes, strict=True)
    )
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _figure(width: float = 7.0, height: float = 2.8) -> tuple[Any, Any]:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=DPI)
    FigureCanvasAgg(fig)
    return fig, fig.subplots()


def _png(fig: Any) -> str:
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _time_axis(ax: Any) -> None:
    from matplotlib.dates import AutoDateLocator, ConciseDateFormatter

    locator = AutoDateLocator()
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(ConciseDateFormatter(locator))


def _img(uri: str | None, alt: str) -> str:
    if uri is None:
        return f"<p class='nodata'>{html.escape(alt)}: no data</p>"
    return f"<img alt='{html.escape(alt)}' src='{uri}'>"


def plot_canary_weight(history: Sequence[dict[str, Any]]) -> str | None:
    """Step plot of the canary weight over the decisions' times.

    Args:
        history: the canary state's decisions (``at``, ``weight``, ``decision``, ...).

    Returns:
        A PNG data URI, or ``None`` when there is no decision to plot.
    """
    points = [(d["at"], d["weight"]) for d in history if d.get("at") is not None]
    if not points:
        return None
    points.sort()
    fig, ax = _figure(7.0, 2.4)
    xs, ws = [_dt(t) for t, _ in points], [w * 100 for _, w in points]
    ax.step(xs, ws, where="post", color="tab:blue", lw=2)
    ax.plot(xs, ws, "o", color="tab:blue", ms=4)
    ax.set(ylabel="canary weight (%)", ylim=(-2, max(102.0, max(ws) + 2)), title="Canary weight")
    _time_axis(ax)
    return _png(fig)


def plot_drift(report: DriftReport) -> str | None:
    """Grouped bars of the reference vs the current distribution of one drift test.

    Args:
        report: the drift test.

    Returns:
        A PNG data URI, or ``None`` when both distributions are empty.
    """
    keys = list(report.reference_dist) + [
        k for k in report.current_dist if k not in report.reference_dist
    ]
    if not keys:
        return None
    fig, ax = _figure(7.0, 2.8)
    xs = range(len(keys))
    ref = [report.reference_dist.get(k, 0.0) for k in keys]
    cur = [report.current_dist.get(k, 0.0) for k in keys]
    ax.bar([x - 0.2 for x in xs], ref, width=0.4, color="tab:blue", label="reference")
    ax.bar([x + 0.2 for x in xs], cur, width=0.4, color="tab:orange", label="current")
    ax.set_xticks(list(xs), keys, rotation=30 if len(keys) > 5 else 0, fontsize=8)
    verdict = "drift" if report.drifted else "no drift"
    title = f"{report.monitor} ({report.version}): PSI {report.psi:.3f}, {verdict}"
    ax.set(ylabel="share", title=title)
    ax.legend(fontsize=8)
    return _png(fig)


def plot_kpi(series: KpiSeries) -> str | None:
    """One KPI over time: values, control-limit band, anomalies, threshold, forecast.

    Args:
        series: the KPI series.

    Returns:
        A PNG data URI, or ``None`` when the series has no observed value.
    """
    seen = [
        (i, t, v)
        for i, (t, v) in enumerate(zip(series.times, series.values, strict=False))
        if v is not None
    ]
    if not seen:
        return None
    fig, ax = _figure(8.5, 3.0)
    band = [
        (_dt(t), lo, hi)
        for t, lo, hi in zip(series.times, series.lower, series.upper, strict=False)
        if lo is not None and hi is not None
    ]
    if band:
        ax.fill_between(
            [b[0] for b in band], [b[1] for b in band], [b[2] for b in band],
            color="tab:green", alpha=0.15, label="control limits",
        )  # fmt: skip
    ax.plot([_dt(t) for _, t, _ in seen], [v for _, _, v in seen], "o-", ms=3, color="tab:blue",
            label="value")  # fmt: skip
    odd = [(t, v) for i, t, v in seen if i in set(series.anomalies)]
    if odd:
        ax.plot([_dt(t) for t, _ in odd], [v for _, v in odd], "X", ms=9, color="tab:red",
                label="anomaly")  # fmt: skip
    if series.threshold is not None:
        ax.axhline(series.threshold, ls="--", color="tab:red", lw=1, label="threshold")
    if series.forecast_times:
        ahead = [seen[-1][1:], *zip(series.forecast_times, series.forecast_values, strict=False)]
        ax.plot([_dt(t) for t, _ in ahead], [v for _, v in ahead], ":", lw=2, color="tab:purple",
                label="forecast")  # fmt: skip
    if series.forecast_crossing is not None and series.threshold is not None:
        ax.plot([_dt(series.forecast_crossing)], [series.threshold], "v", ms=10,
                color="tab:red", label="forecast crossing")  # fmt: skip
    ax.set_title(f"{series.name} ({series.version}) {series.unit}".strip())
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    _time_axis(ax)
    return _png(fig)


def sorted_alerts(alerts: Sequence[Alert]) -> list[Alert]:
    """Critical first, then the most recent first.

    Args:
        alerts: the alerts that fired.

    Returns:
        The alerts in the order the page lists them.
    """
    return sorted(alerts, key=lambda a: (a.severity != "critical", -(a.at or 0.0)))


def overall_state(alerts: Sequence[Alert]) -> tuple[str, str]:
    """The one-line summary and its level.

    Args:
        alerts: the alerts that fired.

    Returns:
        ``(text, level)``: e.g. ``("3 alerts (1 critical)", "critical")``, ``("all clear", "ok")``;
        level is ``ok``, ``warning`` or ``critical``.
    """
    if not alerts:
        return "all clear", "ok"
    critical = sum(a.severity == "critical" for a in alerts)
    noun = "alert" if len(alerts) == 1 else "alerts"
    return f"{len(alerts)} {noun} ({critical} critical)", "critical" if critical else "warning"


def _header(data: StatusData) -> str:
    text, level = overall_state(data.alerts)
    cls = {"ok": "ok", "warning": "warn", "critical": "bad"}[level]
    return (
        f"<h1>Monitor: {html.escape(data.model)}</h1><p class='sub'>generated "
        f"{_iso(data.generated_at)} · traffic log <code>{html.escape(data.traffic_root)}</code></p>"
        f"<div class='state {cls}'>{html.escape(text)}</div>"
    )


def _alerts_section(alerts: Sequence[Alert]) -> str:
    ordered = sorted_alerts(alerts)
    rows: list[list[Any]] = [
        [a.severity, a.monitor, a.version, a.message, _fmt(a.value, ".3f"),
         _fmt(a.threshold, ".3f"), _iso(a.at)]
        for a in ordered
    ]  # fmt: skip
    classes: list[str] = [a.severity for a in ordered]
    if not rows:
        rows, classes = [["no alerts", None, None, None, None, None, None]], [""]
    headers = ["severity", "monitor", "version", "message", "value", "threshold", "when"]
    return "<h2>Alerts</h2>" + _table(headers, rows, "alerts", classes)


def _versions_section(versions: Sequence[dict[str, Any]]) -> str:
    rows = [
        [v.get("version"), " ".join(f"@{a}" for a in v.get("aliases") or []), v.get("arm"),
         _pct(v.get("weight")), _fmt(v.get("requests"), ","), _pct(v.get("error_rate"), 2),
         _fmt(v.get("latency_p95_s"), ".3f"), _pct(v.get("success_rate")), v.get("flagged")]
        for v in versions
    ]  # fmt: skip
    if not rows:
        return "<h2>Live versions</h2><p class='nodata'>no live versions</p>"
    headers = ["version", "aliases", "arm", "weight", "requests", "error rate", "p95 latency s",
               "success rate", "flagged for review"]  # fmt: skip
    return "<h2>Live versions</h2>" + _table(headers, rows, "versions")


def _canary_section(canary: dict[str, Any] | None) -> str:
    if canary is None:
        return "<h2>Canary</h2><p class='nodata'>no canary</p>"
    history = list(canary.get("history") or [])
    summary = (
        f"{canary.get('model')}: primary {canary.get('primary')}, canary "
        f"{canary.get('canary') or '–'} · status {canary.get('status')} · mode "
        f"{canary.get('mode')} · weight {_pct(canary.get('weight')) or '–'} · "
        f"{canary.get('intervals', 0)} intervals · {canary.get('failed_checks', 0)} failed checks"
    )
    recent = sorted(history, key=lambda d: d.get("at") or 0.0, reverse=True)[:HISTORY_ROWS]
    rows = [
        [_iso(d.get("at")), d.get("decision"), _pct(d.get("weight")), d.get("reason"), d.get("who")]
        for d in recent
    ]
    headers = ["time", "decision", "weight", "reason", "who"]
    table = (
        _table(headers, rows, "canary-history") if rows else "<p class='nodata'>no decisions</p>"
    )
    plot = _img(plot_canary_weight(history), "canary weight")
    return f"<h2>Canary</h2><p class='canary-summary'>{html.escape(summary)}</p>{table}{plot}"


def _drift_section(reports: Sequence[DriftReport]) -> str:
    if not reports:
        return "<h2>Drift</h2><p class='nodata'>no drift reports</p>"
    rows = [
        [r.monitor, r.version, f"{r.n_reference:,} / {r.n_current:,}", f"{r.psi:.3f}",
         f"{r.p_value:.3g}", r.detected_after, "drift" if r.drifted else "no drift", r.reason]
        for r in reports
    ]  # fmt: skip
    classes = ["drifted" if r.drifted else "" for r in reports]
    headers = ["monitor", "version", "n reference / n current", "PSI", "p-value",
               "detected after", "verdict", "reason"]  # fmt: skip
    plots = "".join(_img(plot_drift(r), f"drift {r.monitor} ({r.version})") for r in reports)
    return "<h2>Drift</h2>" + _table(headers, rows, "drift", classes) + plots


def _last_value(series: KpiSeries) -> float | None:
    return next((v for v in reversed(series.values) if v is not None), None)


def _kpi_section(kpis: Sequence[KpiSeries]) -> str:
    if not kpis:
        return "<h2>KPIs</h2><p class='nodata'>no KPI series</p>"
    rows = [
        [s.name, s.version, s.unit, _fmt(_last_value(s), ".3f"), _fmt(s.threshold, ".3f"),
         s.direction if s.threshold is not None else None, len(s.anomalies),
         _iso(s.forecast_crossing)]
        for s in kpis
    ]  # fmt: skip
    headers = ["KPI", "version", "unit", "last value", "threshold", "alert when",
               "anomalies", "forecast crossing"]  # fmt: skip
    plots = "".join(_img(plot_kpi(s), f"{s.name} ({s.version})") for s in kpis)
    return "<h2>KPIs</h2>" + _table(headers, rows, "kpis") + plots


def _review_section(review: dict[str, int]) -> str:
    rows = [[review.get("open", 0), review.get("resolved", 0)]]
    return "<h2>Review queue</h2>" + _table(["open", "resolved"], rows, "review")


def _retrain_section(retrain: dict[str, Any] | None) -> str:
    if retrain is None:
        return "<h2>Retraining trigger</h2><p class='nodata'>not evaluated</p>"
    fire = bool(retrain.get("fire"))
    cls, verdict = ("box bad", "fire: retrain") if fire else ("box ok", "no retraining needed")
    reasons = "".join(f"<li>{html.escape(str(r))}</li>" for r in retrain.get("reasons") or [])
    extra = "".join(
        f"<li>{html.escape(str(k))}: {html.escape(str(v))}</li>"
        for k, v in retrain.items()
        if k not in ("fire", "reasons")
    )
    return (
        f"<h2>Retraining trigger</h2><div class='{cls} retrain'><b>{verdict}</b>"
        f"{f'<ul>{reasons}</ul>' if reasons else ''}{f'<ul>{extra}</ul>' if extra else ''}</div>"
    )


def _problems_section(problems: Sequence[str]) -> str:
    if not problems:
        return ""
    items = "".join(f"<li>{html.escape(p)}</li>" for p in problems)
    return f"<h2>Problems</h2><div class='box warn problems'><ul>{items}</ul></div>"


def status_html(data: StatusData) -> str:
    """The status page as one HTML document.

    Args:
        data: everything the page shows.

    Returns:
        The page's HTML, plots inlined as PNG data URIs.
    """
    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>hybridft monitor: "
        f"{html.escape(data.model)}</title><style>{CSS}</style></head><body>",
        _header(data), _alerts_section(data.alerts), _versions_section(data.versions),
        _canary_section(data.canary), _drift_section(data.drift), _kpi_section(data.kpis),
        _review_section(data.review), _retrain_section(data.retrain),
        _problems_section(data.problems), "</body></html>",
    ]  # fmt: skip
    return "\n".join(parts)


def render_status(data: StatusData, out: str | Path) -> Path:
    """Write the status page atomically (a temporary file renamed over ``out``).

    Args:
        data: everything the page shows.
        out: where the page goes; parent folders are created.

    Returns:
        The page's path.
    """
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(status_html(data), encoding="utf-8")
    os.replace(tmp, path)
    return path
