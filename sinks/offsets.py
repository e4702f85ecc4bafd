"""The sink_offsets table: consumed offsets stored in the same transaction as the rows."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import psycopg


def load_offsets(
    conn: psycopg.Connection, group: str, topic: str, partitions: Iterable[int]
) -> dict[int, int]:
    """next_offset per partition for a consumer group; partitions never written are absent."""
    rows = conn.execute(
        "SELECT partition, next_offset FROM sink_offsets"
        " WHERE consumer_group = %s AND topic = %s AND partition = ANY(%s)",
        (group, topic, list(partitions)),
    ).fetchall()
    return {int(partition): int(offset) for partition, offset in rows}


def save_offsets(
    conn: psycopg.Connection, group: str, topic: str, next_offsets: Mapping[int, int]
) -> None:
    """Upsert next_offset per partition; the caller commits it together with the rows."""
    if not next_offsets:
        return
    with conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO sink_offsets (consumer_group, topic, partition, next_offset)"
            " VALUES (%s, %s, %s, %s)"
            " ON CONFLICT (consumer_group, topic, partition)"
            " DO UPDATE SET next_offset = EXCLUDED.next_offset, updated_at = now()",
            [(group, topic, p, o) for p, o in sorted(next_offsets.items())],
        )
