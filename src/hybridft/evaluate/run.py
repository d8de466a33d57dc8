"""``evaluate.run``: score a model directory on held-out splits, per task, into ``eval.json``."""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from hybridft.data.records import Example
from hybridft.evaluate.generate import chat_prompt, generate_answers
from hybridft.evaluate.metrics import exact_match, label_match, token_f1


@dataclass
class TaskScore:
    n: int
    exact_match: float
    f1: float
    accuracy: float | None  # label accuracy, for labelled tasks


@dataclass
class EvalResult:
    model_dir: str
    tasks: dict[str, TaskScore]
    examples_per_s: float
    samples: dict[str, list[dict[str, str]]] = field(default_factory=dict)

    @property
    def headline(self) -> float:
        """Mean over tasks of label accuracy (or exact match where a task has no labels)."""
        vals = [
            t.accuracy if t.accuracy is not None else t.exact_match for t in self.tasks.values()
        ]
        return sum(vals) / len(vals) if vals else 0.0

    def flat_metrics(self, prefix: str = "eval") -> dict[str, float]:
        out = {f"{prefix}/score": self.headline, f"{prefix}/examples_per_s": self.examples_per_s}
        for name, t in self.tasks.items():
            out[f"{prefix}/{name}/exact_match"] = t.exact_match
            out[f"{prefix}/{name}/f1"] = t.f1
            if t.accuracy is not None:
                out[f"{prefix}/{name}/accuracy"] = t.accuracy
        return out

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "headline": self.headline}


def score_task(examples: list[Example], answers: list[str]) -> TaskScore:
    labelled = [e.label is not None for e in examples]
    em = [exact_match(a, e.completion) for a, e in zip(answers, examples, strict=True)]
    f1 = [token_f1(a, e.completion) for a, e in zip(answers, examples, strict=True)]
    acc = [
        label_match(a, e.label)
        for a, e in zip(answers, examples, strict=True)
        if e.label is not None
    ]
    n = len(examples)
    return TaskScore(
        n=n,
        exact_match=sum(em) / n if n else 0.0,
        f1=sum(f1) / n if n else 0.0,
        accuracy=(sum(acc) / len(acc)) if acc and all(labelled) else None,
    )


def evaluate_model(
    model_dir: str | Path,
    eval_sets: dict[str, list[Example]],
    max_examples: int = 200,
    max_new_tokens: int = 24,
    on_progress: Any = None,
) -> EvalResult:
    """Greedy-generate an answer for each held-out example and score it against the gold one."""
    import torch

    from hybridft.model.hf import load_model, load_tokenizer

    torch.manual_seed(0)
    tokenizer = load_tokenizer(model_dir)
    model = load_model(model_dir).eval()
    tasks: dict[str, TaskScore] = {}
    samples: dict[str, list[dict[str, str]]] = {}
    t0, total = time.perf_counter(), 0
    for name, examples in eval_sets.items():
        subset = examples[:max_examples]
        prompts = [chat_prompt(tokenizer, e) for e in subset]
        answers = generate_answers(
            model, tokenizer, prompts, max_new_tokens=max_new_tokens, on_batch=on_progress
        )
        tasks[name] = score_task(subset, answers)
        samples[name] = [
            {"prompt": e.prompt_messages[-1].content, "gold": e.completion, "answer": a}
            for e, a in list(zip(subset, answers, strict=True))[:5]
        ]
        total += len(subset)
    rate = total / max(time.perf_counter() - t0, 1e-9)
    return EvalResult(str(model_dir), tasks, rate, samples)


def write_eval(result: EvalResult, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result.to_json(), indent=2))
    return path
