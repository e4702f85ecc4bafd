"""Money recomputed from the topics alone, compared with the ledger and the batch tables.

What each merchant and currency is owed follows from three public topics: the net of every
MATCHED payment and every MATCHED_MANUAL one at its settled amount (reconciliation.results),
minus the net of every MATCHED refund (refunds.results), each less what the channel reversed
(PAYMENT_REVERSED, REFUND_REVERSED), minus what disputes hold or cost (disputes.results: an
OPENED dispute holds its amount, a WON one releases it, a LOST one keeps it and charges its
fee). Settlement must have batched exactly that (settlements.batches, and the
settlement_batches table), paid out Σ max(running balance, 0) and carried the rest; the
ledger's `payable:<m>` must hold what is not yet paid out, `payout_due:<m>` every payout, and
`dispute_hold:<m>` (like the disputes table's OPEN rows) what open disputes hold.
This module recomputes all of it independently of the stages' and sinks' own arithmetic and
reports, per currency, the amounts each side holds and every key where two sides disagree.
"""

from __future__ import annotations

import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import psycopg

from infra.config import Settings
from infra.kafka import make_consumer
from schemas.topics import CASE_EVENTS, DISPUTE_RESULTS, RECONCILIATION_RESULTS
from settle.audit_ingest import read_topic

Key = tuple[str, str]  # (merchant_id, currency)


@dataclass(slots=True)
class KeyMoney:
    """One merchant and currency, from every side."""

    payments_net: int = 0  # topic: Σ net of MATCHED (and MATCHED_MANUAL) payments, less reversed
    refunds_net: int = 0  # topic: Σ net of MATCHED refunds not reversed (positive)
    # topic: what disputes did to payable, signed: - held + released - lost fees
    disputes_net: int = 0
    held: int = 0  # topic: Σ opened - Σ won - Σ lost dispute amounts (what is on hold)
    released: int = 0  # topic: Σ amounts of disputes won after a hold
    lost: int = 0  # topic: Σ amounts of disputes lost
    dispute_fees: int = 0  # topic: Σ fees of lost disputes
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
    dispute_hold: int = 0  # ledger: credit balance of dispute_hold:<m>
    db_held: int = 0  # disputes table: Σ amount of the OPEN disputes

    @property
    def owed(self) -> int:
        return self.payments_net - self.refunds_net + self.disputes_net

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
            "held (topics) = dispute_hold (ledger) = OPEN disputes (table)":
                self.held == self.dispute_hold == self.db_held,
        }
        return [name for name, ok in checks.items() if not ok]


KeyOf = Callable[[str, str], KeyMoney]  # the KeyMoney of (merchant_id, currency), created


@dataclass(slots=True)
class Recomputation:
    keys: dict[Key, KeyMoney] = field(default_factory=dict)
    refund_outcomes: Counter[str] = field(default_factory=Counter)  # every result, deduped
    # One per refund: its final verdict (a late MATCHED after MISSING_CONFIRMATION counts
    # as MATCHED, as for payments).
    refund_terminal: Counter[str] = field(default_factory=Counter)
    payment_reversals: int = 0
    refund_reversals: int = 0
    manual_matches: int = 0  # MATCHED_MANUAL payments (a case's FORCE_MATCH or MARK_RECEIVED)
    dispute_events: Counter[str] = field(default_factory=Counter)  # every result, deduped
    case_events: Counter[str] = field(default_factory=Counter)  # by kind, deduped
    cases_by_status: Counter[str] = field(default_factory=Counter)  # each case's last status
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
            row["disputes_net"] += money.disputes_net
            row["held"] += money.held
            row["released"] += money.released
            row["lost"] += money.lost
            row["dispute_fees"] += money.dispute_fees
            row["dispute_hold"] += money.dispute_hold
        return {c: dict(v) for c, v in sorted(out.items())}


def beside(results_topic: str, name: str) -> str:
    """The contract topic `name` under the prefix `results_topic` carries (isolated runs)."""
    prefix = results_topic.removesuffix(RECONCILIATION_RESULTS)
    return prefix + name


def _settled_net(r: dict[str, Any]) -> int:
    """Net a MATCHED, MATCHED_MANUAL or PAYMENT_REVERSED result moves: its settled gross (the
    expected amount on results written before settled_amount_minor) less its fee."""
    gross = r.get("settled_amount_minor")
    if gross is None:
        gross = r["expected_amount_minor"]
    return int(gross) - int(r["fee_minor"])


def recompute(settings: Settings, conn: psycopg.Connection, decoder: Any, results_topic: str,
              refund_results_topic: str, batches_topic: str,
              dispute_results_topic: str | None = None,
              case_events_topic: str | None = None) -> Recomputation:
    """Recompute the money from the topics and compare it with the tables. The dispute
    results and case events topics default to the contract's, under results_topic's prefix."""
    out = Recomputation()
    disputes_topic = dispute_results_topic or beside(results_topic, DISPUTE_RESULTS)
    cases_topic = case_events_topic or beside(results_topic, CASE_EVENTS)

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
            if r["outcome"] in ("MATCHED", "MATCHED_MANUAL") and r["terminal"]:
                key(r["merchant_id"], r["expected_currency"]).payments_net += _settled_net(r)
                out.manual_matches += r["outcome"] == "MATCHED_MANUAL"
            elif r["outcome"] == "PAYMENT_REVERSED":
                key(r["merchant_id"], r["expected_currency"]).payments_net -= _settled_net(r)
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
        for rec in read_topic(consumer, disputes_topic):
            r = decoder.decode(rec.value)
            if r["result_id"] in seen:
                continue
            seen.add(r["result_id"])
            out.dispute_events[r["event"]] += 1
            _dispute_money(r, key)
        last_status: dict[str, str] = {}
        for rec in read_topic(consumer, cases_topic):
            e = decoder.decode(rec.value)
            if e["event_id"] in seen:
                continue
            seen.add(e["event_id"])
            out.case_events[e["kind"]] += 1
            if e["kind"] != "REFUSED":  # a refusal changes no case (it may name none)
                last_status[e["case_id"]] = e["status"]
        out.cases_by_status.update(last_status.values())
        batches: dict[str, dict[str, Any]] = {}
        for rec in read_topic(consumer, batches_topic):
            b = decoder.decode(rec.value)
            batches.setdefault(b["batch_id"], b)
    finally:
        consumer.close()
    _batches(out, batches.values(), key)
    _tables(conn, key)
    return out


def _dispute_money(r: dict[str, Any], key: KeyOf) -> None:
    """What one dispute result does to its merchant's money: OPENED holds the amount (out of
    payable), WON releases it (back into payable), LOST keeps it for good and charges the fee
    (out of payable); STAGE_CHANGED and REJECTED move nothing."""
    event, amount = r["event"], int(r["amount_minor"])
    if event not in ("OPENED", "WON", "LOST"):
        return
    money = key(r["merchant_id"], r["currency"])
    if event == "OPENED":
        money.held += amount
        money.disputes_net -= amount
    elif event == "WON":
        money.held -= amount
        money.released += amount
        money.disputes_net += amount
    else:
        money.held -= amount
        money.lost += amount
        money.dispute_fees += int(r["fee_minor"])
        money.disputes_net -= int(r["fee_minor"])


def _batches(out: Recomputation, batches: Iterable[dict[str, Any]], key: KeyOf) -> None:
    for b in sorted(batches, key=lambda b: (b["merchant_id"], b["currency"],
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


def _tables(conn: psycopg.Connection, key: KeyOf) -> None:
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
            OR j.account LIKE 'dispute_hold:%'
         GROUP BY 1, 2, 3""").fetchall()
    for kind, merchant, currency, balance in balances:
        money = key(merchant, currency.strip())
        if kind == "payable":
            money.payable = int(balance)
        elif kind == "payout_due":
            money.payout_due = int(balance)
        else:
            money.dispute_hold = int(balance)
    for merchant, currency, held in conn.execute("""
            SELECT merchant_id, currency, SUM(amount_minor) FROM disputes
             WHERE state = 'OPEN' GROUP BY 1, 2""").fetchall():
        key(merchant, currency.strip()).db_held = int(held)
