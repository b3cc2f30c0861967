-- 0006-grant-rule-at-grant-time: the alert rule on large grants now runs when a grant is made,
-- so the position it kept for its scheduled scan (by grant id, which could pass over a grant
-- whose transaction committed late) is no longer needed.
--
-- Rollback:
--   create table alert_rule_state (rule text primary key, position bigint not null default 0,
--     checked_at timestamptz not null default now());
--   delete from tally_migrations where version = 6;

drop table alert_rule_state;
