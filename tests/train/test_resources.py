"""What a cluster can schedule (``train.resources``), decided without Ray: an autoscaled cluster's
node types count, a local instance keeps today's strict check; and a base shipped through the
object store is written once per node, never seen half-written."""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from hybridft.errors import UserError
from hybridft.specs import ScalingSpec
from hybridft.train import resources
from hybridft.train.resources import (
    Capacity,
    NodeType,
    as_count,
    capacity_from_launcher_config,
    capacity_from_node_groups,
    trials_that_fit,
    worker_group_refusal,
    worker_resources,
    workers_that_fit,
)

REPO = Path(__file__).resolve().parents[2]
GPU_WORKER = {"CPU": 1.0, "GPU": 1.0}
# the head of cluster/aws-gpu.yaml and KubeRay's: 0 CPUs, no GPU; no worker node up yet
EMPTY_HEAD = {"CPU": 0.0, "memory": 3e10, "object_store_memory": 1e10}


def aws_capacity() -> Capacity:
    config = yaml.safe_load((REPO / "cluster/aws-gpu.yaml").read_text())
    return capacity_from_launcher_config(EMPTY_HEAD, config)


def test_the_shipped_launcher_config_reads_as_its_gpu_node_types() -> None:
    capacity = aws_capacity()
    assert capacity.node_types == (
        NodeType("worker.gpu.a10g", {"CPU": 4, "GPU": 1}, 4),
        NodeType("worker.gpu.a100x8", {"CPU": 96, "GPU": 8}, 1),
    )  # the head is up already (in live), never launched
    assert capacity.max_nodes == 4


def test_gpu_node_types_advertised_none_running_accepts_what_fits_a_type() -> None:
    capacity = aws_capacity()
    assert workers_that_fit(Capacity(EMPTY_HEAD), GPU_WORKER) == 0  # live only: the old refusal
    # the documented smoke job, as shipped (CPU workers) and as on the GPU cluster
    smoke = yaml.safe_load((REPO / "jobs/cluster_smoke.yaml").read_text())["scaling"]
    assert worker_group_refusal(capacity, smoke["resources_per_worker"], 2) is None
    gpu = ScalingSpec(num_workers=2, use_gpu=True, resources_per_worker={"CPU": 1})
    assert worker_group_refusal(capacity, worker_resources(gpu), gpu.num_workers) is None
    # a100x8 holds 8 one-GPU workers, then 3 nodes of a10g one each: 4 nodes in all
    assert workers_that_fit(capacity, GPU_WORKER) == 11
    assert worker_group_refusal(capacity, GPU_WORKER, 11) is None
    key, problem = worker_group_refusal(capacity, GPU_WORKER, 12)
    assert key == "scaling.num_workers"
    assert problem.startswith("expected at most 11 workers with {CPU: 1, GPU: 1} each")
    assert "1 x worker.gpu.a100x8 {CPU: 96, GPU: 8}" in problem and problem.endswith("got 12")


def test_a_worker_larger_than_every_node_type_is_refused_naming_the_largest() -> None:
    key, problem = worker_group_refusal(aws_capacity(), {"CPU": 8.0, "GPU": 16.0}, 1)
    assert key == "scaling.resources_per_worker"
    assert "\n" not in problem
    assert problem == (
        "expected a worker that fits one node (the largest node type the autoscaler can launch, "
        "worker.gpu.a100x8, has {CPU: 96, GPU: 8}), got {CPU: 8, GPU: 16} per worker"
    )


def test_a_local_instance_keeps_the_strict_live_check_and_its_wording() -> None:
    local = Capacity({"CPU": 2.0, "memory": 1e9})
    assert worker_group_refusal(local, {"CPU": 1.0}, 2) is None
    assert worker_group_refusal(local, {"CPU": 1.0}, 5) == (
        "scaling.num_workers",
        "expected at most 2 workers with 1 CPU each (the cluster has 2 CPU), got 5",
    )
    assert worker_group_refusal(local, GPU_WORKER, 1) == (
        "scaling.num_workers",
        "expected at most 0 workers with 1 GPU each (the cluster has 0 GPU), got 1",
    )


def test_the_autoscalers_cluster_config_no_limit_and_resource_caps() -> None:
    groups = [("gpu", {"CPU": 8, "GPU": 1}, -1), ("off", {"CPU": 64}, 0), ("cpu", {"CPU": 4}, 2)]
    unlimited = capacity_from_node_groups(EMPTY_HEAD, groups)
    assert [t.name for t in unlimited.node_types] == ["gpu", "cpu"]  # max_count 0: not launchable
    assert as_count(workers_that_fit(unlimited, GPU_WORKER)) == sys.maxsize
    capped = capacity_from_node_groups(EMPTY_HEAD, groups, {"GPU": 2})
    assert workers_that_fit(capped, GPU_WORKER) == 2
    assert worker_group_refusal(capped, GPU_WORKER, 3)[1].startswith("expected at most 2 workers")


def test_concurrency_is_sized_to_the_node_types_not_the_live_nodes() -> None:
    capacity = capacity_from_node_groups(EMPTY_HEAD, [("gpu", {"CPU": 4, "GPU": 1}, 4)])
    # in process: a trial is its one worker
    assert trials_that_fit(Capacity(EMPTY_HEAD), GPU_WORKER, GPU_WORKER, 1) == 0
    assert trials_that_fit(capacity, GPU_WORKER, GPU_WORKER, 1) == 4
    # worker groups of 2 (+ the trial driver's 0.1 CPU): 2 trials of 4 GPU nodes
    assert trials_that_fit(capacity, {"CPU": 2.1, "GPU": 2.0}, GPU_WORKER, 2) == 2
    # a local instance: today's aggregate sizing
    assert trials_that_fit(Capacity({"CPU": 2.0}), {"CPU": 1.1}, {"CPU": 0.5}, 2) == 1
    assert (
        trials_that_fit(Capacity({"CPU": 16.0, "GPU": 4.0}), {"CPU": 2.0, "GPU": 1.0}, {}, 1) == 4
    )


def test_schedulable_capacity_reads_the_gcs_cluster_config_else_the_launcher_file(
    monkeypatch, tmp_path
) -> None:
    """The thin adapter, with Ray's two calls faked (no Ray started)."""
    import ray
    from ray._private.state import state
    from ray.core.generated import autoscaler_pb2

    monkeypatch.setattr(ray, "cluster_resources", lambda: dict(EMPTY_HEAD))
    monkeypatch.setattr(resources, "LAUNCHER_CONFIG", str(tmp_path / "absent.yaml"))
    monkeypatch.setattr(state, "get_cluster_config", lambda: None)
    assert resources.schedulable_capacity() == Capacity(EMPTY_HEAD)  # a local instance

    config = autoscaler_pb2.ClusterConfig()
    group = config.node_group_configs.add(name="gpu", max_count=3)
    group.resources["GPU"] = 1
    group.resources["CPU"] = 8
    monkeypatch.setattr(state, "get_cluster_config", lambda: config)
    read = resources.schedulable_capacity()
    assert read.node_types == (NodeType("gpu", {"GPU": 1, "CPU": 8}, 3),)

    monkeypatch.setattr(state, "get_cluster_config", lambda: None)
    launcher = tmp_path / "ray_bootstrap_config.yaml"
    launcher.write_text((REPO / "cluster/aws-gpu.yaml").read_text())
    monkeypatch.setattr(resources, "LAUNCHER_CONFIG", str(launcher))
    assert resources.schedulable_capacity() == aws_capacity()


def test_check_resources_locates_the_refusal_in_the_spec(monkeypatch, tmp_path) -> None:
    from hybridft.train import run

    spec = tmp_path / "job.yaml"
    spec.write_text(
        "scaling:\n  num_workers: 2\n  use_gpu: true\n  resources_per_worker: {CPU: 1, GPU: 16}\n"
    )
    scaling = ScalingSpec(**yaml.safe_load(spec.read_text())["scaling"])
    monkeypatch.setattr(run, "schedulable_capacity", aws_capacity)
    with pytest.raises(UserError) as info:
        run.check_resources(scaling, str(spec))
    assert str(info.value).startswith(f"{spec}:4: scaling.resources_per_worker: expected a worker")
    monkeypatch.setattr(run, "schedulable_capacity", lambda: Capacity({"CPU": 2.0}))
    with pytest.raises(UserError, match=r"job.yaml:2: scaling.num_workers: expected at most 0"):
        run.check_resources(scaling, str(spec))


# -- a base shipped through the object store, written once per node ------------------------------


def _base_files() -> dict[str, bytes]:
    return {
        "config.json": b'{"model_type": "llama"}',
        "model.safetensors": bytes(range(256)) * 8192,  # 2 MiB
        "tokenizer/tokenizer.json": b"{}",
    }


def _whole(local: Path, files: dict[str, bytes]) -> bool:
    return all(
        (local / n).is_file() and (local / n).stat().st_size == len(b) for n, b in files.items()
    )


def test_a_shipped_base_is_written_once_and_never_seen_half_written(monkeypatch, tmp_path) -> None:
    from hybridft.train import node_base as loop

    files, local = _base_files(), tmp_path / "hybridft-base" / "tiny-0123"
    writes = []
    write_tree = loop._write_tree

    def slow_write(f: dict[str, bytes], root: Path) -> None:
        writes.append(root)
        for name, blob in f.items():  # file by file: the others arrive while it writes
            write_tree({name: blob}, root)
            time.sleep(0.1)

    monkeypatch.setattr(loop, "_write_tree", slow_write)
    seen_partial, done = [], threading.Event()

    def watch() -> None:
        while not done.is_set():
            if local.exists() and not _whole(local, files):
                seen_partial.append(sorted(p.name for p in local.rglob("*")))
            time.sleep(0.002)

    watcher = threading.Thread(target=watch)
    watcher.start()
    results: list[Path] = []
    workers = [
        threading.Thread(target=lambda: results.append(loop.materialise_base(files, local)))
        for _ in range(4)
    ]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    done.set()
    watcher.join()
    assert not seen_partial
    assert len(writes) == 1  # one writer; the other three waited on the lock and reused it
    assert results == [local] * 4 and _whole(local, files)
    assert sorted(p.name for p in local.parent.iterdir()) == ["tiny-0123", "tiny-0123.lock"]
    loop.materialise_base(files, local)  # complete: reused without a write
    assert len(writes) == 1


def test_a_partial_copy_left_by_an_older_run_is_replaced(tmp_path) -> None:
    from hybridft.train import node_base as loop

    files, local = _base_files(), tmp_path / "tiny-0123"
    local.mkdir()
    (local / "model.safetensors").write_bytes(b"half")  # no config.json, no completion mark
    assert loop.materialise_base(files, local) == local
    assert _whole(local, files)
    assert (local / "model.safetensors").read_bytes() == files["model.safetensors"]
