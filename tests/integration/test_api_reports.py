"""/v1/reports/summary on seeded books, through a real server: every grouping against the
test's own sums (days computed in Python with zoneinfo, not by the database), day boundaries in
the zone asked for, a merchant key's own payments only, CSV = JSON, bad inputs."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from datetime import UTC, date, datetime
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from infra.config import PostgresSettings, Settings
from tests.support.api_ledger import Books, csv_value, seeded_books

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def books(stack: Settings, api_db: PostgresSettings) -> Iterator[Books]:
    yield from seeded_books(stack, api_db)


SUMMARY = "/v1/reports/summary"
KEY_COLUMNS = {"day": "day", "merchant": "merchant_id", "channel": "channel",
               "outcome": "outcome", "currency": "currency"}
EXPONENT = {"JPY": 0, "KWD": 3}
TZ_MERCHANT = "mch_tz_edge"


def payments(b: Books) -> list[dict[str, Any]]:
    return b.rows("""
        SELECT p.payment_id, p.merchant_id, p.channel, p.state, p.currency::text AS currency,
               p.amount_minor, COALESCE(p.created_at, p.decided_at) AS at,
               j.gross_minor, j.fee_minor, j.net_minor
          FROM payments p
          LEFT JOIN ledger_journals j ON j.kind = 'PAYMENT' AND j.source_id = p.payment_id""")


def money(amount: int, currency: str | None) -> dict[str, Any] | None:
    if currency is None:
        return None
    return {"amount_minor": amount, "currency": currency, "exponent": EXPONENT.get(currency, 2)}


def expected(rows: list[dict[str, Any]], keys: list[str], tz: str,
             keep: Any = None) -> list[dict[str, Any]]:
    zone = ZoneInfo(tz)
    groups: dict[tuple, list[int]] = defaultdict(lambda: [0, 0, 0, 0, 0, 0])
    for p in rows:
        if keep is not None and not keep(p):
            continue
        values = {"day": p["at"].astimezone(zone).date().isoformat(),
                  "merchant": p["merchant_id"], "channel": p["channel"],
                  "outcome": p["state"], "currency": p["currency"]}
        g = groups[tuple(values[k] for k in keys)]
        g[0] += 1
        g[1] += p["amount_minor"] or 0
        if p["gross_minor"] is not None:
            g[2] += 1
            g[3] += p["gross_minor"]
            g[4] += p["fee_minor"]
            g[5] += p["net_minor"]
    out = []
    for group in sorted(groups, key=lambda t: tuple("" if v is None else v for v in t)):
        g = groups[group]
        row: dict[str, Any] = {"object": "summary_row"}
        row.update({KEY_COLUMNS[k]: v for k, v in zip(keys, group, strict=True)})
        currency = row["currency"]
        row.update({"payment_count": g[0], "amount": money(g[1], currency),
                    "settled_count": g[2], "gross": money(g[3], currency),
                    "fee": money(g[4], currency), "net": money(g[5], currency)})
        out.append(row)
    return out


@pytest.mark.parametrize("group_by", [
    "day", "merchant", "channel", "outcome", "currency", "day,channel",
    "outcome,merchant,day", "day,merchant,channel,outcome,currency",
])
def test_summary_groups_equal_the_tests_own_sums(books: Books, group_by: str) -> None:
    keys = [k for k in KEY_COLUMNS if k in {*group_by.split(","), "currency"}]
    body = books.ok(SUMMARY, books.analyst, {"group_by": group_by, "tz": "UTC"})
    assert body["object"] == "summary" and body["group_by"] == keys and body["tz"] == "UTC"
    assert body["data"] == expected(payments(books), keys, "UTC")
    # Real groups, not one: the seed has every state on several channels and currencies.
    assert len(body["data"]) >= 3


def test_currency_is_always_a_group_key(books: Books) -> None:
    body = books.ok(SUMMARY, books.analyst, {"group_by": "outcome"})
    assert body["group_by"] == ["outcome", "currency"]
    for row in body["data"]:
        amounts = [row[f] for f in ("amount", "gross", "fee", "net")]
        assert {a["currency"] for a in amounts} == {row["currency"]}
    outcomes = [r["outcome"] for r in body["data"]]
    assert len(outcomes) > len(set(outcomes))  # an outcome in several currencies: split
    settled = {r["outcome"] for r in body["data"] if r["settled_count"]}
    assert settled == {"MATCHED", "MATCHED_MANUAL", "REVERSED"}


def test_the_default_zone_is_the_settlement_cut_off_zone(books: Books) -> None:
    body = books.ok(SUMMARY, books.analyst)
    assert body["tz"] == "Asia/Shanghai" and body["group_by"] == ["day", "currency"]
    assert body["data"] == expected(payments(books), ["day", "currency"], "Asia/Shanghai")
    # The seed's windows are Shanghai days: the same payments fall on other days in UTC.
    utc = books.ok(SUMMARY, books.analyst, {"tz": "UTC"})["data"]
    assert [r["day"] for r in utc] != [r["day"] for r in body["data"]]


def test_a_payment_at_2330_utc_is_the_next_day_in_shanghai(books: Books) -> None:
    at = datetime(2025, 2, 20, 23, 30, tzinfo=UTC)
    books.execute(
        "INSERT INTO payments (payment_id, merchant_id, channel, amount_minor, currency, state,"
        " result_id, created_at, decided_at)"
        " VALUES ('pay_tz_edge', %(m)s, 'alipay', 4200, 'CNY', 'DECLINED', 'r-tz', %(at)s,"
        " %(at)s + interval '2 hours')",
        params={"m": TZ_MERCHANT, "at": at})
    days = {}
    for tz in ("UTC", "Asia/Shanghai", "America/New_York"):
        data = books.ok(SUMMARY, books.analyst, {"merchant": TZ_MERCHANT, "tz": tz})["data"]
        assert len(data) == 1 and data[0]["payment_count"] == 1
        assert data[0]["amount"] == money(4200, "CNY")
        days[tz] = data[0]["day"]
    assert days == {"UTC": "2025-02-20", "Asia/Shanghai": "2025-02-21",
                    "America/New_York": "2025-02-20"}
    # A date bound is that day's midnight in the zone asked for.
    def count(tz: str, **bounds: str) -> int:
        data = books.ok(SUMMARY, books.analyst, {"merchant": TZ_MERCHANT, "tz": tz, **bounds})
        return sum(r["payment_count"] for r in data["data"])
    assert count("Asia/Shanghai", created_gte="2025-02-21") == 1
    assert count("UTC", created_gte="2025-02-21") == 0
    assert count("Asia/Shanghai", created_lt="2025-02-21") == 0
    assert count("UTC", created_lt="2025-02-21") == 1
    # A date-time bound is itself, whatever the zone.
    assert count("Asia/Shanghai", created_gte="2025-02-20T23:30:00Z") == 1
    assert count("Asia/Shanghai", created_gte="2025-02-20T23:30:00.000001Z") == 0
    assert count("UTC", created_lt="2025-02-20T23:30:00Z") == 0
    shown = books.ok(SUMMARY, books.analyst, {"merchant": TZ_MERCHANT, "tz": "Asia/Shanghai",
                                              "created_gte": "2025-02-21"})
    assert shown["created_gte"] == "2025-02-20T16:00:00.000000Z"


def test_a_date_range_selects_the_days_of_the_zone(books: Books) -> None:
    tz = "Asia/Shanghai"
    zone = ZoneInfo(tz)
    low, high = date(2025, 3, 4), date(2025, 3, 6)
    body = books.ok(SUMMARY, books.analyst, {"group_by": "day,merchant", "tz": tz,
                                             "created_gte": low.isoformat(),
                                             "created_lt": high.isoformat()})
    keys = ["day", "merchant", "currency"]
    assert body["data"] == expected(
        payments(books), keys, tz, keep=lambda p: low <= p["at"].astimezone(zone).date() < high)
    assert {r["day"] for r in body["data"]} == {"2025-03-04", "2025-03-05"}


def test_a_merchant_key_sums_its_own_payments_only(books: Books) -> None:
    (merchant, key), (other, _) = list(books.merchant_keys.items())
    keys = ["day", "merchant", "outcome", "currency"]
    mine = expected(payments(books), keys, "UTC", keep=lambda p: p["merchant_id"] == merchant)
    assert mine
    params = {"group_by": "day,merchant,outcome", "tz": "UTC"}
    assert books.ok(SUMMARY, key, params)["data"] == mine
    assert books.ok(SUMMARY, key, {**params, "merchant": merchant})["data"] == mine
    assert books.ok(SUMMARY, books.analyst, {**params, "merchant": merchant})["data"] == mine
    books.bad(SUMMARY, {"merchant": other}, "merchant", key=key)


def test_summary_csv_equals_json(books: Books) -> None:
    params = {"group_by": "day,channel,outcome", "tz": "Asia/Shanghai"}
    json_rows = books.ok(SUMMARY, books.analyst, params)["data"]
    csv_rows = books.csv(SUMMARY, books.analyst, params)
    assert list(csv_rows[0]) == ["day", "channel", "outcome", "currency", "payment_count",
                                 "amount_minor", "settled_count", "gross_minor", "fee_minor",
                                 "net_minor"]
    flat = []
    for r in json_rows:
        row = {k: csv_value(v) for k, v in r.items() if k != "object" and not isinstance(v, dict)}
        for field in ("amount", "gross", "fee", "net"):
            row[f"{field}_minor"] = str(r[field]["amount_minor"])
        flat.append(row)
    assert csv_rows == [{k: row[k] for k in csv_rows[0]} for row in flat]
    assert len(csv_rows) == len(json_rows) > 10


@pytest.mark.parametrize(("params", "param"), [
    ({"tz": "Mars/Olympus_Mons"}, "tz"),
    ({"tz": "../../etc/passwd"}, "tz"),
    ({"tz": "+08:00"}, "tz"),
    ({"group_by": "week"}, "group_by"),
    ({"group_by": "day,,channel"}, "group_by"),
    ({"group_by": "Day"}, "group_by"),
    ({"created_gte": "2025-02-30"}, "created_gte"),
    ({"created_lt": "tomorrow"}, "created_lt"),
    ({"created_gte": "2025-03-06", "created_lt": "2025-03-05"}, "created_lt"),
    ({"merchant": "m\x01"}, "merchant"),
    ({"from": "2025-03-01"}, "from"),
    ({"limit": "10"}, "limit"),
])
def test_bad_summary_parameters_are_400_naming_them(books: Books, params: dict[str, str],
                                                    param: str) -> None:
    books.bad(SUMMARY, params, param)


def test_bad_input_is_400_for_csv_too(books: Books) -> None:
    response = books.get(SUMMARY, books.analyst, {"tz": "Nowhere/Land"}, csv_export=True)
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "tz"
