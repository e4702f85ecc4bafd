"""Ledger sink journals of payment results (pure): the PAYMENT journal of a MATCHED or
MATCHED_MANUAL result and the mirror of a PAYMENT_REVERSED one, every amount checked."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from settlement.fees import FeeSchedule
from settlement.postings_v2 import KindJournal, payment_journal, payment_reversal_journal
from sinks import fields as f
from sinks.errors import InvalidRecord
from sinks.refund_rows import Reversal


def matched_journal(result: Mapping[str, Any], payment_id: str, channel: str | None,
                     fees: FeeSchedule) -> KindJournal:
    merchant_id = f.text(result, "merchant_id", required=False)
    if merchant_id is None or channel is None:
        raise InvalidRecord("a MATCHED result needs merchant_id and channel to post a journal")
    gross = f.amount(result, "expected_amount_minor")
    currency = f.currency(result, "expected_currency")
    confirmed = (f.amount(result, "confirmed_amount_minor"),
                 f.currency(result, "confirmed_currency"))
    if gross is None or currency is None or (gross, currency) != confirmed:
        raise InvalidRecord(
            f"MATCHED needs equal expected and confirmed amounts: expected "
            f"{(gross, currency)}, confirmed {confirmed}"
        )
    if gross <= 0:
        raise InvalidRecord(f"a MATCHED amount must be > 0, got {gross}")
    settled = f.amount(result, "settled_amount_minor")
    if settled is not None and settled != gross:
        raise InvalidRecord(f"a MATCHED result settles its expected amount {gross}, "
                            f"not {settled}")
    fee, net = f.amount(result, "fee_minor"), f.amount(result, "net_minor")
    if fee is None and net is None:
        # Older results carry no split: the same schedule the reconciler uses decides it.
        fee = fees.fee_for(channel, gross)
    elif fee is None or net is None:
        raise InvalidRecord("fee_minor and net_minor must both be set or both be null")
    elif fee < 0 or net < 0 or fee + net != gross:
        raise InvalidRecord(f"fee_minor {fee} + net_minor {net} != gross {gross} (or negative)")
    # Checked again where it is built: balanced, gross = net + fee, debits = gross.
    return payment_journal(payment_id, merchant_id, channel, gross, fee, currency)


def manual_journal(result: Mapping[str, Any], payment_id: str, channel: str | None
                    ) -> KindJournal:
    """The PAYMENT journal of a MATCHED_MANUAL result, at its settled amount: the confirmed
    amount when a confirmation stands behind it (a force-match), else the expected one (a
    mark-received); fee and net are the record's, checked to add up to it."""
    merchant_id = f.text(result, "merchant_id", required=False)
    if merchant_id is None or channel is None:
        raise InvalidRecord("a MATCHED_MANUAL result needs merchant_id and channel to post")
    settled = f.amount(result, "settled_amount_minor")
    currency = f.currency(result, "expected_currency")
    expected = f.amount(result, "expected_amount_minor")
    confirmed = (f.amount(result, "confirmed_amount_minor"),
                 f.currency(result, "confirmed_currency"))
    fee, net = f.amount(result, "fee_minor"), f.amount(result, "net_minor")
    if settled is None or currency is None or fee is None or net is None:
        raise InvalidRecord("a MATCHED_MANUAL result needs settled_amount_minor, "
                            "expected_currency, fee_minor and net_minor")
    wanted = confirmed[0] if confirmed[0] is not None else expected
    if settled <= 0 or settled != wanted or confirmed[1] not in (None, currency):
        raise InvalidRecord(
            f"MATCHED_MANUAL settles {settled} {currency}: it must be > 0 and the confirmed "
            f"amount {confirmed}, else the expected {expected}, in the payment's currency")
    if fee < 0 or net < 0 or fee + net != settled:
        raise InvalidRecord(f"MATCHED_MANUAL: fee_minor {fee} + net_minor {net} != settled "
                            f"{settled} (or negative)")
    f.required_text(result, "case_id")
    f.required_text(result, "operator")
    f.text(result, "approver", required=False)
    return payment_journal(payment_id, merchant_id, channel, settled, fee, currency)


def payment_reversal(result: Mapping[str, Any], result_id: str, payment_id: str,
                      channel: str | None, decided_at: datetime) -> Reversal:
    """A PAYMENT_REVERSED result: the mirror of the payment's journal, from the split the
    reconciler published (G = expected_amount_minor, F = fee_minor, net = G - F)."""
    merchant_id = f.text(result, "merchant_id", required=False)
    if merchant_id is None or channel is None:
        raise InvalidRecord("a PAYMENT_REVERSED result needs merchant_id and channel to post")
    gross = f.amount(result, "expected_amount_minor")
    currency = f.currency(result, "expected_currency")
    fee, net = f.amount(result, "fee_minor"), f.amount(result, "net_minor")
    if gross is None or currency is None or fee is None or net is None:
        raise InvalidRecord("a PAYMENT_REVERSED result needs expected_amount_minor, "
                            "expected_currency, fee_minor and net_minor")
    confirmed = (f.amount(result, "confirmed_amount_minor"),
                 f.currency(result, "confirmed_currency"))
    if confirmed != (None, None) and confirmed != (gross, currency):
        raise InvalidRecord(f"PAYMENT_REVERSED of {(gross, currency)} but the channel "
                            f"reversed {confirmed}")
    if gross <= 0 or fee < 0 or net < 0 or net != gross - fee:
        raise InvalidRecord(f"PAYMENT_REVERSED of payment {payment_id}: need G > 0, F >= 0 and "
                            f"net = G - F >= 0; got G={gross} F={fee} net={net}")
    journal = payment_reversal_journal(payment_id, merchant_id, channel, gross, fee, net,
                                       currency)
    return Reversal(result_id, payment_id, None, journal, decided_at)
