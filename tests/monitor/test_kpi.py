"""KPI monitors: buckets, the EWMA control chart, the Holt forecast and the alerts they raise."""

from __future__ import annotations

import json

import numpy as np
import pytest

from hybridft.monitor.kpi import (
    bucket_series,
    drift_alerts,
    ewma_limits,
    forecast_crossing,
    holt_forecast,
    kpi_alerts,
    kpi_series,
)
from hybridft.monitor.records import DriftReport, KpiSeries

T0 = 1_699_999_800.0  # a multiple of 60 and 300


# --- buckets -----------------------------------------------------------------------------------


def test_buckets_keep_every_observation_and_match_numpy():
    rng = np.random.default_rng(0)
    times = T0 + np.concatenate([rng.uniform(0, 600, 300), rng.uniform(1200, 1800, 200)])
    latency = rng.lognormal(0, 0.5, size=times.size)
    starts, p95, counts = bucket_series(times, latency, bucket_s=300, agg="p95")
    assert sum(counts) == times.size and len(starts) == len(p95) == len(counts) == 6
    assert starts[0] == T0 and np.allclose(np.diff(starts), 300)
    assert p95[2] is None and p95[3] is None and counts[2] == counts[3] == 0
    for s, value in zip(starts, p95, strict=True):
        inside = latency[(times >= s) & (times < s + 300)]
        assert value == (pytest.approx(np.percentile(inside, 95)) if inside.size else None)
    _, means, _ = bucket_series(times, latency, bucket_s=300)
    assert means[0] == pytest.approx(latency[times < T0 + 300].mean())


def test_rate_buckets_need_zeros_and_ones_and_start_end_clip():
    times = [T0 + 10, T0 + 70, T0 + 130, T0 + 200]
    starts, rate, counts = bucket_series(
        times, [1, 0, 1, 1], bucket_s=60, start=T0 + 60, end=T0 + 180, agg="rate"
    )
    assert starts == [T0 + 60, T0 + 120] and rate == [0.0, 1.0] and counts == [1, 1]
    with pytest.raises(ValueError, match="0/1"):
        bucket_series(times, [1, 0, 2, 1], bucket_s=60, agg="rate")
    assert bucket_series([], [], bucket_s=60) == ([], [], [])


# --- EWMA control chart ------------------------------------------------------------------------


def success_buckets(rng, rates, n):
    counts = np.full(len(rates), n)
    return list(rng.binomial(counts, rates) / counts), counts.tolist()


def test_ewma_flags_a_planted_drop_after_the_baseline():
    rng = np.random.default_rng(1)
    values, counts = success_buckets(rng, [0.9] * 20 + [0.8] * 10, 200)
    center, lower, upper, ewma, anomalies = ewma_limits(values, counts, baseline=20)
    assert center == pytest.approx(np.mean(values[:20]))
    assert anomalies and min(anomalies) >= 20 and 29 in anomalies
    assert all(ewma[i] < lower[i] for i in anomalies)


def test_ewma_on_unshifted_noise_stays_mostly_in_control():
    rng = np.random.default_rng(2)
    flagged = []
    for _ in range(200):
        values, counts = success_buckets(rng, [0.9] * 40, 200)
        flagged.append(len(ewma_limits(values, counts, baseline=20)[4]) / 40)
    assert np.mean(flagged) < 0.02  # 3-sigma limits: a few in a thousand buckets


def test_smaller_buckets_get_wider_limits():
    values = [0.9] * 10
    _, low_small, up_small, _, _ = ewma_limits(values, [5] * 10, baseline=10)
    _, low_big, up_big, _, _ = ewma_limits(values, [500] * 10, baseline=10)
    assert all(
        us - ls > ub - lb
        for us, ls, ub, lb in zip(up_small, low_small, up_big, low_big, strict=True)
    )
    mixed = [500] * 9 + [5]
    _, low, up, _, _ = ewma_limits(values, mixed, baseline=9)
    _, low_same, up_same, _, _ = ewma_limits(values, [500] * 10, baseline=9)
    assert up[9] - low[9] > up_same[9] - low_same[9]


def test_ewma_skips_empty_buckets_and_needs_a_baseline():
    center, lower, _, ewma, _ = ewma_limits([None, 5.0, 6.0, None, 5.5], [0, 9, 11, 0, 10],
                                            baseline=3, kind="mean")  # fmt: skip
    assert center == pytest.approx(5.5) and lower[0] is None and ewma[3] is None
    assert ewma_limits([None, 0.9], [0, 10], baseline=1)[0] is None


# --- Holt forecast -----------------------------------------------------------------------------


def test_holt_continues_an_exact_line_even_across_gaps():
    times = [T0 + 60 * i for i in range(12)]
    values: list[float | None] = [2.0 + 0.25 * i for i in range(12)]
    values[4] = values[5] = None
    f_times, f_values = holt_forecast(times, values, horizon=4, alpha=0.4, beta=0.2)
    assert f_times == [T0 + 60 * (11 + h) for h in range(1, 5)]
    assert np.allclose(f_values, [2.0 + 0.25 * (11 + h) for h in range(1, 5)], atol=1e-9)


def test_forecast_crossing_finds_when_a_declining_series_goes_below():
    times = [T0 + 300 * i for i in range(10)]
    values = [0.95 - 0.01 * i for i in range(10)]  # 0.86 at the last bucket
    f_times, f_values = holt_forecast(times, values, horizon=6)
    crossing = forecast_crossing(f_times, f_values, 0.835, "below")
    assert crossing == T0 + 300 * 12  # 0.83 is the first forecast below 0.835
    assert forecast_crossing(f_times, f_values, 0.5, "below") is None
    assert forecast_crossing(f_times, f_values, 0.9, "above") is None


# --- series and alerts -------------------------------------------------------------------------


def observations(rng, rates, per_bucket, bucket_s=300):
    times, values = [], []
    for i, rate in enumerate(rates):
        times += list(T0 + i * bucket_s + rng.uniform(0, bucket_s, per_bucket))
        values += list((rng.random(per_bucket) < rate).astype(float))
    return times, values


def success_series(rates, threshold=None):
    times, values = observations(np.random.default_rng(3), rates, 300)
    return kpi_series(
        "task_success", "4", "", times, values, bucket_s=300, agg="rate", baseline=12,
        threshold=threshold, direction="below", horizon=3, kind="proportion",
    )  # fmt: skip


def test_falling_success_raises_the_control_and_threshold_alerts():
    series = success_series([0.92] * 12 + [0.8] * 6, threshold=0.85)
    assert series.anomalies and series.anomalies[-1] == 17
    by_monitor = {a.monitor: a for a in kpi_alerts(series)}
    assert by_monitor["kpi.task_success"].severity == "warning"
    assert by_monitor["threshold.task_success"].severity == "critical"
    assert "forecast.task_success" not in by_monitor  # already crossed: no forecast warning
    assert "0.85" in by_monitor["threshold.task_success"].message
    assert json.loads(json.dumps(series.to_dict()))["name"] == "task_success"


def test_rising_success_is_out_of_control_on_the_good_side_only():
    series = success_series([0.80] * 12 + [0.97] * 6, threshold=0.75)
    assert series.anomalies == [] and kpi_alerts(series) == []


def test_a_forecast_crossing_warns_before_the_threshold_is_crossed():
    series = KpiSeries(
        name="latency_p95_s", version="2", unit="s", times=[T0, T0 + 300], values=[1.6, 1.8],
        counts=[50, 50], threshold=2.0, direction="above", forecast_times=[T0 + 600],
        forecast_values=[2.1], forecast_crossing=T0 + 600,
    )  # fmt: skip
    [alert] = kpi_alerts(series)
    assert (alert.monitor, alert.severity) == ("forecast.latency_p95_s", "warning")
    assert "2 s" in alert.message and "1.8 s" in alert.message
    fast = KpiSeries(
        name="latency_p95_s", version="2", unit="s", times=[T0], values=[2.5], counts=[50],
        threshold=2.0, direction="above",
    )  # fmt: skip
    assert [a.monitor for a in kpi_alerts(fast)] == ["threshold.latency_p95_s"]
    slow_is_fine = KpiSeries(
        name="latency_p95_s", version="2", unit="s", times=[T0], values=[0.5], counts=[50],
        threshold=2.0, direction="above",
    )  # fmt: skip
    assert kpi_alerts(slow_is_fine) == []


def drift_report(drifted: bool, monitor: str = "intent") -> DriftReport:
    return DriftReport(
        monitor=monitor, version="5", n_reference=1000, n_current=400, psi=0.2,
        log_evidence=6.0 if drifted else 1.0, p_value=0.0025 if drifted else 0.37, alpha=0.01,
        drifted=drifted, detected_after=120 if drifted else None, reference_dist={},
        current_dist={}, reason="intent: drift" if drifted else "intent: no drift",
    )  # fmt: skip


def test_drift_alerts_are_critical_and_only_for_drifted_reports():
    alerts = drift_alerts(
        [drift_report(True), drift_report(False), drift_report(True, "prediction")]
    )
    assert [(a.monitor, a.severity) for a in alerts] == [
        ("drift.intent", "critical"),
        ("drift.prediction", "critical"),
    ]
    assert alerts[0].value == 0.0025 and alerts[0].threshold == 0.01
