"""A local Ray started by hybridft: token authentication on, and no line about it for the user
(Ray warns on every start that it turned it on); ``--debug`` shows the line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

WARNING = "Token authentication is enabled for this Ray cluster"
START = (
    "import os, ray\n"
    "from hybridft.runtime import ensure_ray\n"
    "ensure_ray()\n"
    "print('auth mode', os.environ.get('RAY_AUTH_MODE'))\n"
    "ray.shutdown()\n"
)


def _start(tmp_path: Path, debug: bool) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_AUTH_MODE", "HYBRIDFT_DEBUG")}
    if debug:
        env["HYBRIDFT_DEBUG"] = "1"
    cwd = tmp_path / f"debug-{debug}"
    cwd.mkdir()
    return subprocess.Popen(
        [sys.executable, "-c", START], cwd=cwd, env=env, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def test_a_local_ray_has_token_auth_and_says_so_only_with_debug(tmp_path):
    """Two local starts at once (each waits mostly on Ray's processes): plain, and --debug."""
    started = {debug: _start(tmp_path, debug) for debug in (False, True)}
    for debug, proc in started.items():
        stdout, stderr = proc.communicate(timeout=180)
        assert proc.returncode == 0, stderr[-2000:]
        assert "auth mode token" in stdout  # Ray turned token authentication on
        assert (WARNING in stdout + stderr) == debug, debug
