"""Looking at an HTML page as a user would: headless Chromium screenshots and the inlined plots."""

from __future__ import annotations

import base64
import io
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def screenshot(page: Path, out: Path) -> np.ndarray:
    """Render ``page`` in headless Chromium (as a user would see it) and return the pixels."""
    from PIL import Image

    assert CHROMIUM, "chromium is not installed (make test installs it)"
    profile = out.parent / "chromium-profile"
    proc = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
         "--no-first-run", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", f"--user-data-dir={profile}", "--hide-scrollbars",
         "--window-size=1100,2600", f"--screenshot={out}", page.resolve().as_uri()],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.is_file(), proc.stderr[-2000:]
    return np.asarray(Image.open(out).convert("RGB"))


def inline_pngs(html: str) -> list[np.ndarray]:
    from PIL import Image

    found = re.findall(r"data:image/png;base64,([A-Za-z0-9+/=]+)", html)
    return [np.asarray(Image.open(io.BytesIO(base64.b64decode(b))).convert("RGB")) for b in found]


def has_data(img: np.ndarray) -> bool:
    """A plot with data has pixels neither white nor a shade of grey (bars, lines, points);
    axes, text and an empty plot are black, grey and white only."""
    rgb = img.astype(int)
    coloured = (rgb.max(axis=2) - rgb.min(axis=2)) > 40
    return coloured.mean() > 0.0005
