"""A seeded payment's follow-ups: its refund, its dispute, and the exception cases with their
history; shared by the stories (settle.api_seed_stories)."""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from settle.api_seed_copy import ts
from settlement import postings_v2 as pv
from settlement.cases import DEFAULT_APPROVAL_ABOVE_MINOR, case_id_for, event_id_for
from settlement.disputes import result_id_for as dispute_result_id
from settlement.refunds import result_id_for as refund_result_id

if TYPE_CHECKING:
    from settle.api_seed import _Books
    from settle.api_seed_stories import Plan

OPERATORS: Final = ("ops-alice", "ops-bao", "ops-chen")
DISPUTE_FEE_MINOR: Final = {"CNY": 1_500, "USD": 1_500, "EUR": 1_500, "JPY": 1_500,
                            "KWD": 5_000}
MINUTE: Final = 60_000
HOUR: Final = 60 * MINUTE
DAY: Final = 24 * HOUR
CaseLink = tuple[str, str, str | None]  # (case_id, operator, approver) on a settled payment


@dataclass(frozen=True, slots=True)
class Story:
    seq: int
    created_ms: int
    merchant_id: str
    currency: str
    channel: str
    amount_minor: int
    plan: Plan

    @property
    def payment_id(self) -> str:
        return f"pay_{self.seq:08d}"

    @property
    def order_id(self) -> str:
        return f"ord_{self.seq:08d}"

    @property
    def confirmation_id(self) -> str:
        return f"cf_{self.seq:08d}"


class Recorder:
    """The buffers, the clock's limit, what was written, and the follow-up writers."""

    def __init__(self, rng: random.Random, books: _Books, end_ms: int) -> None:
        self.rng = rng
        self.books = books
        self.buf = books.buf
        self.limit_ms = end_ms - HOUR  # every event happens before the last window ends
        self.states: Counter[str] = Counter()
        self.examples: dict[str, str] = {}

    def _later(self, t_ms: int, lo_ms: int, hi_ms: int) -> int | None:
        """A time lo..hi after t, kept before the end of the seeded days (None: no room)."""
        hi = min(t_ms + hi_ms, self.limit_ms)
        if hi - t_ms <= MINUTE:
            return None
        lo = min(t_ms + lo_ms, (t_ms + hi) // 2)
        return self.rng.randrange(lo, hi)

    def _example(self, key: str, value: str) -> None:
        self.examples.setdefault(key, value)

    # -- exception cases -------------------------------------------------------------------

    def _case(self, s: Story, subject: str, subject_id: str, outcome: str, opened_by: str,
              amount: int | None, currency: str | None, opened_ms: int, plan: str,
              ) -> tuple[str, int | None, str | None, str | None]:
        """A case and its events. plan: OPEN, REJECTED (a proposal turned down: OPEN again),
        AWAITING (a proposal waiting for a second operator), or the resolution it ended with
        (CLOSE_NO_FUNDS, IGNORE, FORCE_MATCH, MARK_RECEIVED, AUTO_MATCHED). A resolution
        above the approval limit is proposed first and approved by another operator.
        Returns (case_id, resolved at, operator, approver)."""
        case_id = case_id_for(opened_by)
        first = self.rng.randrange(len(OPERATORS))
        op, second = OPERATORS[first], OPERATORS[(first + 1) % len(OPERATORS)]
        resolution = {"REJECTED": "IGNORE", "AWAITING": "CLOSE_NO_FUNDS"}.get(plan, plan)
        events: list[tuple[str, str, str | None, str, str | None, str | None, int]] = [
            ("OPENED", "OPEN", None, opened_by, None, None, opened_ms)]
        at = opened_ms
        status, operator, approver, resolved_ms = "OPEN", None, None, None
        if plan != "OPEN":
            at = opened_ms + self.rng.randrange(10 * MINUTE, 6 * HOUR)
            if plan == "AUTO_MATCHED":
                op = "system"
            elif plan in ("REJECTED", "AWAITING") or (
                    amount is not None and amount > DEFAULT_APPROVAL_ABOVE_MINOR):
                events.append(("PROPOSED", "AWAITING_APPROVAL", resolution, f"{case_id}-a1", op,
                               None, at))
                at += self.rng.randrange(5 * MINUTE, HOUR)
                if plan == "REJECTED":
                    events.append(("REJECTED", "OPEN", resolution, f"{case_id}-a2", second,
                                   None, at))
                elif plan != "AWAITING":
                    approver = second
            if plan == "AWAITING":
                # The proposer tried to approve it: refused, the case unchanged.
                self.buf.add("case_events", event_id_for(case_id, "REFUSED", f"{case_id}-a2"),
                             case_id, s.payment_id, "REFUSED", "AWAITING_APPROVAL", None,
                             f"{case_id}-a2", op, None, None, "SAME_OPERATOR", None, None,
                             '{"detail": "the proposer cannot approve"}', ts(at + MINUTE),
                             ts(at + MINUTE))
                status, operator = "AWAITING_APPROVAL", op
            elif plan != "REJECTED":
                events.append(("RESOLVED", "RESOLVED", resolution, f"{case_id}-a9", op,
                               approver, at))
                status, operator, resolved_ms = "RESOLVED", op, at
        for kind, ev_status, ev_resolution, action, ev_op, ev_approver, ev_at in events:
            action_id = None if kind == "OPENED" else action
            self.buf.add("case_events", event_id_for(case_id, kind, action), case_id,
                         s.payment_id, kind, ev_status, ev_resolution, action_id, ev_op,
                         ev_approver, "seeded" if ev_op else None, None, amount, currency,
                         f'{{"outcome": "{outcome}"}}' if kind == "OPENED" else "{}",
                         ts(ev_at), ts(ev_at))
        last_kind, last_action, last_at = events[-1][0], events[-1][3], events[-1][6]
        self.buf.add("exception_cases", case_id, s.payment_id, s.merchant_id, s.channel,
                     subject, subject_id, outcome, opened_by, amount, currency, status,
                     None if status == "OPEN" else resolution, operator,
                     approver if status == "RESOLVED" else None,
                     None if status == "OPEN" else "seeded", ts(opened_ms),
                     ts(resolved_ms) if resolved_ms is not None else None,
                     event_id_for(case_id, last_kind, last_action), last_kind, ts(last_at),
                     ts(last_at))
        self._example(f"case:{status}", case_id)
        return case_id, resolved_ms, operator, approver

    # -- refunds ---------------------------------------------------------------------------

    def _refund(self, s: Story, payment: pv.KindJournal, decided_ms: int) -> None:
        """One refund of the captured payment (all of it or half), the fee returned pro rata."""
        assert s.plan.refund is not None
        carry = s.plan.extra == "CARRY"
        at = self._later(decided_ms, DAY if carry else 2 * HOUR, (2 if carry else 3) * DAY)
        if at is None:
            return
        outcome, pid, rid = s.plan.refund, s.payment_id, f"rf_{s.seq:08d}"
        gross, fee = payment.gross_minor, payment.fee_minor
        amount = gross if carry or self.rng.random() < 0.4 else max(1, gross // 2)
        fee_back = fee * amount // gross
        conf = f"rcf_{s.seq:08d}"
        requested = max(decided_ms + 1, at - MINUTE)
        reversal: tuple[str, int] | None = None
        journal = None
        if outcome in ("MATCHED", "REVERSED"):
            journal = pv.refund_journal(pid, rid, s.merchant_id, s.channel, amount, fee_back,
                                        amount - fee_back, s.currency)
            self.books.post(journal, s.merchant_id, at + 150)
            back = self._later(at, HOUR, 2 * DAY) if outcome == "REVERSED" else None
            if back is not None:
                reversal = (refund_result_id(pid, rid, "REFUND_REVERSED", f"{conf}-rv"), back)
                self.books.post(pv.refund_reversal_journal(
                    pid, rid, s.merchant_id, s.channel, amount, fee_back, amount - fee_back,
                    s.currency), s.merchant_id, back)
        state = "REVERSED" if reversal else "MATCHED" if journal else outcome
        matched = journal is not None
        result_id = refund_result_id(pid, rid, "MATCHED" if matched else outcome,
                                     None if outcome == "MISSING_CONFIRMATION" else conf)
        self.buf.add("refunds", pid, rid, s.merchant_id, s.channel, s.order_id, amount,
                     s.currency, state, False, result_id, fee_back if matched else None,
                     amount - fee_back if matched else None, ts(requested), ts(at),
                     ts(reversal[1] if reversal else at), reversal[0] if reversal else None,
                     ts(reversal[1]) if reversal else None)
        self._example(f"refund:{state}", f"{pid}/{rid}")
        if matched:
            return
        confirmed = {"DECLINED": amount, "AMOUNT_MISMATCH": max(1, amount - 1)}.get(outcome)
        self.buf.add("refund_exceptions", result_id, pid, rid, s.merchant_id, s.channel, outcome,
                     amount, s.currency, confirmed, s.currency if confirmed else None,
                     None if outcome == "MISSING_CONFIRMATION" else conf,
                     None if outcome == "MISSING_CONFIRMATION" else f"{s.channel}-{conf}",
                     outcome.lower().replace("_", " "), ts(at), ts(at))
        self._example(f"refund_exception:{outcome}", result_id)
        if outcome != "DECLINED":
            self._case(s, "REFUND", rid, outcome, result_id, amount, s.currency, at + 1_000,
                       "OPEN" if outcome == "MISSING_CONFIRMATION" else "IGNORE")

    # -- disputes --------------------------------------------------------------------------

    def _dispute(self, s: Story, payment: pv.KindJournal, decided_ms: int) -> None:
        """A chargeback of all or half the payment: held when opened, released when won,
        taken with the dispute fee when lost; first seen won holds nothing."""
        assert s.plan.dispute is not None
        opened = self._later(decided_ms, 6 * HOUR, 4 * DAY)
        if opened is None:
            return
        plan, pid, did = s.plan.dispute, s.payment_id, f"dp_{s.seq:08d}"
        gross = payment.gross_minor
        amount = gross if self.rng.random() < 0.5 else max(1, gross // 2)
        withdrawn = self.rng.random() < 0.5
        closed = None if plan == "OPEN" else (
            opened if plan == "WON_UNHELD" else self._later(opened, DAY, 5 * DAY))
        if closed is None:
            plan = "OPEN"
        fee = DISPUTE_FEE_MINOR.get(s.currency, 1_000) if plan == "LOST" else 0
        args = (pid, did, s.merchant_id, s.channel, amount, withdrawn)
        open_id = dispute_result_id(pid, did, "OPENED", "e1")
        close_id = None
        if plan != "WON_UNHELD":
            self.books.post(pv.dispute_open_journal(*args, s.currency), s.merchant_id, opened)
        if plan in ("WON", "LOST", "LOST_NO_FEE"):
            assert closed is not None
            event = "WON" if plan == "WON" else "LOST"
            close_id = dispute_result_id(pid, did, event, "e2")
            journal = (pv.dispute_won_journal(*args, s.currency) if event == "WON"
                       else pv.dispute_lost_journal(*args, fee, s.currency))
            self.books.post(journal, s.merchant_id, closed)
        state = {"LOST_NO_FEE": "LOST", "WON_UNHELD": "WON"}.get(plan, plan)
        status = {"OPEN": "OPENED", "WON": "WON", "LOST": "LOST"}[state]
        last_id = (dispute_result_id(pid, did, "STAGE_CHANGED", "e1") if plan == "WON_UNHELD"
                   else close_id or open_id)
        held = plan != "WON_UNHELD"
        self.buf.add("disputes", pid, did, s.merchant_id, s.order_id, s.channel,
                     f"{s.channel}-cb-{s.seq:08d}", "DISPUTE", status, state, amount,
                     s.currency, withdrawn, fee, "10.4", ts(opened + 7 * DAY),
                     ts(opened) if held else None, ts(closed) if closed is not None else None,
                     open_id if held else None, close_id, last_id,
                     ts(closed if closed is not None else opened),
                     ts(closed if closed is not None else opened))
        self._example(f"dispute:{plan}", f"{pid}/{did}")
