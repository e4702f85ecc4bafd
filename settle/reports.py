"""`settle report`: the API's list exports from the command line, as CSV or Parquet.

Each report runs the very query its API list exports (the query builders of api.routes:
`batches_query`, `balance_transactions_query`, `summary_query`), so a file and the API's
`Accept: text/csv` download of the same filters have the same columns and rows. CSV is
PostgreSQL's own `COPY (<query>) TO STDOUT WITH (FORMAT csv, HEADER)`, streamed to the file
in chunks; Parquet reads the rows through a server-side cursor in batches and writes a row
group per batch (pyarrow), so memory stays flat whatever the row count. In Parquet, money is
int64 minor units beside a `currency` string column, counts are int64, times are
timestamp[us, UTC] and the summary's `day` is a date.

The reports read in a READ ONLY transaction as the operator's login (SETTLE_PG_*).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, datetime, time
from pathlib import Path
from typing import IO, Any, Final
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import psycopg
from psycopg import sql

from settlement.errors import SettleError

REPORTS: Final = ("batches", "transactions", "summary")
FORMATS: Final = ("csv", "parquet")
SUMMARY_KEYS: Final = ("day", "merchant", "channel", "outcome", "currency")
PARQUET_BATCH_ROWS: Final = 50_000
PROGRESS_EVERY_ROWS: Final = 10_000
# Text columns holding RFC 3339 times (api.routes.shared.ts_text) and the summary's day.
_TIME_COLUMNS: Final = frozenset({"posted_at", "window_start", "window_end", "closed_at",
                                  "matched_at", "created_at", "decided_at"})
_DATE_COLUMNS: Final = frozenset({"day"})

Progress = Callable[[int], None]  # rows written so far


class ReportError(SettleError):
    """A report asked for with arguments that cannot make one."""


@dataclass(frozen=True, slots=True)
class ReportRequest:
    """What to export. `since`/`until`: the half-open range of the report's time (a batch's
    window start, a posting's time, a payment's creation)."""

    report: str
    merchant: str | None = None
    currency: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    tz: str = "Asia/Shanghai"
    group_by: tuple[str, ...] = ("day",)
    filters: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ReportResult:
    path: Path | None  # None: written to a stream
    rows: int
    columns: tuple[str, ...]


def parse_zone(name: str) -> str:
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError) as exc:
        raise ReportError(f"{name!r} is not an IANA time zone (e.g. Asia/Shanghai, UTC)") from exc
    return name


def parse_bound(what: str, value: str | None, tz: str) -> datetime | None:
    """A range bound as the API reads its summary's: a date is its midnight in `tz`, a date
    and time is itself (naive: UTC)."""
    if value is None or value == "":
        return None
    text = value.strip()
    try:
        if len(text) == 10:
            return datetime.combine(date.fromisoformat(text), time(0), tzinfo=ZoneInfo(tz))
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError as exc:
        raise ReportError(f"{what}: {value!r} is not an ISO 8601 date or date-time") from exc
    return when if when.tzinfo is not None else when.replace(tzinfo=ZoneInfo("UTC"))


def parse_group_by(value: str | None) -> tuple[str, ...]:
    """Summary group keys in output order; currency is always one (never summed across)."""
    asked = [p.strip() for p in (value or "day").split(",") if p.strip()]
    unknown = [p for p in asked if p not in SUMMARY_KEYS]
    if unknown:
        raise ReportError(f"group by {', '.join(unknown)}: choose from {', '.join(SUMMARY_KEYS)}")
    wanted = {*asked, "currency"}
    return tuple(k for k in SUMMARY_KEYS if k in wanted)


def report_query(req: ReportRequest) -> tuple[str, dict[str, Any]]:
    """The API list's flat query for the request (with ORDER BY)."""
    # The API's query builders: one SQL for the API's CSV and this command.
    if req.report == "batches":
        from api.routes.batches import batches_query

        return batches_query(merchant=req.merchant, currency=req.currency,
                             window_start_gte=req.since, window_start_lt=req.until,
                             **req.filters)
    if req.report == "transactions":
        from api.routes.balances import balance_transactions_query

        return balance_transactions_query(merchant=req.merchant, currency=req.currency,
                                          created_gte=req.since, created_lt=req.until,
                                          **req.filters)
    if req.report == "summary":
        from api.routes.reports import summary_query

        query, params = summary_query(group_by=req.group_by, tz=req.tz, merchant=req.merchant,
                                      since=req.since, until=req.until)
        if req.currency is not None:  # the API's summary has no currency filter: wrap it
            query = f"SELECT * FROM ({query}) s WHERE s.currency = %(report_currency)s"
            params = {**params, "report_currency": req.currency}
        return query, params
    raise ReportError(f"unknown report {req.report!r}: choose from {', '.join(REPORTS)}")


def count_rows(conn: psycopg.Connection, req: ReportRequest) -> int:
    query, params = report_query(req)
    row = conn.execute(f"SELECT count(*) FROM ({query}) r", params).fetchone()
    return int(row[0]) if row else 0


def write_csv(conn: psycopg.Connection, req: ReportRequest, out: IO[bytes],
              progress: Progress | None = None) -> ReportResult:
    """`COPY (query) TO STDOUT` as CSV with a header, chunk by chunk into `out`."""
    query, params = report_query(req)
    rendered = psycopg.ClientCursor(conn).mogrify(query, params)
    lines = 0
    reported = 0
    header = b""
    with conn.cursor() as cur, cur.copy(
            sql.SQL("COPY ({}) TO STDOUT WITH (FORMAT csv, HEADER)").format(sql.SQL(rendered))
    ) as copy:
        for chunk in copy:
            data = bytes(chunk)
            if not header:
                header = data.split(b"\n", 1)[0]
            out.write(data)
            # Report columns never hold a newline (ids, codes, numbers, times): a line is a row.
            lines += data.count(b"\n")
            if progress is not None and lines - reported >= PROGRESS_EVERY_ROWS:
                reported = lines
                progress(lines - 1)
    rows = max(lines - 1, 0)  # less the header
    if progress is not None:
        progress(rows)
    columns = tuple(header.decode().split(",")) if header else ()
    return ReportResult(None, rows, columns)


def _arrow_type(type_oid: int, column: str) -> Any:
    import pyarrow as pa

    types = psycopg.postgres.types
    if column in _TIME_COLUMNS:
        return pa.timestamp("us", tz="UTC")
    if column in _DATE_COLUMNS:
        return pa.date32()
    if type_oid in {types["int2"].oid, types["int4"].oid, types["int8"].oid,
                    types["numeric"].oid}:
        return pa.int64()
    if type_oid == types["bool"].oid:
        return pa.bool_()
    return pa.string()


def _converter(column: str) -> Callable[[Any], Any]:
    if column in _TIME_COLUMNS:
        return lambda v: None if v is None else datetime.fromisoformat(v.replace("Z", "+00:00"))
    if column in _DATE_COLUMNS:
        return lambda v: None if v is None else date.fromisoformat(v)
    return lambda v: v


def write_parquet(conn: psycopg.Connection, req: ReportRequest, path: Path,
                  progress: Progress | None = None,
                  batch_rows: int = PARQUET_BATCH_ROWS) -> ReportResult:
    """The query's rows into a Parquet file, a row group per `batch_rows` rows."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    query, params = report_query(req)
    rows = 0
    with conn.cursor(name="settle_report") as cur:
        cur.itersize = batch_rows
        cur.execute(query, params)
        batch = cur.fetchmany(batch_rows)
        assert cur.description is not None
        columns = tuple(d.name for d in cur.description)
        schema = pa.schema([pa.field(d.name, _arrow_type(d.type_code, d.name))
                            for d in cur.description])
        convert = [_converter(c) for c in columns]
        with pq.ParquetWriter(str(path), schema) as writer:
            while True:
                arrays = [pa.array([conv(r[i]) for r in batch], type=schema.field(i).type)
                          for i, conv in enumerate(convert)]
                writer.write_table(pa.Table.from_arrays(arrays, schema=schema))
                rows += len(batch)
                if progress is not None:
                    progress(rows)
                batch = cur.fetchmany(batch_rows)
                if not batch:
                    break
    return ReportResult(path, rows, columns)


def run_report(conn: psycopg.Connection, req: ReportRequest, fmt: str, out: Path | IO[bytes],
               progress: Progress | None = None,
               on_total: Callable[[int], None] | None = None) -> ReportResult:
    """Write the report in `fmt` to a file path (or, CSV only, a binary stream), in one
    READ ONLY, REPEATABLE READ transaction: `on_total`, when given, first gets the row count,
    from the same snapshot as the rows written."""
    if fmt not in FORMATS:
        raise ReportError(f"unknown format {fmt!r}: choose from {', '.join(FORMATS)}")
    conn.read_only = True
    conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
    with conn.transaction():
        if on_total is not None:
            on_total(count_rows(conn, req))
        if fmt == "parquet":
            if not isinstance(out, Path):
                raise ReportError("Parquet goes to a file (--out PATH), not a stream")
            return write_parquet(conn, req, out, progress)
        if isinstance(out, Path):
            with out.open("wb") as f:
                result = write_csv(conn, req, f, progress)
            return ReportResult(out, result.rows, result.columns)
        return write_csv(conn, req, out, progress)

