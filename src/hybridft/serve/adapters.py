"""LoRA adapters on one shared base model, for a multiplexed model deployment.

peft injects LoRA layers into the base model in place, so the generation engine keeps calling
the same model object; which adapter its forward applies is the layers' state. Every engine call
therefore runs under one lock with the right adapter set (or all disabled for the base model): a
batch holds it for its whole decode loop, a stream for one decode step at a time (a client that
goes away mid-stream never leaves it held). Loading and LRU unloading are Ray Serve's
(``serve.multiplexed`` in ``ModelServer``); an unloaded adapter is deleted at the next call.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from hybridft.errors import UserError

ADAPTER_NAME = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")


def check_adapter_dir(name: str, path: str) -> str:
    """A peft LoRA adapter directory with safetensors weights; returns its absolute path."""
    if not ADAPTER_NAME.match(name):
        raise UserError(f"adapters: name {name!r}: expected 1-64 of [A-Za-z0-9_.-]")
    folder = Path(path).expanduser().resolve()
    if not (folder / "adapter_config.json").is_file():
        raise UserError(f"adapters.{name}: {path}: not a peft adapter (no adapter_config.json)")
    if not (folder / "adapter_model.safetensors").is_file():
        raise UserError(f"adapters.{name}: {path}: expected adapter_model.safetensors weights")
    return str(folder)


class AdapterSet:
    """The adapters a replica may apply to its base model, loaded on first use."""

    def __init__(self, model: Any, paths: dict[str, str]) -> None:
        self.model = model
        self.paths = dict(paths)
        self._peft: Any = None
        self._loaded: set[str] = set()
        self._evicted: list[str] = []
        self._lock = threading.Lock()

    def names(self) -> list[str]:
        return sorted(self.paths)

    def loaded(self) -> list[str]:
        return sorted(self._loaded)

    def load(self, name: str) -> None:
        with self._lock:
            self._load(name)

    def evict(self, name: str) -> None:
        """Serve unloaded the adapter (LRU): delete it before the next call (no lock in __del__)."""
        self._evicted.append(name)

    @contextmanager
    def using(self, name: str | None) -> Iterator[None]:
        """Run the engine with adapter ``name`` (None: the base model) under the lock."""
        with self._lock:
            self._drop_evicted(keep=name)
            if name is None:
                if self._peft is None:
                    yield
                else:
                    with self._peft.disable_adapter():
                        yield
                return
            self._load(name)
            self._peft.set_adapter(name)
            yield

    def stepwise(self, steps: Iterator[Any], name: str | None) -> Iterator[Any]:
        """A generator's steps, each one run under :meth:`using`."""
        done = object()
        while True:
            with self.using(name):
                item = next(steps, done)
            if item is done:
                return
            yield item

    def _load(self, name: str) -> None:
        if name in self._loaded:
            return
        if name not in self.paths:
            raise UserError(f"adapter {name!r} is not served here (serving {self.names()})")
        from peft import PeftModel

        if self._peft is None:
            self._peft = PeftModel.from_pretrained(
                self.model, self.paths[name], adapter_name=name, is_trainable=False
            )
        else:
            self._peft.load_adapter(self.paths[name], adapter_name=name, is_trainable=False)
        self._loaded.add(name)

    def _drop_evicted(self, keep: str | None) -> None:
        while self._evicted:
            name = self._evicted.pop()
            if name != keep and name in self._loaded and len(self._loaded) > 1:
                # peft keeps one adapter at least; the last one simply stays until replaced
                self._peft.delete_adapter(name)
                self._loaded.discard(name)


class AdapterHandle:
    """What ``serve.multiplexed`` caches per adapter; unloading it schedules the deletion."""

    def __init__(self, adapters: AdapterSet, name: str) -> None:
        self.adapters, self.name = adapters, name

    def __del__(self) -> None:
        self.adapters.evict(self.name)
