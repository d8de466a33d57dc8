"""Eval results as a Hugging Face ``model-index`` (the model card's YAML metadata block).

One result per scored task: its type (text-classification for labelled tasks, text-generation
otherwise), the dataset named by its source and fingerprint, and every per-task metric.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml


def task_metrics(metrics: dict[str, float]) -> dict[str, dict[str, float]]:
    """``eval/<task>/<metric>`` run metrics -> ``{task: {metric: value}}``."""
    out: dict[str, dict[str, float]] = {}
    for key, value in sorted(metrics.items()):
        parts = key.split("/")
        if len(parts) == 3 and parts[0] == "eval":
            out.setdefault(parts[1], {})[parts[2]] = value
    return out


def model_index(
    model_name: str,
    metrics: dict[str, float],
    fingerprints: dict[str, str] | None = None,
    split: str = "test",
) -> list[dict[str, Any]]:
    """The ``model-index`` list for flat ``eval/<task>/<metric>`` metrics."""
    fingerprints = fingerprints or {}
    results = []
    for task, values in task_metrics(metrics).items():
        fp = fingerprints.get(task)
        results.append(
            {
                "task": {
                    "type": "text-classification" if "accuracy" in values else "text-generation",
                    "name": task,
                },
                "dataset": {"name": task, "type": f"{task}@{fp}" if fp else task, "split": split},
                "metrics": [
                    {"type": metric, "value": round(value, 6), "name": f"{task} {metric}"}
                    for metric, value in values.items()
                ],
            }
        )
    return [{"name": model_name, "results": results}] if results else []


def write_model_index(
    path: str | Path,
    model_name: str,
    metrics: dict[str, float],
    fingerprints: dict[str, str] | None = None,
) -> Path:
    """Write ``{"model-index": [...]}`` as YAML (paste-able into a README's front matter)."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    doc = {"model-index": model_index(model_name, metrics, fingerprints)}
    out.write_text(yaml.safe_dump(doc, sort_keys=False, width=100), encoding="utf-8")
    return out
