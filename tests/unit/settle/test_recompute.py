"""The money recomputation's comparison: what each side holds for one merchant+currency."""

from __future__ import annotations

from settle.recompute import KeyMoney, Recomputation


def settled() -> KeyMoney:
    # Payments netting 1,000, refunds 1,300: batches 1,000 (paid) then -1,300 (paid 0,
    # carried -1,300); the ledger's payable holds -1,300 and payout_due the 1,000 paid.
    return KeyMoney(payments_net=1000, refunds_net=1300, batched_net=-300, payouts=1000,
                    carried=-1300, db_batched_net=-300, db_payouts=1000, db_carried=-1300,
                    payable=-1300, payout_due=1000)


def test_agreeing_sides_pass() -> None:
    assert settled().disagreements() == []
    assert Recomputation(keys={("m", "CNY"): settled()}).ok


def test_each_side_that_moves_one_unit_is_named() -> None:
    cases = {
        "refunds_net": "owed = batched (topics)",
        "payouts": "batched = paid out + carried",
        "db_carried": "batches topic = batch table",
        "payout_due": "payout_due = payouts",
        "payable": "payable = carried",
    }
    for name, check in cases.items():
        money = settled()
        setattr(money, name, getattr(money, name) + 1)
        assert check in money.disagreements(), name


def test_batches_written_before_payouts_stay_in_payable() -> None:
    money = KeyMoney(payments_net=500, batched_net=500, legacy_net=500, db_batched_net=500,
                     db_legacy_net=500, payable=500)
    assert money.disagreements() == []


def test_batches_written_with_the_first_schema_read_as_legacy(monkeypatch: object) -> None:
    """A batch record of the first schema has no payout or carried fields at all."""
    import settle.recompute as r

    class Conn:
        def execute(self, sql: str) -> object:
            class Rows:
                def fetchall(self) -> list[object]:
                    return []
            return Rows()

    class Consumer:
        def close(self) -> None: ...

    old = {"batch_id": "b1", "merchant_id": "m", "currency": "CNY", "window_start": 1,
           "net_minor": 500, "items": [{"net_minor": 500}]}
    topics = {"results": [], "refunds": [], "batches": [old], "disputes": [], "cases": []}

    class Rec:
        def __init__(self, value: object) -> None:
            self.value = value

    setattr_ = monkeypatch.setattr  # type: ignore[attr-defined]
    setattr_(r, "make_consumer", lambda *_a, **_k: Consumer())
    setattr_(r, "read_topic", lambda _c, topic: [Rec(v) for v in topics[topic]])

    class Decoder:
        def decode(self, value: object) -> object:
            return value

    class Settings:
        kafka = None

    money = r.recompute(Settings(), Conn(), Decoder(),  # type: ignore[arg-type]
                        "results", "refunds", "batches", "disputes", "cases")
    assert money.keys[("m", "CNY")].legacy_net == 500 and money.keys[("m", "CNY")].payouts == 0


def _dispute(event: str, dispute: str, amount: int, fee: int = 0, n: int = 0) -> dict[str, object]:
    return {"result_id": f"p1/{dispute}:{event}:e{n}", "event": event, "merchant_id": "m",
            "currency": "CNY", "amount_minor": amount, "fee_minor": fee}


def _recompute(monkeypatch: object, topics: dict[str, list[dict[str, object]]],
               tables: dict[str, list[tuple[object, ...]]]) -> object:
    """recompute over in-memory topics; `tables` answers each query by a word it contains."""
    import settle.recompute as r

    class Rows:
        def __init__(self, rows: list[tuple[object, ...]]) -> None:
            self.rows = rows

        def fetchall(self) -> list[tuple[object, ...]]:
            return self.rows

    class Conn:
        def execute(self, sql: str) -> Rows:
            return Rows(next((rows for word, rows in tables.items() if word in sql), []))

    class Consumer:
        def close(self) -> None: ...

    class Rec:
        def __init__(self, value: object) -> None:
            self.value = value

    class Decoder:
        def decode(self, value: object) -> object:
            return value

    class Settings:
        kafka = None

    setattr_ = monkeypatch.setattr  # type: ignore[attr-defined]
    setattr_(r, "make_consumer", lambda *_a, **_k: Consumer())
    setattr_(r, "read_topic", lambda _c, topic: [Rec(v) for v in topics.get(topic, [])])
    return r.recompute(Settings(), Conn(), Decoder(),  # type: ignore[arg-type]
                       "t.reconciliation.results", "t.refunds.results",
                       "t.settlements.batches")


def _batch(items: list[int]) -> dict[str, object]:
    net = sum(items)
    return {"batch_id": "b1", "merchant_id": "m", "currency": "CNY", "window_start": 1,
            "net_minor": net, "items": [{"net_minor": n} for n in items],
            "payout_minor": max(net, 0), "carried_out_minor": min(net, 0),
            "carried_in_minor": 0}


def test_disputes_and_manual_matches_are_recomputed_from_their_topics(
        monkeypatch: object) -> None:
    """A payment matched by hand at its settled amount (9,000, fee 54) and three disputes:
    d1 held and won, d2 held and lost with a 1,500 fee, d3 still open; their topics default to
    the results topic's prefix."""
    manual = {"result_id": "p1:mm", "outcome": "MATCHED_MANUAL", "terminal": True,
              "merchant_id": "m", "expected_currency": "CNY", "expected_amount_minor": 10_000,
              "settled_amount_minor": 9_000, "fee_minor": 54}
    disputes = [_dispute("OPENED", "d1", 1_000), _dispute("WON", "d1", 1_000, n=1),
                _dispute("OPENED", "d2", 2_000), _dispute("LOST", "d2", 2_000, 1_500, n=1),
                _dispute("OPENED", "d3", 3_000), _dispute("STAGE_CHANGED", "d3", 3_000, n=1),
                _dispute("OPENED", "d3", 3_000)]  # a replayed result counts once
    items = [8_946, -1_000, 1_000, -2_000, -1_500, -3_000]  # payment, holds, release, fee
    cases = [{"event_id": "c1:OPENED", "case_id": "c1", "kind": "OPENED", "status": "OPEN"},
             {"event_id": "c1:RESOLVED", "case_id": "c1", "kind": "RESOLVED",
              "status": "RESOLVED"},
             {"event_id": "c2:REFUSED", "case_id": "c2", "kind": "REFUSED", "status": "OPEN"}]
    topics = {"t.reconciliation.results": [manual], "t.disputes.results": disputes,
              "t.settlements.batches": [_batch(items)], "t.cases.events": cases}
    tables = {"settlement_batches": [("m", "CNY", 2_446, 2_446, 0, 0)],
              "ledger_entries": [("payout_due", "m", "CNY", 2_446),
                                 ("dispute_hold", "m", "CNY", 3_000)],
              "disputes": [("m", "CNY", 3_000)]}
    out = _recompute(monkeypatch, topics, tables)
    money = out.keys[("m", "CNY")]  # type: ignore[attr-defined]
    assert (money.payments_net, money.disputes_net, money.owed) == (8_946, -6_500, 2_446)
    assert (money.held, money.released, money.lost, money.dispute_fees) == (
        3_000, 1_000, 2_000, 1_500)
    assert money.disagreements() == []
    assert out.manual_matches == 1  # type: ignore[attr-defined]
    assert out.dispute_events == {"OPENED": 3, "WON": 1, "LOST": 1,  # type: ignore[attr-defined]
                                  "STAGE_CHANGED": 1}
    assert out.cases_by_status == {"RESOLVED": 1}  # type: ignore[attr-defined]
    assert out.case_events["REFUSED"] == 1  # type: ignore[attr-defined]


def test_a_hold_missing_from_the_ledger_or_the_table_is_named() -> None:
    money = KeyMoney(held=3_000, dispute_hold=3_000, db_held=3_000)
    assert money.disagreements() == []
    for side in ("held", "dispute_hold", "db_held"):
        off = KeyMoney(held=3_000, dispute_hold=3_000, db_held=3_000)
        setattr(off, side, 0)
        assert off.disagreements() == [
            "held (topics) = dispute_hold (ledger) = OPEN disputes (table)"], side


def test_a_dispute_released_but_never_batched_breaks_owed_equals_batched() -> None:
    money = KeyMoney(payments_net=1_000, disputes_net=-400, batched_net=1_000, payouts=1_000,
                     db_batched_net=1_000, db_payouts=1_000, payout_due=1_000, payable=-400,
                     carried=0)
    assert "owed = batched (topics)" in money.disagreements()
