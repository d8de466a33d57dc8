"""The governance policy YAML (``policies/*.yaml``): what a model version must show to hold an alias.

A policy is data, not code: ``gates.evaluate_gate`` reads it; nothing here talks to MLflow.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, model_validator

from hybridft.specfile import load_yaml_model
from hybridft.specs import Strict

# admin: binds policies to models and manages the serving endpoint's API keys
Role = Literal["viewer", "trainer", "approver", "releaser", "admin"]
ROLES: tuple[str, ...] = ("viewer", "trainer", "approver", "releaser", "admin")


class MetricThreshold(Strict):
    """One metric of the version's run, bounded absolutely and/or against the current champion."""

    metric: Annotated[str, Field(min_length=1)]
    min: float | None = None
    # Absolute points: champion - candidate must not exceed this.
    max_drop_vs_champion: float | None = Field(None, ge=0)
    # Absolute points: candidate - champion must reach this.
    min_gain_vs_champion: float | None = None

    @model_validator(mode="after")
    def _some_bound(self) -> MetricThreshold:
        if self.min is None and self.max_drop_vs_champion is None:
            if self.min_gain_vs_champion is None:
                raise ValueError(
                    f"{self.metric}: set at least one of min, max_drop_vs_champion, "
                    "min_gain_vs_champion"
                )
        return self


class Approvals(Strict):
    count: Annotated[int, Field(ge=0)] = 1
    role: Role = "approver"


class Policy(Strict):
    """What ``promote`` checks before it moves one of ``aliases``."""

    name: Annotated[str, Field(min_length=1)]
    metrics: list[MetricThreshold] = []
    max_ece: float | None = Field(None, ge=0, le=1)  # read from the run metric ``eval/ece``
    max_contamination: float | None = Field(
        None, ge=0, le=1
    )  # ``eval/contamination`` metric or tag
    required_approvals: Approvals = Approvals()
    # The releaser of a promotion may not be one of the version's approvers (off: allowed).
    separate_approver_and_releaser: bool = False
    # Every ``hybridft.fingerprint.*`` of the version approved in the data catalog.
    require_approved_data: bool = True
    aliases: Annotated[list[str], Field(min_length=1)] = ["candidate", "champion"]
    # The alias relative checks compare against.
    champion_alias: str = "champion"


def load_policy(path: str | Path) -> Policy:
    """Read a policy file.

    Args:
        path: A ``policies/*.yaml`` file.

    Returns:
        The validated policy.

    Raises:
        UserError: One line ``file:line: key: expected ..., got ...`` for any problem.
    """
    return load_yaml_model(path, Policy)
