"""API keys: who is asking, read from `Authorization: Bearer <key>`.

A key is `sk_<key_id>_<secret>`: key_id is 12 lowercase hex digits (shown by `settle api keys
list`, named by `revoke`), the secret 32 random bytes in unpadded urlsafe base64. The
database keeps the key_id and the SHA-256 of the whole key, never the key: with 256 random
bits a slow KDF adds nothing, and a stolen table yields no usable key. Hashes are compared
in constant time.

A key found valid is remembered for `SETTLE_API_KEY_CACHE_S` seconds (default 5): a revoked
key keeps working for at most that long in a running server; unknown and revoked keys are
never cached, so a new key works at once.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
import time
from dataclasses import dataclass
from typing import Any

from fastapi import Request
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from api.errors import unauthorized

SCOPES = ("merchant", "analyst")
KEY_PREFIX = "sk_"
_KEY = re.compile(r"^sk_([0-9a-f]{12})_([A-Za-z0-9_-]{43})$")


@dataclass(frozen=True, slots=True)
class Principal:
    """The holder of a valid key: its id, its scope and, for a merchant key, its merchant."""

    key_id: str
    scope: str  # "merchant" | "analyst"
    merchant_id: str | None


@dataclass(frozen=True, slots=True)
class NewKey:
    """A freshly generated key: the plaintext (shown once) and what is stored of it."""

    key: str
    key_id: str
    key_sha256: str


def key_sha256(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def new_key() -> NewKey:
    """A random key (256 random bits in the secret, 48 in the key id)."""
    key_id = secrets.token_hex(6)
    secret = base64.urlsafe_b64encode(secrets.token_bytes(32)).decode().rstrip("=")
    key = f"{KEY_PREFIX}{key_id}_{secret}"
    return NewKey(key=key, key_id=key_id, key_sha256=key_sha256(key))


def parse_key_id(key: str) -> str | None:
    """The key id of a well-formed key, None for anything else."""
    match = _KEY.match(key)
    return match.group(1) if match else None


class KeyCache:
    """Valid keys by the SHA-256 of the key, each trusted for `ttl_s` seconds."""

    def __init__(self, ttl_s: float) -> None:
        self.ttl_s = ttl_s
        self._entries: dict[str, tuple[float, Principal]] = {}

    def get(self, digest: str) -> Principal | None:
        entry = self._entries.get(digest)
        if entry is None:
            return None
        expires, who = entry
        if time.monotonic() >= expires:
            self._entries.pop(digest, None)
            return None
        return who

    def put(self, digest: str, who: Principal) -> None:
        if self.ttl_s <= 0:
            return
        if len(self._entries) > 10_000:  # many keys at once: start over rather than grow
            self._entries.clear()
        self._entries[digest] = (time.monotonic() + self.ttl_s, who)


async def lookup(pool: AsyncConnectionPool[Any], key: str,
                 cache: KeyCache | None = None) -> Principal | str:
    """The key's principal, or why not: "invalid_api_key" or "revoked_api_key"."""
    key_id = parse_key_id(key)
    if key_id is None:
        return "invalid_api_key"
    digest = key_sha256(key)
    if cache is not None and (cached := cache.get(digest)) is not None:
        return cached
    async with pool.connection() as conn:
        cur = conn.cursor(row_factory=dict_row)
        await cur.execute(
            "SELECT key_id, key_sha256, scope, merchant_id, revoked_at"
            " FROM api_keys WHERE key_id = %s", (key_id,))
        row = await cur.fetchone()
        await conn.rollback()
    if row is None or not hmac.compare_digest(row["key_sha256"], digest):
        return "invalid_api_key"
    if row["revoked_at"] is not None:
        return "revoked_api_key"
    who = Principal(key_id=row["key_id"], scope=row["scope"], merchant_id=row["merchant_id"])
    if cache is not None:
        cache.put(digest, who)
    return who


async def authenticate(pool: AsyncConnectionPool[Any], key: str,
                       cache: KeyCache | None = None) -> Principal | None:
    """The principal of a valid key, None for a malformed, unknown or revoked one."""
    found = await lookup(pool, key, cache)
    return found if isinstance(found, Principal) else None


_MESSAGES = {
    "missing_api_key": "send an API key: Authorization: Bearer sk_...",
    "invalid_api_key": "the API key is not valid",
    "revoked_api_key": "the API key has been revoked",
}


async def principal(request: Request) -> Principal:
    """FastAPI dependency: the caller's principal, or 401 (missing, invalid or revoked key)."""
    header = request.headers.get("authorization", "")
    scheme, _, credentials = header.partition(" ")
    if not header:
        raise unauthorized("missing_api_key", _MESSAGES["missing_api_key"])
    if scheme.lower() != "bearer" or not credentials.strip():
        raise unauthorized("invalid_api_key",
                           "use the Authorization header's Bearer scheme with an API key")
    found = await lookup(request.app.state.pool, credentials.strip(),
                         getattr(request.app.state, "key_cache", None))
    if isinstance(found, str):
        raise unauthorized(found, _MESSAGES[found])
    request.state.principal = found
    return found
