"""The demo-data generator: deterministic, disjoint splits, strict rows, a complete task graph."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import yaml

from hybridft.demo import synth
from hybridft.demo.synth import SPLITS, check_disjoint, synthesize
from hybridft.demo.synth_sft import POLICY
from hybridft.errors import UserError

ALLOWED_KEYS = {
    "task": {"prompt", "completion", "label", "id", "task", "meta"},
    "instruction": {"instruction", "input", "output", "id", "task", "meta"},
    "chat": {"messages", "id", "task", "meta"},
}


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> synth.SynthManifest:
    """The default-size data set, seed 0 (about eight seconds to generate)."""
    return synthesize(tmp_path_factory.mktemp("demo") / "data", seed=0)


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def _format(row: dict) -> str:
    return "task" if "prompt" in row else "instruction" if "instruction" in row else "chat"


def _output(row: dict) -> str:
    return row["output"] if "output" in row else row["messages"][-1]["content"]


# --- determinism ----------------------------------------------------------------------------------


def test_same_seed_gives_byte_identical_files(tmp_path):
    # the generators at a small size: every task and split, a second's work instead of eight
    small = {"n_train": 300, "n_validation": 40, "n_test": 40, "n_instruction_train": 60}
    one = synthesize(tmp_path / "one", seed=0, **small)
    again = synthesize(tmp_path / "again", seed=0, **small)
    first, second = _files(one.out_dir), _files(again.out_dir)
    assert sorted(first) == sorted(second)
    assert [name for name in first if first[name] != second[name]] == []


def test_different_seed_gives_different_data(tmp_path):
    small = {"n_train": 300, "n_validation": 40, "n_test": 40, "n_instruction_train": 60}
    one = synthesize(tmp_path / "one", seed=0, **small)
    other = synthesize(tmp_path / "other", seed=1, **small)
    first, second = _files(one.out_dir), _files(other.out_dir)
    assert sorted(first) == sorted(second)
    same = [name for name in first if name.endswith(".jsonl") and first[name] == second[name]]
    assert same == []
    assert json.loads(second["manifest.json"])["seed"] == 1


# --- splits ---------------------------------------------------------------------------------------


def test_splits_are_disjoint_and_have_the_requested_sizes(demo):
    assert check_disjoint(demo.out_dir) == []
    for task in demo.tasks():
        sizes = (2000, 200, 200) if demo.kinds[task] == "sft" else (600, 60, 60)
        assert tuple(demo.counts[task][s] for s in SPLITS) == sizes, task
        assert tuple(len(_rows(demo.paths[task][s])) for s in SPLITS) == sizes, task


@pytest.mark.parametrize(
    "task_dir", ["sft/it_desk", "instruction/arithmetic", "instruction/sentiment"]
)
def test_check_disjoint_reports_an_injected_overlap(demo, tmp_path, task_dir):
    root = tmp_path / "copy"
    shutil.copytree(demo.out_dir, root)
    leaked = _rows(root / task_dir / "test.jsonl")[7]
    # the same prompt, differently cased and spaced, must still count as the same prompt
    if "prompt" in leaked:
        leaked["prompt"] = "  " + leaked["prompt"].upper().replace(" ", "   ")
    elif "instruction" in leaked:
        leaked["instruction"] = leaked["instruction"].upper() + "  "
    else:
        leaked["messages"][1]["content"] = leaked["messages"][1]["content"].replace(" ", "\t ")
    n_train = len(_rows(root / task_dir / "train.jsonl"))
    with (root / task_dir / "train.jsonl").open("a", encoding="utf-8") as fh:
        fh.write(json.dumps(leaked) + "\n")

    problems = check_disjoint(root)
    assert len(problems) == 1
    assert f"{task_dir}/test.jsonl:8: prompt also in train" in problems[0]
    assert f"{task_dir}/train.jsonl:{n_train + 1})" in problems[0]


def test_check_disjoint_reports_missing_and_unreadable_files(demo, tmp_path):
    root = tmp_path / "copy"
    shutil.copytree(demo.out_dir, root)
    (root / "sft/support/validation.jsonl").unlink()
    with (root / "instruction/topic/test.jsonl").open("a", encoding="utf-8") as fh:
        fh.write('{"not json\n')
    problems = check_disjoint(root)
    assert any("support/validation.jsonl: missing" in p for p in problems)
    assert any("topic/test.jsonl:61: unreadable row" in p for p in problems)
    assert check_disjoint(tmp_path / "empty") != []


def test_synthesize_refuses_to_write_overlapping_splits(tmp_path, monkeypatch):
    def every_split_the_same(drafts, sizes):
        return {split: drafts[: sizes[0]] for split in SPLITS}

    monkeypatch.setattr(synth, "_split", every_split_the_same)
    with pytest.raises(UserError, match="split check failed: .* prompt also in"):
        synthesize(tmp_path / "bad", n_train=20, n_instruction_train=10)


# --- row shapes -------------------------------------------------------------------------------


def test_rows_use_only_allowed_keys_and_labels_lead_completions(demo):
    formats = Counter()
    for task in demo.tasks():
        ids = set()
        for split in SPLITS:
            for row in _rows(demo.paths[task][split]):
                fmt = _format(row)
                formats[fmt] += 1
                assert set(row) <= ALLOWED_KEYS[fmt] and set(row) >= ALLOWED_KEYS[fmt] - {"meta"}
                assert row["task"] == task and row["id"] not in ids
                ids.add(row["id"])
                meta = row.get("meta", {})
                assert all(isinstance(k, str) and isinstance(v, str) for k, v in meta.items())
                if fmt == "task":
                    assert row["label"] and row["completion"].split("\n")[0] == row["label"]
                    assert row["prompt"].strip()
                elif fmt == "instruction":
                    assert all(isinstance(row[k], str) for k in ("instruction", "input", "output"))
                    assert row["instruction"].strip() and row["output"].strip()
                else:
                    roles = [m["role"] for m in row["messages"]]
                    assert set(roles) <= {"system", "user", "assistant"}
                    assert roles[-1] == "assistant" and "user" in roles
                    assert all(set(m) == {"role", "content"} for m in row["messages"])
    assert set(formats) == {"task", "instruction", "chat"}
    assert sum(demo.kinds[t] == "sft" for t in demo.tasks()) == 3


def test_sft_labels_follow_their_rules(demo):
    limits = {c.number: c.limit for c in POLICY}
    for row in _rows(demo.paths["compliance"]["test"]):
        label, clause = row["completion"].split("\n")
        number = clause.removeprefix("clause: ").split()[0]
        value = int(re.search(r"(\d+)", row["prompt"].removeprefix("Policy check:")).group(1))
        assert label == ("compliant" if value <= limits[number] else "non-compliant"), row
    for row in _rows(demo.paths["support"]["test"]):
        if row["label"] != "account_access":
            reply = row["completion"].split("\n")[1]
            order = re.search(r"order (\S+?)[;. ]", reply, flags=re.IGNORECASE).group(1)
            assert order in row["prompt"], row
    teams = Counter(row["label"].split()[0] for row in _rows(demo.paths["it_desk"]["test"]))
    assert set(teams) == {"network", "identity", "hardware", "software", "facilities"}


def test_instruction_outputs_follow_their_rules(demo):
    def pairs(task):
        return [
            (r["input"] or r["instruction"], r["output"]) for r in _rows(demo.paths[task]["test"])
        ]

    for text, out in pairs("arithmetic"):
        a, op, b = re.search(r"(\d+) ([+-]) (\d+)", text).groups()
        assert int(out) == (int(a) + int(b) if op == "+" else int(a) - int(b))
    for text, out in pairs("uppercase"):
        assert out.isupper() and out in text.upper()
    for text, out in pairs("reverse_words"):
        assert " ".join(reversed(out.split())) in text
    for text, out in pairs("extract_order_number"):
        assert out in text
    for text, out in pairs("threshold_compare"):
        numbers = [int(n) for n in re.findall(r"\d+", text)]
        limit, observed = (numbers[1], numbers[0]) if text.startswith("Observed") else numbers
        assert out == ("yes" if observed <= limit else "no"), text


def test_label_noise_touches_train_only(demo, tmp_path):
    for task in demo.tasks("sft"):
        noisy = [r for r in _rows(demo.paths[task]["train"]) if "label_noise" in r.get("meta", {})]
        assert 0.01 * 2000 <= len(noisy) <= 0.07 * 2000, task
        for split in ("validation", "test"):
            assert not any(
                "label_noise" in r.get("meta", {}) for r in _rows(demo.paths[task][split])
            )
    clean = synthesize(tmp_path / "clean", n_train=100, n_instruction_train=10, label_noise=0.0)
    assert not any("label_noise" in r["meta"] for r in _rows(clean.paths["support"]["train"]))


# --- suite breadth, task graph, balance, manifest ---------------------------------------------


def test_instruction_suite_is_broad_with_held_out_phrasings(demo):
    graph = yaml.safe_load(demo.task_graph.read_text())["tasks"]
    instruction = demo.tasks("instruction")
    assert len(instruction) >= 12
    assert len({graph[t]["cluster"] for t in instruction}) >= 4
    for task in instruction:
        by_split = {s: _rows(demo.paths[task][s]) for s in SPLITS}
        seen = {r["meta"]["phrasing"] for s in ("train", "validation") for r in by_split[s]}
        held = {
            r["meta"]["phrasing"]
            for r in by_split["test"]
            if r["meta"]["phrasing_held_out"] == "true"
        }
        assert len(seen) >= 3, task
        assert len(held) == 1 and held.isdisjoint(seen), task
        assert {r["meta"]["phrasing"] for r in by_split["test"]} >= seen | held, task


def test_task_graph_names_every_task_and_valid_relations(demo):
    graph = yaml.safe_load(demo.task_graph.read_text())["tasks"]
    on_disk = {p.parent.name: p.parent.parent.name for p in demo.out_dir.glob("*/*/train.jsonl")}
    assert set(graph) == set(on_disk) == set(demo.tasks())
    for name, entry in graph.items():
        assert set(entry) == {"kind", "cluster", "domain", "skills", "related"}
        assert entry["kind"] == on_disk[name] and entry["skills"]
        assert entry["domain"] in {"it", "support", "compliance", "general"}
        for target in entry["related"]:
            assert target in graph and name in graph[target]["related"], (name, target)
            assert graph[target]["kind"] != entry["kind"]
    for name in demo.tasks("sft"):
        assert graph[name]["related"], f"{name} has no related instruction task"
    assert any(not graph[t]["related"] for t in demo.tasks("instruction"))


def test_labels_are_balanced(demo):
    manifest = json.loads(demo.manifest.read_text())
    closed_sets = [t for t in demo.tasks() if "labels" in manifest["tasks"][t]]
    assert set(demo.tasks("sft")) <= set(closed_sets) and len(closed_sets) >= 6
    for task in closed_sets:
        entry = manifest["tasks"][task]
        rows = [r for s in SPLITS for r in _rows(demo.paths[task][s])]
        counts = Counter(r["label"] if "label" in r else _output(r) for r in rows)
        assert entry["labels"] == {k: round(v / len(rows), 4) for k, v in sorted(counts.items())}
        k = len(entry["labels"])
        # a composite label ("network high") is balanced per part; each part >= 8%
        floor = 0.08 if "label_parts" not in entry else 0.5 / k
        assert min(entry["labels"].values()) >= floor, (task, entry["labels"])
        for part in entry.get("label_parts", []):
            assert min(part.values()) >= 0.08, (task, part)
    assert len(manifest["tasks"]["it_desk"]["label_parts"]) == 2


def test_manifest_records_seed_counts_and_hashes(demo):
    manifest = json.loads(demo.manifest.read_text())
    assert manifest["seed"] == 0 and manifest["version"] == synth.GENERATOR_VERSION
    jsonl = sorted(p.relative_to(demo.out_dir).as_posix() for p in demo.out_dir.rglob("*.jsonl"))
    assert sorted(f for f in manifest["files"] if f.endswith(".jsonl")) == jsonl
    assert "task_graph.yaml" in manifest["files"]
    for name, entry in manifest["files"].items():
        data = (demo.out_dir / name).read_bytes()
        assert entry["sha256"] == hashlib.sha256(data).hexdigest()
        if name.endswith(".jsonl"):
            assert entry["rows"] == len(data.splitlines())
    for task, entry in manifest["tasks"].items():
        assert entry["rows"] == demo.counts[task]


# --- arguments and import cost ---------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        {"n_train": 0},
        {"n_test": -1},
        {"n_instruction_train": 2.5},
        {"label_noise": 0.9},
        {"label_noise": "high"},
        {"seed": "zero"},
    ],
)
def test_bad_arguments_are_user_errors(tmp_path, kwargs):
    with pytest.raises(UserError, match="synth: "):
        synthesize(tmp_path / "x", **kwargs)


def test_asking_for_more_examples_than_a_task_has_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="distinct examples found"):
        synthesize(tmp_path / "x", n_train=50, n_instruction_train=20_000)


def test_import_stays_light():
    code = (
        "import sys, hybridft.demo.synth\n"
        "heavy = {'torch', 'numpy', 'transformers', 'ray', 'pydantic', 'sklearn', 'pyarrow'}\n"
        "print(sorted(heavy & {m.split('.')[0] for m in sys.modules}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_sft_held_out_splits_are_clean_under_the_leakage_shield(demo):
    """Validation and test of each SFT task overlap no train row of any task (all four rules);
    train rows checked the same way are flagged, so the check is not vacuous."""
    from hybridft.data.reader import read_examples
    from hybridft.evaluate.leakage import check_example_leakage

    train = []
    for task in demo.tasks():
        train += list(read_examples([str(demo.paths[task]["train"])], source=task))
    held, own = [], []
    for task in demo.tasks("sft"):
        held += [
            e for s in ("validation", "test") for e in read_examples([str(demo.paths[task][s])])
        ]
        own += list(read_examples([str(demo.paths[task]["train"])]))[:20]
    report = check_example_leakage(train, held + own)
    assert set(report.dirty) == set(range(len(held), len(held) + len(own))), report.counts
