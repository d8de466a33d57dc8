"""Deterministic demo data: three SFT tasks, an instruction suite, a task graph and a manifest.

``synthesize(out_dir, seed)`` writes, byte for byte the same for the same seed and sizes::

    sft/{it_desk,support,compliance}/{train,validation,test}.jsonl      task format
    instruction/<task>/{train,validation,test}.jsonl                    instruction or chat format
    task_graph.yaml                                                     clusters, skills, relations
    manifest.json                                                       counts, balance, sha256

Each task draws from its own ``random.Random(seed + offset)``, the offset a sha256 of the task name
(``hash()`` is salted per process). Examples are drawn, de-duplicated on their normalised content,
then split, so no prompt appears in two splits; ``check_disjoint`` re-checks the written files.
Label noise touches train rows only, so validation and test measure the clean rule.

SFT validation and test rows are *decontaminated*: templated text makes near-duplicates common
(about half of a naive test split overlaps train under the GPT-3 / PaLM / MinHash rules), so each
SFT task draws extra held-out candidates and keeps, in draw order, only those the leakage shield
(``hybridft.evaluate.leakage``, the same rules the eval gate applies) finds clean against every
train row of every task. A held-out score then measures generalisation, not recall.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import yaml

from hybridft.demo.synth_held_out import decontaminated_held_out
from hybridft.demo.synth_instruction_drafts import InstructionDraft
from hybridft.demo.synth_instructions import INSTRUCTION_TASKS, InstructionTask
from hybridft.demo.synth_manifest import file_digests, label_shares, task_entry
from hybridft.demo.synth_sft import SFT_TASKS, SftDraft, SftTask
from hybridft.demo.synth_vocab import fill
from hybridft.errors import UserError

# The name manifests and the data catalog record: the module's path before the demo left data/
# (issue 19), kept so data folders and catalog entries made before the move stay byte-identical.
GENERATOR = "hybridft.data.synth"
GENERATOR_VERSION = "synth-2"
SPLITS = ("train", "validation", "test")
HELD_OUT_SHARE = (
    1 / 3
)  # of an instruction task's test rows, those worded with its held-out phrasing
HELD_OUT_CANDIDATES = 5  # SFT held-out candidates drawn per held-out row, before decontamination
_MAX_MISSES = 20_000  # consecutive duplicate draws before a task's content counts as exhausted

Draft = TypeVar("Draft", SftDraft, InstructionDraft)
Row = dict[str, Any]


@dataclass(frozen=True)
class SynthManifest:
    """What ``synthesize`` wrote. Paths are absolute; manifest.json holds them relative."""

    out_dir: Path
    seed: int
    version: str
    kinds: dict[str, str]  # task -> "sft" | "instruction"
    paths: dict[str, dict[str, Path]]  # task -> split -> file
    counts: dict[str, dict[str, int]]  # task -> split -> rows
    label_balance: dict[str, dict[str, float]]  # task -> label -> share of all its rows
    task_graph: Path
    manifest: Path

    def tasks(self, kind: str | None = None) -> list[str]:
        """Task names, all or of one kind ("sft" / "instruction"), in generation order."""
        return [name for name, k in self.kinds.items() if kind is None or k == kind]


def synthesize(
    out_dir: str | Path,
    seed: int = 0,
    n_train: int = 2000,
    n_validation: int = 200,
    n_test: int = 200,
    n_instruction_train: int = 600,
    n_instruction_validation: int = 60,
    n_instruction_test: int = 60,
    label_noise: float = 0.04,
) -> SynthManifest:
    """Write the demo data set under ``out_dir`` and return what was written.

    Args:
        out_dir: folder to write into (created; existing files of the same names are replaced).
        seed: the only source of randomness; the same seed and sizes give byte-identical files.
        n_train, n_validation, n_test: rows per split of each SFT task.
        n_instruction_train, n_instruction_validation, n_instruction_test: rows per split of
            each instruction task.
        label_noise: share of SFT train rows given a plausible wrong label (meta label_noise).

    Returns:
        The manifest: paths, row counts per task and split, label balance, seed, version.

    Raises:
        UserError: a bad argument, a task whose distinct examples run out before the sizes
            asked for, or (a generator bug) a prompt found in two splits.
    """
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise UserError(f"synth: seed: expected an integer, got {seed!r}")
    if not isinstance(label_noise, int | float) or not 0.0 <= label_noise <= 0.5:
        raise UserError(f"synth: label_noise: expected a share in [0, 0.5], got {label_noise!r}")
    sft_sizes = _sizes("n", n_train, n_validation, n_test)
    instruction_sizes = _sizes(
        "n_instruction", n_instruction_train, n_instruction_validation, n_instruction_test
    )
    root = Path(out_dir)
    rows: dict[str, dict[str, list[Row]]] = {}
    kinds: dict[str, str] = {}
    sft_draws: dict[str, tuple[list[SftDraft], random.Random]] = {}
    for task in SFT_TASKS:
        rng = task_rng(seed, task.name)
        held = sft_sizes[1] + sft_sizes[2]
        drafts = _draw_unique(
            task.name, task.make, _sft_key, rng, sft_sizes[0] + held, task.labels,
            lambda d: d.label, extra=held * (HELD_OUT_CANDIDATES - 1),
        )  # fmt: skip
        sft_draws[task.name] = (drafts, rng)
        rows[task.name] = _sft_rows(task, {"train": drafts[: sft_sizes[0]]}, rng, label_noise)
    for itask in INSTRUCTION_TASKS:
        rng = task_rng(seed, itask.name)
        instruction_drafts = _draw_unique(
            itask.name, itask.make, _content_key, rng, sum(instruction_sizes),
            itask.labels, lambda d: d.output,
        )  # fmt: skip
        splits = _split(instruction_drafts, instruction_sizes)
        rows[itask.name] = _instruction_rows(itask, splits, rng)
        kinds[itask.name] = "instruction"
    instruction_train = [
        r for name, by_split in rows.items() if name not in sft_draws for r in by_split["train"]
    ]
    train_rows = instruction_train + [r for t in SFT_TASKS for r in rows[t.name]["train"]]
    clean = decontaminated_held_out(sft_draws, sft_sizes, train_rows)
    for task in SFT_TASKS:
        rows[task.name].update(_sft_rows(task, clean[task.name], sft_draws[task.name][1], 0.0))
        kinds[task.name] = "sft"
    rows = {name: rows[name] for name in [t.name for t in SFT_TASKS] + list(rows)}

    paths = {
        name: _write_splits(root / kinds[name] / name, by_split) for name, by_split in rows.items()
    }
    graph_path = root / "task_graph.yaml"
    graph_path.write_text(
        f"# Generated by {GENERATOR}; `related` links instruction tasks to SFT tasks.\n"
        + yaml.safe_dump(task_graph(), sort_keys=False, width=100),
        encoding="utf-8",
    )
    problems = check_disjoint(root)
    if problems:
        more = f" (+{len(problems) - 1} more)" if len(problems) > 1 else ""
        raise UserError(f"synth: split check failed: {problems[0]}{more}")

    balance = {name: label_shares(by_split) for name, by_split in rows.items()}
    counts = {name: {s: len(r) for s, r in by_split.items()} for name, by_split in rows.items()}
    doc = {
        "generator": GENERATOR,
        "version": GENERATOR_VERSION,
        "seed": seed,
        "sizes": {
            "sft": dict(zip(SPLITS, sft_sizes, strict=True)),
            "instruction": dict(zip(SPLITS, instruction_sizes, strict=True)),
        },
        "label_noise": label_noise,
        "tasks": {
            name: task_entry(name, kinds[name], rows[name], root, paths[name], balance[name])
            for name in rows
        },
        "files": file_digests(
            root, [p for by_split in paths.values() for p in by_split.values()] + [graph_path]
        ),
    }
    manifest_path = root / "manifest.json"
    manifest_path.write_text(json.dumps(doc, indent=2, ensure_ascii=False) + "\n", "utf-8")
    labels = {name: b["labels"] for name, b in balance.items() if b}
    return SynthManifest(
        root, seed, GENERATOR_VERSION, kinds, paths, counts, labels, graph_path, manifest_path
    )


def check_disjoint(out_dir: str | Path) -> list[str]:
    """Problems with the split files under ``out_dir`` (an empty list means none).

    Reports every row whose normalised prompt text (lower case, whitespace collapsed) also appears
    in another split of the same task, rows that cannot be read, and missing split files.
    """
    root = Path(out_dir)
    task_dirs = sorted({p.parent for p in root.glob("*/*/train.jsonl")})
    if not task_dirs:
        return [f"{root}: no */*/train.jsonl split files found"]
    problems: list[str] = []
    for task_dir in task_dirs:
        first_seen: dict[str, tuple[str, str]] = {}  # prompt key -> (split, file:line)
        for split in SPLITS:
            path = task_dir / f"{split}.jsonl"
            if not path.is_file():
                problems.append(f"{path}: missing split file")
                continue
            with path.open(encoding="utf-8") as fh:
                for line_no, line in enumerate(fh, 1):
                    where = f"{path}:{line_no}"
                    try:
                        key = normalise(prompt_text(json.loads(line)))
                    except (ValueError, KeyError, TypeError, IndexError) as exc:
                        problems.append(f"{where}: unreadable row ({type(exc).__name__}: {exc})")
                        continue
                    other_split, other_where = first_seen.setdefault(key, (split, where))
                    if other_split != split:
                        problems.append(
                            f"{where}: prompt also in {other_split} ({other_where}): {key[:60]!r}"
                        )
    return problems


def prompt_text(row: Row) -> str:
    """The text a model is conditioned on, for any of the three record formats."""
    if "prompt" in row:
        return row["prompt"]
    if "instruction" in row:
        return f"{row['instruction']}\n{row.get('input', '')}"
    return "\n".join(m["content"] for m in row["messages"][:-1])


def normalise(text: str) -> str:
    return " ".join(text.lower().split())


def task_graph() -> dict[str, Any]:
    """Every task with its cluster, domain and skills; ``related`` links SFT <-> instruction."""
    related: dict[str, list[str]] = {t.name: [] for t in SFT_TASKS}
    for itask in INSTRUCTION_TASKS:
        for target in itask.related:
            related[target].append(itask.name)
    for itask in INSTRUCTION_TASKS:
        related[itask.name] = list(itask.related)
    kinds = [("sft", t) for t in SFT_TASKS] + [("instruction", t) for t in INSTRUCTION_TASKS]
    return {
        "tasks": {t.name: {"kind": kind, "cluster": t.cluster, "domain": t.domain,
                           "skills": list(t.skills), "related": related[t.name]}
                  for kind, t in kinds}
    }  # fmt: skip


def task_rng(seed: int, task: str) -> random.Random:
    """The task's own stream: adding a task or changing one task's sizes leaves the others."""
    offset = int.from_bytes(hashlib.sha256(task.encode()).digest()[:6], "big")
    return random.Random(seed + offset)


# --- generation steps ----------------------------------------------------------------------------


def _sizes(prefix: str, train: int, validation: int, test: int) -> tuple[int, int, int]:
    for split, value, least in (("train", train, 1), ("validation", validation, 0),
                                ("test", test, 0)):  # fmt: skip
        if not isinstance(value, int) or isinstance(value, bool) or value < least:
            raise UserError(
                f"synth: {prefix}_{split}: expected an integer >= {least}, got {value!r}"
            )
    return train, validation, test


def _sft_key(draft: SftDraft) -> str:
    return normalise(draft.prompt)


def _content_key(draft: InstructionDraft) -> str:
    # the content, before a phrasing is chosen: the same input is never in two splits, reworded
    return normalise("\x1f".join([draft.input, *(value for _, value in draft.slots)]))


def _draw_unique(
    name: str, make: Callable[[random.Random], Draft], key: Callable[[Draft], str],
    rng: random.Random, n: int, labels: tuple[str, ...] = (),
    label_of: Callable[[Draft], str] = lambda d: "", extra: int = 0,
) -> list[Draft]:  # fmt: skip
    """``n`` drafts with distinct keys, then up to ``extra`` more while the content lasts.

    With ``labels``, at most ceil((n + extra) / len(labels)) per label.
    """
    quota = -(-(n + extra) // len(labels)) if labels else n + extra
    per_label: Counter[str] = Counter()
    found: dict[str, Draft] = {}
    misses = 0
    while len(found) < n + extra:
        draft = make(rng)
        k = key(draft)
        if k not in found and per_label[label_of(draft)] < quota:
            found[k], misses = draft, 0
            per_label[label_of(draft)] += 1
            continue
        misses += 1
        if misses > _MAX_MISSES and len(found) >= n:
            break  # the optional extra draws stop where the content runs out
        if misses > _MAX_MISSES:
            raise UserError(
                f"synth: task {name}: only {len(found)} distinct examples found, {n} asked for; "
                "lower the split sizes"
            )
    return list(found.values())


def _split(drafts: list[Draft], sizes: tuple[int, int, int]) -> dict[str, list[Draft]]:
    a, b = sizes[0], sizes[0] + sizes[1]
    return dict(zip(SPLITS, (drafts[:a], drafts[a:b], drafts[b:]), strict=True))


def _sft_rows(
    task: SftTask, splits: dict[str, list[SftDraft]], rng: random.Random, label_noise: float
) -> dict[str, list[Row]]:
    out: dict[str, list[Row]] = {}
    for split, drafts in splits.items():
        rows = []
        for i, draft in enumerate(drafts):
            label, meta = draft.label, {"template": str(draft.template)}
            if split == "train" and label_noise > 0 and rng.random() < label_noise:
                wrong = task.mislabel(rng, draft.label)
                if wrong is not None:
                    label, meta = wrong, {**meta, "label_noise": "true"}
            rows.append({"prompt": draft.prompt, "completion": draft.completion(label),
                         "label": label, "id": f"{task.name}-{split}-{i:05d}",
                         "task": task.name, "meta": meta})  # fmt: skip
        out[split] = rows
    return out


def _instruction_rows(
    task: InstructionTask, splits: dict[str, list[InstructionDraft]], rng: random.Random
) -> dict[str, list[Row]]:
    held_out = len(task.phrasings) - 1
    out: dict[str, list[Row]] = {}
    for split, drafts in splits.items():
        rows = []
        for i, draft in enumerate(drafts):
            use_held_out = split == "test" and rng.random() < HELD_OUT_SHARE
            k = held_out if use_held_out else rng.randrange(held_out)
            row = _render_instruction(task, draft, k)
            meta = {"phrasing": str(k), "phrasing_held_out": "true" if use_held_out else "false"}
            row.update(id=f"{task.name}-{split}-{i:05d}", task=task.name, meta=meta)
            rows.append(row)
        out[split] = rows
    return out


def _render_instruction(task: InstructionTask, draft: InstructionDraft, k: int) -> Row:
    text = fill(task.phrasings[k], dict(draft.slots))
    if "{input}" in text:  # the phrasing inlines the input; the input field stays empty
        instruction, given = text.replace("{input}", draft.input), ""
    else:
        instruction, given = text, draft.input
    if task.system is None:
        return {"instruction": instruction, "input": given, "output": draft.output}
    user = f"{instruction}\n\n{given}" if given else instruction
    return {"messages": [{"role": "system", "content": task.system},
                         {"role": "user", "content": user},
                         {"role": "assistant", "content": draft.output}]}  # fmt: skip


def _write_splits(task_dir: Path, by_split: dict[str, list[Row]]) -> dict[str, Path]:
    task_dir.mkdir(parents=True, exist_ok=True)
    paths = {}
    for split, rows in by_split.items():
        path = task_dir / f"{split}.jsonl"
        text = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
        path.write_text(text, encoding="utf-8", newline="\n")
        paths[split] = path
    return paths
