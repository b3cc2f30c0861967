-- 0016-dashboard-reads: indexes for the dashboard's reads by time.
--
-- The dashboard sums entries per day over up to 90 days and counts the webhook events of the
-- last hours. Both columns grow with the table's physical order (rows are appended as time
-- passes), which is what a BRIN index summarises best: a few pages of index for millions of
-- rows, and next to nothing to maintain on the spend path, where a b-tree on entries would
-- cost every usage an index write.
--
-- Rollback:
--   drop index if exists entries_created_brin;
--   drop index if exists webhook_events_received_brin;
--   delete from tally_migrations where version = 16;

create index entries_created_brin on entries using brin (created_at);
create index webhook_events_received_brin on webhook_events using brin (received_at);
