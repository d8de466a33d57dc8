"""From the report's finished runs to the Evidence table and the undertrained guard's inputs.

Rows are the report's per-run dicts (``report._train_runs``): ``arm`` (the run's group), ``seed``,
``labels``, ``tokens``, ``variant``, ``per_example`` (target score per test row),
``forgetting_rows`` and ``heldout_rows`` (per instruction / held-out row), ``val_curve``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

from hybridft.sweep import evidence as ev

Row = Mapping[str, Any]


def _matrix(rows: Sequence[Row], key: str = "per_example") -> list[list[float]]:
    """Seeds x rows of ``key``, seeds in order (runs without the key are left out)."""
    return [list(r[key]) for r in sorted(rows, key=lambda r: r["seed"]) if r.get(key)]


def _select(rows: Sequence[Row], arm: str, **match: Any) -> list[Row]:
    return [r for r in rows if r["arm"] == arm and all(r.get(k) == v for k, v in match.items())]


def majority_baseline(train_labels: Sequence[str], test_labels: Sequence[str], score: str) -> float:
    """What a model that ignores its input scores on the test rows: always the most frequent
    training label (``accuracy``), or the training label frequencies as probabilities (``prob``)."""
    counts = Counter(train_labels)
    if not counts or not test_labels:
        return 0.0
    total = sum(counts.values())
    if score == "prob":
        return sum(counts[y] / total for y in test_labels) / len(test_labels)
    top = counts.most_common(1)[0][0]
    return sum(y == top for y in test_labels) / len(test_labels)


def val_curves(rows: Sequence[Row], arms: Sequence[str]) -> dict[str, list[tuple[float, float]]]:
    """Seed 0's validation-loss curve of each arm's last stage: (tokens trained in that stage,
    val loss) points. The target task's loss is flat through an instruction stage and drops when
    the SFT stage starts; only the stage that trains it says whether it still falls."""
    out = {}
    for arm in arms:
        for r in _select(rows, arm, seed=0, labels=None):
            points = [(float(p[0]), float(p[1]), p[2] if len(p) > 2 else None)
                      for p in r.get("val_curve") or []]  # fmt: skip
            if not points:
                continue
            last = points[-1][2]
            start = max((t for t, _, s in points if s != last), default=0.0)
            out[arm] = [(t - start, v) for t, v, s in points if s == last]
    return out


def measure_evidence(
    rows: Sequence[Row],
    directions: Sequence[str],
    margin: float,
    tokens: int,
    base_heldout: Sequence[float] | None,
    seed: int = 0,
) -> list[ev.Evidence]:
    """One Evidence per direction in ``directions`` (see ``report_plan`` for the runs)."""
    out: list[ev.Evidence] = []
    sft_all = _select(rows, "sft_only", labels=None)
    it_all = _select(rows, "it_start", labels=None, tokens=tokens)
    if "label_efficiency" in directions:
        by_labels: dict[int | str, tuple[Any, Any]] = {}
        for n in sorted({r["labels"] for r in rows if r["arm"] == "it_start" and r["labels"]}):
            by_labels[n] = (
                _matrix(_select(rows, "it_start", labels=n)),
                _matrix(_select(rows, "base_start", labels=n)),
            )
        if it_all and sft_all:
            by_labels["all"] = (_matrix(it_all), _matrix(sft_all))
        out.append(ev.label_efficiency(by_labels, margin, seed=seed))
    if "convergence" in directions:
        budgets = sorted(
            {r["tokens"] for r in rows if r["arm"] == "it_start" and r["labels"] is None}
        )
        by_tokens = {
            t: (
                _matrix(_select(rows, "it_start", labels=None, tokens=t)),
                _matrix(
                    sft_all if t == tokens else _select(rows, "base_start", labels=None, tokens=t)
                ),
            )
            for t in budgets
        }
        out.append(ev.convergence({t: m for t, m in by_tokens.items() if all(m)}, margin,
                                  seed=seed))  # fmt: skip
    if "replay_forgetting" in directions:
        by_replay: dict[float, list[Row]] = {}
        for r in rows:
            if r["arm"] == "replay" and r.get("forgetting_rows"):
                by_replay.setdefault(float(r["variant"].split()[-1]), []).append(r)
        out.append(
            ev.replay_forgetting(
                {k: _matrix(v, "forgetting_rows") for k, v in by_replay.items()}, margin, seed=seed
            )
        )
    if "heldout_clusters" in directions:
        it_model = _matrix(_select(rows, "instruction_only", labels=None), "heldout_rows")
        out.append(ev.heldout_clusters(it_model or None, base_heldout or None, margin, seed=seed))
    if "lora_vs_full" in directions:
        out.append(_lora_vs_full(rows, margin, seed))
    return out


def _lora_vs_full(rows: Sequence[Row], margin: float, seed: int) -> ev.Evidence:
    other = _select(rows, "other_method")
    hybrid = _select(rows, "best_hybrid", labels=None)
    if not other or not hybrid:
        return ev.lora_vs_full([], [], [], [], margin, seed=seed)  # not measured
    lora, full = (other, hybrid) if other[0]["variant"] == "lora" else (hybrid, other)
    return ev.lora_vs_full(
        _matrix(full), _matrix(lora), _matrix(full, "forgetting_rows"),
        _matrix(lora, "forgetting_rows"), margin, seed=seed,
    )  # fmt: skip
