"""Identities an MLflow server vouches for: a real ``mlflow server --app-name basic-auth`` (started
and stopped by this module), its users and its roles (MLflow roles ``hybridft-<role>``, which only
its admin assigns), tried through the real CLI by users who want around them."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import httpx
import pytest
from helpers import free_port

from hybridft.registry.bindings import GOVERNANCE_MODEL
from hybridft.registry.client import Registry
from hybridft.registry.gates import alias_version

ADMIN = ("admin", "admin-pass-1234")
# user -> (password, hybridft roles the server's admin assigns)
USERS = {
    "bob": ("bob-pass-1234", ("trainer", "approver")),
    "carol": ("carol-pass-1234", ("approver",)),
    "dave": ("dave-pass-1234", ("releaser",)),
}
PASSWORDS = {ADMIN[0]: ADMIN[1], **{user: pw for user, (pw, _) in USERS.items()}}
GOOD = {"eval/score": 0.9, "eval/ece": 0.05, "eval/contamination": 0.0}


@dataclass
class Server:
    uri: str

    def admin(self, method: str, path: str, **body: object) -> dict:
        resp = httpx.request(method, self.uri + path, json=body or None, auth=ADMIN, timeout=30)
        assert resp.status_code == 200, resp.text
        return resp.json()

    def creds(self, user: str, password: str | None = None) -> dict[str, str | None]:
        """The environment of a CLI call by ``user`` (their own password unless given)."""
        return {
            "MLFLOW_TRACKING_URI": self.uri,
            "MLFLOW_TRACKING_USERNAME": user,
            "MLFLOW_TRACKING_PASSWORD": password or PASSWORDS[user],
        }


@pytest.fixture(scope="module")
def server(template_db, tmp_path_factory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("mlflow-server")
    shutil.copy(template_db, root / "mlflow.db")  # the tables exist: no migrations at start
    (root / "auth.ini").write_text(
        "[mlflow]\ndefault_permission = READ\n"
        f"database_uri = sqlite:///{root / 'auth.db'}\n"
        f"admin_username = {ADMIN[0]}\nadmin_password = {ADMIN[1]}\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
        "auth_cache_ttl_seconds = 60\n"  # one PBKDF2 check per user and password, not per call
    )
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_TRACKING")}
    env.update(
        MLFLOW_AUTH_CONFIG_PATH=str(root / "auth.ini"),
        MLFLOW_FLASK_SERVER_SECRET_KEY="tests",
        MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false",  # no job runner processes beside it
    )
    cmd = [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--app-name",
        "basic-auth",
        "--backend-store-uri",
        f"sqlite:///{root / 'mlflow.db'}",
        "--default-artifact-root",
        str(root / "artifacts"),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
    ]
    log = open(root / "server.log", "w")  # noqa: SIM115 (closed in the teardown)
    proc = subprocess.Popen(
        cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, (root / "server.log").read_text()[-3000:]
            try:
                if httpx.get(uri + "/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "mlflow server did not start in 120 s"
            time.sleep(0.25)
        srv = Server(uri)
        roles: dict[str, int] = {}
        for user, (password, held) in USERS.items():
            srv.admin("POST", "/api/2.0/mlflow/users/create", username=user, password=password)
            for role in held:
                if role not in roles:
                    made = srv.admin(
                        "POST",
                        "/api/3.0/mlflow/roles/create",
                        name=f"hybridft-{role}",
                        workspace="default",
                    )
                    roles[role] = made["role"]["id"]
                srv.admin(
                    "POST", "/api/3.0/mlflow/roles/assign", username=user, role_id=roles[role]
                )
        yield srv
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()


@contextmanager
def signed_in(server: Server, hostile, user: str) -> Iterator[Registry]:
    """The store as ``user`` sees it through MLflow's own client (their credentials)."""
    with hostile.monkeypatch.context() as m:
        for key, value in server.creds(user).items():
            m.setenv(key, str(value))
        yield Registry(server.uri)


def _version_by(server: Server, hostile, user: str, name: str, share: bool = True) -> str:
    """A version trained and registered by ``user`` on the server, with their credentials
    (``share``: carol and dave get EDIT on the model)."""
    with signed_in(server, hostile, user) as reg:
        run_id = reg.start_run("run", tags={"hybridft.trained_by": user})
        reg.log_metrics(run_id, GOOD)
        reg.end_run(run_id)
        source = f"{reg.client.get_run(run_id).info.artifact_uri}/model"
        tags = {"hybridft.trained_by": user, "hybridft.registered_by": user}
        version = reg.register(name, run_id, source, tags).version
    for other in (
        ("carol", "dave") if share else ()
    ):  # approvers write tags, releasers move aliases: EDIT
        server.admin(
            "POST",
            "/api/3.0/mlflow/users/permissions/grant",
            username=other,
            resource_type="registered_model",
            resource_id=name,
            permission="EDIT",
        )
    return version


def test_the_server_decides_who_acts_and_what_they_may_do(server, hostile, tmp_path) -> None:
    v = _version_by(server, hostile, "bob", "srv")
    ref = f"srv@{v}"
    assert hostile.cli("approve", ref, env=server.creds("carol")).code == 0
    ok = hostile.last_audit()
    assert (ok.who, ok.roles, ok.outcome, ok.dev_mode) == ("carol", ["approver"], "ok", False)

    # the trainer holds the approver role on the server, and still may not approve his version
    line, record = hostile.refused(hostile.cli("approve", ref, env=server.creds("bob")), "approve")
    assert (
        line
        == f"error: bob may not approve {ref}: they trained or registered it (an approval must come from someone else)"
    )
    line, _ = hostile.refused(hostile.cli("approve", ref, env=server.creds("dave")), "approve")
    assert line == "error: dave (releaser) may not approve: needs role approver"

    # roles from the environment, or dev mode, are refused against a server
    policy = str(hostile.policy("one", require_approved_data=False))
    promote = ("promote", ref, "--alias", "champion", "--policy", policy)
    raised = {**server.creds("carol"), "HYBRIDFT_ROLES": "approver,releaser"}
    line, record = hostile.refused(hostile.cli(*promote, env=raised), "promote")
    assert line.startswith("error: promote refused: HYBRIDFT_ROLES is set: expected no identity")
    assert record.who == "carol"
    dev = {**server.creds("carol"), "HYBRIDFT_DEV_MODE": "1", "HYBRIDFT_USER": "dave"}
    line, _ = hostile.refused(hostile.cli(*promote, env=dev), "promote", dev_mode=True)
    assert line.startswith("error: promote refused: HYBRIDFT_DEV_MODE=1: expected no identity")
    with signed_in(server, hostile, "carol") as reg:
        assert alias_version(reg, "srv", "champion") is None

    # nor can a user assign themselves a role: MLflow's role API is the admin's
    grab = httpx.post(
        server.uri + "/api/3.0/mlflow/roles/assign",
        auth=("carol", USERS["carol"][0]),
        json={"username": "carol", "role_id": 1},
        timeout=30,
    )
    assert grab.status_code == 403

    # the releaser the server knows moves the alias, through the gate
    assert hostile.cli(*promote, env=server.creds("dave")).code == 0
    assert (hostile.last_audit().who, hostile.last_audit().outcome) == ("dave", "ok")
    with signed_in(server, hostile, "carol") as reg:
        assert alias_version(reg, "srv", "champion") == v


def test_a_wrong_password_or_none_is_refused(server, hostile) -> None:
    wrong = server.creds("carol", password="not-her-password")
    ran = hostile.cli("approve", "srv@1", env=wrong)
    line, record = hostile.refused(ran, "approve")
    assert line == (
        f"error: approve refused: MLflow server {server.uri}: user 'carol' not authenticated "
        "(401): expected a valid MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD"
    )
    assert record.who == "carol" and record.roles == []
    anonymous = {
        **server.creds("carol"),
        "MLFLOW_TRACKING_USERNAME": None,
        "MLFLOW_TRACKING_PASSWORD": None,
    }
    line, _ = hostile.refused(hostile.cli("approve", "srv@1", env=anonymous), "approve")
    assert "expected basic-auth credentials" in line and "found no MLFLOW_TRACKING_USERNAME" in line


def test_only_the_admin_binds_and_the_binding_is_out_of_reach(server, hostile) -> None:
    policy = hostile.policy("strict", require_approved_data=False)
    line, _ = hostile.refused(
        hostile.cli("policy", "bind", "srv", str(policy), env=server.creds("bob")), "bind_policy"
    )
    assert line == "error: bob (trainer, approver) may not bind_policy: needs role admin"
    assert hostile.cli("policy", "bind", "srv", str(policy), env=server.creds(ADMIN[0])).code == 0
    # past the CLI, with MLflow's own client: the governance model is the admin's (READ for bob)
    from mlflow.exceptions import MlflowException

    with signed_in(server, hostile, "bob") as reg:
        with pytest.raises(MlflowException, match="Permission denied"):
            reg.client.set_registered_model_tag(GOVERNANCE_MODEL, "hybridft.policy.srv", "{}")

    # the server's own refusal reaches the user as one line too: carol holds the approver role
    # but only READ on a model nobody shared with her
    v = _version_by(server, hostile, "bob", "unshared", share=False)
    ran = hostile.cli("approve", f"unshared@{v}", env=server.creds("carol"))
    assert ran.code == 2
    assert ran.error_line().startswith("error: the MLflow server refused: "), ran.err
