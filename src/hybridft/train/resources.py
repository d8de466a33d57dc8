"""What a Ray cluster can schedule: the nodes up now, plus the nodes its autoscaler can launch.

``ray.cluster_resources()`` counts live nodes only. An autoscaled cluster starts without its GPUs
(cluster/aws-gpu.yaml: a 0-CPU head and GPU ``min_workers: 0``; KubeRay ``minReplicas: 0``), so a
check against live resources refused every GPU job, the smoke job included, before the autoscaler
could start a node. Here a request is schedulable when it fits the live nodes, or the node types
the autoscaler can launch: each worker on one node of a type, at most ``max_count`` nodes of it.
A cluster without an autoscaler (a local instance) advertises no node types: live resources only.

The decisions are pure functions over frozen dataclasses, tested without Ray;
``schedulable_capacity`` is the thin adapter that reads Ray's state.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from hybridft.specs import ScalingSpec

# The cluster launcher (`ray up`) writes the config its autoscaler reads here, on the head node,
# where `ray job submit` runs the driver (Ray Tune's `_is_ray_cluster` checks the same file).
LAUNCHER_CONFIG = "~/ray_bootstrap_config.yaml"
EPS = 1e-9


@dataclass(frozen=True)
class NodeType:
    """A node type the autoscaler can launch."""

    name: str
    resources: Mapping[str, float]  # one node's
    max_count: int | None  # nodes of the type at most, running ones included; None: no limit


@dataclass(frozen=True)
class Capacity:
    """What a cluster can schedule: live resources, plus what its autoscaler can add."""

    live: Mapping[str, float]  # the nodes up now (``ray.cluster_resources()``)
    node_types: tuple[NodeType, ...] = ()  # launchable worker types; () without an autoscaler
    max_nodes: int | None = None  # worker nodes of all types together (the launcher's max_workers)
    limits: Mapping[str, float] = field(default_factory=dict)  # cluster-wide caps per resource


def worker_resources(scaling: ScalingSpec) -> dict[str, float]:
    """One worker's resources as Ray Train schedules it (``use_gpu``: one GPU unless given)."""
    need = dict(scaling.resources_per_worker)
    if scaling.use_gpu:
        need.setdefault("GPU", 1.0)
    return need


def _floor(x: float) -> float:
    return x if math.isinf(x) else float(math.floor(x + EPS))


def fits_in(have: Mapping[str, float], need: Mapping[str, float]) -> float:
    """How many ``need`` bundles the resources ``have`` hold (inf when ``need`` asks nothing)."""
    return min((_floor(have.get(r, 0.0) / n) for r, n in need.items() if n > 0), default=math.inf)


def _resource_of(resource: str) -> Callable[[NodeType], float]:
    """A node type's amount of ``resource``."""
    return lambda node_type: node_type.resources.get(resource, 0.0)


def _most_of(capacity: Capacity, per_node: Callable[[NodeType], float]) -> float:
    """The most of ``per_node`` the launchable nodes hold together. Greedy, the richest type first,
    is optimal: every node, whatever its type, counts one against the same ``max_nodes``."""
    total, left = 0.0, math.inf if capacity.max_nodes is None else float(capacity.max_nodes)
    for node_type in sorted(capacity.node_types, key=per_node, reverse=True):
        value = per_node(node_type)
        if value <= 0 or left <= 0:
            break
        count = left if node_type.max_count is None else min(float(node_type.max_count), left)
        if math.isinf(count):
            return math.inf
        total += count * value
        left -= count
    return total


def _limit(capacity: Capacity, need: Mapping[str, float]) -> float:
    capped = {r: n for r, n in need.items() if r in capacity.limits}
    return fits_in(capacity.limits, capped)


def launchable_workers(capacity: Capacity, need: Mapping[str, float]) -> float:
    """Workers of ``need`` that the autoscaler's node types hold, each worker on one node."""
    workers = _most_of(capacity, lambda t: fits_in(t.resources, need))
    return min(workers, _limit(capacity, need))


def workers_that_fit(capacity: Capacity, need: Mapping[str, float]) -> float:
    """Workers of ``need`` the cluster can schedule: on its live nodes, or on the nodes its
    autoscaler can launch (the larger; a cluster without node types: live nodes only)."""
    live = fits_in(capacity.live, need)
    return max(live, launchable_workers(capacity, need)) if capacity.node_types else live


def worker_group_refusal(
    capacity: Capacity, need: Mapping[str, float], num_workers: int
) -> tuple[str, str] | None:
    """Why ``num_workers`` workers of ``need`` can never be scheduled: (spec key, the problem in
    one line, "expected ..., got ..."); None when they can."""
    if not capacity.node_types:  # nothing can be added: the live nodes, resource by resource
        for resource, per_worker in need.items():
            have = capacity.live.get(resource, 0.0)
            if per_worker * num_workers > have + EPS:
                return "scaling.num_workers", (
                    f"expected at most {int(have // per_worker) if per_worker else 'any'} workers "
                    f"with {per_worker:g} {resource} each (the cluster has {have:g} {resource}), "
                    f"got {num_workers}"
                )
        return None
    fit = workers_that_fit(capacity, need)
    if fit >= num_workers:
        return None
    if all(fits_in(t.resources, need) < 1 for t in capacity.node_types):
        largest = _largest(capacity.node_types, need)
        return "scaling.resources_per_worker", (
            f"expected a worker that fits one node (the largest node type the autoscaler can "
            f"launch, {largest.name}, has {_show(largest.resources, need)}), "
            f"got {_show(need, need)} per worker"
        )
    return "scaling.num_workers", (
        f"expected at most {int(fit)} workers with {_show(need, need)} each (the cluster has "
        f"{_show(capacity.live, need)} up; {_launchable(capacity, need)}), got {num_workers}"
    )


def trials_that_fit(
    capacity: Capacity,
    trial_need: Mapping[str, float],
    worker_need: Mapping[str, float],
    workers_per_trial: int,
) -> float:
    """Trials that run at once, each holding ``trial_need`` in all, ``workers_per_trial`` of it
    as workers of ``worker_need`` (each on one node). On an autoscaled cluster: what its node
    types provide (max count x resources), not what is up now."""
    live = fits_in(capacity.live, trial_need)
    if not capacity.node_types:
        return live
    totals = {r: _most_of(capacity, _resource_of(r)) for r in trial_need}
    by_resources = min(fits_in(totals, trial_need), _limit(capacity, trial_need))
    by_workers = _floor(launchable_workers(capacity, worker_need) / workers_per_trial)
    return max(live, min(by_resources, by_workers))


def as_count(x: float) -> int:
    """A count from the functions above (inf: no limit the cluster knows of)."""
    return sys.maxsize if math.isinf(x) else int(x)


def describe(capacity: Capacity, need: Mapping[str, float]) -> str:
    """The cluster in a few words for a one-line error (an autoscaled one: the ``need`` keys)."""
    if not capacity.node_types:
        return str(dict(capacity.live))
    return f"{_show(capacity.live, need)} up; {_launchable(capacity, need)}"


def _largest(node_types: Iterable[NodeType], need: Mapping[str, float]) -> NodeType:
    """The type closest to holding one worker (the most of its scarcest resource), then GPUs."""

    def share(t: NodeType) -> tuple[float, float, float]:
        held = min((t.resources.get(r, 0.0) / n for r, n in need.items() if n > 0), default=0.0)
        return held, t.resources.get("GPU", 0.0), t.resources.get("CPU", 0.0)

    return max(node_types, key=share)


def _show(resources: Mapping[str, float], keys: Mapping[str, float]) -> str:
    return "{" + ", ".join(f"{r}: {resources.get(r, 0.0):g}" for r in keys) + "}"


def _launchable(capacity: Capacity, keys: Mapping[str, float]) -> str:
    types = ", ".join(
        f"{'any number of' if t.max_count is None else t.max_count} x {t.name} "
        f"{_show(t.resources, keys)}"
        for t in capacity.node_types
    )
    cap = f", {capacity.max_nodes} nodes in all" if capacity.max_nodes is not None else ""
    return f"its autoscaler can launch {types}{cap}"


def capacity_from_node_groups(
    live: Mapping[str, float],
    groups: Iterable[tuple[str, Mapping[str, float], int]],
    max_resources: Mapping[str, float] | None = None,
) -> Capacity:
    """From the autoscaler's ``ClusterConfig`` (name, resources, max_count per node group; a
    max_count of -1: no limit, 0: none launchable)."""
    types = tuple(
        NodeType(name, dict(resources), None if count < 0 else count)
        for name, resources, count in groups
        if count != 0 and resources
    )
    return Capacity(dict(live), types, limits=dict(max_resources or {}))


def capacity_from_launcher_config(live: Mapping[str, float], config: Mapping[str, Any]) -> Capacity:
    """From a cluster launcher config (``available_node_types``, ``head_node_type``,
    ``max_workers``). The head is up already (in ``live``); a type without ``resources`` is left
    out (unknown before the provider fills them in)."""
    head = config.get("head_node_type")
    overall = config.get("max_workers")
    types = tuple(
        NodeType(name, dict(spec["resources"]), int(spec.get("max_workers", overall or 0)))
        for name, spec in (config.get("available_node_types") or {}).items()
        if name != head and spec.get("resources") and spec.get("max_workers", overall or 0)
    )
    return Capacity(dict(live), types, max_nodes=None if overall is None else int(overall))


def schedulable_capacity() -> Capacity:
    """Live resources plus the node types the autoscaler can launch, read from Ray.

    Reads ``ray.cluster_resources()`` and the autoscaler's ``ClusterConfig`` in the GCS
    (``ray._private.state.state.get_cluster_config()``, what Ray Train's own pre-start check
    reads), else the launcher's ``~/ray_bootstrap_config.yaml`` that the head's autoscaler reads.
    """
    import ray
    from ray._private.state import state

    live = ray.cluster_resources()
    config = state.get_cluster_config()
    if config is not None and config.node_group_configs:
        groups = [(g.name, dict(g.resources), g.max_count) for g in config.node_group_configs]
        return capacity_from_node_groups(live, groups, dict(config.max_resources))
    launcher = Path(LAUNCHER_CONFIG).expanduser()
    if launcher.is_file():
        return capacity_from_launcher_config(live, yaml.safe_load(launcher.read_text()) or {})
    return Capacity(dict(live))
