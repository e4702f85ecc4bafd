"""GET /v1/payments and /v1/payments/{id} on a real server over seeded books.

Every expectation is computed here with SQL of its own (not the route's), as the database
owner, so a wrong filter, order or join in the route shows as a difference.
"""

from __future__ import annotations

import csv
import io
import random
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
STATES = ("MATCHED", "MATCHED_MANUAL", "DECLINED", "AMOUNT_MISMATCH", "CURRENCY_MISMATCH",
          "MISSING_CONFIRMATION", "REVERSED")
NO_TIME_IDS = ("pay_notime_1", "pay_notime_2", "pay_notime_3")


@pytest.fixture(scope="module")
def seeded(api_db: PostgresSettings) -> SeedSummary:
    with connect(api_db) as conn:
        summary = seed_books(conn, payments=1500, merchants=6, days=4)
        # Payments without a request time (older results carry none): the list shows them
        # last; one of them at the list's tail shares nothing with the seeded ones.
        with conn.transaction():
            for pid in NO_TIME_IDS:
                conn.execute(
                    "INSERT INTO payments (payment_id, merchant_id, channel, amount_minor,"
                    " currency, state, result_id, created_at, decided_at)"
                    " VALUES (%s, %s, 'alipay', 500, 'CNY', 'DECLINED', %s, NULL, now())",
                    (pid, M1, f"res_{pid}"))
            conn.execute(
                "INSERT INTO payments (payment_id, merchant_id, channel, amount_minor,"
                " currency, state, result_id, created_at, decided_at) VALUES ('pay_recent',"
                " %s, 'alipay', 500, 'CNY', 'DECLINED', 'res_recent', now() - interval '1 hour',"
                " now())", (M1,))
    return summary


@pytest.fixture(scope="module")
def keys(api_db: PostgresSettings, seeded: SeedSummary) -> dict[str, str]:
    return {"analyst": make_key(api_db), M1: make_key(api_db, merchant=M1),
            M2: make_key(api_db, merchant=M2)}


@pytest.fixture(scope="module")
def client(api_server: ApiServer, seeded: SeedSummary) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=api_server.base_url, timeout=30.0) as c:
        yield c


_CONNECTIONS: dict[str, psycopg.Connection[dict[str, Any]]] = {}


@pytest.fixture(scope="module", autouse=True)
def _close_connections(api_db: PostgresSettings) -> Iterator[None]:
    """Closed before the module's database is dropped (this fixture depends on it)."""
    yield
    while _CONNECTIONS:
        _CONNECTIONS.popitem()[1].close()


def _sql(owner: PostgresSettings, query: str, params: Any = None) -> list[dict[str, Any]]:
    """Rows of the test's own query, as the database owner (no row-level security)."""
    conninfo = owner.conninfo()
    if conninfo not in _CONNECTIONS:
        _CONNECTIONS[conninfo] = psycopg.connect(conninfo, row_factory=dict_row,
                                                 autocommit=True)
    return list(_CONNECTIONS[conninfo].execute(query, params).fetchall())


def _walk(client: httpx.Client, key: str, params: dict[str, Any],
          limit: int = 100) -> list[dict[str, Any]]:
    """Every object of the list, page by page."""
    out: list[dict[str, Any]] = []
    cursor: str | None = None
    while True:
        query = {**params, "limit": limit}
        if cursor:
            query["starting_after"] = cursor
        r = client.get("/v1/payments", params=query, headers=_auth(key))
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["object"] == "list" and len(body["data"]) <= limit
        out += body["data"]
        if not body["has_more"]:
            assert body["next_cursor"] is None
            return out
        cursor = body["next_cursor"]


def _expected(owner: PostgresSettings, where: str = "TRUE", params: Any = None) -> list[str]:
    rows = _sql(owner, f"SELECT payment_id FROM payments WHERE {where}"
                       " ORDER BY created_at DESC NULLS LAST, payment_id DESC", params)
    return [r["payment_id"] for r in rows]


def _rfc3339(value: datetime | None) -> str | None:
    return None if value is None else value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


# -- the list ----------------------------------------------------------------------------------

def test_the_whole_list_in_order_with_every_field(client: httpx.Client, keys: dict[str, str],
                                                  api_db: PostgresSettings,
                                                  seeded: SeedSummary) -> None:
    got = _walk(client, keys["analyst"], {})
    assert [p["id"] for p in got] == _expected(api_db)
    assert len(got) == seeded.payments + len(NO_TIME_IDS) + 1
    assert [p["id"] for p in got[-len(NO_TIME_IDS):]] == sorted(NO_TIME_IDS, reverse=True)
    rows = {r["payment_id"]: r for r in _sql(api_db, "SELECT * FROM payments")}
    exponents = {"CNY": 2, "USD": 2, "EUR": 2, "JPY": 0, "KWD": 3}
    for p in got:
        row = rows[p["id"]]
        assert p["object"] == "payment"
        assert p["amount"] == {"amount_minor": row["amount_minor"], "currency": row["currency"],
                               "exponent": exponents[row["currency"]]}
        assert isinstance(p["amount"]["amount_minor"], int)
        for name in ("merchant_id", "channel", "order_id", "state", "late", "case_id"):
            assert p[name] == row[name], name
        for name in ("created_at", "decided_at", "reversed_at"):
            assert p[name] == _rfc3339(row[name]), name
    assert {p["state"] for p in got} == set(STATES)
    assert {p["amount"]["exponent"] for p in got} == {0, 2, 3}


def test_pages_cross_from_timed_to_untimed_payments(client: httpx.Client,
                                                    keys: dict[str, str]) -> None:
    """A page of one: the cursor of the last timed payment leads to the untimed ones, whose
    own cursors walk them to the end."""
    recent = {"decided_gte": (datetime.now(UTC) - timedelta(days=1)).isoformat()}
    want = ["pay_recent", *sorted(NO_TIME_IDS, reverse=True)]
    for limit in (1, 2, 3):
        assert [p["id"] for p in _walk(client, keys["analyst"], recent, limit)] == want
        assert [p["id"] for p in _walk(client, keys[M1], recent, limit)] == want


@pytest.mark.parametrize("state", STATES)
def test_state_filter(client: httpx.Client, keys: dict[str, str], api_db: PostgresSettings,
                      state: str) -> None:
    got = _walk(client, keys["analyst"], {"state": state})
    assert got, f"the seed has no {state} payment"
    assert [p["id"] for p in got] == _expected(api_db, "state = %s", (state,))


def test_channel_currency_merchant_and_order_filters(client: httpx.Client,
                                                     keys: dict[str, str],
                                                     api_db: PostgresSettings) -> None:
    analyst = keys["analyst"]
    for column, param, value in (("channel", "channel", "wechat_pay"),
                                 ("currency", "currency", "JPY"),
                                 ("merchant_id", "merchant", M2)):
        want = _expected(api_db, f"{column} = %s", (value,))
        assert want
        assert [p["id"] for p in _walk(client, analyst, {param: value})] == want
    combined = {"channel": "alipay", "currency": "CNY", "merchant": M1, "state": "MATCHED"}
    want = _expected(api_db, "channel = 'alipay' AND currency = 'CNY' AND merchant_id = %s"
                             " AND state = 'MATCHED'", (M1,))
    assert want
    assert [p["id"] for p in _walk(client, analyst, combined)] == want
    order = _sql(api_db, "SELECT order_id FROM payments WHERE order_id IS NOT NULL"
                         " ORDER BY payment_id LIMIT 1")[0]["order_id"]
    got = _walk(client, analyst, {"order_id": order})
    assert [p["id"] for p in got] == _expected(api_db, "order_id = %s", (order,))
    assert got and all(p["order_id"] == order for p in got)
    assert _walk(client, analyst, {"order_id": "no-such-order"}) == []


def test_created_and_decided_ranges(client: httpx.Client, keys: dict[str, str],
                                    api_db: PostgresSettings, seeded: SeedSummary) -> None:
    low = seeded.start + timedelta(days=1, hours=3)
    high = low + timedelta(hours=20)
    for column in ("created", "decided"):
        params = {f"{column}_gte": low.isoformat(), f"{column}_lt": high.isoformat()}
        want = _expected(api_db, f"{column}_at >= %s AND {column}_at < %s", (low, high))
        assert want and len(want) < seeded.payments
        assert [p["id"] for p in _walk(client, keys["analyst"], params)] == want
    # A date means its midnight UTC; a naive date-time is UTC; the upper bound is exclusive.
    day = (seeded.start + timedelta(days=2)).date()
    got = _walk(client, keys["analyst"], {"created_gte": day.isoformat()})
    assert [p["id"] for p in got] == _expected(
        api_db, "created_at >= %s", (datetime(day.year, day.month, day.day, tzinfo=UTC),))
    first = _sql(api_db, "SELECT payment_id, created_at FROM payments WHERE created_at IS NOT"
                         " NULL ORDER BY created_at, payment_id LIMIT 1")[0]
    naive = first["created_at"].astimezone(UTC).replace(tzinfo=None).isoformat()
    earlier = [p["id"] for p in _walk(client, keys["analyst"], {"created_lt": naive})]
    assert first["payment_id"] not in earlier
    assert earlier == _expected(api_db, "created_at < %s", (first["created_at"],))
    at_or_after = _walk(client, keys["analyst"], {"created_gte": naive})
    assert first["payment_id"] in [p["id"] for p in at_or_after]


def test_a_merchant_key_lists_its_merchant_only(client: httpx.Client, keys: dict[str, str],
                                                api_db: PostgresSettings) -> None:
    got = _walk(client, keys[M1], {})
    assert [p["id"] for p in got] == _expected(api_db, "merchant_id = %s", (M1,))
    assert {p["merchant_id"] for p in got} == {M1}
    # Naming its own merchant is the same list; naming another is a 400, not an empty list.
    assert [p["id"] for p in _walk(client, keys[M1], {"merchant": M1})] == [p["id"] for p in got]
    r = client.get("/v1/payments", params={"merchant": M2}, headers=_auth(keys[M1]))
    assert r.status_code == 400 and r.json()["error"]["param"] == "merchant"


def test_pages_never_skip_or_repeat_under_concurrent_inserts(
        client: httpx.Client, keys: dict[str, str], api_db: PostgresSettings,
        seeded: SeedSummary) -> None:
    before = _expected(api_db)
    stop = threading.Event()
    inserted: list[str] = []
    errors: list[BaseException] = []

    def insert() -> None:
        # New payments at request times all over the seeded range and after it: ahead of
        # the walk's position and behind it, as a live pipeline would write them.
        rng = random.Random(11)
        try:
            with connect(api_db) as conn:
                n = 0
                while not stop.is_set() or n < 60:
                    n += 1
                    created = seeded.start + timedelta(
                        seconds=rng.randrange(int((seeded.end - seeded.start).total_seconds())
                                              + 86_400))
                    pid = f"pay_live_{n:05d}"
                    with conn.transaction():
                        conn.execute(
                            "INSERT INTO payments (payment_id, merchant_id, channel,"
                            " amount_minor, currency, state, result_id, created_at, decided_at)"
                            " VALUES (%s, %s, 'card', 100, 'USD', 'MATCHED', %s, %s, %s)",
                            (pid, M1, f"res_{pid}", created, created + timedelta(seconds=5)))
                    inserted.append(pid)
                    stop.wait(0.01)  # a steady trickle, not a GIL-starving loop
        except BaseException as exc:  # reported below
            errors.append(exc)

    thread = threading.Thread(target=insert, name="inserter")
    thread.start()
    try:
        seen: list[str] = []
        cursor: str | None = None
        pages = 0
        while True:
            params: dict[str, Any] = {"limit": 17}
            if cursor:
                params["starting_after"] = cursor
            r = client.get("/v1/payments", params=params, headers=_auth(keys["analyst"]))
            assert r.status_code == 200, r.text
            body = r.json()
            seen += [p["id"] for p in body["data"]]
            pages += 1
            if not body["has_more"]:
                break
            cursor = body["next_cursor"]
    finally:
        stop.set()
        thread.join(60)
    assert not errors, errors
    assert len(inserted) >= 60 and pages > 50
    assert len(seen) == len(set(seen)), "a payment was listed twice"
    missing = set(before) - set(seen)
    assert not missing, f"{len(missing)} pre-existing payments skipped"
    # And the pre-existing ones came in the list's order.
    assert [p for p in seen if p in set(before)] == before


def test_csv_export_is_the_json_list(client: httpx.Client, keys: dict[str, str]) -> None:
    for key, params in ((keys["analyst"], {"state": "REVERSED"}),
                        (keys[M2], {"currency": "KWD"}),
                        (keys["analyst"], {"merchant": M1, "channel": "alipay"})):
        json_rows = _walk(client, key, params)
        assert json_rows
        r = client.get("/v1/payments", params=params, headers=_auth(key, Accept="text/csv"))
        assert r.status_code == 200, r.text
        assert r.headers["content-type"].startswith("text/csv")
        assert "attachment" in r.headers["content-disposition"]
        rows = list(csv.DictReader(io.StringIO(r.text)))
        assert list(rows[0]) == ["payment_id", "merchant_id", "channel", "order_id",
                                 "amount_minor", "currency", "state", "late", "created_at",
                                 "decided_at", "reversed_at", "case_id"]
        flat = [{"payment_id": p["id"], "merchant_id": p["merchant_id"] or "",
                 "channel": p["channel"] or "", "order_id": p["order_id"] or "",
                 "amount_minor": str(p["amount"]["amount_minor"]),
                 "currency": p["amount"]["currency"], "state": p["state"],
                 "late": "t" if p["late"] else "f", "created_at": p["created_at"] or "",
                 "decided_at": p["decided_at"], "reversed_at": p["reversed_at"] or "",
                 "case_id": p["case_id"] or ""} for p in json_rows]
        assert rows == flat


def test_csv_export_of_a_merchant_key_holds_its_merchant_only(
        client: httpx.Client, keys: dict[str, str], api_db: PostgresSettings) -> None:
    r = client.get("/v1/payments", headers=_auth(keys[M2], Accept="text/csv"))
    assert r.status_code == 200
    rows = list(csv.DictReader(io.StringIO(r.text)))
    assert [row["payment_id"] for row in rows] == _expected(api_db, "merchant_id = %s", (M2,))


@pytest.mark.parametrize(("params", "param"), [
    ({"state": "BOGUS"}, "state"),
    ({"state": "matched"}, "state"),
    ({"created_gte": "yesterday"}, "created_gte"),
    ({"created_lt": "2025-13-01"}, "created_lt"),
    ({"decided_gte": "2025-03-05T25:00:00Z"}, "decided_gte"),
    ({"decided_gte": "2025-03-05", "decided_lt": "2025-03-04"}, "decided_lt"),
    ({"currency": "cny"}, "currency"),
    ({"currency": "YUAN"}, "currency"),
    ({"limit": "0"}, "limit"),
    ({"limit": "101"}, "limit"),
    ({"limit": "ten"}, "limit"),
    ({"limit": "-1"}, "limit"),
    ({"starting_after": "not-a-cursor"}, "starting_after"),
    ({"starting_after": "eyJ2IjoxLCJrIjpbMSwyLDNdfQ"}, "starting_after"),  # 3 keys
    ({"starting_after": "eyJ2IjoxLCJrIjpbMSwyXX0"}, "starting_after"),  # ints, not a key
    ({"statee": "MATCHED"}, "statee"),
    ({"merchant": " mch_001"}, "merchant"),
])
def test_bad_input_is_a_400_naming_the_parameter(client: httpx.Client, keys: dict[str, str],
                                                 params: dict[str, str], param: str) -> None:
    r = client.get("/v1/payments", params=params, headers=_auth(keys["analyst"]))
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["code"] == "invalid_parameter" and error["param"] == param
    assert param in error["message"]


def test_a_cursor_of_another_list_is_refused(client: httpx.Client,
                                             keys: dict[str, str]) -> None:
    r = client.get("/v1/exceptions", params={"limit": 1}, headers=_auth(keys["analyst"]))
    assert r.status_code == 200 and r.json()["has_more"]
    r = client.get("/v1/payments", params={"starting_after": r.json()["next_cursor"]},
                   headers=_auth(keys["analyst"]))
    assert r.status_code == 400 and r.json()["error"]["param"] == "starting_after"


def test_no_key_is_a_401(client: httpx.Client) -> None:
    assert client.get("/v1/payments").status_code == 401
    r = client.get("/v1/payments/pay_00000001", headers=_auth("sk_000000000000_nope"))
    assert r.status_code == 401


# -- one payment ---------------------------------------------------------------------------------

def _detail(client: httpx.Client, key: str, payment_id: str) -> httpx.Response:
    return client.get(f"/v1/payments/{payment_id}", headers=_auth(key))


def _payment_ids(owner: PostgresSettings, where: str, params: Any = None) -> list[str]:
    """Ids of existing payments named by the rows of `where` (a table and its conditions)."""
    return [r["payment_id"] for r in _sql(
        owner, f"SELECT DISTINCT payment_id FROM (SELECT payment_id FROM {where}) s"
               " WHERE payment_id IN (SELECT payment_id FROM payments) ORDER BY payment_id",
        params)]


def _rich_payments(owner: PostgresSettings) -> list[str]:
    """Payments with refunds, reversals, disputes, rejections, cases and manual matches."""
    picks: list[str] = []
    for source in ("refunds", "refund_exceptions", "disputes", "dispute_rejections",
                   "exception_cases", "payments WHERE state = 'REVERSED'",
                   "payments WHERE state = 'MATCHED_MANUAL'",
                   "ledger_journals WHERE kind = 'DISPUTE_LOST'",
                   "ledger_journals WHERE kind = 'REFUND_REVERSAL'",
                   "payments WHERE late", "reconciliation_exceptions"):
        found = _payment_ids(owner, source)
        assert found, source
        picks += found[:2]
    return sorted(set(picks))


def test_detail_is_the_list_object_with_its_timeline(client: httpx.Client,
                                                     keys: dict[str, str],
                                                     api_db: PostgresSettings) -> None:
    for pid in _rich_payments(api_db):
        r = _detail(client, keys["analyst"], pid)
        assert r.status_code == 200, r.text
        body = r.json()
        listed = [p for p in _walk(client, keys["analyst"], {"order_id": body["order_id"]})
                  if p["id"] == pid] if body["order_id"] else []
        if listed:
            assert {k: body[k] for k in listed[0]} == listed[0]
        _check_timeline(api_db, body, merchant=None)


def _check_timeline(owner: PostgresSettings, body: dict[str, Any],
                    merchant: str | None) -> None:
    pid = body["id"]
    timeline = body["timeline"]
    times = [e["at"] or "" for e in timeline]
    assert times == sorted(times), "the timeline is not in time order"
    kinds = [e["kind"] for e in timeline]
    assert kinds.count("requested") == 1 and kinds.count("reconciled") == 1
    row = _sql(owner, "SELECT * FROM payments WHERE payment_id = %s", (pid,))[0]
    reconciled = next(e for e in timeline if e["kind"] == "reconciled")
    assert reconciled["result_id"] == row["result_id"]
    assert reconciled["at"] == _rfc3339(row["decided_at"])
    if row["state"] == "REVERSED":
        assert reconciled["outcome"] in ("MATCHED", "MATCHED_MANUAL")
        reversed_ = [e for e in timeline if e["kind"] == "reversed"]
        assert [e["result_id"] for e in reversed_] == [row["reversal_result_id"]]
    else:
        assert reconciled["outcome"] == row["state"]
    # Every reconciliation exception, with its case when it opened one.
    want = {r["result_id"]: r["case_id"] for r in _sql(
        owner, "SELECT e.result_id, c.case_id FROM reconciliation_exceptions e LEFT JOIN"
               " exception_cases c ON c.opened_by = e.result_id WHERE e.payment_id = %s",
        (pid,))}
    assert {e["result_id"]: e["case_id"] for e in timeline if e["kind"] == "exception"} == want
    # Every journal of the payment, with its postings (a merchant key: its accounts only).
    journals = {r["journal_id"]: r for r in _sql(
        owner, "SELECT * FROM ledger_journals WHERE payment_id = %s", (pid,))}
    shown = {e["journal_id"]: e for e in timeline if e["kind"] == "journal"}
    assert set(shown) == set(journals)
    for jid, event in shown.items():
        assert event["journal_kind"] == journals[jid]["kind"]
        assert event["gross"]["amount_minor"] == journals[jid]["gross_minor"]
        entries = _sql(owner, "SELECT account, side, amount_minor FROM ledger_entries"
                              " WHERE journal_id = %s", (jid,))
        if merchant is not None:
            entries = [e for e in entries if e["account"] in (
                f"payable:{merchant}", f"payout_due:{merchant}", f"dispute_hold:{merchant}")]
        assert sorted((p["account"], p["side"], p["amount"]["amount_minor"])
                      for p in event["postings"]) == sorted(
            (e["account"], e["side"], e["amount_minor"]) for e in entries)
    # The batches its items are in.
    items = _sql(owner, "SELECT batch_id, kind, item_id FROM settlement_batch_items"
                        " WHERE payment_id = %s", (pid,))
    assert body["batch_ids"] == sorted({i["batch_id"] for i in items})
    assert sorted((e["batch_id"], e["item_kind"], e["item_id"]) for e in timeline
                  if e["kind"] == "settled") == sorted(
        (i["batch_id"], i["kind"], i["item_id"]) for i in items)
    # Refunds, disputes, cases and every case event; rejections and refund exceptions.
    for field, table, column in (("refunds", "refunds", "refund_id"),
                                 ("disputes", "disputes", "dispute_id"),
                                 ("cases", "exception_cases", "case_id")):
        want_ids = sorted(r[column] for r in _sql(
            owner, f"SELECT {column} FROM {table} WHERE payment_id = %s", (pid,)))
        assert sorted(o["id"] for o in body[field]) == want_ids, field
    for kind, table in (("case_event", "case_events"), ("refund_exception", "refund_exceptions"),
                        ("dispute_rejected", "dispute_rejections")):
        key = "event_id" if table == "case_events" else "result_id"
        where = ("case_id IN (SELECT case_id FROM exception_cases WHERE payment_id = %s)"
                 if table == "case_events" else "payment_id = %s")
        want_ids = sorted(r[key] for r in _sql(owner, f"SELECT {key} FROM {table} WHERE {where}",
                                               (pid,)))
        assert sorted(e[key] for e in timeline if e["kind"] == kind) == want_ids, kind
    for refund in body["refunds"]:
        decided = [e for e in timeline
                   if e["kind"] == "refund_decided" and e["refund_id"] == refund["id"]]
        assert len(decided) == 1 and decided[0]["result_id"] == refund["result_id"]


def test_a_merchant_sees_its_payment_and_only_its_postings(client: httpx.Client,
                                                           keys: dict[str, str],
                                                           api_db: PostgresSettings) -> None:
    pid = _payment_ids(api_db, "disputes WHERE merchant_id = %s AND state = 'LOST'", (M1,))[0]
    r = _detail(client, keys[M1], pid)
    assert r.status_code == 200, r.text
    body = r.json()
    _check_timeline(api_db, body, merchant=M1)
    accounts = {p["account"] for e in body["timeline"] if e["kind"] == "journal"
                for p in e["postings"]}
    assert accounts and all(a.endswith(f":{M1}") for a in accounts)
    # The analyst sees the platform's side too (clearing, fee revenue).
    full = _detail(client, keys["analyst"], pid).json()
    assert {p["account"] for e in full["timeline"] if e["kind"] == "journal"
            for p in e["postings"]} > accounts


def test_another_merchants_payment_is_a_404_like_a_missing_one(
        client: httpx.Client, keys: dict[str, str], api_db: PostgresSettings) -> None:
    pid = _payment_ids(api_db, "payments WHERE merchant_id = %s", (M2,))[0]
    assert _detail(client, keys[M2], pid).status_code == 200
    other = _detail(client, keys[M1], pid)
    missing = _detail(client, keys[M1], "pay_no_such_payment")
    assert other.status_code == missing.status_code == 404
    assert other.json()["error"]["code"] == missing.json()["error"]["code"] == "not_found"
    assert set(other.json()["error"]) == set(missing.json()["error"])
    assert _detail(client, keys["analyst"], "pay_no_such_payment").status_code == 404


def test_detail_bad_input(client: httpx.Client, keys: dict[str, str]) -> None:
    r = client.get("/v1/payments/pay_00000001", params={"expand": "all"},
                   headers=_auth(keys["analyst"]))
    assert r.status_code == 400 and r.json()["error"]["param"] == "expand"
    r = client.get("/v1/payments/%20pay_00000001", headers=_auth(keys["analyst"]))
    assert r.status_code == 400 and r.json()["error"]["param"] == "payment_id"


def test_row_level_security_is_a_second_layer_under_the_query(
        stack: Settings, api_db: PostgresSettings, seeded: SeedSummary) -> None:
    """The list's own query with no merchant condition, run as the API's login for a
    merchant key: row-level security alone still keeps it to that merchant."""
    import asyncio

    from api.auth import Principal
    from api.db import prepare
    from api.queries_payments import payment_detail
    from api.routes.payments import payments_rows

    login = stack.api.postgres(api_db)
    other = _payment_ids(api_db, "payments WHERE merchant_id = %s", (M2,))[0]

    async def run() -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
        conn = await psycopg.AsyncConnection.connect(login.conninfo(), row_factory=dict_row)
        async with conn, conn.transaction():
            await prepare(conn, Principal("k", "merchant", M1))
            rows = await payments_rows(conn, merchant=None, limit=10_000)
            leaked = await payment_detail(conn, other, merchant=None)
        return rows, leaked

    rows, leaked = asyncio.run(run())
    assert rows and {r["merchant_id"] for r in rows} == {M1}
    assert leaked is None
