"""Library chatter a user should not see (``--debug`` shows everything).

DeepSpeed logs "Setting accelerator to CPU. If you have GPU ..." on stdout from every process
that imports it on a machine without CUDA (transformers and peft import it when it is installed):
on CPU that is the expected case, and on stdout it corrupts output meant for scripts
(`hybridft base build` prints the base's path there).
"""

from __future__ import annotations

import logging

_CPU_NOTICE = "Setting accelerator to CPU"


def _not_cpu_notice(record: logging.LogRecord) -> bool:
    return _CPU_NOTICE not in record.getMessage()


def quiet_library_chatter() -> None:
    """Drop DeepSpeed's CPU-accelerator notice in this process (a filter on its logger, which
    survives the logger being configured when DeepSpeed is imported later)."""
    ds = logging.getLogger("DeepSpeed")
    if _not_cpu_notice not in ds.filters:
        ds.addFilter(_not_cpu_notice)
