-- 0007-alert-resolution: an alert whose condition has cleared (the Stripe breaker closed, the
-- webhook failure rate fell back) is resolved, and each sink is told so once: PagerDuty closes
-- its incident, Slack and JSON receivers get a "resolved" message.
--
-- Rollback:
--   delete from alert_deliveries where action = 'resolve';
--   alter table alert_deliveries drop constraint alert_deliveries_pkey;
--   alter table alert_deliveries drop column action;
--   alter table alert_deliveries add primary key (alert_id, sink);
--   alter table alerts drop column resolved_at;
--   delete from tally_migrations where version = 7;

alter table alerts add column resolved_at timestamptz;

alter table alert_deliveries add column action text not null default 'trigger'
  constraint alert_delivery_action check (action in ('trigger', 'resolve'));
alter table alert_deliveries drop constraint alert_deliveries_pkey;
alter table alert_deliveries add primary key (alert_id, sink, action);
