-- Disputes (chargebacks) with held funds, and exception cases an operator resolves.
-- A dispute posts a journal per money event (opened: held, won: released, lost: taken with
-- its fee) and settles as signed batch items of its own kinds; the disputes table keeps each
-- dispute's latest state. An exception case keeps every step of its history (case_events)
-- and its latest status (exception_cases). An operator's force-match or mark-received settles
-- a payment as MATCHED_MANUAL, with a PAYMENT journal and item like a MATCHED one.

-- payments ----------------------------------------------------------------------------------
-- MATCHED_MANUAL: settled by the resolution of its exception case (a force-match at the
-- confirmed amount, a mark-received at the expected one). It replaces AMOUNT_MISMATCH or
-- MISSING_CONFIRMATION once, as a late MATCHED replaces MISSING_CONFIRMATION; result_id is
-- then the MATCHED_MANUAL result, its PAYMENT journal 'J:<payment_id>' is at the settled
-- amount. The case, its operator and the approving second operator (above the approval
-- limit) stay beside it, also once the channel reverses the payment (state REVERSED).
ALTER TABLE payments
    ADD COLUMN case_id TEXT,
    ADD COLUMN operator TEXT,
    ADD COLUMN approver TEXT,
    DROP CONSTRAINT payments_state_check,
    ADD CONSTRAINT payments_state_check CHECK (state IN (
        'MATCHED', 'DECLINED', 'AMOUNT_MISMATCH', 'CURRENCY_MISMATCH', 'MISSING_CONFIRMATION',
        'REVERSED', 'MATCHED_MANUAL')),
    ADD CONSTRAINT payments_manual_check CHECK (
        (state <> 'MATCHED_MANUAL' OR (case_id IS NOT NULL AND operator IS NOT NULL))
        AND (case_id IS NOT NULL OR (operator IS NULL AND approver IS NULL)));

-- ledger_journals ---------------------------------------------------------------------------
-- Dispute journals, source_id = '<payment_id>/<dispute_id>':
--   DISPUTE_OPEN  journal_id 'DO:<source_id>'  payable:<m> -> dispute_hold:<m> (D)
--   DISPUTE_WON   journal_id 'DW:<source_id>'  dispute_hold:<m> -> payable:<m> (D)
--   DISPUTE_LOST  journal_id 'DL:<source_id>'  dispute_hold:<m> -> the channel (D), and the
--                 dispute fee payable:<m> -> clearing:<ch> (X)
-- (the channel pair dispute_receivable:<ch> / clearing:<ch> when the channel withdrew D).
-- Stored amounts: gross = D + X, fee = X (0 unless DISPUTE_LOST), net = D > 0. gross is the
-- debits on the merchant's accounts (payable, dispute_hold); a withdrawn DISPUTE_OPEN or
-- DISPUTE_WON debits D more on the channel's side.
ALTER TABLE ledger_journals
    DROP CONSTRAINT ledger_journals_kind_check,
    ADD CONSTRAINT ledger_journals_kind_check CHECK (kind IN (
        'PAYMENT', 'REFUND', 'PAYOUT', 'REFUND_REVERSAL', 'PAYMENT_REVERSAL',
        'DISPUTE_OPEN', 'DISPUTE_WON', 'DISPUTE_LOST')),
    ADD CONSTRAINT ledger_journals_dispute_check CHECK (
        kind NOT IN ('DISPUTE_OPEN', 'DISPUTE_WON', 'DISPUTE_LOST')
        OR (left(source_id, length(payment_id) + 1) = payment_id || '/'
            AND net_minor > 0
            AND (kind = 'DISPUTE_LOST' OR fee_minor = 0)));

-- settlement_batch_items --------------------------------------------------------------------
--   DISPUTE_HOLD     item_id = '<payment_id>/<dispute_id>', gross = net = -D, fee 0: held
--                    from the merchant's payout while the dispute is open
--   DISPUTE_RELEASE  the same item_id, gross = net = +D, fee 0: given back when it is won
--   DISPUTE_FEE      the same item_id, gross = net = -X, fee 0: a lost dispute's fee (X > 0)
-- Like reversal items, dispute items count in neither payment_count nor refund_count.
ALTER TABLE settlement_batch_items
    DROP CONSTRAINT settlement_batch_items_kind_check,
    ADD CONSTRAINT settlement_batch_items_kind_check CHECK (CASE kind
        WHEN 'PAYMENT' THEN item_id = payment_id
                            AND gross_minor > 0 AND fee_minor >= 0 AND net_minor >= 0
        WHEN 'REFUND' THEN left(item_id, length(payment_id) + 1) = payment_id || '/'
                           AND gross_minor < 0 AND fee_minor <= 0 AND net_minor <= 0
        WHEN 'PAYMENT_REVERSAL' THEN item_id = payment_id
                           AND gross_minor < 0 AND fee_minor <= 0 AND net_minor <= 0
        WHEN 'REFUND_REVERSAL' THEN left(item_id, length(payment_id) + 1) = payment_id || '/'
                           AND gross_minor > 0 AND fee_minor >= 0 AND net_minor >= 0
        WHEN 'DISPUTE_HOLD' THEN left(item_id, length(payment_id) + 1) = payment_id || '/'
                           AND gross_minor < 0 AND fee_minor = 0
        WHEN 'DISPUTE_RELEASE' THEN left(item_id, length(payment_id) + 1) = payment_id || '/'
                           AND gross_minor > 0 AND fee_minor = 0
        WHEN 'DISPUTE_FEE' THEN left(item_id, length(payment_id) + 1) = payment_id || '/'
                           AND gross_minor < 0 AND fee_minor = 0
        ELSE FALSE END);

-- disputes ----------------------------------------------------------------------------------
-- One row per dispute: its latest state. OPEN holds D (its DISPUTE_OPEN journal is posted,
-- by opened_result_id); WON or LOST closed it (the DISPUTE_WON or DISPUTE_LOST journal, by
-- closed_result_id). A dispute first seen won (nothing was ever held) is WON with neither.
-- The state never goes back: a closed dispute stays closed.
CREATE TABLE disputes (
    payment_id          TEXT NOT NULL,
    dispute_id          TEXT NOT NULL,
    merchant_id         TEXT NOT NULL,
    order_id            TEXT,
    channel             TEXT NOT NULL,
    channel_dispute_id  TEXT NOT NULL,
    stage               TEXT NOT NULL CHECK (stage IN ('PRE_DISPUTE', 'DISPUTE',
                                                       'PRE_ARBITRATION')),
    status              TEXT NOT NULL CHECK (status IN ('OPENED', 'WON', 'LOST', 'ACCEPTED',
                                                        'EXPIRED', 'CANCELLED')),
    state               TEXT NOT NULL CHECK (state IN ('OPEN', 'WON', 'LOST')),
    amount_minor        BIGINT NOT NULL CHECK (amount_minor > 0),
    currency            CHAR(3) NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
    funds_withdrawn     BOOLEAN NOT NULL,
    fee_minor           BIGINT NOT NULL DEFAULT 0 CHECK (fee_minor >= 0),
    reason_code         TEXT,
    respond_by          TIMESTAMPTZ,
    opened_at           TIMESTAMPTZ,
    closed_at           TIMESTAMPTZ,
    opened_result_id    TEXT,
    closed_result_id    TEXT,
    last_result_id      TEXT NOT NULL,
    decided_at          TIMESTAMPTZ NOT NULL,
    updated_at          TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (payment_id, dispute_id),
    CONSTRAINT disputes_closed_check CHECK ((state = 'OPEN') = (closed_at IS NULL)),
    CONSTRAINT disputes_held_check CHECK (
        (opened_result_id IS NULL) = (opened_at IS NULL)
        AND (state <> 'OPEN' OR opened_result_id IS NOT NULL)
        AND (closed_result_id IS NULL OR (opened_result_id IS NOT NULL AND state <> 'OPEN'))
        AND (state <> 'LOST' OR closed_result_id IS NOT NULL)),
    CONSTRAINT disputes_fee_check CHECK (state = 'LOST' OR fee_minor = 0)
);
CREATE INDEX disputes_merchant_idx ON disputes (merchant_id, currency, state);
CREATE INDEX disputes_open_idx ON disputes (respond_by) WHERE state = 'OPEN';

-- Every REJECTED dispute result (a record that could not be applied), insert-only. The
-- dispute id is stored as sent (it may be the invalid one); reasons holds
-- [{"code": ..., "detail": ...}, ...].
CREATE TABLE dispute_rejections (
    result_id           TEXT PRIMARY KEY,
    payment_id          TEXT NOT NULL,
    dispute_id          TEXT NOT NULL,
    merchant_id         TEXT,
    channel             TEXT NOT NULL,
    channel_dispute_id  TEXT NOT NULL,
    stage               TEXT NOT NULL,
    status              TEXT NOT NULL,
    amount_minor        BIGINT NOT NULL,
    currency            TEXT NOT NULL,
    funds_withdrawn     BOOLEAN NOT NULL,
    fee_minor           BIGINT NOT NULL,
    reasons             JSONB NOT NULL CHECK (jsonb_typeof(reasons) = 'array'
                                              AND jsonb_array_length(reasons) > 0),
    reason_code         TEXT,
    detail              TEXT NOT NULL DEFAULT '',
    occurred_at         TIMESTAMPTZ NOT NULL,
    decided_at          TIMESTAMPTZ NOT NULL,
    recorded_at         TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX dispute_rejections_dispute_idx ON dispute_rejections (payment_id, dispute_id);

-- exception_cases ---------------------------------------------------------------------------
-- One row per case: its latest status. resolution, operator, approver and remark describe the
-- applied resolution (RESOLVED) or the one waiting for approval (AWAITING_APPROVAL); they are
-- NULL while the case is OPEN. A RESOLVED case stays RESOLVED; an event older than the row's
-- last one is history only (case_events). opened_at is NULL only while the OPENED event has
-- not been read (a later event created the row).
CREATE TABLE exception_cases (
    case_id             TEXT PRIMARY KEY,
    payment_id          TEXT NOT NULL,
    merchant_id         TEXT,
    channel             TEXT,
    subject             TEXT NOT NULL CHECK (subject IN ('PAYMENT', 'REFUND', 'DISPUTE')),
    subject_id          TEXT NOT NULL,
    outcome             TEXT NOT NULL,
    opened_by           TEXT NOT NULL,
    amount_minor        BIGINT,
    currency            TEXT,  -- as the exception showed it (a rejected dispute's may be wrong)
    status              TEXT NOT NULL CHECK (status IN ('OPEN', 'AWAITING_APPROVAL',
                                                        'RESOLVED')),
    resolution          TEXT CHECK (resolution IN ('FORCE_MATCH', 'MARK_RECEIVED',
                                                   'CLOSE_NO_FUNDS', 'IGNORE', 'AUTO_MATCHED')),
    operator            TEXT,
    approver            TEXT,
    remark              TEXT,
    opened_at           TIMESTAMPTZ,
    resolved_at         TIMESTAMPTZ,
    last_event_id       TEXT NOT NULL,
    last_event_kind     TEXT NOT NULL CHECK (last_event_kind IN ('OPENED', 'PROPOSED',
                                                                 'REJECTED', 'RESOLVED')),
    last_event_at       TIMESTAMPTZ NOT NULL,
    updated_at          TIMESTAMPTZ NOT NULL DEFAULT now(),
    CONSTRAINT exception_cases_latest_check CHECK (CASE status
        WHEN 'OPEN' THEN resolution IS NULL AND operator IS NULL AND approver IS NULL
                         AND resolved_at IS NULL
        WHEN 'AWAITING_APPROVAL' THEN resolution IS NOT NULL AND operator IS NOT NULL
                         AND resolved_at IS NULL
        ELSE resolution IS NOT NULL AND operator IS NOT NULL AND resolved_at IS NOT NULL END)
);
CREATE INDEX exception_cases_status_idx ON exception_cases (status, outcome, opened_at);
CREATE INDEX exception_cases_payment_idx ON exception_cases (payment_id);

-- Every step of every case (OPENED, PROPOSED, REJECTED, RESOLVED, REFUSED), insert-only:
-- who, when, what and why. A REFUSED event (an action that could not be applied) is kept
-- here only, whatever case_id it names.
CREATE TABLE case_events (
    event_id            TEXT PRIMARY KEY,
    case_id             TEXT NOT NULL,
    payment_id          TEXT NOT NULL,
    kind                TEXT NOT NULL CHECK (kind IN ('OPENED', 'PROPOSED', 'REJECTED',
                                                      'RESOLVED', 'REFUSED')),
    status              TEXT NOT NULL CHECK (status IN ('OPEN', 'AWAITING_APPROVAL',
                                                        'RESOLVED')),
    resolution          TEXT CHECK (resolution IN ('FORCE_MATCH', 'MARK_RECEIVED',
                                                   'CLOSE_NO_FUNDS', 'IGNORE', 'AUTO_MATCHED')),
    action_id           TEXT,
    operator            TEXT,
    approver            TEXT,
    remark              TEXT,
    reason              TEXT,
    amount_minor        BIGINT,
    currency            TEXT,
    evidence            JSONB NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(evidence) = 'object'),
    occurred_at         TIMESTAMPTZ NOT NULL,
    recorded_at         TIMESTAMPTZ NOT NULL DEFAULT now(),
    CHECK ((kind = 'REFUSED') = (reason IS NOT NULL))
);
CREATE INDEX case_events_case_idx ON case_events (case_id, occurred_at);

-- Grants (0002's conventions) ---------------------------------------------------------------
GRANT SELECT ON disputes, dispute_rejections, exception_cases, case_events
    TO settle_reader, settle_writer;
GRANT INSERT ON dispute_rejections, case_events TO settle_writer;
-- A dispute's row moves forward (stage, then won or lost) and a case's status with its
-- events: only the columns the ledger sink sets; the keys and first facts stay as written.
GRANT INSERT ON disputes, exception_cases TO settle_writer;
GRANT UPDATE (stage, status, state, fee_minor, reason_code, respond_by, closed_at,
              closed_result_id, last_result_id, decided_at, updated_at)
    ON disputes TO settle_writer;
GRANT UPDATE (merchant_id, channel, amount_minor, currency, status, resolution, operator,
              approver, remark, opened_at, resolved_at, last_event_id, last_event_kind,
              last_event_at, updated_at)
    ON exception_cases TO settle_writer;
-- A payment settled MATCHED_MANUAL records its case and operators (state is granted).
GRANT UPDATE (case_id, operator, approver) ON payments TO settle_writer;
