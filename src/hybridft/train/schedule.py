"""Learning-rate schedules: linear warmup, then constant / linear / cosine decay to a floor."""

from __future__ import annotations

import math
from collections.abc import Callable


def lr_lambda(schedule: str, warmup: int, total: int, min_ratio: float) -> Callable[[int], float]:
    """Multiplier of the peak LR at a step (for ``torch.optim.lr_scheduler.LambdaLR``)."""

    def f(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup  # 1) linear warmup
        if schedule == "constant":
            return 1.0
        progress = min(1.0, (step - warmup) / max(1, total - warmup))  # 2) decay to min_ratio
        if schedule == "linear":
            return 1.0 - (1.0 - min_ratio) * progress
        return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return f
