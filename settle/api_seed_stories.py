"""What happens to one seeded payment: its decision, exceptions, case, journals and follow-ups
(refund, reversal, dispute), as the pipeline's sinks would have written them."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Final

from settle.api_seed_copy import ts
from settle.api_seed_followups import DAY, HOUR, MINUTE, CaseLink, Recorder, Story
from settlement import postings_v2 as pv
from settlement.disputes import result_id_for as dispute_result_id
from settlement.fees import DEFAULT_FEE_SPEC, FeeSchedule
from settlement.reconciliation import result_id_for as payment_result_id

FEES: Final = FeeSchedule.from_spec(DEFAULT_FEE_SPEC)


@dataclass(frozen=True, slots=True)
class Plan:
    """state: MATCHED, DECLINED, AMOUNT_MISMATCH, CURRENCY_MISMATCH, MISSING_CONFIRMATION,
    FORCE_MATCH, MARK_RECEIVED (both end MATCHED_MANUAL), LATE_MATCH (MATCHED, late),
    REVERSED. case (of an exception left unsettled): OPEN, REJECTED (a proposal turned down),
    AWAITING (approval), CLOSE_NO_FUNDS, IGNORE. refund: MATCHED, REVERSED, DECLINED,
    MISSING_CONFIRMATION, AMOUNT_MISMATCH. dispute: OPEN, WON, LOST, LOST_NO_FEE, WON_UNHELD
    (first seen won). extra: DUPLICATE (confirmation), DISPUTE_REJECTED, REVERSAL_EXCEPTION,
    ORPHAN (a confirmation of no payment), CARRY (the merchant's only payment in a currency,
    refunded in full a day or more later: that batch's net is negative and carried)."""

    state: str
    case: str = "OPEN"
    refund: str | None = None
    dispute: str | None = None
    extra: str | None = None


COVERAGE: Final = (
    Plan("MATCHED"), Plan("DECLINED"), Plan("AMOUNT_MISMATCH"),
    Plan("AMOUNT_MISMATCH", case="AWAITING"), Plan("AMOUNT_MISMATCH", case="REJECTED"),
    Plan("CURRENCY_MISMATCH", case="IGNORE"), Plan("MISSING_CONFIRMATION", case="CLOSE_NO_FUNDS"),
    Plan("MISSING_CONFIRMATION"), Plan("FORCE_MATCH"), Plan("MARK_RECEIVED"), Plan("LATE_MATCH"),
    Plan("REVERSED"),
    *(Plan("MATCHED", refund=r) for r in ("MATCHED", "REVERSED", "DECLINED",
                                          "MISSING_CONFIRMATION", "AMOUNT_MISMATCH")),
    *(Plan("MATCHED", dispute=d) for d in ("OPEN", "WON", "LOST", "LOST_NO_FEE", "WON_UNHELD")),
    Plan("MATCHED", extra="DUPLICATE"), Plan("DECLINED", extra="DISPUTE_REJECTED"),
    Plan("DECLINED", extra="REVERSAL_EXCEPTION"), Plan("MATCHED", extra="ORPHAN"),
    Plan("MATCHED", refund="MATCHED", extra="CARRY"),
)


def _pick(rng: random.Random, table: tuple[tuple[float, str], ...]) -> str:
    r = rng.random()
    for p, value in table:
        if r < p:
            return value
        r -= p
    return table[-1][1]


_CASES: Final = ((0.5, "OPEN"), (0.05, "REJECTED"), (0.1, "AWAITING"), (0.2, "CLOSE_NO_FUNDS"),
                 (0.15, "IGNORE"))
_CLOSING_CASES: Final = ((0.6, "OPEN"), (0.2, "CLOSE_NO_FUNDS"), (0.2, "IGNORE"))
_STATES: Final = ((0.030, "DECLINED"), (0.012, "AMOUNT_MISMATCH"), (0.004, "CURRENCY_MISMATCH"),
                  (0.012, "MISSING_CONFIRMATION"), (0.004, "FORCE_MATCH"),
                  (0.004, "MARK_RECEIVED"), (0.006, "LATE_MATCH"), (0.006, "REVERSED"),
                  (1.0, "MATCHED"))
_REFUNDS: Final = ((0.80, "MATCHED"), (0.04, "REVERSED"), (0.08, "DECLINED"),
                   (0.05, "MISSING_CONFIRMATION"), (0.03, "AMOUNT_MISMATCH"))
_DISPUTES: Final = ((0.4, "OPEN"), (0.3, "WON"), (0.2, "LOST"), (0.05, "LOST_NO_FEE"),
                    (0.05, "WON_UNHELD"))


def draw_story(rng: random.Random) -> Plan:
    """A payment's plan at realistic rates (~92% matched; a few % refunded, some disputed)."""
    state = _pick(rng, _STATES)
    if state == "DECLINED":
        x = rng.random()
        extra = "DISPUTE_REJECTED" if x < 0.02 else "REVERSAL_EXCEPTION" if x < 0.03 else None
        return Plan(state, extra=extra)
    if state in ("AMOUNT_MISMATCH", "MISSING_CONFIRMATION"):
        return Plan(state, case=_pick(rng, _CASES))
    if state == "CURRENCY_MISMATCH":
        return Plan(state, case=_pick(rng, _CLOSING_CASES))
    if state != "MATCHED":
        return Plan(state)
    x = rng.random()
    if x < 0.04:
        return Plan(state, refund=_pick(rng, _REFUNDS))
    if x < 0.043:
        return Plan(state, dispute=_pick(rng, _DISPUTES))
    if x < 0.048:
        return Plan(state, extra="DUPLICATE")
    if x < 0.0485:
        return Plan(state, extra="ORPHAN")
    return Plan(state)


class Stories(Recorder):
    """Writes each story's rows into the books' buffers."""

    # -- the payment -----------------------------------------------------------------------

    def tell(self, s: Story) -> None:
        plan = s.plan
        decided = s.created_ms + self.rng.randrange(2_000, 30_000)
        conf = s.confirmation_id
        match plan.state:
            case "MATCHED" | "REVERSED":
                self._posted(s, decided, payment_result_id(s.payment_id, "MATCHED", conf))
            case "DECLINED":
                self._exception(s, "DECLINED", decided, s.amount_minor, s.currency, conf,
                                "declined by the channel")
                self._payment(s, "DECLINED", payment_result_id(s.payment_id, "DECLINED", conf),
                              decided)
                self._declined_extra(s, decided)
            case "AMOUNT_MISMATCH" | "CURRENCY_MISMATCH" | "MISSING_CONFIRMATION":
                result_id = self._unsettled(s, plan.state, decided)
                self._payment(s, plan.state, result_id, decided)
            case "FORCE_MATCH" | "MARK_RECEIVED":
                self._manual(s, decided)
            case "LATE_MATCH":
                self._late(s)

    def _payment(self, s: Story, state: str, result_id: str, decided_ms: int, *,
                 late: bool = False, reversal: tuple[str, int] | None = None,
                 case: CaseLink | None = None) -> None:
        updated = reversal[1] if reversal else decided_ms
        self.buf.add("payments", s.payment_id, s.merchant_id, s.channel, s.amount_minor,
                     s.currency, state, late, result_id, ts(s.created_ms), ts(decided_ms),
                     ts(updated), s.order_id, reversal[0] if reversal else None,
                     ts(reversal[1]) if reversal else None, *(case or (None, None, None)))
        self.states[state] += 1
        self._example(f"payment:{state}", s.payment_id)

    def _exception(self, s: Story, outcome: str, decided_ms: int, confirmed_minor: int | None,
                   confirmed_currency: str | None, conf: str | None, detail: str, *,
                   payment_id: str | None = None) -> str:
        pid = payment_id or s.payment_id
        result_id = payment_result_id(pid, outcome, conf)
        orphan = outcome == "ORPHAN_CONFIRMATION"
        self.buf.add("reconciliation_exceptions", result_id, pid,
                     None if orphan else s.merchant_id, s.channel, outcome,
                     None if orphan else s.amount_minor, None if orphan else s.currency,
                     confirmed_minor, confirmed_currency, conf,
                     f"{s.channel}-{conf}" if conf else None, detail, ts(decided_ms),
                     ts(decided_ms))
        self._example(f"exception:{outcome}", result_id)
        return result_id

    def _unsettled(self, s: Story, outcome: str, decided_ms: int) -> str:
        """The exception of a payment left unsettled, and its case (amount at stake: the
        confirmed amount of a mismatch, else the expected one)."""
        conf: str | None = s.confirmation_id
        confirmed: int | None = s.amount_minor
        currency: str | None = s.currency
        if outcome == "AMOUNT_MISMATCH":
            confirmed = s.amount_minor - max(1, s.amount_minor // 20)
        elif outcome == "CURRENCY_MISMATCH":
            currency = "USD" if s.currency != "USD" else "EUR"
        else:
            decided_ms = s.created_ms + 15 * MINUTE  # the channel's confirmation SLA ran out
            conf = confirmed = currency = None
        result_id = self._exception(s, outcome, decided_ms, confirmed, currency, conf,
                                    f"{outcome.lower().replace('_', ' ')}")
        amount = confirmed if outcome == "AMOUNT_MISMATCH" else s.amount_minor
        self._case(s, "PAYMENT", s.payment_id, outcome, result_id, amount, s.currency,
                   decided_ms + 1_000, s.plan.case)
        return result_id

    def _posted(self, s: Story, decided_ms: int, result_id: str, *, gross: int | None = None,
                late: bool = False, case: CaseLink | None = None,
                state: str = "MATCHED") -> None:
        """A captured payment: its row, PAYMENT journal and follow-ups."""
        captured = s.amount_minor if gross is None else gross
        fee = FEES.fee_for(s.channel, captured)
        kj = pv.payment_journal(s.payment_id, s.merchant_id, s.channel, captured, fee,
                                s.currency)
        self.books.post(kj, s.merchant_id, decided_ms + 150)
        plan = s.plan
        reversal = None
        if plan.state == "REVERSED":
            at = self._later(decided_ms, 6 * HOUR, 4 * DAY)
            if at is not None:
                reversal = (f"{s.payment_id}:PAYMENT_REVERSED:{s.confirmation_id}-rv", at)
                self.books.post(pv.payment_reversal_journal(
                    s.payment_id, s.merchant_id, s.channel, kj.gross_minor, kj.fee_minor,
                    kj.net_minor, s.currency), s.merchant_id, at)
        self._payment(s, "REVERSED" if reversal else state, result_id, decided_ms, late=late,
                      reversal=reversal, case=case)
        if plan.refund:
            self._refund(s, kj, decided_ms)
        if plan.dispute:
            self._dispute(s, kj, decided_ms)
        if plan.extra == "DUPLICATE":
            self._exception(s, "DUPLICATE_CONFIRMATION", decided_ms + 5 * MINUTE, captured,
                            s.currency, f"{s.confirmation_id}-dup", "a second confirmation")
        elif plan.extra == "ORPHAN":
            self._exception(s, "ORPHAN_CONFIRMATION", decided_ms + MINUTE, captured,
                            s.currency, f"{s.confirmation_id}-or", "no payment of this id",
                            payment_id=f"orphan_{s.seq:08d}")

    def _manual(self, s: Story, decided_ms: int) -> None:
        """An exception an operator settled: a force-match at the confirmed amount, or a
        mark-received at the expected one; the payment becomes MATCHED_MANUAL."""
        outcome = "AMOUNT_MISMATCH" if s.plan.state == "FORCE_MATCH" else "MISSING_CONFIRMATION"
        conf = s.confirmation_id if outcome == "AMOUNT_MISMATCH" else None
        confirmed = s.amount_minor - max(1, s.amount_minor // 20)
        if outcome == "AMOUNT_MISMATCH":
            opened_by = self._exception(s, outcome, decided_ms, confirmed, s.currency, conf,
                                        "amount mismatch")
        else:
            decided_ms = s.created_ms + 15 * MINUTE
            opened_by = self._exception(s, outcome, decided_ms, None, None, None,
                                        "missing confirmation")
        amount = confirmed if outcome == "AMOUNT_MISMATCH" else s.amount_minor
        case_id, resolved_ms, operator, approver = self._case(
            s, "PAYMENT", s.payment_id, outcome, opened_by, amount, s.currency,
            decided_ms + 1_000, s.plan.state)
        assert resolved_ms is not None and operator is not None
        result_id = payment_result_id(s.payment_id, "MATCHED_MANUAL", conf)
        self._posted(s, resolved_ms + 1_000, result_id, gross=amount,
                     case=(case_id, operator, approver), state="MATCHED_MANUAL")

    def _late(self, s: Story) -> None:
        """MISSING_CONFIRMATION, then the late confirmation matched it (its case closed
        AUTO_MATCHED by the pipeline)."""
        missed = s.created_ms + 15 * MINUTE
        opened_by = self._exception(s, "MISSING_CONFIRMATION", missed, None, None, None,
                                    "missing confirmation")
        self._case(s, "PAYMENT", s.payment_id, "MISSING_CONFIRMATION", opened_by,
                   s.amount_minor, s.currency, missed + 1_000, "AUTO_MATCHED")
        matched = missed + 25 * MINUTE
        self._posted(s, matched, payment_result_id(s.payment_id, "MATCHED", s.confirmation_id),
                     late=True)

    def _declined_extra(self, s: Story, decided_ms: int) -> None:
        extra = s.plan.extra
        if extra == "REVERSAL_EXCEPTION":
            at = decided_ms + 2 * HOUR
            opened_by = self._exception(s, "REVERSAL_EXCEPTION", at, s.amount_minor, s.currency,
                                        f"{s.confirmation_id}-rv",
                                        "reversal of a payment not captured (DECLINED)")
            self._case(s, "PAYMENT", s.payment_id, "REVERSAL_EXCEPTION", opened_by,
                       s.amount_minor, s.currency, at + 1_000, "OPEN")
        elif extra == "DISPUTE_REJECTED":
            at = decided_ms + 3 * HOUR
            did = f"dp_{s.seq:08d}"
            result_id = dispute_result_id(s.payment_id, did, "REJECTED", "e1")
            self.buf.add("dispute_rejections", result_id, s.payment_id, did, s.merchant_id,
                         s.channel, f"{s.channel}-cb-{s.seq:08d}", "DISPUTE", "OPENED",
                         s.amount_minor, s.currency, False, 0,
                         '[{"code": "PAYMENT_NOT_CAPTURED", "detail": "payment is DECLINED"}]',
                         "10.4", "payment not captured", ts(at), ts(at), ts(at))
            self._example("dispute_rejection", result_id)
            self._case(s, "DISPUTE", did, "DISPUTE_REJECTED", result_id, s.amount_minor,
                       s.currency, at + 1_000, "IGNORE")

