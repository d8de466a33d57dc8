"""What both parts of the demo story share: the numbered step banner and acting as a policy user."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

from rich.console import Console

from hybridft.runtime import environment


def print_step(console: Console, n: int, total: int, text: str) -> float:
    """Print the banner of step ``n`` of ``total`` and return the time it started."""
    console.rule(f"[bold]{n}/{total} {text}")
    return time.perf_counter()


@contextmanager
def acting_as(user: str) -> Iterator[None]:
    """Run governance actions as ``user`` (roles from policies/users.yaml).

    The demo is one person playing several: dev mode, the only mode in which ``HYBRIDFT_USER``
    declares the user (``registry.access``); every audit line it writes says ``dev_mode``.
    """
    with environment({"HYBRIDFT_DEV_MODE": "1", "HYBRIDFT_USER": user, "HYBRIDFT_ROLES": None}):
        yield
