-- 0002-ledger-functions: every money operation as one SQL function, so that each request is
-- one round trip that locks its account row, checks the invariants where the data is, and
-- writes grants, entries, holds and the request key's outcome together.
--
-- Rollback: drop the functions (the tables of 0001 are untouched):
--   drop function if exists tally_error, tally_iso, tally_grant_json, tally_entry_json,
--     tally_replay, tally_remember, tally_take, tally_expire_due, tally_release, tally_settle,
--     tally_open, tally_open_spend, tally_add_grant, tally_usage, tally_batch_flush, tally_usage_batch, tally_hold, tally_capture,
--     tally_void, tally_lock_pending_hold, tally_admin_grant, tally_adjust, tally_settle_account
--     cascade;
--   delete from tally_migrations where version = 2;
--
-- Conventions: every public function takes p_now (NULL means the database clock) so that tests
-- can move time; refusals that are a request key's first outcome are returned as
-- {status, body} and stored; refusals that write nothing are raised with a custom SQLSTATE
-- (TA404 account, TH404/TH409/TH400 holds); TX001 is a broken invariant (a bug, never a
-- client error).

create function tally_error(p_code text, p_message text, p_details jsonb default '{}'::jsonb)
  returns jsonb language sql immutable
  return jsonb_build_object('error', jsonb_build_object('code', p_code, 'message', p_message) || p_details);

create function tally_iso(p_time timestamptz) returns text language sql immutable
  return to_char(p_time at time zone 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"');

create function tally_grant_json(g grants) returns jsonb language sql stable
  return jsonb_build_object('id', 'grant_' || g.id, 'source', g.source, 'amount', g.amount,
    'remaining', g.remaining, 'priority', g.priority, 'expires_at', tally_iso(g.expires_at),
    'created_at', tally_iso(g.created_at), 'reference', g.reference);

create function tally_entry_json(e entries) returns jsonb language sql stable
  return jsonb_build_object('id', 'entry_' || e.id, 'kind', e.kind, 'amount', e.amount,
    'balance_after', e.balance_after,
    'grant_ids', (select coalesce(jsonb_agg('grant_' || g order by n), '[]'::jsonb)
                  from unnest(e.grant_ids) with ordinality as u(g, n)),
    'idempotency_key', e.idempotency_key, 'reference', e.reference, 'actor', e.actor,
    'reason', e.reason, 'created_at', tally_iso(e.created_at));

-- The answer to a key seen before: the stored first outcome, or a conflict when the payload,
-- the operation or the account differs.
create function tally_replay(p_prior request_keys, p_account text, p_operation text, p_hash text)
  returns jsonb language plpgsql stable as $$
begin
  if p_prior.account_id <> p_account or p_prior.operation <> p_operation
     or p_prior.payload_hash <> p_hash then
    return jsonb_build_object('status', 409, 'body', tally_error('idempotency_conflict',
      'this idempotency key was first used with another request',
      jsonb_build_object('idempotency_key', p_prior.key)));
  end if;
  if p_prior.status_code < 300 then
    return jsonb_build_object('status', p_prior.status_code,
      'body', p_prior.response || '{"replayed": true}'::jsonb);
  end if;
  return jsonb_build_object('status', p_prior.status_code, 'body', p_prior.response);
end $$;

create function tally_remember(p_key text, p_account text, p_operation text, p_hash text,
  p_status integer, p_body jsonb, p_now timestamptz) returns jsonb language plpgsql as $$
begin
  insert into request_keys (key, account_id, operation, payload_hash, status_code, response, created_at)
  values (p_key, p_account, p_operation, p_hash, p_status, p_body, p_now);
  return jsonb_build_object('status', p_status, 'body', p_body);
end $$;

-- Takes p_amount from the account's live grants in spend order (the grants of p_payment_id
-- first, when given: a clawback takes back what the payment bought). The caller holds the
-- account lock and has checked that available covers p_amount.
create function tally_take(p_account text, p_amount bigint, p_now timestamptz,
  out grant_ids bigint[], out grant_credits bigint[], p_payment_id bigint default null)
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
    order by (payment_id = p_payment_id) is true desc, priority, expires_at, created_at, id
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

-- Writes an expire entry for each grant of the account whose expiry has passed.
create function tally_expire_due(p_account text, p_now timestamptz) returns void
  language plpgsql as $$
declare
  g record;
  v_net bigint;
begin
  for g in
    select id, remaining from grants
    where account_id = p_account and live and expires_at <= p_now order by id
  loop
    update grants set remaining = 0 where id = g.id;
    update accounts set available = available - g.remaining, updated_at = p_now
      where id = p_account returning available - debt into v_net;
    insert into entries (account_id, kind, amount, balance_after, grant_ids, grant_credits,
      idempotency_key, reference, actor, created_at)
    values (p_account, 'expire', -g.remaining, v_net, array[g.id], array[-g.remaining],
      'expire:grant_' || g.id, jsonb_build_object('grant_id', 'grant_' || g.id), 'system', p_now);
  end loop;
end $$;

-- Resolves a pending hold: captures p_captured and releases the rest. Released credits go
-- back to the grants they came from, last taken first, so that what was captured is what the
-- spend order chose first. Credits whose grant has expired meanwhile expire at once, and
-- credits coming back while the account is in debt repay the debt first.
create function tally_release(p_hold holds, p_captured bigint, p_status text, p_actor text,
  p_now timestamptz) returns void language plpgsql as $$
declare
  v_release bigint := p_hold.amount - p_captured;
  v_left bigint := v_release;
  v_expired bigint := 0;
  v_repay_left bigint;
  v_give bigint;
  v_back bigint;
  v_grant_expires timestamptz;
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
    select expires_at into v_grant_expires from grants where id = p_hold.grant_ids[i];
    if v_grant_expires is not null and v_grant_expires <= p_now then
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

-- Brings an account up to p_now: releases holds past their expiry, then expires grants past
-- theirs. The caller holds the account lock.
create function tally_settle(p_account text, p_now timestamptz) returns void language plpgsql as $$
declare
  h holds;
begin
  for h in
    select * from holds
    where account_id = p_account and status = 'pending' and expires_at <= p_now order by id
  loop
    perform tally_release(h, 0, 'expired', 'system', p_now);
  end loop;
  perform tally_expire_due(p_account, p_now);
end $$;

-- The common start of a keyed operation: a replayed key answers at once; otherwise lock the
-- account, look at the key again (a racing request for the same account has committed by
-- now), and settle the account. NULL means: go on.
create function tally_open(p_account text, p_key text, p_operation text, p_hash text,
  p_now timestamptz) returns jsonb language plpgsql as $$
declare
  v_prior request_keys;
begin
  select * into v_prior from request_keys where key = p_key;
  if found then
    return tally_replay(v_prior, p_account, p_operation, p_hash);
  end if;
  perform 1 from accounts where id = p_account for update;
  if not found then
    return jsonb_build_object('status', 404,
      'body', tally_error('account_not_found', 'no account with id ' || p_account));
  end if;
  select * into v_prior from request_keys where key = p_key;
  if found then
    return tally_replay(v_prior, p_account, p_operation, p_hash);
  end if;
  perform tally_settle(p_account, p_now);
  return null;
end $$;

-- tally_open, then the overdraft check of a spend: a spend above available is refused with
-- 402, and that refusal is the key's first outcome. NULL means: go on and spend.
create function tally_open_spend(p_account text, p_amount bigint, p_key text, p_operation text,
  p_hash text, p_now timestamptz) returns jsonb language plpgsql as $$
declare
  v_outcome jsonb := tally_open(p_account, p_key, p_operation, p_hash, p_now);
  v_available bigint;
begin
  if v_outcome is not null then
    return v_outcome;
  end if;
  select available into v_available from accounts where id = p_account;
  if v_available < p_amount then
    return tally_remember(p_key, p_account, p_operation, p_hash, 402,
      tally_error('insufficient_credits', 'not enough credits available',
        jsonb_build_object('available', v_available)), p_now);
  end if;
  return null;
end $$;

-- Adds a grant under its natural key, repaying debt first. An existing key answers the
-- existing grant with created = false and changes nothing. The caller holds the account lock.
create function tally_add_grant(p_account text, p_source text, p_amount bigint, p_priority integer,
  p_expires_at timestamptz, p_grant_key text, p_entry_kind text, p_reference jsonb, p_actor text,
  p_reason text, p_now timestamptz) returns jsonb language plpgsql as $$
declare
  v_grant grants;
  v_repay bigint;
  v_net bigint;
  v_entry entries;
begin
  select * into v_grant from grants where account_id = p_account and grant_key = p_grant_key;
  if found then
    return jsonb_build_object('created', false, 'grant', tally_grant_json(v_grant));
  end if;
  select least(debt, p_amount) into v_repay from accounts where id = p_account;
  insert into grants (account_id, source, amount, remaining, priority, expires_at, grant_key,
    reference, created_at)
  values (p_account, p_source, p_amount, p_amount - v_repay, p_priority, p_expires_at, p_grant_key,
    p_reference, p_now)
  returning * into v_grant;
  update accounts set available = available + (p_amount - v_repay), debt = debt - v_repay,
    updated_at = p_now where id = p_account returning available - debt into v_net;
  insert into entries (account_id, kind, amount, balance_after, grant_ids, grant_credits,
    idempotency_key, reference, actor, reason, created_at)
  values (p_account, p_entry_kind, p_amount, v_net, array[v_grant.id], array[p_amount - v_repay],
    p_grant_key, p_reference || jsonb_build_object('debt_repaid', v_repay), p_actor, p_reason, p_now)
  returning * into v_entry;
  -- A grant that lands on an expiry already past counts for nothing.
  perform tally_expire_due(p_account, p_now);
  return jsonb_build_object('created', true, 'grant', tally_grant_json(v_grant),
    'entry', tally_entry_json(v_entry));
end $$;

create function tally_usage(p_account text, p_amount bigint, p_key text, p_hash text,
  p_actor text, p_reference jsonb, p_now timestamptz) returns jsonb language plpgsql as $$
declare
  v_now timestamptz := coalesce(p_now, now());
  v_outcome jsonb;
  v_account accounts;
  v_take record;
  v_entry_id bigint;
begin
  v_outcome := tally_open_spend(p_account, p_amount, p_key, 'usage', p_hash, v_now);
  if v_outcome is not null then
    return v_outcome;
  end if;
  select * into v_take from tally_take(p_account, p_amount, v_now);
  update accounts set available = available - p_amount, updated_at = v_now
    where id = p_account returning * into v_account;
  insert into entries (account_id, kind, amount, balance_after, grant_ids, grant_credits,
    idempotency_key, reference, actor, created_at)
  values (p_account, 'usage', -p_amount, v_account.available - v_account.debt, v_take.grant_ids,
    v_take.grant_credits, 'request:' || p_key, p_reference, p_actor, v_now)
  returning id into v_entry_id;
  return tally_remember(p_key, p_account, 'usage', p_hash, 200,
    jsonb_build_object('entry_id', 'entry_' || v_entry_id, 'amount', p_amount,
      'available', v_account.available, 'replayed', false), v_now);
end $$;

-- Writes what a batch decided: grants' remaining, accounts' available, the entries and the
-- request keys, each in one statement. The caller holds the accounts' locks.
create function tally_batch_flush(p_account_ids text[], p_available bigint[], p_grant_ids bigint[],
  p_grant_taken bigint[], p_entries jsonb[], p_keys jsonb[], p_now timestamptz) returns void
  language plpgsql as $$
begin
  update grants g set remaining = g.remaining - t.taken
    from unnest(p_grant_ids, p_grant_taken) as t(id, taken) where g.id = t.id and t.taken > 0;
  update accounts a set available = t.available, updated_at = p_now
    from unnest(p_account_ids, p_available) as t(id, available) where a.id = t.id and a.available <> t.available;
  insert into entries (id, account_id, kind, amount, balance_after, grant_ids, grant_credits,
    idempotency_key, reference, actor, created_at) overriding system value
  select r.id, r.account_id, 'usage', r.amount, r.balance_after, r.grant_ids, r.grant_credits,
    r.idempotency_key, r.reference, r.actor, p_now
  from unnest(p_entries) as x(value), jsonb_to_record(x.value) as r(id bigint, account_id text,
    amount bigint, balance_after bigint, grant_ids bigint[], grant_credits bigint[],
    idempotency_key text, reference jsonb, actor text);
  insert into request_keys (key, account_id, operation, payload_hash, status_code, response, created_at)
  select r.key, r.account_id, r.operation, r.payload_hash, r.status_code, r.response, p_now
  from unnest(p_keys) as x(value), jsonb_to_record(x.value) as r(key text, account_id text,
    operation text, payload_hash text, status_code integer, response jsonb);
end $$;

-- A batch of usage events in one transaction, with the same answer for each event as
-- tally_usage would give. Events are taken by account (sorted, so accounts are locked in id
-- order; each account's events keep the order given): one locking read per account, a settle
-- only where a hold or grant is due, one read of its live grants, each spend decided in memory
-- in spend order; then one write per table for the whole batch. Results come back in the
-- order of the request. Each event names its actor.
create function tally_usage_batch(p_events jsonb, p_now timestamptz)
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

create function tally_hold(p_account text, p_amount bigint, p_expires_in_seconds integer,
  p_key text, p_hash text, p_actor text, p_now timestamptz) returns jsonb language plpgsql as $$
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
  select * into v_take from tally_take(p_account, p_amount, v_now);
  insert into holds (account_id, amount, grant_ids, grant_credits, expires_at, idempotency_key, created_at)
  values (p_account, p_amount, v_take.grant_ids, v_take.grant_credits,
    v_now + make_interval(secs => p_expires_in_seconds), p_key, v_now)
  returning * into v_hold;
  update accounts set available = available - p_amount, held = held + p_amount, updated_at = v_now
    where id = p_account returning * into v_account;
  v_net := v_account.available - v_account.debt;
  insert into entries (account_id, kind, amount, balance_after, grant_ids, grant_credits, hold_id,
    idempotency_key, reference, actor, created_at)
  values (p_account, 'hold', -p_amount, v_net, v_take.grant_ids, v_take.grant_credits, v_hold.id,
    'request:' || p_key, jsonb_build_object('hold_id', 'hold_' || v_hold.id), p_actor, v_now);
  return tally_remember(p_key, p_account, 'hold', p_hash, 201,
    jsonb_build_object('hold_id', 'hold_' || v_hold.id, 'amount', p_amount,
      'expires_at', tally_iso(v_hold.expires_at), 'available', v_account.available,
      'replayed', false), v_now);
end $$;

-- Locks the hold's account, then the hold, and checks that it can still be resolved.
create function tally_lock_pending_hold(p_hold_id bigint, p_now timestamptz) returns holds
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

create function tally_capture(p_hold_id bigint, p_amount bigint, p_actor text, p_now timestamptz)
  returns jsonb language plpgsql as $$
declare
  v_now timestamptz := coalesce(p_now, now());
  v_hold holds := tally_lock_pending_hold(p_hold_id, v_now);
  v_available bigint;
begin
  if p_amount > v_hold.amount then
    raise exception 'capture of % exceeds the hold of %', p_amount, v_hold.amount
      using errcode = 'TH400', detail = v_hold.amount::text;
  end if;
  perform tally_release(v_hold, p_amount, 'captured', p_actor, v_now);
  perform tally_settle(v_hold.account_id, v_now);
  select available into v_available from accounts where id = v_hold.account_id;
  return jsonb_build_object('captured', p_amount, 'released', v_hold.amount - p_amount,
    'available', v_available);
end $$;

create function tally_void(p_hold_id bigint, p_actor text, p_now timestamptz)
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

create function tally_admin_grant(p_account text, p_amount bigint, p_source text, p_priority integer,
  p_expires_at timestamptz, p_reference jsonb, p_key text, p_hash text, p_reason text,
  p_now timestamptz) returns jsonb language plpgsql as $$
declare
  v_now timestamptz := coalesce(p_now, now());
  v_outcome jsonb;
  v_added jsonb;
begin
  v_outcome := tally_open(p_account, p_key, 'grant', p_hash, v_now);
  if v_outcome is not null then
    return v_outcome;
  end if;
  v_added := tally_add_grant(p_account, p_source, p_amount, p_priority, p_expires_at,
    'request:' || p_key, 'grant', p_reference, 'admin', p_reason, v_now);
  insert into audit_log (account_id, actor, action, reason, before, after, created_at)
  values (p_account, 'admin', 'grant', p_reason, null, v_added->'grant', v_now);
  return tally_remember(p_key, p_account, 'grant', p_hash, 201, v_added->'grant', v_now);
end $$;

-- A signed correction by an operator: positive adds a never-expiring admin grant, negative takes
-- from live grants in spend order and never overdraws.
create function tally_adjust(p_account text, p_amount bigint, p_key text, p_hash text,
  p_reason text, p_now timestamptz) returns jsonb language plpgsql as $$
declare
  v_now timestamptz := coalesce(p_now, now());
  v_outcome jsonb;
  v_before accounts;
  v_account accounts;
  v_take record;
  v_entry entries;
begin
  v_outcome := tally_open_spend(p_account, greatest(-p_amount, 0), p_key, 'adjustment', p_hash, v_now);
  if v_outcome is not null then
    return v_outcome;
  end if;
  select * into v_before from accounts where id = p_account;
  if p_amount > 0 then
    perform tally_add_grant(p_account, 'admin', p_amount, 0, null, 'request:' || p_key,
      'adjustment', '{}'::jsonb, 'admin', p_reason, v_now);
    select * into v_entry from entries
      where account_id = p_account and idempotency_key = 'request:' || p_key;
  else
    select * into v_take from tally_take(p_account, -p_amount, v_now);
    update accounts set available = available + p_amount, updated_at = v_now
      where id = p_account returning * into v_account;
    insert into entries (account_id, kind, amount, balance_after, grant_ids, grant_credits,
      idempotency_key, actor, reason, created_at)
    values (p_account, 'adjustment', p_amount, v_account.available - v_account.debt,
      v_take.grant_ids, v_take.grant_credits, 'request:' || p_key, 'admin', p_reason, v_now)
    returning * into v_entry;
  end if;
  select * into v_account from accounts where id = p_account;
  insert into audit_log (account_id, actor, action, reason, before, after, created_at)
  values (p_account, 'admin', 'adjustment', p_reason,
    jsonb_build_object('available', v_before.available, 'debt', v_before.debt),
    jsonb_build_object('available', v_account.available, 'debt', v_account.debt), v_now);
  return tally_remember(p_key, p_account, 'adjustment', p_hash, 201, tally_entry_json(v_entry), v_now);
end $$;

-- The background sweep: settles one account (its own transaction, its own lock).
create function tally_settle_account(p_account text, p_now timestamptz) returns void
  language plpgsql as $$
begin
  perform 1 from accounts where id = p_account for update;
  if found then
    perform tally_settle(p_account, coalesce(p_now, now()));
  end if;
end $$;
