"""Who is acting and which roles they hold: viewer, trainer, approver, releaser, admin.

The identity depends on the store the command talks to:

- **An MLflow server** (``http(s)://``): the user the server authenticated (its basic-auth app;
  the client sends ``MLFLOW_TRACKING_USERNAME`` / ``MLFLOW_TRACKING_PASSWORD``), checked by an
  authenticated call before anything is done; roles are held by the server
  (``registry.server_identity``). Nothing in the environment changes either.
- **A local store** (sqlite, a folder: one person's machine): the operating-system account of the
  process (its uid's passwd entry: ``$USER`` is the caller's to set), with roles from the users
  file (``HYBRIDFT_USERS_FILE``, default ``policies/users.yaml``); a user in no file is a viewer.
- **Dev mode** (``HYBRIDFT_DEV_MODE=1``, local stores only): ``HYBRIDFT_USER`` and
  ``HYBRIDFT_ROLES`` declare the user and roles, for the demo and tests that play several people.
  Every audit line written in dev mode says ``dev_mode: true``. Outside dev mode these variables
  are refused, not ignored, and with a server dev mode itself is refused.

Not protected here: whoever can write the local store, the users file or the audit log (they are
files); on a server, a user holding EDIT on a registered model who writes its tags or aliases with
the raw MLflow API. Library callers that pass a ``User`` are trusted: the boundary is the command
line and its environment. Every refusal is written to the audit log.
"""

from __future__ import annotations

import os
import pwd
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field

from hybridft.errors import UserError
from hybridft.registry.audit import (
    DEV_MODE_ENV,
    AuditRecord,
    append_audit,
    default_audit_path,
    in_dev_mode,
)
from hybridft.registry.policy import ROLES, Role
from hybridft.specfile import load_yaml_model
from hybridft.specs import Strict

USERS_ENV = "HYBRIDFT_USERS_FILE"
USER_ENV = "HYBRIDFT_USER"
ROLES_ENV = "HYBRIDFT_ROLES"
DEFAULT_USERS_FILE = Path("policies") / "users.yaml"
# User names end up in MLflow tag keys (``hybridft.approval.<user>``): keep them tag-safe.
USER_NAME = re.compile(r"^[A-Za-z0-9_.\-]+$")


class UsersFile(Strict):
    users: dict[str, Annotated[list[Role], Field(min_length=1)]] = {}


@dataclass(frozen=True)
class User:
    name: str
    roles: tuple[str, ...]
    dev_mode: bool = False  # declared through the environment (HYBRIDFT_DEV_MODE)

    def has(self, role: str) -> bool:
        return role in self.roles

    def __str__(self) -> str:
        return f"{self.name} ({', '.join(self.roles) or 'no roles'})"


def is_server(tracking_uri: str) -> bool:
    """Whether the store is an MLflow server (the identity is then the server's)."""
    return tracking_uri.startswith(("http://", "https://"))


def os_user() -> str:
    """The account of the process's real uid (``getpass`` would read ``$USER`` / ``$LOGNAME``)."""
    return pwd.getpwuid(os.getuid()).pw_name


def load_users(path: str | Path) -> dict[str, tuple[str, ...]]:
    """``{user: roles}`` from a users YAML file (file:line:key errors)."""
    return {k: tuple(v) for k, v in load_yaml_model(path, UsersFile).users.items()}


def _users_file() -> Path:
    return Path(os.environ.get(USERS_ENV) or DEFAULT_USERS_FILE)


def _file_roles(name: str) -> tuple[str, ...]:
    users_file = _users_file()
    if users_file.is_file():
        listed = load_users(users_file).get(name)
        if listed is not None:
            return listed
    elif os.environ.get(USERS_ENV):
        raise UserError(f"{users_file}: file not found ({USERS_ENV})")
    return ("viewer",)


def _env_roles(text: str) -> tuple[str, ...]:
    roles = tuple(r.strip() for r in text.split(",") if r.strip())
    unknown = [r for r in roles if r not in ROLES]
    if unknown:
        raise UserError(f"{ROLES_ENV}: unknown role {unknown[0]!r}; expected {', '.join(ROLES)}")
    return roles


def _check_name(name: str) -> str:
    if not USER_NAME.match(name):
        raise UserError(f"user {name!r}: expected letters, digits, '_', '.', '-' only")
    return name


def current_user(name: str | None = None, tracking_uri: str | None = None) -> User:
    """The acting user and their roles (see the module docstring for where they come from).

    Args:
        name: On a local store, look up this user's roles instead of the acting user's.
        tracking_uri: The store acted on (default: ``MLFLOW_TRACKING_URI``, else the sqlite
            default): an MLflow server decides the identity.

    Returns:
        The user; in dev mode ``HYBRIDFT_USER`` / ``HYBRIDFT_ROLES`` win over the account and
        the users file.

    Raises:
        UserError: An identity declared outside dev mode, dev mode with a server, credentials
            the server refuses, a malformed user name, an unknown role, or a bad users file.
    """
    # heavy: the client imports the model package (torch); `hybridft --help` imports none
    from hybridft.registry.client import default_tracking_uri

    uri = tracking_uri or default_tracking_uri()
    declared = [v for v in (USER_ENV, ROLES_ENV) if os.environ.get(v) is not None]
    if is_server(uri):
        if in_dev_mode() or declared:
            what = f"{DEV_MODE_ENV}=1" if in_dev_mode() else f"{declared[0]} is set"
            raise UserError(
                f"{what}: expected no identity from the environment with the MLflow server "
                f"{uri} (it authenticates the user and holds the roles)"
            )
        from hybridft.registry.server_identity import server_identity  # heavy: MLflow's HTTP

        user, roles = server_identity(uri)
        return User(_check_name(user), roles)
    if not in_dev_mode():
        if declared:
            raise UserError(
                f"{declared[0]} is set: expected {DEV_MODE_ENV}=1 to declare an identity; "
                f"outside dev mode the user is the login account {os_user()!r} with roles "
                f"from {_users_file()}"
            )
        name = _check_name(name or os_user())
        return User(name, _file_roles(name))
    name = _check_name(name or os.environ.get(USER_ENV) or os_user())
    env_roles = os.environ.get(ROLES_ENV)
    roles = _env_roles(env_roles) if env_roles is not None else _file_roles(name)
    return User(name, roles, dev_mode=True)


def claimed_name(tracking_uri: str | None = None) -> str:
    """Who a refused identity claimed to be, for the audit line (never raises)."""
    if tracking_uri and is_server(tracking_uri):
        return os.environ.get("MLFLOW_TRACKING_USERNAME") or "(no username)"
    return os.environ.get(USER_ENV) or os_user()


def audit_dev_mode(user: User | None) -> bool:
    """The ``dev_mode`` of an audit line about ``user``'s action: dev mode is on now, or the
    identity was declared in it (a controller started in dev mode acts in it later too)."""
    return in_dev_mode() or bool(user and user.dev_mode)


def audit_action(
    user: User | None,
    action: str,
    audit_path: str | Path,
    *,
    outcome: str = "ok",
    reason: str = "",
    claimed: str = "",
    **fields: Any,
) -> None:
    """One audit line about ``user``'s action (its roles and dev mode filled in); ``fields``:
    the other ``AuditRecord`` fields. ``user`` None: ``claimed`` names who it claimed to be."""
    who, roles = (user.name, list(user.roles)) if user else (claimed, [])
    append_audit(
        AuditRecord(
            who=who,
            roles=roles,
            action=action,
            outcome=outcome,
            reason=reason,
            dev_mode=audit_dev_mode(user),
            **fields,
        ),
        audit_path,
    )


def require(
    role: str,
    action: str,
    *,
    user: User | None = None,
    audit_path: str | Path | None = None,
    tracking_uri: str | None = None,
    model: str = "",
    version: str | None = None,
    alias: str = "",
) -> User:
    """Check that the acting user holds ``role``; audit and refuse otherwise.

    Args:
        role: The role the action needs.
        action: What is attempted (``promote``, ``approve``, ``review_dataset`` ...).
        user: The acting user (default: ``current_user(tracking_uri=tracking_uri)``; an identity
            that cannot be established is refused and audited like a missing role).
        audit_path: Where a refusal is recorded (default: beside the store).
        tracking_uri: The store acted on (decides the identity and the default audit log).
        model: Registered model concerned, for the audit record.
        version: Model version concerned, for the audit record.
        alias: Alias concerned, for the audit record.

    Returns:
        The user, who holds ``role``.

    Raises:
        UserError: ``alice (viewer) may not promote: needs role releaser``.
    """
    path = audit_path or default_audit_path(tracking_uri)
    where: dict[str, Any] = {"model": model, "alias": alias, "to_version": version}
    if user is None:
        try:
            user = current_user(tracking_uri=tracking_uri)
        except UserError as exc:
            message = f"{action} refused: {exc}"
            claimed = claimed_name(tracking_uri)
            audit_action(
                None, action, path, outcome="refused", reason=message, claimed=claimed, **where
            )
            raise UserError(message) from None
    if user.has(role):
        return user
    message = f"{user} may not {action}: needs role {role}"
    audit_action(user, action, path, outcome="refused", reason=message, **where)
    raise UserError(message)


def record_allowed(
    user: User,
    action: str,
    audit_path: str | Path,
    *,
    reason: str = "",
    model: str = "",
    version: str | None = None,
    alias: str = "",
    extra: dict[str, Any] | None = None,
) -> None:
    """The audit line of an action that was allowed and done."""
    audit_action(
        user,
        action,
        audit_path,
        reason=reason,
        model=model,
        alias=alias,
        to_version=version,
        extra=extra or {},
    )


def refuse(
    user: User | None,
    action: str,
    reason: str,
    audit_path: str | Path,
    *,
    model: str = "",
    version: str | None = None,
    alias: str = "",
    extra: dict[str, Any] | None = None,
    tracking_uri: str | None = None,
) -> UserError:
    """Audit a refusal that is not about a role (a policy, a separation of duties); returns the
    one-line error for the caller to raise. ``user`` None: the identity was not established."""
    audit_action(
        user,
        action,
        audit_path,
        outcome="refused",
        reason=reason,
        claimed=claimed_name(tracking_uri),
        model=model,
        alias=alias,
        to_version=version,
        extra=extra or {},
    )
    return UserError(reason)
