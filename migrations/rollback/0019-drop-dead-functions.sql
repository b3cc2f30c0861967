-- The rollback of migration 0019: re-creates, exactly as 0019 found them, the functions it
-- dropped, so that the rollback notes of 0018 and earlier (which rename these copies back) work.
-- Nothing in Tally calls them; they exist here only for a rollback past 0019.

CREATE OR REPLACE FUNCTION public.tally_batch_flush(p_account_ids text[], p_available bigint[], p_grant_ids bigint[], p_grant_taken bigint[], p_entries jsonb[], p_keys jsonb[], p_now timestamp with time zone)
 RETURNS void
 LANGUAGE plpgsql
AS $function$
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
end $function$;

CREATE OR REPLACE FUNCTION public.tally_clawback_before_0010(p_account text, p_credits bigint, p_key text, p_payment_id bigint, p_reference jsonb, p_now timestamp with time zone)
 RETURNS jsonb
 LANGUAGE plpgsql
AS $function$
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
end $function$;

CREATE OR REPLACE FUNCTION public.tally_expire_due_before_0008(p_account text, p_now timestamp with time zone)
 RETURNS void
 LANGUAGE plpgsql
AS $function$
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
end $function$;

CREATE OR REPLACE FUNCTION public.tally_expire_grant_before_0008(p_grant_id bigint, p_now timestamp with time zone)
 RETURNS bigint
 LANGUAGE plpgsql
AS $function$
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
end $function$;

CREATE OR REPLACE FUNCTION public.tally_hold_before_0015(p_account text, p_amount bigint, p_expires_in_seconds integer, p_key text, p_hash text, p_actor text, p_now timestamp with time zone)
 RETURNS jsonb
 LANGUAGE plpgsql
AS $function$
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
end $function$;

CREATE OR REPLACE FUNCTION public.tally_open_before_0013(p_account text, p_key text, p_operation text, p_hash text, p_now timestamp with time zone)
 RETURNS jsonb
 LANGUAGE plpgsql
AS $function$
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
end $function$;

CREATE OR REPLACE FUNCTION public.tally_open_spend_before_0015(p_account text, p_amount bigint, p_key text, p_operation text, p_hash text, p_now timestamp with time zone)
 RETURNS jsonb
 LANGUAGE plpgsql
AS $function$
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
end $function$;

CREATE OR REPLACE FUNCTION public.tally_release_before_0008(p_hold holds, p_captured bigint, p_status text, p_actor text, p_now timestamp with time zone)
 RETURNS void
 LANGUAGE plpgsql
AS $function$
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
end $function$;

CREATE OR REPLACE FUNCTION public.tally_replay_before_0013(p_prior request_keys, p_account text, p_operation text, p_hash text)
 RETURNS jsonb
 LANGUAGE plpgsql
 STABLE
AS $function$
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
  if jsonb_typeof(p_prior.response->'error') = 'object' then
    return jsonb_build_object('status', p_prior.status_code,
      'body', jsonb_set(p_prior.response, '{error,replayed}', 'true'::jsonb));
  end if;
  return jsonb_build_object('status', p_prior.status_code, 'body', p_prior.response);
end $function$;

CREATE OR REPLACE FUNCTION public.tally_take_before_0010(p_account text, p_amount bigint, p_now timestamp with time zone, OUT grant_ids bigint[], OUT grant_credits bigint[], p_payment_id bigint DEFAULT NULL::bigint)
 RETURNS record
 LANGUAGE plpgsql
AS $function$
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
end $function$;

CREATE OR REPLACE FUNCTION public.tally_usage_batch_before_0008(p_events jsonb, p_now timestamp with time zone)
 RETURNS jsonb
 LANGUAGE plpgsql
AS $function$
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
end $function$;

CREATE OR REPLACE FUNCTION public.tally_usage_batch_before_0013(p_events jsonb, p_now timestamp with time zone)
 RETURNS jsonb
 LANGUAGE plpgsql
AS $function$
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
end $function$;

CREATE OR REPLACE FUNCTION public.tally_usage_batch_before_0015(p_account_ids text[], p_amounts bigint[], p_keys text[], p_hashes text[], p_references jsonb[], p_actors text[], p_now timestamp with time zone)
 RETURNS jsonb
 LANGUAGE plpgsql
AS $function$
declare
  v_now timestamptz := coalesce(p_now, now());
  v_count integer := coalesce(cardinality(p_account_ids), 0);
  v_entry_sequence regclass := pg_get_serial_sequence('entries', 'id')::regclass;
  v_accounts text[];
  v_account text;
  v_results jsonb[];
  v_one_by_one integer[];
  v_uncovered bigint;
  v_position integer;
begin
  if v_count = 0 then
    return '[]'::jsonb;
  end if;
  if coalesce(cardinality(p_amounts), 0) <> v_count or coalesce(cardinality(p_keys), 0) <> v_count
     or coalesce(cardinality(p_hashes), 0) <> v_count or coalesce(cardinality(p_references), 0) <> v_count
     or coalesce(cardinality(p_actors), 0) <> v_count
     or exists (select 1 from unnest(p_amounts) a where a is null or a <= 0) then
    raise exception 'usage batch: % events with arrays of other lengths or amounts that are not positive', v_count
      using errcode = 'TX001';
  end if;
  select coalesce(array_agg(id), '{}') into v_accounts from (
    select id from accounts where id = any(p_account_ids) order by id collate "C" for update) locked;
  -- Holds and grants past due are few (the sweep settles them), so this reads the due ones. As
  -- tally_usage, an account is settled only for a key it has not seen: a replay changes nothing.
  for v_account in
    select d.account_id from (
      select h.account_id from holds h
        where h.status = 'pending' and h.expires_at <= v_now and h.account_id = any(v_accounts)
      union
      select g.account_id from grants g
        where g.live and g.expires_at <= v_now and g.account_id = any(v_accounts)) d
    where exists (
      select 1 from unnest(p_account_ids, p_keys) as e(account_id, key)
      where e.account_id = d.account_id
        and not exists (select 1 from request_keys k where k.account_id = e.account_id and k.key = e.key)
        and not exists (select 1 from entries n where n.account_id = e.account_id and n.idempotency_key = 'request:' || e.key))
    order by d.account_id collate "C"
  loop
    perform tally_settle(v_account, v_now);
  end loop;

  with event as (
    select e.ord::integer as ord, e.account_id, e.amount, e.key, e.hash,
      coalesce(e.reference, '{}'::jsonb) as reference, e.actor,
      (sum(e.amount) over (partition by e.account_id order by e.ord rows unbounded preceding))::bigint as spent_to
    from unnest(p_account_ids, p_amounts, p_keys, p_hashes, p_references, p_actors)
      with ordinality as e(account_id, amount, key, hash, reference, actor, ord)
  ),
  -- Everything the decision reads, one row each: the events (with whether their account has
  -- seen their key before: one probe per event, of request_keys and of the entries' keys), the
  -- live grants of the batch's accounts (with where each ends in spend order) and the accounts.
  part as (
    select e.account_id, e.ord, e.amount, e.spent_to, e.key, e.hash, e.reference, e.actor,
      prior.seen is not null as seen, null::bigint as grant_id, null::bigint as remaining,
      null::bigint as granted_to, null::bigint as available, null::bigint as debt
    from event e
    left join lateral (
      select true as seen from request_keys k where k.account_id = e.account_id and k.key = e.key
      union all
      select true from entries n where n.account_id = e.account_id and n.idempotency_key = 'request:' || e.key
      limit 1) prior on true
    union all
    select g.account_id, null, null, null, null, null, null, null, null, g.id, g.remaining,
      (sum(g.remaining) over (partition by g.account_id order by g.priority, g.expires_at, g.created_at, g.id
        rows unbounded preceding))::bigint,
      null, null
    from grants g
    where g.account_id = any(v_accounts) and g.live and (g.expires_at is null or g.expires_at > v_now)
    union all
    select a.id, null, null, null, null, null, null, null, null, null, null, null, a.available, a.debt
    from accounts a where a.id = any(v_accounts)
  ),
  -- One row per account of the batch: its events as arrays in batch order, whether a key comes
  -- twice or was seen before, its live grants in spend order, and its balance.
  account as (
    -- Each spend reads its account's live grants, so an account with more than 100 of them
    -- (rare: packs bought again and again) takes the per-event path, which stops at the grants
    -- a spend needs.
    select t.*, coalesce(t.keys_new and t.total <= t.available and coalesce(cardinality(t.grant_ids), 0) <= 100, false)
      as at_once
    from (
      select p.account_id as id,
        array_agg(p.ord order by p.ord) filter (where p.ord is not null) as event_ords,
        array_agg(p.amount order by p.ord) filter (where p.ord is not null) as event_amounts,
        array_agg(p.spent_to order by p.ord) filter (where p.ord is not null) as event_spent_to,
        array_agg(p.key order by p.ord) filter (where p.ord is not null) as event_keys,
        array_agg(p.hash order by p.ord) filter (where p.ord is not null) as event_hashes,
        array_agg(p.reference order by p.ord) filter (where p.ord is not null) as event_references,
        array_agg(p.actor order by p.ord) filter (where p.ord is not null) as event_actors,
        sum(p.amount)::bigint as total,
        count(p.ord) = count(distinct p.key) and not bool_or(p.seen) as keys_new,
        array_agg(p.grant_id order by p.granted_to) filter (where p.grant_id is not null) as grant_ids,
        array_agg(p.remaining order by p.granted_to) filter (where p.grant_id is not null) as grant_remaining,
        array_agg(p.granted_to order by p.granted_to) filter (where p.grant_id is not null) as grant_granted_to,
        bool_or(p.available is not null) as found, max(p.available) as available, max(p.debt) as debt
      from part p group by p.account_id) t
  ),
  -- One row per spend of the accounts decided at once: the grants it takes from, in spend
  -- order, and how much from each (negative, as entries write it).
  spent as (
    select c.id as account_id, c.available, c.debt, s.ord, s.amount, s.spent_to, s.key, s.hash,
      s.reference, s.actor, p.grant_ids, p.grant_credits, p.credits
    from account c
    cross join lateral unnest(c.event_ords, c.event_amounts, c.event_spent_to, c.event_keys, c.event_hashes,
      c.event_references, c.event_actors)
      as s(ord, amount, spent_to, key, hash, reference, actor)
    cross join lateral (
      select array_agg(o.id order by o.position) as grant_ids, array_agg(-o.credits order by o.position) as grant_credits,
        sum(o.credits)::bigint as credits
      from (select g.id, g.position,
              least(s.spent_to, g.granted_to) - greatest(s.spent_to - s.amount, g.granted_to - g.remaining) as credits
            from unnest(c.grant_ids, c.grant_remaining, c.grant_granted_to) with ordinality as g(id, remaining, granted_to, position)
            where g.granted_to - g.remaining < s.spent_to and s.spent_to - s.amount < g.granted_to) o) p
    where c.at_once
  ),
  -- Entry ids in the order the per-event path would have taken them.
  numbered as (
    select s.*, nextval(v_entry_sequence) as entry_id
    from (select * from spent order by account_id collate "C", ord) s
  ),
  taken_from_grants as (
    update grants g set remaining = g.remaining - t.credits
    from (select u.id, -sum(u.credits)::bigint as credits
          from spent s cross join lateral unnest(s.grant_ids, s.grant_credits) as u(id, credits)
          group by u.id) t
    where g.id = t.id
  ),
  charged as (
    update accounts a set available = a.available - c.total, updated_at = v_now
    from account c where c.at_once and a.id = c.id
  ),
  written as (
    insert into entries (id, account_id, kind, amount, balance_after, grant_ids, grant_credits,
      idempotency_key, reference, actor, payload_hash, created_at) overriding system value
    select n.entry_id, n.account_id, 'usage', -n.amount, n.available - n.spent_to - n.debt,
      coalesce(n.grant_ids, '{}'), coalesce(n.grant_credits, '{}'), 'request:' || n.key, n.reference,
      n.actor, n.hash, v_now
    from numbered n
  ),
  answer as (
    select n.ord, jsonb_build_object('status', 200, 'body', jsonb_build_object('entry_id', 'entry_' || n.entry_id,
      'amount', n.amount, 'available', n.available - n.spent_to, 'replayed', false)) as result
    from numbered n
    union all
    select u.ord, case when c.found then null else jsonb_build_object('status', 404,
      'body', tally_error('account_not_found', 'no account with id ' || c.id)) end
    from account c cross join lateral unnest(c.event_ords) as u(ord)
    where not c.at_once
  )
  select
    (select array_agg(result order by ord) from answer),
    (select array_agg(u.ord order by c.id collate "C", u.ord)
       from account c cross join lateral unnest(c.event_ords) as u(ord) where c.found and not c.at_once),
    (select count(*) from numbered where credits is distinct from amount)
  into v_results, v_one_by_one, v_uncovered;

  if v_uncovered > 0 then
    raise exception 'invariant broken: % spends of a usage batch exceed the live grants of their accounts', v_uncovered
      using errcode = 'TX001';
  end if;
  foreach v_position in array coalesce(v_one_by_one, '{}') loop
    v_results[v_position] := tally_usage(p_account_ids[v_position], p_amounts[v_position],
      p_keys[v_position], p_hashes[v_position], p_actors[v_position],
      coalesce(p_references[v_position], '{}'::jsonb), v_now);
  end loop;
  return to_jsonb(v_results);
end $function$;

CREATE OR REPLACE FUNCTION public.tally_usage_batch_before_0018(p_account_ids text[], p_amounts bigint[], p_keys text[], p_hashes text[], p_references jsonb[], p_actors text[], p_now timestamp with time zone)
 RETURNS jsonb
 LANGUAGE plpgsql
AS $function$
declare
  v_now timestamptz := coalesce(p_now, now());
  v_count integer := coalesce(cardinality(p_account_ids), 0);
  v_entry_sequence regclass := pg_get_serial_sequence('entries', 'id')::regclass;
  v_accounts text[];
  v_account text;
  v_results jsonb[];
  v_one_by_one integer[];
  v_uncovered bigint;
  v_position integer;
begin
  if v_count = 0 then
    return '[]'::jsonb;
  end if;
  if coalesce(cardinality(p_amounts), 0) <> v_count or coalesce(cardinality(p_keys), 0) <> v_count
     or coalesce(cardinality(p_hashes), 0) <> v_count or coalesce(cardinality(p_references), 0) <> v_count
     or coalesce(cardinality(p_actors), 0) <> v_count
     or exists (select 1 from unnest(p_amounts) a where a is null or a <= 0) then
    raise exception 'usage batch: % events with arrays of other lengths or amounts that are not positive', v_count
      using errcode = 'TX001';
  end if;
  select coalesce(array_agg(id), '{}') into v_accounts from (
    select id from accounts where id = any(p_account_ids) order by id collate "C" for update) locked;
  -- Holds and grants past due are few (the sweep settles them), so this reads the due ones. As
  -- tally_usage, an account is settled only for a key it has not seen: a replay changes nothing.
  for v_account in
    select d.account_id from (
      select h.account_id from holds h
        where h.status = 'pending' and h.expires_at <= v_now and h.account_id = any(v_accounts)
      union
      select g.account_id from grants g
        where g.live and g.expires_at <= v_now and g.account_id = any(v_accounts)) d
    where exists (
      select 1 from unnest(p_account_ids, p_keys) as e(account_id, key)
      where e.account_id = d.account_id
        and not exists (select 1 from request_keys k where k.account_id = e.account_id and k.key = e.key)
        and not exists (select 1 from entries n where n.account_id = e.account_id and n.idempotency_key = 'request:' || e.key))
    order by d.account_id collate "C"
  loop
    perform tally_settle(v_account, v_now);
  end loop;

  with event as (
    select e.ord::integer as ord, e.account_id, e.amount, e.key, e.hash,
      coalesce(e.reference, '{}'::jsonb) as reference, e.actor,
      (sum(e.amount) over (partition by e.account_id order by e.ord rows unbounded preceding))::bigint as spent_to
    from unnest(p_account_ids, p_amounts, p_keys, p_hashes, p_references, p_actors)
      with ordinality as e(account_id, amount, key, hash, reference, actor, ord)
  ),
  -- Everything the decision reads, one row each: the events (with whether their account has
  -- seen their key before: one probe per event, of request_keys and of the entries' keys), the
  -- live grants of the batch's accounts (with where each ends in spend order) and the accounts.
  part as (
    select e.account_id, e.ord, e.amount, e.spent_to, e.key, e.hash, e.reference, e.actor,
      prior.seen is not null as seen, null::bigint as grant_id, null::bigint as remaining,
      null::bigint as granted_to, null::bigint as available, null::bigint as debt, null::boolean as limited
    from event e
    left join lateral (
      select true as seen from request_keys k where k.account_id = e.account_id and k.key = e.key
      union all
      select true from entries n where n.account_id = e.account_id and n.idempotency_key = 'request:' || e.key
      limit 1) prior on true
    union all
    select g.account_id, null, null, null, null, null, null, null, null, g.id, g.remaining,
      (sum(g.remaining) over (partition by g.account_id order by g.priority, g.expires_at, g.created_at, g.id
        rows unbounded preceding))::bigint,
      null, null, null
    from grants g
    where g.account_id = any(v_accounts) and g.live and (g.expires_at is null or g.expires_at > v_now)
    union all
    select a.id, null, null, null, null, null, null, null, null, null, null, null, a.available, a.debt, a.spend_limited
    from accounts a where a.id = any(v_accounts)
  ),
  -- One row per account of the batch: its events as arrays in batch order, whether a key comes
  -- twice or was seen before, its live grants in spend order, and its balance.
  account as (
    -- Each spend reads its account's live grants, so an account with more than 100 of them
    -- (rare: packs bought again and again) takes the per-event path, which stops at the grants
    -- a spend needs.
    select t.*, coalesce(t.keys_new and t.total <= t.available and coalesce(cardinality(t.grant_ids), 0) <= 100
      and not t.limited, false) as at_once
    from (
      select p.account_id as id,
        array_agg(p.ord order by p.ord) filter (where p.ord is not null) as event_ords,
        array_agg(p.amount order by p.ord) filter (where p.ord is not null) as event_amounts,
        array_agg(p.spent_to order by p.ord) filter (where p.ord is not null) as event_spent_to,
        array_agg(p.key order by p.ord) filter (where p.ord is not null) as event_keys,
        array_agg(p.hash order by p.ord) filter (where p.ord is not null) as event_hashes,
        array_agg(p.reference order by p.ord) filter (where p.ord is not null) as event_references,
        array_agg(p.actor order by p.ord) filter (where p.ord is not null) as event_actors,
        sum(p.amount)::bigint as total,
        count(p.ord) = count(distinct p.key) and not bool_or(p.seen) as keys_new,
        array_agg(p.grant_id order by p.granted_to) filter (where p.grant_id is not null) as grant_ids,
        array_agg(p.remaining order by p.granted_to) filter (where p.grant_id is not null) as grant_remaining,
        array_agg(p.granted_to order by p.granted_to) filter (where p.grant_id is not null) as grant_granted_to,
        bool_or(p.available is not null) as found, max(p.available) as available, max(p.debt) as debt,
        bool_or(p.limited) as limited
      from part p group by p.account_id) t
  ),
  -- One row per spend of the accounts decided at once: the grants it takes from, in spend
  -- order, and how much from each (negative, as entries write it).
  spent as (
    select c.id as account_id, c.available, c.debt, s.ord, s.amount, s.spent_to, s.key, s.hash,
      s.reference, s.actor, p.grant_ids, p.grant_credits, p.credits
    from account c
    cross join lateral unnest(c.event_ords, c.event_amounts, c.event_spent_to, c.event_keys, c.event_hashes,
      c.event_references, c.event_actors)
      as s(ord, amount, spent_to, key, hash, reference, actor)
    cross join lateral (
      select array_agg(o.id order by o.position) as grant_ids, array_agg(-o.credits order by o.position) as grant_credits,
        sum(o.credits)::bigint as credits
      from (select g.id, g.position,
              least(s.spent_to, g.granted_to) - greatest(s.spent_to - s.amount, g.granted_to - g.remaining) as credits
            from unnest(c.grant_ids, c.grant_remaining, c.grant_granted_to) with ordinality as g(id, remaining, granted_to, position)
            where g.granted_to - g.remaining < s.spent_to and s.spent_to - s.amount < g.granted_to) o) p
    where c.at_once
  ),
  -- Entry ids in the order the per-event path would have taken them.
  numbered as (
    select s.*, nextval(v_entry_sequence) as entry_id
    from (select * from spent order by account_id collate "C", ord) s
  ),
  taken_from_grants as (
    update grants g set remaining = g.remaining - t.credits
    from (select u.id, -sum(u.credits)::bigint as credits
          from spent s cross join lateral unnest(s.grant_ids, s.grant_credits) as u(id, credits)
          group by u.id) t
    where g.id = t.id
  ),
  charged as (
    update accounts a set available = a.available - c.total, updated_at = v_now
    from account c where c.at_once and a.id = c.id
  ),
  written as (
    insert into entries (id, account_id, kind, amount, balance_after, grant_ids, grant_credits,
      idempotency_key, reference, actor, payload_hash, created_at) overriding system value
    select n.entry_id, n.account_id, 'usage', -n.amount, n.available - n.spent_to - n.debt,
      coalesce(n.grant_ids, '{}'), coalesce(n.grant_credits, '{}'), 'request:' || n.key, n.reference,
      n.actor, n.hash, v_now
    from numbered n
  ),
  answer as (
    select n.ord, jsonb_build_object('status', 200, 'body', jsonb_build_object('entry_id', 'entry_' || n.entry_id,
      'amount', n.amount, 'available', n.available - n.spent_to, 'replayed', false)) as result
    from numbered n
    union all
    select u.ord, case when c.found then null else jsonb_build_object('status', 404,
      'body', tally_error('account_not_found', 'no account with id ' || c.id)) end
    from account c cross join lateral unnest(c.event_ords) as u(ord)
    where not c.at_once
  )
  select
    (select array_agg(result order by ord) from answer),
    (select array_agg(u.ord order by c.id collate "C", u.ord)
       from account c cross join lateral unnest(c.event_ords) as u(ord) where c.found and not c.at_once),
    (select count(*) from numbered where credits is distinct from amount)
  into v_results, v_one_by_one, v_uncovered;

  if v_uncovered > 0 then
    raise exception 'invariant broken: % spends of a usage batch exceed the live grants of their accounts', v_uncovered
      using errcode = 'TX001';
  end if;
  foreach v_position in array coalesce(v_one_by_one, '{}') loop
    v_results[v_position] := tally_usage(p_account_ids[v_position], p_amounts[v_position],
      p_keys[v_position], p_hashes[v_position], p_actors[v_position],
      coalesce(p_references[v_position], '{}'::jsonb), v_now);
  end loop;
  return to_jsonb(v_results);
end $function$;

CREATE OR REPLACE FUNCTION public.tally_usage_before_0013(p_account text, p_amount bigint, p_key text, p_hash text, p_actor text, p_reference jsonb, p_now timestamp with time zone)
 RETURNS jsonb
 LANGUAGE plpgsql
AS $function$
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
end $function$;

delete from tally_migrations where version = 19;
