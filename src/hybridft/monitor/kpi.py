"""KPI series per version: time buckets, an EWMA control chart, a Holt forecast, and alerts.

- ``bucket_series`` turns per-request observations into fixed-width time buckets.
- ``ewma_limits`` is an EWMA control chart (Roberts 1959; Lucas & Saccucci 1990) whose limits
  are built on the first ``baseline`` buckets and use the exact EWMA variance with a per-bucket
  variance ``sigma^2 / n``, so a bucket of 5 observations moves the chart less and widens its
  limits more than one of 500.
- ``holt_forecast`` is Holt's linear trend (double exponential smoothing), extrapolated a few
  buckets ahead; ``forecast_crossing`` reads when it crosses a policy threshold.
- ``kpi_alerts`` and ``drift_alerts`` turn series and drift reports into ``Alert`` records.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import numpy as np

from hybridft.monitor.records import Alert, Direction, DriftReport, KpiSeries

Agg = Literal["mean", "p95", "rate"]
ChartKind = Literal["proportion", "mean"]


def bucket_series(
    times: Sequence[float],
    values: Sequence[float],
    *,
    bucket_s: float,
    start: float | None = None,
    end: float | None = None,
    agg: Agg = "mean",
) -> tuple[list[float], list[float | None], list[int]]:
    """Aggregate observations into fixed-width time buckets.

    Args:
        times: Unix seconds of each observation.
        values: The observation (a latency, or 0/1 for a rate).
        bucket_s: Bucket width in seconds.
        start: First bucket's start; default: the earliest time, floored to a multiple of
            ``bucket_s``.
        end: End of the last bucket (exclusive); default: the end of the bucket holding the
            latest time. Observations outside ``[start, end)`` are dropped.
        agg: ``"mean"``, ``"p95"`` (numpy's linear percentile) or ``"rate"`` (mean of 0/1).

    Returns:
        ``(bucket starts, aggregated values, counts)``; an empty bucket has value ``None``.
    """
    if bucket_s <= 0:
        raise ValueError(f"bucket_s must be > 0, got {bucket_s}")
    if agg not in ("mean", "p95", "rate"):
        raise ValueError(f"agg must be 'mean', 'p95' or 'rate', got {agg!r}")
    t = np.asarray(times, dtype=float)
    v = np.asarray(values, dtype=float)
    if t.shape != v.shape:
        raise ValueError(f"times and values differ in length: {t.size} vs {v.size}")
    if agg == "rate" and not np.isin(v, (0.0, 1.0)).all():
        raise ValueError("agg='rate' needs 0/1 values")
    if start is None and t.size == 0:
        return [], [], []
    first = math.floor(t.min() / bucket_s) * bucket_s if start is None else float(start)
    if end is None:
        last = t.max() if t.size else first
        end = first + (math.floor((last - first) / bucket_s) + 1) * bucket_s
    n_buckets = max(0, math.ceil((end - first) / bucket_s))
    if n_buckets == 0:
        return [], [], []
    keep = (t >= first) & (t < end)
    index = ((t[keep] - first) // bucket_s).astype(int)
    counts = np.bincount(index, minlength=n_buckets)[:n_buckets]
    groups = np.split(v[keep][np.argsort(index, kind="stable")], np.cumsum(counts)[:-1])
    reduce = (lambda g: np.percentile(g, 95)) if agg == "p95" else np.mean
    out: list[float | None] = [float(reduce(g)) if g.size else None for g in groups]
    starts = [first + i * bucket_s for i in range(n_buckets)]
    return starts, out, counts.tolist()


def _baseline_stats(
    values: Sequence[float | None], counts: Sequence[int], baseline: int, kind: ChartKind
) -> tuple[float, float, float] | None:
    """(center, per-observation variance, typical count) of the baseline buckets, or None."""
    pairs = [
        (v, n)
        for v, n in zip(values[:baseline], counts[:baseline], strict=True)
        if v is not None and n
    ]
    if not pairs or (kind == "mean" and len(pairs) < 2):
        return None  # a mean's spread needs two baseline buckets
    x = np.array([v for v, _ in pairs], dtype=float)
    n = np.array([c for _, c in pairs], dtype=float)
    if kind == "proportion":
        center = float(np.sum(x * n) / n.sum())
        smoothed = (center * n.sum() + 1) / (n.sum() + 2)  # a rate of 0 or 1 still has variance
        return center, smoothed * (1 - smoothed), 1.0
    center = float(x.mean())
    # bucket values vary as sigma^2 / n: the baseline's spread at its typical count
    spread = float(x.var(ddof=1))
    return center, spread * float(n.mean()), float(n.mean())


def ewma_limits(
    values: Sequence[float | None],
    counts: Sequence[int],
    *,
    baseline: int,
    lam: float = 0.2,
    L: float = 3.0,
    kind: ChartKind = "proportion",
) -> tuple[float | None, list[float | None], list[float | None], list[float | None], list[int]]:
    """EWMA control chart over bucket values, limits from the first ``baseline`` buckets.

    ``z_t = lam x_t + (1 - lam) z_{t-1}`` from ``z = center``, with the exact variance
    ``V_t = lam^2 sigma_t^2 + (1 - lam)^2 V_{t-1}`` and limits ``center +- L sqrt(V_t)``. For
    proportions ``sigma_t^2 = p0 (1 - p0) / n_t`` (binomial); for means the baseline buckets'
    variance, scaled by the baseline's typical count over ``n_t``. Empty buckets are skipped.

    Args:
        values: Bucket values (``None``: empty bucket).
        counts: Observations per bucket.
        baseline: How many leading buckets are the in-control reference.
        lam: EWMA weight of the newest bucket.
        L: Width of the limits in standard deviations.
        kind: ``"proportion"`` (rates) or ``"mean"`` (means, percentiles).

    Returns:
        ``(center, lower, upper, ewma, anomalies)``: per-bucket limits and EWMA (``None`` where
        the bucket is empty or there is no baseline) and the indices of buckets whose EWMA is
        outside the limits, on either side.
    """
    if not 0 < lam <= 1:
        raise ValueError(f"lam must be in (0, 1], got {lam}")
    none: list[float | None] = [None] * len(values)
    stats = _baseline_stats(values, counts, baseline, kind)
    if stats is None:
        return None, list(none), list(none), list(none), []
    center, sigma2, typical = stats
    lower, upper, ewma = list(none), list(none), list(none)
    anomalies: list[int] = []
    z, var = center, 0.0
    for i, (x, n) in enumerate(zip(values, counts, strict=True)):
        if x is None or not n:
            continue
        z = lam * x + (1 - lam) * z
        var = lam * lam * sigma2 * typical / n + (1 - lam) ** 2 * var
        half = L * math.sqrt(var)
        lower[i], upper[i], ewma[i] = center - half, center + half, z
        if not center - half <= z <= center + half:
            anomalies.append(i)
    return center, lower, upper, ewma, anomalies


def holt_forecast(
    times: Sequence[float],
    values: Sequence[float | None],
    *,
    horizon: int,
    alpha: float = 0.5,
    beta: float = 0.3,
    step: float | None = None,
) -> tuple[list[float], list[float]]:
    """Holt's linear trend over the non-empty buckets, ``horizon`` buckets past the last one.

    The trend is per bucket; a gap of ``k`` empty buckets advances the level by ``k`` trends.

    Args:
        times: Bucket starts.
        values: Bucket values (``None``: empty, skipped).
        horizon: Buckets to forecast after the last one.
        alpha: Smoothing weight of the level.
        beta: Smoothing weight of the trend.
        step: Bucket width; default: the median spacing of ``times`` (1 with a single bucket).

    Returns:
        ``(forecast times, forecast values)``; empty when no bucket has a value.
    """
    pts = [(t, v) for t, v in zip(times, values, strict=True) if v is not None]
    if not pts or horizon < 1:
        return [], []
    if step is None:
        step = float(np.median(np.diff(times))) if len(times) > 1 else 1.0
    # hand-written: statsmodels is not a dependency, and Holt with gaps is a few lines
    (t0, level), trend = pts[0], 0.0
    if len(pts) > 1:
        trend = (pts[1][1] - level) / ((pts[1][0] - t0) / step)
    last_t = t0
    for t, v in pts[1:]:
        k = (t - last_t) / step
        new_level = alpha * v + (1 - alpha) * (level + k * trend)
        trend = beta * (new_level - level) / k + (1 - beta) * trend
        level, last_t = new_level, t
    out_t = [times[-1] + h * step for h in range(1, horizon + 1)]
    return out_t, [level + (t - last_t) / step * trend for t in out_t]


def _beyond(value: float, threshold: float, direction: Direction) -> bool:
    return value < threshold if direction == "below" else value > threshold


def forecast_crossing(
    forecast_times: Sequence[float],
    forecast_values: Sequence[float],
    threshold: float,
    direction: Direction,
) -> float | None:
    """First forecast time whose value is beyond ``threshold`` (below or above it), or None."""
    for t, v in zip(forecast_times, forecast_values, strict=True):
        if _beyond(v, threshold, direction):
            return float(t)
    return None


def kpi_series(
    name: str,
    version: str,
    unit: str,
    times: Sequence[float],
    values: Sequence[float],
    *,
    bucket_s: float,
    agg: Agg,
    baseline: int,
    threshold: float | None = None,
    direction: Direction = "below",
    horizon: int = 3,
    kind: ChartKind,
) -> KpiSeries:
    """One KPI of one version, bucketed, charted and forecast.

    Args:
        name: The KPI, e.g. ``"task_success"``.
        version: The model version.
        unit: Unit shown in messages (``"s"``, ``""`` for rates).
        times: Unix seconds per observation.
        values: Observation per request.
        bucket_s: Bucket width in seconds.
        agg: How a bucket aggregates (``bucket_series``).
        baseline: Leading buckets the control limits are built on.
        threshold: The policy's limit, if any.
        direction: ``"below"`` when low values are bad (success), ``"above"`` when high ones are
            (latency, errors).
        horizon: Buckets to forecast.
        kind: Control chart variance (``ewma_limits``).

    Returns:
        A ``KpiSeries``. Its ``anomalies`` are out-of-control buckets on the bad side only.
    """
    starts, bucket_values, counts = bucket_series(times, values, bucket_s=bucket_s, agg=agg)
    center, lower, upper, ewma, anomalies = ewma_limits(
        bucket_values, counts, baseline=baseline, kind=kind
    )
    bad = [i for i in anomalies if _beyond(ewma[i], center, direction)]  # type: ignore[arg-type]
    f_times, f_values = holt_forecast(starts, bucket_values, horizon=horizon, step=bucket_s)
    crossing = None
    if threshold is not None:
        crossing = forecast_crossing(f_times, f_values, threshold, direction)
    return KpiSeries(
        name=name,
        version=version,
        unit=unit,
        times=starts,
        values=bucket_values,
        counts=counts,
        center=center,
        lower=lower,
        upper=upper,
        anomalies=bad,
        threshold=threshold,
        direction=direction,
        forecast_times=f_times,
        forecast_values=f_values,
        forecast_crossing=crossing,
    )


def _fmt(value: float, unit: str) -> str:
    return f"{value:.4g}{' ' + unit if unit else ''}"


def kpi_alerts(series: KpiSeries) -> list[Alert]:
    """Alerts on the last non-empty bucket of a series, on its bad side only.

    ``kpi.<name>`` (warning): the bucket is out of control; ``threshold.<name>`` (critical): its
    value is beyond the threshold; ``forecast.<name>`` (warning): not beyond yet, but the
    forecast crosses within its horizon.
    """
    filled = [i for i, v in enumerate(series.values) if v is not None]
    if not filled:
        return []
    s, i = series, filled[-1]
    value = float(s.values[i])  # type: ignore[arg-type]
    at, side, unit = s.times[i], s.direction, s.unit
    out: list[Alert] = []
    if i in s.anomalies:
        limit = s.lower[i] if side == "below" else s.upper[i]
        word = "lower" if side == "below" else "upper"
        msg = (
            f"{s.name} of {s.version} is out of control: last bucket {_fmt(value, unit)} "
            f"(n={s.counts[i]}), EWMA beyond the {word} control limit {_fmt(limit or 0.0, unit)} "
            f"around the baseline {_fmt(s.center or 0.0, unit)}"
        )
        out.append(Alert(f"kpi.{s.name}", "warning", s.version, msg, value, limit, at))
    if s.threshold is not None and _beyond(value, s.threshold, side):
        msg = (
            f"{s.name} of {s.version} is {_fmt(value, unit)} in the last bucket (n={s.counts[i]}), "
            f"{side} the threshold {_fmt(s.threshold, unit)}"
        )
        out.append(Alert(f"threshold.{s.name}", "critical", s.version, msg, value, s.threshold, at))
    elif s.threshold is not None and s.forecast_crossing is not None:
        ahead = (s.forecast_crossing - at) / 60.0
        msg = (
            f"{s.name} of {s.version} is {_fmt(value, unit)} now and forecast to go {side} "
            f"the threshold {_fmt(s.threshold, unit)} in about {ahead:.0f} min"
        )
        out.append(Alert(f"forecast.{s.name}", "warning", s.version, msg, value, s.threshold, at))
    return out


def drift_alerts(reports: Sequence[DriftReport]) -> list[Alert]:
    """A critical ``drift.<monitor>`` alert per drifted report (value: its p-value)."""
    return [
        Alert(
            monitor=f"drift.{r.monitor}",
            severity="critical",
            version=r.version,
            message=r.reason,
            value=r.p_value,
            threshold=r.alpha,
        )
        for r in reports
        if r.drifted
    ]
