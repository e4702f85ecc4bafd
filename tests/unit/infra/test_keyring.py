"""The keyring file (0600, atomic, reloadable), `settle keys`, and the producer's signer."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import stat
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
from click.testing import CliRunner

from infra.config import SigningSettings, load
from infra.keyring import (
    KeyringError,
    KeyringWatcher,
    configured_keyring,
    ensure_run_keyring,
    init_keyring,
    load_keyring,
    remove,
    rotate,
)
from producers.signing import NoSigningKey, RequestSigner
from settle.cli.keys import keys
from settlement.model import PaymentRequest
from settlement.signing import canonical_form, verify


def record(merchant_id: str = "m-1") -> dict[str, object]:
    return {
        "payment_id": "p-1", "merchant_id": merchant_id, "order_id": "o-1", "payer_id": "u",
        "amount_minor": 100, "currency": "CNY", "method": "ALIPAY", "interface": "APP",
        "region": "CN", "created_at": 1_750_000_000_000, "metadata": {},
    }


def test_init_writes_mode_0600_and_refuses_to_overwrite(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "ring.json"
    keyring = init_keyring(path, ["m-1", "m-2", "m-1"])
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(keyring) == 2 and keyring.merchants() == {"m-1", "m-2"}
    assert list(load_keyring(path)) == list(keyring)
    with pytest.raises(KeyringError, match="exists"):
        init_keyring(path, ["m-1"])
    assert len(init_keyring(path, ["m-3"], force=True)) == 1


def test_a_readable_keyring_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "ring.json"
    init_keyring(path, ["m-1"])
    os.chmod(path, 0o644)
    with pytest.raises(KeyringError, match="chmod 600"):
        load_keyring(path)


def test_missing_and_malformed_keyrings_name_the_problem(tmp_path: Path) -> None:
    with pytest.raises(KeyringError, match="settle keys init"):
        load_keyring(tmp_path / "none.json")
    path = tmp_path / "bad.json"
    path.write_text("{not json")
    os.chmod(path, 0o600)
    with pytest.raises(KeyringError, match="not readable JSON"):
        load_keyring(path)


def test_rotate_then_remove(tmp_path: Path) -> None:
    path = tmp_path / "ring.json"
    old = init_keyring(path, ["m-1"]).signing_key_for("m-1")
    assert old is not None
    new = rotate(path, "m-1")
    keyring = load_keyring(path)
    assert keyring.signing_key_for("m-1") == new
    assert keyring.get(old.key_id).status == "retired"  # type: ignore[union-attr]
    remove(path, old.key_id)
    assert old.key_id not in load_keyring(path)
    with pytest.raises(KeyringError):
        remove(path, old.key_id)


def test_required_mode_without_a_keyring_fails_and_off_mode_does_not(tmp_path: Path) -> None:
    with pytest.raises(KeyringError, match="SETTLE_SIGNING_KEYRING is not set"):
        configured_keyring(load({}))
    assert configured_keyring(load({"SETTLE_SIGNATURES": "off"})) is None
    path = tmp_path / "ring.json"
    init_keyring(path, ["m-1"])
    assert len(configured_keyring(load({"SETTLE_SIGNING_KEYRING": str(path)})) or ()) == 1


def test_signature_mode_setting_is_checked() -> None:
    with pytest.raises(Exception, match="SETTLE_SIGNATURES"):
        load({"SETTLE_SIGNATURES": "maybe"})
    assert load({}).signing.required


def test_run_keyring_is_made_once_unless_one_is_configured(tmp_path: Path) -> None:
    made = ensure_run_keyring(tmp_path, ["m-1"], SigningSettings())
    assert made is not None and made.exists()
    before = made.read_bytes()
    assert ensure_run_keyring(tmp_path, ["m-1"], SigningSettings()) == made
    assert made.read_bytes() == before
    configured = SigningSettings(keyring_path=tmp_path / "mine.json")
    assert ensure_run_keyring(tmp_path, ["m-1"], configured) == tmp_path / "mine.json"
    assert ensure_run_keyring(tmp_path / "x", ["m-1"], SigningSettings(mode="off")) is None


def test_watcher_reloads_a_changed_file_and_keeps_the_old_one_if_broken(tmp_path: Path) -> None:
    path = tmp_path / "ring.json"
    init_keyring(path, ["m-1"])
    watcher = KeyringWatcher(path)
    assert watcher.poll() is None
    new = rotate(path, "m-1")
    fresh = watcher.poll()
    assert fresh is not None and fresh.signing_key_for("m-1") == new
    os.chmod(path, 0o644)
    path.write_text(path.read_text() + " ")
    with pytest.raises(KeyringError):
        watcher.poll()
    assert watcher.keyring.signing_key_for("m-1") == new


def test_keys_cli_never_prints_secrets(tmp_path: Path) -> None:
    path = tmp_path / "ring.json"
    runner = CliRunner()
    result = runner.invoke(keys, ["init", "--out", str(path)], terminal_width=200)
    assert result.exit_code == 0, result.output
    result = runner.invoke(keys, ["rotate", "m-0001", "--keyring", str(path)])
    assert result.exit_code == 0, result.output
    listed = runner.invoke(keys, ["list", "--keyring", str(path)], terminal_width=200)
    assert listed.exit_code == 0 and "m-0001" in listed.output and "retired" in listed.output
    document = json.loads(path.read_text())
    for entry in document["keys"]:
        for output in (result.output, listed.output):
            assert entry["secret_hex"] not in output
            assert entry["secret_hex"][:16] not in output


def test_signer_signs_a_copy_with_the_newest_active_key(tmp_path: Path) -> None:
    path = tmp_path / "ring.json"
    keyring = init_keyring(path, ["m-1"])
    signer = RequestSigner(keyring)
    original = record()
    out = signer.sign_record(original)
    assert "signature" not in original
    assert out["signature_key_id"] == keyring.signing_key_for("m-1").key_id  # type: ignore
    assert verify(PaymentRequest.from_record(out), keyring) is None


def test_signer_leaves_explicit_signatures_and_unshapeable_records_alone(tmp_path: Path) -> None:
    signer = RequestSigner(init_keyring(tmp_path / "ring.json", ["m-1"]))
    unsigned = {**record(), "signature_key_id": None, "signature": None}
    assert signer.sign_record(unsigned) == unsigned
    incomplete = {"payment_id": "p"}
    assert signer.sign_record(incomplete) == incomplete
    with pytest.raises(NoSigningKey, match="m-9"):
        signer.sign_record(record("m-9"))


def test_show_secret_prints_the_signing_secret_alone_on_stdout(tmp_path: Path) -> None:
    path = tmp_path / "ring.json"
    init_keyring(path, ["m-1", "m-2"])
    new = rotate(path, "m-1")  # the newest active key is the one handed over
    runner = CliRunner()
    result = runner.invoke(keys, ["show-secret", "m-1", "--keyring", str(path)])
    assert result.exit_code == 0, result.output
    secret_hex = next(e["secret_hex"] for e in json.loads(path.read_text())["keys"]
                      if e["key_id"] == new.key_id)
    assert result.stdout == secret_hex + "\n"
    assert new.key_id in result.stderr and secret_hex not in result.stderr
    # What the merchant does with it: HMAC-SHA256 under the hex-decoded secret verifies.
    request = PaymentRequest.from_record(record("m-1"))
    mac = hmac.new(bytes.fromhex(result.stdout.strip()), canonical_form(request, new.key_id),
                   hashlib.sha256).hexdigest()
    signed = replace(request, signature_key_id=new.key_id, signature=mac)
    assert verify(signed, load_keyring(path)) is None


def test_show_secret_json_carries_the_key_id(tmp_path: Path) -> None:
    path = tmp_path / "ring.json"
    key = init_keyring(path, ["m-1"]).signing_key_for("m-1")
    assert key is not None
    result = CliRunner().invoke(keys, ["show-secret", "m-1", "--json", "--keyring", str(path)])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == {
        "merchant_id": "m-1", "key_id": key.key_id, "secret_hex": key.secret.hex()}


@pytest.mark.parametrize(("case", "message"), [
    ("unknown merchant", "has no key in"),
    ("only retired keys", "has no active key"),
    ("no keyring file", "no keyring at"),
    ("no keyring configured", "no keyring path"),
])
def test_show_secret_errors_name_the_problem(tmp_path: Path, case: str, message: str) -> None:
    path = tmp_path / "ring.json"
    if case != "no keyring file":
        init_keyring(path, ["m-1"])
    merchant = "m-9" if case == "unknown merchant" else "m-1"
    if case == "only retired keys":
        remove(path, rotate(path, "m-1").key_id)  # the rotation retired the first key
    args = ["keys", "show-secret", merchant]
    if case != "no keyring configured":
        args += ["--keyring", str(path)]
    env = {k: v for k, v in os.environ.items() if k != "SETTLE_SIGNING_KEYRING"}
    env["COLUMNS"] = "300"
    done = subprocess.run([sys.executable, "-m", "settle", *args], capture_output=True,
                          text=True, env=env, timeout=60)
    assert done.returncode == 1
    assert done.stdout == ""
    assert "KeyringError" in done.stderr and message in done.stderr
    if path.exists():
        for entry in json.loads(path.read_text())["keys"]:
            assert entry["secret_hex"] not in done.stderr
