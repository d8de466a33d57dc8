"""API keys: hashed at rest, verified per request, revocable, roles."""

from __future__ import annotations

import pytest

from hybridft.errors import UserError
from hybridft.serve.keys import KeyInfo, KeyStore, bearer_key


@pytest.fixture
def store(tmp_path) -> KeyStore:
    return KeyStore(tmp_path / "serve.db")


def test_key_is_never_stored_in_plaintext(store: KeyStore, tmp_path) -> None:
    keys = [store.create(f"user{i}", "user") for i in range(3)]
    on_disk = b"".join(p.read_bytes() for p in tmp_path.iterdir() if p.is_file())
    for key in keys:
        assert key.startswith("hft-") and len(key) > 40
        assert key.encode() not in on_disk
        assert key[12:].encode() not in on_disk  # nor the secret part after the key id
        assert store.verify(key) is not None


def test_verify_roles_and_tampering(store: KeyStore) -> None:
    user, admin = store.create("alice", "user"), store.create("ops", "admin")
    info = store.verify(user)
    assert info is not None and (info.name, info.role, info.is_admin) == ("alice", "user", False)
    assert info.key_id == user[4:12]
    admin_info = store.verify(admin)
    assert admin_info is not None and admin_info.is_admin
    tampered = user[:-1] + ("A" if user[-1] != "A" else "B")  # same key id, wrong secret
    for bad in (tampered, "", None, "hft-", "sk-" + user[4:], user + "x"):
        assert store.verify(bad) is None


def test_revoke_by_name_or_id_and_listing(store: KeyStore) -> None:
    first, second = store.create("alice"), store.create("bob", "admin")
    revoked = store.revoke("alice")
    assert revoked.name == "alice" and revoked.revoked_at
    assert store.verify(first) is None
    bob = store.verify(second)
    assert bob is not None
    store.revoke(bob.key_id)
    assert store.verify(second) is None
    assert store.list() == []
    listed = store.list(include_revoked=True)
    assert [k.name for k in listed] == ["alice", "bob"]
    assert all(isinstance(k, KeyInfo) and k.revoked_at for k in listed)
    with pytest.raises(UserError, match="'alice'"):
        store.revoke("alice")


def test_revocation_is_seen_by_another_process_store(tmp_path) -> None:
    # Another replica: its own connection to the same file; its cache of verified keys holds
    # only until some connection commits a change to the file.
    one, other = KeyStore(tmp_path / "k.db"), KeyStore(tmp_path / "k.db")
    key = one.create("carol")
    assert other.verify(key) is not None
    assert other.verify(key) is not None  # from the cache
    one.revoke("carol")
    assert other.verify(key) is None
    assert other.verify(key) is None  # a cached refusal...
    new = one.create("carol")
    assert other.verify(new) is not None  # ...and a key made since: seen at once
    # the same store's own writes
    assert one.verify(new) is not None
    one.revoke("carol")
    assert one.verify(new) is None
    # a change made through a plain sqlite connection (not a KeyStore) is seen as well
    other_key = one.create("dan")
    assert other.verify(other_key) is not None
    import sqlite3

    with sqlite3.connect(tmp_path / "k.db") as conn:
        conn.execute("UPDATE api_keys SET revoked_at = 'now' WHERE name = 'dan'")
    assert other.verify(other_key) is None


def test_duplicate_name_and_bad_input_are_user_errors(store: KeyStore) -> None:
    store.create("alice")
    with pytest.raises(UserError, match="'alice' already has an active key"):
        store.create("alice", "admin")
    with pytest.raises(UserError, match="role"):
        store.create("dave", "root")
    with pytest.raises(UserError, match="name"):
        store.create(" ")
    store.revoke("alice")
    assert store.verify(store.create("alice")) is not None  # a revoked name can be reused


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("Bearer hft-abc", "hft-abc"),
        ("bearer   hft-abc  ", "hft-abc"),
        ("Basic dXNlcjpwYXNz", None),
        ("Bearer", None),
        ("Bearer ", None),
        ("", None),
        (None, None),
    ],
)
def test_bearer_key(header: str | None, expected: str | None) -> None:
    assert bearer_key(header) == expected
