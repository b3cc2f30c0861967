-- 0003-stripe: the webhook inbox, the subscription mirror, payments (what refunds and disputes
-- claw back from), the monthly schedule of yearly plans, alerts, and clawback in SQL.
--
-- Rollback:
--   drop function if exists tally_clawback, tally_lock_account, tally_expire_grant cascade;
--   alter table grants drop constraint if exists grant_payment;
--   drop table if exists alerts, yearly_schedule, payments, subscriptions, webhook_events cascade;
--   alter table accounts drop column if exists flagged;
--   delete from tally_migrations where version = 3;

-- Stored before Tally answers 2xx; the worker applies it and marks it in the same transaction.
create table webhook_events (
  id text primary key,
  type text not null,
  api_version text,
  created timestamptz not null,
  payload jsonb not null,
  received_at timestamptz not null default now(),
  status text not null default 'pending'
    constraint webhook_status check (status in ('pending', 'processed', 'ignored', 'failed')),
  attempts integer not null default 0 constraint attempts_bounded check (attempts between 0 and 100),
  next_attempt_at timestamptz not null default now(),
  last_error text,
  processed_at timestamptz,
  account_id text
);
create index webhook_events_due on webhook_events (next_attempt_at) where status = 'pending';
create index webhook_events_by_status on webhook_events (status, received_at desc);

-- The mirror of Stripe's subscriptions. event_created and event_id say which event wrote the
-- row last, so that an older event never overwrites newer state.
create table subscriptions (
  id text primary key,
  account_id text not null references accounts (id),
  customer_id text,
  status text not null,
  price_id text,
  plan_id text,
  billing_interval text,
  current_period_start timestamptz,
  current_period_end timestamptz,
  cancel_at_period_end boolean not null default false,
  trial_end timestamptz,
  event_created timestamptz not null,
  event_id text not null,
  updated_at timestamptz not null default now()
);
create index subscriptions_by_account on subscriptions (account_id);

-- A payment that bought credits: a subscription invoice or a checkout session. Refunds and
-- disputes find it by payment intent; clawed_back never exceeds what it granted.
create table payments (
  id bigint generated always as identity primary key,
  account_id text not null references accounts (id),
  invoice_id text unique,
  checkout_session_id text unique,
  payment_intent text unique,
  amount_paid bigint not null constraint amount_paid_not_negative check (amount_paid >= 0),
  currency text,
  credits bigint not null default 0,
  clawed_back bigint not null default 0,
  constraint clawback_bounded check (clawed_back >= 0 and credits >= 0 and clawed_back <= credits),
  created_at timestamptz not null default now()
);
create index payments_by_account on payments (account_id);

-- Months 2 to 12 of a yearly plan, granted by the scheduler when due.
create table yearly_schedule (
  subscription_id text not null,
  month_start timestamptz not null,
  account_id text not null references accounts (id),
  month_end timestamptz not null,
  plan_id text not null,
  credits bigint not null constraint schedule_credits_positive check (credits > 0),
  payment_id bigint references payments (id),
  granted_at timestamptz,
  outcome text constraint schedule_outcome check (outcome in ('granted', 'skipped')),
  primary key (subscription_id, month_start)
);
create index yearly_schedule_due on yearly_schedule (month_start) where granted_at is null;

-- Alerts, one row per key and window: a repeat inside the window counts instead of flooding.
create table alerts (
  id bigint generated always as identity primary key,
  alert_key text not null,
  kind text not null,
  severity text not null constraint alert_severity check (severity in ('info', 'warning', 'critical')),
  message text not null,
  details jsonb not null default '{}'::jsonb,
  account_id text,
  count integer not null default 1,
  first_at timestamptz not null default now(),
  last_at timestamptz not null default now(),
  delivered_at timestamptz,
  delivery_attempts integer not null default 0
);
create index alerts_by_key on alerts (alert_key, last_at desc);
create index alerts_recent on alerts (last_at desc);

alter table accounts add column flagged boolean not null default false;

alter table grants add constraint grant_payment foreign key (payment_id) references payments (id);
create index grants_by_payment on grants (payment_id) where payment_id is not null;

-- Locks an account and brings it up to p_now, for effects applied inside a larger transaction.
create function tally_lock_account(p_account text, p_now timestamptz) returns void
  language plpgsql as $$
begin
  perform 1 from accounts where id = p_account for update;
  if not found then
    raise exception 'no account %', p_account using errcode = 'TA404';
  end if;
  perform tally_settle(p_account, coalesce(p_now, now()));
end $$;

-- Expires what is left of one grant now (a rollover ends the old period early). Answers the
-- credits that expired, now or before. The caller holds the account lock.
create function tally_expire_grant(p_grant_id bigint, p_now timestamptz) returns bigint
  language plpgsql as $$
declare
  v_grant grants;
  v_net bigint;
  v_expired bigint;
begin
  select * into v_grant from grants where id = p_grant_id;
  if v_grant.remaining > 0 then
    update grants set remaining = 0 where id = p_grant_id;
    update accounts set available = available - v_grant.remaining, updated_at = p_now
      where id = v_grant.account_id returning available - debt into v_net;
    insert into entries (account_id, kind, amount, balance_after, grant_ids, grant_credits,
      idempotency_key, reference, actor, created_at)
    values (v_grant.account_id, 'expire', -v_grant.remaining, v_net, array[v_grant.id],
      array[-v_grant.remaining], 'expire:grant_' || v_grant.id,
      jsonb_build_object('grant_id', 'grant_' || v_grant.id), 'system', p_now);
  end if;
  select coalesce(-sum(amount), 0) into v_expired from entries
    where account_id = v_grant.account_id and idempotency_key = 'expire:grant_' || v_grant.id;
  return v_expired;
end $$;

-- Takes p_credits back: first from the live grants the payment bought, then from the other
-- live grants in spend order; the rest becomes debt. Only refunds and disputes may leave an
-- account in debt. An existing key answers created = false. The caller holds the account lock.
create function tally_clawback(p_account text, p_credits bigint, p_key text, p_payment_id bigint,
  p_reference jsonb, p_now timestamptz) returns jsonb language plpgsql as $$
declare
  v_now timestamptz := coalesce(p_now, now());
  v_available bigint;
  v_taken bigint;
  v_take record;
  v_net bigint;
  v_entry entries;
begin
  select * into v_entry from entries where account_id = p_account and idempotency_key = p_key;
  if found then
    return jsonb_build_object('created', false, 'entry', tally_entry_json(v_entry));
  end if;
  select available into v_available from accounts where id = p_account;
  v_taken := least(v_available, p_credits);
  if v_taken > 0 then
    select * into v_take from tally_take(p_account, v_taken, v_now, p_payment_id);
  else
    select '{}'::bigint[] as grant_ids, '{}'::bigint[] as grant_credits into v_take;
  end if;
  update accounts set available = available - v_taken, debt = debt + (p_credits - v_taken),
    updated_at = v_now where id = p_account returning available - debt into v_net;
  insert into entries (account_id, kind, amount, balance_after, grant_ids, grant_credits,
    idempotency_key, reference, actor, created_at)
  values (p_account, 'clawback', -p_credits, v_net, v_take.grant_ids, v_take.grant_credits, p_key,
      p_reference || jsonb_build_object('debt_created', p_credits - v_taken), 'stripe', v_now)
  returning * into v_entry;
  return jsonb_build_object('created', true, 'entry', tally_entry_json(v_entry));
end $$;
