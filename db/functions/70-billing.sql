-- Billing: clawbacks (refunds, disputes, proration) and restores, subscription status order.
--
-- Applied after the numbered migrations, in file-name order, whenever the file changed
-- (src/db/migrate.ts). A change to a function is a diff of this file; a change of signature
-- also needs a numbered migration that drops the old one.

-- Takes credits from live grants: the preferred grants first (a clawback's own payment or
-- credit period), then the others in spend order. The caller holds the account lock.
create or replace function tally_take_from(p_account text, p_amount bigint, p_now timestamptz, p_preferred bigint[],
  out grant_ids bigint[], out grant_credits bigint[])
  language plpgsql as $$
declare
  g record;
  v_left bigint := p_amount;
  v_take bigint;
begin
  grant_ids := '{}';
  grant_credits := '{}';
  for g in
    select id, remaining from grants
    where account_id = p_account and live and (expires_at is null or expires_at > p_now)
    order by (id = any(p_preferred)) is true desc, priority, expires_at, created_at, id
  loop
    v_take := least(g.remaining, v_left);
    update grants set remaining = remaining - v_take where id = g.id;
    grant_ids := grant_ids || g.id;
    grant_credits := grant_credits || -v_take;
    v_left := v_left - v_take;
    exit when v_left = 0;
  end loop;
  if v_left <> 0 then
    raise exception 'invariant broken: available of account % exceeds its live grants by %',
      p_account, v_left using errcode = 'TX001';
  end if;
end $$;

-- Takes p_credits back: first from the preferred grants (a refund's payment, a proration's own
-- credit period), then from the other live grants in spend order; the rest becomes debt. An
-- existing key answers created = false. The caller holds the account lock.
create or replace function tally_clawback_from(p_account text, p_credits bigint, p_key text, p_preferred bigint[],
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
    select * into v_take from tally_take_from(p_account, v_taken, v_now, p_preferred);
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

create or replace function tally_clawback(p_account text, p_credits bigint, p_key text, p_payment_id bigint,
  p_reference jsonb, p_now timestamptz) returns jsonb language sql as $$
  select tally_clawback_from(p_account, p_credits, p_key,
    (select coalesce(array_agg(id), '{}') from grants where account_id = p_account and payment_id = p_payment_id),
    p_reference, p_now)
$$;

-- Gives p_credits back to the grants the clawback p_clawback took them from, last taken first,
-- each keeping its expiry: credits of a grant that has expired meanwhile are counted in
-- `expired` instead (they expire at once). What the clawback did not take from a grant (the
-- debt it created, since repaid) comes back in `left_over`. The caller holds the account lock.
create or replace function tally_restore_to_grants(p_account text, p_clawback entries, p_credits bigint,
  p_now timestamptz, out grant_ids bigint[], out grant_credits bigint[], out returned bigint,
  out expired bigint, out left_over bigint) language plpgsql as $$
declare
  v_give bigint;
  i integer;
begin
  grant_ids := '{}';
  grant_credits := '{}';
  returned := 0;
  expired := 0;
  left_over := p_credits;
  for i in reverse cardinality(p_clawback.grant_ids) .. 1 loop
    exit when left_over = 0;
    v_give := least(-p_clawback.grant_credits[i], left_over);
    left_over := left_over - v_give;
    if tally_grant_expired(p_account, p_clawback.grant_ids[i], p_now) then
      expired := expired + v_give;
    else
      update grants set remaining = remaining + v_give where id = p_clawback.grant_ids[i];
      grant_ids := grant_ids || p_clawback.grant_ids[i];
      grant_credits := grant_credits || v_give;
      returned := returned + v_give;
    end if;
  end loop;
end $$;

-- Restores p_credits of what the clawback under p_clawback_key took (a refund that failed or
-- was cancelled, a dispute won), once under p_key. Debt is repaid first (the debt the clawback
-- created, or any: an account never holds credits while it owes some); the rest goes back to
-- the grants the clawback took it from, with their expiry, and what belongs to a grant that has
-- expired meanwhile expires at once under `expire:{p_key}`. Debt the clawback created that later
-- credits have repaid since comes back as a never-expiring grant (`{p_key}:debt-repaid`): those
-- credits were taken from whatever repaid the debt. An existing key answers created = false.
-- The caller holds the account lock.
create or replace function tally_restore(p_account text, p_clawback_key text, p_credits bigint,
  p_key text, p_reference jsonb, p_now timestamptz) returns jsonb language plpgsql as $$
declare
  v_now timestamptz := coalesce(p_now, now());
  v_clawback entries;
  v_entry entries;
  v_repay bigint;
  v_back record;
  v_net bigint;
begin
  select * into v_entry from entries where account_id = p_account and idempotency_key = p_key;
  if found then
    return jsonb_build_object('created', false, 'entry', tally_entry_json(v_entry));
  end if;
  select * into v_clawback from entries
    where account_id = p_account and idempotency_key = p_clawback_key and kind = 'clawback';
  if not found or p_credits <= 0 or p_credits > -v_clawback.amount then
    raise exception 'restore % of % credits does not match clawback %', p_key, p_credits, p_clawback_key
      using errcode = 'TX001';
  end if;
  select least(debt, p_credits) into v_repay from accounts where id = p_account;
  select * into v_back from tally_restore_to_grants(p_account, v_clawback, p_credits - v_repay, v_now);
  update accounts set available = available + v_back.returned, debt = debt - v_repay, updated_at = v_now
    where id = p_account returning available - debt into v_net;
  insert into entries (account_id, kind, amount, balance_after, grant_ids, grant_credits,
    idempotency_key, reference, actor, created_at)
  values (p_account, 'restore', p_credits - v_back.left_over, v_net + v_back.expired, v_back.grant_ids,
    v_back.grant_credits, p_key, p_reference || jsonb_build_object('clawback', p_clawback_key,
      'debt_reversed', v_repay), 'stripe', v_now)
  returning * into v_entry;
  if v_back.expired > 0 then
    insert into entries (account_id, kind, amount, balance_after, idempotency_key, reference, actor, created_at)
    values (p_account, 'expire', -v_back.expired, v_net, 'expire:' || p_key,
      jsonb_build_object('restore', p_key), 'system', v_now);
  end if;
  if v_back.left_over > 0 then
    perform tally_add_grant(p_account, 'purchase', v_back.left_over, 0, null, p_key || ':debt-repaid',
      'restore', p_reference || jsonb_build_object('clawback', p_clawback_key), 'stripe', null, v_now);
  end if;
  return jsonb_build_object('created', true, 'entry', tally_entry_json(v_entry));
end $$;

-- Within one second, which of two subscription states is the later one. Stripe's lifecycle only
-- moves forward through these groups inside a second (a checkout creates `incomplete` then
-- `active`; a trial starts `trialing`; a failed renewal goes `past_due`, then `unpaid`; `canceled`
-- is final), so the higher rank is the newer state. Used after the event time and the period start.
create or replace function tally_subscription_status_rank(p_status text) returns integer
language sql immutable as $$
  select case p_status
    when 'incomplete' then 0
    when 'trialing' then 1
    when 'active' then 2
    when 'past_due' then 3
    when 'unpaid' then 4
    when 'paused' then 4
    when 'incomplete_expired' then 5
    when 'canceled' then 5
    else 2 end
$$;

create or replace function tally_subscription_json(s subscriptions) returns jsonb language sql stable as $$
  select jsonb_build_object('subscription_id', s.id, 'status', s.status, 'plan_id', s.plan_id,
    'interval', s.billing_interval, 'current_period_start', tally_iso(s.current_period_start),
    'current_period_end', tally_iso(s.current_period_end), 'cancel_at_period_end', s.cancel_at_period_end,
    'trial_end', tally_iso(s.trial_end))
$$;
