"""API keys for the serving endpoint, stored hashed in a sqlite file shared by router replicas.

A key is ``hft-<43 urlsafe chars>`` (256 random bits). Its first :data:`KEY_ID_CHARS` random
characters are the public key id, stored in clear to find the row; the rest is never stored: the
row holds a random salt and ``sha256(salt + key)``. A high-entropy key needs no slow KDF (that
only protects guessable passwords), so verification is one indexed lookup and one sha256 per
request. There is no in-process cache: a revocation by one process takes effect on every
replica at their next request.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import sqlite3
from dataclasses import dataclass
from pathlib import Path

from hybridft.errors import UserError
from hybridft.registry.audit import utc_now
from hybridft.serve.sqlite_store import SqliteDatabase

KEY_PREFIX = "hft-"
KEY_ID_CHARS = 8
ROLES = ("user", "admin")
VERIFIED_CACHE_SIZE = 1024  # distinct keys remembered between changes to the key file


_SCHEMA = """
CREATE TABLE IF NOT EXISTS api_keys (
    key_id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    role TEXT NOT NULL,
    salt TEXT NOT NULL,
    key_hash TEXT NOT NULL,
    created_at TEXT NOT NULL,
    revoked_at TEXT
);
CREATE UNIQUE INDEX IF NOT EXISTS api_keys_active_name ON api_keys(name) WHERE revoked_at IS NULL
"""


@dataclass(frozen=True)
class KeyInfo:
    """What is known about a key, never its material."""

    key_id: str
    name: str
    role: str
    created_at: str = ""
    revoked_at: str | None = None

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


def _hash(salt: str, key: str) -> str:
    return hashlib.sha256(bytes.fromhex(salt) + key.encode()).hexdigest()


def _info(row: sqlite3.Row) -> KeyInfo:
    return KeyInfo(row["key_id"], row["name"], row["role"], row["created_at"], row["revoked_at"])


class KeyStore:
    """Hashed API keys in the sqlite file ``path`` (created if absent)."""

    def __init__(self, path: str | Path) -> None:
        self.db = SqliteDatabase(path, _SCHEMA)
        # verify() results, kept while no connection has committed a change to the file
        # (sqlite's data_version); a revocation anywhere applies to the next request
        self._verified: dict[str, KeyInfo | None] = {}
        self._version: int | None = None

    def create(self, name: str, role: str = "user") -> str:
        """Make a key for ``name``; the plaintext is returned here once and never stored.

        Raises:
            UserError: An empty name, an unknown role, or a name that already has an active key.
        """
        if not name or not name.strip():
            raise UserError(f"key name: expected a non-empty name, got {name!r}")
        if role not in ROLES:
            raise UserError(f"key role: expected one of {', '.join(ROLES)}, got {role!r}")
        while True:
            key = KEY_PREFIX + secrets.token_urlsafe(32)
            key_id = key[len(KEY_PREFIX) : len(KEY_PREFIX) + KEY_ID_CHARS]
            salt = secrets.token_hex(16)
            try:
                with self.db.write() as conn:
                    if conn.execute(
                        "SELECT 1 FROM api_keys WHERE name = ? AND revoked_at IS NULL", (name,)
                    ).fetchone():
                        raise UserError(
                            f"key name: {name!r} already has an active key (revoke it first)"
                        )
                    conn.execute(
                        "INSERT INTO api_keys (key_id, name, role, salt, key_hash, created_at)"
                        " VALUES (?, ?, ?, ?, ?, ?)",
                        (key_id, name, role, salt, _hash(salt, key), utc_now()),
                    )
                self._verified.clear()  # this connection's own commits leave data_version
                return key
            except sqlite3.IntegrityError as exc:
                if "api_keys.key_id" not in str(exc):  # a key id collision: draw again
                    raise UserError(f"key name: {name!r} already has an active key") from None

    def verify(self, key: str | None) -> KeyInfo | None:
        """The active key's info, or None for a missing, malformed, unknown or revoked key."""
        if not key or not key.startswith(KEY_PREFIX) or len(key) <= len(KEY_PREFIX) + KEY_ID_CHARS:
            return None
        version = self.db.read("PRAGMA data_version")[0][0]
        if version != self._version:
            self._verified.clear()
            self._version = version
        digest = hashlib.sha256(key.encode()).hexdigest()  # no plaintext key kept in memory
        if digest not in self._verified:
            if len(self._verified) >= VERIFIED_CACHE_SIZE:
                self._verified.clear()
            self._verified[digest] = self._lookup(key)
        return self._verified[digest]

    def _lookup(self, key: str) -> KeyInfo | None:
        key_id = key[len(KEY_PREFIX) : len(KEY_PREFIX) + KEY_ID_CHARS]
        rows = self.db.read(
            "SELECT * FROM api_keys WHERE key_id = ? AND revoked_at IS NULL", (key_id,)
        )
        if not rows or not hmac.compare_digest(rows[0]["key_hash"], _hash(rows[0]["salt"], key)):
            return None
        return _info(rows[0])

    def revoke(self, name_or_id: str) -> KeyInfo:
        """Revoke the active key with this name (or, failing that, this key id).

        Raises:
            UserError: No active key has this name or id.
        """
        with self.db.write() as conn:
            row = conn.execute(
                "SELECT * FROM api_keys WHERE revoked_at IS NULL AND (name = ? OR key_id = ?)"
                " ORDER BY name = ? DESC LIMIT 1",
                (name_or_id, name_or_id, name_or_id),
            ).fetchone()
            if row is None:
                raise UserError(f"key: no active key named or with id {name_or_id!r}")
            revoked_at = utc_now()
            conn.execute(
                "UPDATE api_keys SET revoked_at = ? WHERE key_id = ?", (revoked_at, row["key_id"])
            )
        self._verified.clear()
        return KeyInfo(row["key_id"], row["name"], row["role"], row["created_at"], revoked_at)

    def list(self, include_revoked: bool = False) -> list[KeyInfo]:
        """Keys in creation order, without any key material."""
        where = "" if include_revoked else " WHERE revoked_at IS NULL"
        sql = "SELECT key_id, name, role, created_at, revoked_at FROM api_keys"
        return [_info(row) for row in self.db.read(sql + where + " ORDER BY created_at, name")]


def bearer_key(authorization_header: str | None) -> str | None:
    """The key from an ``Authorization: Bearer <key>`` header; None when absent or another scheme."""
    if not authorization_header:
        return None
    scheme, _, token = authorization_header.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        return None
    return token
