"""Refunds in the reconcile stage: decided where the payment's state lives, one table value
per payment, replay-safe, the book outliving the payment's reconciliation state."""

from __future__ import annotations

from settlement import refunds as rf
from stream_processors.reconcile import ANSWER_MEMORY_MS, APPLIED, REPLAYED
from tests.support.reconcile import RETAIN_MS, SLA_MS, TOPICS, Harness


def matched(h: Harness, pid: str = "p-1") -> None:
    h.routed(pid)
    [res] = h.results(h.confirm(f"c-{pid}", pid))
    assert res["outcome"] == "MATCHED" and res["order_id"] == "o-1"


def test_refund_of_a_matched_payment_is_routed_then_reconciled_with_its_fee_back() -> None:
    h = Harness()
    matched(h)
    d = h.refund("r1", 400)
    [routed] = h.decoded(d, TOPICS.refunds_routed)
    assert (routed["channel"], routed["amount_minor"], routed["order_id"]) == ("ALIPAY", 400, "o-1")
    assert routed["channel_txn_id"] == "t-c-p-1"
    assert d.refunds[0].request == "accepted"
    d2 = h.refund_answer("r1", 400)
    [res] = h.decoded(d2, TOPICS.refund_results)
    # Fee 6 on 1000 (60 bps); 400 back returns round(6 * 400 / 1000) = 2.
    assert res["outcome"] == "MATCHED" and res["terminal"]
    assert (res["fee_returned_minor"], res["net_minor"]) == (2, 398)
    assert (res["refunded_minor"], res["refundable_minor"], res["captured_minor"]) == (
        400, 600, 1000)
    assert res["result_id"] == "p-1/r1:MATCHED:rc-r1" and res["order_id"] == "o-1"


def test_rejections_name_their_reasons() -> None:
    h = Harness()
    [rej] = h.decoded(h.refund("r0", 100, pid="nobody"), TOPICS.refunds_rejected)
    assert [r["code"] for r in rej["reasons"]] == [rf.PAYMENT_UNKNOWN]
    h.routed()  # known, not yet captured
    [rej] = h.decoded(h.refund("r1", 100), TOPICS.refunds_rejected)
    assert [r["code"] for r in rej["reasons"]] == [rf.PAYMENT_NOT_CAPTURED]
    h.confirm("c-1")
    h.refund("r2", 700)
    d = h.refund("r3", 301)  # 700 pending + 301 > 1000: racing refunds cannot both pass
    [rej] = h.decoded(d, TOPICS.refunds_rejected)
    assert [r["code"] for r in rej["reasons"]] == [rf.REFUND_EXCEEDS_REFUNDABLE]
    assert rej["request"]["refund_id"] == "r3"
    assert h.refund("r2", 700).outputs == []  # identical re-send: dropped, counted
    [rej] = h.decoded(h.refund("r2", 699), TOPICS.refunds_rejected)
    assert [r["code"] for r in rej["reasons"]] == [rf.DUPLICATE_CONFLICT]


def test_a_declined_or_missing_refund_frees_its_amount() -> None:
    h = Harness()
    matched(h)
    h.refund("r1", 1000)
    [res] = h.decoded(h.refund_answer("r1", 1000, status="FAILED"), TOPICS.refund_results)
    assert res["outcome"] == "DECLINED" and res["refundable_minor"] == 1000
    h.refund("r2", 1000)
    h.now += SLA_MS
    [res] = h.decoded(h.tick(), TOPICS.refund_results)
    assert res["outcome"] == "MISSING_CONFIRMATION" and res["refund_id"] == "r2"
    assert h.decoded(h.refund("r3", 1000), TOPICS.refunds_routed)


def test_replayed_inputs_resend_what_they_produced() -> None:
    h = Harness()
    matched(h)
    first = h.refund("r1", 400)
    again = h.replay(h.offset)
    assert again.outcome == REPLAYED and again.outputs == first.outputs
    answered = h.refund_answer("r1", 400)
    assert h.replay(h.offset).outputs == answered.outputs
    assert answered.outcome == APPLIED


def test_the_book_outlives_the_payment_state_and_a_tick_replays_refund_outputs() -> None:
    h = Harness()
    matched(h)
    h.now += RETAIN_MS + 1
    h.tick()
    raw = h.store["p-1"]
    assert "state" not in raw and raw["book"]["captured_minor"] == 1000
    assert h.decoded(h.refund("r1", 1000), TOPICS.refunds_routed)
    h.now += SLA_MS
    missing = h.tick()
    assert [r["outcome"] for r in h.decoded(missing, TOPICS.refund_results)] == [
        "MISSING_CONFIRMATION"]
    assert h.replay(h.offset).outputs == missing.outputs


def test_orphan_refund_answers_and_misplaced_keys_are_reported_not_applied() -> None:
    h = Harness()
    [res] = h.decoded(h.refund_answer("r9", 5, pid="ghost"), TOPICS.refund_results)
    assert res["outcome"] == "ORPHAN_CONFIRMATION" and res["merchant_id"] is None
    matched(h)
    h.refund("r1", 400)
    [res] = h.decoded(h.refund_answer("r1", 400, channel="card"), TOPICS.refund_results)
    assert res["outcome"] == "ORPHAN_CONFIRMATION"
    d = h.refund("r2", 10, partition=1)  # the payment lives on partition 0
    assert d.outcome == "dead_lettered"


def test_a_payment_reversal_is_published_once_with_the_payments_split() -> None:
    h = Harness()
    matched(h)
    d = h.confirm("c-rev", status="REVERSED")
    [res] = h.results(d)
    assert (res["outcome"], res["terminal"]) == ("PAYMENT_REVERSED", False)
    assert (res["expected_amount_minor"], res["fee_minor"], res["net_minor"]) == (1000, 6, 994)
    assert res["result_id"] == "p-1:PAYMENT_REVERSED:c-rev" and res["order_id"] == "o-1"
    assert h.confirm("c-rev", status="REVERSED").outputs == []  # redelivered
    assert h.replay(h.offset - 1).outputs == d.outputs  # read again after a crash
    [rej] = h.decoded(h.refund("r1", 10), TOPICS.refunds_rejected)
    assert [r["code"] for r in rej["reasons"]] == [rf.PAYMENT_WAS_REVERSED]


def test_reversals_that_cannot_apply_are_exceptions_not_held_or_decided() -> None:
    h = Harness()
    h.routed()  # routed, undecided: a reversal neither decides nor is held
    [res] = h.results(h.confirm("c-rev", status="REVERSED"))
    assert res["outcome"] == "REVERSAL_EXCEPTION" and res["fee_minor"] is None
    [res] = h.results(h.confirm("c-1"))
    assert res["outcome"] == "MATCHED"
    h.refund("r1", 100)
    [res] = h.results(h.confirm("c-rev2", status="REVERSED"))
    assert res["outcome"] == "REVERSAL_EXCEPTION" and "being refunded" in res["detail"]
    [res] = h.results(h.confirm("c-x", pid="ghost", status="REVERSED"))
    # Unknown to the stage: only the exception case it opened is kept, no state, no book.
    assert res["outcome"] == "REVERSAL_EXCEPTION" and set(h.store["ghost"]) == {
        "partition", "cases", "c_emitted", "emitted"}


def test_a_refund_reversal_publishes_the_mirror_and_frees_the_amount() -> None:
    h = Harness()
    matched(h)
    h.refund("r1", 400)
    h.refund_answer("r1", 400)
    [res] = h.decoded(h.refund_answer("r1", 400, cid="rv", status="REVERSED"),
                      TOPICS.refund_results)
    assert (res["outcome"], res["terminal"]) == ("REFUND_REVERSED", False)
    assert (res["fee_returned_minor"], res["net_minor"]) == (2, 398)
    assert (res["refunded_minor"], res["refundable_minor"]) == (0, 1000)


def test_bad_refund_answers_and_requests_are_dead_lettered_with_their_bytes() -> None:
    h = Harness()
    matched(h)
    junk = h.feed(TOPICS.refund_confirmations, b"not avro", b"p-1")
    negative = h.refund_answer("r1", -5)
    no_payment = h.refund("r1", 10, pid="")
    for d in (junk, negative, no_payment):
        assert d.outcome == "dead_lettered" and d.error_type
        [letter] = h.decoded(d, TOPICS.dlq)
        assert letter["stage"] == "reconcile" and letter["reason"]
    assert h.decoded(junk, TOPICS.dlq)[0]["original_value"] == b"not avro"


def test_a_replayed_rejection_of_an_uncaptured_payment_keeps_its_key() -> None:
    # The payment is known (routed) but holds no refund book: the re-sent rejection must be
    # keyed by its payment like the first one, or it would land on another partition.
    h = Harness()
    h.routed()
    first = h.refund("r1", 100)
    [rej] = h.decoded(first, TOPICS.refunds_rejected)
    assert [r["code"] for r in rej["reasons"]] == [rf.PAYMENT_NOT_CAPTURED]
    again = h.replay(h.offset)
    assert again.outcome == REPLAYED and again.outputs == first.outputs
    assert [o.key for o in again.outputs] == [b"p-1"]


def test_a_rejection_for_an_unknown_payment_is_replayed_even_once_the_payment_arrived() -> None:
    # After a crash the inputs of different topics are read again in another order: the
    # routed payment can come before the refund this time. The refund must get the answer it
    # got the first time, never a second, different one.
    h = Harness()
    first = h.refund("r1", 100)
    [rej] = h.decoded(first, TOPICS.refunds_rejected)
    assert [r["code"] for r in rej["reasons"]] == [rf.PAYMENT_UNKNOWN]
    refund_offset = h.offset
    matched(h)
    again = h.replay(refund_offset)
    assert again.outcome == REPLAYED and again.outputs == first.outputs
    # The memory does not make the payment known, and it is forgotten in time.
    [rej] = h.decoded(h.refund("r2", 100, pid="p-2"), TOPICS.refunds_rejected)
    assert [r["code"] for r in rej["reasons"]] == [rf.PAYMENT_UNKNOWN]
    assert "p-2" in h.store
    h.now += ANSWER_MEMORY_MS
    h.tick()
    assert "p-2" not in h.store
