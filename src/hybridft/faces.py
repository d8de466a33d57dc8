"""Package faces that load on first use (PEP 562).

A package's ``__init__`` names its public API in ``_EXPORTS`` (name -> the submodule defining
it, or ``"module:attr"`` where the public name differs) and sets
``__getattr__ = lazy_face(__name__, _EXPORTS)``: importing one light module of a package then
never imports its heavy neighbours (torch, Ray, transformers).
"""

from __future__ import annotations

from collections.abc import Callable
from importlib import import_module
from typing import Any


def lazy_face(package: str, exports: dict[str, str]) -> Callable[[str], Any]:
    """The module ``__getattr__`` of ``package`` serving ``exports``."""

    def __getattr__(name: str) -> Any:
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        module, _, attr = exports[name].partition(":")
        return getattr(import_module(f"{package}.{module}"), attr or name)

    return __getattr__
