"""Policies bound to registered models: the policy ``register``, ``gate`` and ``promote`` use.

An admin binds a policy file to a model (``hybridft policy bind MODEL FILE``); every bind is
audited. The binding is the tag ``hybridft.policy.<model>`` of the registered model
``hybridft-governance``: the policy (canonical JSON), its sha256, the file's text, who bound it
and when. On an MLflow server with basic-auth, the admin's first bind creates that model, so the
admin holds MANAGE on it and every other user the server's default permission (READ): only
admins (and MLflow admins, who bypass permissions) change bindings. Not covered: a user who
created ``hybridft-governance`` before any admin did would hold MANAGE on it (MLflow gives the
creator MANAGE); an admin sets it up first, or checks its permissions in the MLflow UI.

A caller's own policy is accepted only when its content is the bound one: the sha256 of its
canonical JSON (comments, key order and whitespace of the file do not matter). A policy that
differs is refused even if it is stricter: deciding that one policy implies another across
metric bounds, approvals, data checks and aliases is not something we automate. A model with no
bound policy uses the caller's policy, else ``policies/default.yaml``, and says so.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from hybridft.errors import UserError
from hybridft.registry.access import User, record_allowed, require
from hybridft.registry.audit import default_audit_path, utc_now
from hybridft.registry.client import Registry
from hybridft.registry.policy import Policy, load_policy

GOVERNANCE_MODEL = "hybridft-governance"
BINDING_TAG = "hybridft.policy."
DEFAULT_POLICY = Path("policies") / "default.yaml"


@dataclass(frozen=True)
class Binding:
    """The policy bound to ``model``."""

    model: str
    policy: Policy
    sha256: str
    source: str  # the file it was bound from
    by: str
    when: str

    def describe(self) -> str:
        return (
            f"policy {self.policy.name} bound to {self.model} (sha256 {self.sha256[:12]}, "
            f"bound by {self.by} at {self.when})"
        )


def policy_sha256(policy: Policy) -> str:
    """The content hash of a policy: sha256 of its canonical JSON."""
    return hashlib.sha256(policy.model_dump_json().encode()).hexdigest()


def bound_policy(registry: Registry, model: str) -> Binding | None:
    """The binding of ``model``, or None when no policy is bound to it.

    Raises:
        UserError: The governance model cannot be read (anything but "not registered": a store
            that cannot be read never means "no binding"), or a binding edited outside hybridft.
    """
    from mlflow.exceptions import MlflowException  # heavy: MLflow

    try:
        governance = registry.client.get_registered_model(GOVERNANCE_MODEL)
    except MlflowException as exc:
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
            return None
        raise UserError(f"{GOVERNANCE_MODEL}: cannot read the policy bindings ({exc})") from None
    raw = governance.tags.get(BINDING_TAG + model)
    if raw is None:
        return None
    where = f"{GOVERNANCE_MODEL} tag {BINDING_TAG}{model}"
    try:
        doc = json.loads(raw)
        policy = Policy.model_validate(doc["policy"])
    except (ValueError, KeyError, TypeError) as exc:
        raise UserError(f"{where}: expected a policy binding, found {exc}") from None
    if policy_sha256(policy) != doc.get("sha256"):
        raise UserError(f"{where}: the policy does not match its sha256 (edited outside hybridft)")
    return Binding(
        model, policy, doc["sha256"], doc.get("source", ""), doc.get("by", ""), doc.get("when", "")
    )


def bind_policy(
    registry: Registry,
    model: str,
    path: str | Path,
    *,
    user: User | None = None,
    audit_path: str | Path | None = None,
) -> Binding:
    """Bind the policy file ``path`` to ``model`` (role admin; audited, the old sha256 too).

    Raises:
        UserError: Not an admin, a bad policy file, or a governance model this user cannot write.
    """
    from mlflow.exceptions import MlflowException  # heavy: MLflow

    audit_path = audit_path or default_audit_path(registry.tracking_uri)
    who = require(
        "admin",
        "bind_policy",
        user=user,
        audit_path=audit_path,
        tracking_uri=registry.tracking_uri,
        model=model,
    )
    policy = load_policy(path)
    previous = bound_policy(registry, model)
    binding = Binding(model, policy, policy_sha256(policy), str(path), who.name, utc_now())
    doc = {
        "policy": json.loads(policy.model_dump_json()),
        "sha256": binding.sha256,
        "text": Path(path).read_text(encoding="utf-8"),
        "source": binding.source,
        "by": binding.by,
        "when": binding.when,
    }
    try:
        try:
            registry.client.create_registered_model(
                GOVERNANCE_MODEL, description="hybridft: policies bound to models (admins only)"
            )
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
        registry.client.set_registered_model_tag(
            GOVERNANCE_MODEL, BINDING_TAG + model, json.dumps(doc)
        )
    except MlflowException as exc:
        raise UserError(
            f"{GOVERNANCE_MODEL}: cannot write the binding of {model} ({exc})"
        ) from None
    record_allowed(
        who,
        "bind_policy",
        audit_path,
        model=model,
        reason=f"bound {path}",
        extra={
            "sha256": binding.sha256,
            "policy": policy.name,
            "previous_sha256": previous.sha256 if previous else None,
        },
    )
    return binding


def check_bound(registry: Registry, model: str, policy: Policy) -> str | None:
    """None when ``policy`` may govern ``model``; else the one-line reason it may not."""
    binding = bound_policy(registry, model)
    if binding is None or policy_sha256(policy) == binding.sha256:
        return None
    return (
        f"policy {policy.name} (sha256 {policy_sha256(policy)[:12]}) is not the {binding.describe()}"
        ": expected that policy (omit --policy to use it)"
    )


def policy_for(registry: Registry, model: str, requested: str | Path | None) -> tuple[Policy, str]:
    """The policy an action on ``model`` uses, and a one-line note of where it came from.

    Bound: the bound policy (``requested``, when given, must be the same). Unbound:
    ``requested``, else ``policies/default.yaml``.

    Raises:
        UserError: ``requested`` differs from the bound policy, or no policy file is found.
    """
    binding = bound_policy(registry, model)
    if binding is not None:
        if requested is not None:
            reason = check_bound(registry, model, load_policy(requested))
            if reason is not None:
                raise UserError(reason)
        return binding.policy, binding.describe()
    path = Path(requested) if requested is not None else DEFAULT_POLICY
    if not path.is_file():
        raise UserError(
            f"{path}: policy file not found (no policy is bound to {model}: expected --policy "
            "FILE, or an admin's `hybridft policy bind`)"
        )
    note = f"no policy bound to {model}: using {path} (an admin binds one: hybridft policy bind)"
    return load_policy(path), note
