"""Roles from the environment or a users file; refusals are one line and audited."""

from __future__ import annotations

from pathlib import Path

import pytest

from hybridft.errors import UserError
from hybridft.registry.access import User, current_user, load_users, os_user, require
from hybridft.registry.approvals import approve
from hybridft.registry.audit import default_audit_path, read_audit
from hybridft.registry.gates import alias_version, promote
from hybridft.registry.policy import Policy, load_policy

REPO = Path(__file__).resolve().parents[2]


def test_dev_mode_roles_from_env_then_file_then_viewer(tmp_path, monkeypatch):
    users = tmp_path / "users.yaml"
    users.write_text("users:\n  carol: [approver, viewer]\n")
    monkeypatch.setenv("HYBRIDFT_USERS_FILE", str(users))
    monkeypatch.setenv("HYBRIDFT_DEV_MODE", "1")
    monkeypatch.delenv("HYBRIDFT_ROLES", raising=False)
    monkeypatch.setenv("HYBRIDFT_USER", "carol")
    assert current_user() == User("carol", ("approver", "viewer"), dev_mode=True)
    assert current_user("mallory").roles == ("viewer",)
    monkeypatch.setenv("HYBRIDFT_ROLES", "releaser, trainer")
    assert current_user() == User("carol", ("releaser", "trainer"), dev_mode=True)
    monkeypatch.setenv("HYBRIDFT_ROLES", "root")
    with pytest.raises(UserError, match="HYBRIDFT_ROLES: unknown role 'root'"):
        current_user()
    with pytest.raises(UserError, match="expected letters"):
        current_user("bad name")


def test_outside_dev_mode_the_login_account_and_the_users_file(tmp_path, monkeypatch):
    me = os_user()
    users = tmp_path / "users.yaml"
    users.write_text(f"users:\n  {me}: [approver, viewer]\n")
    monkeypatch.setenv("HYBRIDFT_USERS_FILE", str(users))
    monkeypatch.delenv("HYBRIDFT_DEV_MODE")
    for var in ("HYBRIDFT_USER", "HYBRIDFT_ROLES"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("USER", "someone-else")  # getpass would believe it; the uid does not
    monkeypatch.setenv("LOGNAME", "someone-else")
    assert current_user() == User(me, ("approver", "viewer"))
    monkeypatch.setenv("HYBRIDFT_ROLES", "releaser")
    with pytest.raises(UserError, match=r"^HYBRIDFT_ROLES is set: expected HYBRIDFT_DEV_MODE=1"):
        current_user()
    monkeypatch.setenv("HYBRIDFT_DEV_MODE", "1")
    with pytest.raises(UserError, match="with the MLflow server http://mlflow.example"):
        current_user(tracking_uri="http://mlflow.example:5000")


def test_bad_users_and_policy_files_give_file_line_key(tmp_path):
    users = tmp_path / "users.yaml"
    users.write_text("users:\n  carol: [approver]\n  dave: [root]\n")
    with pytest.raises(UserError, match=r"users\.yaml:3: users\.dave\[0\]: expected one of"):
        load_users(users)
    policy = tmp_path / "policy.yaml"
    policy.write_text("name: p\nmetrics:\n  - metric: eval/score\n    max_drop_vs_champion: lots\n")
    with pytest.raises(
        UserError,
        match=r"policy\.yaml:4: metrics\[0\]\.max_drop_vs_champion: expected a number >= 0",
    ):
        load_policy(policy)
    policy.write_text("name: p\nrequired_approvals:\n  count: 1\n  rol: approver\n")
    with pytest.raises(UserError, match=r"policy\.yaml:4: required_approvals\.rol: unknown key"):
        load_policy(policy)
    policy.write_text("name: p\nmetrics:\n  - metric: eval/score\n")
    with pytest.raises(UserError, match=r"policy\.yaml:3: metrics\[0\]: eval/score: set at least"):
        load_policy(policy)


def test_every_shipped_policy_and_users_file_parses():
    policies = sorted((REPO / "policies").glob("*.yaml"))
    assert REPO / "policies" / "default.yaml" in policies
    for path in policies:
        if path.name == "users.yaml":
            assert load_users(path)
        elif path.name == "monitor.yaml":  # the monitoring / retraining policy
            from hybridft.monitor.policy import load_monitor_policy

            rules = load_monitor_policy(path).retrain
            assert rules is not None and (REPO / rules.job).is_file()
            assert load_policy(REPO / rules.gate_policy).aliases
        else:
            assert load_policy(path).aliases


def test_refusal_is_one_line_and_audited(tmp_path):
    audit = tmp_path / "audit.jsonl"
    viewer = User("alice", ("viewer",))
    with pytest.raises(UserError) as err:
        require("releaser", "promote", user=viewer, audit_path=audit, model="m", alias="champion")
    assert str(err.value) == "alice (viewer) may not promote: needs role releaser"
    [record] = read_audit(audit)
    assert (record.who, record.action, record.outcome, record.alias) == (
        "alice",
        "promote",
        "refused",
        "champion",
    )
    assert require("releaser", "promote", user=User("dave", ("releaser",)), audit_path=audit)
    assert len(read_audit(audit)) == 1


def test_viewer_cannot_approve_and_approver_cannot_promote(registry, make_version):
    v = make_version("m", {"eval/score": 0.9})
    with pytest.raises(UserError, match=r"^alice \(viewer\) may not approve: needs role approver$"):
        approve(registry, "m", v, user=User("alice", ("viewer",)))
    assert not any(k.startswith("hybridft.approval.") for k in registry.resolve(f"m@{v}").tags)
    loose = Policy(name="loose", required_approvals={"count": 0}, require_approved_data=False)
    with pytest.raises(
        UserError, match="carol \\(approver\\) may not promote: needs role releaser"
    ):
        promote(registry, loose, "m", v, "champion", user=User("carol", ("approver",)))
    assert alias_version(registry, "m", "champion") is None
    refused = read_audit(default_audit_path(registry.tracking_uri), outcome="refused")
    assert [(r.who, r.action) for r in refused] == [("alice", "approve"), ("carol", "promote")]
