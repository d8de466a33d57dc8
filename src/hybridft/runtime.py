"""The Ray runtime every layer connects through: ``ensure_ray`` and the local instance's settings.

Below every package that talks to Ray (train, evaluate, sweep, serve, demo), so connecting does
not make a package depend on training.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator, Mapping

# Ray Train's controller consumes one report per health-check poll (2 s by default): on a local
# instance with short steps every report would wait for it. A quicker poll is cheap locally.
LOCAL_RUNTIME_ENV = {
    "env_vars": {
        "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.25",
        # worker start imports torch + transformers: on 2 busy cores that can pass Ray's 60 s
        "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S": "300",
        # a reused Tune trial actor waits this long for a stopped in-process trial to reach its
        # next report and end (past it, Tune starts a fresh actor: correct, just slower)
        "TUNE_FUNCTION_THREAD_TIMEOUT_S": "60",
    }
}


DEBUG_ENV = "HYBRIDFT_DEBUG"
RAY_AUTH_LOGGER = "ray._private.authentication.authentication_token_setup"


def debug_mode() -> bool:
    """``--debug`` (or HYBRIDFT_DEBUG=1): every library's INFO lines and tracebacks are shown."""
    return os.environ.get(DEBUG_ENV) == "1"


def ray_log_level() -> str:
    """Ray's (and Ray Train's) console level: its INFO lines are for debugging, not for users."""
    return "INFO" if debug_mode() else "WARNING"


def ensure_ray(address: str | None = None) -> None:
    """Connect to ``RAY_ADDRESS`` / a given cluster, or start a local instance."""
    import ray  # heavy (~1 s): only commands that use Ray pay for it

    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    # Ray libraries log every report at INFO; users want our progress lines and warnings.
    quiet = ray.LoggingConfig(encoding="TEXT", log_level=ray_log_level())
    if address:  # a cluster: token auth stays on, the client side sends the token
        os.environ.setdefault("RAY_AUTH_MODE", "token")
        ray.init(address=address, log_to_driver=True, logging_config=quiet)
    else:
        # Ray turns token authentication on for a new local instance (kept on) and warns that
        # it did, on every start: that line is for debugging, as Ray's INFO lines are.
        if not debug_mode():
            logging.getLogger(RAY_AUTH_LOGGER).setLevel(logging.ERROR)
        ray.init(
            address="local", log_to_driver=True, logging_config=quiet, runtime_env=LOCAL_RUNTIME_ENV
        )


@contextlib.contextmanager
def environment(values: Mapping[str, str | None]) -> Iterator[None]:
    """``os.environ`` with ``values`` set (``None``: unset) inside; as it was afterwards."""
    saved = {k: os.environ.get(k) for k in values}
    for key, value in values.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
