"""The user an MLflow server authenticated, and the roles the server holds for them.

The server runs MLflow's basic-auth app (``mlflow server --app-name basic-auth``); the client
sends ``MLFLOW_TRACKING_USERNAME`` / ``MLFLOW_TRACKING_PASSWORD`` (or ``~/.mlflow/credentials``),
the same credentials every MLflow call of the command uses. Before anything is done:

1. ``GET /api/2.0/mlflow/users/get?username=<name>`` with those credentials: a 401 means the
   server does not know them (refused); the answer is the user as the server has it, with its
   admin flag. The server answers this only about the caller themselves.
2. ``GET /api/3.0/mlflow/users/roles/list?username=<name>``: the user's MLflow roles. Roles named
   ``hybridft-<role>`` (``hybridft-approver``, ...) are the hybridft roles. Only an MLflow admin
   (or a workspace admin) can create and assign roles, so a user cannot raise their own; the
   server's admin flag is the ``admin`` role. A user with neither is a viewer.

Why MLflow roles rather than tags on a registry object: a registered model's tags can be written
by whoever created it (MLflow gives the creator MANAGE), so a user who created a "roles" model
before the admin did would own the roles; role assignment is an admin-only API by design.
"""

from __future__ import annotations

import hashlib
from functools import lru_cache
from typing import Any

from hybridft.errors import UserError
from hybridft.registry.policy import ROLES

ROLE_PREFIX = "hybridft-"
USERS_GET = "/api/2.0/mlflow/users/get"
USER_ROLES = "/api/3.0/mlflow/users/roles/list"


def server_identity(tracking_uri: str) -> tuple[str, tuple[str, ...]]:
    """``(user, roles)`` as the MLflow server at ``tracking_uri`` has them.

    Raises:
        UserError: No credentials, credentials the server refuses (401), or a server without
            the basic-auth app or its role API.
    """
    from mlflow.utils.credentials import get_default_host_creds  # heavy: MLflow

    creds = get_default_host_creds(tracking_uri)
    if not creds.username or not creds.password:
        missing = "MLFLOW_TRACKING_USERNAME" if not creds.username else "MLFLOW_TRACKING_PASSWORD"
        raise UserError(
            f"MLflow server {tracking_uri}: expected basic-auth credentials "
            f"(MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD), found no {missing}"
        )
    # the password only as a digest in the cache key: one lookup per process and credentials
    digest = hashlib.sha256(creds.password.encode()).hexdigest()
    return _lookup(tracking_uri, creds.username, digest)


@lru_cache(maxsize=8)
def _lookup(tracking_uri: str, username: str, _password_digest: str) -> tuple[str, tuple[str, ...]]:
    from mlflow.utils.credentials import get_default_host_creds

    creds = get_default_host_creds(tracking_uri)
    user = _get(creds, tracking_uri, USERS_GET, username)["user"]
    name = str(user["username"])
    listed = _get(creds, tracking_uri, USER_ROLES, name).get("roles", [])
    held = {str(r.get("name", "")) for r in listed}
    roles = [r for r in ROLES if ROLE_PREFIX + r in held]
    if user.get("is_admin") and "admin" not in roles:
        roles.append("admin")
    return name, tuple(roles) or ("viewer",)


def _get(creds: Any, uri: str, endpoint: str, username: str) -> dict[str, Any]:
    from mlflow.utils.rest_utils import http_request  # heavy: MLflow

    resp = http_request(creds, endpoint, "GET", params={"username": username}, max_retries=2)
    if resp.status_code == 401:
        raise UserError(
            f"MLflow server {uri}: user {username!r} not authenticated (401): expected a valid "
            "MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD"
        )
    if resp.status_code == 404:
        raise UserError(
            f"MLflow server {uri}: expected the basic-auth app with its user and role API "
            f"(`mlflow server --app-name basic-auth`), found no {endpoint} (404)"
        )
    if resp.status_code != 200:
        raise UserError(f"MLflow server {uri}: {endpoint} answered {resp.status_code}")
    try:
        return dict(resp.json())
    except ValueError:
        raise UserError(f"MLflow server {uri}: {endpoint} answered with no JSON") from None
