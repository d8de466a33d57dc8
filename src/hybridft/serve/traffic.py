"""The router's side effects off the request path: request-log, review and traffic-log writes.

Writing a sqlite row costs about as much as routing a request, so the router hands rows to one
background thread that commits them in order; ``flush`` waits until every row handed so far is
written (feedback on an answer needs the answer's row).
"""

from __future__ import annotations

import logging
import queue
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hybridft.serve.review import FeedbackStore, ReviewQueue
from hybridft.telemetry.traffic_log import AppendFailed, Redaction, TrafficLog

logger = logging.getLogger(__name__)
RETENTION_EVERY_S = 3600.0  # the router also applies the traffic log's retention at start


def model_app_name(model: str, version: str) -> str:
    """The Serve application that serves ``model`` version ``version``."""
    return f"{re.sub(r'[^A-Za-z0-9_-]', '-', model)}-v{version}"


def is_retryable(exc: BaseException) -> bool:
    """A failure of the replica or its actor, not of the request: worth sending again."""
    from ray import exceptions as rex

    retryable: tuple[type[BaseException], ...] = (
        rex.RayActorError,
        rex.ActorUnavailableError,
        rex.TaskCancelledError,
    )
    names = {"RequestCancelledError", "DeploymentUnavailableError", "BackPressureError"}
    return isinstance(exc, retryable) or type(exc).__name__ in names


@dataclass
class Answer:
    """One answer the router returned (or mirrored), as both logs record it."""

    request_id: str
    model: str
    version: str
    arm: str
    status_code: int
    latency_s: float
    prompt: str
    completion: str | None = None  # None for streams: only their length is known here
    completion_chars: int | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    ext: dict[str, Any] = field(default_factory=dict)  # the body's "hybridft" extension

    @classmethod
    def from_body(
        cls,
        request_id: str,
        model: str,
        route: Any,
        status: int,
        latency_s: float,
        prompt: str,
        out: dict[str, Any],
    ) -> Answer:
        """The answer a version returned: an OpenAI body (or error body) for ``route``."""
        usage = out.get("usage") or {}
        choices = out.get("choices") or [{}]
        text = choices[0].get("text") or (choices[0].get("message") or {}).get("content") or ""
        return cls(
            request_id, model, route.version, route.arm, status, latency_s, prompt, text,
            prompt_tokens=usage.get("prompt_tokens", 0),
            completion_tokens=usage.get("completion_tokens", 0),
            ext=out.get("hybridft") or {},
        )  # fmt: skip


def open_traffic_log(root: str | Path, config: dict[str, Any]) -> TrafficLog:
    """The router's traffic log (a ``TrafficLogSpec`` as a dict), its retention applied once."""
    log = TrafficLog(
        root,
        Redaction(config.get("text", "drop"), tuple(config.get("mask_patterns", ()))),
        config.get("retention_days", 30.0),
    )
    try:
        log.apply_retention()
    except OSError as exc:
        logger.error("traffic log retention: %s", exc)
    return log


CLOSE_RETRIES = 4  # tries to write the traffic buffer at shutdown, flush_s / 4 apart


class RequestLogWriter:
    """One thread that writes the request log, the review queue and the Parquet traffic log.

    sqlite rows are committed in arrival order; traffic events are buffered and appended as one
    Parquet file per partition every ``flush_s`` seconds (and on ``flush``/``close``), so the log
    does not become thousands of one-row files.
    """

    def __init__(
        self,
        feedback: FeedbackStore,
        review: ReviewQueue | None = None,
        traffic: TrafficLog | None = None,
        flush_s: float = 2.0,
    ) -> None:
        self.feedback = feedback
        self.review = review
        self.traffic = traffic
        self.flush_s = flush_s
        self._events: list[dict[str, Any]] = []
        self._failing = False
        self._oldest = 0.0
        self._retained = time.monotonic()
        self._queue: queue.Queue[tuple[str, tuple[Any, ...]] | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="request-log", daemon=True)
        self._thread.start()

    def put(self, *row: Any) -> None:
        """A ``FeedbackStore.log_request`` row (positional, same order)."""
        self._queue.put(("log", row))

    def log_answer(self, a: Answer) -> None:
        """The answer's request-log row (the controller's input) and traffic event (the monitor's)."""
        chars = len(a.completion) if a.completion is not None else (a.completion_chars or 0)
        ext = a.ext
        self.put(
            a.request_id, a.version, a.arm, a.status_code, a.latency_s, a.prompt_tokens,
            a.completion_tokens, ext.get("confidence"), ext.get("label"), chars,
        )  # fmt: skip
        self.put_event(
            "request", request_id=a.request_id, model=a.model, version=a.version, arm=a.arm,
            status_code=a.status_code, latency_s=a.latency_s, prompt_tokens=a.prompt_tokens,
            completion_tokens=a.completion_tokens, completion_chars=chars, task=ext.get("task"),
            predicted_label=ext.get("label"), confidence=ext.get("confidence"),
            label_probs=ext.get("label_probs"), flagged=bool(ext.get("flagged_for_review", False)),
            prompt=a.prompt, completion=a.completion,
        )  # fmt: skip

    def put_review(self, *item: Any) -> None:
        """A ``ReviewQueue.enqueue`` item (positional, same order)."""
        self._queue.put(("review", item))

    def put_review_of(
        self, kind: str, out: dict[str, Any], where: tuple[str, str, str, str], threshold: float
    ) -> None:
        """The review item of a flagged answer ``out`` (a chat or completion body);
        ``where``: (version, request id, model, prompt)."""
        version, request_id, model, prompt = where
        ext = out["hybridft"]
        choice = out["choices"][0]
        answer = choice["message"]["content"] if kind == "chat" else choice["text"]
        item = (request_id, version, model, prompt, answer, ext.get("confidence"), threshold)
        self.put_review(*item, ext.get("label_probs"), ext.get("task"))

    def put_event(self, kind: str, **values: Any) -> None:
        """A traffic-log event (``TrafficLog.event`` arguments); dropped without a traffic log."""
        if self.traffic is not None:
            self._queue.put(("event", (kind, values)))

    def flush(self) -> None:
        """Wait until everything handed so far is written (Parquet buffer included)."""
        self._queue.put(("flush", ()))
        self._queue.join()

    def close(self) -> None:
        """Write everything handed so far, then stop (a replica's shutdown calls it)."""
        self._queue.put(None)
        self._thread.join(timeout=10)
        if self._events:  # still failing at shutdown: the count is all that can be kept
            logger.error("traffic log: %d events could not be written", len(self._events))

    def _run(self) -> None:
        while True:
            try:
                job = self._queue.get(timeout=self.flush_s / 4)
            except queue.Empty:
                self._write_events(force=False)
                continue
            try:
                if job is None:
                    self._write_events(force=True)
                    for _ in range(CLOSE_RETRIES):  # a last few tries before giving up
                        if not self._events:
                            break
                        time.sleep(self.flush_s / 4)
                        self._write_events(force=True)
                    return
                self._do(*job)
            except Exception as exc:  # a bad row must not stop the log; say so loudly
                logger.error("request log: could not write %s: %s", job[0] if job else "", exc)
            finally:
                self._queue.task_done()

    def _do(self, kind: str, args: tuple[Any, ...]) -> None:
        if kind == "log":
            self.feedback.log_request(*args)
        elif kind == "review":
            if self.review is not None:
                self.review.enqueue(*args)
        elif kind == "event":
            assert self.traffic is not None
            event_kind, values = args
            if not self._events:
                self._oldest = time.monotonic()
            self._events.append(self.traffic.event(event_kind, **values))
            self._write_events(force=False)
        elif kind == "flush":
            self._write_events(force=True)

    def _write_events(self, force: bool) -> None:
        if not self._events or self.traffic is None:
            return
        if not force and time.monotonic() - self._oldest < self.flush_s:
            return
        events, self._events = self._events, []
        try:
            self.traffic.append(events)
            self._failing = False
        except AppendFailed as exc:  # kept, in order, and tried again after flush_s
            self._events = exc.events + self._events
            self._oldest = time.monotonic()
            if not self._failing:  # once per failing streak, not every retry
                logger.error("traffic log: %s; keeping them to retry", exc)
            self._failing = True
        if time.monotonic() - self._retained > RETENTION_EVERY_S:  # a long-running router
            self._retained = time.monotonic()
            try:
                self.traffic.apply_retention()
            except OSError as exc:
                logger.error("traffic log retention: %s", exc)
