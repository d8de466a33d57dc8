"""When to retrain: the policy's alert rules over the monitor's alerts, or the champion's age.

The status page shows the verdict (``monitor.status``) and ``hybridft retrain`` acts on it
(``monitor.retrain``); it decides only, and changes nothing.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any

from hybridft.monitor.policy import RetrainPolicy
from hybridft.monitor.records import Alert
from hybridft.registry.client import Registry


@dataclass
class TriggerVerdict:
    fire: bool
    reasons: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def evaluate_trigger(
    rules: RetrainPolicy,
    alerts: list[Alert],
    champion_created_s: float | None = None,
    now: float | None = None,
) -> TriggerVerdict:
    """Fire when an alert matches ``rules.on_alerts`` (prefix) or the champion is too old."""
    now = time.time() if now is None else now
    reasons = [
        f"{a.monitor} on version {a.version}: {a.message}"
        for a in alerts
        if any(a.monitor == rule or a.monitor.startswith(rule) for rule in rules.on_alerts)
    ]
    if rules.schedule_days is not None and champion_created_s is not None:
        age_days = (now - champion_created_s) / 86400
        if age_days >= rules.schedule_days:
            reasons.append(
                f"schedule: the champion is {age_days:.1f} days old "
                f"(retrain every {rules.schedule_days:g} days)"
            )
    return TriggerVerdict(bool(reasons), reasons)


def champion_version(registry: Registry | None, model: str) -> Any | None:
    """The MLflow version holding ``model@champion``, or None (no registry, model or champion)."""
    if registry is None:
        return None
    try:
        return registry.client.get_model_version_by_alias(model, "champion")
    except Exception:  # no model or no champion yet: nothing to age or start from
        return None
