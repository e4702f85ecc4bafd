"""`settle report` on seeded books: its CSV and Parquet rows are the API's JSON rows (walked
page by page over real HTTP), for an analyst's and a merchant's view, with filters; bad
arguments fail naming the option."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import httpx
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner, Result

from infra.config import PostgresSettings
from settle.api_seed import SeedSummary, seed_books
from settle.cli.report import report
from sinks.db import connect
from tests.support.api import ApiServer, make_key

pytestmark = pytest.mark.integration

START = datetime(2025, 5, 4, 16, 0, tzinfo=UTC)  # 2025-05-05 00:00 in Asia/Shanghai
MERCHANT = "mch_001"


@pytest.fixture(scope="module")
def seeded(api_db: PostgresSettings) -> SeedSummary:
    with connect(api_db) as conn:
        return seed_books(conn, payments=900, merchants=3, seed=5, start=START, days=4,
                          open_days=1)


@pytest.fixture(scope="module")
def keys(api_db: PostgresSettings, seeded: SeedSummary) -> dict[str, str]:
    return {"analyst": make_key(api_db), "merchant": make_key(api_db, merchant=MERCHANT)}


@pytest.fixture(scope="module")
def client(api_server: ApiServer, seeded: SeedSummary) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=api_server.base_url, timeout=30) as c:
        yield c


def _api_rows(client: httpx.Client, key: str, path: str,
              params: dict[str, str]) -> list[dict[str, Any]]:
    """Every row of a list, page by page (or the one page of the summary)."""
    rows: list[dict[str, Any]] = []
    query = dict(params)
    while True:
        r = client.get(path, params=query, headers={"Authorization": f"Bearer {key}"})
        assert r.status_code == 200, r.text
        body = r.json()
        rows += body["data"]
        if not body["has_more"]:
            return rows
        query["starting_after"] = body["next_cursor"]


def _flat(obj: dict[str, Any]) -> dict[str, Any]:
    """An API object as the export's flat row: money {amount_minor, currency, exponent}
    becomes `<name>_minor` beside the row's `currency` column."""
    out: dict[str, Any] = {}
    for k, v in obj.items():
        if k == "object":
            continue
        if isinstance(v, dict) and "amount_minor" in v:
            assert v["currency"] == obj.get("currency", v["currency"])
            out[f"{k}_minor"] = v["amount_minor"]
            out["currency"] = v["currency"]
        else:
            out[k] = v
    return out


def _as_csv_text(value: Any) -> str:
    return "" if value is None else str(value)


def _parquet_value(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    if isinstance(value, date):
        return value.isoformat()
    return value


def _run(api_db: PostgresSettings, args: list[str]) -> Result:
    env = {"SETTLE_PG_DB": api_db.dbname}
    return CliRunner().invoke(report, args, env=env, catch_exceptions=False)


def _export(api_db: PostgresSettings, tmp_path: Path, args: list[str]
            ) -> tuple[list[dict[str, str]], list[dict[str, Any]]]:
    """The report as CSV (to standard output) and as Parquet (to a file)."""
    as_csv = _run(api_db, [*args, "--format", "csv", "--out", "-"])
    assert as_csv.exit_code == 0, as_csv.output
    text = as_csv.stdout
    parquet = tmp_path / "report.parquet"
    as_parquet = _run(api_db, [*args, "--format", "parquet", "--out", str(parquet)])
    assert as_parquet.exit_code == 0, as_parquet.output
    table = pq.read_table(parquet)
    rows = [{k: _parquet_value(v) for k, v in r.items()} for r in table.to_pylist()]
    return list(csv.DictReader(io.StringIO(text))), rows


def _assert_same(api: list[dict[str, Any]], csv_rows: list[dict[str, str]],
                 parquet_rows: list[dict[str, Any]]) -> None:
    flat = [_flat(o) for o in api]
    assert flat, "the comparison needs rows"
    assert len(csv_rows) == len(parquet_rows) == len(flat)
    assert [{k: _as_csv_text(v) for k, v in r.items()} for r in flat] == csv_rows
    assert flat == parquet_rows


def test_batches_report_is_the_api_list(api_db: PostgresSettings, keys: dict[str, str],
                                        client: httpx.Client, tmp_path: Path) -> None:
    api = _api_rows(client, keys["analyst"], "/v1/settlement_batches", {"limit": "100"})
    csv_rows, parquet_rows = _export(api_db, tmp_path, ["batches"])
    _assert_same(api, csv_rows, parquet_rows)
    assert {r["merchant_id"] for r in csv_rows} == {"mch_001", "mch_002", "mch_003"}
    # A window range: dates are midnights in --tz.
    api = _api_rows(client, keys["merchant"], "/v1/settlement_batches", {
        "limit": "7", "window_start_gte": "2025-05-05T16:00:00Z", "currency": "CNY"})
    csv_rows, parquet_rows = _export(api_db, tmp_path, [
        "batches", "--merchant", MERCHANT, "--currency", "CNY", "--from", "2025-05-06",
        "--tz", "Asia/Shanghai"])
    _assert_same(api, csv_rows, parquet_rows)
    assert {r["merchant_id"] for r in csv_rows} == {MERCHANT}


def test_transactions_report_is_the_merchant_keys_list(
        api_db: PostgresSettings, keys: dict[str, str], client: httpx.Client,
        tmp_path: Path) -> None:
    params = {"limit": "100", "created_gte": "2025-05-05T12:00:00Z",
              "created_lt": "2025-05-07T00:00:00Z"}
    api = _api_rows(client, keys["merchant"], "/v1/balance_transactions", params)
    csv_rows, parquet_rows = _export(api_db, tmp_path, [
        "transactions", "--merchant", MERCHANT, "--from", "2025-05-05T12:00:00Z",
        "--to", "2025-05-07T00:00:00"])  # naive: UTC, as in the API
    _assert_same(api, csv_rows, parquet_rows)
    assert {r["account_type"] for r in csv_rows} == {"payable", "payout_due", "dispute_hold"}
    assert {r["kind"] for r in csv_rows} >= {"PAYMENT", "REFUND", "PAYOUT"}
    api = _api_rows(client, keys["analyst"], "/v1/balance_transactions",
                    {"limit": "100", "kind": "PAYOUT"})
    csv_rows, parquet_rows = _export(api_db, tmp_path, ["transactions", "--kind", "PAYOUT"])
    _assert_same(api, csv_rows, parquet_rows)


def test_summary_report_is_the_api_summary(api_db: PostgresSettings, keys: dict[str, str],
                                           client: httpx.Client, tmp_path: Path) -> None:
    api = _api_rows(client, keys["analyst"], "/v1/reports/summary", {
        "group_by": "day,channel,outcome", "tz": "America/New_York",
        "created_gte": "2025-05-06"})
    csv_rows, parquet_rows = _export(api_db, tmp_path, [
        "summary", "--group-by", "day,channel,outcome", "--tz", "America/New_York",
        "--from", "2025-05-06"])
    _assert_same(api, csv_rows, parquet_rows)
    assert list(csv_rows[0]) == ["day", "channel", "outcome", "currency", "payment_count",
                                 "amount_minor", "settled_count", "gross_minor", "fee_minor",
                                 "net_minor"]
    # The default zone is the settlement cut-off zone, as the API's.
    api = _api_rows(client, keys["merchant"], "/v1/reports/summary", {})
    csv_rows, parquet_rows = _export(api_db, tmp_path, ["summary", "--merchant", MERCHANT])
    _assert_same(api, csv_rows, parquet_rows)
    assert sum(int(r["payment_count"]) for r in csv_rows) == _payments_of(api_db, MERCHANT)


def _payments_of(owner: PostgresSettings, merchant: str) -> int:
    with connect(owner) as conn:
        row = conn.execute("SELECT count(*) FROM payments WHERE merchant_id = %s",
                           (merchant,)).fetchone()
    assert row is not None
    return int(row[0])


@pytest.mark.parametrize(("args", "named"), [
    (["summary", "--tz", "Mars/Olympus"], "Mars/Olympus"),
    (["summary", "--group-by", "day,planet"], "planet"),
    (["batches", "--from", "2025-13-01"], "--from"),
    (["batches", "--from", "2025-05-06", "--to", "2025-05-05"], "--to"),
    (["transactions", "--format", "parquet", "--out", "-"], "--out"),
    (["transactions", "--format", "xlsx"], "--format"),
    (["transactions", "--account", "savings"], "--account"),
])
def test_bad_arguments_fail_naming_what_is_wrong(api_db: PostgresSettings, args: list[str],
                                                 named: str, tmp_path: Path) -> None:
    result = _run(api_db, [*args[:1], "--out", str(tmp_path / "x"), *args[1:]]
                  if "--out" not in args else args)
    assert result.exit_code == 2
    assert named in result.output
    assert not (tmp_path / "x").exists()


def test_every_report_command_has_help() -> None:
    for args in ([], ["batches"], ["transactions"], ["summary"]):
        result = CliRunner().invoke(report, [*args, "--help"])
        assert result.exit_code == 0 and "Usage:" in result.output

