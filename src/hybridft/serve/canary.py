"""The canary spec (``serve/canary.yaml``) and the canary's persisted state.

The state file is the one place the router, the controller and the CLI meet: the controller and
the manual gates write it (atomically, under a lock), the router reads it. A restarted controller
or router resumes from it, so a canary survives the death of either.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, ValidationError, model_validator

from hybridft import atomic
from hybridft.errors import UserError
from hybridft.registry.audit import exclusive_lock
from hybridft.serve.routing import RouteTable
from hybridft.specfile import load_yaml_model
from hybridft.specs import Strict

Status = Literal["idle", "running", "paused", "promoted", "rolled_back"]
DecisionKind = Literal[
    "start",
    "hold",
    "advance",
    "promote",
    "rollback",
    "pause",
    "resume",
    "set_weight",
    "request",
    "refused",
]
Share = Annotated[float, Field(ge=0.0, le=1.0)]


class Schedule(Strict):
    """Progressive steps, as Flagger's ``analysis``: weight grows by ``step_weight`` per passing
    interval up to ``max_weight``; ``failed_checks_limit`` failed intervals roll back."""

    interval_s: Annotated[float, Field(gt=0)] = 60.0
    step_weight: Annotated[float, Field(gt=0, le=1)] = 0.1
    max_weight: Annotated[float, Field(gt=0, le=1)] = 0.5
    failed_checks_limit: Annotated[int, Field(ge=1)] = 2
    # Intervals at max weight without a clear success verdict before the canary is rolled back.
    max_intervals: Annotated[int, Field(ge=1)] = 60

    @model_validator(mode="after")
    def _steps_reach_max(self) -> Schedule:
        if self.step_weight > self.max_weight:
            raise ValueError(f"step_weight {self.step_weight} exceeds max_weight {self.max_weight}")
        return self


class Checks(Strict):
    """Per-interval checks of the canary against the primary over the same interval."""

    min_requests: Annotated[int, Field(ge=1)] = 20  # per arm, before a check may fail
    max_error_rate_increase: Share = 0.02  # canary error rate - primary error rate
    max_p95_latency_ratio: Annotated[float, Field(gt=1)] = 1.5  # canary p95 / primary p95
    max_confidence_drop: Share = 0.10  # primary mean confidence - canary mean confidence
    max_psi: Annotated[float, Field(gt=0)] = 0.25  # output drift, counted only if significant
    drift_alpha: Annotated[float, Field(gt=0, lt=1)] = 0.01


class Success(Strict):
    """The sequential test on task success (feedback and labelled probes)."""

    margin: Annotated[float, Field(gt=0, lt=1)] = 0.05  # "not worse" = at most this much lower
    alpha: Annotated[float, Field(gt=0, lt=0.5)] = 0.05  # false rollback rate
    beta: Annotated[float, Field(gt=0, lt=0.5)] = 0.2  # missed regression rate
    min_samples: Annotated[int, Field(ge=1)] = 30


class Review(Strict):
    confidence_threshold: Share = 0.5  # below it an answer is flagged and queued for review


class Probes(Strict):
    """Labelled probes sent to both arms every interval (``release.probes``)."""

    path: Annotated[str, Field(min_length=1)]  # task-format rows: prompt + gold completion
    task: str | None = None  # compare the answer's label for this task (else the answer text)
    labels: list[str] | None = None  # or the label among these (without a task)
    per_interval: Annotated[int, Field(ge=1)] = 10
    max_tokens: Annotated[int, Field(ge=1)] = 8


class TrafficLogSpec(Strict):
    """The Parquet traffic log the router appends to (``<serve_dir>/traffic``)."""

    text: Literal["drop", "mask", "keep"] = "drop"  # PII-free by default: lengths only
    mask_patterns: list[str] = []  # extra regexes replaced by [REDACTED] under ``mask``
    retention_days: Annotated[float, Field(gt=0)] | None = 30.0
    flush_s: Annotated[float, Field(gt=0)] = 2.0  # a part file at most this often per router


class CanarySpec(Strict):
    """``serve/canary.yaml``: the model, the progressive schedule and the analysis."""

    model: Annotated[str, Field(min_length=1)]
    mode: Literal["weighted", "shadow"] = "weighted"
    shadow_share: Share = 1.0
    schedule: Schedule = Schedule()
    checks: Checks = Checks()
    success: Success = Success()
    review: Review = Review()
    traffic_log: TrafficLogSpec = TrafficLogSpec()
    probes: Probes | None = None
    policy: str = "policies/default.yaml"
    canary_alias: str = "canary"
    champion_alias: str = "champion"


def load_canary_spec(path: str | Path) -> CanarySpec:
    return load_yaml_model(path, CanarySpec)


class Decision(Strict):
    """One interval's outcome, kept in the state's history and mirrored to the audit log."""

    at: float
    decision: DecisionKind
    weight: float
    reason: str
    checks: list[dict[str, Any]] = []
    success: dict[str, Any] | None = None
    who: str = "controller"


class CanaryState(Strict):
    model: str
    primary: str
    canary: str | None = None
    status: Status = "idle"
    mode: Literal["weighted", "shadow"] = "weighted"
    shadow_share: Share = 0.0
    weight: Share = 0.0
    salt: str = ""
    started_at: float | None = None
    last_tick: float | None = None
    intervals: int = 0
    intervals_at_max: int = 0
    failed_checks: int = 0
    revision: int = 0
    # A manual promote/rollback asked for over HTTP; the controller carries it out.
    requested: dict[str, Any] | None = None
    # Versions no longer routed to, whose deployments the controller deletes after a grace time.
    retiring: list[dict[str, Any]] = []
    history: list[Decision] = []

    def route_table(self) -> RouteTable:
        active = self.status in ("running", "paused") and self.canary is not None
        return RouteTable(
            model=self.model,
            primary=self.primary,
            canary=self.canary if active else None,
            weight=self.weight if active else 0.0,
            mode=self.mode,
            shadow_share=self.shadow_share,
            salt=self.salt,
        )


class ServePaths:
    """Where one endpoint keeps its state: the canary state, API keys, traffic and review DBs."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).expanduser().resolve()
        self.state = self.root / "canary_state.json"
        self.keys = self.root / "keys.db"
        self.traffic = self.root / "traffic.db"
        self.review = self.root / "review.db"
        self.traffic_log = self.root / "traffic"  # Parquet, see telemetry.traffic_log


class CanaryStore:
    """The state file: read without a lock (writes are atomic renames), updated under one."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock = self.path.with_name(self.path.name + ".lock")

    def exists(self) -> bool:
        return self.path.is_file()

    def read(self) -> CanaryState:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise UserError(f"{self.path}: no canary state (start serving first)") from None
        except json.JSONDecodeError as exc:
            raise UserError(f"{self.path}: corrupt canary state: {exc}") from None
        try:
            return CanaryState.model_validate(data)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(map(str, first["loc"]))
            raise UserError(f"{self.path}: {where}: {first['msg']}") from None

    def init(self, model: str, primary: str) -> CanaryState:
        """Create the state for a model served by ``primary`` unless it already exists."""
        with exclusive_lock(self._lock):
            if self.exists():
                state = self.read()
                if state.model != model:
                    raise UserError(
                        f"{self.path}: holds the canary state of {state.model!r}, not {model!r}"
                    )
                return state
            state = CanaryState(model=model, primary=primary)
            self._write(state)
            return state

    def update(self, change: Callable[[CanaryState], CanaryState | None]) -> CanaryState:
        """Apply ``change`` to the current state under the lock; a None result writes nothing."""
        with exclusive_lock(self._lock):
            state = self.read()
            new = change(state.model_copy(deep=True))
            if new is None:
                return state
            new.revision = state.revision + 1
            self._write(new)
            return new

    def _write(self, state: CanaryState) -> None:
        atomic.write_text(self.path, state.model_dump_json(indent=1))


class RouteWatcher:
    """The router's view of the state file: re-read when it changes, at most every ``poll_s``."""

    def __init__(self, path: str | Path, poll_s: float = 0.25) -> None:
        self.store = CanaryStore(path)
        self.poll_s = poll_s
        self._checked = 0.0
        self._stamp: tuple[int, int] | None = None
        self._table: RouteTable | None = None

    def table(self) -> RouteTable:
        now = time.monotonic()
        if self._table is None or now - self._checked >= self.poll_s:
            self._checked = now
            stat = os.stat(self.store.path)
            stamp = (stat.st_mtime_ns, stat.st_ino)
            if stamp != self._stamp:
                self._table = self.store.read().route_table()
                self._stamp = stamp
        assert self._table is not None
        return self._table


MANUAL_ACTIONS = ("weight", "pause", "resume", "promote", "rollback")


def manual_action(
    store: CanaryStore, action: str, who: str, reason: str = "", weight: Any = None
) -> CanaryState:
    """Apply a manual gate to the state: set the weight, pause, resume, or request a decision.

    Raises:
        UserError: An unknown action, a bad weight, or no canary in a state that allows it.
    """
    if action not in MANUAL_ACTIONS:
        raise UserError(
            f"canary action: expected one of {', '.join(MANUAL_ACTIONS)}, got {action!r}"
        )
    if action == "weight" and (
        isinstance(weight, bool) or not isinstance(weight, int | float) or not 0 <= weight <= 1
    ):
        raise UserError(f"weight: expected a number in [0, 1], got {weight!r}")
    allowed = {"pause": ("running",), "resume": ("paused",)}.get(action, ("running", "paused"))

    def change(state: CanaryState) -> CanaryState:
        if state.canary is None or state.status not in allowed:
            raise UserError(
                f"canary {action}: no canary in state {'/'.join(allowed)} "
                f"(status {state.status}, canary {state.canary}): not running"
            )
        now = time.time()
        decision: DecisionKind
        if action == "weight":
            state.weight = float(weight)
            decision = "set_weight"
        elif action in ("pause", "resume"):
            state.status = "paused" if action == "pause" else "running"
            decision = "pause" if action == "pause" else "resume"
        else:
            state.requested = {"action": action, "who": who, "reason": reason, "at": now}
            decision = "request"
        note = f"{action} by {who}" + (f": {reason}" if reason else "")
        state.history.append(
            Decision(at=now, decision=decision, weight=state.weight, reason=note, who=who)
        )
        return state

    return store.update(change)
