-- The ledger core: typed errors, JSON shapes, the account lock, the spend order (take), grants, adjustments and the append-only guard.
--
-- Applied after the numbered migrations, in file-name order, whenever the file changed
-- (src/db/migrate.ts). A change to a function is a diff of this file; a change of signature
-- also needs a numbered migration that drops the old one.

create or replace function tally_error(p_code text, p_message text, p_details jsonb default '{}'::jsonb)
  returns jsonb language sql immutable
  return jsonb_build_object('error', jsonb_build_object('code', p_code, 'message', p_message) || p_details);

create or replace function tally_iso(p_time timestamptz) returns text language sql immutable
  return to_char(p_time at time zone 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"');

create or replace function tally_grant_json(g grants) returns jsonb language sql stable
  return jsonb_build_object('id', 'grant_' || g.id, 'source', g.source, 'amount', g.amount,
    'remaining', g.remaining, 'priority', g.priority, 'expires_at', tally_iso(g.expires_at),
    'created_at', tally_iso(g.created_at), 'reference', g.reference);

-- A priced entry (usage, hold or capture by meter) adds its meter, quantities, exact cost, the
-- rate card version that priced it and, where it charged, the carry after it: enough to recompute
-- its charge. (A quoted body, so that rolling migration 0021 back can drop those columns.)
create or replace function tally_entry_json(e entries) returns jsonb language sql stable as $$
  select jsonb_build_object('id', 'entry_' || e.id, 'kind', e.kind, 'amount', e.amount,
    'balance_after', e.balance_after,
    'grant_ids', (select coalesce(jsonb_agg('grant_' || g order by n), '[]'::jsonb)
                  from unnest(e.grant_ids) with ordinality as u(g, n)),
    'idempotency_key', e.idempotency_key, 'reference', e.reference, 'actor', e.actor,
    'reason', e.reason, 'created_at', tally_iso(e.created_at))
  || case when e.meter is null then '{}'::jsonb
     else jsonb_build_object('meter', e.meter, 'quantities', e.quantities,
       'rate_card', jsonb_build_object('id', e.rate_card_id, 'version', e.rate_card_version),
       'cost', trim_scale(e.cost)::text, 'carry_after', trim_scale(e.carry_after)::text) end
$$;

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

-- Locks an account and brings it up to p_now, for effects applied inside a larger transaction.
create or replace function tally_lock_account(p_account text, p_now timestamptz) returns void
  language plpgsql as $$
begin
  perform 1 from accounts where id = p_account for update;
  if not found then
    raise exception 'no account %', p_account using errcode = 'TA404';
  end if;
  perform tally_settle(p_account, coalesce(p_now, now()));
end $$;

create or replace function tally_take(p_account text, p_amount bigint, p_now timestamptz,
  out grant_ids bigint[], out grant_credits bigint[], p_payment_id bigint default null)
  language sql as $$
  select * from tally_take_from(p_account, p_amount, p_now, case when p_payment_id is null then '{}'::bigint[]
    else (select coalesce(array_agg(id), '{}') from grants where account_id = p_account and payment_id = p_payment_id) end)
$$;

-- Adds a grant under its natural key, repaying debt first. An existing key answers the
-- existing grant with created = false and changes nothing. The caller holds the account lock.
create or replace function tally_add_grant(p_account text, p_source text, p_amount bigint, p_priority integer,
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

create or replace function tally_admin_grant(p_account text, p_amount bigint, p_source text, p_priority integer,
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
-- from live grants in spend order and never overdraws. A correction is not a spend: it never
-- counts toward the account's spend limits and is never refused for one (SPEC).
create or replace function tally_adjust(p_account text, p_amount bigint, p_key text, p_hash text,
  p_reason text, p_now timestamptz) returns jsonb language plpgsql as $$
declare
  v_now timestamptz := coalesce(p_now, now());
  v_outcome jsonb;
  v_before accounts;
  v_account accounts;
  v_take record;
  v_entry entries;
begin
  v_outcome := tally_open(p_account, p_key, 'adjustment', p_hash, v_now);
  if v_outcome is not null then
    return v_outcome;
  end if;
  select * into v_before from accounts where id = p_account;
  if v_before.available < -p_amount then
    return tally_remember(p_key, p_account, 'adjustment', p_hash, 402,
      tally_error('insufficient_credits', 'not enough credits available',
        jsonb_build_object('available', v_before.available)), v_now);
  end if;
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
