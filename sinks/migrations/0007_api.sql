-- The read-only HTTP API (`settle api serve`): its keys, its group role, row-level security
-- that keeps a merchant key to its merchant's rows, and the indexes of its lists.

-- api_keys ----------------------------------------------------------------------------------
-- A key is shown once when created; only its id and the SHA-256 of the whole key are kept
-- (api/auth.py). Written by the owner (`settle api keys ...`), read by the API's group only.
CREATE TABLE api_keys (
    key_id          TEXT PRIMARY KEY CHECK (key_id ~ '^[0-9a-f]{12}$'),
    key_sha256      TEXT NOT NULL UNIQUE CHECK (key_sha256 ~ '^[0-9a-f]{64}$'),
    scope           TEXT NOT NULL CHECK (scope IN ('merchant', 'analyst')),
    merchant_id     TEXT CHECK (merchant_id <> ''),
    label           TEXT NOT NULL DEFAULT '',
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    created_by      TEXT NOT NULL DEFAULT '',
    revoked_at      TIMESTAMPTZ,
    CONSTRAINT api_keys_merchant_check CHECK ((scope = 'merchant') = (merchant_id IS NOT NULL))
);
-- 0002's default privileges gave both groups SELECT on every new table: not on this one.
REVOKE ALL ON api_keys FROM settle_reader, settle_writer;

-- settle_api_reader -------------------------------------------------------------------------
-- The API's group (NOLOGIN): reads what settle_reader reads, under the restrictive policies
-- below. Its login (SETTLE_API_PG_USER) is created by `settle db migrate` when the owner may
-- create roles; `settle api serve` refuses a login that is a superuser, has BYPASSRLS, owns
-- a table or is not in this group. Created only when missing, as in 0002.
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'settle_api_reader') THEN
        BEGIN
            CREATE ROLE settle_api_reader NOLOGIN;
        EXCEPTION
            WHEN duplicate_object OR unique_violation THEN
                NULL;  -- created meanwhile by another database's migration
            WHEN insufficient_privilege THEN
                RAISE EXCEPTION 'role settle_api_reader is missing and % may not create roles',
                    current_user
                    USING HINT = 'a DBA runs: CREATE ROLE settle_api_reader NOLOGIN;'
                                 ' GRANT settle_reader TO settle_api_reader;';
        END;
    END IF;
END $$;
GRANT settle_reader TO settle_api_reader;
GRANT SELECT ON api_keys TO settle_api_reader;

-- What a request of the API may see -----------------------------------------------------------
-- The API sets, local to each request's read-only transaction (api/db.py):
--   settle.api_scope     'merchant' | 'analyst'
--   settle.api_merchant  the merchant id of a merchant key ('' for an analyst key)
-- Unset (or anything else), a session of the API's group sees no merchant's row at all.
-- Plain SQL functions of one expression: inlined into the policies' quals by the planner.
-- Each is a CASE on the scope, not `scope = 'analyst' OR ...`: the planner estimates a CASE at
-- half the rows but `<stable function> = <constant>` at 0.5 %, and with that estimate it
-- walked a whole merchant and sorted instead of following a list's keyset index (measured:
-- 5-18 ms a page instead of 0.1-0.2 ms at 100,000 payments). ELSE covers an unset scope.
CREATE FUNCTION api_sees_merchant(merchant TEXT) RETURNS BOOLEAN
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT CASE current_setting('settle.api_scope', true)
               WHEN 'analyst' THEN true
               WHEN 'merchant'
                   THEN merchant = NULLIF(current_setting('settle.api_merchant', true), '')
               ELSE false END
$$;

-- A merchant key's own ledger accounts: payable:<m>, payout_due:<m>, dispute_hold:<m>
-- (settlement.postings_v2). Platform accounts (clearing, fee revenue, dispute receivables)
-- are an analyst's only.
CREATE FUNCTION api_sees_account(account TEXT) RETURNS BOOLEAN
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT CASE current_setting('settle.api_scope', true)
               WHEN 'analyst' THEN true
               WHEN 'merchant'
                   THEN NULLIF(current_setting('settle.api_merchant', true), '') IS NOT NULL
                        AND account IN (
                            'payable:' || current_setting('settle.api_merchant', true),
                            'payout_due:' || current_setting('settle.api_merchant', true),
                            'dispute_hold:' || current_setting('settle.api_merchant', true))
               ELSE false END
$$;
GRANT EXECUTE ON FUNCTION api_sees_merchant(TEXT), api_sees_account(TEXT) TO PUBLIC;

-- Row-level security on every table the API reads that holds a merchant's data. Each gets a
-- PERMISSIVE policy TO PUBLIC that lets everything through (the sinks, settle_reader logins
-- and the owner see and write as before; its qual is `true`, so their plans are unchanged)
-- and a RESTRICTIVE policy for settle_api_reader's members that must hold as well.
DO $$
DECLARE
    t TEXT;
BEGIN
    FOREACH t IN ARRAY ARRAY['payments', 'reconciliation_exceptions', 'refunds',
                             'refund_exceptions', 'settlement_batches', 'disputes',
                             'dispute_rejections', 'exception_cases', 'settlement_batch_items',
                             'ledger_journals', 'ledger_entries', 'case_events'] LOOP
        EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', t);
        EXECUTE format('CREATE POLICY everyone ON %I AS PERMISSIVE FOR ALL TO PUBLIC'
                       ' USING (true) WITH CHECK (true)', t);
    END LOOP;
    FOREACH t IN ARRAY ARRAY['payments', 'reconciliation_exceptions', 'refunds',
                             'refund_exceptions', 'settlement_batches', 'disputes',
                             'dispute_rejections', 'exception_cases'] LOOP
        EXECUTE format('CREATE POLICY api_merchant ON %I AS RESTRICTIVE FOR ALL'
                       ' TO settle_api_reader USING (api_sees_merchant(merchant_id))', t);
    END LOOP;
END $$;

-- Tables without a merchant column: through the row that owns them (CASE, as above).
CREATE POLICY api_merchant ON settlement_batch_items AS RESTRICTIVE FOR ALL
    TO settle_api_reader
    USING (CASE current_setting('settle.api_scope', true)
               WHEN 'analyst' THEN true
               WHEN 'merchant' THEN EXISTS (
                   SELECT FROM settlement_batches b
                    WHERE b.batch_id = settlement_batch_items.batch_id
                      AND api_sees_merchant(b.merchant_id))
               ELSE false END);
-- A journal belongs to its payment (PAYMENT, REFUND, reversals, disputes) or, a PAYOUT, to
-- its batch (source_id = batch_id).
CREATE POLICY api_merchant ON ledger_journals AS RESTRICTIVE FOR ALL
    TO settle_api_reader
    USING (CASE current_setting('settle.api_scope', true)
               WHEN 'analyst' THEN true
               WHEN 'merchant' THEN
                   (payment_id IS NOT NULL
                    AND EXISTS (SELECT FROM payments p
                                 WHERE p.payment_id = ledger_journals.payment_id
                                   AND api_sees_merchant(p.merchant_id)))
                   OR (kind = 'PAYOUT'
                       AND EXISTS (SELECT FROM settlement_batches b
                                    WHERE b.batch_id = ledger_journals.source_id
                                      AND api_sees_merchant(b.merchant_id)))
               ELSE false END);
CREATE POLICY api_merchant ON ledger_entries AS RESTRICTIVE FOR ALL
    TO settle_api_reader
    USING (api_sees_account(account));
CREATE POLICY api_merchant ON case_events AS RESTRICTIVE FOR ALL
    TO settle_api_reader
    USING (CASE current_setting('settle.api_scope', true)
               WHEN 'analyst' THEN true
               WHEN 'merchant' THEN EXISTS (
                   SELECT FROM exception_cases c
                    WHERE c.case_id = case_events.case_id
                      AND api_sees_merchant(c.merchant_id))
               ELSE false END);

-- A view runs with its owner's rights, and the owner is not subject to row-level security:
-- account_balances (0001) would show every account to a merchant key. Run it as the caller.
ALTER VIEW account_balances SET (security_invoker = true);

-- Indexes of the API's lists and of the policies -------------------------------------------
-- Every list pages by a key no sink ever updates (api/paging.py).
-- /v1/payments: newest first by (created_at, payment_id), the NULL request times last. Plain
-- columns: under row-level security only leakproof operators become index conditions, and
-- an expression such as COALESCE is not one.
CREATE INDEX payments_created_idx ON payments (created_at DESC NULLS LAST, payment_id DESC);
CREATE INDEX payments_merchant_created_idx
    ON payments (merchant_id, created_at DESC NULLS LAST, payment_id DESC);
CREATE INDEX payments_order_idx ON payments (order_id);
-- /v1/exceptions: the three insert-only outcome tables by (decided_at, result_id).
CREATE INDEX reconciliation_exceptions_decided_idx
    ON reconciliation_exceptions (decided_at, result_id);
CREATE INDEX reconciliation_exceptions_merchant_decided_idx
    ON reconciliation_exceptions (merchant_id, decided_at, result_id);
CREATE INDEX refund_exceptions_decided_idx ON refund_exceptions (decided_at, result_id);
CREATE INDEX refund_exceptions_merchant_decided_idx
    ON refund_exceptions (merchant_id, decided_at, result_id);
CREATE INDEX dispute_rejections_decided_idx ON dispute_rejections (decided_at, result_id);
CREATE INDEX dispute_rejections_merchant_decided_idx
    ON dispute_rejections (merchant_id, decided_at, result_id);
CREATE INDEX exception_cases_opened_by_idx ON exception_cases (opened_by);
CREATE INDEX exception_cases_merchant_idx ON exception_cases (merchant_id);
-- /v1/balance_transactions and /v1/balances: a merchant's accounts by posting time (the
-- INCLUDE makes a balance as of a time an index-only scan); an analyst's walk over all.
CREATE INDEX ledger_entries_account_posted_idx
    ON ledger_entries (account, posted_at, journal_id, side) INCLUDE (amount_minor, currency);
CREATE INDEX ledger_entries_posted_idx ON ledger_entries (posted_at, journal_id, account, side);
-- /v1/settlement_batches: newest window first.
CREATE INDEX settlement_batches_merchant_window_idx
    ON settlement_batches (merchant_id, window_start, batch_id);
CREATE INDEX settlement_batches_window_idx ON settlement_batches (window_start, batch_id);
