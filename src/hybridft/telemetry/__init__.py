"""The traffic log: the Parquet event format the serving runtime writes (``serve.traffic``) and
the monitors read (``monitor``), below both."""

from hybridft.telemetry.traffic_log import (
    EVENT_KINDS,
    Redaction,
    TrafficLog,
    TrafficRead,
    joined_requests,
)

__all__ = ["EVENT_KINDS", "Redaction", "TrafficLog", "TrafficRead", "joined_requests"]
