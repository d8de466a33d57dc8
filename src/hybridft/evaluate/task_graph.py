"""The task graph: which tasks share a cluster, domain or skill, and which are linked on purpose.

Held-out evaluation follows FLAN's protocol (Wei et al. 2022): a task counts as unseen only when no
task of its cluster was trained on, so "held out" means a held-out *cluster*, not a held-out name.
Transfer and forgetting are read against the graph: a target's gain from the instruction stage is
set beside the related instruction tasks that were trained, and forgetting is the per-task score
change of instruction tasks across the SFT stage.
"""

from __future__ import annotations

import itertools
import statistics
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import networkx as nx
from pydantic import Field

from hybridft.errors import UserError, located
from hybridft.specfile import key_path, line_of, load_yaml_model
from hybridft.specs import Strict

TaskKind = Literal["sft", "instruction"]


class TaskNodeSpec(Strict):
    """One task of ``task_graph.yaml``."""

    kind: TaskKind
    cluster: str
    domain: str
    skills: list[str] = []
    related: list[str] = []


class TaskGraphSpec(Strict):
    """``task_graph.yaml``: ``tasks: {name: {kind, cluster, domain, skills, related}}``."""

    tasks: Annotated[dict[str, TaskNodeSpec], Field(min_length=1)]


class TaskGraph:
    """A ``networkx.MultiGraph`` of tasks; parallel edges carry one ``relation`` each.

    Node attributes: ``kind``, ``cluster``, ``domain``, ``skills``. Edge ``relation`` is one of
    ``cluster``, ``domain``, ``skill`` (with a ``skill`` attribute) or ``related``.
    """

    def __init__(self, spec: TaskGraphSpec) -> None:
        self.spec = spec
        self.graph: nx.MultiGraph[str] = nx.MultiGraph()
        for name, task in spec.tasks.items():
            self.graph.add_node(
                name, kind=task.kind, cluster=task.cluster, domain=task.domain,
                skills=tuple(task.skills),
            )  # fmt: skip
        # Pairwise edges: the demo graph is a few dozen tasks, so O(n^2) is nothing.
        for a, b in itertools.combinations(spec.tasks, 2):
            ta, tb = spec.tasks[a], spec.tasks[b]
            if ta.cluster == tb.cluster:
                self.graph.add_edge(a, b, key="cluster", relation="cluster")
            if ta.domain == tb.domain:
                self.graph.add_edge(a, b, key="domain", relation="domain")
            for skill in sorted(set(ta.skills) & set(tb.skills)):
                self.graph.add_edge(a, b, key=f"skill:{skill}", relation="skill", skill=skill)
        for name, task in spec.tasks.items():
            for other in task.related:
                self.graph.add_edge(name, other, key="related", relation="related")

    @property
    def tasks(self) -> list[str]:
        return list(self.graph.nodes)

    def attr(self, task: str, name: str) -> Any:
        self._check(task)
        return self.graph.nodes[task][name]

    def tasks_of(self, *, kind: str | None = None, cluster: str | None = None) -> list[str]:
        """Tasks in file order, filtered by kind and/or cluster."""
        return [
            t
            for t, data in self.graph.nodes(data=True)
            if (kind is None or data["kind"] == kind)
            and (cluster is None or data["cluster"] == cluster)
        ]

    def relations(self, a: str, b: str) -> set[str]:
        """The ``relation`` values of every edge between ``a`` and ``b``."""
        data = self.graph.get_edge_data(a, b) or {}
        return {edge["relation"] for edge in data.values()}

    def _check(self, task: str) -> None:
        if task not in self.graph:
            raise UserError(f"task graph: unknown task {task!r}; expected one of {self.tasks}")


def load_task_graph(path: str | Path) -> TaskGraph:
    """Parse ``task_graph.yaml``; every problem, cross-task ones included, names file:line:key."""
    spec = load_yaml_model(path, TaskGraphSpec)
    for name, task in spec.tasks.items():
        for i, other in enumerate(task.related):
            loc = ("tasks", name, "related", i)
            if other not in spec.tasks:
                raise located(
                    str(path), line_of(path, loc), key_path(loc),
                    f"expected the name of a task in this file, got {other!r}",
                )  # fmt: skip
            if other == name:
                raise located(
                    str(path), line_of(path, loc), key_path(loc),
                    f"expected another task, got the task itself ({other!r})",
                )  # fmt: skip
    return TaskGraph(spec)


def heldout_tasks(
    graph: TaskGraph, trained_tasks: Iterable[str], kind: str | None = None
) -> list[str]:
    """Tasks unseen under FLAN's protocol: no task of their cluster was trained on.

    Args:
        graph: the task graph.
        trained_tasks: every task trained on, in any stage.
        kind: keep only tasks of this kind (``"instruction"`` for zero-shot evaluation).

    Returns:
        The held-out tasks, in file order.
    """
    trained = list(trained_tasks)
    for task in trained:
        graph._check(task)
    seen_clusters = {graph.attr(t, "cluster") for t in trained}
    return [t for t in graph.tasks_of(kind=kind) if graph.attr(t, "cluster") not in seen_clusters]


def related_tasks(graph: TaskGraph, task: str) -> list[str]:
    """Explicit ``related`` links first, then same-cluster tasks sharing a skill (no repeats)."""
    graph._check(task)
    out = list(graph.spec.tasks[task].related)
    skills = set(graph.attr(task, "skills"))
    for other in graph.tasks_of(cluster=graph.attr(task, "cluster")):
        if other != task and other not in out and skills & set(graph.attr(other, "skills")):
            out.append(other)
    return out


def _score(scores: Mapping[str, float], task: str, what: str) -> float:
    if task not in scores:
        raise UserError(f"{what}: no score for task {task!r}; scored tasks: {sorted(scores)}")
    return float(scores[task])


def transfer(
    graph: TaskGraph,
    target: str,
    scores_with: Mapping[str, float],
    scores_without: Mapping[str, float],
    *,
    trained_instruction: Iterable[str] | None = None,
) -> dict[str, Any]:
    """The target's gain from the instruction stage, beside the related instruction tasks trained.

    Args:
        graph: the task graph.
        target: the task whose gain is measured (usually an SFT task).
        scores_with: per-task scores of the run with the instruction stage.
        scores_without: per-task scores of the run without it.
        trained_instruction: instruction tasks trained in that stage; by default every related
            instruction task scored in ``scores_with``.

    Returns:
        ``target``, ``gain`` (with minus without), ``related_trained`` (related instruction tasks
        that were trained, in ``related_tasks`` order) and ``related_scores`` (their scores in
        ``scores_with``).
    """
    gain = _score(scores_with, target, "transfer") - _score(scores_without, target, "transfer")
    related = [t for t in related_tasks(graph, target) if graph.attr(t, "kind") == "instruction"]
    if trained_instruction is None:
        trained = [t for t in related if t in scores_with]
    else:
        wanted = set(trained_instruction)
        trained = [t for t in related if t in wanted]
    return {
        "target": target,
        "gain": gain,
        "related_trained": trained,
        "related_scores": {t: _score(scores_with, t, "transfer") for t in trained},
    }


def forgetting(
    before: Mapping[str, float], after: Mapping[str, float], tasks: Iterable[str]
) -> dict[str, Any]:
    """Per-task change (after SFT minus before) of instruction tasks, and the mean drop.

    Returns:
        ``per_task`` {task: after - before} and ``mean_drop`` (mean of before - after: positive
        means the SFT stage made the instruction tasks worse).
    """
    names = list(tasks)
    if not names:
        raise UserError("forgetting: expected at least one task, got none")
    per_task = {
        t: _score(after, t, "forgetting (after)") - _score(before, t, "forgetting (before)")
        for t in names
    }
    return {"per_task": per_task, "mean_drop": -statistics.fmean(per_task.values())}


def scores_by_cluster(graph: TaskGraph, scores: Mapping[str, float]) -> dict[str, float]:
    """Mean score per cluster over the scored tasks (clusters with no scored task are left out)."""
    by_cluster: dict[str, list[float]] = {}
    for task, score in scores.items():
        by_cluster.setdefault(graph.attr(task, "cluster"), []).append(float(score))
    return {cluster: statistics.fmean(values) for cluster, values in by_cluster.items()}
