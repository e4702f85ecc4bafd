"""/v1/balances and /v1/balance_transactions on seeded books, through a real server.

Every expected value comes from the test's own SQL over ledger_entries, ledger_journals,
settlement_batch_items, settlement_batches and disputes, run as the owner, and Python
arithmetic; the ledger's own invariants (held = the open disputes, payout_due = the closed
batches' payouts) are checked against the API's figures too.
"""

from __future__ import annotations

import threading
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from infra.config import PostgresSettings, Settings
from tests.support.api_ledger import Books, csv_value, seeded_books, text_time

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def books(stack: Settings, api_db: PostgresSettings) -> Iterator[Books]:
    yield from seeded_books(stack, api_db)


BALANCES = "/v1/balances"
TXNS = "/v1/balance_transactions"
# Journal kind -> the settlement item kind that settles it (settle/books_sql.py's table).
ITEM_OF = {"PAYMENT": "PAYMENT", "REFUND": "REFUND", "PAYMENT_REVERSAL": "PAYMENT_REVERSAL",
           "REFUND_REVERSAL": "REFUND_REVERSAL", "DISPUTE_OPEN": "DISPUTE_HOLD",
           "DISPUTE_WON": "DISPUTE_RELEASE", "DISPUTE_LOST": "DISPUTE_FEE"}


def merchant_postings(b: Books) -> list[dict[str, Any]]:
    """Every posting on a merchant account, as the API should show it, newest first."""
    entries = b.rows("""
        SELECT e.journal_id, e.account, e.side, e.amount_minor, e.currency::text AS currency,
               e.posted_at, j.kind, j.source_id, j.payment_id
          FROM ledger_entries e JOIN ledger_journals j ON j.journal_id = e.journal_id
         WHERE split_part(e.account, ':', 1) IN ('payable', 'payout_due', 'dispute_hold')""")
    batch_of = {(r["kind"], r["item_id"]): r["batch_id"]
                for r in b.rows("SELECT kind, item_id, batch_id FROM settlement_batch_items")}
    out = []
    for e in entries:
        account_type, merchant = e["account"].split(":", 1)
        kind, source = e["kind"], e["source_id"]
        sub_id = source[len(e["payment_id"]) + 1:] if e["payment_id"] else None
        out.append({
            "journal_id": e["journal_id"], "kind": kind, "account": e["account"],
            "account_type": account_type, "merchant_id": merchant, "side": e["side"],
            "amount_minor": e["amount_minor"] if e["side"] == "CREDIT" else -e["amount_minor"],
            "currency": e["currency"], "posted_at": e["posted_at"],
            "payment_id": e["payment_id"],
            "refund_id": sub_id if kind in ("REFUND", "REFUND_REVERSAL") else None,
            "dispute_id": sub_id if kind.startswith("DISPUTE_") else None,
            "source_id": source,
            "batch_id": source if kind == "PAYOUT" else batch_of.get((ITEM_OF[kind], source)),
        })
    out.sort(key=lambda r: (r["posted_at"], r["journal_id"], r["account"], r["side"]),
             reverse=True)
    return out


def shown(row: dict[str, Any]) -> dict[str, Any]:
    """An expected posting in the API's JSON shape."""
    exponent = {"JPY": 0, "KWD": 3}.get(row["currency"], 2)
    flat = {k: v for k, v in row.items() if k not in ("amount_minor", "currency")}
    flat["posted_at"] = text_time(row["posted_at"])
    return {"object": "balance_transaction", **flat,
            "amount": {"amount_minor": row["amount_minor"], "currency": row["currency"],
                       "exponent": exponent}}


def expected_balances(b: Books, as_of: datetime | None = None) -> dict[tuple[str, str], dict]:
    sums: dict[tuple[str, str], dict[str, int]] = defaultdict(
        lambda: {"payable": 0, "payout_due": 0, "held": 0})
    for row in merchant_postings(b):
        if as_of is not None and row["posted_at"] > as_of:
            continue
        field = {"dispute_hold": "held"}.get(row["account_type"], row["account_type"])
        sums[(row["merchant_id"], row["currency"])][field] += row["amount_minor"]
    return dict(sums)


def as_pairs(data: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, int]]:
    out = {}
    for row in data:
        assert row["object"] == "balance"
        for field in ("payable", "payout_due", "held"):
            assert row[field]["currency"] == row["currency"]
        out[(row["merchant_id"], row["currency"])] = {
            f: row[f]["amount_minor"] for f in ("payable", "payout_due", "held")}
    return out


# -- balances ---------------------------------------------------------------------------------

def test_balances_equal_the_sums_of_each_merchant_account(books: Books) -> None:
    expected = expected_balances(books)
    assert len({m for m, _ in expected}) == len(books.merchants)
    body = books.ok(BALANCES, books.analyst)
    assert body["has_more"] is False
    assert as_pairs(body["data"]) == expected
    assert [(r["merchant_id"], r["currency"]) for r in body["data"]] == sorted(expected)
    # Something is held and something is due, so the sums are not vacuous.
    assert any(v["held"] > 0 for v in expected.values())
    assert all(v["payout_due"] > 0 for v in expected.values())


def test_balances_agree_with_the_ledgers_invariants(books: Books) -> None:
    """held = Σ amounts of the OPEN disputes; payout_due = Σ payouts of the closed batches
    (nothing is paid out in the seeded books)."""
    held = {(r["merchant_id"], r["currency"]): int(r["held"]) for r in books.rows(
        "SELECT merchant_id, currency::text AS currency, SUM(amount_minor) AS held"
        " FROM disputes WHERE state = 'OPEN' GROUP BY 1, 2")}
    due = {(r["merchant_id"], r["currency"]): int(r["due"]) for r in books.rows(
        "SELECT merchant_id, currency::text AS currency, SUM(payout_minor) AS due"
        " FROM settlement_batches GROUP BY 1, 2")}
    api = as_pairs(books.ok(BALANCES, books.analyst)["data"])
    assert held and due
    for pair, values in api.items():
        assert values["held"] == held.get(pair, 0), pair
        assert values["payout_due"] == due.get(pair, 0), pair


def test_a_merchant_key_sees_its_own_balances_only(books: Books) -> None:
    expected = expected_balances(books)
    for merchant, key in books.merchant_keys.items():
        mine = {p: v for p, v in expected.items() if p[0] == merchant}
        assert mine
        assert as_pairs(books.ok(BALANCES, key)["data"]) == mine
        assert as_pairs(books.ok(BALANCES, key, {"merchant": merchant})["data"]) == mine
        assert as_pairs(books.ok(BALANCES, books.analyst, {"merchant": merchant})["data"]) == mine
    first, second = list(books.merchant_keys)
    books.bad(BALANCES, {"merchant": second}, "merchant", key=books.merchant_keys[first])


def test_balances_by_currency(books: Books) -> None:
    expected = expected_balances(books)
    for currency in {c for _, c in expected}:
        got = as_pairs(books.ok(BALANCES, books.analyst, {"currency": currency})["data"])
        assert got == {p: v for p, v in expected.items() if p[1] == currency}


def test_balances_as_of_count_postings_at_or_before_it(books: Books) -> None:
    times = sorted({r["posted_at"] for r in merchant_postings(books)})
    middle = times[len(times) // 2]
    at = as_pairs(books.ok(BALANCES, books.analyst, {"as_of": text_time(middle)})["data"])
    just_before = as_pairs(books.ok(
        BALANCES, books.analyst, {"as_of": text_time(middle - timedelta(microseconds=1))}
    )["data"])
    assert at == expected_balances(books, middle)
    assert just_before == expected_balances(books, middle - timedelta(microseconds=1))
    assert at != just_before  # a posting at exactly as_of counts
    assert at != as_pairs(books.ok(BALANCES, books.analyst)["data"])
    shown_as_of = books.ok(BALANCES, books.analyst, {"as_of": text_time(middle)})["data"]
    assert {r["as_of"] for r in shown_as_of} == {text_time(middle)}
    before_all = books.ok(BALANCES, books.analyst,
                          {"as_of": text_time(times[0] - timedelta(seconds=1))})
    assert before_all["data"] == []


def test_balances_csv_equals_json(books: Books) -> None:
    json_rows = books.ok(BALANCES, books.analyst)["data"]
    csv_rows = books.csv(BALANCES, books.analyst)
    assert [list(r) for r in csv_rows[:1]] == [
        ["merchant_id", "currency", "payable_minor", "payout_due_minor", "held_minor"]]
    assert csv_rows == [
        {"merchant_id": r["merchant_id"], "currency": r["currency"],
         "payable_minor": str(r["payable"]["amount_minor"]),
         "payout_due_minor": str(r["payout_due"]["amount_minor"]),
         "held_minor": str(r["held"]["amount_minor"])} for r in json_rows]


@pytest.mark.parametrize(("params", "param"), [
    ({"as_of": "yesterday"}, "as_of"),
    ({"as_of": "2025-13-01"}, "as_of"),
    ({"currency": "cny"}, "currency"),
    ({"currency": "YUAN"}, "currency"),
    ({"merchant": " mch_001"}, "merchant"),
    ({"merchnt": "mch_001"}, "merchnt"),
])
def test_bad_balance_parameters_are_400_naming_them(books: Books, params: dict[str, str],
                                                    param: str) -> None:
    books.bad(BALANCES, params, param)


# -- balance transactions ---------------------------------------------------------------------

def test_a_merchants_walk_shows_every_posting_once_in_order(books: Books) -> None:
    merchant, key = next(iter(books.merchant_keys.items()))
    expected = [shown(r) for r in merchant_postings(books) if r["merchant_id"] == merchant]
    kinds = Counter(r["kind"] for r in expected)
    assert set(kinds) == {"PAYMENT", "REFUND", "PAYOUT", "PAYMENT_REVERSAL", "REFUND_REVERSAL",
                          "DISPUTE_OPEN", "DISPUTE_WON", "DISPUTE_LOST"}
    got = books.walk(TXNS, key, limit=61)
    assert got == expected
    # Every PAYOUT's two legs: payable down, payout_due up by the same amount.
    payouts = [r for r in got if r["kind"] == "PAYOUT"]
    assert payouts and sum(r["amount"]["amount_minor"] for r in payouts) == 0
    assert all(r["batch_id"] for r in got if r["kind"] in ("PAYMENT", "PAYOUT"))


def test_an_analysts_walk_shows_every_merchants_postings(books: Books) -> None:
    expected = [shown(r) for r in merchant_postings(books)]
    assert books.walk(TXNS, books.analyst) == expected
    merchant = books.merchants[-1]
    assert books.walk(TXNS, books.analyst, {"merchant": merchant}) == [
        r for r in expected if r["merchant_id"] == merchant]


def test_balance_transactions_filters(books: Books) -> None:
    merchant, key = next(iter(books.merchant_keys.items()))
    mine = [shown(r) for r in merchant_postings(books) if r["merchant_id"] == merchant]
    refund = next(r for r in mine if r["kind"] == "REFUND")
    batch_id = next(r["batch_id"] for r in mine if r["kind"] == "DISPUTE_OPEN" and r["batch_id"])
    times = sorted({r["posted_at"] for r in mine})
    low, high = times[len(times) // 4], times[len(times) // 2]
    cases: list[tuple[dict[str, str], Any]] = [
        ({"kind": "REFUND"}, lambda r: r["kind"] == "REFUND"),
        ({"kind": "DISPUTE_LOST"}, lambda r: r["kind"] == "DISPUTE_LOST"),
        ({"account": "dispute_hold"}, lambda r: r["account_type"] == "dispute_hold"),
        ({"account": "payout_due"}, lambda r: r["account_type"] == "payout_due"),
        ({"currency": refund["amount"]["currency"]},
         lambda r: r["amount"]["currency"] == refund["amount"]["currency"]),
        ({"payment_id": refund["payment_id"]},
         lambda r: r["payment_id"] == refund["payment_id"]),
        ({"batch_id": batch_id}, lambda r: r["batch_id"] == batch_id),
        ({"created_gte": low, "created_lt": high}, lambda r: low <= r["posted_at"] < high),
        ({"created_gte": low}, lambda r: r["posted_at"] >= low),
        ({"kind": "PAYMENT", "account": "payable", "created_lt": high},
         lambda r: r["kind"] == "PAYMENT" and r["posted_at"] < high),
    ]
    for params, keep in cases:
        expected = [r for r in mine if keep(r)]
        assert expected, params
        assert books.walk(TXNS, key, params) == expected, params
    # The batch filter finds what the batch settles: its items' journals and its payout.
    in_batch = {r["kind"] for r in books.walk(TXNS, key, {"batch_id": batch_id})}
    assert {"PAYOUT", "DISPUTE_OPEN", "PAYMENT"} <= in_batch


def test_one_posting_per_page_splits_journals_between_accounts(books: Books) -> None:
    """Pages of one row put a page boundary between the legs of every journal: a PAYOUT's
    (payable, payout_due) and a dispute's (payable, dispute_hold) share their time and
    journal id, so the next page must start at the right account of the same journal."""
    merchant, key = next(iter(books.merchant_keys.items()))
    everyone = [shown(r) for r in merchant_postings(books)]
    for kind in ("PAYOUT", "DISPUTE_OPEN"):
        expected = [r for r in everyone if r["kind"] == kind]
        journals = Counter(r["journal_id"] for r in expected)
        assert any(n > 1 for n in journals.values())  # journals with two merchant legs
        mine = [r for r in expected if r["merchant_id"] == merchant]
        assert books.walk(TXNS, key, {"kind": kind}, limit=1) == mine
    # An analyst's walk (one ordered scan over every merchant's accounts) alike.
    expected = [r for r in everyone if r["kind"] == "DISPUTE_OPEN"]
    assert books.walk(TXNS, books.analyst, {"kind": "DISPUTE_OPEN"}, limit=1) == expected


def test_balance_transactions_csv_equals_json(books: Books) -> None:
    _merchant, key = next(iter(books.merchant_keys.items()))
    params = {"created_gte": "2025-03-04", "created_lt": "2025-03-06"}
    json_rows = books.walk(TXNS, key, params)
    csv_rows = books.csv(TXNS, key, params)
    assert json_rows
    flat = []
    for r in json_rows:
        row = {k: csv_value(v) for k, v in r.items() if k not in ("object", "amount")}
        row["amount_minor"] = str(r["amount"]["amount_minor"])
        row["currency"] = r["amount"]["currency"]
        flat.append(row)
    assert [dict(sorted(r.items())) for r in csv_rows] == [dict(sorted(r.items())) for r in flat]
    assert list(csv_rows[0])[:3] == ["journal_id", "kind", "account"]


def _insert_posted_payment(b: Books, merchant: str, n: int, posted_at: datetime) -> None:
    """A MATCHED payment with its PAYMENT journal, as the ledger sink writes one."""
    b.execute(
        "INSERT INTO payments (payment_id, merchant_id, channel, amount_minor, currency, state,"
        " result_id, created_at, decided_at)"
        " VALUES (%(p)s, %(m)s, 'alipay', 1000, 'CNY', 'MATCHED', 'r-' || %(p)s, %(t)s, %(t)s)",
        "INSERT INTO ledger_journals (journal_id, kind, source_id, payment_id, currency,"
        " gross_minor, fee_minor, net_minor, posted_at)"
        " VALUES ('J:' || %(p)s, 'PAYMENT', %(p)s, %(p)s, 'CNY', 1000, 6, 994, %(t)s)",
        "INSERT INTO ledger_entries (journal_id, payment_id, account, side, amount_minor,"
        " currency, posted_at)"
        " VALUES ('J:' || %(p)s, %(p)s, 'clearing:alipay', 'DEBIT', 1000, 'CNY', %(t)s),"
        " ('J:' || %(p)s, %(p)s, 'payable:' || %(m)s, 'CREDIT', 994, 'CNY', %(t)s),"
        " ('J:' || %(p)s, %(p)s, 'fee_revenue:alipay', 'CREDIT', 6, 'CNY', %(t)s)",
        params={"p": f"pay_concurrent_{n:05d}", "m": merchant, "t": posted_at})


def test_a_walk_under_concurrent_postings_never_skips_or_repeats(books: Books) -> None:
    """Postings land meanwhile, newer than every page and inside pages already read or not
    yet read: every posting that existed when the walk began is seen exactly once."""
    merchant, key = list(books.merchant_keys.items())[1]
    before = {(r["journal_id"], r["account"], r["side"])
              for r in merchant_postings(books) if r["merchant_id"] == merchant}
    times = sorted({r["posted_at"] for r in merchant_postings(books)})
    stop = threading.Event()
    inserted: list[int] = []

    def insert() -> None:
        n = 0
        while not stop.is_set():
            at = (datetime.now(UTC) if n % 2 else times[(n * 7919) % len(times)])
            _insert_posted_payment(books, merchant, n, at)
            inserted.append(n)
            n += 1
            time.sleep(0.002)

    writer = threading.Thread(target=insert)
    writer.start()
    try:
        seen = books.walk(TXNS, key, limit=23)
    finally:
        stop.set()
        writer.join()
    keys = [(r["journal_id"], r["account"], r["side"]) for r in seen]
    assert len(keys) == len(set(keys)), "a posting was shown twice"
    assert before <= set(keys), "a posting that existed before the walk was skipped"
    assert len(inserted) > 5  # the walk did run beside the writer
    order = [(r["posted_at"], r["journal_id"], r["account"], r["side"]) for r in seen]
    assert order == sorted(order, reverse=True)


@pytest.mark.parametrize(("params", "param"), [
    ({"kind": "SALE"}, "kind"),
    ({"kind": "payment"}, "kind"),
    ({"account": "clearing"}, "account"),
    ({"currency": "US"}, "currency"),
    ({"created_gte": "last week"}, "created_gte"),
    ({"created_lt": "2025-02-30"}, "created_lt"),
    ({"created_gte": "2025-03-05", "created_lt": "2025-03-04"}, "created_lt"),
    ({"limit": "0"}, "limit"),
    ({"limit": "101"}, "limit"),
    ({"limit": "ten"}, "limit"),
    ({"starting_after": "not-a-cursor"}, "starting_after"),
    ({"starting_after": "eyJ2IjoxLCJrIjpbMSwyXX0"}, "starting_after"),  # {"v":1,"k":[1,2]}
    ({"payment_id": "x" * 300}, "payment_id"),
    ({"batch": "B:1"}, "batch"),
])
def test_bad_transaction_parameters_are_400_naming_them(books: Books, params: dict[str, str],
                                                        param: str) -> None:
    books.bad(TXNS, params, param)


def test_a_cursor_of_another_list_is_refused(books: Books) -> None:
    body = books.ok("/v1/settlement_batches", books.analyst, {"limit": 1})
    books.bad(TXNS, {"starting_after": body["next_cursor"]}, "starting_after")


def test_a_merchant_key_cannot_name_another_merchant(books: Books) -> None:
    first, second = list(books.merchant_keys)
    books.bad(TXNS, {"merchant": second}, "merchant", key=books.merchant_keys[first])
