"""/v1/settlement_batches and /v1/settlement_batches/{batch_id} on seeded books, through a
real server: lists and filters against the test's own SQL, each batch's items against
settlement_batch_items and the batch invariants (items add up to the batch, payout and carry
follow from net and carried_in), pages under concurrent inserts, CSV = JSON, 404 and 400s."""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote

import pytest

from infra.config import PostgresSettings, Settings
from tests.support.api_ledger import Books, csv_value, seeded_books, text_time

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def books(stack: Settings, api_db: PostgresSettings) -> Iterator[Books]:
    yield from seeded_books(stack, api_db)


LIST = "/v1/settlement_batches"
EXPONENT = {"JPY": 0, "KWD": 3}


def detail_path(batch_id: str) -> str:
    return f"{LIST}/{quote(batch_id, safe=':')}"


def money(amount: int | None, currency: str) -> dict[str, Any] | None:
    if amount is None:
        return None
    return {"amount_minor": amount, "currency": currency,
            "exponent": EXPONENT.get(currency, 2)}


def expected_batches(b: Books, where: str = "TRUE", params: Any = None) -> list[dict[str, Any]]:
    rows = b.rows(f"""
        SELECT b.*, b.currency::text AS cur,
               (SELECT j.journal_id FROM ledger_journals j
                 WHERE j.kind = 'PAYOUT' AND j.source_id = b.batch_id) AS payout_journal_id
          FROM settlement_batches b WHERE {where}""", params)
    rows.sort(key=lambda r: (r["window_start"], r["batch_id"]), reverse=True)
    return [{
        "object": "settlement_batch", "batch_id": r["batch_id"], "merchant_id": r["merchant_id"],
        "currency": r["cur"], "window_start": text_time(r["window_start"]),
        "window_end": text_time(r["window_end"]), "closed_at": text_time(r["closed_at"]),
        "payment_count": r["payment_count"], "refund_count": r["refund_count"],
        "gross": money(r["gross_minor"], r["cur"]), "fee": money(r["fee_minor"], r["cur"]),
        "net": money(r["net_minor"], r["cur"]),
        "carried_in": money(r["carried_in_minor"], r["cur"]),
        "payout": money(r["payout_minor"], r["cur"]),
        "carried_out": money(r["carried_out_minor"], r["cur"]),
        "payout_journal_id": r["payout_journal_id"],
    } for r in rows]


def walk_items(b: Books, key: str, batch_id: str, size: int) -> tuple[dict, list[dict]]:
    params: dict[str, Any] = {"items_limit": size}
    items: list[dict[str, Any]] = []
    while True:
        body = b.ok(detail_path(batch_id), key, params)
        page = body["items"]
        assert len(page["data"]) <= size
        items.extend(page["data"])
        if not page["has_more"]:
            return body, items
        params["items_starting_after"] = page["next_cursor"]


def test_a_merchants_batches_newest_first(books: Books) -> None:
    merchant, key = next(iter(books.merchant_keys.items()))
    expected = expected_batches(books, "merchant_id = %s", (merchant,))
    assert len(expected) >= 5
    assert books.walk(LIST, key, limit=3) == expected
    assert books.walk(LIST, books.analyst, {"merchant": merchant}, limit=4) == expected


def test_an_analyst_sees_every_batch(books: Books) -> None:
    expected = expected_batches(books)
    assert len({b["merchant_id"] for b in expected}) == len(books.merchants)
    assert books.walk(LIST, books.analyst, limit=7) == expected


def test_batch_filters(books: Books) -> None:
    everything = expected_batches(books)
    starts = sorted({b["window_start"] for b in everything})
    closes = sorted({b["closed_at"] for b in everything})
    currency = next(b["currency"] for b in everything if b["currency"] == "JPY")
    cases: list[tuple[dict[str, str], Any]] = [
        ({"currency": currency}, lambda b: b["currency"] == currency),
        ({"window_start_gte": starts[1]}, lambda b: b["window_start"] >= starts[1]),
        ({"window_start_lt": starts[2]}, lambda b: b["window_start"] < starts[2]),
        ({"window_start_gte": starts[1], "window_start_lt": starts[3]},
         lambda b: starts[1] <= b["window_start"] < starts[3]),
        ({"closed_gte": closes[1], "closed_lt": closes[-1]},
         lambda b: closes[1] <= b["closed_at"] < closes[-1]),
        ({"merchant": books.merchants[0], "currency": currency},
         lambda b: b["merchant_id"] == books.merchants[0] and b["currency"] == currency),
    ]
    for params, keep in cases:
        expected = [b for b in everything if keep(b)]
        assert expected, params
        assert books.walk(LIST, books.analyst, params, limit=5) == expected, params
    # A date bound is midnight UTC.
    day = datetime.fromisoformat(starts[2]).date()
    midnight = datetime(day.year, day.month, day.day, tzinfo=UTC)
    assert books.walk(LIST, books.analyst, {"window_start_gte": day.isoformat()}) == [
        b for b in everything if datetime.fromisoformat(b["window_start"]) >= midnight]


def test_every_batch_is_its_items_and_its_payout(books: Books) -> None:
    """For every batch of a merchant: the items shown are the table's, they add up to the
    batch, the totals per kind are theirs, and payout and carry follow from the net."""
    merchant, key = next(iter(books.merchant_keys.items()))
    batches = expected_batches(books, "merchant_id = %s", (merchant,))
    kinds_seen: set[str] = set()
    for batch in batches:
        bid, currency = batch["batch_id"], batch["currency"]
        rows = books.rows("""
            SELECT i.*, j.journal_id FROM settlement_batch_items i
              LEFT JOIN ledger_journals j ON j.source_id = i.item_id AND j.kind = CASE i.kind
                   WHEN 'DISPUTE_HOLD' THEN 'DISPUTE_OPEN' WHEN 'DISPUTE_RELEASE' THEN 'DISPUTE_WON'
                   WHEN 'DISPUTE_FEE' THEN 'DISPUTE_LOST' ELSE i.kind END
             WHERE i.batch_id = %s""", (bid,))
        rows.sort(key=lambda r: (r["matched_at"], r["kind"], r["item_id"]))
        expected_items = []
        for r in rows:
            sub = r["item_id"][len(r["payment_id"]) + 1:] or None
            expected_items.append({
                "object": "settlement_item", "kind": r["kind"], "item_id": r["item_id"],
                "payment_id": r["payment_id"],
                "refund_id": sub if r["kind"] in ("REFUND", "REFUND_REVERSAL") else None,
                "dispute_id": sub if r["kind"].startswith("DISPUTE_") else None,
                "gross": money(r["gross_minor"], currency), "fee": money(r["fee_minor"], currency),
                "net": money(r["net_minor"], currency),
                "matched_at": text_time(r["matched_at"]), "journal_id": r["journal_id"],
            })
        body, items = walk_items(books, key, bid, 40)
        assert {k: v for k, v in body.items() if k not in ("items", "item_kinds")} == batch
        assert items == expected_items
        assert all(i["journal_id"] for i in items)  # every item's journal is posted
        totals: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0, 0])
        for r in rows:
            t = totals[r["kind"]]
            t[0] += 1
            t[1] += r["gross_minor"]
            t[2] += r["fee_minor"]
            t[3] += r["net_minor"]
        assert body["item_kinds"] == [
            {"kind": kind, "item_count": t[0], "gross": money(t[1], currency),
             "fee": money(t[2], currency), "net": money(t[3], currency)}
            for kind, t in sorted(totals.items())]
        kinds_seen |= set(totals)
        gross = sum(i["gross"]["amount_minor"] for i in items)
        fee = sum(i["fee"]["amount_minor"] for i in items)
        net = sum(i["net"]["amount_minor"] for i in items)
        assert (gross, fee, net) == (batch["gross"]["amount_minor"], batch["fee"]["amount_minor"],
                                     batch["net"]["amount_minor"])
        balance = net + batch["carried_in"]["amount_minor"]
        assert batch["payout"]["amount_minor"] == max(balance, 0)
        assert batch["carried_out"]["amount_minor"] == min(balance, 0)
        assert (batch["payout_journal_id"] is not None) == (balance > 0)
    assert {"PAYMENT", "REFUND", "DISPUTE_HOLD"} <= kinds_seen


def test_items_default_page_and_limits(books: Books) -> None:
    biggest = books.rows("SELECT batch_id, count(*) AS n FROM settlement_batch_items"
                         " GROUP BY 1 ORDER BY 2 DESC, 1 LIMIT 1")[0]
    assert biggest["n"] > 100
    body = books.ok(detail_path(biggest["batch_id"]), books.analyst)
    assert len(body["items"]["data"]) == 100 and body["items"]["has_more"]
    whole = books.ok(detail_path(biggest["batch_id"]), books.analyst, {"items_limit": 1000})
    assert len(whole["items"]["data"]) == biggest["n"] and not whole["items"]["has_more"]
    assert whole["items"]["next_cursor"] is None


def test_another_merchants_batch_is_not_found(books: Books) -> None:
    (first, key), (second, _) = list(books.merchant_keys.items())
    theirs = expected_batches(books, "merchant_id = %s", (second,))[0]["batch_id"]
    for params in ({}, {"items_limit": 5}):
        response = books.get(detail_path(theirs), key, params)
        assert response.status_code == 404
        assert response.json()["error"]["code"] == "not_found"
    assert books.get(detail_path(theirs), key, csv_export=True).status_code == 404
    assert books.get(detail_path("B:nobody:CNY:0"), books.analyst).status_code == 404
    # The same batch for its own merchant and for an analyst.
    assert books.get(detail_path(theirs), books.merchant_keys[second]).status_code == 200
    assert books.get(detail_path(theirs), books.analyst).status_code == 200
    mine = expected_batches(books, "merchant_id = %s", (first,))
    assert books.ok(detail_path(mine[0]["batch_id"]), key)["merchant_id"] == first


def test_batches_csv_equals_json(books: Books) -> None:
    _merchant, key = next(iter(books.merchant_keys.items()))
    json_rows = books.walk(LIST, key)
    csv_rows = books.csv(LIST, key)
    flat = []
    for r in json_rows:
        row = {k: csv_value(v) for k, v in r.items()
               if k != "object" and not isinstance(v, dict) and v is not None}
        row["payout_journal_id"] = csv_value(r["payout_journal_id"])
        for field in ("gross", "fee", "net", "carried_in", "payout", "carried_out"):
            row[f"{field}_minor"] = csv_value(r[field]["amount_minor"] if r[field] else None)
        flat.append(row)
    assert csv_rows == [{k: row[k] for k in csv_rows[0]} for row in flat]
    assert set(csv_rows[0]) == set(flat[0])


def test_batch_items_csv_equals_json(books: Books) -> None:
    merchant, key = next(iter(books.merchant_keys.items()))
    bid = expected_batches(books, "merchant_id = %s", (merchant,))[-1]["batch_id"]
    _body, items = walk_items(books, key, bid, 1000)
    csv_rows = books.csv(detail_path(bid), key)
    flat = []
    for i in items:
        row = {k: csv_value(v) for k, v in i.items() if k != "object" and not isinstance(v, dict)}
        row.update(batch_id=bid, currency=i["gross"]["currency"],
                   gross_minor=str(i["gross"]["amount_minor"]),
                   fee_minor=str(i["fee"]["amount_minor"]), net_minor=str(i["net"]["amount_minor"]))
        flat.append(row)
    assert [dict(sorted(r.items())) for r in csv_rows] == [dict(sorted(r.items())) for r in flat]


def _insert_batch(b: Books, merchant: str, n: int, window_start: datetime) -> None:
    """A batch of one PAYMENT item, as the settlement sink writes one (its journal is not
    needed for the list)."""
    bid = f"B:{merchant}:USD:{int(window_start.timestamp() * 1000)}"
    b.execute(
        "INSERT INTO settlement_batches (batch_id, merchant_id, currency, window_start,"
        " window_end, payment_count, gross_minor, fee_minor, net_minor, payout_minor,"
        " closed_at) VALUES (%(b)s, %(m)s, 'USD', %(w)s, %(w)s + interval '1 day', 1, 100, 1,"
        " 99, 99, now())",
        "INSERT INTO settlement_batch_items (batch_id, kind, item_id, payment_id, gross_minor,"
        " fee_minor, net_minor, matched_at) VALUES (%(b)s, 'PAYMENT', %(p)s, %(p)s, 100, 1, 99,"
        " %(w)s)",
        params={"b": bid, "m": merchant, "w": window_start, "p": f"pay_batch_concurrent_{n}"})


def test_a_batch_walk_under_concurrent_batches_never_skips_or_repeats(books: Books) -> None:
    before = [b["batch_id"] for b in expected_batches(books)]
    starts = sorted({datetime.fromisoformat(b["window_start"]) for b in expected_batches(books)})
    stop = threading.Event()
    inserted: list[int] = []

    def insert() -> None:
        n = 0
        while not stop.is_set():
            # Windows newer than every page, and between the windows already listed.
            base = starts[n % len(starts)] if n % 2 else starts[-1] + timedelta(days=1)
            _insert_batch(books, books.merchants[n % len(books.merchants)], n,
                          base + timedelta(seconds=n + 1))
            inserted.append(n)
            n += 1
            time.sleep(0.003)

    writer = threading.Thread(target=insert)
    writer.start()
    try:
        seen = books.walk(LIST, books.analyst, limit=2)
    finally:
        stop.set()
        writer.join()
    ids = [b["batch_id"] for b in seen]
    assert len(ids) == len(set(ids))
    assert set(before) <= set(ids)
    assert len(inserted) > 3


@pytest.mark.parametrize(("params", "param"), [
    ({"currency": "usd"}, "currency"),
    ({"window_start_gte": "03/04/2025"}, "window_start_gte"),
    ({"window_start_lt": "2025-03-04T25:00:00Z"}, "window_start_lt"),
    ({"window_start_gte": "2025-03-05", "window_start_lt": "2025-03-05"}, "window_start_lt"),
    ({"closed_gte": "soon"}, "closed_gte"),
    ({"closed_gte": "2025-03-06", "closed_lt": "2025-03-05"}, "closed_lt"),
    ({"limit": "-1"}, "limit"),
    ({"limit": "1000"}, "limit"),
    ({"starting_after": "eyJ2IjoyLCJrIjpbXX0"}, "starting_after"),  # {"v":2,"k":[]}
    ({"window": "2025-03-04"}, "window"),
])
def test_bad_list_parameters_are_400_naming_them(books: Books, params: dict[str, str],
                                                 param: str) -> None:
    books.bad(LIST, params, param)


@pytest.mark.parametrize(("params", "param"), [
    ({"items_limit": "0"}, "items_limit"),
    ({"items_limit": "1001"}, "items_limit"),
    ({"items_limit": "many"}, "items_limit"),
    ({"items_starting_after": "%%%"}, "items_starting_after"),
    ({"limit": "5"}, "limit"),
])
def test_bad_detail_parameters_are_400_naming_them(books: Books, params: dict[str, str],
                                                   param: str) -> None:
    bid = expected_batches(books)[0]["batch_id"]
    books.bad(detail_path(bid), params, param)


def test_a_batch_list_cursor_is_not_an_items_cursor(books: Books) -> None:
    listed = books.ok(LIST, books.analyst, {"limit": 1})
    bid = listed["data"][0]["batch_id"]
    books.bad(detail_path(bid), {"items_starting_after": listed["next_cursor"]},
              "items_starting_after")
    first, second = list(books.merchant_keys)
    books.bad(LIST, {"merchant": second}, "merchant", key=books.merchant_keys[first])
