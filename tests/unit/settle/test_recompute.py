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
    topics = {"results": [], "refunds": [], "batches": [old]}

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
                        "results", "refunds", "batches")
    assert money.keys[("m", "CNY")].legacy_net == 500 and money.keys[("m", "CNY")].payouts == 0
