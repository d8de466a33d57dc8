"""A local Ray started by hybridft: token authentication on, and no line about it for the user
(Ray warns on every start that it turned it on); ``--debug`` shows the line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

WARNING = "Token authentication is enabled for this Ray cluster"
START = (
    "import os, ray\n"
    "from hybridft.runtime import ensure_ray\n"
    "ensure_ray()\n"
    "print('auth mode', os.environ.get('RAY_AUTH_MODE'))\n"
    "ray.shutdown()\n"
)


def _start(tmp_path: Path, debug: bool) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_AUTH_MODE", "HYBRIDFT_DEBUG")}
    if debug:
        env["HYBRIDFT_DEBUG"] = "1"
    return subprocess.run(
        [sys.executable, "-c", START], cwd=tmp_path, env=env, capture_output=True, text=True,
        timeout=180,
    )  # fmt: skip


@pytest.mark.parametrize("debug", [False, True])
def test_a_local_ray_has_token_auth_and_says_so_only_with_debug(tmp_path, debug):
    done = _start(tmp_path, debug)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "auth mode token" in done.stdout  # Ray turned token authentication on
    assert (WARNING in done.stdout + done.stderr) == debug
