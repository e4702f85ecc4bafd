"""One payment as the API shows it: its row, its current refunds, disputes and cases, and a
timeline of everything that happened to it.

Every query runs on a connection from `api.db.reading` (row-level security applies) and,
for a merchant key, also names the merchant (or, for postings, the merchant's own accounts):
the two layers the API promises. The queries depend on the payment id only, so they go to
the server together in one pipeline (one round trip); when the payment is not found (or
not the key's) the rest is dropped unread. Times are RFC 3339 text from SQL (`ts_text`),
which sorts chronologically as text, so the timeline is ordered without parsing them back.

Timeline events, each `{"at", "kind", ...}`:

- `requested` (created_at): the order system's request: order id, amount, and the channel
  it was routed to;
- `exception` (decided_at): a reconciliation result other than a match;
- `reconciled` (decided_at): the payment's terminal decision (payments.result_id);
- `reversed` (reversed_at): the channel took the captured payment back;
- `journal` (posted_at): a ledger journal of the payment with its postings;
- `settled` (the batch's closed_at): an item of the payment in a closed settlement batch;
- `refund_requested`, `refund_decided`, `refund_reversed`, `refund_exception`: a refund's
  steps and its results other than a match (its latest state is in `refunds`);
- `dispute_opened`, `dispute_closed`, `dispute_rejected`: a dispute's steps and its records
  that could not be applied (its latest state is in `disputes`);
- `case_event` (occurred_at): a step of an exception case (`cases`): opened, proposed,
  rejected, resolved or refused.

A payment's decision is stored once, as its latest state: `reconciled` shows the outcome
that decided it (a reversed payment was MATCHED, or MATCHED_MANUAL when an operator's case
settled it); earlier results it replaced are its `exception` events.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

import psycopg

from api.money import money
from api.routes.shared import ts_text
from settlement.currencies import is_known

# The list's flat columns (payments p): the CSV export's header and the JSON object's source.
PAYMENT_FIELDS: Final = ("payment_id", "merchant_id", "channel", "order_id", "amount_minor",
                         "currency", "state", "late", "created_at", "decided_at", "reversed_at",
                         "case_id")
PAYMENT_COLUMNS: Final = f"""
       p.payment_id, p.merchant_id, p.channel, p.order_id, p.amount_minor, p.currency, p.state,
       p.late, {ts_text('p.created_at')} AS created_at, {ts_text('p.decided_at')} AS decided_at,
       {ts_text('p.reversed_at')} AS reversed_at, p.case_id"""

# Accounts a merchant key sees postings on (settlement/postings_v2.py's merchant accounts).
MERCHANT_ACCOUNT_KINDS: Final = ("payable", "payout_due", "dispute_hold")

# Order of events that share a time: cause before effect (a decision, then its journal).
_KIND_RANK: Final = {kind: rank for rank, kind in enumerate((
    "requested", "exception", "reconciled", "reversed", "refund_requested", "refund_exception",
    "refund_decided", "refund_reversed", "dispute_rejected", "dispute_opened", "dispute_closed",
    "case_event", "journal", "settled"))}


def shown_money(amount_minor: int | None, currency: str | None) -> dict[str, Any] | None:
    """`api.money.money`, also for a currency that is not ISO 4217 (a rejected record may
    carry one as it was sent): then the exponent is null."""
    if amount_minor is None or currency is None:
        return None
    if not is_known(currency):
        return {"amount_minor": int(amount_minor), "currency": currency, "exponent": None}
    return money(amount_minor, currency)


def payment_object(row: Mapping[str, Any]) -> dict[str, Any]:
    """A row of PAYMENT_COLUMNS as the API's payment object."""
    return {
        "object": "payment",
        "id": row["payment_id"],
        "merchant_id": row["merchant_id"],
        "channel": row["channel"],
        "order_id": row["order_id"],
        "amount": shown_money(row["amount_minor"], row["currency"]),
        "state": row["state"],
        "late": row["late"],
        "created_at": row["created_at"],
        "decided_at": row["decided_at"],
        "reversed_at": row["reversed_at"],
        "case_id": row["case_id"],
    }


def merchant_accounts(merchant: str) -> list[str]:
    return [f"{kind}:{merchant}" for kind in MERCHANT_ACCOUNT_KINDS]


def _mine(alias: str, merchant: str | None) -> str:
    """The query's own merchant condition (row-level security is the second layer)."""
    return f" AND {alias}.merchant_id = %(merchant)s" if merchant is not None else ""


def _queries(merchant: str | None) -> dict[str, str]:
    """The detail's queries by part, each with the parameters id, merchant, accounts."""
    accounts = "" if merchant is None else " AND e.account = ANY(%(accounts)s)"
    return {
        "payment": f"""
            SELECT {PAYMENT_COLUMNS}, p.result_id, p.reversal_result_id, p.operator,
                   p.approver
              FROM payments p
             WHERE p.payment_id = %(id)s{_mine('p', merchant)}""",
        "exceptions": f"""
            SELECT e.result_id, e.outcome, e.expected_amount_minor, e.expected_currency,
                   e.confirmed_amount_minor, e.confirmed_currency, e.confirmation_id,
                   e.channel_txn_id, e.detail, {ts_text('e.decided_at')} AS decided_at,
                   c.case_id, c.status AS case_status
              FROM reconciliation_exceptions e
              LEFT JOIN exception_cases c ON c.opened_by = e.result_id
             WHERE e.payment_id = %(id)s{_mine('e', merchant)}
             ORDER BY e.decided_at, e.result_id""",
        "journals": f"""
            SELECT j.journal_id, j.kind, j.source_id, j.currency, j.gross_minor, j.fee_minor,
                   j.net_minor, {ts_text('j.posted_at')} AS posted_at
              FROM ledger_journals j
             WHERE j.payment_id = %(id)s
             ORDER BY j.posted_at, j.journal_id""",
        "entries": f"""
            SELECT e.journal_id, e.account, e.side, e.amount_minor, e.currency
              FROM ledger_entries e
             WHERE e.journal_id IN (SELECT j.journal_id FROM ledger_journals j
                                     WHERE j.payment_id = %(id)s){accounts}
             ORDER BY e.journal_id, e.side DESC, e.account""",
        "settled": f"""
            SELECT i.batch_id, i.kind, i.item_id, i.gross_minor, i.fee_minor, i.net_minor,
                   b.currency, {ts_text('b.window_start')} AS window_start,
                   {ts_text('b.window_end')} AS window_end,
                   {ts_text('b.closed_at')} AS closed_at
              FROM settlement_batch_items i
              JOIN settlement_batches b ON b.batch_id = i.batch_id
             WHERE i.payment_id = %(id)s{_mine('b', merchant)}
             ORDER BY b.closed_at, i.batch_id, i.kind, i.item_id""",
        "refunds": f"""
            SELECT r.refund_id, r.state, r.late, r.result_id, r.amount_minor, r.currency,
                   r.fee_returned_minor, r.net_minor, r.reversal_result_id,
                   {ts_text('r.requested_at')} AS requested_at,
                   {ts_text('r.decided_at')} AS decided_at,
                   {ts_text('r.reversed_at')} AS reversed_at
              FROM refunds r
             WHERE r.payment_id = %(id)s{_mine('r', merchant)}
             ORDER BY r.refund_id""",
        "refund_exceptions": f"""
            SELECT x.result_id, x.refund_id, x.outcome, x.amount_minor, x.currency,
                   x.confirmed_amount_minor, x.confirmed_currency, x.confirmation_id,
                   x.channel_refund_id, x.detail, {ts_text('x.decided_at')} AS decided_at,
                   c.case_id, c.status AS case_status
              FROM refund_exceptions x
              LEFT JOIN exception_cases c ON c.opened_by = x.result_id
             WHERE x.payment_id = %(id)s{_mine('x', merchant)}
             ORDER BY x.decided_at, x.result_id""",
        "disputes": f"""
            SELECT d.dispute_id, d.channel_dispute_id, d.stage, d.status, d.state,
                   d.amount_minor, d.currency, d.fee_minor, d.funds_withdrawn, d.reason_code,
                   d.opened_result_id, d.closed_result_id,
                   {ts_text('d.respond_by')} AS respond_by,
                   {ts_text('d.opened_at')} AS opened_at, {ts_text('d.closed_at')} AS closed_at
              FROM disputes d
             WHERE d.payment_id = %(id)s{_mine('d', merchant)}
             ORDER BY d.dispute_id""",
        "rejections": f"""
            SELECT x.result_id, x.dispute_id, x.channel_dispute_id, x.stage, x.status,
                   x.amount_minor, x.currency, x.fee_minor, x.reasons, x.reason_code,
                   x.detail, {ts_text('x.decided_at')} AS decided_at,
                   c.case_id, c.status AS case_status
              FROM dispute_rejections x
              LEFT JOIN exception_cases c ON c.opened_by = x.result_id
             WHERE x.payment_id = %(id)s{_mine('x', merchant)}
             ORDER BY x.decided_at, x.result_id""",
        "cases": f"""
            SELECT c.case_id, c.subject, c.subject_id, c.outcome, c.opened_by, c.amount_minor,
                   c.currency, c.status, c.resolution, c.operator, c.approver, c.remark,
                   {ts_text('c.opened_at')} AS opened_at,
                   {ts_text('c.resolved_at')} AS resolved_at
              FROM exception_cases c
             WHERE c.payment_id = %(id)s{_mine('c', merchant)}
             ORDER BY c.case_id""",
        "case_events": f"""
            SELECT v.event_id, v.case_id, v.kind, v.status, v.resolution, v.operator,
                   v.approver, v.remark, v.reason, v.amount_minor, v.currency,
                   {ts_text('v.occurred_at')} AS occurred_at
              FROM case_events v
             WHERE v.case_id IN (SELECT c.case_id FROM exception_cases c
                                  WHERE c.payment_id = %(id)s{_mine('c', merchant)})
             ORDER BY v.occurred_at, v.event_id""",
    }


async def payment_detail(conn: psycopg.AsyncConnection[Any], payment_id: str, *,
                         merchant: str | None) -> dict[str, Any] | None:
    """The payment object with `refunds`, `disputes`, `cases`, `batch_ids` and `timeline`;
    None when there is no such payment or `merchant` (a merchant key's) is not its merchant."""
    params = {"id": payment_id, "merchant": merchant,
              "accounts": merchant_accounts(merchant) if merchant is not None else None}
    queries = _queries(merchant)
    async with conn.pipeline():
        cursors = {part: await conn.execute(sql, params) for part, sql in queries.items()}
    found = await cursors["payment"].fetchall()
    if not found:
        return None
    rows = {part: list(await cur.fetchall()) for part, cur in cursors.items()}
    row = found[0]
    events = _payment_events(row)
    events += _exception_events(rows["exceptions"])
    events += _journal_events(rows["journals"], rows["entries"], payment_id)
    settled = _settled_events(rows["settled"])
    refunds, refund_events = _refunds(rows["refunds"], rows["refund_exceptions"], payment_id)
    disputes, dispute_events = _disputes(rows["disputes"], rows["rejections"], payment_id)
    cases, case_events = _cases(rows["cases"], rows["case_events"], payment_id)
    events += settled + refund_events + dispute_events + case_events
    events.sort(key=lambda e: (e["at"] or "", _KIND_RANK[e["kind"]]))
    obj = payment_object(row)
    obj.update(result_id=row["result_id"], reversal_result_id=row["reversal_result_id"],
               operator=row["operator"], approver=row["approver"],
               batch_ids=sorted({e["batch_id"] for e in settled}),
               refunds=refunds, disputes=disputes, cases=cases, timeline=events)
    return obj


def _payment_events(row: Mapping[str, Any]) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = [
        {"at": row["created_at"], "kind": "requested", "order_id": row["order_id"],
         "channel": row["channel"], "amount": shown_money(row["amount_minor"], row["currency"])}]
    decided_as = row["state"]
    if decided_as == "REVERSED":
        decided_as = "MATCHED_MANUAL" if row["operator"] is not None else "MATCHED"
    events.append({"at": row["decided_at"], "kind": "reconciled", "result_id": row["result_id"],
                   "outcome": decided_as, "late": row["late"], "case_id": row["case_id"],
                   "operator": row["operator"], "approver": row["approver"]})
    if row["reversed_at"] is not None:
        events.append({"at": row["reversed_at"], "kind": "reversed",
                       "result_id": row["reversal_result_id"]})
    return events


def _exception_events(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{"at": r["decided_at"], "kind": "exception", "result_id": r["result_id"],
             "outcome": r["outcome"],
             "expected": shown_money(r["expected_amount_minor"], r["expected_currency"]),
             "confirmed": shown_money(r["confirmed_amount_minor"], r["confirmed_currency"]),
             "confirmation_id": r["confirmation_id"], "channel_txn_id": r["channel_txn_id"],
             "detail": r["detail"], "case_id": r["case_id"], "case_status": r["case_status"]}
            for r in rows]


def _journal_events(journals: list[dict[str, Any]], entries: list[dict[str, Any]],
                    payment_id: str) -> list[dict[str, Any]]:
    postings: dict[str, list[dict[str, Any]]] = {}
    for e in entries:
        postings.setdefault(e["journal_id"], []).append(
            {"account": e["account"], "side": e["side"],
             "amount": shown_money(e["amount_minor"], e["currency"])})
    prefix = len(payment_id) + 1
    return [{"at": j["posted_at"], "kind": "journal", "journal_id": j["journal_id"],
             "journal_kind": j["kind"], "source_id": j["source_id"],
             # REFUND*: '<payment>/<refund>', DISPUTE_*: '<payment>/<dispute>'
             "refund_id": j["source_id"][prefix:] if j["kind"].startswith("REFUND") else None,
             "dispute_id": j["source_id"][prefix:] if j["kind"].startswith("DISPUTE") else None,
             "gross": shown_money(j["gross_minor"], j["currency"]),
             "fee": shown_money(j["fee_minor"], j["currency"]),
             "net": shown_money(j["net_minor"], j["currency"]),
             "postings": postings.get(j["journal_id"], [])}
            for j in journals]


def _settled_events(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{"at": r["closed_at"], "kind": "settled", "batch_id": r["batch_id"],
             "item_kind": r["kind"], "item_id": r["item_id"],
             "gross": shown_money(r["gross_minor"], r["currency"]),
             "fee": shown_money(r["fee_minor"], r["currency"]),
             "net": shown_money(r["net_minor"], r["currency"]),
             "window_start": r["window_start"], "window_end": r["window_end"]}
            for r in rows]


def _refunds(rows: list[dict[str, Any]], exceptions: list[dict[str, Any]],
             payment_id: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    refunds: list[dict[str, Any]] = []
    events: list[dict[str, Any]] = []
    for r in rows:
        amount = shown_money(r["amount_minor"], r["currency"])
        refunds.append({
            "object": "refund", "id": r["refund_id"], "payment_id": payment_id,
            "state": r["state"], "late": r["late"], "amount": amount,
            "fee_returned": shown_money(r["fee_returned_minor"], r["currency"]),
            "net": shown_money(r["net_minor"], r["currency"]), "result_id": r["result_id"],
            "requested_at": r["requested_at"], "decided_at": r["decided_at"],
            "reversed_at": r["reversed_at"], "reversal_result_id": r["reversal_result_id"]})
        if r["requested_at"] is not None:
            events.append({"at": r["requested_at"], "kind": "refund_requested",
                           "refund_id": r["refund_id"], "amount": amount})
        events.append({"at": r["decided_at"], "kind": "refund_decided",
                       "refund_id": r["refund_id"], "result_id": r["result_id"],
                       "outcome": "MATCHED" if r["state"] == "REVERSED" else r["state"],
                       "late": r["late"]})
        if r["reversed_at"] is not None:
            events.append({"at": r["reversed_at"], "kind": "refund_reversed",
                           "refund_id": r["refund_id"], "result_id": r["reversal_result_id"]})
    for r in exceptions:
        events.append({
            "at": r["decided_at"], "kind": "refund_exception", "refund_id": r["refund_id"],
            "result_id": r["result_id"], "outcome": r["outcome"],
            "amount": shown_money(r["amount_minor"], r["currency"]),
            "confirmed": shown_money(r["confirmed_amount_minor"], r["confirmed_currency"]),
            "confirmation_id": r["confirmation_id"],
            "channel_refund_id": r["channel_refund_id"], "detail": r["detail"],
            "case_id": r["case_id"], "case_status": r["case_status"]})
    return refunds, events


def _disputes(rows: list[dict[str, Any]], rejections: list[dict[str, Any]],
              payment_id: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    disputes: list[dict[str, Any]] = []
    events: list[dict[str, Any]] = []
    for d in rows:
        amount = shown_money(d["amount_minor"], d["currency"])
        fee = shown_money(d["fee_minor"], d["currency"])
        disputes.append({
            "object": "dispute", "id": d["dispute_id"], "payment_id": payment_id,
            "channel_dispute_id": d["channel_dispute_id"], "stage": d["stage"],
            "status": d["status"], "state": d["state"], "amount": amount, "fee": fee,
            "funds_withdrawn": d["funds_withdrawn"], "reason_code": d["reason_code"],
            "respond_by": d["respond_by"], "opened_at": d["opened_at"],
            "closed_at": d["closed_at"]})
        if d["opened_at"] is not None:
            events.append({"at": d["opened_at"], "kind": "dispute_opened",
                           "dispute_id": d["dispute_id"], "result_id": d["opened_result_id"],
                           "amount": amount})
        if d["closed_at"] is not None:
            events.append({"at": d["closed_at"], "kind": "dispute_closed",
                           "dispute_id": d["dispute_id"], "result_id": d["closed_result_id"],
                           "state": d["state"], "fee": fee})
    for r in rejections:
        events.append({
            "at": r["decided_at"], "kind": "dispute_rejected", "dispute_id": r["dispute_id"],
            "result_id": r["result_id"], "channel_dispute_id": r["channel_dispute_id"],
            "stage": r["stage"], "status": r["status"],
            "amount": shown_money(r["amount_minor"], r["currency"]),
            "fee": shown_money(r["fee_minor"], r["currency"]), "reasons": r["reasons"],
            "reason_code": r["reason_code"], "detail": r["detail"],
            "case_id": r["case_id"], "case_status": r["case_status"]})
    return disputes, events


def _cases(rows: list[dict[str, Any]], steps: list[dict[str, Any]],
           payment_id: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    cases = [{"object": "exception_case", "id": c["case_id"], "payment_id": payment_id,
              "subject": c["subject"], "subject_id": c["subject_id"], "outcome": c["outcome"],
              "opened_by": c["opened_by"], "amount": shown_money(c["amount_minor"], c["currency"]),
              "status": c["status"], "resolution": c["resolution"], "operator": c["operator"],
              "approver": c["approver"], "remark": c["remark"], "opened_at": c["opened_at"],
              "resolved_at": c["resolved_at"]}
             for c in rows]
    return cases, [{"at": v["occurred_at"], "kind": "case_event", "case_id": v["case_id"],
                    "event_id": v["event_id"], "event_kind": v["kind"], "status": v["status"],
                    "resolution": v["resolution"], "operator": v["operator"],
                    "approver": v["approver"], "remark": v["remark"], "reason": v["reason"],
                    "amount": shown_money(v["amount_minor"], v["currency"])}
                   for v in steps]
