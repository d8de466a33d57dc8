"""Driver-side data preparation: read, validate, render and fingerprint each source once, then plan
every stage's packed rows. Runs before any worker starts, so bad data fails fast and cheaply."""

from __future__ import annotations

import json
import os
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hybridft.data.fingerprint import fingerprint_examples
from hybridft.data.reader import expand_paths, read_examples
from hybridft.data.render import render_examples
from hybridft.specs import DataSpec, JobSpec, StageSpec, TrainingSpec
from hybridft.train.mixture import RenderedSource, StagePlan, plan_stage
from hybridft.train.packing import PackedRows, pack_rows
from hybridft.train.plan import ValidationPlan


@dataclass
class PreparedData:
    sources: dict[str, RenderedSource]
    stages: list[StagePlan]
    read_reports: dict[str, Any]


# Rendered sources kept in this process, by everything the rendering depends on (the source's
# spec, the data-level rendering settings, the tokenizer and each file's path, size and mtime):
# a process that prepares run after run (sweep trials) renders each source once.
_RENDERED: OrderedDict[str, tuple[RenderedSource, Any]] = OrderedDict()
RENDER_CACHE_SIZE = 16


def _render_key(name: str, data: DataSpec, tokenizer: Any) -> str:
    spec = data.sources[name]
    files = []
    for path in expand_paths(spec.paths):
        st = os.stat(path)
        files.append((os.path.abspath(path), st.st_size, st.st_mtime_ns))
    settings = data.model_dump(include={"on_bad_rows", "rejects_dir", "loss", "max_len"})
    tokenizer_id = [str(getattr(tokenizer, "name_or_path", "")), len(tokenizer)]
    key = [name, spec.model_dump(mode="json"), settings, files, *tokenizer_id]
    return json.dumps(key, sort_keys=True, default=str)


def render_source(name: str, data: DataSpec, tokenizer: Any) -> tuple[RenderedSource, Any]:
    """Read + validate + render + fingerprint one source (examples are held once, in memory);
    a source rendered before in this process, from unchanged files, comes from the cache."""
    key = _render_key(name, data, tokenizer)
    if key in _RENDERED:
        _RENDERED.move_to_end(key)
        return _RENDERED[key]
    rendered = _render_source(name, data, tokenizer)
    _RENDERED[key] = rendered
    while len(_RENDERED) > RENDER_CACHE_SIZE:
        _RENDERED.popitem(last=False)
    return rendered


def _render_source(name: str, data: DataSpec, tokenizer: Any) -> tuple[RenderedSource, Any]:
    spec = data.sources[name]
    stream = read_examples(
        spec.paths,
        fmt=spec.format,
        source=name,
        labels=spec.labels,
        on_bad_rows=data.on_bad_rows,
        rejects_path=str(Path(data.rejects_dir) / f"{name}.rejects.jsonl"),
    )
    examples = list(stream)
    ids, masks, truncated = [], [], 0
    for item in render_examples(examples, tokenizer, loss=data.loss, max_len=data.max_len):
        ids.append(np.asarray(item.input_ids, dtype=np.int32))
        masks.append(np.asarray(item.loss_mask, dtype=np.int8))
        truncated += int(item.truncated)
    fingerprint = fingerprint_examples(examples, tokenizer, data.loss)
    return RenderedSource(name, ids, masks, fingerprint, truncated), stream.report


def prepare(
    data: DataSpec,
    stages: list[StageSpec],
    training: TrainingSpec,
    tokenizer: Any,
    world: int,
    seed: int,
) -> PreparedData:
    """Render every source a stage uses and plan each stage's rows."""
    used = sorted({m.source for st in stages for m in st.mix})
    sources: dict[str, RenderedSource] = {}
    reports: dict[str, Any] = {}
    for name in used:
        sources[name], reports[name] = render_source(name, data, tokenizer)
    plans = []
    for i, stage in enumerate(stages):
        plans.append(
            plan_stage(
                [sources[m.source] for m in stage.mix],
                [m.weight for m in stage.mix],
                stage.mix_by,
                length=data.max_len,
                pad_id=tokenizer.pad_token_id,
                rows_per_step=world * training.batch_size * training.grad_accum,
                steps=stage.budget.steps,
                tokens=stage.budget.tokens,
                seed=seed * 1000 + i,
                packing=training.packing,
            )
        )
    return PreparedData(sources, plans, reports)


def write_mixture_report(prepared: PreparedData, stages: list[StageSpec], out: Path) -> Path:
    """``mixture.json``: per stage and source, requested vs realised shares and token counts."""
    report = {
        stage.name: {"mix_by": stage.mix_by, "steps": plan.steps, "sources": plan.realised}
        for stage, plan in zip(stages, prepared.stages, strict=True)
    }
    out.write_text(json.dumps(report, indent=2))
    return out


def validation_rows(spec: JobSpec, tokenizer: Any) -> ValidationPlan | None:
    """``data.validation`` rendered and packed once on the driver, for the loop's validation loss.

    Rows are padded with empty rows (no loss) to a multiple of the worker count, so every worker
    runs the same number of forwards (ZeRO-3 gathers parameters in each).
    """
    import ray  # heavy: the driver only

    if not spec.data.validation:
        return None
    names = sorted(spec.data.validation)
    ids: list[Any] = []
    masks: list[Any] = []
    source_ids: list[int] = []
    for i, name in enumerate(names):
        key = f"{name}.validation"  # its own rejects file and row labels
        source = spec.data.sources[name].model_copy(update={"paths": spec.data.validation[name]})
        rendered, _ = render_source(
            key, spec.data.model_copy(update={"sources": {key: source}}), tokenizer
        )
        ids += rendered.ids
        masks += rendered.masks
        source_ids += [i] * len(rendered.ids)
    pad_id, length = tokenizer.pad_token_id, spec.data.max_len
    rows = pack_rows(ids, masks, source_ids, length, pad_id)
    n = -len(rows) % spec.scaling.num_workers
    empty = PackedRows(
        np.full((n, length), pad_id, dtype=np.int32),
        np.tile(np.arange(length, dtype=np.int32), (n, 1)),
        np.zeros((n, length), dtype=np.int8),
        np.full((n, length), -1, dtype=np.int8),
        np.zeros(n, dtype=np.int32),
    )
    rows = PackedRows(
        *(
            np.concatenate([getattr(rows, f), getattr(empty, f)])
            for f in PackedRows.__dataclass_fields__
        )
    )
    every = spec.training.validate_every or spec.training.checkpoint_every
    return ValidationPlan(rows=ray.put(rows), sources=tuple(names), every=every)
