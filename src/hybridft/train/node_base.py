"""The base model on a worker's node: the driver's directory, or a copy from the object store
written once per node (a lock, a temporary directory, ``os.replace``)."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from filelock import FileLock

BASE_COMPLETE = ".hybridft-complete"  # in a base copied from the object store: its file sizes


def local_base_dir(base_dir: str, base_files: Any = None) -> str:
    """The base model on this node: the driver's path, or a copy from the object store.

    On a multi-node cluster without shared storage the driver's directory does not exist on a
    worker's node; small bases travel through the object store (``base_files``: an object ref
    to the base's files) instead.
    """
    import ray

    path = Path(base_dir)
    if (path / "config.json").is_file() or base_files is None:
        return str(path)
    local = Path(tempfile.gettempdir()) / "hybridft-base" / path.name
    return str(materialise_base(ray.get(base_files), local))


def materialise_base(files: dict[str, bytes], local: Path) -> Path:
    """Write ``files`` as the directory ``local`` once per node, whoever asks first.

    Every worker of a node asks for the same path: under a file lock the first writes a temporary
    directory and renames it into place (``os.replace``), the others wait and reuse it, so no
    worker ever sees a half-written base (a 2-node job once failed on "no config.json").
    """
    if _base_complete(local, files):
        return local
    local.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(local) + ".lock"):
        if _base_complete(local, files):
            return local
        tmp = Path(tempfile.mkdtemp(prefix=f".{local.name}.", dir=local.parent))
        try:
            _write_tree(files, tmp)
            sizes = {name: len(blob) for name, blob in files.items()}
            (tmp / BASE_COMPLETE).write_text(json.dumps(sizes, sort_keys=True))
            shutil.rmtree(local, ignore_errors=True)  # a stale or partial copy (none is in use)
            os.replace(tmp, local)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return local


def _write_tree(files: dict[str, bytes], root: Path) -> None:
    for name, blob in files.items():
        target = root / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(blob)


def _base_complete(local: Path, files: dict[str, bytes]) -> bool:
    """``local`` was renamed into place whole, with these files (by size)."""
    try:
        recorded = json.loads((local / BASE_COMPLETE).read_text())
    except (OSError, ValueError):  # none yet, or a stale copy being replaced
        return False
    return recorded == {name: len(blob) for name, blob in files.items()}
