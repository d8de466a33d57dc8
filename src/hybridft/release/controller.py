"""The canary controller: analysis every interval, then advance, hold, promote or roll back.

Everything it knows is on disk: the canary state file (weight, step, failed checks, history),
the request log and feedback (``traffic.db``) and the registry. ``tick`` reads them, decides, and
writes the state back under the state file's lock, so a controller killed at any point restarts
where it was. Promotion moves ``@champion`` through the policy gates; every decision other than
"hold" is appended to the audit log and tagged on the canary's model version.

Registry hook: pointing ``@canary`` at a version (``hybridft promote REF --alias canary``) starts
a canary of that version on the next tick.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from pathlib import Path
from typing import Any, NoReturn, Protocol

from hybridft.errors import UserError
from hybridft.registry.access import User, audit_dev_mode, require
from hybridft.registry.audit import AuditRecord, append_audit, default_audit_path
from hybridft.registry.client import Registry
from hybridft.registry.gates import alias_version, promote
from hybridft.registry.policy import Policy
from hybridft.release import analysis
from hybridft.release.evidence import interval_checks, success_verdict
from hybridft.serve.canary import (
    CanarySpec,
    CanaryState,
    CanaryStore,
    Decision,
    DecisionKind,
    ServePaths,
)
from hybridft.serve.review import FeedbackStore

logger = logging.getLogger(__name__)

RETIRE_AFTER_S = 5.0  # a retired version keeps serving this long: routers switch, in-flight ends


class Deployer(Protocol):
    """Starts and stops the model deployment of a version (Serve in production)."""

    def deploy(self, version: str) -> bool | None: ...

    def retire(self, version: str) -> None: ...


class NoDeployer:
    """For a canary whose traffic is simulated: versions need no replicas."""

    def deploy(self, version: str) -> None:
        return None

    def retire(self, version: str) -> None:
        return None


class CanaryController:
    """Drive one model's canary from its spec; call :meth:`tick` as often as you like."""

    def __init__(
        self,
        spec: CanarySpec,
        paths: ServePaths,
        registry: Registry,
        policy: Policy,
        user: User | None,
        deployer: Deployer | None = None,
        audit_path: str | Path | None = None,
        prober: Any | None = None,
    ) -> None:
        self.spec = spec
        self.prober = prober  # release.probes.Prober: labelled probes to both arms per interval
        self.paths = paths
        self.store = CanaryStore(paths.state)
        self.traffic = FeedbackStore(paths.traffic)
        self.registry = registry
        self.policy = policy
        self.audit_path = Path(audit_path or default_audit_path(registry.tracking_uri))
        self.user = require(
            "releaser",
            "run a canary controller",
            user=user,  # None: the store's acting user (registry.access)
            audit_path=self.audit_path,
            tracking_uri=registry.tracking_uri,
            model=spec.model,
        )
        self.deployer = deployer or NoDeployer()

    # --- the loop -----------------------------------------------------------------------------

    def run(self, poll_s: float = 1.0, until: Any = None) -> None:
        """Tick every ``poll_s`` until ``until()`` is true (forever by default)."""
        while until is None or not until():
            try:
                self.tick()
            except Exception:  # keep the canary safe: log, keep the state, try again
                logger.exception("canary controller tick failed")
            time.sleep(poll_s)

    def tick(self, now: float | None = None) -> Decision | None:
        """One step: the registry hook, manual requests, then the interval analysis if due."""
        now = time.time() if now is None else now
        state = self.store.read()
        self._retire_due(state, now)
        started = self._start_if_requested(state, now)
        if started is not None:
            return started
        if state.requested:
            return self._manual(state, now)
        if state.status != "running" or state.canary is None:
            return None
        since = state.last_tick if state.last_tick is not None else state.started_at or now
        if now - since < self.spec.schedule.interval_s:
            return None
        if self.prober is not None:
            try:
                self.prober.run([state.primary, state.canary])
            except Exception:  # probes add evidence; without them the analysis still runs
                logger.exception("labelled probes failed")
        return self._analyse(state, since, now)

    # --- starting -----------------------------------------------------------------------------

    def _start_if_requested(self, state: CanaryState, now: float) -> Decision | None:
        wanted = alias_version(self.registry, self.spec.model, self.spec.canary_alias)
        if wanted is None or wanted == state.primary:
            return None
        if state.canary == wanted and state.status in ("running", "paused"):
            return None
        if state.canary == wanted and state.started_at is not None:
            return None  # this version's canary already ended; @canary is removed then
        self.deployer.deploy(wanted)
        schedule = self.spec.schedule
        weight = 0.0 if self.spec.mode == "shadow" else schedule.step_weight
        reason = f"@{self.spec.canary_alias} -> version {wanted}; primary {state.primary}"
        decision = Decision(at=now, decision="start", weight=weight, reason=reason)

        def start(s: CanaryState) -> CanaryState:
            s.canary, s.status, s.weight, s.mode = wanted, "running", weight, self.spec.mode
            s.shadow_share = self.spec.shadow_share if self.spec.mode == "shadow" else 0.0
            s.salt = f"{wanted}-{uuid.uuid4().hex[:8]}"
            s.started_at, s.last_tick = now, now
            s.intervals = s.intervals_at_max = s.failed_checks = 0
            s.requested = None
            s.history.append(decision)
            return s

        self.store.update(start)
        self._audit(decision, wanted, state.primary)
        return decision

    # --- analysis -----------------------------------------------------------------------------

    def _analyse(self, state: CanaryState, since: float, now: float) -> Decision:
        assert state.canary is not None and state.started_at is not None
        checks, canary_n = interval_checks(
            self.traffic, self.spec.checks, state.primary, state.canary, since, now
        )
        success = success_verdict(
            self.traffic, self.spec.success, state.primary, state.canary, state.started_at
        )
        schedule = self.spec.schedule
        failed = [c for c in checks if c["status"] == "fail"]
        at_max = state.mode == "shadow" or state.weight >= schedule.max_weight - 1e-9
        kind: DecisionKind
        if success.decision == "worse":
            kind, reason = "rollback", f"task success: {success.reason}"
        elif failed and state.failed_checks + 1 >= schedule.failed_checks_limit:
            names = ", ".join(f"{c['name']} ({c['detail']})" for c in failed)
            kind = "rollback"
            reason = f"{state.failed_checks + 1} failed interval(s), limit reached: {names}"
        elif failed:
            kind = "hold"
            reason = "failed: " + ", ".join(f"{c['name']} ({c['detail']})" for c in failed)
        elif canary_n < self.spec.checks.min_requests:
            kind = "hold"
            reason = f"{canary_n} canary requests this interval (< {self.spec.checks.min_requests})"
        elif not at_max:
            kind, reason = "advance", "all checks passed"
        elif success.decision == "not_worse":
            kind, reason = "promote", f"all checks passed; task success: {success.reason}"
        elif state.intervals_at_max + 1 >= schedule.max_intervals:
            kind = "rollback"
            reason = f"no verdict on task success after {schedule.max_intervals} intervals at max"
        else:
            kind, reason = "hold", f"at max weight; task success: {success.reason}"
        weight = state.weight
        if kind == "advance":
            weight = min(schedule.max_weight, round(state.weight + schedule.step_weight, 6))
        decision = Decision(
            at=now,
            decision=kind,
            weight=weight,
            reason=reason,
            checks=checks,
            success=_success_dict(success),
        )
        if kind == "promote":
            return self._promote(decision, who=self.user)
        if kind == "rollback":
            return self._rollback(decision)

        def step(s: CanaryState) -> CanaryState:
            s.last_tick, s.intervals, s.weight = now, s.intervals + 1, weight
            s.failed_checks = s.failed_checks + 1 if failed else 0
            s.intervals_at_max = s.intervals_at_max + 1 if at_max else 0
            s.history.append(decision)
            return s

        self.store.update(step)
        if kind == "advance":
            self._audit(decision, state.canary, state.primary)
        return decision

    # --- decisions ----------------------------------------------------------------------------

    def _manual(self, state: CanaryState, now: float) -> Decision | None:
        request = state.requested or {}
        if state.canary is None or state.status not in ("running", "paused"):
            self.store.update(_clear_request)
            return None
        who = str(request.get("who", "unknown"))
        decision = _manual_decision(request.get("action", ""), who, request.get("reason"), now)
        if decision.decision == "promote":
            return self._promote(decision, who=self.user)
        return self._rollback(decision)

    def decide_now(self, action: str, who: User, reason: str) -> Decision:
        """The manual gates: ``promote`` (still through the policy gates) or ``rollback`` now."""
        decision = _manual_decision(action, who.name, reason, time.time())
        if action == "promote":
            return self._promote(decision, who=who)
        return self._rollback(decision)

    def promote_now(self, who: User, reason: str) -> Decision:
        return self.decide_now("promote", who, reason)

    def rollback_now(self, who: User, reason: str) -> Decision:
        return self.decide_now("rollback", who, reason)

    def _promote(self, decision: Decision, who: User) -> Decision:
        state = self.store.read()
        if state.canary is None:
            _raise_no_canary(state)
        canary, old = state.canary, state.primary
        outcome = promote(
            self.registry,
            self.policy,
            self.spec.model,
            canary,
            self.spec.champion_alias,
            user=who,
            reason=decision.reason,
            audit_path=self.audit_path,
        )
        if not outcome.moved:
            # The gates said no: keep the canary where it is and wait for a human.
            decision = decision.model_copy(
                update={
                    "decision": "refused",
                    "weight": state.weight,
                    "reason": f"promotion refused: {outcome.reason}",
                }
            )

            def pause(s: CanaryState) -> CanaryState:
                s.status, s.requested, s.last_tick = "paused", None, decision.at
                s.history.append(decision)
                return s

            self.store.update(pause)
            self._audit(decision, canary, old)
            return decision
        self._drop_canary_alias(canary)

        def finish(s: CanaryState) -> CanaryState:
            s.primary, s.canary, s.status, s.weight = canary, None, "promoted", 0.0
            s.requested, s.last_tick = None, decision.at
            s.history.append(decision.model_copy(update={"weight": 1.0}))
            s.retiring = [*s.retiring, {"version": old, "at": decision.at}]
            return s

        self.store.update(finish)
        self._audit(decision, canary, old)
        return decision

    def _rollback(self, decision: Decision) -> Decision:
        state = self.store.read()
        if state.canary is None:
            _raise_no_canary(state)
        canary = state.canary
        decision = decision.model_copy(update={"decision": "rollback", "weight": 0.0})
        self._drop_canary_alias(canary)

        def finish(s: CanaryState) -> CanaryState:
            s.status, s.weight, s.requested, s.last_tick = "rolled_back", 0.0, None, decision.at
            s.history.append(decision)
            s.retiring = [*s.retiring, {"version": canary, "at": decision.at}]
            return s

        self.store.update(finish)
        self._audit(decision, canary, state.primary)
        return decision

    def _retire_due(self, state: CanaryState, now: float) -> None:
        due = [r for r in state.retiring if now - r["at"] >= RETIRE_AFTER_S]
        if not due:
            return
        live = {state.primary, state.canary}
        for item in due:
            if item["version"] not in live:
                self.deployer.retire(item["version"])

        def drop(s: CanaryState) -> CanaryState:
            s.retiring = [r for r in s.retiring if r not in due]
            return s

        self.store.update(drop)

    def _drop_canary_alias(self, version: str) -> None:
        name, alias = self.spec.model, self.spec.canary_alias
        if alias_version(self.registry, name, alias) == version:
            self.registry.client.delete_registered_model_alias(name, alias)

    def _audit(self, decision: Decision, canary: str, primary: str) -> None:
        append_audit(
            AuditRecord(
                who=decision.who if decision.who != "controller" else self.user.name,
                roles=list(self.user.roles),
                dev_mode=audit_dev_mode(self.user),
                action=f"canary_{decision.decision}",
                outcome="refused" if decision.decision == "refused" else "ok",
                reason=decision.reason,
                model=self.spec.model,
                alias=self.spec.canary_alias,
                from_version=primary,
                to_version=canary,
                extra={
                    "weight": decision.weight,
                    "checks": decision.checks,
                    "success": decision.success,
                },
            ),
            self.audit_path,
        )
        tag = f"hybridft.canary.{decision.decision}"
        payload = {
            "at": decision.at,
            "weight": decision.weight,
            "reason": decision.reason,
            "primary": primary,
        }
        self.registry.client.set_model_version_tag(
            self.spec.model, canary, tag, json.dumps(payload)[:4900]
        )


def _manual_decision(action: str, who: str, reason: str | None, at: float) -> Decision:
    if action not in ("promote", "rollback"):
        raise UserError(f"canary decision: expected promote or rollback, got {action!r}")
    # The weight is filled in by _promote / _rollback, which read the state under the lock.
    return Decision(
        at=at,
        decision="promote" if action == "promote" else "rollback",
        weight=0.0,
        who=who,
        reason=f"manual {action} by {who}: {reason or 'no reason'}",
    )


def _raise_no_canary(state: CanaryState) -> NoReturn:
    raise UserError(f"model {state.model}: no canary running (status {state.status})")


def _clear_request(state: CanaryState) -> CanaryState:
    state.requested = None
    return state


def _success_dict(s: analysis.SequentialDecision) -> dict[str, Any]:
    return {
        "decision": s.decision,
        "canary_rate": s.canary_rate,
        "primary_rate": s.reference_rate,
        "canary_n": s.canary_n,
        "primary_n": s.reference_n,
        "reason": s.reason,
    }
