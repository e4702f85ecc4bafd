-- The journal balance check (0001's ledger_check_journal_balanced) runs one query per entry
-- row, by journal_id. PL/pgSQL caches that query's plan for the session. Planned right after
-- autovacuum has ANALYZEd a nearly empty ledger (a new database, its first few journals), a
-- sequential scan is the cheapest plan, and the sink's long-lived session keeps it while the
-- table grows: in a 500 payments/s benchmark run the check of one batch went from 1.5 s to
-- 7.9 s within 30 s. The lookup always wants ledger_entries_journal_idx: the function plans
-- without sequential scans (the setting applies inside the function only).
ALTER FUNCTION ledger_check_journal_balanced() SET enable_seqscan = off;
