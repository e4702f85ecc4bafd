"""Versioned SQL migrations: applied in order, once each, recorded with a checksum."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from importlib import resources

import psycopg

from sinks.errors import MigrationError

_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
# Any constant works; it only has to be the same for every process that migrates.
_ADVISORY_LOCK_KEY = 0x5E771E


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class MigrationOutcome:
    version: int
    name: str
    action: str  # "applied" | "already applied"


def available() -> list[Migration]:
    """The migrations shipped in ``sinks/migrations``, in version order."""
    out: list[Migration] = []
    for entry in resources.files("sinks.migrations").iterdir():
        match = _NAME.match(entry.name)
        if not match:
            continue
        out.append(Migration(int(match.group(1)), match.group(2), entry.read_text("utf-8")))
    out.sort(key=lambda m: m.version)
    versions = [m.version for m in out]
    if len(set(versions)) != len(versions):
        raise MigrationError(f"duplicate migration versions in {versions}")
    return out


def migrate(conn: psycopg.Connection) -> list[MigrationOutcome]:
    """Apply every pending migration, each in its own transaction; idempotent.

    A session-level advisory lock serialises concurrent migrators (two sinks starting at
    once). An applied migration whose file changed since is an error: history is not rewritten.
    """
    outcomes: list[MigrationOutcome] = []
    conn.autocommit = True
    conn.execute("SELECT pg_advisory_lock(%s)", (_ADVISORY_LOCK_KEY,))
    try:
        conn.execute(
            """
            CREATE TABLE IF NOT EXISTS schema_migrations (
                version     INTEGER PRIMARY KEY,
                name        TEXT NOT NULL,
                checksum    TEXT NOT NULL,
                applied_at  TIMESTAMPTZ NOT NULL DEFAULT now()
            )
            """
        )
        applied = {
            row[0]: row[1]
            for row in conn.execute("SELECT version, checksum FROM schema_migrations").fetchall()
        }
        for mig in available():
            if mig.version in applied:
                if applied[mig.version] != mig.checksum:
                    raise MigrationError(
                        f"migration {mig.version:04d}_{mig.name} changed after it was applied; "
                        "add a new migration instead of editing an applied one"
                    )
                outcomes.append(MigrationOutcome(mig.version, mig.name, "already applied"))
                continue
            with conn.transaction():
                conn.execute(mig.sql.encode())
                conn.execute(
                    "INSERT INTO schema_migrations (version, name, checksum) VALUES (%s, %s, %s)",
                    (mig.version, mig.name, mig.checksum),
                )
            outcomes.append(MigrationOutcome(mig.version, mig.name, "applied"))
    except psycopg.Error as exc:
        raise MigrationError(f"migration failed: {exc}") from exc
    finally:
        conn.execute("SELECT pg_advisory_unlock(%s)", (_ADVISORY_LOCK_KEY,))
    return outcomes
