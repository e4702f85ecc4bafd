-- Core tables of the settlement pipeline. Money is BIGINT minor units with the currency beside it.

CREATE TABLE payments (
    payment_id      TEXT PRIMARY KEY,
    merchant_id     TEXT,
    channel         TEXT,
    amount_minor    BIGINT CHECK (amount_minor > 0),
    currency        CHAR(3) CHECK (currency ~ '^[A-Z]{3}$'),
    state           TEXT NOT NULL CHECK (state IN (
                        'MATCHED', 'DECLINED', 'AMOUNT_MISMATCH', 'CURRENCY_MISMATCH',
                        'MISSING_CONFIRMATION')),
    late            BOOLEAN NOT NULL DEFAULT FALSE,
    result_id       TEXT NOT NULL,
    created_at      TIMESTAMPTZ,
    decided_at      TIMESTAMPTZ NOT NULL,
    updated_at      TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX payments_merchant_idx ON payments (merchant_id, currency);

CREATE TABLE ledger_journals (
    journal_id      TEXT PRIMARY KEY,
    -- One journal per payment: a replayed MATCHED result can never post twice.
    payment_id      TEXT NOT NULL UNIQUE,
    currency        CHAR(3) NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
    gross_minor     BIGINT NOT NULL CHECK (gross_minor > 0),
    fee_minor       BIGINT NOT NULL CHECK (fee_minor >= 0),
    net_minor       BIGINT NOT NULL CHECK (net_minor >= 0),
    posted_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    CHECK (gross_minor = net_minor + fee_minor)
);

CREATE TABLE ledger_entries (
    journal_id      TEXT NOT NULL REFERENCES ledger_journals (journal_id),
    payment_id      TEXT NOT NULL,
    account         TEXT NOT NULL,
    side            TEXT NOT NULL CHECK (side IN ('DEBIT', 'CREDIT')),
    amount_minor    BIGINT NOT NULL CHECK (amount_minor > 0),
    currency        CHAR(3) NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
    posted_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    -- One posting per payment, account and side.
    PRIMARY KEY (payment_id, account, side)
);
CREATE INDEX ledger_entries_journal_idx ON ledger_entries (journal_id);
CREATE INDEX ledger_entries_account_idx ON ledger_entries (account, currency);

-- Σdebits = Σcredits per journal, checked by the database at commit time (deferred), so a
-- partial journal can never be committed whatever the writer does.
CREATE FUNCTION ledger_check_journal_balanced() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    imbalance BIGINT;
    currencies INT;
BEGIN
    SELECT COALESCE(SUM(CASE WHEN side = 'DEBIT' THEN amount_minor ELSE -amount_minor END), 0),
           COUNT(DISTINCT currency)
      INTO imbalance, currencies
      FROM ledger_entries WHERE journal_id = NEW.journal_id;
    IF imbalance <> 0 OR currencies <> 1 THEN
        RAISE EXCEPTION 'journal % is unbalanced (debits - credits = %, currencies = %)',
            NEW.journal_id, imbalance, currencies
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN NULL;
END $$;

CREATE CONSTRAINT TRIGGER ledger_entries_balanced
    AFTER INSERT OR UPDATE ON ledger_entries
    DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW EXECUTE FUNCTION ledger_check_journal_balanced();

CREATE VIEW account_balances AS
SELECT account,
       currency,
       SUM(CASE WHEN side = 'DEBIT' THEN amount_minor ELSE 0 END) AS debit_minor,
       SUM(CASE WHEN side = 'CREDIT' THEN amount_minor ELSE 0 END) AS credit_minor,
       SUM(CASE WHEN side = 'CREDIT' THEN amount_minor ELSE -amount_minor END) AS credit_balance_minor
  FROM ledger_entries
 GROUP BY account, currency;

CREATE TABLE reconciliation_exceptions (
    result_id               TEXT PRIMARY KEY,
    payment_id              TEXT NOT NULL,
    merchant_id             TEXT,
    channel                 TEXT,
    outcome                 TEXT NOT NULL CHECK (outcome IN (
                                'DECLINED', 'AMOUNT_MISMATCH', 'CURRENCY_MISMATCH',
                                'MISSING_CONFIRMATION', 'DUPLICATE_CONFIRMATION',
                                'ORPHAN_CONFIRMATION', 'LATE_CONFIRMATION')),
    expected_amount_minor   BIGINT,
    expected_currency       CHAR(3),
    confirmed_amount_minor  BIGINT,
    confirmed_currency      CHAR(3),
    confirmation_id         TEXT,
    channel_txn_id          TEXT,
    detail                  TEXT NOT NULL DEFAULT '',
    decided_at              TIMESTAMPTZ NOT NULL,
    recorded_at             TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX reconciliation_exceptions_payment_idx ON reconciliation_exceptions (payment_id);
CREATE INDEX reconciliation_exceptions_outcome_idx ON reconciliation_exceptions (outcome);

CREATE TABLE settlement_batches (
    batch_id        TEXT PRIMARY KEY,
    merchant_id     TEXT NOT NULL,
    currency        CHAR(3) NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
    window_start    TIMESTAMPTZ NOT NULL,
    window_end      TIMESTAMPTZ NOT NULL CHECK (window_end > window_start),
    payment_count   INTEGER NOT NULL CHECK (payment_count > 0),
    gross_minor     BIGINT NOT NULL CHECK (gross_minor > 0),
    fee_minor       BIGINT NOT NULL CHECK (fee_minor >= 0),
    net_minor       BIGINT NOT NULL CHECK (net_minor >= 0),
    closed_at       TIMESTAMPTZ NOT NULL,
    recorded_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    CHECK (gross_minor = net_minor + fee_minor),
    UNIQUE (merchant_id, currency, window_start)
);

CREATE TABLE settlement_batch_items (
    batch_id        TEXT NOT NULL REFERENCES settlement_batches (batch_id),
    -- One batch per payment.
    payment_id      TEXT PRIMARY KEY,
    gross_minor     BIGINT NOT NULL CHECK (gross_minor > 0),
    fee_minor       BIGINT NOT NULL CHECK (fee_minor >= 0),
    net_minor       BIGINT NOT NULL CHECK (net_minor >= 0),
    matched_at      TIMESTAMPTZ NOT NULL,
    CHECK (gross_minor = net_minor + fee_minor)
);
CREATE INDEX settlement_batch_items_batch_idx ON settlement_batch_items (batch_id);

-- Offsets consumed by each sink, written in the same transaction as the rows they produced:
-- on partition assignment a sink resumes from here, not from Kafka's committed offsets.
CREATE TABLE sink_offsets (
    consumer_group  TEXT NOT NULL,
    topic           TEXT NOT NULL,
    partition       INTEGER NOT NULL CHECK (partition >= 0),
    next_offset     BIGINT NOT NULL CHECK (next_offset >= 0),
    updated_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer_group, topic, partition)
);
