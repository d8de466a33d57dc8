"""A real two-node Ray cluster on this machine and a real `ray job submit`, token auth on.

Head and worker are two `ray start --block` processes, each in its own session with its own
--temp-dir and ports, so the in-process Ray of the `ray_session` fixture is never touched (and is
never found by it: `ray.init()` looks for `ray_current_cluster` in the default temp dir only).
`ray stop` would kill every Ray on the machine, so teardown stops exactly the processes started
here. The cluster uses its own token file (RAY_AUTH_TOKEN_PATH), never ~/.ray/auth_token.

The job is the README's command: the repo as working_dir, data synthesised by the entrypoint,
`hybridft train` of jobs/cluster_smoke.yaml with its shared paths moved into a temp dir (one
machine, so a plain directory is "shared storage").
"""

from __future__ import annotations

import json
import os
import random
import secrets
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest
import yaml

pytestmark = [pytest.mark.ray, pytest.mark.slow, pytest.mark.timeout(600)]

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent  # the project's venv: `ray`, `hybridft` and `python` resolve here
# What the working_dir upload leaves out (Ray 2.60 also honours .gitignore and skips .git/.venv).
EXCLUDES = [".git", ".venv", ".hybridft", "mlruns", "/data", ".pytest_cache", ".ruff_cache"]


@dataclass
class LocalCluster:
    gcs_address: str
    dashboard_url: str
    env: dict[str, str]  # a client environment with token auth
    token_file: Path
    root: Path


# Every port the two nodes open is fixed, from below Linux's ephemeral range (32768-60999):
# ports a test picks by binding port 0 come from that range, and so do the random ports Ray and
# every other process on the machine take, so one could be gone again by the time Ray binds it.
PORT_RANGE = (20000, 32000)
WORKER_PORTS = 100  # per node: --min/--max-worker-port, apart from the in-process Ray's defaults


def port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("0.0.0.0", port))
        except OSError:
            return False
    return True


def pick_ports(n: int, rng: random.Random) -> list[int]:
    """``n`` free single ports and two free blocks of ``WORKER_PORTS`` (the nodes' workers)."""
    low, high = PORT_RANGE
    while True:
        base = rng.randrange(low, high - n - 2 * WORKER_PORTS)
        singles = list(range(base, base + n))
        blocks = [base + n, base + n + WORKER_PORTS]
        if all(port_free(p) for p in singles) and all(
            port_free(p) for p in range(blocks[0], blocks[1] + WORKER_PORTS)
        ):
            return singles + blocks


def base_env() -> dict[str, str]:
    """This environment minus any Ray address or auth setting, with the venv first on PATH."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("RAY_AUTH") and k not in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS")
    }
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    return env


def ray_cli(
    args: list[str], env: dict[str, str], timeout: float = 120
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(BIN / "ray"), *args],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def start_node(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    with log.open("w") as out:  # the child keeps its own handle
        return subprocess.Popen(
            [str(BIN / "ray"), "start", "--block", "--disable-usage-stats", *args],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own session: teardown finds its processes by sid
        )


def stop_node(proc: subprocess.Popen) -> None:
    """Stop one `ray start --block` and everything it started, and nothing else."""
    family: list[psutil.Process] = []
    try:
        family = psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        pass
    for p in psutil.process_iter():  # Ray workers re-parented away from the tree keep the sid
        try:
            if os.getsid(p.pid) == proc.pid and p.pid != proc.pid:
                family.append(p)
        except (ProcessLookupError, PermissionError, psutil.Error):
            continue
    # SIGTERM to the leader alone lets it shut its node down in order; a group-wide SIGTERM
    # races that shutdown and leaves `ray start` hanging.
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)
    alive = [p for p in {p.pid: p for p in family}.values() if _running(p)]
    for p in alive:
        _signal(p, psutil.Process.terminate)
    _, alive = psutil.wait_procs(alive, timeout=10)
    for p in alive:
        _signal(p, psutil.Process.kill)
    psutil.wait_procs(alive, timeout=10)


def _running(p: psutil.Process) -> bool:
    """Alive and not a zombie (a zombie is already dead: waiting on it would only time out)."""
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _signal(p: psutil.Process, send: Callable[[psutil.Process], None]) -> None:
    try:
        send(p)
    except psutil.NoSuchProcess:
        pass


class NodeStartError(RuntimeError):
    pass


def wait_until(
    ready: Callable[[], bool], procs: list[subprocess.Popen], what: str, timeout: float = 180
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for proc in procs:
            if proc.poll() is not None:
                raise NodeStartError(f"{what}: `ray start` exited with {proc.returncode}")
        if ready():
            return
        time.sleep(2)
    raise NodeStartError(f"{what}: not ready after {timeout:.0f} s")


def log_tail(path: Path, lines: int = 15) -> str:
    text = path.read_text(errors="replace").splitlines() if path.is_file() else ["(no log)"]
    return "\n".join(f"    {line}" for line in text[-lines:])


def alive_nodes(gcs_address: str, env: dict[str, str]) -> int:
    out = ray_cli(["list", "nodes", "--address", gcs_address, "--format", "json"], env)
    try:  # before the first node registers it prints "No resource in the cluster"
        return sum(node["state"] == "ALIVE" for node in json.loads(out.stdout))
    except ValueError:
        return 0


def node_ports(ports: list[int], worker_base: int) -> list[str]:
    """Every per-node port fixed: two nodes on one machine must not both take the defaults."""
    flags = ("dashboard-agent-listen-port", "dashboard-agent-grpc-port")
    flags += ("runtime-env-agent-port", "metrics-export-port")
    flags += ("node-manager-port", "object-manager-port")
    return [f"--{flag}={port}" for flag, port in zip(flags, ports, strict=True)] + [
        f"--min-worker-port={worker_base}",
        f"--max-worker-port={worker_base + WORKER_PORTS - 1}",
    ]


def start_cluster(
    root: Path, ray_tmp: Path, env: dict[str, str], token_file: Path, rng: random.Random
) -> tuple[LocalCluster, list[subprocess.Popen]]:
    """Head (with the job server) and one worker node; on failure, their processes are stopped
    and the error carries the tails of their logs."""
    gcs, dashboard, client, *ports, head_workers, node_workers = pick_ports(15, rng)
    gcs_address, dashboard_url = f"127.0.0.1:{gcs}", f"http://127.0.0.1:{dashboard}"
    procs: list[subprocess.Popen] = []
    logs = [root / "head.log", root / "worker.log"]
    try:
        head = [
            "--head",
            f"--port={gcs}",
            "--num-cpus=1",
            "--include-dashboard=true",  # the job server is part of the dashboard
            "--dashboard-host=127.0.0.1",
            f"--dashboard-port={dashboard}",
            f"--ray-client-server-port={client}",
            f"--temp-dir={ray_tmp / 'head'}",
            *node_ports(ports[:6], head_workers),
        ]
        procs.append(start_node(head, env, logs[0]))
        wait_until(lambda: alive_nodes(gcs_address, env) == 1, procs, "head node")
        # A worker with its own --temp-dir: sharing the head's would share its runtime_resources,
        # and the worker's agent would delete and re-extract the job's working_dir under the
        # running driver (files the entrypoint wrote there vanish).
        worker = [
            f"--address={gcs_address}",
            "--num-cpus=1",
            f"--temp-dir={ray_tmp / 'worker'}",
            *node_ports(ports[6:12], node_workers),
        ]
        procs.append(start_node(worker, env, logs[1]))
        wait_until(lambda: alive_nodes(gcs_address, env) == 2, procs, "worker node")
        job_server = ["job", "list", "--address", dashboard_url]
        wait_until(lambda: ray_cli(job_server, env).returncode == 0, procs, "job server")
    except NodeStartError as exc:
        for proc in reversed(procs):
            stop_node(proc)
        tails = "\n".join(f"  {log.name}:\n{log_tail(log)}" for log in logs[: len(procs)])
        raise NodeStartError(f"{exc}\n{tails}") from None
    return LocalCluster(gcs_address, dashboard_url, env, token_file, root), procs


@pytest.fixture(scope="module")
def two_node_cluster(tmp_path_factory) -> Iterator[LocalCluster]:
    if not (BIN / "ray").is_file() or not (BIN / "hybridft").is_file():
        pytest.fail(f"needs the project's venv ({BIN}/ray and {BIN}/hybridft): run `make test`")
    root = tmp_path_factory.mktemp("cluster")
    # Short: Ray's unix sockets live under --temp-dir and their paths are limited to 107 bytes.
    ray_tmp = Path(tempfile.mkdtemp(prefix="hft-ray-", dir="/tmp"))
    token_file = root / "auth_token"
    token_file.write_text(secrets.token_hex(32))
    token_file.chmod(0o600)
    env = base_env() | {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token_file)}
    # Ray 2.60's `ray start --block` drains for up to 30 s on SIGTERM; a test cluster need not.
    env["RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S"] = "0"
    rng = random.Random()
    procs: list[subprocess.Popen] = []
    failures: list[str] = []
    try:
        # A node can fail to come up on a loaded 2-core machine (once in CI the worker's raylet
        # got no answer from the GCS within Ray's fixed 30 s): try again on fresh ports and dirs.
        for attempt in range(3):
            attempt_root = root / f"attempt{attempt}"
            attempt_root.mkdir()
            try:
                cluster, procs = start_cluster(
                    attempt_root, ray_tmp / str(attempt), env, token_file, rng
                )
                break
            except NodeStartError as exc:
                failures.append(f"attempt {attempt + 1}: {exc}")
        else:
            pytest.fail("the two-node cluster did not start:\n" + "\n".join(failures))
        yield cluster
    finally:
        for proc in reversed(procs):
            stop_node(proc)
        shutil.rmtree(ray_tmp, ignore_errors=True)


def refused_env(cluster: LocalCluster, case: str) -> dict[str, str]:
    env = base_env() | {"HOME": str(cluster.root / "empty-home")}  # no ~/.ray/auth_token either
    if case == "wrong token":
        env |= {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}
    elif case == "token without RAY_AUTH_MODE":
        env |= {"RAY_AUTH_TOKEN_PATH": str(cluster.token_file)}
    return env


@pytest.mark.parametrize(
    ("case", "refusal"),
    [
        ("no token", "Unauthorized"),  # 401
        ("wrong token", "Invalid authentication token"),  # 403
        # Ray 2.60's client sends a token only under RAY_AUTH_MODE=token: the token alone is 401.
        ("token without RAY_AUTH_MODE", "Unauthorized"),
    ],
)
def test_submit_without_the_token_is_refused(two_node_cluster, case, refusal) -> None:
    cluster = two_node_cluster
    marker = f"refused-{secrets.token_hex(4)}"
    submit = [
        "job",
        "submit",
        "--address",
        cluster.dashboard_url,
        "--no-wait",
        "--",
        "echo",
        marker,
    ]
    out = ray_cli(submit, refused_env(cluster, case))
    assert out.returncode != 0, out.stdout + out.stderr
    assert refusal in out.stdout + out.stderr
    jobs = ray_cli(["job", "list", "--address", cluster.dashboard_url], cluster.env)
    assert jobs.returncode == 0, jobs.stderr
    assert marker not in jobs.stdout  # nothing was created


def test_job_trains_across_two_nodes(two_node_cluster) -> None:
    cluster = two_node_cluster
    shared = cluster.root / "shared"
    spec = yaml.safe_load((REPO / "jobs" / "cluster_smoke.yaml").read_text())
    spec["output_dir"] = str(shared / "runs")
    spec["model"]["cache_dir"] = str(shared / "base")
    spec_file = shared / "cluster_smoke.yaml"
    shared.mkdir()
    spec_file.write_text(yaml.safe_dump(spec, sort_keys=False))
    script = (
        "hybridft data synth --out data/cluster_smoke && "
        f"hybridft train {shlex.quote(str(spec_file))} "
        f"--tracking-uri sqlite:///{shared / 'mlflow.db'}"
    )
    submission_id = f"hft-cluster-smoke-{secrets.token_hex(3)}"
    submit = [
        "job",
        "submit",
        "--address",
        cluster.dashboard_url,
        "--submission-id",
        submission_id,
        "--working-dir",
        str(REPO),
        "--runtime-env-json",
        json.dumps({"excludes": EXCLUDES}),
        "--",
        # `ray job submit` shlex-joins its arguments: a chain must be one `sh -c` argument.
        "sh",
        "-c",
        script,
    ]
    out = ray_cli(submit, cluster.env, timeout=420)  # waits for the job, streaming its logs
    logs = out.stdout + out.stderr
    assert out.returncode == 0, logs[-6000:]
    jobs = ray_cli(
        ["list", "jobs", "--address", cluster.gcs_address, "--format", "json"]
        + ["--filter", f"submission_id={submission_id}"],
        cluster.env,
    )
    assert [job["status"] for job in json.loads(jobs.stdout)] == ["SUCCEEDED"], jobs.stdout

    run_files = list((shared / "runs").glob("*/run.json"))
    assert len(run_files) == 1, run_files
    run_dir = run_files[0].parent
    assert str(run_dir) in logs  # `hybridft train` prints its run dir
    for artifact in ("final/model/config.json", "final/model/model.safetensors", "mixture.json"):
        assert (run_dir / artifact).is_file(), artifact
    # Ray Train's checkpoints went to storage_path = <output_dir>/ray on the shared storage.
    assert list((shared / "runs" / "ray" / run_dir.name).glob("checkpoint_*"))

    # The two training workers ran on the two nodes.
    actors = ray_cli(
        ["list", "actors", "--address", cluster.gcs_address, "--detail", "--format", "json"]
        + ["--filter", "class_name=RayTrainWorker"],
        cluster.env,
    )
    assert actors.returncode == 0, actors.stderr
    nodes = {a["node_id"] for a in json.loads(actors.stdout)}
    assert len(nodes) == 2, nodes
