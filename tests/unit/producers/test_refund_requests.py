"""Refund requests from the producer side: records, signing on send, the file and the CLI."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from infra.keyring import init_keyring
from producers.errors import RefundFileError
from producers.refunds import (
    RefundSpec,
    make_spec,
    new_refund_id,
    parse_refunds_csv,
    publish_refunds,
    summarise,
)
from producers.signing import NoSigningKey, RequestSigner, refund_request_from_record
from schemas.codec import AvroDeserializer, AvroSerializer
from schemas.registry import InMemoryRegistry
from settle.cli import cli
from settlement.refund_model import valid_refund_id
from settlement.signing import Keyring, SigningKey, verify_refund

KEY = SigningKey("m-0001.k1", "m-0001", bytes(range(32)), "active", 0)
KEYRING = Keyring([KEY, SigningKey("m-0002.k1", "m-0002", bytes(range(32, 64)), "active", 0)])


def record(**changes: Any) -> dict[str, Any]:
    spec = RefundSpec("pay-1", "m-0001", 2500, "CNY", "rf-1", "size too small",
                      {"source": "test", "note": "尺码小"})
    return {**spec.to_record(1_750_000_360_000), **changes}


def test_signer_signs_refund_records_with_the_golden_vector() -> None:
    signed = RequestSigner(KEYRING).sign_refund_record(record())
    assert signed["signature_key_id"] == "m-0001.k1"
    assert signed["signature"] == (
        "5eeab9071088c21a54a90ff77b23790fafd2587d801c331b668fb72ddd2027eb")
    assert verify_refund(refund_request_from_record(signed), KEYRING) is None
    assert "signature" not in record()  # the input is not changed


def test_signer_leaves_presigned_and_unshapeable_records_alone() -> None:
    signer = RequestSigner(KEYRING)
    assert signer.sign_refund_record(record(signature=None))["signature"] is None
    broken = record()
    del broken["payment_id"]
    assert "signature" not in signer.sign_refund_record(broken)
    with pytest.raises(NoSigningKey):
        signer.sign_refund_record(record(merchant_id="m-0404"))


def test_record_reader_takes_datetimes_too() -> None:
    at = datetime.fromtimestamp(1_750_000_360, UTC)
    assert refund_request_from_record(record(requested_at=at)).requested_at_ms == 1_750_000_360_000
    with pytest.raises(TypeError):
        refund_request_from_record(record(requested_at=at.replace(tzinfo=None)))


def test_signed_record_encodes_and_decodes_with_the_contract_schema() -> None:
    registry = InMemoryRegistry()
    ser = AvroSerializer(registry, "refunds.requested", "RefundRequested")
    signed = RequestSigner(KEYRING).sign_refund_record(record())
    decoded = AvroDeserializer(registry).decode(ser.encode(signed))
    assert verify_refund(refund_request_from_record(decoded), KEYRING) is None


def test_new_refund_ids_are_valid_and_fresh() -> None:
    ids = {new_refund_id() for _ in range(100)}
    assert len(ids) == 100 and all(valid_refund_id(i) for i in ids)


@pytest.mark.parametrize(("args", "fragment"), [
    (("pay-1", "m-0001", 0, "CNY"), "positive"),
    (("pay-1", "m-0001", 2**63, "CNY"), "positive"),
    (("pay-1", "m-0001", 5, "cny"), "ISO 4217"),
    (("", "m-0001", 5, "CNY"), "payment_id is empty"),
    (("pay-1", " ", 5, "CNY"), "merchant_id is empty"),
])
def test_make_spec_refuses_bad_requests(args: tuple[Any, ...], fragment: str) -> None:
    with pytest.raises(RefundFileError, match=fragment):
        make_spec(*args)
    with pytest.raises(RefundFileError, match="refund_id"):
        make_spec("pay-1", "m-0001", 5, "CNY", refund_id="a/b")


CSV = """payment_id,merchant_id,amount_minor,currency,refund_id,reason
pay-1,m-0001,2500,CNY,rf-a,size

pay-2,m-0001,12.5,CNY,,
pay-3,m-0001,100,CNY,,late
pay-1,m-0001,100,CNY,rf-a,again
pay-4,m-0002,-3,USD,rf-x,
"""


def test_csv_rows_are_checked_by_line() -> None:
    ids = iter(["rf-gen-1", "rf-gen-2"])
    parsed = parse_refunds_csv(CSV, new_id=lambda: next(ids))
    assert [(line, s.payment_id, s.refund_id) for line, s in parsed.specs] == [
        (2, "pay-1", "rf-a"), (5, "pay-3", "rf-gen-2")]
    assert parsed.specs[1][1].reason == "late"
    assert parsed.bad_lines == [4, 6, 7]
    assert any(p.startswith("line 4: amount_minor '12.5'") for p in parsed.problems)
    assert any(p.startswith("line 6: refund rf-a of pay-1 repeats (first at line 2)")
               for p in parsed.problems)
    with pytest.raises(RefundFileError, match="3 bad row"):
        parsed.raise_if_bad()


def test_csv_header_is_checked() -> None:
    with pytest.raises(RefundFileError, match=r"line 1: header lacks column\(s\) currency"):
        parse_refunds_csv("payment_id,merchant_id,amount_minor\npay-1,m-0001,1\n")


class FakeSender:
    def __init__(self) -> None:
        self.sent: list[tuple[str, str, dict[str, Any]]] = []

    def send(self, topic: str, key: str, record: Any, headers: Any = None) -> None:
        self.sent.append((topic, key, dict(record)))


def test_publish_keys_by_payment_id_and_summarises() -> None:
    specs = [make_spec("pay-1", "m-0001", 5, "CNY"), make_spec("pay-2", "m-0002", 7, "CNY"),
             make_spec("pay-3", "m-0002", 9, "USD")]
    sender = FakeSender()
    publish_refunds(sender, specs, lambda: 42, topic="t.refunds.requested")
    assert [(t, k, r["requested_at"]) for t, k, r in sender.sent] == [
        ("t.refunds.requested", "pay-1", 42), ("t.refunds.requested", "pay-2", 42),
        ("t.refunds.requested", "pay-3", 42)]
    assert summarise(specs) == {"CNY": {"refunds": 2, "amount_minor": 12},
                                "USD": {"refunds": 1, "amount_minor": 9}}


@pytest.fixture
def keyring_env(tmp_path: Path) -> dict[str, str]:
    path = tmp_path / "ring.json"
    init_keyring(path, ["m-0001", "m-0002"])
    return {"SETTLE_SIGNATURES": "required", "SETTLE_SIGNING_KEYRING": str(path)}


def test_cli_single_request_dry_run(keyring_env: dict[str, str]) -> None:
    result = CliRunner().invoke(cli, ["refunds", "request", "pay-1", "2500", "--merchant",
                                      "m-0001", "--currency", "CNY", "--refund-id", "rf-9",
                                      "--dry-run"], env=keyring_env)
    assert result.exit_code == 0, result.output
    assert "rf-9" in result.output and "would send" in result.output


@pytest.mark.parametrize(("args", "fragment"), [
    (["pay-1"], "PAYMENT_ID and AMOUNT are required"),
    (["pay-1", "5"], "--merchant and --currency are required"),
    (["pay-1", "5", "--merchant", "m-0009", "--currency", "CNY"], "no active signing key"),
    (["pay-1", "0", "--merchant", "m-0001", "--currency", "CNY"], "positive"),
])
def test_cli_single_request_errors(keyring_env: dict[str, str], args: list[str],
                                   fragment: str) -> None:
    result = CliRunner().invoke(cli, ["refunds", "request", *args, "--dry-run"],
                                env=keyring_env)
    assert result.exit_code != 0
    assert fragment in result.output


def test_cli_file_with_bad_rows_sends_nothing_unless_skip_bad(
        tmp_path: Path, keyring_env: dict[str, str]) -> None:
    path = tmp_path / "refunds.csv"
    path.write_text(CSV, encoding="utf-8")
    refused = CliRunner().invoke(cli, ["refunds", "request", "--file", str(path), "--dry-run"],
                                 env=keyring_env)
    assert refused.exit_code != 0
    assert "line 4" in refused.output and "nothing sent" in refused.output
    skipped = CliRunner().invoke(
        cli, ["refunds", "request", "--file", str(path), "--dry-run", "--skip-bad"],
        env=keyring_env)
    assert skipped.exit_code == 0, skipped.output
    assert "2 would send, 3 bad row(s) skipped" in skipped.output


def test_cli_help_everywhere() -> None:
    for args in (["refunds", "--help"], ["refunds", "request", "--help"]):
        result = CliRunner().invoke(cli, args)
        assert result.exit_code == 0 and "Usage" in result.output
