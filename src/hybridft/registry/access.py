"""Who is acting and which roles they hold: viewer, trainer, approver, releaser.

MLflow's open-source store has no per-alias permissions, so hybridft checks roles itself before
every governance action. Roles come from ``HYBRIDFT_ROLES`` (comma-separated, for CI and tests)
or else from the users file (``HYBRIDFT_USERS_FILE``, default ``policies/users.yaml``); a user found
in neither is a viewer. This guards against mistakes, not attackers: whoever can write the store
or the environment can bypass it. Every refusal is written to the audit log.
"""

from __future__ import annotations

import getpass
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

from pydantic import Field

from hybridft.errors import UserError
from hybridft.registry.audit import AuditRecord, append_audit, default_audit_path
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

    def has(self, role: str) -> bool:
        return role in self.roles

    def __str__(self) -> str:
        return f"{self.name} ({', '.join(self.roles) or 'no roles'})"


def load_users(path: str | Path) -> dict[str, tuple[str, ...]]:
    """``{user: roles}`` from a users YAML file (file:line:key errors)."""
    return {k: tuple(v) for k, v in load_yaml_model(path, UsersFile).users.items()}


def current_user(name: str | None = None) -> User:
    """The acting user and their roles.

    Args:
        name: Look up this user instead of ``HYBRIDFT_USER`` / the login name.

    Returns:
        The user; ``HYBRIDFT_ROLES`` wins over the users file when set.

    Raises:
        UserError: A malformed user name, an unknown role, or a bad users file.
    """
    name = name or os.environ.get(USER_ENV) or getpass.getuser()
    if not USER_NAME.match(name):
        raise UserError(f"user {name!r}: expected letters, digits, '_', '.', '-' only")
    env_roles = os.environ.get(ROLES_ENV)
    if env_roles is not None:
        roles = tuple(r.strip() for r in env_roles.split(",") if r.strip())
        unknown = [r for r in roles if r not in ROLES]
        if unknown:
            raise UserError(
                f"{ROLES_ENV}: unknown role {unknown[0]!r}; expected {', '.join(ROLES)}"
            )
        return User(name, roles)
    users_file = Path(os.environ.get(USERS_ENV) or DEFAULT_USERS_FILE)
    if users_file.is_file():
        listed = load_users(users_file).get(name)
        if listed is not None:
            return User(name, listed)
    elif os.environ.get(USERS_ENV):
        raise UserError(f"{users_file}: file not found ({USERS_ENV})")
    return User(name, ("viewer",))


def require(
    role: str,
    action: str,
    *,
    user: User | None = None,
    audit_path: str | Path | None = None,
    model: str = "",
    version: str | None = None,
    alias: str = "",
) -> User:
    """Check that the acting user holds ``role``; audit and refuse otherwise.

    Args:
        role: The role the action needs.
        action: What is attempted (``promote``, ``approve``, ``review_dataset`` ...).
        user: The acting user (default: ``current_user()``).
        audit_path: Where a refusal is recorded (default: ``default_audit_path()``).
        model: Registered model concerned, for the audit record.
        version: Model version concerned, for the audit record.
        alias: Alias concerned, for the audit record.

    Returns:
        The user, who holds ``role``.

    Raises:
        UserError: ``alice (viewer) may not promote: needs role releaser``.
    """
    user = user or current_user()
    if user.has(role):
        return user
    message = f"{user} may not {action}: needs role {role}"
    append_audit(
        AuditRecord(
            who=user.name,
            roles=list(user.roles),
            action=action,
            outcome="refused",
            reason=message,
            model=model,
            alias=alias,
            to_version=version,
        ),
        audit_path or default_audit_path(),
    )
    raise UserError(message)
