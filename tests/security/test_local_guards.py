"""Each governance bypass, tried as a hostile user on a local store through the real CLI.

Every try must be refused with one line and leave an audit line saying who tried what. The user
is the login account (dev mode off); its roles are in a users file the test writes as the admin.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

from hostile import Ran

from hybridft.registry.approvals import APPROVAL_TAG
from hybridft.registry.audit import read_audit
from hybridft.registry.gates import alias_version
from hybridft.serve.canary import CanaryStore, ServePaths

GOOD = {"eval/score": 0.9, "eval/ece": 0.05, "eval/contamination": 0.0}
LOOSE = {"required_approvals": {"count": 0}, "require_approved_data": False}


def test_roles_raised_through_the_environment_are_refused(hostile, make_version) -> None:
    """Outside dev mode HYBRIDFT_ROLES / HYBRIDFT_USER are refused, $USER is not believed."""
    v = make_version("m", GOOD, tags={"hybridft.trained_by": "bob"})
    policy = str(hostile.policy("loose", **LOOSE))
    env = {
        **os.environ,
        "HYBRIDFT_ROLES": "approver,releaser",
        "HYBRIDFT_USER": "dave",
        "USER": "dave",
        "LOGNAME": "dave",
    }
    # the real `hybridft` process: what a user's shell would run
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "hybridft.cli",
            "promote",
            f"m@{v}",
            "--alias",
            "champion",
            "--policy",
            policy,
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    line = Ran(proc.returncode, proc.stdout, proc.stderr).error_line()
    assert line.startswith("error: promote refused: HYBRIDFT_USER is set: expected ")
    assert "HYBRIDFT_DEV_MODE=1" in line and f"login account {hostile.me!r}" in line
    [record] = read_audit(hostile.audit)
    assert (record.action, record.outcome, record.who) == ("promote", "refused", "dave")
    assert alias_version(hostile.registry, "m", "champion") is None

    # $USER / $LOGNAME alone: the login account acts, a viewer
    ran = hostile.cli(
        "promote",
        f"m@{v}",
        "--alias",
        "champion",
        "--policy",
        policy,
        env={"USER": "dave", "LOGNAME": "dave"},
    )
    line, record = hostile.refused(ran, "promote")
    assert line == f"error: {hostile.me} (viewer) may not promote: needs role releaser"
    assert record.who == hostile.me and alias_version(hostile.registry, "m", "champion") is None


def test_the_trainer_cannot_approve_their_own_version(hostile) -> None:
    hostile.roles("trainer", "approver")
    run_dir = hostile.run_dir(GOOD, trained_by=hostile.me)
    ran = hostile.cli("register", str(run_dir), "--name", "m")
    assert ran.code == 0, ran.err
    version = ran.out.strip().split("@")[1]
    mv = hostile.registry.model_version("m", version)
    assert mv.tags["hybridft.trained_by"] == mv.tags["hybridft.registered_by"] == hostile.me
    assert hostile.last_audit().action == "register" and hostile.last_audit().outcome == "ok"

    line, record = hostile.refused(hostile.cli("approve", f"m@{version}"), "approve")
    assert line == (
        f"error: {hostile.me} may not approve m@{version}: they trained or registered it "
        "(an approval must come from someone else)"
    )
    assert not any(
        k.startswith(APPROVAL_TAG) for k in hostile.registry.resolve(f"m@{version}").tags
    )
    # an approval tag written past the CLI, with MLflow's own client, is not counted either
    hostile.registry.client.set_model_version_tag(
        "m", version, APPROVAL_TAG + hostile.me, json.dumps({"role": "approver"})
    )
    ran = hostile.cli(
        "gate", f"m@{version}", "--policy", str(hostile.policy("p", require_approved_data=False))
    )
    assert ran.code == 1
    assert f"0 of 1 (none); not counted: {hostile.me} (trained or registered it)" in ran.out


def test_two_approvals_by_one_person_count_once(hostile, make_version) -> None:
    hostile.roles("approver", "releaser")
    v = make_version("m", GOOD, tags={"hybridft.trained_by": "bob"})
    two = str(hostile.policy("two", required_approvals={"count": 2}, require_approved_data=False))
    assert hostile.cli("approve", f"m@{v}").code == 0
    assert hostile.cli("approve", f"m@{v}", "--comment", "again").code == 0
    # a second name for the same person: refused outside dev mode
    ran = hostile.cli("approve", f"m@{v}", env={"HYBRIDFT_USER": "carol2"})
    line, record = hostile.refused(ran, "approve")
    assert line.startswith(
        "error: approve refused: HYBRIDFT_USER is set: expected HYBRIDFT_DEV_MODE=1"
    )
    assert record.who == "carol2"
    # in dev mode the second name is accepted (and audited as dev mode), but does not count
    # once dev mode is off
    dev = {"HYBRIDFT_DEV_MODE": "1", "HYBRIDFT_USER": "carol2", "HYBRIDFT_ROLES": "approver"}
    assert hostile.cli("approve", f"m@{v}", env=dev).code == 0
    assert hostile.last_audit().dev_mode is True and hostile.last_audit().who == "carol2"

    ran = hostile.cli("promote", f"m@{v}", "--alias", "champion", "--policy", two)
    line, record = hostile.refused(ran, "promote", code=1)
    assert (
        f"approvals by approver: 1 of 2 ({hostile.me}); not counted: carol2 (given in dev mode)"
        in line
    )
    assert alias_version(hostile.registry, "m", "champion") is None


def test_the_approver_cannot_release_when_the_policy_separates_them(hostile, make_version) -> None:
    hostile.roles("approver", "releaser")
    v = make_version("m", GOOD, tags={"hybridft.trained_by": "bob"})
    policy = hostile.policy("sep", separate_approver_and_releaser=True, require_approved_data=False)
    assert hostile.cli("approve", f"m@{v}").code == 0
    ran = hostile.cli("promote", f"m@{v}", "--alias", "champion", "--policy", str(policy))
    line, _ = hostile.refused(ran, "promote", code=1)
    assert f"releaser is not an approver: {hostile.me} approved this version" in line


def test_a_permissive_policy_is_refused_once_one_is_bound(hostile, make_version) -> None:
    v = make_version("m", GOOD, tags={"hybridft.trained_by": "bob"})
    strict = hostile.policy("strict", required_approvals={"count": 1}, require_approved_data=False)
    loose = hostile.policy("loose", **LOOSE)
    # only an admin binds
    hostile.roles("releaser")
    line, _ = hostile.refused(hostile.cli("policy", "bind", "m", str(strict)), "bind_policy")
    assert line == f"error: {hostile.me} (releaser) may not bind_policy: needs role admin"
    hostile.roles("admin")
    assert hostile.cli("policy", "bind", "m", str(strict)).code == 0
    bound = hostile.last_audit()
    assert (bound.action, bound.outcome, bound.model) == ("bind_policy", "ok", "m")

    hostile.roles("releaser")
    ran = hostile.cli("promote", f"m@{v}", "--alias", "champion", "--policy", str(loose))
    line, record = hostile.refused(ran, "promote", code=1)
    assert (
        line.startswith("refused: policy loose (sha256 ")
        and "is not the policy strict bound to m" in line
    )
    assert alias_version(hostile.registry, "m", "champion") is None
    line, _ = hostile.refused(hostile.cli("gate", f"m@{v}", "--policy", str(loose)), "gate")
    assert "is not the policy strict bound to m" in line
    # without --policy, the bound policy decides (no approval yet: refused by its gate)
    ran = hostile.cli("promote", f"m@{v}", "--alias", "champion")
    line, record = hostile.refused(ran, "promote", code=1)
    assert "policy strict bound to m" in ran.err and "approvals by approver: 0 of 1" in line


def test_register_needs_the_role_the_measurement_and_the_policy(hostile) -> None:
    run_dir = hostile.run_dir(GOOD, trained_by=hostile.me)
    line, _ = hostile.refused(hostile.cli("register", str(run_dir), "--name", "m"), "register")
    assert line == f"error: {hostile.me} (viewer) may not register: needs role trainer"

    hostile.roles("trainer")
    ran = hostile.cli(
        "register", str(run_dir), "--name", "m", "--policy", str(hostile.tmp / "nope.yaml")
    )
    line, _ = hostile.refused(ran, "register")
    assert line.startswith(
        f"error: registration refused: {hostile.tmp / 'nope.yaml'}: policy file not found"
    )

    unmeasured = hostile.run_dir({"eval/score": 0.9}, trained_by=hostile.me)
    line, _ = hostile.refused(hostile.cli("register", str(unmeasured), "--name", "m"), "register")
    assert "has no eval/contamination metric: expected `hybridft eval" in line

    leaky = hostile.run_dir({**GOOD, "eval/contamination": 0.5}, trained_by=hostile.me)
    line, _ = hostile.refused(hostile.cli("register", str(leaky), "--name", "m"), "register")
    assert "registration refused: contamination 0.5000 > policy default max_contamination" in line
    assert not hostile.registry.client.search_model_versions("name='m'")


def test_a_viewer_cannot_move_the_canary_or_make_keys(hostile) -> None:
    serve = hostile.tmp / "serve"
    store = CanaryStore(ServePaths(serve).state)
    store.init("desk", "1")

    def running(state):
        state.canary, state.status, state.weight = "2", "running", 0.1
        return state

    store.update(running)
    ran = hostile.cli("canary", "weight", "1.0", "--serve-dir", str(serve))
    line, record = hostile.refused(ran, "canary_weight")
    assert line == f"error: {hostile.me} (viewer) may not canary_weight: needs role releaser"
    assert record.model == "desk" and store.read().weight == 0.1
    line, _ = hostile.refused(
        hostile.cli("canary", "pause", "--serve-dir", str(serve)), "canary_pause"
    )
    assert store.read().status == "running"
    line, _ = hostile.refused(
        hostile.cli("keys", "create", "me", "--serve-dir", str(serve)), "key_create"
    )
    assert line.endswith("may not key_create: needs role admin")

    hostile.roles("releaser")
    assert (
        hostile.cli("canary", "weight", "0.3", "--serve-dir", str(serve), "--reason", "ok").code
        == 0
    )
    moved = hostile.last_audit()
    assert (moved.action, moved.outcome, moved.extra["weight"]) == ("canary_weight", "ok", 0.3)
    assert store.read().weight == 0.3
