-- Holds: reserve, capture, void, release (by expiry too); a hold resolves exactly once.
--
-- Applied after the numbered migrations, in file-name order, whenever the file changed
-- (src/db/migrate.ts). A change to a function is a diff of this file; a change of signature
-- also needs a numbered migration that drops the old one.

-- A hold of credits.
create or replace function tally_hold(p_account text, p_amount bigint, p_expires_in_seconds integer,
  p_key text, p_hash text, p_actor text, p_now timestamptz) returns jsonb language sql as $$
  select tally_hold(p_account, p_amount, p_expires_in_seconds, p_key, p_hash, p_actor, p_now, null)
$$;

-- tally_hold of 0002; the hold records whether it was counted against the account's limits. A
-- priced hold (p_priced, from tally_priced_hold) reserves p_amount = ceil(cost) of the most the
-- call may use, and keeps its meter, quantities, card, version and cost for its capture (its
-- entry shows them too); the carry waits for the capture.
create or replace function tally_hold(p_account text, p_amount bigint, p_expires_in_seconds integer,
  p_key text, p_hash text, p_actor text, p_now timestamptz, p_priced jsonb) returns jsonb language plpgsql as $$
declare
  v_now timestamptz := coalesce(p_now, now());
  v_outcome jsonb;
  v_account accounts;
  v_take record;
  v_hold holds;
  v_net bigint;
begin
  v_outcome := tally_open_spend(p_account, p_amount, p_key, 'hold', p_hash, v_now);
  if v_outcome is not null then
    return v_outcome;
  end if;
  -- A hold of 0 credits (a priced one whose cost is 0) takes from no grant.
  if p_amount > 0 then
    select * into v_take from tally_take(p_account, p_amount, v_now);
  else
    select '{}'::bigint[] as grant_ids, '{}'::bigint[] as grant_credits into v_take;
  end if;
  update accounts set available = available - p_amount, held = held + p_amount, updated_at = v_now
    where id = p_account returning * into v_account;
  insert into holds (account_id, amount, grant_ids, grant_credits, expires_at, idempotency_key, created_at,
    counted_in_spend_limits, meter, quantities, rate_card_id, rate_card_version, cost)
  values (p_account, p_amount, v_take.grant_ids, v_take.grant_credits,
    v_now + make_interval(secs => p_expires_in_seconds), p_key, v_now, v_account.spend_limited,
    p_priced->>'meter', p_priced->'quantities', p_priced->>'rate_card_id',
    (p_priced->>'rate_card_version')::integer, (p_priced->>'cost')::numeric)
  returning * into v_hold;
  v_net := v_account.available - v_account.debt;
  insert into entries (account_id, kind, amount, balance_after, grant_ids, grant_credits, hold_id,
    idempotency_key, reference, actor, created_at, meter, quantities, rate_card_id, rate_card_version, cost)
  values (p_account, 'hold', -p_amount, v_net, v_take.grant_ids, v_take.grant_credits, v_hold.id,
    'request:' || p_key, jsonb_build_object('hold_id', 'hold_' || v_hold.id), p_actor, v_now,
    v_hold.meter, v_hold.quantities, v_hold.rate_card_id, v_hold.rate_card_version, v_hold.cost);
  -- As a usage: a hold that leaves the account below its auto top-up threshold asks for a top-up.
  if v_account.available < v_account.top_up_threshold then
    perform tally_request_top_up(p_account, v_now);
  end if;
  return tally_remember(p_key, p_account, 'hold', p_hash, 201,
    jsonb_build_object('hold_id', 'hold_' || v_hold.id, 'amount', p_amount,
      'expires_at', tally_iso(v_hold.expires_at), 'available', v_account.available,
      'replayed', false) || tally_priced_answer(v_hold.cost, v_hold.rate_card_id, v_hold.rate_card_version), v_now);
end $$;

-- Locks the hold's account, then the hold, and checks that it can still be resolved.
create or replace function tally_lock_pending_hold(p_hold_id bigint, p_now timestamptz) returns holds
  language plpgsql as $$
declare
  v_account text;
  v_hold holds;
begin
  select account_id into v_account from holds where id = p_hold_id;
  if not found then
    raise exception 'no hold with id hold_%', p_hold_id using errcode = 'TH404';
  end if;
  perform 1 from accounts where id = v_account for update;
  select * into v_hold from holds where id = p_hold_id for update;
  if v_hold.status <> 'pending' then
    raise exception 'hold is %', v_hold.status using errcode = 'TH409', detail = v_hold.status;
  end if;
  if v_hold.expires_at <= p_now then
    raise exception 'hold is expired' using errcode = 'TH409', detail = 'expired';
  end if;
  return v_hold;
end $$;

create or replace function tally_release(p_hold holds, p_captured bigint, p_status text, p_actor text,
  p_now timestamptz) returns void language sql as $$
  select tally_release(p_hold, p_captured, p_status, p_actor, p_now, null)
$$;

-- Resolves a pending hold: captures p_captured and releases the rest. Released credits go
-- back to the grants they came from, last taken first, so that what was captured is what the
-- spend order chose first. Credits whose grant has expired meanwhile (by its expiry, or early)
-- expire at once, and credits coming back while the account is in debt repay the debt first.
-- The capture of a priced hold (p_priced: the used quantities priced by the hold's version, and
-- the carry after) writes its capture entry with its price even when it charges 0, and moves the
-- account's carry.
create or replace function tally_release(p_hold holds, p_captured bigint, p_status text, p_actor text,
  p_now timestamptz, p_priced jsonb) returns void language plpgsql as $$
declare
  v_release bigint := p_hold.amount - p_captured;
  v_left bigint := v_release;
  v_expired bigint := 0;
  v_repay_left bigint;
  v_give bigint;
  v_back bigint;
  v_ids bigint[] := '{}';
  v_credits bigint[] := '{}';
  v_net bigint;
  i integer;
begin
  update holds set status = p_status, captured = p_captured, released = v_release, resolved_at = p_now
    where id = p_hold.id;
  select debt into v_repay_left from accounts where id = p_hold.account_id;
  for i in reverse cardinality(p_hold.grant_ids) .. 1 loop
    exit when v_left = 0;
    v_give := least(-p_hold.grant_credits[i], v_left);
    v_left := v_left - v_give;
    if tally_grant_expired(p_hold.account_id, p_hold.grant_ids[i], p_now) then
      v_expired := v_expired + v_give;
      continue;
    end if;
    v_back := v_give - least(v_give, v_repay_left);
    v_repay_left := v_repay_left - (v_give - v_back);
    if v_back > 0 then
      update grants set remaining = remaining + v_back where id = p_hold.grant_ids[i];
      v_ids := v_ids || p_hold.grant_ids[i];
      v_credits := v_credits || v_back;
    end if;
  end loop;
  update accounts
    set held = held - p_hold.amount,
        available = available + (select coalesce(sum(c), 0) from unnest(v_credits) c),
        debt = v_repay_left,
        carry = coalesce((p_priced->>'carry_after')::numeric, carry),
        updated_at = p_now
    where id = p_hold.account_id
    returning available - debt into v_net;
  if p_captured > 0 or p_priced is not null then
    insert into entries (account_id, kind, amount, balance_after, hold_id, idempotency_key,
      reference, actor, created_at, meter, quantities, rate_card_id, rate_card_version, cost, carry_after)
    values (p_hold.account_id, 'capture', 0, v_net - v_release + v_expired, p_hold.id,
      'capture:hold_' || p_hold.id,
      jsonb_build_object('hold_id', 'hold_' || p_hold.id, 'captured', p_captured), p_actor, p_now,
      p_priced->>'meter', p_priced->'quantities', p_priced->>'rate_card_id',
      (p_priced->>'rate_card_version')::integer, (p_priced->>'cost')::numeric, (p_priced->>'carry_after')::numeric);
  end if;
  if v_release > 0 then
    insert into entries (account_id, kind, amount, balance_after, grant_ids, grant_credits, hold_id,
      idempotency_key, reference, actor, created_at)
    values (p_hold.account_id, 'release', v_release, v_net + v_expired, v_ids, v_credits, p_hold.id,
      'release:hold_' || p_hold.id,
      jsonb_build_object('hold_id', 'hold_' || p_hold.id, 'status', p_status), p_actor, p_now);
  end if;
  if v_expired > 0 then
    insert into entries (account_id, kind, amount, balance_after, hold_id, idempotency_key,
      reference, actor, created_at)
    values (p_hold.account_id, 'expire', -v_expired, v_net, p_hold.id, 'expire:hold_' || p_hold.id,
      jsonb_build_object('hold_id', 'hold_' || p_hold.id), 'system', p_now);
  end if;
end $$;

create or replace function tally_capture(p_hold_id bigint, p_amount bigint, p_actor text, p_now timestamptz)
  returns jsonb language plpgsql as $$
declare
  v_now timestamptz := coalesce(p_now, now());
  v_hold holds := tally_lock_pending_hold(p_hold_id, v_now);
  v_amount bigint := coalesce(p_amount, v_hold.amount);
  v_available bigint;
begin
  -- A priced hold is captured by quantities; without any, by the quantities it held.
  if v_hold.meter is not null then
    if p_amount is not null then
      raise exception 'hold_% is priced by meter %: capture it with quantities, not amount', p_hold_id, v_hold.meter
        using errcode = 'TP400', detail = 'amount';
    end if;
    return tally_priced_capture(p_hold_id, null, p_actor, v_now);
  end if;
  if v_amount > v_hold.amount then
    raise exception 'capture of % exceeds the hold of %', v_amount, v_hold.amount
      using errcode = 'TH400', detail = v_hold.amount::text;
  end if;
  perform tally_release(v_hold, v_amount, 'captured', p_actor, v_now);
  perform tally_settle(v_hold.account_id, v_now);
  select available into v_available from accounts where id = v_hold.account_id;
  return jsonb_build_object('captured', v_amount, 'released', v_hold.amount - v_amount,
    'available', v_available);
end $$;

create or replace function tally_void(p_hold_id bigint, p_actor text, p_now timestamptz)
  returns jsonb language plpgsql as $$
declare
  v_now timestamptz := coalesce(p_now, now());
  v_hold holds := tally_lock_pending_hold(p_hold_id, v_now);
  v_available bigint;
begin
  perform tally_release(v_hold, 0, 'voided', p_actor, v_now);
  perform tally_settle(v_hold.account_id, v_now);
  select available into v_available from accounts where id = v_hold.account_id;
  return jsonb_build_object('released', v_hold.amount, 'available', v_available);
end $$;
