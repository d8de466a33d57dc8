"""Labelled probes: known questions sent to the primary and the canary each interval.

User feedback arrives late, rarely and unevenly between versions; probes give the success test
an equal, steady supply for both arms. Each probe is a labelled row (the task format: prompt +
gold completion) sent through the router with the version forced (``x-hybridft-version``), so
it is logged as ``forced`` and stays out of the interval checks and the traffic monitors; its
outcome (answer == gold) is recorded as feedback with source ``probe`` for the version that
answered.
"""

from __future__ import annotations

import logging
import random
import time
from dataclasses import dataclass
from typing import Any

import httpx

from hybridft.data.reader import read_examples
from hybridft.errors import UserError
from hybridft.serve.review import FeedbackStore

logger = logging.getLogger(__name__)
PROBE_KEY_NAME = "canary-probes"


@dataclass(frozen=True)
class ProbeRow:
    prompt: str
    gold: str


def load_probe_rows(path: str) -> list[ProbeRow]:
    """Labelled rows of a task-format file (file:line errors from the reader)."""
    rows = []
    for example in read_examples([path]):
        prompt = "\n".join(m.content for m in example.prompt_messages if m.role == "user")
        rows.append(ProbeRow(prompt, example.completion))
    if not rows:
        raise UserError(f"probes: {path}: no rows")
    return rows


class Prober:
    """Send ``per_interval`` probes to each version and record their outcomes."""

    def __init__(
        self,
        rows: list[ProbeRow],
        base_url: str,
        key: str,
        model: str,
        feedback: FeedbackStore,
        *,
        per_interval: int = 10,
        task: str | None = None,
        labels: list[str] | None = None,
        max_tokens: int = 8,
        seed: int = 0,
        timeout_s: float = 60.0,
    ) -> None:
        self.rows, self.model, self.feedback = rows, model, feedback
        self.per_interval, self.task, self.max_tokens = per_interval, task, max_tokens
        self.labels = labels
        self.rng = random.Random(seed)
        self.client = httpx.Client(
            base_url=base_url.rstrip("/"),
            headers={"authorization": f"Bearer {key}"},
            timeout=timeout_s,
        )

    def run(self, versions: list[str]) -> dict[str, dict[str, int]]:
        """One round: the same sampled rows to every version; ``{version: {"n", "successes"}}``."""
        batch = self.rng.sample(self.rows, min(self.per_interval, len(self.rows)))
        out = {}
        for version in versions:
            outcomes = [self._probe(version, row) for row in batch]
            judged = [o for o in outcomes if o is not None]
            out[version] = {"n": len(judged), "successes": sum(judged)}
        return out

    def _probe(self, version: str, row: ProbeRow) -> bool | None:
        body: dict[str, Any] = {
            "model": self.model,
            "messages": [{"role": "user", "content": row.prompt}],
            "max_tokens": self.max_tokens,
            "temperature": 0,
        }
        if self.task:
            body["task"] = self.task
        if self.labels:
            body["labels"] = self.labels
        try:
            reply = self.client.post(
                "/chat/completions", json=body, headers={"x-hybridft-version": version}
            )
        except httpx.HTTPError as exc:
            logger.warning("probe to version %s failed: %s", version, exc)
            return None
        if reply.status_code != 200:
            logger.warning(
                "probe to version %s: HTTP %s %s", version, reply.status_code, reply.text[:200]
            )
            return None
        doc = reply.json()
        ext = doc.get("hybridft", {})
        scored = self.task or self.labels
        answer = ext.get("label") if scored else doc["choices"][0]["message"]["content"]
        success = (answer or "").strip() == row.gold.strip()
        self._record(ext["request_id"], version, success)
        return success

    def _record(self, request_id: str, version: str, success: bool, wait_s: float = 10.0) -> None:
        """Feedback on the probe; the router logs the answer off its request path, so wait."""
        deadline = time.monotonic() + wait_s
        while True:
            try:
                self.feedback.record(request_id, version, success, "probe")
                return
            except UserError as exc:
                if "unknown request" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
