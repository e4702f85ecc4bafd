-- Ledger v2: a journal per money event (payment, refund, batch payout, later reversals and
-- disputes), refunds and their exceptions, signed settlement items and batches that carry a
-- negative balance forward. Existing rows are migrated in place: every existing journal is a
-- PAYMENT journal whose source is its payment, every existing batch item a PAYMENT item.

-- ledger_journals ---------------------------------------------------------------------------
-- Identity of a journal: (kind, source_id), unique, so a replayed event never posts twice.
--   PAYMENT  source_id = payment_id                  journal_id 'J:<payment_id>'
--   REFUND   source_id = '<payment_id>/<refund_id>'  journal_id 'RF:<source_id>'
--   PAYOUT   source_id = batch_id                    journal_id 'P:<batch_id>'
-- REFUND_REVERSAL and PAYMENT_REVERSAL are admitted for the reversals to come.
-- The amounts keep their meaning and their checks (gross > 0, fee >= 0, net >= 0,
-- gross = net + fee):
--   PAYMENT  gross = captured G, fee = merchant fee F, net = G - F (credited to payable)
--   REFUND   gross = refunded R, fee = fee returned f, net = R - f (debited from payable)
--   PAYOUT   gross = net = payout, fee = 0 (payable -> payout_due)
ALTER TABLE ledger_journals
    ADD COLUMN kind TEXT,
    ADD COLUMN source_id TEXT;
UPDATE ledger_journals SET kind = 'PAYMENT', source_id = payment_id;
ALTER TABLE ledger_journals
    ALTER COLUMN kind SET NOT NULL,
    ALTER COLUMN source_id SET NOT NULL,
    ADD CONSTRAINT ledger_journals_kind_check CHECK (kind IN (
        'PAYMENT', 'REFUND', 'PAYOUT', 'REFUND_REVERSAL', 'PAYMENT_REVERSAL')),
    ADD CONSTRAINT ledger_journals_kind_source_key UNIQUE (kind, source_id),
    -- payment_id stays for the journals of one payment (its capture, its refunds), indexed
    -- below; a payout journal belongs to a batch and has none.
    DROP CONSTRAINT ledger_journals_payment_id_key,
    ALTER COLUMN payment_id DROP NOT NULL,
    ADD CONSTRAINT ledger_journals_payment_check CHECK (
        (kind = 'PAYOUT') = (payment_id IS NULL)
        AND (kind <> 'PAYMENT' OR source_id = payment_id)),
    ADD CONSTRAINT ledger_journals_payout_check CHECK (kind <> 'PAYOUT' OR fee_minor = 0);
CREATE INDEX ledger_journals_payment_idx ON ledger_journals (payment_id);

-- ledger_entries ----------------------------------------------------------------------------
-- One posting per journal, account and side (a payment now has several journals).
-- payment_id stays as a denormalised, nullable column (NULL on payout postings).
ALTER TABLE ledger_entries
    DROP CONSTRAINT ledger_entries_pkey,
    ALTER COLUMN payment_id DROP NOT NULL,
    ADD CONSTRAINT ledger_entries_pkey PRIMARY KEY (journal_id, account, side);
CREATE INDEX ledger_entries_payment_idx ON ledger_entries (payment_id);
-- The deferred balance trigger (0001) and its plan setting (0003) are unchanged: they check
-- every journal by journal_id, whatever its kind.

-- payments ----------------------------------------------------------------------------------
ALTER TABLE payments ADD COLUMN order_id TEXT;

-- refunds -----------------------------------------------------------------------------------
-- One row per refund: its terminal outcome. As for payments, the first terminal state wins,
-- except one late MATCHED replacing MISSING_CONFIRMATION. A MATCHED refund carries the
-- split decided upstream (amount = net + fee returned) and has a REFUND journal.
CREATE TABLE refunds (
    payment_id          TEXT NOT NULL,
    refund_id           TEXT NOT NULL,
    merchant_id         TEXT,
    channel             TEXT,
    order_id            TEXT,
    amount_minor        BIGINT CHECK (amount_minor > 0),
    currency            CHAR(3) CHECK (currency ~ '^[A-Z]{3}$'),
    state               TEXT NOT NULL CHECK (state IN (
                            'MATCHED', 'DECLINED', 'AMOUNT_MISMATCH', 'CURRENCY_MISMATCH',
                            'MISSING_CONFIRMATION')),
    late                BOOLEAN NOT NULL DEFAULT FALSE,
    result_id           TEXT NOT NULL,
    fee_returned_minor  BIGINT CHECK (fee_returned_minor >= 0),
    net_minor           BIGINT CHECK (net_minor >= 0),
    requested_at        TIMESTAMPTZ,
    decided_at          TIMESTAMPTZ NOT NULL,
    updated_at          TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (payment_id, refund_id),
    CHECK (CASE WHEN state = 'MATCHED'
                THEN amount_minor IS NOT NULL AND currency IS NOT NULL
                     AND amount_minor = net_minor + fee_returned_minor
                ELSE fee_returned_minor IS NULL AND net_minor IS NULL END)
);
CREATE INDEX refunds_merchant_idx ON refunds (merchant_id, currency);

-- Every non-MATCHED refund result (terminal failures and follow-up records), insert-only.
CREATE TABLE refund_exceptions (
    result_id               TEXT PRIMARY KEY,
    payment_id              TEXT NOT NULL,
    refund_id               TEXT NOT NULL,
    merchant_id             TEXT,
    channel                 TEXT,
    outcome                 TEXT NOT NULL CHECK (outcome IN (
                                'DECLINED', 'AMOUNT_MISMATCH', 'CURRENCY_MISMATCH',
                                'MISSING_CONFIRMATION', 'DUPLICATE_CONFIRMATION',
                                'ORPHAN_CONFIRMATION', 'LATE_CONFIRMATION')),
    amount_minor            BIGINT,
    currency                CHAR(3),
    confirmed_amount_minor  BIGINT,
    confirmed_currency      CHAR(3),
    confirmation_id         TEXT,
    channel_refund_id       TEXT,
    detail                  TEXT NOT NULL DEFAULT '',
    decided_at              TIMESTAMPTZ NOT NULL,
    recorded_at             TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX refund_exceptions_refund_idx ON refund_exceptions (payment_id, refund_id);
CREATE INDEX refund_exceptions_outcome_idx ON refund_exceptions (outcome);

-- settlement_batches ------------------------------------------------------------------------
-- Totals are signed sums of the items (refunds are negative). A batch pays
-- payout = max(net + carried_in, 0) and carries carried_out = min(net + carried_in, 0) into
-- the merchant and currency's next batch. payout_minor is NULL on batches written before
-- payouts existed: they posted no payout journal and carry nothing.
ALTER TABLE settlement_batches
    DROP CONSTRAINT settlement_batches_payment_count_check,
    DROP CONSTRAINT settlement_batches_gross_minor_check,
    DROP CONSTRAINT settlement_batches_fee_minor_check,
    DROP CONSTRAINT settlement_batches_net_minor_check,
    ADD COLUMN refund_count INTEGER NOT NULL DEFAULT 0,
    ADD COLUMN carried_in_minor BIGINT NOT NULL DEFAULT 0,
    ADD COLUMN payout_minor BIGINT,
    ADD COLUMN carried_out_minor BIGINT NOT NULL DEFAULT 0,
    ADD CONSTRAINT settlement_batches_counts_check CHECK (
        payment_count >= 0 AND refund_count >= 0 AND payment_count + refund_count > 0),
    ADD CONSTRAINT settlement_batches_carried_in_check CHECK (carried_in_minor <= 0),
    ADD CONSTRAINT settlement_batches_carried_out_check CHECK (carried_out_minor <= 0),
    ADD CONSTRAINT settlement_batches_payout_check CHECK (payout_minor >= 0),
    ADD CONSTRAINT settlement_batches_carry_check CHECK (
        CASE WHEN payout_minor IS NULL
             THEN carried_in_minor = 0 AND carried_out_minor = 0 AND refund_count = 0
                  AND gross_minor > 0 AND fee_minor >= 0 AND net_minor >= 0
             ELSE payout_minor = GREATEST(net_minor + carried_in_minor, 0)
                  AND carried_out_minor = LEAST(net_minor + carried_in_minor, 0) END);

-- settlement_batch_items --------------------------------------------------------------------
-- Keyed by (kind, item_id), the source of the item's journal: a payment or a refund is in
-- one batch at most. payment_id stays: the payment, or the refunded payment of a REFUND.
-- PAYMENT items are positive, REFUND items negative; gross = net + fee still.
ALTER TABLE settlement_batch_items
    ADD COLUMN kind TEXT NOT NULL DEFAULT 'PAYMENT',
    ADD COLUMN item_id TEXT;
UPDATE settlement_batch_items SET item_id = payment_id;
ALTER TABLE settlement_batch_items
    ALTER COLUMN item_id SET NOT NULL,
    DROP CONSTRAINT settlement_batch_items_pkey,
    ADD CONSTRAINT settlement_batch_items_pkey PRIMARY KEY (kind, item_id),
    DROP CONSTRAINT settlement_batch_items_gross_minor_check,
    DROP CONSTRAINT settlement_batch_items_fee_minor_check,
    DROP CONSTRAINT settlement_batch_items_net_minor_check,
    ADD CONSTRAINT settlement_batch_items_kind_check CHECK (CASE kind
        WHEN 'PAYMENT' THEN item_id = payment_id
                            AND gross_minor > 0 AND fee_minor >= 0 AND net_minor >= 0
        WHEN 'REFUND' THEN left(item_id, length(payment_id) + 1) = payment_id || '/'
                           AND gross_minor < 0 AND fee_minor <= 0 AND net_minor <= 0
        ELSE FALSE END);
CREATE INDEX settlement_batch_items_payment_idx ON settlement_batch_items (payment_id);

-- Grants (0002's conventions) ---------------------------------------------------------------
GRANT SELECT ON refunds, refund_exceptions TO settle_reader, settle_writer;
GRANT INSERT ON refund_exceptions TO settle_writer;
-- A refund's state changes once (a late MATCHED replaces MISSING_CONFIRMATION): only the
-- columns the ledger sink's upsert sets.
GRANT INSERT ON refunds TO settle_writer;
GRANT UPDATE (merchant_id, channel, order_id, amount_minor, currency, state, late, result_id,
              fee_returned_minor, net_minor, decided_at, updated_at) ON refunds TO settle_writer;
GRANT UPDATE (order_id) ON payments TO settle_writer;
