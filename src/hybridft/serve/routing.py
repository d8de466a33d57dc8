"""Which version answers a request: the canary router's decision, as a pure function.

Sticky assignment hashes ``salt:user`` to a point ``u`` in [0, 1) and sends the user to the canary
when ``u < weight``. The point does not depend on the weight, so raising the weight only adds users
(a user in the canary at 10% is still in it at 20%), and it does not depend on the process, so a
restarted router assigns everyone as before. The salt is the canary's id: each new canary draws a
fresh set of users instead of always burdening the same ones.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from typing import Literal

Arm = Literal["primary", "canary", "forced", "shadow"]  # shadow: mirrored, never answered
Mode = Literal["weighted", "shadow"]

_SCALE = float(2**64)


def sticky_point(salt: str, key: str) -> float:
    """A stable point in [0, 1) for ``key`` (a user or session id) under ``salt``."""
    digest = hashlib.blake2b(f"{salt}:{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / _SCALE


@dataclass(frozen=True)
class RouteTable:
    """What the router needs to pick a version; written by the canary controller."""

    model: str
    primary: str
    canary: str | None = None
    weight: float = 0.0
    mode: Mode = "weighted"
    shadow_share: float = 0.0
    salt: str = ""

    def versions(self) -> tuple[str, ...]:
        return (self.primary,) if self.canary is None else (self.primary, self.canary)


@dataclass(frozen=True)
class Route:
    """The answering version, its arm, and the version to mirror the request to (shadow mode)."""

    version: str
    arm: Arm
    shadow: str | None = None


def choose_route(
    table: RouteTable,
    *,
    sticky_key: str | None = None,
    forced: str | None = None,
    rng: random.Random | None = None,
) -> Route:
    """Pick the version for one request.

    Args:
        table: The current routing table.
        sticky_key: User or session id; the same key always gets the same arm at a given weight.
        forced: A version the client asked for (testing); must be one the table serves.
        rng: Random source for requests without a sticky key (default: the module's).

    Returns:
        The route. In shadow mode the primary always answers and ``shadow`` names the canary for
        a ``shadow_share`` of requests.

    Raises:
        KeyError: ``forced`` names a version this table does not serve.
    """
    if forced is not None:
        if forced not in table.versions():
            raise KeyError(forced)
        return Route(forced, "forced")
    if table.canary is None:
        return Route(table.primary, "primary")
    draw = sticky_point(table.salt, sticky_key) if sticky_key else (rng or random).random()
    if table.mode == "shadow":
        # A separate draw for mirroring keeps the shadow share independent of the user split.
        mirror = (rng or random).random() < table.shadow_share
        return Route(table.primary, "primary", shadow=table.canary if mirror else None)
    if draw < table.weight:
        return Route(table.canary, "canary")
    return Route(table.primary, "primary")
