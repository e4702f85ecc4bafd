"""GET /v1/exceptions on a real server over seeded books and a few exceptions of known age.

Expectations come from SQL written here (a union of the three exception tables joined to
their cases), not from the route's query builder.
"""

from __future__ import annotations

import csv
import io
import json
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import psycopg
import pytest
from psycopg.rows import dict_row

from infra.config import PostgresSettings, Settings
from settle.api_seed import SeedSummary, seed_books
from sinks.db import connect
from tests.support.api import ApiServer, make_key
from tests.support.api import bearer as _auth

pytestmark = pytest.mark.integration

M1, M2 = "mch_001", "mch_002"
# Exceptions of known age written by this module (channel "aged"), merchant M1: one per table
# and age, far from every bucket's edges.
AGES = {"10m": timedelta(minutes=10), "5h": timedelta(hours=5), "3d": timedelta(days=3),
        "10d": timedelta(days=10), "60d": timedelta(days=60)}
TIE_CHANNEL = "tied"  # six exceptions decided at the same instant, two per table
TIE_AT = datetime(2025, 3, 3, 12, 0, 0, 123456, tzinfo=UTC)

EXPECTED_SQL = """
SELECT u.id, u.subject, u.outcome, u.payment_id, u.subject_id, u.merchant_id, u.channel,
       u.amount_minor, u.currency, u.confirmed_amount_minor, u.confirmed_currency, u.detail,
       u.decided_at, c.case_id, c.status AS case_status
  FROM (SELECT result_id AS id, 'PAYMENT' AS subject, outcome, payment_id,
               payment_id AS subject_id, merchant_id, channel,
               expected_amount_minor AS amount_minor, expected_currency::text AS currency,
               confirmed_amount_minor, confirmed_currency::text AS confirmed_currency, detail,
               decided_at
          FROM reconciliation_exceptions
        UNION ALL
        SELECT result_id, 'REFUND', outcome, payment_id, refund_id, merchant_id, channel,
               amount_minor, currency::text, confirmed_amount_minor, confirmed_currency::text,
               detail, decided_at
          FROM refund_exceptions
        UNION ALL
        SELECT result_id, 'DISPUTE', 'DISPUTE_REJECTED', payment_id, dispute_id, merchant_id,
               channel, amount_minor, currency, NULL, NULL, detail, decided_at
          FROM dispute_rejections) u
  LEFT JOIN exception_cases c ON c.opened_by = u.id
 WHERE {where}
 ORDER BY u.decided_at DESC, u.subject DESC, u.id DESC
"""


def _insert_exception(conn: psycopg.Connection[Any], subject: str, result_id: str,
                      decided_at: datetime, *, merchant: str = M1, channel: str = "aged",
                      currency: str = "CNY", outcome: str = "AMOUNT_MISMATCH") -> None:
    pid = f"pay_{result_id}"
    if subject == "PAYMENT":
        conn.execute(
            "INSERT INTO reconciliation_exceptions (result_id, payment_id, merchant_id, channel,"
            " outcome, expected_amount_minor, expected_currency, confirmed_amount_minor,"
            " confirmed_currency, detail, decided_at) VALUES"
            " (%s, %s, %s, %s, %s, 1000, %s, 900, %s, 'test', %s)",
            (result_id, pid, merchant, channel, outcome, currency, currency, decided_at))
    elif subject == "REFUND":
        conn.execute(
            "INSERT INTO refund_exceptions (result_id, payment_id, refund_id, merchant_id,"
            " channel, outcome, amount_minor, currency, detail, decided_at) VALUES"
            " (%s, %s, 'rf_1', %s, %s, %s, 700, %s, 'test', %s)",
            (result_id, pid, merchant, channel, outcome, currency, decided_at))
    else:
        conn.execute(
            "INSERT INTO dispute_rejections (result_id, payment_id, dispute_id, merchant_id,"
            " channel, channel_dispute_id, stage, status, amount_minor, currency,"
            " funds_withdrawn, fee_minor, reasons, detail, occurred_at, decided_at) VALUES"
            " (%s, %s, 'dp_1', %s, %s, 'cb-1', 'DISPUTE', 'OPENED', 300, %s, false, 0,"
            " %s, 'test', %s, %s)",
            (result_id, pid, merchant, channel, currency,
             json.dumps([{"code": "PAYMENT_UNKNOWN", "detail": "a"},
                         {"code": "AMOUNT_INVALID", "detail": "b"}]), decided_at, decided_at))


@pytest.fixture(scope="module")
def seeded(api_db: PostgresSettings) -> SeedSummary:
    with connect(api_db) as conn:
        summary = seed_books(conn, payments=1200, merchants=6, days=4)
        with conn.transaction():
            now = conn.execute("SELECT now()").fetchone()[0]  # type: ignore[index]
            for age, delta in AGES.items():
                for subject in ("PAYMENT", "REFUND", "DISPUTE"):
                    _insert_exception(conn, subject, f"aged_{subject}_{age}", now - delta)
            for subject in ("PAYMENT", "REFUND", "DISPUTE"):
                for n in (1, 2):
                    _insert_exception(conn, subject, f"tie_{subject}_{n}", TIE_AT,
                                      merchant=M2, channel=TIE_CHANNEL)
            # A rejected record's currency is shown as sent, even when it is no ISO code.
            _insert_exception(conn, "DISPUTE", "odd_currency", now - timedelta(days=2),
                              merchant=M2, channel="odd", currency="ZZZ")
    return summary


@pytest.fixture(scope="module")
def keys(api_db: PostgresSettings, seeded: SeedSummary) -> dict[str, str]:
    return {"analyst": make_key(api_db), M1: make_key(api_db, merchant=M1),
            M2: make_key(api_db, merchant=M2)}


@pytest.fixture(scope="module")
def client(api_server: ApiServer, seeded: SeedSummary) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=api_server.base_url, timeout=30.0) as c:
        yield c


def _expected(owner: PostgresSettings, where: str = "TRUE",
              params: Any = None) -> list[dict[str, Any]]:
    with psycopg.connect(owner.conninfo(), row_factory=dict_row) as conn:
        return list(conn.execute(EXPECTED_SQL.format(where=where), params).fetchall())


def _ids(rows: list[dict[str, Any]]) -> list[str]:
    return [r["id"] for r in rows]


def _walk(client: httpx.Client, key: str, params: dict[str, Any],
          limit: int = 100) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    cursor: str | None = None
    while True:
        query = {**params, "limit": limit}
        if cursor:
            query["starting_after"] = cursor
        r = client.get("/v1/exceptions", params=query, headers=_auth(key))
        assert r.status_code == 200, r.text
        body = r.json()
        out += body["data"]
        if not body["has_more"]:
            return out
        cursor = body["next_cursor"]


def _rfc3339(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def test_the_whole_list_in_order_with_every_field(client: httpx.Client, keys: dict[str, str],
                                                  api_db: PostgresSettings) -> None:
    got = _walk(client, keys["analyst"], {})
    want = _expected(api_db)
    assert _ids(got) == _ids(want)
    assert {g["subject"] for g in got} == {"PAYMENT", "REFUND", "DISPUTE"}
    assert any(g["case_id"] for g in got) and any(g["case_id"] is None for g in got)
    for g, w in zip(got, want, strict=True):
        assert g["object"] == "exception"
        for name in ("subject", "outcome", "payment_id", "subject_id", "merchant_id", "channel",
                     "detail", "case_id", "case_status"):
            assert g[name] == w[name], name
        assert g["decided_at"] == _rfc3339(w["decided_at"])
        if w["amount_minor"] is None:
            assert g["amount"] is None
        else:
            assert (g["amount"]["amount_minor"], g["amount"]["currency"]) == (
                w["amount_minor"], w["currency"])
        if w["confirmed_amount_minor"] is None:
            assert g["confirmed"] is None
        else:
            assert g["confirmed"] == {"amount_minor": w["confirmed_amount_minor"],
                                      "currency": w["confirmed_currency"],
                                      "exponent": g["confirmed"]["exponent"]}
    aged = next(g for g in got if g["id"] == "aged_DISPUTE_10m")
    assert aged["reasons"] == ["PAYMENT_UNKNOWN", "AMOUNT_INVALID"]
    assert aged["amount"] == {"amount_minor": 300, "currency": "CNY", "exponent": 2}
    odd = next(g for g in got if g["id"] == "odd_currency")
    assert odd["amount"] == {"amount_minor": 300, "currency": "ZZZ", "exponent": None}


def test_subject_outcome_channel_and_merchant_filters(client: httpx.Client,
                                                      keys: dict[str, str],
                                                      api_db: PostgresSettings) -> None:
    analyst = keys["analyst"]
    for subject in ("PAYMENT", "REFUND", "DISPUTE"):
        want = _expected(api_db, "u.subject = %s", (subject,))
        assert want
        assert _ids(_walk(client, analyst, {"subject": subject})) == _ids(want)
    outcomes = {r["outcome"] for r in _expected(api_db)}
    assert {"DECLINED", "AMOUNT_MISMATCH", "MISSING_CONFIRMATION", "DISPUTE_REJECTED",
            "ORPHAN_CONFIRMATION", "REVERSAL_EXCEPTION"} <= outcomes
    for outcome in sorted(outcomes):
        want = _expected(api_db, "u.outcome = %s", (outcome,))
        assert _ids(_walk(client, analyst, {"outcome": outcome})) == _ids(want), outcome
    # A subject and an outcome that cannot go together: an empty list, not an error.
    assert _walk(client, analyst, {"subject": "PAYMENT", "outcome": "DISPUTE_REJECTED"}) == []
    want = _expected(api_db, "u.subject = 'REFUND' AND u.outcome = 'AMOUNT_MISMATCH'")
    assert want
    assert _ids(_walk(client, analyst, {"subject": "REFUND", "outcome": "AMOUNT_MISMATCH"})) == (
        _ids(want))
    for param, column, value in (("channel", "channel", "unionpay"),
                                 ("merchant", "merchant_id", M2)):
        want = _expected(api_db, f"u.{column} = %s", (value,))
        assert want
        assert _ids(_walk(client, analyst, {param: value})) == _ids(want)


@pytest.mark.parametrize("status", ["OPEN", "AWAITING_APPROVAL", "RESOLVED", "UNRESOLVED",
                                    "NONE"])
def test_case_status_filter(client: httpx.Client, keys: dict[str, str],
                            api_db: PostgresSettings, status: str) -> None:
    where = {"NONE": "c.case_id IS NULL",
             "UNRESOLVED": "c.status IN ('OPEN', 'AWAITING_APPROVAL')"}.get(
        status, f"c.status = '{status}'")
    want = _expected(api_db, where)
    assert want, f"the seed has no exception with case status {status}"
    got = _walk(client, keys["analyst"], {"case_status": status})
    assert _ids(got) == _ids(want)
    if status != "NONE":
        assert all(g["case_id"] is not None for g in got)


def test_age_buckets_and_durations(client: httpx.Client, keys: dict[str, str],
                                   api_db: PostgresSettings) -> None:
    def aged(params: dict[str, str]) -> set[str]:
        return {g["id"].rsplit("_", 1)[1] for g in _walk(
            client, keys["analyst"], {"channel": "aged", **params})}

    assert aged({"age": "lt_1h"}) == {"10m"}
    assert aged({"age": "1h_1d"}) == {"5h"}
    assert aged({"age": "1d_7d"}) == {"3d"}
    assert aged({"age": "7d_30d"}) == {"10d"}
    assert aged({"age": "gt_30d"}) == {"60d"}
    assert aged({"older_than": "1d"}) == {"3d", "10d", "60d"}
    assert aged({"newer_than": "1d"}) == {"10m", "5h"}
    assert aged({"older_than": "1h", "newer_than": "1w"}) == {"5h", "3d"}
    assert aged({"older_than": "1d12h", "age": "7d_30d"}) == {"10d"}
    # Against the database's clock, for every exception: the seed's are all months old.
    want = _expected(api_db, "u.decided_at <= now() - interval '30 days'")
    assert _ids(_walk(client, keys["analyst"], {"age": "gt_30d"})) == _ids(want)
    assert len(aged({})) == len(AGES)


def test_decided_range(client: httpx.Client, keys: dict[str, str], api_db: PostgresSettings,
                       seeded: SeedSummary) -> None:
    low, high = seeded.start + timedelta(days=1), seeded.start + timedelta(days=2, hours=6)
    want = _expected(api_db, "u.decided_at >= %s AND u.decided_at < %s", (low, high))
    assert want
    got = _walk(client, keys["analyst"], {"decided_gte": low.isoformat(),
                                          "decided_lt": high.isoformat()})
    assert _ids(got) == _ids(want)


def test_ties_on_the_decision_time_page_one_by_one(client: httpx.Client, keys: dict[str, str],
                                                   api_db: PostgresSettings) -> None:
    """Six exceptions decided at the same microsecond, across the three tables: a page of one
    row at a time walks them in (subject, id) order, each exactly once."""
    got = _ids(_walk(client, keys["analyst"], {"channel": TIE_CHANNEL}, limit=1))
    assert got == ["tie_REFUND_2", "tie_REFUND_1", "tie_PAYMENT_2", "tie_PAYMENT_1",
                   "tie_DISPUTE_2", "tie_DISPUTE_1"]
    assert got == _ids(_expected(api_db, "u.channel = %s", (TIE_CHANNEL,)))
    for limit in (2, 4, 5):
        assert _ids(_walk(client, keys["analyst"], {"channel": TIE_CHANNEL}, limit)) == got


def test_a_merchant_key_lists_its_merchant_only(client: httpx.Client, keys: dict[str, str],
                                                api_db: PostgresSettings) -> None:
    got = _walk(client, keys[M1], {})
    assert _ids(got) == _ids(_expected(api_db, "u.merchant_id = %s", (M1,)))
    assert got and {g["merchant_id"] for g in got} == {M1}
    r = client.get("/v1/exceptions", params={"merchant": M2}, headers=_auth(keys[M1]))
    assert r.status_code == 400 and r.json()["error"]["param"] == "merchant"


def test_pages_never_skip_or_repeat_under_concurrent_inserts(
        client: httpx.Client, keys: dict[str, str], api_db: PostgresSettings,
        seeded: SeedSummary) -> None:
    before = _ids(_expected(api_db))
    stop = threading.Event()
    inserted: list[str] = []
    errors: list[BaseException] = []

    def insert() -> None:
        # New exceptions in every table, newer and older than the walk's position.
        try:
            with connect(api_db) as conn:
                n = 0
                while not stop.is_set() or n < 45:
                    n += 1
                    subject = ("PAYMENT", "REFUND", "DISPUTE")[n % 3]
                    at = seeded.start + timedelta(minutes=(n * 97) % (4 * 24 * 60 + 600))
                    with conn.transaction():
                        _insert_exception(conn, subject, f"live_{n:05d}", at, channel="live")
                    inserted.append(f"live_{n:05d}")
                    stop.wait(0.01)
        except BaseException as exc:  # reported below
            errors.append(exc)

    thread = threading.Thread(target=insert, name="inserter")
    thread.start()
    try:
        seen: list[str] = []
        cursor: str | None = None
        pages = 0
        while True:
            params: dict[str, Any] = {"limit": 9}
            if cursor:
                params["starting_after"] = cursor
            r = client.get("/v1/exceptions", params=params, headers=_auth(keys["analyst"]))
            assert r.status_code == 200, r.text
            body = r.json()
            seen += _ids(body["data"])
            pages += 1
            if not body["has_more"]:
                break
            cursor = body["next_cursor"]
    finally:
        stop.set()
        thread.join(60)
    assert not errors, errors
    assert len(inserted) >= 45 and pages > 15
    assert len(seen) == len(set(seen)), "an exception was listed twice"
    assert not set(before) - set(seen), "pre-existing exceptions skipped"
    assert [i for i in seen if i in set(before)] == before


def test_csv_export_is_the_json_list(client: httpx.Client, keys: dict[str, str]) -> None:
    for key, params in ((keys["analyst"], {}),
                        (keys[M2], {"subject": "DISPUTE"}),
                        (keys["analyst"], {"case_status": "UNRESOLVED", "channel": "alipay"})):
        json_rows = _walk(client, key, params)
        assert json_rows
        r = client.get("/v1/exceptions", params=params, headers=_auth(key, Accept="text/csv"))
        assert r.status_code == 200, r.text
        assert r.headers["content-type"].startswith("text/csv")
        rows = list(csv.DictReader(io.StringIO(r.text)))
        assert list(rows[0]) == [
            "result_id", "subject", "outcome", "payment_id", "subject_id", "merchant_id",
            "channel", "amount_minor", "currency", "confirmed_amount_minor",
            "confirmed_currency", "reasons", "detail", "decided_at", "case_id", "case_status"]

        def text(value: object) -> str:
            return "" if value is None else str(value)

        flat = [{
            "result_id": g["id"], "subject": g["subject"], "outcome": g["outcome"],
            "payment_id": g["payment_id"], "subject_id": g["subject_id"],
            "merchant_id": text(g["merchant_id"]), "channel": text(g["channel"]),
            "amount_minor": text(g["amount"] and g["amount"]["amount_minor"]),
            "currency": text(g["amount"] and g["amount"]["currency"]),
            "confirmed_amount_minor": text(g["confirmed"] and g["confirmed"]["amount_minor"]),
            "confirmed_currency": text(g["confirmed"] and g["confirmed"]["currency"]),
            "reasons": ",".join(g["reasons"]) if g["reasons"] else "",
            "detail": g["detail"], "decided_at": g["decided_at"],
            "case_id": text(g["case_id"]), "case_status": text(g["case_status"]),
        } for g in json_rows]
        assert rows == flat


@pytest.mark.parametrize(("params", "param"), [
    ({"subject": "payment"}, "subject"),
    ({"subject": "BATCH"}, "subject"),
    ({"outcome": "BOGUS"}, "outcome"),
    ({"outcome": "MATCHED"}, "outcome"),
    ({"case_status": "open"}, "case_status"),
    ({"case_status": "CLOSED"}, "case_status"),
    ({"age": "old"}, "age"),
    ({"older_than": "3 days"}, "older_than"),
    ({"older_than": "3x"}, "older_than"),
    ({"newer_than": "-1d"}, "newer_than"),
    ({"older_than": "2d", "newer_than": "1d"}, "newer_than"),
    ({"decided_gte": "2025-02-30"}, "decided_gte"),
    ({"decided_gte": "2025-03-05", "decided_lt": "2025-03-05"}, "decided_lt"),
    ({"limit": "0"}, "limit"),
    ({"limit": "101"}, "limit"),
    ({"starting_after": "%%%"}, "starting_after"),
    ({"starting_after": "eyJ2IjoyLCJrIjpbXX0"}, "starting_after"),  # version 2
    ({"outcomes": "DECLINED"}, "outcomes"),
])
def test_bad_input_is_a_400_naming_the_parameter(client: httpx.Client, keys: dict[str, str],
                                                 params: dict[str, str], param: str) -> None:
    r = client.get("/v1/exceptions", params=params, headers=_auth(keys["analyst"]))
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["code"] == "invalid_parameter" and error["param"] == param


def test_a_payments_cursor_is_refused(client: httpx.Client, keys: dict[str, str]) -> None:
    r = client.get("/v1/payments", params={"limit": 1}, headers=_auth(keys["analyst"]))
    assert r.status_code == 200 and r.json()["has_more"]
    r = client.get("/v1/exceptions", params={"starting_after": r.json()["next_cursor"]},
                   headers=_auth(keys["analyst"]))
    assert r.status_code == 400 and r.json()["error"]["param"] == "starting_after"


def test_row_level_security_is_a_second_layer_under_the_query(
        stack: Settings, api_db: PostgresSettings, seeded: SeedSummary) -> None:
    """The list's own query without its merchant condition, run as the API's login for a
    merchant key: row-level security alone keeps it to that merchant."""
    import asyncio

    from api.auth import Principal
    from api.db import prepare
    from api.routes.exceptions import exceptions_rows

    login = stack.api.postgres(api_db)

    async def run() -> list[dict[str, Any]]:
        conn = await psycopg.AsyncConnection.connect(login.conninfo(), row_factory=dict_row)
        async with conn, conn.transaction():
            await prepare(conn, Principal("k", "merchant", M2))
            return await exceptions_rows(conn, merchant=None, limit=100_000)

    rows = asyncio.run(run())
    assert rows and {r["merchant_id"] for r in rows} == {M2}
