"""The task graph on the real demo graph: nodes, FLAN held-out clusters, relations, arithmetic."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from hybridft.demo import task_graph
from hybridft.errors import UserError
from hybridft.evaluate.task_graph import (
    TaskGraph,
    forgetting,
    heldout_tasks,
    load_task_graph,
    related_tasks,
    scores_by_cluster,
    transfer,
)


@pytest.fixture
def demo(tmp_path: Path) -> TaskGraph:
    path = tmp_path / "task_graph.yaml"
    path.write_text(yaml.safe_dump(task_graph(), sort_keys=False), encoding="utf-8")
    return load_task_graph(path)


def test_every_synthesized_task_is_a_node_with_its_attributes(demo: TaskGraph) -> None:
    tasks = task_graph()["tasks"]
    assert demo.tasks == list(tasks)
    for name, task in tasks.items():
        for key in ("kind", "cluster", "domain"):
            assert demo.attr(name, key) == task[key]
        assert list(demo.attr(name, "skills")) == task["skills"]
        for other in task["related"]:
            assert "related" in demo.relations(name, other)


def test_edges_carry_their_relation(demo: TaskGraph) -> None:
    assert demo.relations("it_desk", "urgency_detect") == {"cluster", "domain", "skill", "related"}
    assert demo.relations("sentiment", "topic") == {"cluster", "domain", "skill"}
    assert demo.relations("uppercase", "it_desk") == set()


def test_one_trained_classification_task_makes_the_whole_cluster_seen(demo: TaskGraph) -> None:
    held = heldout_tasks(demo, ["sentiment"])
    assert held
    assert not set(held) & set(demo.tasks_of(cluster="classification"))
    assert set(held) == {t for t in demo.tasks if demo.attr(t, "cluster") != "classification"}


def test_training_only_sft_tasks_sees_the_clusters_they_belong_to(demo: TaskGraph) -> None:
    sft = demo.tasks_of(kind="sft")
    sft_clusters = {demo.attr(t, "cluster") for t in sft}
    # The demo's SFT tasks sit in instruction clusters (classification, qa): under FLAN's protocol
    # those instruction tasks are no longer held out; only the other clusters are.
    assert sft_clusters == {"classification", "qa"}
    held = heldout_tasks(demo, sft, kind="instruction")
    expected = [
        t for t in demo.tasks_of(kind="instruction") if demo.attr(t, "cluster") not in sft_clusters
    ]
    assert held == expected
    assert {demo.attr(t, "cluster") for t in held} == {"extraction", "rewriting"}
    assert heldout_tasks(demo, [], kind="instruction") == demo.tasks_of(kind="instruction")


def test_related_tasks_put_explicit_links_first(demo: TaskGraph) -> None:
    assert related_tasks(demo, "it_desk")[0] == "urgency_detect"
    # support's explicit links come first, then same-cluster tasks sharing a skill (none here)
    assert related_tasks(demo, "support") == ["extract_order_number", "polite_rewrite"]
    assert related_tasks(demo, "sentiment") == ["topic", "urgency_detect", "request_language"]
    with pytest.raises(UserError, match="unknown task 'nope'"):
        related_tasks(demo, "nope")


def test_transfer_arithmetic(demo: TaskGraph) -> None:
    with_ = {"compliance": 0.80, "extract_amount": 0.9, "threshold_compare": 0.7}
    without = {"compliance": 0.65}
    out = transfer(demo, "compliance", with_, without)
    assert out["gain"] == pytest.approx(0.15)
    assert out["related_trained"] == ["extract_amount", "threshold_compare"]
    assert out["related_scores"] == {"extract_amount": 0.9, "threshold_compare": 0.7}
    only = transfer(demo, "compliance", with_, without, trained_instruction=["threshold_compare"])
    assert only["related_trained"] == ["threshold_compare"]
    with pytest.raises(UserError, match="no score for task 'compliance'"):
        transfer(demo, "compliance", with_, {})


def test_forgetting_arithmetic() -> None:
    before = {"sentiment": 0.9, "topic": 0.8, "uppercase": 1.0}
    after = {"sentiment": 0.7, "topic": 0.9, "uppercase": 0.7}
    out = forgetting(before, after, ["sentiment", "topic", "uppercase"])
    assert out["per_task"] == pytest.approx({"sentiment": -0.2, "topic": 0.1, "uppercase": -0.3})
    assert out["mean_drop"] == pytest.approx(0.4 / 3)
    with pytest.raises(UserError, match="no score for task 'arithmetic'"):
        forgetting(before, after, ["arithmetic"])


def test_scores_by_cluster(demo: TaskGraph) -> None:
    scores = {"sentiment": 0.5, "topic": 1.0, "uppercase": 0.25, "reverse_words": 0.75}
    assert scores_by_cluster(demo, scores) == {"classification": 0.75, "rewriting": 0.5}


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "tg.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_unknown_related_target_names_file_line_key(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        "tasks:\n"
        "  a:\n"
        "    kind: sft\n"
        "    cluster: c\n"
        "    domain: d\n"
        "    related:\n"
        "      - b\n"
        "      - ghost\n"
        "  b:\n"
        "    kind: instruction\n"
        "    cluster: c\n"
        "    domain: d\n",
    )
    with pytest.raises(UserError) as err:
        load_task_graph(path)
    assert str(err.value).startswith(f"{path}:8: tasks.a.related[1]: ")
    assert "'ghost'" in str(err.value)


def test_unknown_key_names_file_line_key(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        "tasks:\n  a:\n    kind: sft\n    cluster: c\n    domain: d\n    skils: [x]\n",
    )
    with pytest.raises(UserError) as err:
        load_task_graph(path)
    # file:line:key only: specfile's "did you mean" hint does not yet reach models inside a dict
    assert str(err.value).startswith(f"{path}:6: tasks.a.skils: unknown key")
