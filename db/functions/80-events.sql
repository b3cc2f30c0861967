-- The event log written in the same transaction as each change.
--
-- Applied after the numbered migrations, in file-name order, whenever the file changed
-- (src/db/migrate.ts). A change to a function is a diff of this file; a change of signature
-- also needs a numbered migration that drops the old one.

-- Writes one event in the current transaction.
create or replace function tally_event(p_type text, p_account text, p_data jsonb, p_at timestamptz) returns void
  language sql as $$
  insert into events (type, account_id, data, created_at) values (p_type, p_account, p_data, coalesce(p_at, now()));
$$;

-- Numbers the events whose transactions are all finished (older than the oldest running one),
-- in insertion order, and creates their deliveries. One caller at a time (the advisory lock);
-- another caller meanwhile answers 0 at once. Called outside any other transaction work, in
-- READ COMMITTED, so that the statements after the lock see what the previous holder committed.
create or replace function tally_sequence_events(p_limit integer) returns integer language plpgsql as $$
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

-- Balance events. Runs only when the WHEN clause of its trigger saw a crossing. Each threshold
-- crossed is its own balance.low, the higher one first (the order the balance passed them); two
-- thresholds of one value are one crossing. A fall of the balance never asks for a top-up by
-- itself: only a spend does (tally_usage, tally_usage_batch, tally_hold).
create or replace function tally_account_events() returns trigger language plpgsql as $$
declare
  v_threshold bigint;
begin
  if new.available < old.available then
    for v_threshold in
      select distinct t from unnest(array[new.low_balance_threshold, new.top_up_threshold]) as t
      where new.available < t and old.available >= t
      order by t desc
    loop
      perform tally_event('balance.low', new.id, jsonb_build_object('available', new.available,
        'threshold', v_threshold, 'previous_available', old.available), new.updated_at);
    end loop;
  end if;
  if old.available > 0 and new.available = 0 then
    perform tally_event('balance.depleted', new.id, jsonb_build_object('available', 0, 'debt', new.debt), new.updated_at);
  end if;
  if old.debt = 0 and new.debt > 0 then
    perform tally_event('account.in_debt', new.id, jsonb_build_object('debt', new.debt), new.updated_at);
  end if;
  return null;
end $$;

create or replace function tally_grant_events() returns trigger language plpgsql as $$
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

create or replace function tally_entry_events() returns trigger language plpgsql as $$
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

create or replace function tally_hold_events() returns trigger language plpgsql as $$
begin
  -- A priced hold says what it held: its meter, the quantities, their cost and the version.
  perform tally_event('hold.expired', new.account_id, jsonb_build_object('hold_id', 'hold_' || new.id,
    'amount', new.amount, 'released', new.released)
    || case when new.meter is null then '{}'::jsonb
       else jsonb_build_object('meter', new.meter, 'quantities', new.quantities) end
    || tally_priced_answer(new.cost, new.rate_card_id, new.rate_card_version), new.resolved_at);
  return null;
end $$;

create or replace function tally_subscription_events() returns trigger language plpgsql as $$
begin
  perform tally_event('subscription.updated', new.account_id, tally_subscription_json(new), null);
  return null;
end $$;

create or replace function tally_trial_refusal_events() returns trigger language plpgsql as $$
begin
  perform tally_event('trial.refused', new.account_id, jsonb_build_object('subscription_id', new.subscription_id,
    'reason', new.reason), new.created_at);
  return null;
end $$;
