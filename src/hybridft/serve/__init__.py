"""Serving: OpenAI-compatible Ray Serve deployments of registered model versions.

``deploy`` / ``build_app`` live in :mod:`hybridft.serve.launch`; they are imported lazily so
that importing a light submodule (schemas, engine) does not start importing Ray Serve.
"""

from __future__ import annotations

from typing import Any

__all__ = ["ServeModelArgs", "build_app", "deploy"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from hybridft.serve import launch

        return getattr(launch, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
