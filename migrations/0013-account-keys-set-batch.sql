-- 0013-account-keys-set-batch: request keys are scoped to their account, a successful spend
-- keeps its key in its own entry, and the usage batch decides spends with set operations.
--
-- * Keys per account (SPEC: "Keys are scoped to their account"). The same key sent for another
--   account is another request, as with Stripe, and every key lives on its account's shard.
--   `request_keys` is keyed by (account_id, key).
-- * A successful spend writes one row, not two: its entry already carries its key
--   (`request:{key}`, unique per account) and now the hash of its payload, which is all a replay
--   needs (the answer is the entry's id, amount and balance after). Refusals (402...) and the
--   other operations (holds, grants, adjustments) still store their first outcome in
--   `request_keys`. Rows that successful spends wrote there before this migration stay and keep
--   answering their replays: a key is looked up in `request_keys` first, then in the entries.
-- * `tally_usage_batch` takes its events as arrays. Each account whose events can all be
--   decided at once (nothing seen before, no key twice, the total within `available`: the
--   common case) is decided with set operations: one locking read of the batch's accounts,
--   one join against stored keys, grants allocated by intersecting cumulative spend intervals
--   with cumulative grant intervals in spend order, then one write per table for the whole
--   batch. Any other account takes the per-event path: each of its events is exactly a call of
--   tally_usage, under the locks the batch already holds.
--
-- The definitions this migration replaces are kept under *_before_0013 names, only so that
-- rolling back puts them back exactly; nothing calls them. Rolling back stores the key of each
-- spend made since this migration in `request_keys` again, with the answer it gave, and refuses
-- (changing nothing) while a key is used on two accounts, which the old shape cannot hold.
--
-- Rollback:
--   drop function tally_usage_batch(jsonb, timestamptz);
--   drop function tally_usage_batch(text[], bigint[], text[], text[], jsonb[], text[], timestamptz);
--   alter function tally_usage_batch_before_0013(jsonb, timestamptz) rename to tally_usage_batch;
--   drop function tally_usage(text, bigint, text, text, text, jsonb, timestamptz);
--   alter function tally_usage_before_0013(text, bigint, text, text, text, jsonb, timestamptz) rename to tally_usage;
--   drop function tally_open(text, text, text, text, timestamptz);
--   alter function tally_open_before_0013(text, text, text, text, timestamptz) rename to tally_open;
--   drop function tally_prior_outcome(text, text, text, text);
--   drop function tally_spend_key(entries, text);
--   drop function tally_replay(request_keys, text, text);
--   alter function tally_replay_before_0013(request_keys, text, text, text) rename to tally_replay;
--   insert into request_keys (key, account_id, operation, payload_hash, status_code, response, created_at)
--   select substr(idempotency_key, 9), account_id, 'usage', payload_hash, 200,
--     jsonb_build_object('entry_id', 'entry_' || id, 'amount', -amount, 'available', balance_after, 'replayed', false),
--     created_at
--   from entries where payload_hash is not null and idempotency_key like 'request:%'
--   on conflict do nothing;
--   do $$ begin
--     if exists (select 1 from request_keys group by key having count(*) > 1) then
--       raise exception 'cannot roll back 0013: some request keys are used on more than one account, which keys unique across accounts cannot hold'
--         using errcode = 'TX002';
--     end if;
--   end $$;
--   alter table request_keys drop constraint request_keys_pkey;
--   alter table request_keys add primary key (key);
--   alter table entries drop column payload_hash;
--   delete from tally_migrations where version = 13;

alter function tally_replay(request_keys, text, text, text) rename to tally_replay_before_0013;
alter function tally_open(text, text, text, text, timestamptz) rename to tally_open_before_0013;
alter function tally_usage(text, bigint, text, text, text, jsonb, timestamptz) rename to tally_usage_before_0013;
alter function tally_usage_batch(jsonb, timestamptz) rename to tally_usage_batch_before_0013;

alter table request_keys drop constraint request_keys_pkey;
alter table request_keys add primary key (account_id, key);

-- The fingerprint of the request that wrote a usage entry under its request key. Only usage
-- entries carry one (NOT VALID: the column is new, so no existing row can break the check,
-- and a large ledger is not scanned to prove it).
alter table entries add column payload_hash text;
alter table entries add constraint payload_hash_of_usage check (payload_hash is null or kind = 'usage') not valid;

-- The answer to a key the account has seen before: the stored first outcome, or a conflict
-- when the operation or the payload differs. Keys are looked up per account, so the account
-- always matches.
create function tally_replay(p_prior request_keys, p_operation text, p_hash text)
  returns jsonb language plpgsql stable as $$
begin
  if p_prior.operation <> p_operation or p_prior.payload_hash is distinct from p_hash then
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
end $$;

-- The first outcome of a spend that kept its key in its own entry, as a request key would
-- hold it. `available` is the entry's balance after: a spend succeeds only on an account
-- without debt, and leaves it so. An entry under a request key without a request_keys row
-- and without a payload hash (none is written so) answers as a conflict, never as a replay.
create function tally_spend_key(p_entry entries, p_key text) returns request_keys
  language sql stable
  return row(p_key, p_entry.account_id,
    case when p_entry.kind = 'usage' and p_entry.payload_hash is not null then 'usage' else p_entry.kind end,
    p_entry.payload_hash, 200,
    jsonb_build_object('entry_id', 'entry_' || p_entry.id, 'amount', -p_entry.amount,
      'available', p_entry.balance_after, 'replayed', false),
    p_entry.created_at)::request_keys;

-- The answer to a key the account has seen before, from request_keys or from a spend's own
-- entry; NULL when the key is new for the account.
create function tally_prior_outcome(p_account text, p_key text, p_operation text, p_hash text)
  returns jsonb language plpgsql stable as $$
declare
  v_prior request_keys;
  v_entry entries;
begin
  select * into v_prior from request_keys where account_id = p_account and key = p_key;
  if found then
    return tally_replay(v_prior, p_operation, p_hash);
  end if;
  select * into v_entry from entries where account_id = p_account and idempotency_key = 'request:' || p_key;
  if found then
    return tally_replay(tally_spend_key(v_entry, p_key), p_operation, p_hash);
  end if;
  return null;
end $$;

-- The common start of a keyed operation: a replayed key answers at once; otherwise lock the
-- account, look at the key again (a racing request for the same account has committed by
-- now), and settle the account. NULL means: go on.
create function tally_open(p_account text, p_key text, p_operation text, p_hash text,
  p_now timestamptz) returns jsonb language plpgsql as $$
declare
  v_outcome jsonb := tally_prior_outcome(p_account, p_key, p_operation, p_hash);
begin
  if v_outcome is not null then
    return v_outcome;
  end if;
  perform 1 from accounts where id = p_account for update;
  if not found then
    return jsonb_build_object('status', 404,
      'body', tally_error('account_not_found', 'no account with id ' || p_account));
  end if;
  v_outcome := tally_prior_outcome(p_account, p_key, p_operation, p_hash);
  if v_outcome is not null then
    return v_outcome;
  end if;
  perform tally_settle(p_account, p_now);
  return null;
end $$;

-- One spend. A refusal is stored in request_keys (tally_open_spend); a success only in its
-- entry, with the payload's hash.
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
    idempotency_key, reference, actor, payload_hash, created_at)
  values (p_account, 'usage', -p_amount, v_account.available - v_account.debt, v_take.grant_ids,
    v_take.grant_credits, 'request:' || p_key, p_reference, p_actor, p_hash, v_now)
  returning id into v_entry_id;
  return jsonb_build_object('status', 200, 'body', jsonb_build_object('entry_id', 'entry_' || v_entry_id,
    'amount', p_amount, 'available', v_account.available, 'replayed', false));
end $$;

-- A batch of usage events in one transaction, one answer per event in the order given, each
-- as tally_usage would answer it with the batch's events taken account by account (accounts
-- sorted, each account's events in the order given). Parallel arrays, one element per event.
--
-- The batch's accounts are locked first, in id order; only then is it decided which need a
-- settle (a hold or grant past due), and those are settled: deciding that from a snapshot taken
-- before the locks missed a release committed in between (issue 8, item 7). Then one statement
-- decides every account whose events can all be decided at once: none of its keys seen before
-- (one probe per event of request_keys and of the entries' keys), no key twice, and their
-- total within available, so that every one of them succeeds. Each spend covers the interval
-- [spent before it, spent with it) of its account's batch; each live grant, in spend order
-- (priority, earliest expiry with never-expiring last, oldest, id: tally_take's order), covers
-- [remaining of the grants before it, that plus its own); a spend takes from each grant the
-- overlap of the two, which is what taking grant after grant, spend after spend, takes. The
-- same statement writes the grants, the accounts and the entries, one statement each. Every
-- other account takes the per-event path: tally_usage for each of its events, in order.
--
-- The statement works account by account (arrays per account, lateral subqueries) and never
-- joins two sets of the batch on a key: its plan is cached, and a plan made for a guessed
-- number of events then stays cheap for any number (a join planned for one row per side
-- became a loop over the batch for each event).
create function tally_usage_batch(p_account_ids text[], p_amounts bigint[], p_keys text[],
  p_hashes text[], p_references jsonb[], p_actors text[], p_now timestamptz)
  returns jsonb language plpgsql as $$
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
end $$;

-- The batch as processes started before this migration call it (one JSON array of events),
-- so that they keep working until they restart with the array form.
create function tally_usage_batch(p_events jsonb, p_now timestamptz) returns jsonb
  language sql as $$
  select tally_usage_batch(
    array_agg(e.value->>'account_id' order by e.n), array_agg((e.value->>'amount')::bigint order by e.n),
    array_agg(e.value->>'idempotency_key' order by e.n), array_agg(e.value->>'payload_hash' order by e.n),
    array_agg(coalesce(e.value->'reference', '{}'::jsonb) order by e.n), array_agg(e.value->>'actor' order by e.n),
    p_now)
  from jsonb_array_elements(p_events) with ordinality as e(value, n)
$$;
