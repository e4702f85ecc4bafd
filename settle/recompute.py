"""Money recomputed from the topics alone, compared with the ledger and the batch tables.

What each merchant and currency is owed follows from two public topics: the net of every
MATCHED payment (reconciliation.results) minus the net of every MATCHED refund
(refunds.results), each less what the channel reversed (PAYMENT_REVERSED, REFUND_REVERSED).
Settlement must have batched exactly that (settlements.batches, and the
settlement_batches table), paid out Σ max(running balance, 0) and carried the rest; the
ledger's `payable:<m>` must hold what is not yet paid out, and `payout_due:<m>` every payout.
This module recomputes all of it independently of the stages' and sinks' own arithmetic and
reports, per currency, the amounts each side holds and every key where two sides disagree.
"""

from __future__ import annotations

import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

import psycopg

from infra.config import Settings
from infra.kafka import make_consumer
from settle.audit_ingest import read_topic

Key = tuple[str, str]  # (merchant_id, currency)


@dataclass(slots=True)
class KeyMoney:
    """One merchant and currency, from every side."""

    payments_net: int = 0  # topic: Σ net of MATCHED payments, less those the channel reversed
    refunds_net: int = 0  # topic: Σ net of MATCHED refunds not reversed (positive)
    batched_net: int = 0  # topic: Σ item net of its batches
    payouts: int = 0  # topic: Σ payout of its batches
    carried: int = 0  # topic: carried_out of its last batch (<= 0)
    # Batches written before payouts existed (payout_minor null) posted no payout journal:
    # their net is still in payable.
    legacy_net: int = 0
    db_batched_net: int = 0
    db_payouts: int = 0
    db_carried: int = 0
    db_legacy_net: int = 0
    payable: int = 0  # ledger: credit balance of payable:<m>
    payout_due: int = 0  # ledger: credit balance of payout_due:<m>

    @property
    def owed(self) -> int:
        return self.payments_net - self.refunds_net

    def disagreements(self) -> list[str]:
        # Every batch closed: the owed amount is entirely batched, paid or carried, and the
        # payable balance is the carried (negative) balance.
        checks = {
            "owed = batched (topics)": self.owed == self.batched_net,
            # Each close pays max(net + carried_in, 0) and carries the rest: Σ net = Σ payout
            # + the last carried_out.
            "batched = paid out + carried": self.batched_net
            == self.legacy_net + self.payouts + self.carried,
            "batches topic = batch table": (self.batched_net, self.payouts, self.carried,
                                            self.legacy_net)
            == (self.db_batched_net, self.db_payouts, self.db_carried, self.db_legacy_net),
            "payout_due = payouts": self.payout_due == self.payouts,
            "payable = carried": self.payable == self.carried + self.legacy_net,
        }
        return [name for name, ok in checks.items() if not ok]


@dataclass(slots=True)
class Recomputation:
    keys: dict[Key, KeyMoney] = field(default_factory=dict)
    refund_outcomes: Counter[str] = field(default_factory=Counter)  # every result, deduped
    # One per refund: its final verdict (a late MATCHED after MISSING_CONFIRMATION counts
    # as MATCHED, as for payments).
    refund_terminal: Counter[str] = field(default_factory=Counter)
    payment_reversals: int = 0
    refund_reversals: int = 0
    negative_batches: int = 0  # batches whose items net below 0
    carried_batches: int = 0  # batches that carried a balance out (paid 0)
    absorbing_batches: int = 0  # batches that took a carried balance in

    def mismatches(self) -> dict[Key, list[str]]:
        return {k: bad for k, m in self.keys.items() if (bad := m.disagreements())}

    @property
    def ok(self) -> bool:
        return not self.mismatches()

    def totals(self) -> dict[str, dict[str, int]]:
        """Per currency: each side's sum over every merchant."""
        out: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
        for (_m, currency), money in self.keys.items():
            row = out[currency]
            row["payments_net"] += money.payments_net
            row["refunds_net"] += money.refunds_net
            row["owed"] += money.owed
            row["batched_net"] += money.batched_net
            row["db_batched_net"] += money.db_batched_net
            row["payouts"] += money.payouts
            row["payout_due"] += money.payout_due
            row["carried"] += money.carried
            row["payable"] += money.payable
        return {c: dict(v) for c, v in sorted(out.items())}


def recompute(settings: Settings, conn: psycopg.Connection, decoder: Any, results_topic: str,
              refund_results_topic: str, batches_topic: str) -> Recomputation:
    out = Recomputation()

    def key(merchant: str, currency: str) -> KeyMoney:
        return out.keys.setdefault((merchant, currency), KeyMoney())

    consumer = make_consumer(settings.kafka, group_id=f"settle-recompute-{uuid.uuid4()}")
    try:
        seen: set[str] = set()
        for rec in read_topic(consumer, results_topic):
            r = decoder.decode(rec.value)
            if r["result_id"] in seen:
                continue
            seen.add(r["result_id"])
            if r["outcome"] == "MATCHED" and r["terminal"]:
                gross, fee = r["expected_amount_minor"], r["fee_minor"]
                key(r["merchant_id"], r["expected_currency"]).payments_net += gross - fee
            elif r["outcome"] == "PAYMENT_REVERSED":
                gross, fee = r["expected_amount_minor"], r["fee_minor"]
                key(r["merchant_id"], r["expected_currency"]).payments_net -= gross - fee
                out.payment_reversals += 1
        verdicts: dict[tuple[str, str], str] = {}
        for rec in read_topic(consumer, refund_results_topic):
            r = decoder.decode(rec.value)
            if r["result_id"] in seen:
                continue
            seen.add(r["result_id"])
            out.refund_outcomes[r["outcome"]] += 1
            if r["terminal"]:
                verdicts[(r["payment_id"], r["refund_id"])] = r["outcome"]
            if r["outcome"] == "MATCHED" and r["terminal"]:
                amount, back = r["amount_minor"], r["fee_returned_minor"]
                key(r["merchant_id"], r["currency"]).refunds_net += amount - back
            elif r["outcome"] == "REFUND_REVERSED":
                amount, back = r["amount_minor"], r["fee_returned_minor"]
                key(r["merchant_id"], r["currency"]).refunds_net -= amount - back
                out.refund_reversals += 1
        out.refund_terminal.update(verdicts.values())
        batches: dict[str, dict[str, Any]] = {}
        for rec in read_topic(consumer, batches_topic):
            b = decoder.decode(rec.value)
            batches.setdefault(b["batch_id"], b)
    finally:
        consumer.close()
    for b in sorted(batches.values(), key=lambda b: (b["merchant_id"], b["currency"],
                                                      b["window_start"])):
        money = key(b["merchant_id"], b["currency"])
        money.batched_net += sum(i["net_minor"] for i in b["items"])
        # Decoded with its writer's schema: a batch written before payouts has none of the
        # newer fields (their defaults: no payout, nothing carried).
        payout = b.get("payout_minor")
        carried_out, carried_in = b.get("carried_out_minor", 0), b.get("carried_in_minor", 0)
        if payout is None:
            money.legacy_net += b["net_minor"]
        else:
            money.payouts += payout
        money.carried = carried_out
        out.negative_batches += b["net_minor"] < 0
        out.carried_batches += carried_out < 0
        out.absorbing_batches += carried_in < 0
    rows = conn.execute("""
        SELECT merchant_id, currency, SUM(net_minor), COALESCE(SUM(payout_minor), 0),
               (ARRAY_AGG(carried_out_minor ORDER BY window_start DESC))[1],
               COALESCE(SUM(net_minor) FILTER (WHERE payout_minor IS NULL), 0)
          FROM settlement_batches GROUP BY 1, 2""").fetchall()
    for merchant, currency, net, payouts, carried, legacy in rows:
        money = key(merchant, currency.strip())
        money.db_batched_net, money.db_payouts, money.db_carried, money.db_legacy_net = (
            int(net), int(payouts), int(carried), int(legacy))
    balances = conn.execute("""
        SELECT split_part(j.account, ':', 1), substr(j.account, strpos(j.account, ':') + 1),
               j.currency, SUM(CASE WHEN j.side = 'CREDIT' THEN j.amount_minor
                                    ELSE -j.amount_minor END)
          FROM ledger_entries j
         WHERE j.account LIKE 'payable:%' OR j.account LIKE 'payout_due:%'
         GROUP BY 1, 2, 3""").fetchall()
    for kind, merchant, currency, balance in balances:
        money = key(merchant, currency.strip())
        if kind == "payable":
            money.payable = int(balance)
        else:
            money.payout_due = int(balance)
    return out
