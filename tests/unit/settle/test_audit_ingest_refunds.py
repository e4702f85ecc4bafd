"""The refund requests' ledger: in = routed + rejected + dead-lettered + duplicates."""

from __future__ import annotations

from settle.audit_ingest import RawRecord, join_refunds

REQ = "refunds.requested"


def _in(offset: int, value: bytes, partition: int = 0) -> RawRecord:
    return RawRecord(REQ, partition, offset, b"p1", value, None)


def _ref(offset: int, partition: int = 0) -> str:
    return f"{REQ}/{partition}/{offset}"


def test_every_input_in_one_bucket_and_identical_resends_of_a_routed_one_are_duplicates(
) -> None:
    inputs = [_in(0, b"r1"), _in(1, b"r2"), _in(2, b"bad"), _in(3, b"r1"),
              _in(4, b"r1", partition=1)]  # a re-send, another one on another partition
    placed = {_ref(0): {"routed"}, _ref(1): {"rejected"}, _ref(2): {"dlq"}}
    audit = join_refunds(inputs, placed)
    assert (audit.read, audit.routed, audit.rejected, audit.dead_lettered,
            audit.duplicates) == (5, 1, 1, 1, 2)
    assert audit.balanced


def test_an_input_without_output_that_repeats_no_routed_one_is_unaccounted() -> None:
    # r2 was rejected, not routed: a re-send of it must be decided again (rejected again),
    # so a silent one is unexplained, as is one never seen before.
    inputs = [_in(0, b"r2"), _in(1, b"r2"), _in(2, b"r3")]
    audit = join_refunds(inputs, {_ref(0): {"rejected"}})
    assert audit.unaccounted == [_ref(1), _ref(2)]
    assert not audit.balanced


def test_an_input_in_two_buckets_is_reported() -> None:
    inputs = [_in(0, b"r1")]
    audit = join_refunds(inputs, {_ref(0): {"routed", "rejected"}})
    assert audit.in_several_places == [_ref(0)]
    assert not audit.balanced


def test_the_identity_decides_what_a_duplicate_is() -> None:
    # Bytes differ (an unsigned field), the stage's identity does not.
    inputs = [_in(0, b"r1|reason=a"), _in(1, b"r1|reason=b")]
    placed = {_ref(0): {"routed"}}
    assert join_refunds(inputs, placed).unaccounted == [_ref(1)]
    same = join_refunds(inputs, placed,
                        identity=lambda rec: (rec.value or b"").split(b"|")[0])
    assert same.duplicates == 1 and same.balanced


def test_refund_body_identity_is_the_stage_s_signed_body() -> None:
    import json

    from settle.audit_ingest import refund_body_identity

    def record(reason: str, amount: int = 500) -> bytes:
        return json.dumps({"refund_id": "r1", "payment_id": "p1", "merchant_id": "m1",
                           "amount_minor": amount, "currency": "CNY", "reason": reason,
                           "requested_at": 1_700_000_000_000, "metadata": {},
                           "signature_key_id": "k1", "signature": "s"}).encode()

    identity = refund_body_identity(lambda value: json.loads(value or b""))
    first, resend, other = (RawRecord(REQ, 0, n, b"p1", v, None) for n, v in enumerate(
        (record("a"), record("b"), record("a", amount=501))))
    assert identity(first) == identity(resend) != identity(other)
    assert identity(RawRecord(REQ, 0, 9, b"p1", b"not json", None)) == ("raw", b"not json")
