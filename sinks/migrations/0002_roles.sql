-- Least-privilege group roles (NOLOGIN): settle_writer for the sinks, settle_reader for analysts.
-- Operators give people and processes LOGIN roles that are members of one group (README).
-- Migrations keep running as the database owner, who alone may change the schema.
--
-- Roles are cluster-wide, grants are per database, and several databases may be migrated at
-- once (one per test session): create the roles only when missing and take a concurrent
-- creator's win (duplicate_object, or unique_violation on pg_authid) as success.
DO $$
DECLARE
    group_role TEXT;
BEGIN
    FOREACH group_role IN ARRAY ARRAY['settle_writer', 'settle_reader'] LOOP
        IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = group_role) THEN
            BEGIN
                EXECUTE format('CREATE ROLE %I NOLOGIN', group_role);
            EXCEPTION
                WHEN duplicate_object OR unique_violation THEN
                    NULL;  -- created meanwhile by another database's migration
                WHEN insufficient_privilege THEN
                    RAISE EXCEPTION 'role % is missing and % may not create roles', group_role,
                        current_user
                        USING HINT = 'a DBA runs: CREATE ROLE ' || group_role || ' NOLOGIN;';
            END;
        END IF;
    END LOOP;
END $$;

-- Nobody but the owner and the two groups may connect, create temporary tables, or create
-- objects. The owner keeps its rights: an owner's privileges are implicit, not PUBLIC's.
DO $$
BEGIN
    EXECUTE format('REVOKE ALL ON DATABASE %I FROM PUBLIC', current_database());
    EXECUTE format('GRANT CONNECT ON DATABASE %I TO settle_reader', current_database());
    -- The sinks stage each batch in temporary tables (binary COPY, then INSERT ... SELECT).
    EXECUTE format('GRANT CONNECT, TEMPORARY ON DATABASE %I TO settle_writer',
                   current_database());
END $$;

-- Before PostgreSQL 15 the public schema belongs to the bootstrap superuser and a
-- non-superuser owner creates its tables there only through PUBLIC's CREATE: revoking that
-- would lock the owner out of its next migration. So only when the schema is ours.
DO $$
BEGIN
    IF EXISTS (SELECT FROM pg_namespace n
                WHERE n.nspname = 'public'
                  AND pg_has_role(current_user, n.nspowner, 'USAGE')) THEN
        REVOKE ALL ON SCHEMA public FROM PUBLIC;
    END IF;
END $$;
GRANT USAGE ON SCHEMA public TO settle_writer, settle_reader;

-- Analysts read everything, now and in later migrations (run by this same owner).
GRANT SELECT ON ALL TABLES IN SCHEMA public TO settle_reader;
ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT SELECT ON TABLES TO settle_reader;

-- The sinks read what they write and use sequences; INSERT and UPDATE are granted table by
-- table below (and by any later migration that adds a table the sinks write).
GRANT SELECT ON ALL TABLES IN SCHEMA public TO settle_writer;
GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO settle_writer;
ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT SELECT ON TABLES TO settle_writer;
ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT USAGE ON SEQUENCES TO settle_writer;
REVOKE SELECT ON schema_migrations FROM settle_writer;

-- The ledger and the settlement batches are append-only: INSERT, never UPDATE or DELETE.
GRANT INSERT ON ledger_journals, ledger_entries, reconciliation_exceptions,
                settlement_batches, settlement_batch_items TO settle_writer;
-- A payment's state changes once (a late MATCHED replaces MISSING_CONFIRMATION): only the
-- columns the ledger sink's upsert sets; the key and created_at stay as first written.
GRANT INSERT ON payments TO settle_writer;
GRANT UPDATE (merchant_id, channel, amount_minor, currency, state, late, result_id,
              decided_at, updated_at) ON payments TO settle_writer;
-- Consumed offsets move forward in the same transaction as the rows.
GRANT INSERT ON sink_offsets TO settle_writer;
GRANT UPDATE (next_offset, updated_at) ON sink_offsets TO settle_writer;
