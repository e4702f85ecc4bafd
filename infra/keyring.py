"""The signing keyring file: JSON, mode 0600, never committed; created, rotated, listed, reloaded.

The file holds every merchant key (see settlement.signing.Keyring.to_document). Its path comes
from SETTLE_SIGNING_KEYRING. Secrets are generated with secrets.token_bytes and leave this
module only inside SigningKey objects, whose repr hides them.
"""

from __future__ import annotations

import json
import os
import secrets
import stat
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Final

from infra.config import Settings, SigningSettings
from settlement.errors import SettleError
from settlement.signing import InvalidKeyring, Keyring, SigningKey

SECRET_BYTES: Final = 32
FILE_MODE: Final = 0o600
KEYRING_FILE_NAME: Final = "signing-keyring.json"


class KeyringError(SettleError):
    """The keyring file is missing, unreadable, too widely readable or malformed."""


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def new_key(merchant_id: str, created_at_ms: int | None = None) -> SigningKey:
    """A fresh active key with a random 256-bit secret and an id that names its merchant."""
    created = now_ms() if created_at_ms is None else created_at_ms
    key_id = f"{merchant_id}.{secrets.token_hex(4)}"
    return SigningKey(key_id, merchant_id, secrets.token_bytes(SECRET_BYTES), "active", created)


def generate(merchant_ids: Iterable[str]) -> Keyring:
    """A keyring with one active key per merchant (an in-memory one for tests and smoke)."""
    created = now_ms()
    return Keyring(new_key(m, created) for m in sorted(set(merchant_ids)))


def load_keyring(path: Path) -> Keyring:
    """Read and check a keyring file; refuses a file readable by group or others."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise KeyringError(
            f"no keyring at {path}: create one with `settle keys init --out {path}`"
        ) from None
    except OSError as exc:
        raise KeyringError(f"cannot read keyring {path}: {exc}") from exc
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise KeyringError(
            f"keyring {path} has mode {stat.S_IMODE(mode):04o}: it holds secrets, "
            f"`chmod 600 {path}`"
        )
    try:
        document = json.loads(path.read_text("utf-8"))
    except (OSError, ValueError) as exc:
        raise KeyringError(f"keyring {path} is not readable JSON: {exc}") from exc
    try:
        return Keyring.from_document(document)
    except InvalidKeyring as exc:
        raise KeyringError(f"keyring {path}: {exc}") from exc


def save_keyring(path: Path, keyring: Keyring) -> None:
    """Write atomically (temp file + rename), created with mode 0600 so no window is readable."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            json.dump(keyring.to_document(), out, indent=2)
            out.write("\n")
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def init_keyring(path: Path, merchant_ids: Iterable[str], force: bool = False) -> Keyring:
    """Create a keyring with one active key per merchant; refuses to overwrite unless forced."""
    if path.exists() and not force:
        raise KeyringError(f"{path} exists; `settle keys rotate` adds keys, --force replaces it")
    keyring = generate(merchant_ids)
    if not len(keyring):
        raise KeyringError("no merchants to create keys for")
    save_keyring(path, keyring)
    return keyring


def rotate(path: Path, merchant_id: str) -> SigningKey:
    """Add a new active key for a merchant and retire its previous ones (they still verify)."""
    keyring = load_keyring(path)
    key = new_key(merchant_id)
    save_keyring(path, keyring.rotated(key))
    return key


def key_to_hand_over(path: Path, merchant_id: str) -> SigningKey:
    """The key a merchant must sign with: its newest active key; KeyringError if it has none.

    The error says whether the merchant is unknown to the keyring or has only retired keys,
    and never includes a secret.
    """
    keyring = load_keyring(path)
    key = keyring.signing_key_for(merchant_id)
    if key is not None:
        return key
    retired = [k.key_id for k in keyring if k.merchant_id == merchant_id]
    if retired:
        raise KeyringError(
            f"merchant {merchant_id!r} has no active key in {path} (retired: "
            f"{', '.join(retired)}): `settle keys rotate {merchant_id}` creates one"
        )
    raise KeyringError(
        f"merchant {merchant_id!r} has no key in {path}: `settle keys rotate {merchant_id}` "
        f"creates one (check the merchant id with `settle keys list`)"
    )


def remove(path: Path, key_id: str) -> None:
    """Delete a key: requests signed with it are rejected SIGNATURE_KEY_UNKNOWN from then on."""
    keyring = load_keyring(path)
    try:
        save_keyring(path, keyring.without(key_id))
    except InvalidKeyring as exc:
        raise KeyringError(str(exc)) from exc


def ensure_run_keyring(run_dir: Path, merchant_ids: Iterable[str],
                       signing: SigningSettings) -> Path | None:
    """The configured keyring, or one under `run_dir` made on first use (demo, e2e, bench).

    None when signatures are off and no keyring is configured (requests go unsigned).
    """
    if signing.keyring_path is not None:
        return signing.keyring_path
    if not signing.required:
        return None
    path = run_dir / KEYRING_FILE_NAME
    if not path.exists():
        init_keyring(path, merchant_ids)
    return path


def configured_keyring(settings: Settings) -> Keyring | None:
    """The keyring the settings point at; None when signatures are off and none is set.

    Required mode without a keyring is an error, raised here so a process fails at start.
    """
    path = settings.signing.keyring_path
    if path is None:
        if settings.signing.required:
            raise KeyringError(
                "SETTLE_SIGNATURES=required but SETTLE_SIGNING_KEYRING is not set: create a "
                "keyring with `settle keys init --out PATH` and point SETTLE_SIGNING_KEYRING "
                "at it, or set SETTLE_SIGNATURES=off"
            )
        return None
    return load_keyring(path)


class KeyringWatcher:
    """Reloads a keyring file when it changes, so a rotation reaches a running validator."""

    def __init__(self, path: Path, keyring: Keyring | None = None) -> None:
        self.path = path
        self._stamp = self._read_stamp()
        self.keyring = keyring if keyring is not None else load_keyring(path)

    def _read_stamp(self) -> tuple[int, int] | None:
        try:
            st = self.path.stat()
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size)

    def poll(self) -> Keyring | None:
        """The new keyring if the file changed since the last look, else None.

        A broken file (mid-edit, bad mode) keeps the old keyring and raises KeyringError so
        the caller can log it; the next poll tries again.
        """
        stamp = self._read_stamp()
        if stamp == self._stamp:
            return None
        keyring = load_keyring(self.path)
        self._stamp = stamp
        self.keyring = keyring
        return keyring
