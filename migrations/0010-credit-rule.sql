-- 0010-credit-rule: subscription credits follow the credit rule. Every plan line of a paid
-- invoice moves credits in each credit period it overlaps; the months of a yearly period that
-- have not started yet are kept as scheduled credits, one row per month and line, so that
-- a plan, seat or interval change (or a refund) changes what the later months grant.
--
-- Rollback:
--   delete from yearly_schedule where line_key <> 'period';
--   alter table yearly_schedule drop constraint yearly_schedule_pkey;
--   alter table yearly_schedule add primary key (subscription_id, month_start);
--   alter table yearly_schedule drop constraint schedule_outcome;
--   update yearly_schedule set outcome = null, granted_at = null where outcome not in ('granted', 'skipped');
--   alter table yearly_schedule add constraint schedule_outcome check (outcome in ('granted', 'skipped'));
--   alter table yearly_schedule drop constraint schedule_credits_not_zero;
--   alter table yearly_schedule add constraint schedule_credits_positive check (credits > 0);
--   alter table yearly_schedule drop column line_key, drop column line_start, drop column attempts, drop column last_error;
--   drop table if exists billing_periods;
--   alter table subscriptions drop column quantity, drop column ended_at;
--   delete from tally_migrations where version = 10;

-- One row per month and line: the period line of the yearly invoice ('period'), a proration
-- line ('proration:{line}'), or a refund that cancels months not granted yet ('refund:{id}').
-- A month's net credits are granted when it starts.
alter table yearly_schedule add column line_key text not null default 'period';
alter table yearly_schedule add column line_start timestamptz;
update yearly_schedule set line_start = month_start;
alter table yearly_schedule alter column line_start set not null;
alter table yearly_schedule drop constraint yearly_schedule_pkey;
alter table yearly_schedule add primary key (subscription_id, month_start, line_key);
alter table yearly_schedule drop constraint schedule_credits_positive;
alter table yearly_schedule add constraint schedule_credits_not_zero check (credits <> 0);
-- A month that keeps failing is set aside after a bounded number of attempts, with an alert,
-- so that one bad row never stops the months behind it.
alter table yearly_schedule add column attempts integer not null default 0
  constraint schedule_attempts_bounded check (attempts between 0 and 100);
alter table yearly_schedule add column last_error text;
alter table yearly_schedule drop constraint schedule_outcome;
alter table yearly_schedule add constraint schedule_outcome
  check (outcome in ('granted', 'skipped', 'netted', 'failed'));

-- The billing periods Tally has seen on paid invoices: a proration line names only its own
-- billed time and the period's end, and the credit rule needs the whole period's length.
create table billing_periods (
  subscription_id text not null,
  period_start bigint not null,
  period_end bigint not null constraint billing_period_order check (period_end > period_start),
  billing_interval text not null constraint billing_period_interval check (billing_interval in ('month', 'year')),
  account_id text not null references accounts (id),
  primary key (subscription_id, period_start)
);
create index billing_periods_by_end on billing_periods (subscription_id, period_end);

alter table subscriptions add column quantity integer not null default 1
  constraint subscription_quantity_positive check (quantity >= 0);
alter table subscriptions add column ended_at timestamptz;
