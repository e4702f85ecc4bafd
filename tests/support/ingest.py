"""The validate+route stage's sample merchants, keyring and request, for its unit tests."""

from __future__ import annotations

from typing import Any

from settlement.model import Merchant
from settlement.signing import Keyring, SigningKey

NOW_MS = 1_764_000_000_000

MERCHANTS = {
    "m-1": Merchant("m-1", "Shop", "ACTIVE", "CNY", NOW_MS),
    "m-off": Merchant("m-off", "Closed", "SUSPENDED", "CNY", NOW_MS),
    "m-2": Merchant("m-2", "Other shop", "ACTIVE", "CNY", NOW_MS),
}
KEY_1 = SigningKey("m-1.k1", "m-1", b"1" * 32, "active", 0)
KEYRING = Keyring([KEY_1, SigningKey("m-off.k1", "m-off", b"2" * 32, "active", 0),
                   SigningKey("m-2.k1", "m-2", b"3" * 32, "active", 0)])


def request(**over: Any) -> dict[str, Any]:
    rec = {
        "payment_id": "p-1", "merchant_id": "m-1", "order_id": "o-1", "payer_id": "u-1",
        "amount_minor": 1000, "currency": "CNY", "method": "ALIPAY", "interface": "APP",
        "region": "CN", "created_at": NOW_MS - 1000, "metadata": {},
    }
    rec.update(over)
    return rec
