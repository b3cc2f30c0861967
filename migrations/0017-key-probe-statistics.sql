-- 0017-key-probe-statistics: a request key is looked up through the key index, whatever the
-- statistics say.
--
-- Every spend asks whether its account has seen its key before: `account_id = $1 and
-- idempotency_key = $2` on entries. Two indexes can answer that: the unique key index, which
-- goes straight to the one entry, and entries_by_account, which reads every entry of the account
-- and filters on the key. The functions run these lookups as generic plans, estimated from
-- `n_distinct` of account_id. Statistics taken while each account had about one entry (a fresh
-- install, or just after a bulk import of accounts) say "one entry per account", so both indexes
-- look equally cheap at one row, the smaller one wins, and from then on each spend of a busy
-- account reads all of that account's entries: measured, a batch of 32 spends on one account
-- went from 2 ms to 38 ms as the account gathered 8,000 entries, until the next ANALYZE.
--
-- Accounts gather entries (each spend writes one), so the column's distinct count is fixed here
-- at one account per hundred entries. Then an account always looks like many rows, and the key
-- index (one row) is always the cheaper plan. Other reads by account are not affected: the
-- ledger pages and the dashboard have one index by account to choose from.
--
-- Rollback:
--   alter table entries alter column account_id reset (n_distinct);
--   analyze entries;
--   delete from tally_migrations where version = 17;

alter table entries alter column account_id set (n_distinct = -0.01);
-- The setting takes effect at the next ANALYZE; take it now rather than when autovacuum next
-- gets to the table.
analyze entries;
