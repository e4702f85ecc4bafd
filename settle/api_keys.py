"""API keys for `settle api`: create (the key is shown once), revoke, list; the API's login.

Keys live in `api_keys` (migration 0007) as a key id and the SHA-256 of the whole key
(api.auth explains the format). Only the database owner writes them: neither settle_reader
nor settle_writer may read the table; settle_api_reader (the API's group) may only read it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import psycopg
from psycopg import sql
from psycopg.rows import dict_row

from api.auth import new_key
from infra.config import ApiSettings
from settlement.errors import SettleError

API_GROUP = "settle_api_reader"


class ApiKeyError(SettleError):
    """A key command cannot do what it was asked (unknown key, bad scope)."""


class ApiLoginError(SettleError):
    """The API's PostgreSQL login is missing or unsafe to serve with."""


@dataclass(frozen=True, slots=True)
class ApiKeyRow:
    key_id: str
    scope: str
    merchant_id: str | None
    label: str
    created_at: datetime
    created_by: str
    revoked_at: datetime | None


@dataclass(frozen=True, slots=True)
class CreatedKey:
    key: str  # the plaintext: shown once, never stored
    row: ApiKeyRow


_COLUMNS = "key_id, scope, merchant_id, label, created_at, created_by, revoked_at"


def create_key(conn: psycopg.Connection, *, merchant: str | None, label: str = "",
               created_by: str = "") -> CreatedKey:
    """A new key: for `merchant`, or an analyst key (every merchant) when merchant is None."""
    if merchant is not None and not merchant.strip():
        raise ApiKeyError("a merchant key needs a merchant id")
    scope = "analyst" if merchant is None else "merchant"
    fresh = new_key()
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(
            f"INSERT INTO api_keys (key_id, key_sha256, scope, merchant_id, label, created_by)"
            f" VALUES (%s, %s, %s, %s, %s, %s) RETURNING {_COLUMNS}",
            (fresh.key_id, fresh.key_sha256, scope, merchant, label, created_by or _whoami()))
        row = cur.fetchone()
    conn.commit()
    assert row is not None
    return CreatedKey(key=fresh.key, row=ApiKeyRow(**row))


def revoke_key(conn: psycopg.Connection, key_id: str) -> ApiKeyRow:
    """Revoke a key (idempotent: a revoked key keeps its first revocation time)."""
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(
            f"UPDATE api_keys SET revoked_at = COALESCE(revoked_at, now()) WHERE key_id = %s"
            f" RETURNING {_COLUMNS}", (key_id,))
        row = cur.fetchone()
    conn.commit()
    if row is None:
        raise ApiKeyError(f"no API key {key_id!r} (`settle api keys list` shows them)")
    return ApiKeyRow(**row)


def list_keys(conn: psycopg.Connection) -> list[ApiKeyRow]:
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(f"SELECT {_COLUMNS} FROM api_keys ORDER BY created_at, key_id")
        rows = cur.fetchall()
    conn.rollback()
    return [ApiKeyRow(**row) for row in rows]


def _whoami() -> str:
    import getpass

    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return ""


def ensure_api_login(conn: psycopg.Connection, api: ApiSettings) -> str:
    """Create or update the API's login (LOGIN, member of settle_api_reader, no bypass).

    Returns what was done: "created", "updated" or "skipped: <why>" when the owner may not
    create roles (a DBA then creates the login; `settle api serve` checks it at start).
    """
    me = conn.execute(
        "SELECT rolsuper, rolcreaterole FROM pg_roles WHERE rolname = current_user").fetchone()
    if me is None or not (me[0] or me[1]):
        conn.rollback()
        return "skipped: the migrating role may not create roles"
    exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s",
                          (api.pg_user,)).fetchone() is not None
    name = sql.Identifier(api.pg_user)
    password = sql.Literal(api.pg_password.reveal())
    attrs = sql.SQL("LOGIN NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE PASSWORD {}").format(
        password)
    try:
        if exists:
            # Only a superuser may name SUPERUSER or BYPASSRLS in an ALTER ROLE, even to
            # switch them off; `settle api serve` refuses a login that has either.
            conn.execute(sql.SQL("ALTER ROLE {} LOGIN PASSWORD {}").format(name, password))
        else:
            conn.execute(sql.SQL("CREATE ROLE {} ").format(name) + attrs)
        conn.execute(sql.SQL("GRANT {} TO {}").format(sql.Identifier(API_GROUP), name))
        conn.commit()
    except (psycopg.errors.DuplicateObject, psycopg.errors.UniqueViolation):
        # Created meanwhile by a concurrent migration of another database: make it ours.
        conn.rollback()
        return ensure_api_login(conn, api)
    except psycopg.errors.InsufficientPrivilege as exc:
        conn.rollback()
        return f"skipped: {exc.diag.message_primary or exc}"
    return "updated" if exists else "created"


def login_problems(conn: psycopg.Connection) -> list[str]:
    """Why the connected login (the API's) must not serve; empty when it may.

    Row-level security is what keeps a merchant key to its merchant's rows if a query forgets
    its filter; a superuser, a BYPASSRLS role or a table's owner is not subject to it, and a
    role outside settle_api_reader is not bound by its restrictive policies.
    """
    row = conn.execute(
        "SELECT current_user, r.rolsuper, r.rolbypassrls,"
        "       pg_has_role(current_user, %s, 'MEMBER')"
        "  FROM pg_roles r WHERE r.rolname = current_user", (API_GROUP,)).fetchone()
    assert row is not None
    user, superuser, bypass, member = row
    problems = []
    if superuser:
        problems.append(f"{user} is a superuser (row-level security does not apply to it)")
    if bypass:
        problems.append(f"{user} has BYPASSRLS (row-level security does not apply to it)")
    owned = conn.execute(
        "SELECT c.relname FROM pg_class c"
        " WHERE c.relkind IN ('r', 'p', 'v', 'm')"
        "   AND pg_has_role(current_user, c.relowner, 'USAGE')"
        "   AND c.relnamespace = 'public'::regnamespace ORDER BY 1 LIMIT 5").fetchall()
    if owned:
        problems.append(f"{user} owns tables ({', '.join(r[0] for r in owned)}); an owner is "
                        "not subject to their row-level security")
    if not member:
        problems.append(f"{user} is not a member of {API_GROUP}")
    conn.rollback()
    return problems
