"""Library chatter a user should not see (``--debug`` shows everything).

Ray Serve's driver logs every start, connect and "is ready" at INFO, and Ray prints log lines
from workers deduplicated (lines that differ only in numbers, such as progress lines, are
folded into "[repeated 3x across cluster]"). DeepSpeed logs "Setting accelerator to CPU. If you have GPU ..." on stdout from every process
that imports it on a machine without CUDA (transformers and peft import it when it is installed):
on CPU that is the expected case, and on stdout it corrupts output meant for scripts
(`hybridft base build` prints the base's path there).
"""

from __future__ import annotations

import logging
import os

_CPU_NOTICE = "Setting accelerator to CPU"


def _not_cpu_notice(record: logging.LogRecord) -> bool:
    return _CPU_NOTICE not in record.getMessage()


def _warning_or_worse(record: logging.LogRecord) -> bool:
    return record.levelno >= logging.WARNING


def quiet_library_chatter() -> None:
    """Drop DeepSpeed's CPU-accelerator notice and Ray Serve's INFO lines in this process
    (filters on their loggers, which survive the loggers being configured when the library is
    imported later), and show every progress line Ray forwards (no folding)."""
    ds = logging.getLogger("DeepSpeed")
    if _not_cpu_notice not in ds.filters:
        ds.addFilter(_not_cpu_notice)
    serve = logging.getLogger("ray.serve")
    if _warning_or_worse not in serve.filters:
        serve.addFilter(_warning_or_worse)
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")  # read when Ray is imported
