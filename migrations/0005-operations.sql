-- 0005-operations: reconciliation reports, alert deliveries per sink, and erasure of personal
-- data inside append-only entries.
--
-- Rollback:
--   drop table if exists reconciliation_runs, alert_deliveries cascade;
--   -- then restore the append-only trigger function of 0001:
--   create or replace function tally_refuse_entry_change() returns trigger language plpgsql as $$
--   begin raise exception 'ledger entries are append-only (% refused)', tg_op using errcode = 'TE001'; end $$;
--   delete from tally_migrations where version = 5;

create table reconciliation_runs (
  id bigint generated always as identity primary key,
  started_at timestamptz not null default now(),
  finished_at timestamptz,
  trigger text not null constraint run_trigger check (trigger in ('cli', 'api', 'schedule')),
  with_stripe boolean not null default false,
  status text not null default 'running' constraint run_status check (status in ('running', 'done', 'failed')),
  finding_count integer,
  findings jsonb not null default '[]'::jsonb,
  summary jsonb not null default '{}'::jsonb,
  error text
);
create index reconciliation_runs_recent on reconciliation_runs (started_at desc);

-- One row per alert and sink: each sink is retried on its own, with backoff.
create table alert_deliveries (
  alert_id bigint not null references alerts (id),
  sink text not null,
  delivered_at timestamptz,
  attempts integer not null default 0,
  next_attempt_at timestamptz not null default now(),
  last_error text,
  primary key (alert_id, sink)
);
create index alert_deliveries_due on alert_deliveries (next_attempt_at) where delivered_at is null;

-- Entries stay append-only, with one exception: erasing personal data (a usage description or
-- metadata in `reference`) when the session says so. Amounts, keys and everything else stay.
create or replace function tally_refuse_entry_change() returns trigger language plpgsql as $$
begin
  if tg_op = 'UPDATE' and current_setting('tally.erasure', true) = 'on'
     and (to_jsonb(new) - 'reference') = (to_jsonb(old) - 'reference') then
    return new;
  end if;
  raise exception 'ledger entries are append-only (% refused)', tg_op using errcode = 'TE001';
end $$;
