"""The router's side effects off the request path: request-log and review writes, retries.

Writing a sqlite row costs about as much as routing a request, so the router hands rows to one
background thread that commits them in order; ``flush`` waits until every row handed so far is
written (feedback on an answer needs the answer's row).
"""

from __future__ import annotations

import logging
import queue
import re
import threading
from typing import Any

from hybridft.serve.review import FeedbackStore, ReviewQueue

logger = logging.getLogger(__name__)


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


class RequestLogWriter:
    """One thread that writes the request log and review queue, in arrival order."""

    def __init__(self, feedback: FeedbackStore, review: ReviewQueue | None = None) -> None:
        self.feedback = feedback
        self.review = review
        self._queue: queue.Queue[tuple[str, tuple[Any, ...]] | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="request-log", daemon=True)
        self._thread.start()

    def put(self, *row: Any) -> None:
        """A ``FeedbackStore.log_request`` row (positional, same order)."""
        self._queue.put(("log", row))

    def put_review(self, *item: Any) -> None:
        """A ``ReviewQueue.enqueue`` item (positional, same order)."""
        self._queue.put(("review", item))

    def flush(self) -> None:
        self._queue.join()

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=10)

    def _run(self) -> None:
        while True:
            job = self._queue.get()
            try:
                if job is None:
                    return
                kind, args = job
                if kind == "log":
                    self.feedback.log_request(*args)
                elif self.review is not None:
                    self.review.enqueue(*args)
            except Exception as exc:  # a bad row must not stop the log; say so loudly
                logger.error("request log: could not write %s: %s", job[0] if job else "", exc)
            finally:
                self._queue.task_done()
