-- Reversals: the channel takes a captured payment back (PAYMENT_REVERSAL), or a succeeded
-- refund comes back to the channel (REFUND_REVERSAL). Each posts the exact mirror of the
-- original journal, once (unique (kind, source_id), already in 0004), and settles as a signed
-- batch item of its own kind. A reversal that cannot be applied is an exception row.

-- payments ----------------------------------------------------------------------------------
-- A reversed payment: state REVERSED. result_id stays the MATCHED result (the payment's one
-- terminal decision, so a replay of it is recognised); the reversal's own result id and time
-- are beside it.
ALTER TABLE payments
    ADD COLUMN reversal_result_id TEXT,
    ADD COLUMN reversed_at TIMESTAMPTZ,
    DROP CONSTRAINT payments_state_check,
    ADD CONSTRAINT payments_state_check CHECK (state IN (
        'MATCHED', 'DECLINED', 'AMOUNT_MISMATCH', 'CURRENCY_MISMATCH', 'MISSING_CONFIRMATION',
        'REVERSED')),
    ADD CONSTRAINT payments_reversal_check CHECK (
        (state = 'REVERSED') = (reversal_result_id IS NOT NULL)
        AND (reversal_result_id IS NULL) = (reversed_at IS NULL));

-- refunds -----------------------------------------------------------------------------------
-- A reversed refund: state REVERSED, keeping the split of its REFUND journal (which its
-- REFUND_REVERSAL journal mirrors), the reversal's result id and time beside it.
ALTER TABLE refunds
    ADD COLUMN reversal_result_id TEXT,
    ADD COLUMN reversed_at TIMESTAMPTZ,
    DROP CONSTRAINT refunds_state_check,
    ADD CONSTRAINT refunds_state_check CHECK (state IN (
        'MATCHED', 'DECLINED', 'AMOUNT_MISMATCH', 'CURRENCY_MISMATCH', 'MISSING_CONFIRMATION',
        'REVERSED')),
    DROP CONSTRAINT refunds_check,
    ADD CONSTRAINT refunds_split_check CHECK (
        CASE WHEN state IN ('MATCHED', 'REVERSED')
             THEN amount_minor IS NOT NULL AND currency IS NOT NULL
                  AND amount_minor = net_minor + fee_returned_minor
             ELSE fee_returned_minor IS NULL AND net_minor IS NULL END),
    ADD CONSTRAINT refunds_reversal_check CHECK (
        (state = 'REVERSED') = (reversal_result_id IS NOT NULL)
        AND (reversal_result_id IS NULL) = (reversed_at IS NULL));

-- exceptions --------------------------------------------------------------------------------
-- REVERSAL_EXCEPTION: a reversal that could not be applied (no money moves). The reversal
-- outcomes themselves are admitted too, for any follow-up the reconciler records.
ALTER TABLE reconciliation_exceptions
    DROP CONSTRAINT reconciliation_exceptions_outcome_check,
    ADD CONSTRAINT reconciliation_exceptions_outcome_check CHECK (outcome IN (
        'DECLINED', 'AMOUNT_MISMATCH', 'CURRENCY_MISMATCH', 'MISSING_CONFIRMATION',
        'DUPLICATE_CONFIRMATION', 'ORPHAN_CONFIRMATION', 'LATE_CONFIRMATION',
        'REVERSAL_EXCEPTION'));
ALTER TABLE refund_exceptions
    DROP CONSTRAINT refund_exceptions_outcome_check,
    ADD CONSTRAINT refund_exceptions_outcome_check CHECK (outcome IN (
        'DECLINED', 'AMOUNT_MISMATCH', 'CURRENCY_MISMATCH', 'MISSING_CONFIRMATION',
        'DUPLICATE_CONFIRMATION', 'ORPHAN_CONFIRMATION', 'LATE_CONFIRMATION',
        'REVERSAL_EXCEPTION'));

-- ledger_journals ---------------------------------------------------------------------------
-- 0004 admits both reversal kinds already. Their identity:
--   PAYMENT_REVERSAL  source_id = payment_id                  journal_id 'PR:<payment_id>'
--   REFUND_REVERSAL   source_id = '<payment_id>/<refund_id>'  journal_id 'RR:<source_id>'
-- The stored amounts are the original's (gross = net + fee, all >= 0); the entries are the
-- original's with the sides swapped.
ALTER TABLE ledger_journals
    ADD CONSTRAINT ledger_journals_reversal_source_check CHECK (CASE kind
        WHEN 'PAYMENT_REVERSAL' THEN source_id = payment_id
        WHEN 'REFUND_REVERSAL' THEN left(source_id, length(payment_id) + 1) = payment_id || '/'
        ELSE TRUE END);

-- settlement_batch_items --------------------------------------------------------------------
--   PAYMENT_REVERSAL  item_id = payment_id, all amounts <= 0 (gross < 0): the payment's net
--                     taken back from the merchant
--   REFUND_REVERSAL   item_id = '<payment_id>/<refund_id>', all amounts >= 0 (gross > 0): the
--                     refund's net given back
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
        ELSE FALSE END);

-- settlement_batches ------------------------------------------------------------------------
-- payment_count counts PAYMENT items and refund_count REFUND items; reversal items count in
-- neither, so a batch of reversals alone has both at 0. A batch is never empty: the settlement
-- sink refuses one without items and `settle audit books` checks every batch has some.
-- A batch without payout (written before payouts existed) holds PAYMENT items only: the sink
-- and the audit check it (0004's carry check keeps refund_count = 0 and positive totals).
ALTER TABLE settlement_batches
    DROP CONSTRAINT settlement_batches_counts_check,
    ADD CONSTRAINT settlement_batches_counts_check CHECK (payment_count >= 0
                                                          AND refund_count >= 0);

-- Grants (0002's conventions) ---------------------------------------------------------------
-- The ledger sink marks a payment or refund REVERSED once (state and updated_at are granted).
GRANT UPDATE (reversal_result_id, reversed_at) ON payments, refunds TO settle_writer;
