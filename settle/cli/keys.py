"""`settle keys`: the merchant signing keyring (init, rotate, remove, list, show-secret).

Only `show-secret` ever prints a secret: alone on stdout, every other word on stderr.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import click
from rich.table import Table

from infra.keyring import KeyringError
from settle.cli.common import console, err_console, settings

F = TypeVar("F", bound=Callable[..., Any])
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_OUT = click.Path(dir_okay=False, path_type=Path)


def _keyring_path(path: Path | None) -> Path:
    chosen = path or settings().signing.keyring_path
    if chosen is None:
        raise KeyringError("no keyring path: pass --keyring PATH or set SETTLE_SIGNING_KEYRING")
    return chosen


def _keyring_option(command: F) -> F:
    return click.option(
        "--keyring", "keyring_path", type=_OUT, default=None,
        help="Keyring file (default SETTLE_SIGNING_KEYRING).",
    )(command)


@click.group("keys")
def keys() -> None:
    """Merchant request-signing keys (HMAC-SHA256), kept in a JSON keyring file of mode 0600.

    The validate worker verifies every payment request against the keyring named by
    SETTLE_SIGNING_KEYRING; producers sign with each merchant's newest active key. Never
    commit the keyring.
    """


@keys.command("init")
@click.option("--merchants", "merchants_file", type=click.Path(exists=True, dir_okay=False,
              path_type=Path), default=None,
              help="Merchants file (default: the bundled sample merchants).")
@click.option("--out", "out", type=_OUT, default=None,
              help="Where to write the keyring (default SETTLE_SIGNING_KEYRING).")
@click.option("--force", is_flag=True, help="Replace an existing keyring (revokes every key).")
def keys_init(merchants_file: Path | None, out: Path | None, force: bool) -> None:
    """Create a keyring with one random active key per merchant of a merchants file."""
    from infra.keyring import init_keyring
    from producers.merchants import load_merchants, sample_merchants_path

    path = _keyring_path(out)
    entries = load_merchants(merchants_file or sample_merchants_path())
    keyring = init_keyring(path, [e.merchant_id for e in entries], force=force)
    console.print(f"[green]✓[/] {len(keyring)} keys for {len(keyring.merchants())} merchants "
                  f"written to {path} (mode 0600)")
    console.print(f"  export SETTLE_SIGNING_KEYRING={path}")


@keys.command("rotate")
@click.argument("merchant_id")
@_keyring_option
def keys_rotate(merchant_id: str, keyring_path: Path | None) -> None:
    """Add a new active key for MERCHANT_ID; its older keys are retired (they still verify).

    A running validate worker reloads the file within seconds; remove a retired key with
    `settle keys remove KEY_ID` once no request signed with it can still arrive.
    """
    from infra.keyring import rotate

    path = _keyring_path(keyring_path)
    key = rotate(path, merchant_id)
    console.print(f"[green]✓[/] new active key {key.key_id} for {merchant_id} in {path}")


@keys.command("remove")
@click.argument("key_id")
@_keyring_option
def keys_remove(key_id: str, keyring_path: Path | None) -> None:
    """Delete KEY_ID: requests signed with it are rejected SIGNATURE_KEY_UNKNOWN from then on."""
    from infra.keyring import remove

    path = _keyring_path(keyring_path)
    remove(path, key_id)
    console.print(f"[green]✓[/] removed {key_id} from {path}")


@keys.command("list")
@click.option("--merchant", "merchant_id", default=None, help="Only this merchant's keys.")
@_keyring_option
def keys_list(merchant_id: str | None, keyring_path: Path | None) -> None:
    """Show key ids, merchant, status and creation time (never the secrets)."""
    from infra.keyring import load_keyring

    path = _keyring_path(keyring_path)
    keyring = load_keyring(path)
    table = Table(title=f"signing keys in {path}")
    for column in ("key id", "merchant", "status", "created (UTC)", "signs"):
        table.add_column(column)
    for key in keyring:
        if merchant_id is not None and key.merchant_id != merchant_id:
            continue
        created = _EPOCH + timedelta(milliseconds=key.created_at_ms)
        signing = keyring.signing_key_for(key.merchant_id)
        signs = signing is not None and signing.key_id == key.key_id
        table.add_row(key.key_id, key.merchant_id, key.status,
                      created.strftime("%Y-%m-%d %H:%M:%S"), "✓" if signs else "")
    console.print(table)


@keys.command("show-secret")
@click.argument("merchant_id")
@click.option("--json", "as_json", is_flag=True,
              help='Print {"merchant_id", "key_id", "secret_hex"} as one JSON line instead '
                   "of the bare secret.")
@_keyring_option
def keys_show_secret(merchant_id: str, as_json: bool, keyring_path: Path | None) -> None:
    """Print the secret MERCHANT_ID signs with (its newest active key), to hand it over.

    stdout gets the secret alone (the HMAC key, hex-encoded), or with --json
    one line with the merchant id, key id and secret; the key id, what to do with it and any
    error go to stderr, so `settle keys show-secret m-0001 > file` captures the secret only.
    Nothing is logged or written anywhere else. Hand the secret to the merchant over a secure
    channel; if it may have leaked, `settle keys rotate MERCHANT_ID` replaces it.

    Fails (exit status 1) when the keyring is missing or unreadable, or when the merchant has
    no key in it or only retired ones.
    """
    from infra.keyring import key_to_hand_over

    path = _keyring_path(keyring_path)
    key = key_to_hand_over(path, merchant_id)
    created = _EPOCH + timedelta(milliseconds=key.created_at_ms)
    if as_json:
        click.echo(json.dumps({"merchant_id": key.merchant_id, "key_id": key.key_id,
                               "secret_hex": key.secret.hex()}))
    else:
        click.echo(key.secret.hex())
    err_console.print(
        f"key {key.key_id} of merchant {key.merchant_id} (active, created "
        f"{created:%Y-%m-%d %H:%M:%S} UTC) from {path}: the merchant puts {key.key_id} in "
        "signature_key_id and signs with the secret hex-decoded (HMAC-SHA256). Hand it over "
        "a secure channel; `settle keys rotate` replaces it.",
        soft_wrap=True,
    )
