"""``evaluate.run``: score a model directory on held-out splits, per task, into ``eval.json``."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from hybridft import atomic
from hybridft.data.records import Example
from hybridft.evaluate import calibration as c
from hybridft.evaluate.generate import chat_prompt, generate_answers
from hybridft.evaluate.leakage import check_example_leakage
from hybridft.evaluate.metrics import exact_match, label_match, token_f1
from hybridft.evaluate.scoring import label_end_of, label_logprobs, rephrase
from hybridft.model.device import load_model_on, resolve_device
from hybridft.model.hf import load_tokenizer


@dataclass
class TaskScore:
    n: int
    exact_match: float
    f1: float
    accuracy: float | None  # label accuracy of the generated answer, for labelled tasks
    # Label probabilities (classification): raw and temperature-scaled ECE, Brier, NLL, ...
    calibration: dict[str, Any] | None = None
    # Label accuracy per rewording of the prompt (eval.phrasings) and its spread.
    robustness: dict[str, Any] | None = None
    # Score per natural phrasing of the rows (meta.phrasing), held-out phrasing included.
    by_phrasing: dict[str, float] | None = None
    # Clean vs dirty score under the leakage shield.
    leakage: dict[str, Any] | None = None
    # Per row, in eval order: label accuracy (labelled tasks) or exact match; what a report's
    # bootstrap resamples.
    per_example: list[float] = field(default_factory=list, repr=False)
    # Per row (classification): the calibrated probability of the gold label, a continuous score
    # that still separates models while their accuracy is near 0.
    per_example_prob: list[float] = field(default_factory=list, repr=False)
    # The rows' own task name (``task`` field) when they share one: what the task graph knows.
    task: str | None = None

    @property
    def score(self) -> float:
        return self.accuracy if self.accuracy is not None else self.exact_match


@dataclass
class EvalResult:
    model_dir: str
    tasks: dict[str, TaskScore]
    examples_per_s: float
    samples: dict[str, list[dict[str, str]]] = field(default_factory=dict)
    leakage: dict[str, Any] | None = None  # the shield's summary over every eval example
    graph: dict[str, Any] | None = None  # held-out clusters, forgetting (evaluate.job fills it)
    artifacts: dict[str, str] = field(default_factory=dict)  # name -> file (PNGs, model-index)

    @property
    def headline(self) -> float:
        """Mean over tasks of label accuracy (or exact match where a task has no labels)."""
        vals = [t.score for t in self.tasks.values()]
        return sum(vals) / len(vals) if vals else 0.0

    def flat_metrics(self, prefix: str = "eval") -> dict[str, float]:
        out = {f"{prefix}/score": self.headline, f"{prefix}/examples_per_s": self.examples_per_s}
        calibrated: dict[str, list[float]] = {}
        for name, t in self.tasks.items():
            out[f"{prefix}/{name}/exact_match"] = t.exact_match
            out[f"{prefix}/{name}/f1"] = t.f1
            if t.accuracy is not None:
                out[f"{prefix}/{name}/accuracy"] = t.accuracy
            for key, value in (t.calibration or {}).items():
                if isinstance(value, int | float) and not isinstance(value, bool):
                    out[f"{prefix}/{name}/{key}"] = float(value)
                    calibrated.setdefault(key, []).append(float(value))
            if t.robustness:
                out[f"{prefix}/{name}/robustness_spread"] = t.robustness["spread"]
            if t.leakage and t.leakage.get("clean") is not None:
                out[f"{prefix}/{name}/score_clean"] = t.leakage["clean"]
        for key in ("ece", "ece_quantile", "ece_raw", "brier", "nll"):
            if key in calibrated:
                out[f"{prefix}/{key}"] = sum(calibrated[key]) / len(calibrated[key])
        spreads = [t.robustness["spread"] for t in self.tasks.values() if t.robustness]
        if spreads:
            out[f"{prefix}/robustness_spread"] = max(spreads)
        if self.leakage:
            out[f"{prefix}/contamination"] = self.leakage["contamination"]
            out[f"{prefix}/contamination_all"] = self.leakage["contamination_all"]
            if self.leakage.get("score_clean") is not None:
                out[f"{prefix}/score_clean"] = self.leakage["score_clean"]
        for key in ("heldout_score", "forgetting"):
            if self.graph and self.graph.get(key) is not None:
                out[f"{prefix}/{key}"] = float(self.graph[key])
        return out

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "headline": self.headline}


def score_task(examples: list[Example], answers: list[str]) -> TaskScore:
    labelled = [e.label is not None for e in examples]
    em = [exact_match(a, e.completion) for a, e in zip(answers, examples, strict=True)]
    f1 = [token_f1(a, e.completion) for a, e in zip(answers, examples, strict=True)]
    n = len(examples)
    if n and all(labelled):
        per = [label_match(a, e.label or "") for a, e in zip(answers, examples, strict=True)]
        accuracy: float | None = sum(per) / n
    else:
        per, accuracy = em, None
    return TaskScore(
        n=n,
        exact_match=sum(em) / n if n else 0.0,
        f1=sum(f1) / n if n else 0.0,
        accuracy=accuracy,
        per_example=per,
    )


def task_groups(
    eval_sets: dict[str, list[Example]], max_examples: int
) -> dict[str, tuple[str, list[Example]]]:
    """Scored tasks -> (eval source, examples): a source holding several tasks (an instruction
    suite) is scored per task (the rows' ``task``), each capped at ``max_examples``."""
    out: dict[str, tuple[str, list[Example]]] = {}
    for source, examples in eval_sets.items():
        names = {e.task for e in examples}
        if len(names) <= 1:
            out[source] = (source, examples[:max_examples])
            continue
        for task in sorted(n or source for n in names):
            rows = [e for e in examples if (e.task or source) == task]
            out[task] = (source, rows[:max_examples])
    return out


def evaluate_model(
    model_dir: str | Path,
    eval_sets: dict[str, list[Example]],
    max_examples: int = 200,
    max_new_tokens: int = 24,
    on_progress: Any = None,
    *,
    labels: dict[str, list[str]] | None = None,
    calibration_sets: dict[str, list[Example]] | None = None,
    phrasings: list[str] | None = None,
    train_examples: list[Example] | None = None,
    artifacts_dir: str | Path | None = None,
    n_bins: int = 15,
    target_sources: set[str] | None = None,
    label_probs: bool = True,
    device: str = "auto",
) -> EvalResult:
    """Score a model on held-out examples, per task.

    Every task: greedy answers scored by exact match, token F1 and (labelled rows) label accuracy.
    Classification tasks (every row labelled, >= 2 labels) also get label probabilities from
    label-token log-probs, ECE (equal-width and equal-mass bins), Brier and NLL, raw and after a
    temperature fitted on ``calibration_sets`` (when given), a reliability PNG, and robustness:
    label accuracy under each of ``phrasings``. With ``train_examples`` the leakage shield runs
    first and every task reports its clean and dirty scores; ``contamination`` (the figure a
    policy gates on) covers the eval rows of ``target_sources`` (all sources when None), and
    ``contamination_all`` every eval row, diagnostic instruction suites included.

    ``device``: where the model runs (``model.device.resolve_device``: ``"auto"`` is CUDA when
    torch sees a GPU, else the CPU); bfloat16 weights on CUDA, float32 on CPU.
    """
    import torch

    where = resolve_device(device)  # a bad device fails before anything loads
    torch.manual_seed(0)
    tokenizer = load_tokenizer(model_dir)
    model = load_model_on(model_dir, where)
    tasks: dict[str, TaskScore] = {}
    samples: dict[str, list[dict[str, str]]] = {}
    artifacts: dict[str, str] = {}
    groups = task_groups(eval_sets, max_examples)
    gen_s, total = 0.0, 0
    for name, (source, subset) in groups.items():
        prompts = [chat_prompt(tokenizer, e) for e in subset]
        t0 = time.perf_counter()
        answers = generate_answers(
            model, tokenizer, prompts, max_new_tokens=max_new_tokens, on_batch=on_progress
        )
        gen_s += time.perf_counter() - t0
        tasks[name] = score_task(subset, answers)
        names = {e.task for e in subset}
        tasks[name].task = names.pop() if len(names) == 1 else None
        samples[name] = [
            {"prompt": e.prompt_messages[-1].content, "gold": e.completion, "answer": a}
            for e, a in list(zip(subset, answers, strict=True))[:5]
        ]
        total += len(subset)
        tasks[name].by_phrasing = _by_phrasing(subset, tasks[name].per_example)
        candidates = _candidates(subset, (labels or {}).get(source), calibration_sets, source)
        if candidates and label_probs:
            cal = [
                e
                for e in (calibration_sets or {}).get(source, [])
                if e.task == subset[0].task and e.label in candidates
            ][:max_examples]
            png = Path(artifacts_dir) / f"reliability_{name}.png" if artifacts_dir else None
            calib, robust = _classification(
                model, tokenizer, subset, candidates, cal, phrasings, n_bins, png
            )
            tasks[name].calibration, tasks[name].robustness = calib, robust
            tasks[name].per_example_prob = calib.pop("gold_prob")
            if png is not None:
                artifacts[f"reliability_{name}"] = str(png)
        elif (by_phrasing := tasks[name].by_phrasing) and len(by_phrasing) >= 3:
            values = list(by_phrasing.values())
            tasks[name].robustness = {
                "by": "natural phrasings (meta.phrasing)",
                "scores": dict(by_phrasing),
                "spread": max(values) - min(values),
            }
    rate = total / max(gen_s, 1e-9)  # examples answered per second of generation
    result = EvalResult(str(model_dir), tasks, rate, samples, artifacts=artifacts)
    if train_examples is not None:
        result.leakage = _shield(train_examples, groups, tasks, target_sources)
    return result


def _by_phrasing(examples: list[Example], scores: list[float]) -> dict[str, float] | None:
    groups: dict[str, list[float]] = {}
    for e, s in zip(examples, scores, strict=True):
        if "phrasing" in e.meta:
            held = e.meta.get("phrasing_held_out") == "true"
            groups.setdefault(e.meta["phrasing"] + (" (held out)" if held else ""), []).append(s)
    if not groups:
        return None
    return {k: sum(v) / len(v) for k, v in sorted(groups.items())}


def _candidates(
    subset: list[Example],
    declared: list[str] | None,
    calibration_sets: dict[str, list[Example]] | None,
    source: str,
) -> list[str] | None:
    """The label set of a classification task, or None when the task is not one."""
    if not subset or any(e.label is None for e in subset):
        return None
    seen = {e.label for e in subset if e.label is not None}
    seen |= {e.label for e in (calibration_sets or {}).get(source, []) if e.label is not None}
    labels = list(declared or [])
    labels += sorted(seen - set(labels))
    return labels if len(labels) >= 2 else None


def _classification(
    model: Any,
    tokenizer: Any,
    subset: list[Example],
    candidates: list[str],
    cal: list[Example],
    phrasings: list[str] | None,
    n_bins: int,
    png: Path | None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    import numpy as np

    index = {label: i for i, label in enumerate(candidates)}
    y = np.array([index[e.label] for e in subset if e.label is not None])
    lp = label_logprobs(model, tokenizer, subset, candidates)
    raw = c.label_probabilities(lp)
    ends = {label_end_of(e) for e in subset}
    out: dict[str, Any] = {
        "labels": candidates,
        # what ends the label in this task's answers: serving scores its labels the same way
        # (one value when every row agrees; otherwise serving keeps its default)
        "label_end": ends.pop() if len(ends) == 1 else None,
        "prob_accuracy": float((raw.argmax(1) == y).mean()),
        "ece_raw": c.ece(raw, y, n_bins),
        "ece_quantile_raw": c.ece(raw, y, n_bins, "quantile"),
        "brier_raw": c.brier(raw, y),
        "nll_raw": c.nll(raw, y),
    }
    probs = raw
    if cal:
        y_val = np.array([index[e.label] for e in cal if e.label is not None])
        temperature = c.fit_temperature(label_logprobs(model, tokenizer, cal, candidates), y_val)
        probs = c.apply_temperature(lp, temperature)
        out.update(temperature=temperature, n_calibration=len(cal))
    out.update(
        gold_prob=[float(p) for p in probs[np.arange(len(y)), y]],
        ece=c.ece(probs, y, n_bins),
        ece_quantile=c.ece(probs, y, n_bins, "quantile"),
        brier=c.brier(probs, y),
        nll=c.nll(probs, y),
        calibrated=bool(cal),
    )
    if png is not None:
        conf, acc, count = c.reliability(probs, y, n_bins)
        state = f"T={out['temperature']:.2f}" if cal else "uncalibrated"
        c.reliability_png(conf, acc, count, png, title=f"{png.stem} ({state})")
    scores = {}
    for k, template in enumerate(phrasings or ["{prompt}"]):
        if template == "{prompt}":
            lp_k = lp
        else:
            lp_k = label_logprobs(
                model, tokenizer, [rephrase(e, template) for e in subset], candidates
            )
        scores[f"phrasing_{k}"] = float((lp_k.argmax(1) == y).mean())
    values = list(scores.values())
    robust = {
        "by": "eval.phrasings (label-probability accuracy)",
        "scores": scores,
        "spread": max(values) - min(values),
    }
    return out, robust


def _shield(
    train: list[Example],
    groups: dict[str, tuple[str, list[Example]]],
    tasks: dict[str, TaskScore],
    targets: set[str] | None,
) -> dict[str, Any]:
    flat = [e for _, rows in groups.values() for e in rows]
    report = check_example_leakage(train, flat)
    dirty = set(report.dirty)
    offset, clean_scores = 0, []
    for name, (_, rows) in groups.items():
        n = len(rows)
        local = [i - offset for i in report.dirty if offset <= i < offset + n]
        per = tasks[name].per_example
        mask = [i + offset not in dirty for i in range(n)]
        clean_scores += [s for s, ok in zip(per, mask, strict=True) if ok]
        tasks[name].leakage = {
            **_split(per, mask),
            "dirty_ids": [rows[i].id or f"{rows[i].file}:{rows[i].line}" for i in local][:50],
        }
        offset += n
    summary = report.to_json()
    target_n = target_dirty = 0
    for name, (source, rows) in groups.items():
        if targets is None or source in targets:
            target_n += len(rows)
            target_dirty += (tasks[name].leakage or {}).get("n_dirty", 0)
    return {
        # the release metric: eval rows of the target sources (every source when not told)
        "contamination": target_dirty / target_n if target_n else 0.0,
        "target_sources": sorted(targets) if targets is not None else None,
        "contamination_all": report.contamination_rate,
        "n_eval": report.n_eval,
        "n_train": report.n_train,
        "n_dirty": len(report.dirty),
        "counts": summary["counts"],
        "config": summary["config"],
        "score_clean": sum(clean_scores) / len(clean_scores) if clean_scores else None,
    }


def _split(per: list[float], mask: list[bool]) -> dict[str, Any]:
    clean = [s for s, ok in zip(per, mask, strict=True) if ok]
    dirty = [s for s, ok in zip(per, mask, strict=True) if not ok]
    return {
        "all": sum(per) / len(per) if per else None,
        "clean": sum(clean) / len(clean) if clean else None,
        "dirty": sum(dirty) / len(dirty) if dirty else None,
        "n_clean": len(clean),
        "n_dirty": len(dirty),
    }


def write_eval(result: EvalResult, path: str | Path) -> Path:
    path = Path(path)
    atomic.write_json(path, result.to_json())  # a report resumes from it: whole or absent
    return path
