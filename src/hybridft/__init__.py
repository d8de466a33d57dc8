"""hybridft: instruction tuning vs SFT vs hybrid schedules, measured, then shipped safely."""

__version__ = "0.1.0"
