"""Where a loaded model runs and in which dtype: one answer for evaluation and serving.

``"auto"`` is CUDA when torch sees a GPU, else the CPU. On CUDA a model runs in bfloat16 (half
the weight memory and bandwidth of fp32, and the dtype the GPU's tensor cores take); on CPU in
float32, the dtype evaluation and serving always used there, so CPU results do not change.
torch is imported inside the functions: the config schemas import ``Dtype`` without loading it.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from hybridft.errors import UserError
from hybridft.model.hf import load_model

if TYPE_CHECKING:
    import torch

Dtype = Literal["auto", "bfloat16", "float32"]
DEVICE_TYPES = ("cpu", "cuda")  # where a model can run here; "meta" holds no weights


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """The torch device ``device`` names (``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:N"``).

    Raises:
        UserError: for a name torch does not know, a device type other than cpu/cuda, or a
            CUDA device this process cannot see.
    """
    import torch

    if isinstance(device, str) and device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    expected = "expected 'auto', 'cpu', 'cuda' or 'cuda:N'"
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError):
        raise UserError(f"device: {expected}, got {device!r}") from None
    if resolved.type not in DEVICE_TYPES:
        raise UserError(f"device: {expected}, got {device!r} (models run on cpu or cuda)")
    if resolved.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise UserError(f"device: {device!r} asked for, but torch sees no CUDA device here")
        if resolved.index is not None and resolved.index >= count:
            raise UserError(f"device: {device!r} asked for, but torch sees {count} CUDA device(s)")
    return resolved


def model_dtype(device: torch.device, dtype: Dtype = "auto") -> torch.dtype:
    """The weights' dtype on ``device``: ``auto`` is bfloat16 on CUDA, float32 on CPU."""
    import torch

    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    named = {"bfloat16": torch.bfloat16, "float32": torch.float32}
    if dtype not in named:
        raise UserError(f"dtype: expected one of auto, bfloat16, float32, got {dtype!r}")
    return named[dtype]


def model_device(model: Any) -> torch.device:
    """The device of a model's weights: where its inputs have to be."""
    return next(model.parameters()).device


def load_model_on(
    model_dir: str | Path, device: str | torch.device = "auto", dtype: Dtype = "auto"
) -> Any:
    """The HF causal LM of ``model_dir`` in ``dtype`` on ``device``, in eval mode."""
    resolved = resolve_device(device)
    return load_model(model_dir, dtype=model_dtype(resolved, dtype)).to(resolved).eval()
