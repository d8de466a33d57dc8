"""Every YAML under cluster/ parses and is a cluster config that would run hybridft as shipped.

One checker, ``manifest_problems``, knows four kinds: the Ray cluster launcher config (checked
against Ray's own ray-schema.json, then our rules), KubeRay RayCluster and RayJob (a small
handwritten schema, then our rules), and the PersistentVolumeClaim they share; a second,
``dockerfile_problems``, reads cluster/Dockerfile with the same install rules as the launcher.
Each returns a list of problems; the tests below also feed them deliberately broken copies, so a
checker that passes everything would fail here. No Ray cluster is started and no image is built.
"""

from __future__ import annotations

import copy
import importlib.metadata
import json
import re
import shlex
import tomllib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import ray
import ray.autoscaler
import yaml

from hybridft.errors import UserError
from hybridft.specs import load_job

REPO = Path(__file__).resolve().parents[2]
CLUSTER = REPO / "cluster"
RAY_VERSION = ray.__version__
RAY_LAUNCHER_SCHEMA = json.loads(
    (Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text()
)
Doc = dict[str, Any]


def torch_pin() -> str:
    """The torch requirement pyproject pins (``torch==X``): clusters install the same one."""
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    return next(d for d in deps if d.replace(" ", "").startswith("torch=="))


def deepspeed_pin() -> str:
    """The DeepSpeed this venv runs (``deepspeed==X``): clusters install the same one."""
    return f"deepspeed=={importlib.metadata.version('deepspeed')}"


def _pinned(pin: str) -> str:
    """A pattern for exactly ``pin`` (torch==2.13.0 but not torch==2.13.0.1)."""
    return re.escape(pin) + r"(?![\w.])"


# PyTorch's index for one CUDA build (cu128 = CUDA 12.8). PyPI's default torch is whatever CUDA
# that release chose, not one matched to the nodes' drivers; an --extra-index-url leaves pip the
# choice between the two.
CUDA_INDEX = re.compile(r"--index-url[= ]https://download\.pytorch\.org/whl/cu\d+(?![\w.])")


# -- handwritten schemas for the KubeRay CRDs (ray.io/v1): shapes only; the rules live in code ----
# KubeRay rejects non-string rayStartParams values (num-cpus: 0 must be "0"). A RayJob either
# brings its cluster (rayClusterSpec) or selects a running one (clusterSelector), never both.
KUBERAY_SCHEMAS = yaml.safe_load(
    """
pod_template: &pod
  type: object
  required: [spec]
  properties:
    spec:
      type: object
      required: [containers]
      properties:
        volumes: {type: array}
        containers:
          type: array
          minItems: 1
          items:
            type: object
            required: [name, image]
            properties: {image: {type: string, minLength: 1}}
start_params: &params {type: object, additionalProperties: {type: string}}
cluster_spec: &cluster
  type: object
  required: [rayVersion, headGroupSpec, workerGroupSpecs]
  properties:
    rayVersion: {type: string}
    authOptions: {type: object, properties: {mode: {enum: [token, disabled]}}}
    headGroupSpec:
      type: object
      required: [template]
      properties: {rayStartParams: *params, template: *pod}
    workerGroupSpecs:
      type: array
      minItems: 1
      items:
        type: object
        required: [groupName, replicas, minReplicas, maxReplicas, template]
        properties:
          groupName: {type: string, minLength: 1}
          replicas: {type: integer, minimum: 0}
          minReplicas: {type: integer, minimum: 0}
          maxReplicas: {type: integer, minimum: 0}
          rayStartParams: *params
          template: *pod
RayCluster:
  type: object
  required: [apiVersion, kind, metadata, spec]
  properties:
    apiVersion: {const: ray.io/v1}
    metadata: {type: object, required: [name]}
    spec: *cluster
RayJob:
  type: object
  required: [apiVersion, kind, metadata, spec]
  properties:
    apiVersion: {const: ray.io/v1}
    metadata: {type: object, required: [name]}
    spec:
      type: object
      required: [entrypoint]
      oneOf: [{required: [rayClusterSpec]}, {required: [clusterSelector]}]
      properties:
        entrypoint: {type: string, minLength: 1}
        runtimeEnvYAML: {type: string}
        shutdownAfterJobFinishes: {type: boolean}
        ttlSecondsAfterFinished: {type: integer, minimum: 0}
        submissionMode: {enum: [K8sJobMode, HTTPMode, SidecarMode]}
        rayClusterSpec: *cluster
        clusterSelector: {type: object, additionalProperties: {type: string}}
"""
)


def schema_problems(doc: Doc, schema: Doc) -> list[str]:
    validator = jsonschema.validators.validator_for(schema)(schema)
    return [
        f"schema: {'.'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}"
        for e in sorted(validator.iter_errors(doc), key=lambda e: list(map(str, e.path)))
    ]


def walk(node: Any) -> Iterator[Any]:
    yield node
    children = node.values() if isinstance(node, dict) else node if isinstance(node, list) else []
    for child in children:
        yield from walk(child)


def auth_disabled_problems(doc: Doc) -> list[str]:
    """Token auth stays on: no RAY_AUTH_MODE=disabled in a command, an env list or authOptions."""
    for node in walk(doc):
        if isinstance(node, str) and re.search(r"RAY_AUTH_MODE=['\"]?disabled", node):
            return ["auth: RAY_AUTH_MODE=disabled found; token auth must stay on"]
        if isinstance(node, dict) and node.get("name") == "RAY_AUTH_MODE":
            if node.get("value") != "token":
                return [f"auth: env RAY_AUTH_MODE={node.get('value')!r}, expected 'token'"]
        if isinstance(node, dict) and isinstance(node.get("authOptions"), dict):
            if node["authOptions"].get("mode") == "disabled":
                return ["auth: authOptions.mode is disabled, expected token"]
    return []


# -- installs: the same rules for the launcher's setup_commands and the Dockerfile's RUN lines ----
def _first_index(commands: list[str], pattern: str) -> int | None:
    return next((i for i, c in enumerate(commands) if re.search(pattern, c)), None)


def install_indices(commands: list[str]) -> dict[str, int | None]:
    """Where torch, the project (``-e .``) and DeepSpeed are installed in ``commands``."""
    return {
        "torch": _first_index(commands, r"pip install\b.*\btorch\b"),
        "package": _first_index(commands, r"pip install\b.*\s-e\s+\.(\s|$)"),
        "deepspeed": _first_index(commands, r"pip install\b.*\bdeepspeed\b"),
    }


def install_problems(commands: list[str], where: str) -> list[str]:
    """pyproject's torch from a CUDA index, then the project, then this venv's DeepSpeed."""
    problems = []
    pin, ds_pin = torch_pin(), deepspeed_pin()
    at = install_indices(commands)
    torch_at, package_at, deepspeed_at = at["torch"], at["package"], at["deepspeed"]
    if torch_at is None or not re.search(_pinned(pin), commands[torch_at]):
        problems.append(f"{where}: expected `pip install {pin}` (pyproject's pin)")
    elif not CUDA_INDEX.search(commands[torch_at]):
        problems.append(
            f"{where}: expected {pin} from a CUDA index "
            "(--index-url https://download.pytorch.org/whl/cuXXX)"
        )
    if package_at is None:
        problems.append(f"{where}: expected `pip install -e .` (the project)")
    if torch_at is not None and package_at is not None and torch_at > package_at:
        problems.append(f"{where}: expected {pin} installed before the package")
    if deepspeed_at is None or not re.search(_pinned(ds_pin), commands[deepspeed_at]):
        problems.append(f"{where}: expected `pip install {ds_pin}` (the version the tests run)")
    if deepspeed_at is not None:
        ds = commands[deepspeed_at]
        if "DS_BUILD_OPS=0" not in ds or "--no-build-isolation" not in ds:
            problems.append(f"{where}: deepspeed needs DS_BUILD_OPS=0 --no-build-isolation")
        if torch_at is None or deepspeed_at < torch_at:
            problems.append(f"{where}: deepspeed must come after torch")
    return problems


# -- the Ray cluster launcher config -------------------------------------------------------------
def launcher_problems(doc: Doc) -> list[str]:
    problems = schema_problems(doc, RAY_LAUNCHER_SCHEMA)
    types: dict[str, Doc] = doc.get("available_node_types") or {}
    head = doc.get("head_node_type")
    if not types:
        problems.append("available_node_types: expected at least one node type")
    if head not in types:
        problems.append(f"head_node_type: expected one of {sorted(types)}, got {head!r}")
    for name, node_type in types.items():
        problems += [
            f"available_node_types.{name}: {key} is missing"
            for key in ("resources", "node_config")
            if key not in node_type
        ]
        low, high = node_type.get("min_workers", 0), node_type.get("max_workers")
        if high is not None and low > high:
            problems.append(f"available_node_types.{name}: min_workers {low} > max_workers {high}")
    workers = {n: t for n, t in types.items() if n != head}
    if not any(t.get("resources", {}).get("GPU", 0) >= 1 for t in workers.values()):
        problems.append("available_node_types: expected a worker type with resources.GPU >= 1")
    min_total = sum(t.get("min_workers", 0) for t in workers.values())
    if doc.get("max_workers", 0) < min_total:
        problems.append(f"max_workers: expected >= {min_total} (sum of min_workers)")

    problems += install_problems([str(c) for c in doc.get("setup_commands", [])], "setup_commands")
    docker = doc.get("docker") or {}
    options = [
        str(o)
        for key in ("run_options", "head_run_options", "worker_run_options")
        for o in docker.get(key, [])
    ]
    if docker.get("disable_shm_size_detection") and not any("--shm-size" in o for o in options):
        problems.append(
            "docker: /dev/shm would be Docker's 64 MB: set --shm-size in run_options "
            "or leave disable_shm_size_detection off (Ray then sizes it per node)"
        )
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        starts = [str(c) for c in doc.get(key, []) if "ray start" in str(c)]
        if not starts or not all("RAY_AUTH_MODE=token" in c for c in starts):
            problems.append(f"{key}: expected every `ray start` run with RAY_AUTH_MODE=token")
    if not any(str(k).rstrip("/").endswith(".ray/auth_token") for k in doc.get("file_mounts", {})):
        problems.append("file_mounts: expected ~/.ray/auth_token copied to every node")
    return problems


# -- KubeRay ----------------------------------------------------------------------------------
def _pod_specs(cluster_spec: Doc) -> list[tuple[str, Doc]]:
    pods = [("headGroupSpec", cluster_spec["headGroupSpec"]["template"]["spec"])]
    for group in cluster_spec.get("workerGroupSpecs", []):
        pods.append((f"workerGroupSpecs[{group['groupName']}]", group["template"]["spec"]))
    return pods


def _shared_mounts(pod: Doc) -> dict[str, str]:
    """mountPath -> claimName for the pod's mounts backed by a PersistentVolumeClaim."""
    claims = {
        v["name"]: v["persistentVolumeClaim"]["claimName"]
        for v in pod.get("volumes", [])
        if "persistentVolumeClaim" in v
    }
    return {
        m["mountPath"]: claims[m["name"]]
        for m in pod["containers"][0].get("volumeMounts", [])
        if m["name"] in claims
    }


def shared_paths(cluster_spec: Doc) -> set[str]:
    """Mount paths every pod of the cluster has, backed by the same volume claim."""
    mounts = [set(_shared_mounts(pod).items()) for _, pod in _pod_specs(cluster_spec)]
    return {path for path, _ in set.intersection(*mounts)} if mounts else set()


def shm_problems(pod: Doc) -> list[str]:
    """The Ray container mounts a RAM-backed emptyDir with a sizeLimit at /dev/shm.

    A container's /dev/shm is 64 MB by default: NCCL, torch data loaders and Ray's object store
    need more. The volume counts against the pod's memory limit, hence the sizeLimit.
    """
    in_memory = {
        v["name"]: v["emptyDir"]
        for v in pod.get("volumes", [])
        if (v.get("emptyDir") or {}).get("medium") == "Memory"
    }
    mounts = pod["containers"][0].get("volumeMounts", [])
    name = next((m["name"] for m in mounts if m.get("mountPath") == "/dev/shm"), None)
    if name not in in_memory:
        return ["expected an emptyDir {medium: Memory} mounted at /dev/shm (the default is 64 MB)"]
    if not in_memory[name].get("sizeLimit"):
        return ["the /dev/shm emptyDir needs a sizeLimit (it counts against the memory limit)"]
    return []


def _gpu_limit(group: Doc) -> int:
    limits = group["template"]["spec"]["containers"][0].get("resources", {}).get("limits", {})
    return int(limits.get("nvidia.com/gpu", 0))


def raycluster_spec_problems(spec: Doc, where: str, pvcs: dict[str, Doc]) -> list[str]:
    problems = []
    if spec.get("rayVersion") != RAY_VERSION:
        problems.append(
            f"{where}.rayVersion: expected {RAY_VERSION!r} (the installed Ray), "
            f"got {spec.get('rayVersion')!r}"
        )
    if (spec.get("authOptions") or {}).get("mode") != "token":
        problems.append(f"{where}.authOptions.mode: expected token")
    groups = spec["workerGroupSpecs"]
    for group in groups:
        name = f"{where}.workerGroupSpecs[{group['groupName']}]"
        low, replicas, high = group["minReplicas"], group["replicas"], group["maxReplicas"]
        if not low <= replicas <= high:
            problems.append(
                f"{name}: expected minReplicas <= replicas <= maxReplicas, "
                f"got {low} / {replicas} / {high}"
            )
    if not any(_gpu_limit(g) >= 1 for g in groups):
        problems.append(f"{where}.workerGroupSpecs: expected a GPU group (limits nvidia.com/gpu)")
    for pod_name, pod in _pod_specs(spec):
        image = pod["containers"][0]["image"]
        if RAY_VERSION not in image.rsplit(":", 1)[-1]:
            problems.append(f"{where}.{pod_name}: image {image!r} does not name Ray {RAY_VERSION}")
        problems += [f"{where}.{pod_name}: {p}" for p in shm_problems(pod)]
        for claim in _shared_mounts(pod).values():
            modes = pvcs.get(claim, {}).get("spec", {}).get("accessModes", [])
            if "ReadWriteMany" not in modes:
                problems.append(
                    f"{where}.{pod_name}: claim {claim!r} is not a ReadWriteMany "
                    "PersistentVolumeClaim under cluster/"
                )
    if not shared_paths(spec):
        problems.append(f"{where}: expected a shared volume mounted at the same path in every pod")
    for node in walk(spec):
        if isinstance(node, dict) and node.get("name") == "MLFLOW_TRACKING_URI":
            if not str(node.get("value", "")).startswith(("http://", "https://")):
                problems.append(f"{where}: MLFLOW_TRACKING_URI must be a server (http[s]://)")
    return problems


def entrypoint_commands(entrypoint: str) -> tuple[list[list[str]], list[str]]:
    """The entrypoint's commands (argv lists) and the problems found splitting it.

    KubeRay pastes the entrypoint unquoted into its submitter's shell line after ``--``, so a
    bare ``&&`` would run the rest in the submitter pod: chains must sit inside ``sh -c '...'``.
    """
    argv = shlex.split(entrypoint)
    if len(argv) == 3 and argv[0] in ("sh", "bash") and argv[1] == "-c":
        argv = shlex.split(argv[2])
    elif any(t in ("&&", "||", "|", ";") or t.endswith(";") for t in argv):
        return [], ["entrypoint: a bare shell operator; wrap the chain in sh -c '...'"]
    commands: list[list[str]] = [[]]
    for token in argv:
        if token == "&&":
            commands.append([])
        else:
            commands[-1].append(token)
    return commands, []


def rayjob_entrypoint_problems(entrypoint: str) -> tuple[list[str], str | None]:
    """Problems with the entrypoint, and the job spec path it trains."""
    commands, problems = entrypoint_commands(entrypoint)
    if problems:
        return problems, None
    *before, last = commands
    for command in before:
        if command[:3] != ["hybridft", "data", "synth"]:
            problems.append(f"entrypoint: only `hybridft data synth` may precede, got {command}")
    if last[:2] != ["hybridft", "train"] or len(last) < 3:
        return problems + [f"entrypoint: expected `hybridft train SPEC` last, got {last}"], None
    if "--tracking-uri" in last:
        uri = last[last.index("--tracking-uri") + 1]
        if not uri.startswith(("http://", "https://")):
            problems.append(f"entrypoint: --tracking-uri {uri!r}: expected an MLflow server")
    return problems, last[2]


def job_spec_problems(spec_path: str, shared: set[str] | None) -> list[str]:
    """The trained spec is in jobs/, loads, and keeps what workers share on shared storage."""
    path = REPO / spec_path
    if Path(spec_path).is_absolute() or Path(spec_path).parts[:1] != ("jobs",):
        return [f"entrypoint: expected a spec under jobs/, got {spec_path!r}"]
    if not path.is_file():
        return [f"entrypoint: {spec_path} does not exist in this repository"]
    try:
        job = load_job(path)
    except UserError as exc:
        return [f"entrypoint: {spec_path} does not load: {exc}"]
    problems = []
    for key, value in (("output_dir", job.output_dir), ("model.cache_dir", job.model.cache_dir)):
        if not value.startswith("/"):
            problems.append(f"{spec_path}: {key} {value!r}: expected an absolute shared path")
        elif shared is not None and not any(value.startswith(p.rstrip("/") + "/") for p in shared):
            problems.append(f"{spec_path}: {key} {value!r} is not under a shared mount {shared}")
    return problems


def rayjob_problems(doc: Doc, pvcs: dict[str, Doc]) -> list[str]:
    problems = schema_problems(doc, KUBERAY_SCHEMAS["RayJob"])
    if problems:
        return problems
    spec = doc["spec"]
    entry_problems, spec_path = rayjob_entrypoint_problems(spec["entrypoint"])
    problems += entry_problems
    runtime_env = yaml.safe_load(spec.get("runtimeEnvYAML", "")) or {}
    if not isinstance(runtime_env, dict) or not runtime_env.get("working_dir"):
        problems.append("runtimeEnvYAML: expected a mapping with working_dir")
    shared = None
    if "rayClusterSpec" in spec:
        problems += raycluster_spec_problems(spec["rayClusterSpec"], "spec.rayClusterSpec", pvcs)
        shared = shared_paths(spec["rayClusterSpec"])
        if spec.get("shutdownAfterJobFinishes") is not True:
            problems.append("spec.shutdownAfterJobFinishes: expected true (else the cluster stays)")
    if spec_path is not None:
        problems += job_spec_problems(spec_path, shared)
    return problems


def manifest_problems(doc: Any, pvcs: dict[str, Doc]) -> list[str]:
    """Everything wrong with one YAML document from cluster/ (empty: it would run as shipped)."""
    if not isinstance(doc, dict):
        return [f"expected a mapping, got {type(doc).__name__}"]
    problems = auth_disabled_problems(doc)
    kind = doc.get("kind")
    if kind is None and "provider" in doc:
        return problems + launcher_problems(doc)
    if kind == "RayCluster":
        shape = schema_problems(doc, KUBERAY_SCHEMAS["RayCluster"])
        return problems + (shape or raycluster_spec_problems(doc["spec"], "spec", pvcs))
    if kind == "RayJob":
        return problems + rayjob_problems(doc, pvcs)
    if kind == "PersistentVolumeClaim":
        if "ReadWriteMany" not in doc.get("spec", {}).get("accessModes", []):
            problems.append("PersistentVolumeClaim: expected accessModes [ReadWriteMany]")
        return problems
    return problems + [f"unknown manifest kind {kind!r}"]


# -- the image ----------------------------------------------------------------------------------
def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order: continuations joined, comments dropped, ARGs expanded.

    Handwritten (no Dockerfile parser is a dependency): enough for our one-stage file.
    """
    logical, current = [], ""
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        logical.append(current + stripped)
        current = ""
    args: dict[str, str] = {}
    instructions = []
    for entry in logical:
        keyword, _, rest = entry.partition(" ")
        rest = re.sub(
            r"\$\{(\w+)\}|\$(\w+)",
            lambda m: args.get(m[1] or m[2], m[0]),
            rest.strip(),
        )
        if keyword.upper() == "ARG":
            name, _, default = rest.partition("=")
            args[name] = default
        instructions.append((keyword.upper(), rest))
    return instructions


def dockerfile_problems(text: str) -> list[str]:
    """Everything wrong with cluster/Dockerfile (empty: it would build the image we test for)."""
    instructions = dockerfile_instructions(text)
    base = next((args for keyword, args in instructions if keyword == "FROM"), "")
    runs = [args for keyword, args in instructions if keyword == "RUN"]
    problems = []
    if not base.startswith(f"rayproject/ray:{RAY_VERSION}-"):
        problems.append(f"FROM: expected rayproject/ray:{RAY_VERSION}-..., got {base!r}")
    problems += install_problems(runs, "Dockerfile")
    at = install_indices(runs)
    # No GPU at build time: torch.cuda.is_available() is False even in a CUDA build.
    cuda_check_at = _first_index(runs, r"\bpython3?\s+-c\b.*\btorch\.version\.cuda\b")
    if cuda_check_at is None or at["torch"] is None or cuda_check_at < at["torch"]:
        problems.append(
            "Dockerfile: expected a RUN after the torch install that fails unless "
            "torch.version.cuda is set (a CUDA build)"
        )
    imports_at = [
        i
        for i, run in enumerate(runs)
        if re.search(r"\bpython3?\s+-c\b", run)
        and all(re.search(rf"\bimport\b[^;]*\b{name}\b", run) for name in ("deepspeed", "hybridft"))
    ]
    installed_at = [i for i in (at["package"], at["deepspeed"]) if i is not None]
    if not any(i > max(installed_at, default=len(runs)) for i in imports_at):
        problems.append(
            'Dockerfile: expected `python -c "import deepspeed, hybridft"` after both installs'
        )
    return problems


# -- the shipped files -------------------------------------------------------------------------
def cluster_yaml_files() -> list[Path]:
    return sorted(p for p in CLUSTER.rglob("*") if p.suffix in (".yaml", ".yml"))


def documents(path: Path) -> list[Any]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def shipped_pvcs() -> dict[str, Doc]:
    return {
        d["metadata"]["name"]: d
        for path in cluster_yaml_files()
        for d in documents(path)
        if isinstance(d, dict) and d.get("kind") == "PersistentVolumeClaim"
    }


def shipped(relative: str) -> Doc:
    """A copy of the file's main document (the one that is not a PersistentVolumeClaim)."""
    docs = documents(CLUSTER / relative)
    return copy.deepcopy(next(d for d in docs if d.get("kind") != "PersistentVolumeClaim"))


@pytest.mark.parametrize("path", cluster_yaml_files(), ids=lambda p: str(p.relative_to(CLUSTER)))
def test_cluster_yaml_parses_and_would_run(path: Path) -> None:
    docs = documents(path)  # a YAML error fails here, naming the file
    assert docs, f"{path}: no YAML documents"
    pvcs = shipped_pvcs()
    for doc in docs:
        assert manifest_problems(doc, pvcs) == []


def test_every_cluster_kind_is_shipped() -> None:
    kinds = {d.get("kind") or "launcher" for path in cluster_yaml_files() for d in documents(path)}
    assert {"launcher", "RayCluster", "RayJob", "PersistentVolumeClaim"} <= kinds


def test_dockerfile_would_build_as_shipped() -> None:
    assert dockerfile_problems((CLUSTER / "Dockerfile").read_text()) == []


# -- the checker rejects broken copies -----------------------------------------------------------
def _set(path: str, value: Any) -> Callable[[Doc], None]:
    """A mutation setting a dotted path ('a.b.0.c'); value None deletes the key."""

    def mutate(doc: Doc) -> None:
        *parents, last = path.split(".")
        node: Any = doc
        for key in parents:
            node = node[int(key)] if isinstance(node, list) else node[key]
        if value is None:
            del node[int(last) if isinstance(node, list) else last]
        elif isinstance(node, list):
            node[int(last)] = value
        else:
            node[last] = value

    return mutate


def _reverse_setup(doc: Doc) -> None:
    doc["setup_commands"].reverse()


def _no_gpu_workers(doc: Doc) -> None:
    for node_type in doc["available_node_types"].values():
        node_type["resources"].pop("GPU", None)


def _more_min_workers_than_max(doc: Doc) -> None:
    doc["available_node_types"]["worker.gpu.a10g"]["min_workers"] = 3
    doc["max_workers"] = 2


def _worker_gpu_removed(doc: Doc) -> None:
    for group in doc["spec"]["workerGroupSpecs"]:
        del group["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"]


def _shared_volume_to_emptydir(doc: Doc) -> None:
    doc["spec"]["headGroupSpec"]["template"]["spec"]["volumes"][0] = {
        "name": "shared",
        "emptyDir": {},
    }


def _auth_disabled_env(doc: Doc) -> None:
    container = doc["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    container.setdefault("env", []).append({"name": "RAY_AUTH_MODE", "value": "disabled"})


def _pods(doc: Doc) -> list[Doc]:
    spec = doc["spec"].get("rayClusterSpec", doc["spec"])
    return [pod for _, pod in _pod_specs(spec)]


def _shm_on_disk(doc: Doc) -> None:
    """The last pod's /dev/shm volume loses medium: Memory (a disk-backed emptyDir)."""
    volume = next(v for v in _pods(doc)[-1]["volumes"] if v["name"] == "dshm")
    volume["emptyDir"].pop("medium")


def _shm_without_size_limit(doc: Doc) -> None:
    volume = next(v for v in _pods(doc)[0]["volumes"] if v["name"] == "dshm")
    volume["emptyDir"].pop("sizeLimit")


def _shm_unmounted(doc: Doc) -> None:
    container = _pods(doc)[0]["containers"][0]
    container["volumeMounts"] = [
        m for m in container["volumeMounts"] if m["mountPath"] != "/dev/shm"
    ]


LAUNCHER, RAYCLUSTER, RAYJOB = "aws-gpu.yaml", "kuberay/raycluster.yaml", "kuberay/rayjob.yaml"
HEAD_SPEC = "spec.headGroupSpec.template.spec"
SMOKE = "hybridft train jobs/cluster_smoke.yaml"
EXTRA_INDEX = "--extra-index-url https://download.pytorch.org/whl/cu128"
DS_INSTALL = "cd ~/hybridft && DS_BUILD_OPS=0 pip install -q --no-build-isolation"
BROKEN = [
    (LAUNCHER, _reverse_setup, "installed before the package"),
    (LAUNCHER, _set("head_node_type", "head.gpu"), "head_node_type"),
    (LAUNCHER, _no_gpu_workers, "resources.GPU >= 1"),
    (LAUNCHER, _more_min_workers_than_max, "max_workers: expected >= 3"),
    (LAUNCHER, _set("worker_start_ray_commands.1", "ray start --address=x:6379"), "AUTH_MODE"),
    (LAUNCHER, _set("file_mounts", {}), "auth_token"),
    (LAUNCHER, _set("setup_commands.2", "pip install deepspeed"), "DS_BUILD_OPS=0"),
    (LAUNCHER, _set("autoscale", True), "schema"),
    (LAUNCHER, _set("setup_commands.0", f"pip install -q {torch_pin()}"), "CUDA index"),
    (LAUNCHER, _set("setup_commands.0", f"pip install {torch_pin()} {EXTRA_INDEX}"), "CUDA index"),
    (LAUNCHER, _set("setup_commands.0", "pip install -q torch"), "pyproject's pin"),
    (LAUNCHER, _set("setup_commands.2", f"{DS_INSTALL} deepspeed"), deepspeed_pin()),
    (LAUNCHER, _set("setup_commands.2", f"{DS_INSTALL} {deepspeed_pin()}.1"), deepspeed_pin()),
    (LAUNCHER, _set("docker.disable_shm_size_detection", True), "/dev/shm"),
    (RAYCLUSTER, _set("spec.rayVersion", "2.9.0"), "rayVersion"),
    (RAYCLUSTER, _set("spec.workerGroupSpecs.0.minReplicas", 5), "minReplicas"),
    (RAYCLUSTER, _worker_gpu_removed, "GPU group"),
    (RAYCLUSTER, _shared_volume_to_emptydir, "shared volume"),
    (RAYCLUSTER, _set("spec.headGroupSpec.rayStartParams.num-cpus", 0), "schema"),
    (RAYCLUSTER, _auth_disabled_env, "RAY_AUTH_MODE"),
    (RAYCLUSTER, _set("spec.authOptions", None), "authOptions"),
    (RAYCLUSTER, _set(f"{HEAD_SPEC}.containers.0.image", "ray:2.9.0"), "does not name Ray"),
    (RAYCLUSTER, _shm_on_disk, "workerGroupSpecs[gpu]: expected an emptyDir {medium: Memory}"),
    (RAYCLUSTER, _shm_without_size_limit, "headGroupSpec: the /dev/shm emptyDir needs a sizeLimit"),
    (RAYJOB, _shm_unmounted, "headGroupSpec: expected an emptyDir {medium: Memory}"),
    (RAYJOB, _shm_on_disk, "workerGroupSpecs[gpu]: expected an emptyDir {medium: Memory}"),
    (RAYJOB, _set("spec.entrypoint", "hybridft data synth && hybridft train x"), "sh -c"),
    (RAYJOB, _set("spec.entrypoint", "hybridft train jobs/missing.yaml"), "does not exist"),
    (RAYJOB, _set("spec.entrypoint", "python train.py"), "hybridft train"),
    (RAYJOB, _set("spec.entrypoint", "hybridft train jobs/demo.yaml"), "output_dir"),
    (RAYJOB, _set("spec.entrypoint", f"{SMOKE} --tracking-uri sqlite:///m.db"), "MLflow server"),
    (RAYJOB, _set("spec.shutdownAfterJobFinishes", None), "shutdownAfterJobFinishes"),
    (RAYJOB, _set("spec.clusterSelector", {"app": "hybridft"}), "schema"),
    (RAYJOB, _set("spec.runtimeEnvYAML", "pip: [numpy]"), "working_dir"),
]


@pytest.mark.parametrize(
    ("relative", "mutate", "expected"), BROKEN, ids=[f"{b[0]}:{b[2]}" for b in BROKEN]
)
def test_checker_rejects_broken_copy(relative, mutate, expected) -> None:
    doc = shipped(relative)
    pvcs = shipped_pvcs()
    assert manifest_problems(doc, pvcs) == []  # the shipped file passes...
    mutate(doc)
    problems = manifest_problems(doc, pvcs)
    assert any(expected in p for p in problems), problems  # ...and the broken copy does not


def test_checker_rejects_unknown_kind() -> None:
    assert manifest_problems({"apiVersion": "v1", "kind": "Deployment"}, {}) != []


def test_launcher_shm_detection_off_with_explicit_size_passes() -> None:
    doc = shipped(LAUNCHER)
    doc["docker"]["disable_shm_size_detection"] = True
    doc["docker"]["worker_run_options"] = ["--shm-size=16g"]
    assert manifest_problems(doc, shipped_pvcs()) == []


# -- the Dockerfile checker rejects broken copies ------------------------------------------------
def _edit(old: str, new: str) -> Callable[[str], str]:
    """A mutation replacing ``old`` (which must be in the shipped Dockerfile) by ``new``."""

    def mutate(text: str) -> str:
        assert old in text, old
        return text.replace(old, new)

    return mutate


def _project_installed_first(text: str) -> str:
    project = "RUN pip install --no-cache-dir -e .\n"
    text = _edit(project, "")(text)
    return _edit("WORKDIR /home/ray/hybridft\n", "WORKDIR /home/ray/hybridft\n" + project)(text)


TORCH_FROM_INDEX = (
    f"{torch_pin()} \\\n    --index-url https://download.pytorch.org/whl/${{CUDA_VARIANT}}"
)
BROKEN_IMAGE = [
    (_edit(f"rayproject/ray:{RAY_VERSION}-", "rayproject/ray:2.9.0-"), "FROM"),
    (_edit("ARG CUDA_VARIANT=cu128", "ARG CUDA_VARIANT=cpu"), "CUDA index"),
    (_edit("ARG CUDA_VARIANT=cu128", "ARG CUDA_VARIANT"), "CUDA index"),
    (_edit(TORCH_FROM_INDEX, torch_pin()), "CUDA index"),
    (_edit(TORCH_FROM_INDEX, "torch"), "pyproject's pin"),
    (_project_installed_first, "installed before the package"),
    (_edit(deepspeed_pin(), "deepspeed"), deepspeed_pin()),
    (_edit("DS_BUILD_OPS=0 pip", "pip"), "DS_BUILD_OPS=0"),
    (_edit("torch.version.cuda", "torch.cuda.is_available()"), "torch.version.cuda"),
    (_edit('RUN python -c "import deepspeed, hybridft"\n', ""), "import deepspeed, hybridft"),
]


@pytest.mark.parametrize(
    ("mutate", "expected"), BROKEN_IMAGE, ids=[f"{i}:{b[1]}" for i, b in enumerate(BROKEN_IMAGE)]
)
def test_dockerfile_checker_rejects_broken_copy(mutate, expected) -> None:
    text = (CLUSTER / "Dockerfile").read_text()
    assert dockerfile_problems(text) == []
    problems = dockerfile_problems(mutate(text))
    assert any(expected in p for p in problems), problems
