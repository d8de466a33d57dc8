"""The canary endpoint live: router + two model versions on Ray Serve, real HTTP, real keys.

One endpoint for the module: version 1 (@champion) serves first; pointing @canary at version 2
makes the controller deploy it and split traffic. The official ``openai`` client drives the
OpenAI routes; httpx drives the rest.
"""

from __future__ import annotations

import concurrent.futures as cf
import json
import os
import shutil
import threading
import time

import httpx
import numpy as np
import openai
import pytest
from helpers import LOOSE, RELEASER, free_port

from hybridft.monitor.trace import trace_request, trace_tree
from hybridft.registry.access import User
from hybridft.registry.catalog import register_dataset
from hybridft.registry.client import Registry
from hybridft.registry.gates import alias_version, promote
from hybridft.release.controller import CanaryController
from hybridft.release.probes import Prober, load_probe_rows
from hybridft.serve.canary import CanarySpec, CanaryStore, ServePaths
from hybridft.serve.endpoint import ServeDeployer, start_endpoint
from hybridft.serve.keys import KeyStore
from hybridft.serve.review import FeedbackStore, ReviewQueue
from hybridft.serve.traffic import model_app_name
from hybridft.telemetry.traffic_log import TrafficLog

pytestmark = pytest.mark.ray

MESSAGES = [{"role": "user", "content": "Ticket 3: my laptop cannot reach the VPN"}]
LOAD_S = float(os.environ.get("HYBRIDFT_TEST_LOAD_S", "8"))


@pytest.fixture(scope="module")
def endpoint(ray_session, tiny_model_dir, template_db, tmp_path_factory):
    from ray import serve

    root = tmp_path_factory.mktemp("canary")
    shutil.copy(template_db, root / "mlflow.db")
    registry = Registry(f"sqlite:///{root / 'mlflow.db'}")
    # lineage to trace: each version names a catalogued dataset with a real source file
    rows = root / "desk_train.jsonl"
    rows.write_text(
        "".join(f'{{"prompt": "Ticket {i}", "completion": "network"}}\n' for i in range(7))
    )
    fingerprint = "sha256:" + "ab" * 32
    register_dataset(registry, fingerprint, name="it_desk", sources=[rows], rows=7,
                     format="task", user=User("erin", ("trainer",)))  # fmt: skip
    versions = []
    for _ in range(2):
        run_id = registry.start_run("tiny", tags={"hybridft.kind": "train"})
        source = registry.log_dir(run_id, tiny_model_dir, "model")
        registry.end_run(run_id)
        tags = {"hybridft.fingerprint.it_desk": fingerprint}
        versions.append(registry.register("desk", run_id, source, tags).version)
    assert promote(registry, LOOSE, "desk", versions[0], "champion", user=RELEASER).moved
    spec = CanarySpec.model_validate(
        {
            "model": "desk",
            "review": {"confidence_threshold": 0.9999},
            "schedule": {"interval_s": 3600, "step_weight": 0.5, "max_weight": 0.5},
        }
    )
    paths = ServePaths(root / "serve")
    deployer = ServeDeployer(registry, "desk", cache=root / "served", num_cpus=0.4, engine="hf")
    port = free_port()
    url = start_endpoint(spec, paths.root, registry, port=port, deployer=deployer)
    keys = KeyStore(paths.keys)
    ctx = {
        "url": url,
        "root": url.removesuffix("/v1"),
        "registry": registry,
        "paths": paths,
        "versions": versions,
        "key": keys.create("alice"),
        "admin": keys.create("ops", role="admin"),
        "controller": CanaryController(spec, paths, registry, LOOSE, RELEASER, deployer),
        "rows": rows,
        "fingerprint": fingerprint,
        "cache": root / "served",
        "restart_router": lambda cpus: start_endpoint(
            spec, paths.root, registry, port=port, deployer=deployer, router_cpus=cpus
        ),
    }
    yield ctx
    serve.shutdown()


def _client(endpoint, key=None):
    return openai.OpenAI(
        base_url=endpoint["url"], api_key=key or endpoint["key"], max_retries=0, timeout=60
    )


def _post(endpoint, path, key="user", **kwargs):
    headers = kwargs.pop("headers", {})
    if key:
        headers["authorization"] = f"Bearer {endpoint['key'] if key == 'user' else key}"
    return httpx.post(f"{endpoint['root']}{path}", headers=headers, timeout=60, **kwargs)


def _counter(exposition: str, name: str, version: str, transport: str) -> float:
    for line in exposition.splitlines():
        if (
            line.startswith(name + "{")
            and f'version="{version}"' in line
            and (f'transport="{transport}"' in line)
        ):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_keys_are_required(endpoint):
    with pytest.raises(openai.AuthenticationError):
        _client(endpoint, key="hft-not-a-real-key").chat.completions.create(
            model="desk", messages=MESSAGES, max_tokens=2
        )
    reply = _post(
        endpoint, "/v1/chat/completions", key=None, json={"model": "desk", "messages": MESSAGES}
    )
    assert reply.status_code == 401 and reply.json()["error"]["code"] == "invalid_api_key"


def test_openai_client_plain_and_streaming_agree(endpoint):
    client = _client(endpoint)
    raw = client.chat.completions.with_raw_response.create(
        model="desk", messages=MESSAGES, max_tokens=8
    )
    reply = raw.parse()
    v1 = endpoint["versions"][0]
    assert raw.headers["x-hybridft-model-version"] == f"desk/{v1}"
    assert reply.system_fingerprint == f"desk/{v1}"
    ext = reply.model_extra["hybridft"]
    assert ext["version"] == v1 and ext["request_id"].startswith("req-")
    stream = client.chat.completions.create(
        model="desk", messages=MESSAGES, max_tokens=8, stream=True
    )
    chunks = list(stream)
    assert {c.system_fingerprint for c in chunks} == {f"desk/{v1}"}
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == (
        reply.choices[0].message.content
    )
    text = client.completions.create(model="desk", prompt="Ticket 9:", max_tokens=4)
    assert text.system_fingerprint == f"desk/{v1}" and text.usage.completion_tokens >= 1


def test_label_probabilities_flag_low_confidence_for_review_and_take_feedback(endpoint):
    client = _client(endpoint)
    sure = client.chat.completions.create(
        model="desk",
        messages=MESSAGES,
        max_tokens=3,
        extra_body={"labels": ["network", "hardware", "identity"]},
    ).model_extra["hybridft"]
    assert sure["label"] == "network" and not sure["flagged_for_review"]  # trained on it
    labels = ["printer", "badge", "wifi"]  # never seen in training: low confidence
    reply = client.chat.completions.create(
        model="desk", messages=MESSAGES, max_tokens=3, extra_body={"labels": labels}
    )
    ext = reply.model_extra["hybridft"]
    assert set(ext["label_probs"]) == set(labels)
    assert abs(sum(ext["label_probs"].values()) - 1) < 1e-6
    assert ext["confidence"] == max(ext["label_probs"].values())
    assert ext["flagged_for_review"] is (ext["confidence"] < 0.9999)
    good = _post(endpoint, "/v1/feedback", json={"request_id": ext["request_id"], "success": True})
    assert good.status_code == 200 and good.json()["version"] == endpoint["versions"][0]
    again = _post(endpoint, "/v1/feedback", json={"request_id": ext["request_id"], "success": True})
    assert again.status_code == 409
    not_object = _post(endpoint, "/v1/feedback", json=[ext["request_id"]])
    assert not_object.status_code == 400 and "expected a JSON object" in not_object.text
    unknown = _post(endpoint, "/v1/feedback", json={"request_id": "req-nope", "success": False})
    assert unknown.status_code == 404 and "unknown request" in unknown.json()["error"]["message"]
    assert ext["flagged_for_review"], ext
    queue = ReviewQueue(endpoint["paths"].review)
    deadline = time.monotonic() + 10
    while ext["flagged_for_review"] and time.monotonic() < deadline:
        if any(i.request_id == ext["request_id"] for i in queue.list("open")):
            break
        time.sleep(0.1)
    item = queue.get(ext["request_id"])
    assert item.version == endpoint["versions"][0] and item.label_probs == ext["label_probs"]


def _logged(paths, request_id, kinds, timeout=15.0):
    """The traffic-log events of ``request_id`` once ``kinds`` are there (the router flushes
    its Parquet buffer every couple of seconds)."""
    log = TrafficLog(paths.traffic_log)
    deadline = time.monotonic() + timeout
    while True:
        events = log.lookup(request_id).rows()
        if sorted(e["kind"] for e in events) == sorted(kinds) or time.monotonic() > deadline:
            return events
        time.sleep(0.2)


def test_a_live_answer_is_logged_to_parquet_and_traced_to_its_source_rows(endpoint):
    """The answer -> traffic log (text redacted) -> version -> dataset -> file and rows."""
    from rich.console import Console

    content = "Ticket 12: jane.doe@example.com cannot print"
    reply = _client(endpoint).chat.completions.create(
        model="desk",
        messages=[{"role": "user", "content": content}],
        max_tokens=3,
        extra_body={"labels": ["network", "hardware"]},
    )
    ext = reply.model_extra["hybridft"]
    rid = ext["request_id"]
    assert _post(endpoint, "/v1/feedback", json={"request_id": rid, "success": False}).is_success
    events = _logged(endpoint["paths"], rid, ["request", "feedback"])
    request = next(e for e in events if e["kind"] == "request")
    assert request["version"] == ext["version"] and request["model"] == "desk"
    assert dict(request["label_probs"]) == pytest.approx(ext["label_probs"])
    assert request["predicted_label"] == ext["label"] and request["confidence"] == ext["confidence"]
    assert request["prompt"] is None and request["prompt_chars"] == len(content)  # PII-free
    assert request["completion"] is None
    assert request["completion_tokens"] == reply.usage.completion_tokens
    assert [e["success"] for e in events if e["kind"] == "feedback"] == [False]

    info = trace_request(rid, endpoint["paths"].root, endpoint["registry"])
    (answer,) = info["answers"]
    assert answer["version"] == ext["version"] and answer["feedback"][0]["success"] is False
    lineage = info["versions"][f"desk@{ext['version']}"]
    dataset = lineage["datasets"][endpoint["fingerprint"]]
    assert dataset["file_rows"] == [{"path": str(endpoint["rows"]), "exists": True, "rows": 7}]
    console = Console(width=200, record=True)
    console.print(trace_tree(info))
    text = console.export_text()
    assert rid in text and f"{endpoint['rows']}: rows 1-7" in text


@pytest.mark.parametrize(
    "body, status, fragment",
    [
        (b"{not json", 400, "could not parse the JSON body"),
        (b'{"model": "nope", "messages": [{"role": "user", "content": "hi"}]}', 404, "'nope'"),
        (
            b'{"model": "desk", "messages": [{"role": "user", "content": "hi"}], '
            b'"max_tokens": 100000}',
            400,
            "max_tokens: expected at most",
        ),
        (b'{"model": "desk", "messages": "hi"}', 400, "messages"),
        (
            b'{"model": "desk", "messages": [{"role": "user", "content": "hi"}], '
            b'"temperature": "hot"}',
            400,
            "temperature",
        ),
        (b"[1, 2]", 400, "expected a JSON object"),
        (b'{"model": "desk", "prompt": "' + b"x" * 70_000 + b'"}', 413, "limit is"),
    ],
)
def test_bad_requests_get_openai_errors(endpoint, body, status, fragment):
    path = "/v1/completions" if b'"prompt"' in body else "/v1/chat/completions"
    reply = _post(endpoint, path, content=body, headers={"content-type": "application/json"})
    assert reply.status_code == status, reply.text
    error = reply.json()["error"]
    assert fragment in error["message"] and error["type"]
    ok = _client(endpoint).chat.completions.create(model="desk", messages=MESSAGES, max_tokens=2)
    assert ok.choices[0].message.content is not None  # the replicas are still serving


PROBE_LABELS = ["network", "hardware", "identity"]


def _probe_rows(endpoint, tmp_path):
    """Two labelled rows: the ticket the model labels "network" (as another test checks), once
    with that gold and once with a wrong one: one success, one failure, by construction."""
    path = tmp_path / "probes.jsonl"
    rows = [
        {"prompt": MESSAGES[0]["content"], "completion": "network"},
        {"prompt": MESSAGES[0]["content"], "completion": "hardware"},
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return load_probe_rows(str(path))


def test_labelled_probes_are_forced_scored_and_kept_out_of_review(endpoint, tmp_path):
    paths, v1 = endpoint["paths"], endpoint["versions"][0]
    traffic = FeedbackStore(paths.traffic)
    before = traffic.summary(v1, source="probe")
    open_before = ReviewQueue(paths.review).counts()["open"]
    prober = Prober(_probe_rows(endpoint, tmp_path), endpoint["url"], endpoint["key"], "desk",
                    traffic, per_interval=2, max_tokens=4, labels=PROBE_LABELS)  # fmt: skip
    assert prober.run([v1]) == {v1: {"n": 2, "successes": 1}}
    after = traffic.summary(v1, source="probe")
    assert (after["n"] - before["n"], after["successes"] - before["successes"]) == (2, 1)
    probes = [r for r in traffic.window(v1, 0) if r["arm"] == "forced"]
    assert len(probes) >= 2  # forced: outside the interval checks and the traffic monitors
    assert ReviewQueue(paths.review).counts()["open"] == open_before


def test_canary_split_sticky_force_admin_and_load(endpoint, tmp_path):
    """@canary starts a canary; users split stickily; a weight change and a killed replica
    during load lose no request; every answer names its version."""
    import ray

    registry, v1, v2 = endpoint["registry"], *endpoint["versions"]
    controller = endpoint["controller"]
    assert promote(registry, LOOSE, "desk", v2, "canary", user=RELEASER).moved
    assert controller.tick().decision == "start"  # deploys version 2, weight 0.5
    client = _client(endpoint)

    def version_for(user):
        reply = client.chat.completions.create(
            model="desk", messages=MESSAGES, max_tokens=1, user=user
        )
        return reply.model_extra["hybridft"]["version"]

    first = {u: version_for(u) for u in (f"user-{i}" for i in range(12))}
    assert set(first.values()) == {v1, v2}  # 12 users at 50%: both arms (fails with p=2^-11)
    assert {u: version_for(u) for u in first} == first  # sticky
    forced = _post(
        endpoint,
        "/v1/chat/completions",
        headers={"x-hybridft-version": v2},
        json={"model": "desk", "messages": MESSAGES, "max_tokens": 1},
    )
    assert forced.headers["x-hybridft-arm"] == "forced"
    assert forced.json()["hybridft"]["version"] == v2
    denied = _post(endpoint, "/admin/canary/weight", json={"weight": 0.2})
    assert denied.status_code == 403

    results, stop = [], threading.Event()

    def client_loop(i):
        n = 0
        while not stop.is_set():
            started, attempts = time.perf_counter(), 0
            while True:
                attempts += 1
                try:
                    r = _post(
                        endpoint,
                        "/v1/chat/completions",
                        json={
                            "model": "desk",
                            "messages": MESSAGES,
                            "max_tokens": 2,
                            "user": f"load-{i}-{n % 5}",
                        },
                    )
                    if r.status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                assert attempts < 20, f"request lost after {attempts} attempts"
                time.sleep(0.2)
            results.append(
                (
                    r.headers.get("x-hybridft-model-version"),
                    r.json()["hybridft"]["version"],
                    time.perf_counter() - started,
                    attempts,
                )
            )
            n += 1

    with cf.ThreadPoolExecutor(10) as pool:
        futures = [pool.submit(client_loop, i) for i in range(10)]
        time.sleep(LOAD_S / 3)
        changed = _post(
            endpoint,
            "/admin/canary/weight",
            key=endpoint["admin"],
            json={"weight": 0.2, "reason": "load test"},
        )
        assert changed.status_code == 200 and changed.json()["weight"] == 0.2
        time.sleep(LOAD_S / 6)
        app = model_app_name("desk", v1)
        replicas = [
            a
            for a in ray.util.list_named_actors(all_namespaces=True)
            if "SERVE_REPLICA" in a["name"] and app in a["name"]
        ]
        assert replicas, ray.util.list_named_actors(all_namespaces=True)
        ray.kill(ray.get_actor(replicas[0]["name"], namespace=replicas[0]["namespace"]))
        time.sleep(LOAD_S / 2)
        stop.set()
        for f in futures:
            f.result()
    assert len(results) >= 20
    for header, version, _, _ in results:
        assert header == f"desk/{version}" and version in (v1, v2)
    latencies = np.array([r[2] for r in results])
    print(
        f"load: {len(results)} requests, p50 {np.percentile(latencies, 50):.3f}s, "
        f"p99 {np.percentile(latencies, 99):.3f}s, retried {sum(r[3] > 1 for r in results)}"
    )
    state = CanaryStore(endpoint["paths"].state).read()
    assert state.weight == 0.2 and state.history[-1].reason.endswith("load test")
    metrics = httpx.get(f"{endpoint['root']}/metrics", timeout=10).text
    assert f'hybridft_canary_weight{{model="desk",version="{v2}"}} 0.2' in metrics
    assert f'version="{v2}"' in metrics and "hybridft_requests_total" in metrics
    assert 'hybridft_canary_decisions_total{decision="start",model="desk"} 1.0' in metrics
    assert 'hybridft_canary_decisions_total{decision="set_weight",model="desk"} 1.0' in metrics
    # answers came over the direct channel (loopback); the killed replica's requests, and
    # any sent before its successor advertised a channel, through the Serve handle
    channel = _counter(metrics, "hybridft_router_upstream_calls_total", v1, "channel")
    assert channel + _counter(metrics, "hybridft_router_upstream_calls_total", v2, "channel") >= (
        len(results) // 2
    )
    logged = FeedbackStore(endpoint["paths"].traffic).window(v2, 0)
    assert logged and {r["arm"] for r in logged} <= {"canary", "forced"}
    # an interval with labelled probes: the controller sends them to both arms first
    controller.prober = Prober(_probe_rows(endpoint, tmp_path), endpoint["url"], endpoint["key"],
                               "desk", controller.traffic, per_interval=2, max_tokens=4,
                               labels=PROBE_LABELS)  # fmt: skip
    probed = {v: controller.traffic.summary(v, source="probe")["n"] for v in (v1, v2)}
    decision = controller.tick(now=time.time() + 3600)
    assert decision is not None and decision.decision in ("hold", "advance")
    assert {v: controller.traffic.summary(v, source="probe")["n"] - probed[v] for v in probed} == {
        v1: 2,
        v2: 2,
    }
    # the controller's rollback sends everything back to version 1 and frees the @canary alias
    controller.rollback_now(RELEASER, "end of test")
    assert alias_version(registry, "desk", "canary") is None
    time.sleep(0.5)  # routers re-read the state file at most every 0.25 s
    assert {version_for(u) for u in first} == {v1}


def _under_load(endpoint, change) -> tuple[list[str], list]:
    """Six clients send chat requests for LOAD_S; ``change()`` runs a quarter of the way in.
    Returns the request ids answered (200) and the failures seen (statuses, exceptions)."""
    answered, failed, stop = [], [], threading.Event()

    def client_loop(i):
        n = 0
        while not stop.is_set():
            try:
                r = _post(
                    endpoint,
                    "/v1/chat/completions",
                    json={"model": "desk", "messages": MESSAGES, "max_tokens": 2,
                          "user": f"stop-{i}-{n}"},
                )  # fmt: skip
            except httpx.HTTPError as exc:
                failed.append(type(exc).__name__)
            else:
                if r.status_code == 200:
                    answered.append(r.json()["hybridft"]["request_id"])
                else:
                    failed.append((r.status_code, r.text[:200]))
            n += 1

    with cf.ThreadPoolExecutor(6) as pool:
        futures = [pool.submit(client_loop, i) for i in range(6)]
        time.sleep(LOAD_S / 4)
        change()
        time.sleep(LOAD_S / 4)
        stop.set()
        for f in futures:
            f.result()
    return answered, failed


def _logged_once(endpoint, answered: list[str], since: float) -> list[str]:
    """Wait until every answer is a request event in the traffic log; each one exactly once.
    Returns the ids logged."""
    sent = set(answered)
    assert len(sent) == len(answered) >= 20
    log = TrafficLog(endpoint["paths"].traffic_log)
    deadline = time.monotonic() + 15  # the live router flushes its buffer every ~2 s
    while True:
        events = log.read(model="desk", since=since, kinds=["request"]).rows()
        logged = [e["request_id"] for e in events]  # nothing else was sent meanwhile
        if sent <= set(logged) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert sorted(sent - set(logged)) == [], f"{len(sent - set(logged))} answers not logged"
    assert len(logged) == len(set(logged)), "an answer was logged twice"
    return logged


def _replica_pid(version: str) -> int:
    from ray import serve

    handle = serve.get_app_handle(model_app_name("desk", version))
    return handle.describe.remote().result(timeout_s=30)["pid"]


def test_a_router_stopped_under_load_logs_every_answer_it_sent(endpoint):
    """The router's replica stopped under load, as a redeploy stops it (Serve starts its
    successor, then stops it gracefully): every answer sent is one request event in the
    traffic log; its buffered events are written, not lost. The endpoint started again keeps
    the model version's replica (same arguments: nothing to redeploy)."""
    v1 = endpoint["versions"][0]
    before = _replica_pid(v1)
    started_at = time.time()
    # a new router replica; the old one stops under load
    answered, failed = _under_load(endpoint, lambda: endpoint["restart_router"](0.3))
    logged = _logged_once(endpoint, answered, started_at)
    # an event for an answer the client never got: only for a request it saw fail
    assert len(set(logged) - set(answered)) <= len(failed), failed
    assert _replica_pid(v1) == before


def test_a_model_version_redeployed_under_load_fails_no_request(endpoint):
    """The model version's application deployed again with other resources, under load
    through the router: Serve replaces its replica. Requests on the direct channel that reach
    the old replica while it shuts down are resent through the handle, not answered 500: every
    request is answered, and logged once."""
    v1 = endpoint["versions"][0]
    before = _replica_pid(v1)
    deployer = ServeDeployer(endpoint["registry"], "desk", cache=endpoint["cache"],
                             num_cpus=0.35, engine="hf")  # fmt: skip
    started_at = time.time()
    answered, failed = _under_load(endpoint, lambda: deployer.deploy(v1))
    assert failed == []
    _logged_once(endpoint, answered, started_at)
    assert _replica_pid(v1) != before  # it was replaced
    assert deployer.deploy(v1) is False  # and deploying it again changes nothing
    assert _replica_pid(v1) != before
