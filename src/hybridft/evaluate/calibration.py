"""Calibrated label probabilities and calibration metrics for classification tasks.

A classifier's label probability comes from the model's summed token log-probabilities of each
candidate label, normalised over the candidates (``label_probabilities``). The scores here say how
far those probabilities can be trusted: expected calibration error and its reliability table,
Brier score, negative log-likelihood, and temperature scaling fitted on a validation split.

Conventions shared by every function:

* ``probs`` is 2-D, ``(n_examples, n_labels)``, rows summing to 1, and ``labels`` holds the gold
  label's column index. Reliability and ECE then use the *top-1* confidence (the largest
  probability in a row) against whether the top-1 label is correct (Guo et al., 2017).
* ``probs`` may instead be 1-D: the positive-class probability of a binary task, with ``labels``
  in {0, 1}. Reliability then follows scikit-learn's ``calibration_curve``: confidence is the
  positive-class probability and "accuracy" is the fraction of positives in the bin.

Binning (``strategy``), identical to ``sklearn.calibration.calibration_curve``:

* ``"uniform"``: ``n_bins`` equal-width bins over [0, 1] with right-closed edges: bin 0 is
  [0, 1/n], bin i > 0 is (i/n, (i+1)/n]. A confidence exactly on an inner edge goes to the lower bin.
* ``"quantile"``: edges are the confidences' ``0, 1/n, ..., 1`` quantiles (``np.percentile`` with
  linear interpolation), so bins hold roughly equal numbers of examples; tied edges leave empty
  bins, with the same right-closed rule.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax, softmax

Strategy = Literal["uniform", "quantile"]

# Smallest probability used inside a log: keeps NLL finite when a model puts exactly 0 on the gold.
_EPS = 1e-12
# Temperature search range; wide enough for any sane model, narrow enough to stay numerically sane.
_T_BOUNDS = (1e-2, 1e2)


def label_probabilities(label_logprobs: np.ndarray) -> np.ndarray:
    """Softmax over candidate labels of their summed token log-probabilities.

    Args:
        label_logprobs: ``(n_examples, n_labels)`` summed log-probs of each candidate label's
            tokens given the prompt. ``-inf`` (a label the model cannot produce) is allowed.

    Returns:
        ``(n_examples, n_labels)`` probabilities, each row summing to 1.

    Raises:
        ValueError: if the input is not 2-D or a row is all ``-inf``.
    """
    x = np.asarray(label_logprobs, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"label_logprobs: expected a 2-D array, got shape {x.shape}")
    if not np.isfinite(x.max(axis=1, initial=-np.inf)).all():
        raise ValueError("label_logprobs: every row needs at least one finite log-prob")
    # scipy's softmax subtracts the row max first, so large log-prob magnitudes do not overflow.
    return softmax(x, axis=1)


def _check(probs: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    p = np.asarray(probs, dtype=np.float64)
    y = np.asarray(labels)
    if p.ndim not in (1, 2):
        raise ValueError(f"probs: expected 1-D or 2-D, got shape {p.shape}")
    if y.ndim != 1 or len(y) != len(p):
        raise ValueError(f"labels: expected shape ({len(p)},), got {y.shape}")
    if len(p) == 0:
        raise ValueError("probs: no examples")
    if p.min() < -1e-9 or p.max() > 1 + 1e-9:  # tolerance: softmax may round just past 1
        raise ValueError("probs: values outside [0, 1]")
    n_cols = 2 if p.ndim == 1 else p.shape[1]
    if not np.issubdtype(y.dtype, np.integer) or y.min() < 0 or y.max() >= n_cols:
        raise ValueError(f"labels: expected integer class indices in [0, {n_cols})")
    return p, y.astype(np.int64)


def _confidence_and_hit(p: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if p.ndim == 1:  # binary positive-class probability: sklearn's calibration_curve convention
        return p, (y == 1).astype(np.float64)
    return p.max(axis=1), (p.argmax(axis=1) == y).astype(np.float64)


def bin_edges(
    confidence: np.ndarray, n_bins: int = 15, strategy: Strategy = "uniform"
) -> np.ndarray:
    """The ``n_bins + 1`` bin edges used for ``confidence`` (see the module docstring).

    Args:
        confidence: 1-D confidences in [0, 1].
        n_bins: number of bins.
        strategy: ``"uniform"`` (equal width) or ``"quantile"`` (equal mass).

    Returns:
        The edges, ascending (quantile edges may repeat).
    """
    if n_bins < 1:
        raise ValueError(f"n_bins: expected >= 1, got {n_bins}")
    if strategy == "uniform":
        return np.linspace(0.0, 1.0, n_bins + 1)
    if strategy == "quantile":
        return np.percentile(
            np.asarray(confidence, dtype=np.float64), np.linspace(0, 100, n_bins + 1)
        )
    raise ValueError(f"strategy: expected 'uniform' or 'quantile', got {strategy!r}")


def reliability(
    probs: np.ndarray, labels: np.ndarray, n_bins: int = 15, strategy: Strategy = "uniform"
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-bin mean confidence, accuracy and count: the reliability diagram's table.

    Args:
        probs: ``(n, k)`` label probabilities, or 1-D positive-class probabilities (binary).
        labels: gold class indices, shape ``(n,)``.
        n_bins: number of bins.
        strategy: ``"uniform"`` or ``"quantile"`` binning (see the module docstring).

    Returns:
        ``(bin_confidence, bin_accuracy, bin_count)``, each of length ``n_bins``. Empty bins have
        count 0 and NaN confidence/accuracy; the non-empty entries equal sklearn's
        ``calibration_curve`` ``prob_pred`` / ``prob_true`` for the same confidences and hits.
    """
    p, y = _check(probs, labels)
    conf, hit = _confidence_and_hit(p, y)
    edges = bin_edges(conf, n_bins, strategy)
    # searchsorted on the inner edges (side="left") makes every bin right-closed, as sklearn does.
    ids = np.searchsorted(edges[1:-1], conf)
    count = np.bincount(ids, minlength=n_bins).astype(np.int64)
    conf_sum = np.bincount(ids, weights=conf, minlength=n_bins)
    hit_sum = np.bincount(ids, weights=hit, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        return conf_sum / count, hit_sum / count, count


def ece(
    probs: np.ndarray, labels: np.ndarray, n_bins: int = 15, strategy: Strategy = "uniform"
) -> float:
    """Expected calibration error: ``sum_b (n_b / n) * |accuracy_b - confidence_b|``.

    Args:
        probs: ``(n, k)`` label probabilities (top-1 ECE), or 1-D positive-class probabilities.
        labels: gold class indices, shape ``(n,)``.
        n_bins: number of bins.
        strategy: ``"uniform"`` or ``"quantile"`` binning (see the module docstring).

    Returns:
        ECE in [0, 1].
    """
    conf, acc, count = reliability(probs, labels, n_bins, strategy)
    full = count > 0
    return float(np.sum(count[full] * np.abs(acc[full] - conf[full])) / count.sum())


def brier(probs: np.ndarray, labels: np.ndarray) -> float:
    """Multiclass Brier score: mean over examples of ``sum_k (p_k - onehot_k)^2``, in [0, 2].

    For two classes this is twice sklearn's binary ``brier_score_loss`` (which scores only the
    positive class); use ``brier_binary`` for that convention. It equals
    ``brier_score_loss(labels, probs, scale_by_half=False)``.

    Args:
        probs: ``(n, k)`` label probabilities.
        labels: gold class indices, shape ``(n,)``.

    Returns:
        The mean Brier score.
    """
    p, y = _check(probs, labels)
    if p.ndim != 2:
        raise ValueError("brier: expected 2-D probs; use brier_binary for positive-class probs")
    onehot = np.zeros_like(p)
    onehot[np.arange(len(y)), y] = 1.0
    return float(np.mean(np.sum((p - onehot) ** 2, axis=1)))


def brier_binary(pos_probs: np.ndarray, labels: np.ndarray) -> float:
    """Binary Brier score ``mean((p_pos - y)^2)``, in [0, 1]: sklearn's ``brier_score_loss``.

    Args:
        pos_probs: 1-D positive-class probabilities (or ``(n, 2)`` probs; column 1 is used).
        labels: gold labels in {0, 1}.

    Returns:
        The mean squared error of the positive-class probability.
    """
    p, y = _check(pos_probs, labels)
    if p.ndim == 2:
        if p.shape[1] != 2:
            raise ValueError(f"brier_binary: expected 2 columns, got {p.shape[1]}")
        p = p[:, 1]
    return float(np.mean((p - y) ** 2))


def nll(probs: np.ndarray, labels: np.ndarray) -> float:
    """Mean negative log-likelihood of the gold label (natural log; probabilities floored at 1e-12).

    Args:
        probs: ``(n, k)`` label probabilities, or 1-D positive-class probabilities.
        labels: gold class indices, shape ``(n,)``.

    Returns:
        The mean NLL in nats.
    """
    p, y = _check(probs, labels)
    gold = np.where(y == 1, p, 1.0 - p) if p.ndim == 1 else p[np.arange(len(y)), y]
    return float(-np.mean(np.log(np.maximum(gold, _EPS))))


def _nll_at_temperature(logits: np.ndarray, labels: np.ndarray, t: float) -> float:
    # log_softmax stays exact for confident rows where softmax would round the gold prob to 0.
    return float(-np.mean(log_softmax(logits / t, axis=1)[np.arange(len(labels)), labels]))


def fit_temperature(logits_val: np.ndarray, labels_val: np.ndarray) -> float:
    """Fit one temperature ``T`` on a validation split by minimising NLL (Guo et al., 2017).

    The search is over ``log T`` (bounded Brent, ``T`` in [0.01, 100]) so that cooling and heating
    are searched symmetrically.

    Args:
        logits_val: ``(n, k)`` validation logits (or summed label log-probs).
        labels_val: gold class indices, shape ``(n,)``.

    Returns:
        The fitted temperature; divide logits by it (``apply_temperature``). ``T > 1`` means the
        model was over-confident.
    """
    z = np.asarray(logits_val, dtype=np.float64)
    y = np.asarray(labels_val)
    if z.ndim != 2 or y.shape != (len(z),) or len(z) == 0:
        raise ValueError(f"fit_temperature: expected (n, k) logits and (n,) labels, got {z.shape}")
    if not np.isfinite(z).all():
        raise ValueError("fit_temperature: logits must be finite")
    y = y.astype(np.int64)
    lo, hi = np.log(_T_BOUNDS[0]), np.log(_T_BOUNDS[1])
    res = minimize_scalar(
        lambda log_t: _nll_at_temperature(z, y, float(np.exp(log_t))),
        bounds=(lo, hi),
        method="bounded",
        options={"xatol": 1e-6},
    )
    return float(np.exp(res.x))


def apply_temperature(logits: np.ndarray, temperature: float) -> np.ndarray:
    """Calibrated probabilities ``softmax(logits / T)``.

    Args:
        logits: ``(n, k)`` logits (or summed label log-probs).
        temperature: ``T > 0``, usually from ``fit_temperature``.

    Returns:
        ``(n, k)`` probabilities.
    """
    if not temperature > 0:
        raise ValueError(f"temperature: expected > 0, got {temperature}")
    return label_probabilities(np.asarray(logits, dtype=np.float64) / temperature)


def reliability_png(
    conf: np.ndarray,
    acc: np.ndarray,
    count: np.ndarray,
    path: str | Path,
    title: str = "Reliability",
    edges: np.ndarray | None = None,
) -> Path:
    """Draw a reliability diagram (accuracy bars per bin, the diagonal, counts below) as a PNG.

    Uses matplotlib's object API with the Agg canvas, never pyplot, so it sets no global backend
    and is safe inside Ray workers. matplotlib is present through mlflow's dependencies.

    Args:
        conf: per-bin mean confidence (``reliability``'s first output).
        acc: per-bin accuracy.
        count: per-bin example count; empty bins are not drawn.
        path: where to write the PNG (parent folders are created).
        title: the figure title.
        edges: the ``n_bins + 1`` bin edges; equal-width bins over [0, 1] when omitted.

    Returns:
        The path written.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    conf, acc, count = (np.asarray(a, dtype=np.float64) for a in (conf, acc, count))
    edges = np.linspace(0, 1, len(count) + 1) if edges is None else np.asarray(edges, float)
    if not len(conf) == len(acc) == len(count) == len(edges) - 1:
        raise ValueError("reliability_png: conf, acc, count need one entry per bin")
    full = count > 0
    left, width = edges[:-1][full], np.diff(edges)[full]

    fig = Figure(figsize=(5, 6), dpi=100)
    FigureCanvasAgg(fig)
    top, bottom = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    top.bar(left, acc[full], width=width, align="edge", edgecolor="black", label="accuracy")
    top.plot(conf[full], acc[full], "o", color="tab:red", label="(mean confidence, accuracy)")
    top.plot([0, 1], [0, 1], "--", color="grey", label="perfect calibration")
    top.set(xlim=(0, 1), ylim=(0, 1), ylabel="accuracy", title=title)
    top.legend(loc="upper left")
    bottom.bar(left, count[full], width=width, align="edge", edgecolor="black", color="grey")
    bottom.set(xlabel="confidence", ylabel="count")
    fig.tight_layout()

    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, format="png")
    return out
