"""A job's named sources read as examples: its eval splits, its training rows, any one source.

Every stage after training (evaluation, the leakage shield, the data catalog, the sweep's report)
reads the spec's sources the same way, validated like training data, through these three.
"""

from __future__ import annotations

from hybridft.data.reader import read_examples
from hybridft.data.records import Example
from hybridft.specs import DataSpec, JobSpec


def read_source(data: DataSpec, name: str, paths: list[str]) -> list[Example]:
    """The rows of ``paths`` read as source ``name`` (its format and labels)."""
    source = data.sources[name]
    return list(read_examples(paths, fmt=source.format, source=name, labels=source.labels))


def load_eval_sets(data: DataSpec) -> dict[str, list[Example]]:
    """The held-out split of each source named under ``data.eval``, validated like training data."""
    return {name: read_source(data, name, paths) for name, paths in data.eval.items()}


def training_examples(spec: JobSpec) -> list[Example]:
    """Every row of every source a stage trains on (weight > 0): what the leakage shield checks."""
    used = {m.source for stage in spec.stages for m in stage.mix if m.weight > 0}
    out: list[Example] = []
    for name in sorted(used):
        out += read_source(spec.data, name, spec.data.sources[name].paths)
    return out
