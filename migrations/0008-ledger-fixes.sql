-- 0008-ledger-fixes: an expired grant stays expired (a release or a restore never brings it
-- back, and no path writes `expire:grant_N` twice); restores give credits back to the grants
-- their clawback took them from; the usage batch locks its accounts before it decides which to
-- settle.
--
-- The definitions this migration replaces are kept under *_before_0008 names, so that rolling
-- it back puts them back exactly and drops the functions it added.
--
-- Rollback:
--   drop function tally_release(holds, bigint, text, text, timestamptz);
--   alter function tally_release_before_0008(holds, bigint, text, text, timestamptz) rename to tally_release;
--   drop function tally_expire_due(text, timestamptz);
--   alter function tally_expire_due_before_0008(text, timestamptz) rename to tally_expire_due;
--   drop function tally_expire_grant(bigint, timestamptz);
--   alter function tally_expire_grant_before_0008(bigint, timestamptz) rename to tally_expire_grant;
--   drop function tally_usage_batch(jsonb, timestamptz);
--   alter function tally_usage_batch_before_0008(jsonb, timestamptz) rename to tally_usage_batch;
--   drop function if exists tally_restore, tally_restore_to_grants, tally_expire_remaining, tally_grant_expired;
--   delete from tally_migrations where version = 8;

-- The definitions replaced below stay, renamed, so that the rollback puts them back exactly.
alter function tally_release(holds, bigint, text, text, timestamptz) rename to tally_release_before_0008;
alter function tally_expire_due(text, timestamptz) rename to tally_expire_due_before_0008;
alter function tally_expire_grant(bigint, timestamptz) rename to tally_expire_grant_before_0008;
alter function tally_usage_batch(jsonb, timestamptz) rename to tally_usage_batch_before_0008;

-- Whether a grant has expired for good: its expiry has passed, or it was expired before that
-- (tally_expire_grant, when a rollover ends a period early) or by a settle whose clock ran
-- ahead of the caller's. Credits coming back to such a grant expire at once: it never takes
-- them back, or the next settle would expire it a second time.
create or replace function tally_grant_expired(p_account text, p_grant_id bigint, p_now timestamptz)
  returns boolean language sql stable
  return exists (select 1 from grants where id = p_grant_id and expires_at <= p_now)
    or exists (select 1 from entries
               where account_id = p_account and idempotency_key = 'expire:grant_' || p_grant_id);

-- Expires what is left of one grant under `expire:grant_N`; answers the credits it expired.
-- A grant expires once. Only a grant that a release brought back to life before this migration
-- can have credits left once that key exists: they expire under a key that names their own
-- entry, rather than failing every later settle of the account with a unique violation.
-- The caller holds the account lock.
create or replace function tally_expire_remaining(p_grant_id bigint, p_now timestamptz)
  returns bigint language plpgsql as $$
declare
  v_grant grants;
  v_entry_id bigint;
  v_key text;
  v_net bigint;
begin
  select * into v_grant from grants where id = p_grant_id;
  if not found or v_grant.remaining = 0 then
    return 0;
  end if;
  v_entry_id := nextval(pg_get_serial_sequence('entries', 'id'));
  v_key := 'expire:grant_' || v_grant.id;
  if exists (select 1 from entries where account_id = v_grant.account_id and idempotency_key = v_key) then
    v_key := v_key || ':entry_' || v_entry_id;
  end if;
  update grants set remaining = 0 where id = v_grant.id;
  update accounts set available = available - v_grant.remaining, updated_at = p_now
    where id = v_grant.account_id returning available - debt into v_net;
  insert into entries (id, account_id, kind, amount, balance_after, grant_ids, grant_credits,
    idempotency_key, reference, actor, created_at) overriding system value
  values (v_entry_id, v_grant.account_id, 'expire', -v_grant.remaining, v_net, array[v_grant.id],
    array[-v_grant.remaining], v_key, jsonb_build_object('grant_id', 'grant_' || v_grant.id),
    'system', p_now);
  return v_grant.remaining;
end $$;

-- Writes an expire entry for each grant of the account whose expiry has passed.
create or replace function tally_expire_due(p_account text, p_now timestamptz) returns void
  language plpgsql as $$
declare
  g record;
begin
  for g in
    select id from grants where account_id = p_account and live and expires_at <= p_now order by id
  loop
    perform tally_expire_remaining(g.id, p_now);
  end loop;
end $$;

-- Expires what is left of one grant now (a rollover ends the old period early). Answers the
-- credits that expired under the grant's key, now or before. The caller holds the account lock.
create or replace function tally_expire_grant(p_grant_id bigint, p_now timestamptz) returns bigint
  language plpgsql as $$
declare
  v_account text;
begin
  perform tally_expire_remaining(p_grant_id, coalesce(p_now, now()));
  select account_id into v_account from grants where id = p_grant_id;
  return (select coalesce(-sum(amount), 0) from entries
          where account_id = v_account and idempotency_key = 'expire:grant_' || p_grant_id);
end $$;

-- Resolves a pending hold: captures p_captured and releases the rest. Released credits go
-- back to the grants they came from, last taken first, so that what was captured is what the
-- spend order chose first. Credits whose grant has expired meanwhile (by its expiry, or early)
-- expire at once, and credits coming back while the account is in debt repay the debt first.
create or replace function tally_release(p_hold holds, p_captured bigint, p_status text, p_actor text,
  p_now timestamptz) returns void language plpgsql as $$
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
        updated_at = p_now
    where id = p_hold.account_id
    returning available - debt into v_net;
  if p_captured > 0 then
    insert into entries (account_id, kind, amount, balance_after, hold_id, idempotency_key,
      reference, actor, created_at)
    values (p_hold.account_id, 'capture', 0, v_net - v_release + v_expired, p_hold.id,
      'capture:hold_' || p_hold.id,
      jsonb_build_object('hold_id', 'hold_' || p_hold.id, 'captured', p_captured), p_actor, p_now);
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

-- A batch of usage events in one transaction, with the same answer for each event as
-- tally_usage would give. Events are taken by account (sorted, so accounts are locked in id
-- order; each account's events keep the order given): all the batch's accounts are locked
-- first, then a settle only where a hold or grant is due, one read of each account's live
-- grants, each spend decided in memory in spend order; then one write per table for the whole
-- batch. Results come back in the order of the request. Each event names its actor.
create or replace function tally_usage_batch(p_events jsonb, p_now timestamptz)
  returns jsonb language plpgsql as $$
declare
  v_now timestamptz := coalesce(p_now, now());
  v_results jsonb[] := array_fill(null::jsonb, array[jsonb_array_length(p_events)]);
  v_due text[];
  e record;
  v_account text;
  v_exists boolean := false;
  v_available bigint;
  v_debt bigint;
  -- The live grants of every account opened so far, in spend order, one account after another:
  -- v_cursor walks the current account's part, which ends at v_last.
  v_grant_ids bigint[] := '{}';
  v_grant_left bigint[] := '{}';
  v_grant_taken bigint[] := '{}';
  v_cursor integer;
  v_last integer;
  v_account_ids text[] := '{}';
  v_account_available bigint[] := '{}';
  v_entries jsonb[] := '{}';
  v_keys jsonb[] := '{}';
  v_seen_keys text[] := '{}';
  v_prior request_keys;
  v_position integer;
  v_key text;
  v_hash text;
  v_amount bigint;
  v_left bigint;
  v_step bigint;
  v_ids bigint[];
  v_credits bigint[];
  v_entry_id bigint;
  v_status integer;
  v_body jsonb;
begin
  -- Lock first, in the order the loop below takes the accounts. Which accounts need a settle
  -- is decided only under their locks: from a snapshot taken before, a release that committed
  -- in between (credits back to a grant this batch then reads as expired) went unseen, and
  -- available exceeded the live grants read next: a broken invariant where tally_usage says 402.
  perform 1 from accounts
    where id in (select value->>'account_id' from jsonb_array_elements(p_events))
    order by id collate "C" for update;
  -- The accounts of this batch with a hold or a grant past due: only they need a settle.
  select coalesce(array_agg(distinct d.account_id), '{}') into v_due from (
    select h.account_id from holds h
      where h.status = 'pending' and h.expires_at <= v_now
        and h.account_id in (select value->>'account_id' from jsonb_array_elements(p_events))
    union all
    select g.account_id from grants g
      where g.live and g.expires_at <= v_now
        and g.account_id in (select value->>'account_id' from jsonb_array_elements(p_events))) d;
  for e in
    select value, ordinality from jsonb_array_elements(p_events) with ordinality
    order by value->>'account_id' collate "C", ordinality
  loop
    if v_account is distinct from e.value->>'account_id' then
      v_account := e.value->>'account_id';
      select available, debt into v_available, v_debt from accounts where id = v_account for update;
      v_exists := found;
      if v_exists then
        if v_account = any(v_due) then
          perform tally_settle(v_account, v_now);
          select available, debt into v_available, v_debt from accounts where id = v_account;
        end if;
        v_account_ids := v_account_ids || v_account;
        v_account_available := v_account_available || v_available;
        v_cursor := cardinality(v_grant_ids) + 1;
        select v_grant_ids || coalesce(array_agg(id order by priority, expires_at, created_at, id), '{}'),
               v_grant_left || coalesce(array_agg(remaining order by priority, expires_at, created_at, id), '{}'),
               v_grant_taken || coalesce(array_agg(0::bigint), '{}')
          into v_grant_ids, v_grant_left, v_grant_taken
          from grants where account_id = v_account and live and (expires_at is null or expires_at > v_now);
        v_last := cardinality(v_grant_ids);
      end if;
    end if;
    v_key := e.value->>'idempotency_key';
    v_hash := e.value->>'payload_hash';
    v_amount := (e.value->>'amount')::bigint;
    -- A key seen before, earlier in this batch or stored, answers as tally_open would.
    v_position := array_position(v_seen_keys, v_key);
    if v_position is not null then
      v_results[e.ordinality] := tally_replay(jsonb_populate_record(null::request_keys, v_keys[v_position]), v_account, 'usage', v_hash);
      continue;
    end if;
    select * into v_prior from request_keys where key = v_key;
    if found then
      v_results[e.ordinality] := tally_replay(v_prior, v_account, 'usage', v_hash);
      continue;
    end if;
    if not v_exists then
      v_results[e.ordinality] := jsonb_build_object('status', 404,
        'body', tally_error('account_not_found', 'no account with id ' || v_account));
      continue;
    end if;
    if v_available < v_amount then
      v_status := 402;
      v_body := tally_error('insufficient_credits', 'not enough credits available',
        jsonb_build_object('available', v_available));
    else
      v_left := v_amount;
      v_ids := '{}';
      v_credits := '{}';
      while v_left > 0 loop
        if v_cursor > v_last then
          raise exception 'invariant broken: available of account % exceeds its live grants', v_account
            using errcode = 'TX001';
        end if;
        v_step := least(v_grant_left[v_cursor], v_left);
        v_grant_left[v_cursor] := v_grant_left[v_cursor] - v_step;
        v_grant_taken[v_cursor] := v_grant_taken[v_cursor] + v_step;
        v_ids := v_ids || v_grant_ids[v_cursor];
        v_credits := v_credits || -v_step;
        v_left := v_left - v_step;
        if v_grant_left[v_cursor] = 0 then
          v_cursor := v_cursor + 1;
        end if;
      end loop;
      v_available := v_available - v_amount;
      v_account_available[cardinality(v_account_ids)] := v_available;
      v_entry_id := nextval(pg_get_serial_sequence('entries', 'id'));
      v_entries := v_entries || jsonb_build_object('id', v_entry_id, 'account_id', v_account,
        'amount', -v_amount, 'balance_after', v_available - v_debt, 'grant_ids', to_jsonb(v_ids),
        'grant_credits', to_jsonb(v_credits), 'idempotency_key', 'request:' || v_key,
        'reference', coalesce(e.value->'reference', '{}'::jsonb), 'actor', e.value->>'actor');
      v_status := 200;
      v_body := jsonb_build_object('entry_id', 'entry_' || v_entry_id, 'amount', v_amount,
        'available', v_available, 'replayed', false);
    end if;
    v_keys := v_keys || jsonb_build_object('key', v_key, 'account_id', v_account, 'operation', 'usage',
      'payload_hash', v_hash, 'status_code', v_status, 'response', v_body);
    v_seen_keys := v_seen_keys || v_key;
    v_results[e.ordinality] := jsonb_build_object('status', v_status, 'body', v_body);
  end loop;
  perform tally_batch_flush(v_account_ids, v_account_available, v_grant_ids, v_grant_taken,
    v_entries, v_keys, v_now);
  return to_jsonb(v_results);
end $$;

