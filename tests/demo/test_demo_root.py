"""The demo never deletes a user's serving state: a folder it made is replaced, one it did not
make is refused (non-interactive) and left as it was."""

from __future__ import annotations

import pytest

from hybridft.demo.loop import DEMO_OWNED, fresh_demo_root
from hybridft.errors import UserError


def test_the_demo_replaces_only_what_it_made(tmp_path) -> None:
    root = tmp_path / "serve"
    fresh_demo_root(root)  # none yet: made, and marked as the demo's
    assert (root / DEMO_OWNED).is_file()
    (root / "traffic.db").write_text("the demo's own traffic")
    fresh_demo_root(root)
    assert sorted(p.name for p in root.iterdir()) == [DEMO_OWNED]


def test_a_users_serving_state_is_never_deleted(tmp_path) -> None:
    root = tmp_path / "serve"
    root.mkdir()
    (root / "keys.db").write_text("a user's keys")
    with pytest.raises(UserError, match="the demo never deletes it"):
        fresh_demo_root(root)  # pytest's stdin is not a terminal: no question, a refusal
    assert (root / "keys.db").read_text() == "a user's keys"
