"""The validate+route worker on the real stack: a mixed batch lands exactly where it should."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest

from infra.config import Settings
from infra.kafka import make_consumer
from infra.keyring import load_keyring
from infra.registry import registry_client
from producers.producer import AvroProducer
from producers.signing import RequestSigner
from schemas.codec import AvroDeserializer
from schemas.topics import TopicNames
from settle.audit_ingest import audit_ingest, read_topic
from settlement.model import PaymentRequest
from settlement.signing import SigningKey, sign
from tests.support.stages import now_ms, payment, start_worker, stop

pytestmark = pytest.mark.integration

WORKER_START_TIMEOUT_S = 90
DRAIN_TIMEOUT_S = 90


def test_mixed_batch_is_fully_accounted_for(stack: Settings, prefix: str, tmp_path) -> None:
    topics = TopicNames(prefix)
    registry = registry_client(stack)
    run = uuid.uuid4().hex[:6]
    merchants = [
        {"merchant_id": "m-ok", "name": "OK", "status": "ACTIVE", "settlement_currency": "CNY",
         "updated_at": now_ms()},
        {"merchant_id": "m-off", "name": "Off", "status": "SUSPENDED",
         "settlement_currency": "CNY", "updated_at": now_ms()},
    ]
    valid = {
        f"{run}-ali": payment(f"{run}-ali"),
        f"{run}-wx": payment(f"{run}-wx", method="WECHAT_PAY"),
        f"{run}-card-cn": payment(f"{run}-card-cn", method="CARD"),
        f"{run}-card-us": payment(f"{run}-card-us", method="CARD", region="US", currency="USD"),
        f"{run}-jpy": payment(f"{run}-jpy", method="CARD", region="JP", currency="JPY",
                              amount_minor=1200),
        f"{run}-kwd": payment(f"{run}-kwd", method="CARD", region="KW", currency="KWD",
                              amount_minor=12345),
    }
    invalid = {
        f"{run}-zero": (payment(f"{run}-zero", amount_minor=0), "AMOUNT_NOT_POSITIVE"),
        f"{run}-neg": (payment(f"{run}-neg", amount_minor=-5), "AMOUNT_NOT_POSITIVE"),
        f"{run}-huge": (payment(f"{run}-huge", amount_minor=2**62), "AMOUNT_ABOVE_LIMIT"),
        f"{run}-cur": (payment(f"{run}-cur", currency="XXX"), "CURRENCY_UNKNOWN"),
        # No key can exist for an unknown merchant: sent unsigned (also SIGNATURE_MISSING).
        f"{run}-mer": (payment(f"{run}-mer", merchant_id="m-nobody", signature_key_id=None,
                               signature=None), "MERCHANT_UNKNOWN"),
        f"{run}-sus": (payment(f"{run}-sus", merchant_id="m-off"), "MERCHANT_SUSPENDED"),
        f"{run}-fut": (payment(f"{run}-fut", created_at=now_ms() + 3600_000),
                       "CREATED_AT_IN_FUTURE"),
        f"{run}-old": (payment(f"{run}-old", created_at=now_ms() - 30 * 86400_000),
                       "CREATED_AT_TOO_OLD"),
        f"{run}-empty": (payment(f"{run}-empty", order_id=""), "REQUIRED_FIELD_EMPTY"),
        f"{run}-region": (payment(f"{run}-region", region="China"), "REGION_INVALID"),
        f"{run}-noroute": (payment(f"{run}-noroute", method="WECHAT_PAY", currency="KWD",
                                   region="KW"), "METHOD_NOT_ROUTABLE"),
    }
    garbage = {
        b"g-random": os.urandom(64),
        b"g-magic": b"\x07\x00\x00\x00\x01" + os.urandom(10),
        b"g-schema": b"\x00\x7f\xff\xff\xf0" + os.urandom(10),
        b"g-empty": b"",
    }
    with AvroProducer(stack.kafka, registry, client_id="test-ingest") as producer:
        for m in merchants:
            producer.send(topics.merchants, m["merchant_id"], m)
        producer.flush()
        for pid, rec in valid.items():
            producer.send(topics.requested, pid, rec)
        for pid, (rec, _code) in invalid.items():
            producer.send(topics.requested, pid, rec)
        # An identical re-send (deduplicated) and a conflicting one (rejected).
        producer.send(topics.requested, f"{run}-ali", valid[f"{run}-ali"])
        producer.send(topics.requested, f"{run}-wx",
                      {**valid[f"{run}-wx"], "amount_minor": 999})
        good = producer._serializer(topics.requested).encode(payment(f"{run}-trunc"))
        producer.send_raw(topics.requested, f"{run}-trunc".encode(), good[:-6])
        for key, raw in garbage.items():
            producer.send_raw(topics.requested, key, raw)
    total_in = len(valid) + len(invalid) + 2 + 1 + len(garbage)

    proc = start_worker(prefix, str(tmp_path / "validate.log"))
    try:
        result = audit_ingest(stack.kafka, topics.requested, topics.all_routed, topics.rejected,
                              topics.dlq, wait_s=WORKER_START_TIMEOUT_S + DRAIN_TIMEOUT_S)
    finally:
        stop(proc)
    log_tail = (tmp_path / "validate.log").read_text(errors="replace")[-3000:]
    assert result.read == total_in, log_tail
    assert result.balanced, (result, log_tail)
    assert result.routed == len(valid)
    assert result.deduplicated == 1
    assert result.rejected == len(invalid) + 1
    assert result.dead_lettered == len(garbage) + 1

    decoder = AvroDeserializer(registry)
    consumer = make_consumer(stack.kafka, group_id=f"t-{uuid.uuid4()}")
    try:
        routed = {r.key.decode(): (r.topic, decoder.decode(r.value))
                  for t in topics.all_routed for r in read_topic(consumer, t)}
        rejected = {r.key.decode(): decoder.decode(r.value)
                    for r in read_topic(consumer, topics.rejected)}
        letters = [decoder.decode(r.value) for r in read_topic(consumer, topics.dlq)]
    finally:
        consumer.close()

    assert set(routed) == set(valid)
    assert routed[f"{run}-card-cn"][0] == topics.routed("unionpay")
    assert routed[f"{run}-card-us"][0] == topics.routed("card")
    assert routed[f"{run}-ali"][0] == topics.routed("alipay")
    for pid, (_topic, rec) in routed.items():
        assert rec["amount_minor"] == valid[pid]["amount_minor"]
        assert rec["currency"] == valid[pid]["currency"]
        assert rec["rule_id"]
    for pid, (_rec, code) in invalid.items():
        assert code in [r["code"] for r in rejected[pid]["reasons"]], rejected[pid]
    assert [r["code"] for r in rejected[f"{run}-wx"]["reasons"]] == ["DUPLICATE_CONFLICT"]
    by_key = {letter["original_key"]: letter for letter in letters}
    for key, raw in garbage.items():
        assert by_key[key]["original_value"] == raw
        assert by_key[key]["source_topic"] == topics.requested
        assert by_key[key]["stage"] == "validate"
    assert by_key[f"{run}-trunc".encode()]["error_type"]


# -- merchant signatures ----------------------------------------------------------------------


def test_signed_requests_route_and_bad_signatures_are_rejected_by_code(
    stack: Settings, prefix: str, tmp_path
) -> None:
    topics = TopicNames(prefix)
    registry = registry_client(stack)
    keyring = load_keyring(Path(os.environ["SETTLE_SIGNING_KEYRING"]))
    own, other = keyring.signing_key_for("m-ok"), keyring.signing_key_for("m-off")
    assert own is not None and other is not None
    run = uuid.uuid4().hex[:6]
    signer = RequestSigner(keyring)

    def forged(pid: str, **change: Any) -> dict[str, Any]:
        return {**signer.sign_record(payment(pid)), **change}

    def signed_with(key: SigningKey, pid: str) -> dict[str, Any]:
        rec = payment(pid)
        request = PaymentRequest.from_record(rec)
        return {**rec, "signature_key_id": key.key_id, "signature": sign(request, key)}

    signed = {f"{run}-s{i}": payment(f"{run}-s{i}", amount_minor=100 + i) for i in range(3)}
    bad = {
        f"{run}-unsigned": (payment(f"{run}-unsigned", signature_key_id=None, signature=None),
                            "SIGNATURE_MISSING"),
        f"{run}-nokey": (payment(f"{run}-nokey", signature_key_id="m-ok.gone",
                                 signature="ab" * 32), "SIGNATURE_KEY_UNKNOWN"),
        f"{run}-otherkey": (signed_with(other, f"{run}-otherkey"),
                            "SIGNATURE_KEY_MERCHANT_MISMATCH"),
        f"{run}-wrongsig": (payment(f"{run}-wrongsig", signature_key_id=own.key_id,
                                    signature="ab" * 32), "SIGNATURE_INVALID"),
    }
    # Tampered after signing, one signed field at a time; each is otherwise valid.
    tampers = {
        "payment_id": None, "merchant_id": "m-off", "order_id": "o-x", "payer_id": "u-x",
        "amount_minor": 2501, "currency": "HKD", "method": "WECHAT_PAY", "interface": "APP",
        "region": "HK", "created_at": None, "metadata": {"k": "w"},
    }
    for field, value in tampers.items():
        pid = f"{run}-t-{field}"
        if field == "payment_id":
            rec = {**signer.sign_record(payment(f"{pid}-orig")), "payment_id": pid}
        elif field == "created_at":
            original = signer.sign_record(payment(pid))
            rec = {**original, "created_at": original["created_at"] - 1}
        else:
            rec = forged(pid, **{field: value})
        code = "SIGNATURE_KEY_MERCHANT_MISMATCH" if field == "merchant_id" else "SIGNATURE_INVALID"
        bad[pid] = (rec, code)
    merchants = [
        {"merchant_id": m, "name": m, "status": "ACTIVE", "settlement_currency": "CNY",
         "updated_at": now_ms()} for m in ("m-ok", "m-off")
    ]
    with AvroProducer(stack.kafka, registry, client_id="test-signatures") as producer:
        for m in merchants:
            producer.send(topics.merchants, m["merchant_id"], m)
        producer.flush()
        for pid, rec in signed.items():
            producer.send(topics.requested, pid, rec)  # signed by the library on send
        for pid, (rec, _code) in bad.items():
            producer.send(topics.requested, pid, rec)  # carries its own (bad) signature

    proc = start_worker(prefix, str(tmp_path / "validate.log"))
    try:
        result = audit_ingest(stack.kafka, topics.requested, topics.all_routed, topics.rejected,
                              topics.dlq, wait_s=WORKER_START_TIMEOUT_S + DRAIN_TIMEOUT_S)
    finally:
        stop(proc)
    log = (tmp_path / "validate.log").read_text(errors="replace")
    assert result.read == len(signed) + len(bad), log[-3000:]
    assert result.balanced and result.routed == len(signed) and result.rejected == len(bad)
    assert "request signatures REQUIRED" in log

    decoder = AvroDeserializer(registry)
    consumer = make_consumer(stack.kafka, group_id=f"t-{uuid.uuid4()}")
    try:
        routed = {r.key.decode() for t in topics.all_routed for r in read_topic(consumer, t)}
        rejected = {r.key.decode(): decoder.decode(r.value)
                    for r in read_topic(consumer, topics.rejected)}
    finally:
        consumer.close()
    assert routed == set(signed)
    for pid, (rec, code) in bad.items():
        assert [r["code"] for r in rejected[pid]["reasons"]] == [code], (pid, rejected[pid])
        assert rejected[pid]["request"]["signature"] == rec["signature"]


def test_validator_refuses_to_start_without_its_keyring(tmp_path) -> None:
    env = {**os.environ, "SETTLE_SIGNING_KEYRING": str(tmp_path / "missing.json"),
           "SETTLE_SIGNATURES": "required"}
    proc = subprocess.run(
        [sys.executable, "-m", "settle.cli", "worker", "validate"],
        env=env, capture_output=True, text=True, timeout=120, check=False,
    )
    assert proc.returncode == 1
    assert "KeyringError" in proc.stderr and "missing.json" in proc.stderr
