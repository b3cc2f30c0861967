-- 0014-events: the event log the app reads or receives (a transactional outbox), the app's
-- webhook endpoints and their deliveries, and auto top-up.
--
-- Events are written by triggers, in the transaction of the change they report, so no ledger
-- function had to change and a rolled-back change leaves no event. Each trigger has a WHEN
-- clause: an ordinary spend (a `usage` entry, an account update that crosses no threshold)
-- evaluates the condition and writes nothing.
--
-- An event's `sequence` is not taken when it is written: an identity value taken by a
-- transaction that commits after a higher one would be skipped by a reader already past it.
-- Each row keeps its transaction's id (xid8); `tally_sequence_events` numbers, in one
-- single-writer step (an advisory lock), only rows whose transaction is older than every
-- transaction still running, so every sequence it hands out is final and readers paging with
-- `after` never miss an event. The same step fans each event out to the endpoints that want it.
--
-- Rollback:
--   drop trigger if exists accounts_balance_events on accounts;
--   drop trigger if exists grants_events on grants;
--   drop trigger if exists entries_events on entries;
--   drop trigger if exists holds_events on holds;
--   drop trigger if exists subscriptions_insert_events on subscriptions;
--   drop trigger if exists subscriptions_update_events on subscriptions;
--   drop trigger if exists trial_refusals_events on trial_refusals;
--   drop function if exists tally_event, tally_sequence_events, tally_request_top_up, tally_account_events, tally_grant_events, tally_entry_events, tally_hold_events, tally_subscription_events, tally_trial_refusal_events, tally_subscription_json;
--   drop table if exists top_ups, auto_top_ups, event_deliveries, webhook_endpoints, events cascade;
--   alter table accounts drop column if exists low_balance_threshold, drop column if exists top_up_threshold;
--   delete from tally_migrations where version = 14;

create table events (
  -- Insertion order; the public id is `event_{id}`.
  id bigint generated always as identity primary key,
  -- The position readers page by, assigned by tally_sequence_events (null until then).
  sequence bigint constraint event_sequence_unique unique,
  type text not null,
  account_id text,
  data jsonb not null default '{}'::jsonb,
  created_at timestamptz not null default now(),
  -- The inserting transaction: its row is numbered once no older transaction is running.
  xid xid8 not null default pg_current_xact_id()
);
create index events_unsequenced on events (id) where sequence is null;
create index events_by_account on events (account_id, sequence) where sequence is not null;

-- The app's endpoints. The secret signs every delivery (Standard Webhooks); it is shown once.
create table webhook_endpoints (
  id bigint generated always as identity primary key,
  url text not null constraint endpoint_url_length check (char_length(url) <= 2048),
  secret text not null,
  -- null: every type.
  event_types text[],
  status text not null default 'enabled' constraint endpoint_status check (status in ('enabled', 'disabled')),
  disabled_at timestamptz,
  disabled_reason text,
  created_at timestamptz not null default now()
);

-- One row per event and endpoint. An account's next delivery waits until its previous one is
-- delivered (order per account); a claimed delivery's next attempt moves ahead by a lease.
create table event_deliveries (
  endpoint_id bigint not null references webhook_endpoints (id) on delete cascade,
  sequence bigint not null,
  account_id text not null,
  delivered_at timestamptz,
  attempts integer not null default 0,
  first_failed_at timestamptz,
  next_attempt_at timestamptz not null default '-infinity',
  last_error text,
  primary key (endpoint_id, sequence)
);
create index event_deliveries_pending on event_deliveries (endpoint_id, account_id, sequence) where delivered_at is null;
create index event_deliveries_due on event_deliveries (next_attempt_at) where delivered_at is null;

-- Thresholds the accounts trigger compares `available` against (a WHEN clause reads only the
-- row): the app's low-balance threshold, and the auto top-up threshold while it is enabled.
alter table accounts add column low_balance_threshold bigint
  constraint low_balance_threshold_range check (low_balance_threshold between 1 and 9007199254740991);
alter table accounts add column top_up_threshold bigint
  constraint top_up_threshold_range check (top_up_threshold between 1 and 9007199254740991);

create table auto_top_ups (
  account_id text primary key references accounts (id),
  enabled boolean not null,
  threshold bigint not null constraint auto_top_up_threshold_range check (threshold between 1 and 9007199254740991),
  pack_id text not null,
  max_per_month integer not null constraint auto_top_up_max_range check (max_per_month between 1 and 1000),
  failures_in_row integer not null default 0,
  updated_at timestamptz not null default now()
);

-- One top-up per crossing of the threshold; at most one in flight per account. `number` makes
-- the Stripe idempotency key `topup:{account}:{number}`.
create table top_ups (
  id bigint generated always as identity primary key,
  account_id text not null references accounts (id),
  number integer not null,
  pack_id text not null,
  status text not null default 'pending'
    constraint top_up_status check (status in ('pending', 'succeeded', 'failed', 'cancelled')),
  payment_intent text constraint top_up_payment_intent_unique unique,
  attempts integer not null default 0,
  next_attempt_at timestamptz not null default '-infinity',
  failure_code text,
  last_error text,
  created_at timestamptz not null default now(),
  resolved_at timestamptz,
  constraint top_up_number_unique unique (account_id, number)
);
create unique index top_ups_one_in_flight on top_ups (account_id) where status = 'pending';
create index top_ups_due on top_ups (next_attempt_at) where status = 'pending';

-- Writes one event in the current transaction.
create function tally_event(p_type text, p_account text, p_data jsonb, p_at timestamptz) returns void
  language sql as $$
  insert into events (type, account_id, data, created_at) values (p_type, p_account, p_data, coalesce(p_at, now()));
$$;

-- Numbers the events whose transactions are all finished (older than the oldest running one),
-- in insertion order, and creates their deliveries. One caller at a time (the advisory lock);
-- another caller meanwhile answers 0 at once. Called outside any other transaction work, in
-- READ COMMITTED, so that the statements after the lock see what the previous holder committed.
create function tally_sequence_events(p_limit integer) returns integer language plpgsql as $$
declare
  v_base bigint;
  v_count integer;
begin
  if not pg_try_advisory_xact_lock(7316122452) then
    return 0;
  end if;
  select coalesce(max(sequence), 0) into v_base from events;
  with due as (
    select id, row_number() over (order by id) as position from (
      select id from events
      where sequence is null and xid < pg_snapshot_xmin(pg_current_snapshot())
      order by id limit p_limit) oldest),
  numbered as (
    update events e set sequence = v_base + due.position from due where e.id = due.id
    returning e.sequence, e.type, e.account_id),
  fanned as (
    insert into event_deliveries (endpoint_id, sequence, account_id)
    select w.id, n.sequence, coalesce(n.account_id, '') from numbered n
    join webhook_endpoints w on w.event_types is null or n.type = any (w.event_types)
    returning 1)
  select count(*) into v_count from numbered;
  return v_count;
end $$;

-- Asks for a top-up of an account whose auto top-up is enabled: a pending row that the
-- background job pays, unless one is in flight already or the month's maximum is reached (top-ups
-- pending or succeeded since the start of p_at's UTC month). The caller holds the account's row
-- lock (the spend's update, or the setting's call), which makes the next number safe to take.
create function tally_request_top_up(p_account text, p_at timestamptz) returns void language plpgsql as $$
declare
  v_setting auto_top_ups;
  v_this_month integer;
begin
  select * into v_setting from auto_top_ups where account_id = p_account and enabled;
  if not found then
    return;
  end if;
  select count(*) into v_this_month from top_ups
    where account_id = p_account and status in ('pending', 'succeeded')
      and created_at >= date_trunc('month', p_at at time zone 'UTC') at time zone 'UTC';
  if v_this_month >= v_setting.max_per_month then
    return;
  end if;
  insert into top_ups (account_id, number, pack_id, created_at)
  select p_account, coalesce(max(number), 0) + 1, v_setting.pack_id, p_at
    from top_ups where account_id = p_account
  on conflict (account_id) where status = 'pending' do nothing;
end $$;

-- Balance events and the auto top-up trigger. Runs only when the WHEN clause of its trigger
-- saw a crossing; the row lock of the update is held, so the top-up number is safe to take.
create function tally_account_events() returns trigger language plpgsql as $$
begin
  if new.available < old.available and new.available < new.low_balance_threshold
     and old.available >= new.low_balance_threshold then
    perform tally_event('balance.low', new.id, jsonb_build_object('available', new.available,
      'threshold', new.low_balance_threshold, 'previous_available', old.available), new.updated_at);
  elsif new.available < old.available and new.available < new.top_up_threshold
     and old.available >= new.top_up_threshold then
    perform tally_event('balance.low', new.id, jsonb_build_object('available', new.available,
      'threshold', new.top_up_threshold, 'previous_available', old.available), new.updated_at);
  end if;
  if old.available > 0 and new.available = 0 then
    perform tally_event('balance.depleted', new.id, jsonb_build_object('available', 0, 'debt', new.debt), new.updated_at);
  end if;
  if old.debt = 0 and new.debt > 0 then
    perform tally_event('account.in_debt', new.id, jsonb_build_object('debt', new.debt), new.updated_at);
  end if;
  if new.available < old.available and new.available < new.top_up_threshold
     and old.available >= new.top_up_threshold then
    perform tally_request_top_up(new.id, new.updated_at);
  end if;
  return null;
end $$;

create trigger accounts_balance_events after update of available, debt on accounts for each row
  when ((new.available < old.available and (
          (new.available < new.low_balance_threshold and old.available >= new.low_balance_threshold)
          or (new.available < new.top_up_threshold and old.available >= new.top_up_threshold)
          or (new.available = 0)))
        or (old.debt = 0 and new.debt > 0))
  execute function tally_account_events();

create function tally_grant_events() returns trigger language plpgsql as $$
begin
  perform tally_event('grant.created', new.account_id, jsonb_build_object('grant_id', 'grant_' || new.id,
    'source', new.source, 'amount', new.amount, 'remaining', new.remaining,
    'expires_at', tally_iso(new.expires_at), 'grant_key', new.grant_key), new.created_at);
  if new.source = 'trial' then
    perform tally_event('trial.granted', new.account_id, jsonb_build_object('grant_id', 'grant_' || new.id,
      'credits', new.amount, 'expires_at', tally_iso(new.expires_at)), new.created_at);
  end if;
  return null;
end $$;
create trigger grants_events after insert on grants for each row execute function tally_grant_events();

create function tally_entry_events() returns trigger language plpgsql as $$
begin
  if new.kind = 'clawback' then
    perform tally_event('credits.clawed_back', new.account_id, jsonb_build_object('entry_id', 'entry_' || new.id,
      'credits', -new.amount, 'idempotency_key', new.idempotency_key,
      'debt_created', coalesce((new.reference->>'debt_created')::bigint, 0)), new.created_at);
  elsif new.kind = 'restore' then
    perform tally_event('credits.restored', new.account_id, jsonb_build_object('entry_id', 'entry_' || new.id,
      'credits', new.amount, 'idempotency_key', new.idempotency_key), new.created_at);
  elsif new.kind = 'expire' then
    perform tally_event('grant.expired', new.account_id, jsonb_build_object('entry_id', 'entry_' || new.id,
      'grant_id', new.reference->>'grant_id', 'credits', -new.amount), new.created_at);
  end if;
  return null;
end $$;
-- Only grant expiries (their reference names the grant); credits of a hold or restore that
-- expire at once are not a grant's expiry.
create trigger entries_events after insert on entries for each row
  when (new.kind in ('clawback', 'restore') or (new.kind = 'expire' and new.reference ? 'grant_id'))
  execute function tally_entry_events();

create function tally_hold_events() returns trigger language plpgsql as $$
begin
  perform tally_event('hold.expired', new.account_id, jsonb_build_object('hold_id', 'hold_' || new.id,
    'amount', new.amount, 'released', new.released), new.resolved_at);
  return null;
end $$;
create trigger holds_events after update of status on holds for each row
  when (old.status = 'pending' and new.status = 'expired')
  execute function tally_hold_events();

create function tally_subscription_json(s subscriptions) returns jsonb language sql stable as $$
  select jsonb_build_object('subscription_id', s.id, 'status', s.status, 'plan_id', s.plan_id,
    'interval', s.billing_interval, 'current_period_start', tally_iso(s.current_period_start),
    'current_period_end', tally_iso(s.current_period_end), 'cancel_at_period_end', s.cancel_at_period_end,
    'trial_end', tally_iso(s.trial_end))
$$;

create function tally_subscription_events() returns trigger language plpgsql as $$
begin
  perform tally_event('subscription.updated', new.account_id, tally_subscription_json(new), null);
  return null;
end $$;
create trigger subscriptions_insert_events after insert on subscriptions for each row
  execute function tally_subscription_events();
-- The mirror is written for every Stripe event; only a change of what the app sees is an event.
create trigger subscriptions_update_events after update on subscriptions for each row
  when ((old.account_id, old.status, old.plan_id, old.billing_interval, old.current_period_start,
         old.current_period_end, old.cancel_at_period_end, old.trial_end)
        is distinct from (new.account_id, new.status, new.plan_id, new.billing_interval,
         new.current_period_start, new.current_period_end, new.cancel_at_period_end, new.trial_end))
  execute function tally_subscription_events();

create function tally_trial_refusal_events() returns trigger language plpgsql as $$
begin
  perform tally_event('trial.refused', new.account_id, jsonb_build_object('subscription_id', new.subscription_id,
    'reason', new.reason), new.created_at);
  return null;
end $$;
create trigger trial_refusals_events after insert on trial_refusals for each row
  execute function tally_trial_refusal_events();
