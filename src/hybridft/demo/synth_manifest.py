"""The demo generator's manifest entries: label balance, per-task entries and file digests."""

from __future__ import annotations

import hashlib
from collections import Counter
from pathlib import Path
from typing import Any

from hybridft.demo.synth_instructions import INSTRUCTION_TASKS

Row = dict[str, Any]


def _labels_of(rows: list[Row]) -> list[str]:
    """Gold labels of task rows, or the outputs of a closed-set instruction task."""
    if rows and "label" in rows[0]:
        return [r["label"] for r in rows]
    task = next((t for t in INSTRUCTION_TASKS if rows and t.name == rows[0]["task"]), None)
    if task is None or not task.labels:
        return []
    return [r["output"] if "output" in r else r["messages"][-1]["content"] for r in rows]


def _shares(values: list[str]) -> dict[str, float]:
    counts = Counter(values)
    return {k: round(counts[k] / len(values), 4) for k in sorted(counts)}


def label_shares(by_split: dict[str, list[Row]]) -> dict[str, Any]:
    """Label shares over all splits; for "team urgency"-style labels, each part's shares too."""
    labels = _labels_of([r for rows in by_split.values() for r in rows])
    if not labels:
        return {}
    out: dict[str, Any] = {"labels": _shares(labels)}
    parts = {len(label.split()) for label in labels}
    if parts != {1} and len(parts) == 1:
        out["label_parts"] = [
            _shares([lab.split()[i] for lab in labels]) for i in range(max(parts))
        ]
    return out


def task_entry(
    name: str, kind: str, by_split: dict[str, list[Row]], root: Path,
    paths: dict[str, Path], balance: dict[str, Any],
) -> dict[str, Any]:  # fmt: skip
    """One task's manifest entry: format, rows and files per split, balance, noise or phrasings."""
    first = by_split["train"][0]
    entry: dict[str, Any] = {
        "kind": kind,
        "format": "task"
        if "prompt" in first
        else "instruction"
        if "instruction" in first
        else "chat",
        "rows": {split: len(rows) for split, rows in by_split.items()},
        "files": {split: p.relative_to(root).as_posix() for split, p in paths.items()},
        **balance,
    }
    if kind == "sft":
        entry["label_noise_rows"] = sum("label_noise" in r["meta"] for r in by_split["train"])
    else:
        task = next(t for t in INSTRUCTION_TASKS if t.name == name)
        entry["phrasings"] = len(task.phrasings)
        entry["held_out_phrasing"] = len(task.phrasings) - 1
    return entry


def file_digests(root: Path, files: list[Path]) -> dict[str, dict[str, Any]]:
    """Rows (JSONL) and sha256 of each file, keyed by its path relative to ``root``."""
    out = {}
    for path in files:
        data = path.read_bytes()
        out[path.relative_to(root).as_posix()] = {
            "rows": data.count(b"\n") if path.suffix == ".jsonl" else None,
            "sha256": hashlib.sha256(data).hexdigest(),
        }
    return out
