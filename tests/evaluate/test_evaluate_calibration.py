"""Calibration scores: hand-computed cases, agreement with scikit-learn, temperature recovery."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.calibration import calibration_curve
from sklearn.metrics import brier_score_loss

from hybridft.evaluate.calibration import (
    apply_temperature,
    bin_edges,
    brier,
    brier_binary,
    ece,
    fit_temperature,
    label_probabilities,
    nll,
    reliability,
    reliability_png,
)

# Five examples, three labels. Top-1 confidence / correct:
#   0.9 ok, 0.6 wrong (gold is label 1 at 0.3), 0.7 ok, 0.8 ok, 0.5 ok
HAND_PROBS = np.array(
    [
        [0.9, 0.05, 0.05],
        [0.6, 0.3, 0.1],
        [0.2, 0.7, 0.1],
        [0.1, 0.1, 0.8],
        [0.5, 0.25, 0.25],
    ]
)
HAND_LABELS = np.array([0, 1, 1, 2, 0])


def test_ece_by_hand_with_right_closed_bins() -> None:
    # Two uniform bins [0, 0.5] and (0.5, 1]: the 0.5 confidence sits on the edge -> lower bin.
    # bin 0: {0.5 ok}           conf 0.5,  acc 1.0,  gap 0.5
    # bin 1: {0.9, 0.6, 0.7, 0.8} conf 0.75, acc 0.75, gap 0
    # ECE = 1/5 * 0.5 + 4/5 * 0 = 0.1
    conf, acc, count = reliability(HAND_PROBS, HAND_LABELS, n_bins=2)
    np.testing.assert_allclose(conf, [0.5, 0.75])
    np.testing.assert_allclose(acc, [1.0, 0.75])
    np.testing.assert_array_equal(count, [1, 4])
    assert ece(HAND_PROBS, HAND_LABELS, n_bins=2) == pytest.approx(0.1)


def test_brier_and_nll_by_hand() -> None:
    # Per-example sum of squared errors against the one-hot gold:
    #   0.1^2+0.05^2+0.05^2 = 0.015;  0.6^2+0.7^2+0.1^2 = 0.86;  0.2^2+0.3^2+0.1^2 = 0.14
    #   0.1^2+0.1^2+0.2^2 = 0.06;     0.5^2+0.25^2+0.25^2 = 0.375        mean = 1.45 / 5 = 0.29
    assert brier(HAND_PROBS, HAND_LABELS) == pytest.approx(0.29)
    # Gold probabilities 0.9, 0.3, 0.7, 0.8, 0.5 -> NLL = -ln(0.9*0.3*0.7*0.8*0.5) / 5
    assert nll(HAND_PROBS, HAND_LABELS) == pytest.approx(-math.log(0.0756) / 5)


def test_empty_bins_are_nan_and_skipped_by_ece() -> None:
    conf, acc, count = reliability(HAND_PROBS, HAND_LABELS, n_bins=10)
    assert count.sum() == 5 and (count == 0).sum() == 5
    assert np.isnan(conf[count == 0]).all() and np.isnan(acc[count == 0]).all()
    assert np.isfinite(ece(HAND_PROBS, HAND_LABELS, n_bins=10))


def test_perfectly_confident_and_right_has_zero_error() -> None:
    probs = np.eye(3)[[0, 1, 2, 1]]
    labels = np.array([0, 1, 2, 1])
    assert ece(probs, labels) == 0.0
    assert brier(probs, labels) == 0.0
    assert nll(probs, labels) == pytest.approx(0.0)


@pytest.mark.parametrize("strategy", ["uniform", "quantile"])
def test_top1_reliability_matches_sklearn_calibration_curve(strategy: str) -> None:
    rng = np.random.default_rng(0)
    probs = label_probabilities(rng.normal(size=(300, 4)) * 2)
    labels = rng.integers(0, 4, size=300)
    conf, acc, count = reliability(probs, labels, n_bins=10, strategy=strategy)
    hit = (probs.argmax(1) == labels).astype(int)
    prob_true, prob_pred = calibration_curve(hit, probs.max(1), n_bins=10, strategy=strategy)
    full = count > 0
    np.testing.assert_allclose(acc[full], prob_true)
    np.testing.assert_allclose(conf[full], prob_pred)


@pytest.mark.parametrize("strategy", ["uniform", "quantile"])
def test_binary_reliability_matches_sklearn_calibration_curve(strategy: str) -> None:
    rng = np.random.default_rng(1)
    p_pos = rng.uniform(size=400)
    y = (rng.uniform(size=400) < p_pos).astype(int)
    conf, acc, count = reliability(p_pos, y, n_bins=8, strategy=strategy)
    prob_true, prob_pred = calibration_curve(y, p_pos, n_bins=8, strategy=strategy)
    full = count > 0
    np.testing.assert_allclose(acc[full], prob_true)
    np.testing.assert_allclose(conf[full], prob_pred)
    if strategy == "quantile":  # equal mass: every bin holds 400 / 8 examples
        np.testing.assert_array_equal(count, np.full(8, 50))


def test_uniform_edge_values_follow_sklearn() -> None:
    # Confidences exactly on inner edges (0.25, 0.5, 0.75) and on 0 and 1.
    p_pos = np.array([0.0, 0.25, 0.5, 0.75, 1.0, 0.3])
    y = np.array([0, 0, 1, 1, 1, 0])
    conf, acc, count = reliability(p_pos, y, n_bins=4)
    np.testing.assert_array_equal(count, [2, 2, 1, 1])  # 0.25 -> bin 0, 0.5 -> bin 1, ...
    prob_true, prob_pred = calibration_curve(y, p_pos, n_bins=4)
    np.testing.assert_allclose(acc, prob_true)
    np.testing.assert_allclose(conf, prob_pred)
    np.testing.assert_allclose(bin_edges(p_pos, 4), [0, 0.25, 0.5, 0.75, 1])


def test_brier_matches_sklearn_conventions() -> None:
    rng = np.random.default_rng(2)
    probs = label_probabilities(rng.normal(size=(50, 3)))
    labels = rng.integers(0, 3, size=50)
    sk_multi = brier_score_loss(labels, probs, labels=[0, 1, 2], scale_by_half=False)
    assert brier(probs, labels) == pytest.approx(sk_multi)

    p2 = label_probabilities(rng.normal(size=(50, 2)))
    y2 = rng.integers(0, 2, size=50)
    assert brier_binary(p2[:, 1], y2) == pytest.approx(brier_score_loss(y2, p2[:, 1]))
    assert brier_binary(p2, y2) == pytest.approx(brier_binary(p2[:, 1], y2))
    # The 2-class multiclass sum counts the error twice (once per class).
    assert brier(p2, y2) == pytest.approx(2 * brier_binary(p2[:, 1], y2))


def test_label_probabilities_is_stable_and_handles_impossible_labels() -> None:
    lp = np.array([[-1000.0, -1001.0, -np.inf], [5.0, 5.0, 5.0]])
    probs = label_probabilities(lp)
    e = math.e
    np.testing.assert_allclose(probs[0], [e / (1 + e), 1 / (1 + e), 0.0])
    np.testing.assert_allclose(probs[1], [1 / 3] * 3)
    with pytest.raises(ValueError):
        label_probabilities(np.array([[-np.inf, -np.inf]]))
    with pytest.raises(ValueError):
        label_probabilities(np.array([0.1, 0.2]))


def test_bad_inputs_are_rejected() -> None:
    with pytest.raises(ValueError):
        ece(HAND_PROBS, HAND_LABELS[:3])
    with pytest.raises(ValueError):
        ece(HAND_PROBS, np.array([0, 1, 1, 3, 0]))  # label index out of range
    with pytest.raises(ValueError):
        ece(HAND_PROBS, HAND_LABELS, strategy="log")  # type: ignore[arg-type]


def test_temperature_scaling_recovers_known_temperature_and_lowers_nll() -> None:
    rng = np.random.default_rng(3)
    true_logits = rng.normal(size=(6000, 4)) * 1.5
    true_probs = label_probabilities(true_logits)
    # Labels drawn from the true model, so the true logits are calibrated by construction.
    labels = (rng.uniform(size=(6000, 1)) > np.cumsum(true_probs, axis=1)).sum(axis=1)
    labels = np.minimum(labels, 3)  # guard against the last cumsum rounding below 1
    overconfident = true_logits * 3.0

    t = fit_temperature(overconfident[:3000], labels[:3000])
    assert t == pytest.approx(3.0, rel=0.1)

    test_logits, test_labels = overconfident[3000:], labels[3000:]
    raw = label_probabilities(test_logits)
    scaled = apply_temperature(test_logits, t)
    assert nll(scaled, test_labels) < nll(raw, test_labels) - 0.1
    assert ece(scaled, test_labels) < ece(raw, test_labels)
    # Temperature only rescales: the predicted label never changes.
    np.testing.assert_array_equal(scaled.argmax(1), raw.argmax(1))


def test_temperature_one_is_identity() -> None:
    logits = np.array([[1.0, 2.0, 0.5]])
    np.testing.assert_allclose(apply_temperature(logits, 1.0), label_probabilities(logits))
    with pytest.raises(ValueError):
        apply_temperature(logits, 0.0)


def test_reliability_png_is_written(tmp_path) -> None:
    rng = np.random.default_rng(4)
    probs = label_probabilities(rng.normal(size=(200, 3)) * 3)
    labels = rng.integers(0, 3, size=200)
    conf, acc, count = reliability(probs, labels, n_bins=10)
    out = reliability_png(conf, acc, count, tmp_path / "plots" / "rel.png", title="demo")
    data = out.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 1000


def test_reliability_png_with_quantile_edges(tmp_path) -> None:
    conf, acc, count = reliability(HAND_PROBS, HAND_LABELS, n_bins=3, strategy="quantile")
    edges = bin_edges(HAND_PROBS.max(1), 3, "quantile")
    out = reliability_png(conf, acc, count, tmp_path / "q.png", edges=edges)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
