-- The rollback of migration 0021 (priced usage): the functions that 0021's release changed go
-- back to their definitions before it (so that nothing left calls what is dropped next), the
-- functions it added are dropped, then its columns and tables. It is refused while a priced hold
-- of 0 credits exists, which the old hold_amount_positive cannot hold. The function files'
-- checksums are forgotten, so that the release started next applies its own definitions.

create or replace function tally_entry_json(e entries) returns jsonb language sql stable
  return jsonb_build_object('id', 'entry_' || e.id, 'kind', e.kind, 'amount', e.amount,
    'balance_after', e.balance_after,
    'grant_ids', (select coalesce(jsonb_agg('grant_' || g order by n), '[]'::jsonb)
                  from unnest(e.grant_ids) with ordinality as u(g, n)),
    'idempotency_key', e.idempotency_key, 'reference', e.reference, 'actor', e.actor,
    'reason', e.reason, 'created_at', tally_iso(e.created_at));


-- The first outcome of a spend that kept its key in its own entry, as a request key would
-- hold it. `available` is the entry's balance after: a spend succeeds only on an account
-- without debt, and leaves it so. An entry under a request key without a request_keys row
-- and without a payload hash (none is written so) answers as a conflict, never as a replay.
create or replace function tally_spend_key(p_entry entries, p_key text) returns request_keys
  language sql stable
  return row(p_key, p_entry.account_id,
    case when p_entry.kind = 'usage' and p_entry.payload_hash is not null then 'usage' else p_entry.kind end,
    p_entry.payload_hash, 200,
    jsonb_build_object('entry_id', 'entry_' || p_entry.id, 'amount', -p_entry.amount,
      'available', p_entry.balance_after, 'replayed', false),
    p_entry.created_at)::request_keys;


-- tally_open_spend of 0002, and then, for an account with limits only, the limits: a spend that
-- would pass one is refused with 402 spend_limit_exceeded, stored as the key's first outcome as
-- insufficient_credits is. Credits are checked first.
create or replace function tally_open_spend(p_account text, p_amount bigint, p_key text, p_operation text,
  p_hash text, p_now timestamptz) returns jsonb language plpgsql as $$
declare
  v_outcome jsonb := tally_open(p_account, p_key, p_operation, p_hash, p_now);
  v_available bigint;
  v_limited boolean;
begin
  if v_outcome is not null then
    return v_outcome;
  end if;
  select available, spend_limited into v_available, v_limited from accounts where id = p_account;
  if v_available < p_amount then
    return tally_remember(p_key, p_account, p_operation, p_hash, 402,
      tally_error('insufficient_credits', 'not enough credits available',
        jsonb_build_object('available', v_available)), p_now);
  end if;
  if v_limited then
    v_outcome := tally_spend_limits_take(p_account, p_amount, p_now);
    if v_outcome is not null then
      return tally_remember(p_key, p_account, p_operation, p_hash, 402, v_outcome, p_now);
    end if;
  end if;
  return null;
end $$;


-- One spend. A refusal is stored in request_keys (tally_open_spend); a success only in its
-- entry, with the payload's hash.
create or replace function tally_usage(p_account text, p_amount bigint, p_key text, p_hash text,
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
  -- A spend that leaves the account below its auto top-up threshold asks for a top-up (null
  -- when auto top-up is off, so other accounts pay one comparison).
  if v_account.available < v_account.top_up_threshold then
    perform tally_request_top_up(p_account, v_now);
  end if;
  return jsonb_build_object('status', 200, 'body', jsonb_build_object('entry_id', 'entry_' || v_entry_id,
    'amount', p_amount, 'available', v_account.available, 'replayed', false));
end $$;


create or replace function tally_usage_batch(p_account_ids text[], p_amounts bigint[], p_keys text[],
  p_hashes text[], p_references jsonb[], p_actors text[], p_now timestamptz)
  returns jsonb language plpgsql as $$
declare
  v_now timestamptz := coalesce(p_now, now());
  v_day date := (v_now at time zone 'UTC')::date;
  v_month date := date_trunc('month', v_now at time zone 'UTC')::date;
  v_count integer := coalesce(cardinality(p_account_ids), 0);
  v_entry_sequence regclass := pg_get_serial_sequence('entries', 'id')::regclass;
  v_accounts text[];
  v_account text;
  v_results jsonb[];
  v_one_by_one integer[];
  v_uncovered bigint;
  v_position integer;
  v_below_top_up text[];
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
      null::bigint as granted_to, null::bigint as available, null::bigint as debt, null::boolean as limited,
      null::boolean as limits_found, null::bigint as per_day, null::bigint as per_month, null::bigint as spent_day,
      null::bigint as spent_month
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
      null, null, null, null, null, null, null, null
    from grants g
    where g.account_id = any(v_accounts) and g.live and (g.expires_at is null or g.expires_at > v_now)
    union all
    select a.id, null, null, null, null, null, null, null, null, null, null, null, a.available, a.debt, a.spend_limited,
      l.account_id is not null, l.per_day, l.per_month,
      -- What the current windows hold: a counter of an earlier window starts again at 0.
      case when l.day < v_day then 0 else l.spent_day end,
      case when l.month < v_month then 0 else l.spent_month end
    from accounts a left join spend_limits l on a.spend_limited and l.account_id = a.id
    where a.id = any(v_accounts)
  ),
  -- One row per account of the batch: its events as arrays in batch order, whether a key comes
  -- twice or was seen before, its live grants in spend order, and its balance.
  account as (
    -- Each spend reads its account's live grants, so an account with more than 100 of them
    -- (rare: packs bought again and again) takes the per-event path, which stops at the grants
    -- a spend needs.
    -- An account with limits is decided at once when the whole batch stays below both of its
    -- limits: then no spend is refused and none reaches a limit (which writes an event). A batch
    -- that would reach or pass one takes the per-event path, which decides each spend in turn.
    select t.*, coalesce(t.keys_new and t.total <= t.available and coalesce(cardinality(t.grant_ids), 0) <= 100
      and (not t.limited or (t.limits_found
        and (t.per_day is null or t.spent_day + t.total < t.per_day)
        and (t.per_month is null or t.spent_month + t.total < t.per_month))), false) as at_once
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
        bool_or(p.limited) as limited, bool_or(p.limits_found) as limits_found,
        max(p.per_day) as per_day, max(p.per_month) as per_month, max(p.spent_day) as spent_day,
        max(p.spent_month) as spent_month
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
    returning a.id, a.available < a.top_up_threshold as below_top_up
  ),
  -- The limited accounts' counters, as tally_spend_limits_take would leave them after each
  -- spend in turn: windows move forward only, and each counts the batch's total.
  counted as (
    update spend_limits l set day = greatest(l.day, v_day), spent_day = c.spent_day + c.total,
      month = greatest(l.month, v_month), spent_month = c.spent_month + c.total
    from account c where c.at_once and c.limited and l.account_id = c.id
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
    (select count(*) from numbered where credits is distinct from amount),
    (select array_agg(id order by id collate "C") from charged where below_top_up)
  into v_results, v_one_by_one, v_uncovered, v_below_top_up;

  if v_uncovered > 0 then
    raise exception 'invariant broken: % spends of a usage batch exceed the live grants of their accounts', v_uncovered
      using errcode = 'TX001';
  end if;
  -- As tally_usage: spends that leave an account below its auto top-up threshold ask for one.
  foreach v_account in array coalesce(v_below_top_up, '{}') loop
    perform tally_request_top_up(v_account, v_now);
  end loop;
  foreach v_position in array coalesce(v_one_by_one, '{}') loop
    v_results[v_position] := tally_usage(p_account_ids[v_position], p_amounts[v_position],
      p_keys[v_position], p_hashes[v_position], p_actors[v_position],
      coalesce(p_references[v_position], '{}'::jsonb), v_now);
  end loop;
  return to_jsonb(v_results);
end $$;


-- tally_hold of 0002; the hold records whether it was counted against the account's limits.
create or replace function tally_hold(p_account text, p_amount bigint, p_expires_in_seconds integer,
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
  update accounts set available = available - p_amount, held = held + p_amount, updated_at = v_now
    where id = p_account returning * into v_account;
  insert into holds (account_id, amount, grant_ids, grant_credits, expires_at, idempotency_key, created_at,
    counted_in_spend_limits)
  values (p_account, p_amount, v_take.grant_ids, v_take.grant_credits,
    v_now + make_interval(secs => p_expires_in_seconds), p_key, v_now, v_account.spend_limited)
  returning * into v_hold;
  v_net := v_account.available - v_account.debt;
  insert into entries (account_id, kind, amount, balance_after, grant_ids, grant_credits, hold_id,
    idempotency_key, reference, actor, created_at)
  values (p_account, 'hold', -p_amount, v_net, v_take.grant_ids, v_take.grant_credits, v_hold.id,
    'request:' || p_key, jsonb_build_object('hold_id', 'hold_' || v_hold.id), p_actor, v_now);
  -- As a usage: a hold that leaves the account below its auto top-up threshold asks for a top-up.
  if v_account.available < v_account.top_up_threshold then
    perform tally_request_top_up(p_account, v_now);
  end if;
  return tally_remember(p_key, p_account, 'hold', p_hash, 201,
    jsonb_build_object('hold_id', 'hold_' || v_hold.id, 'amount', p_amount,
      'expires_at', tally_iso(v_hold.expires_at), 'available', v_account.available,
      'replayed', false), v_now);
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


create or replace function tally_capture(p_hold_id bigint, p_amount bigint, p_actor text, p_now timestamptz)
  returns jsonb language plpgsql as $$
declare
  v_now timestamptz := coalesce(p_now, now());
  v_hold holds := tally_lock_pending_hold(p_hold_id, v_now);
  v_amount bigint := coalesce(p_amount, v_hold.amount);
  v_available bigint;
begin
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


create or replace function tally_hold_events() returns trigger language plpgsql as $$
begin
  perform tally_event('hold.expired', new.account_id, jsonb_build_object('hold_id', 'hold_' || new.id,
    'amount', new.amount, 'released', new.released), new.resolved_at);
  return null;
end $$;


-- The usage batch's named steps (db/functions/50-usage.sql), which the batch put back above
-- does not call.
drop function if exists tally_usage_batch_check(integer, bigint[], text[], text[], jsonb[], text[], text[], jsonb[]), tally_usage_batch_price(text[], bigint[], text[], jsonb[], timestamptz), tally_usage_batch_settle(text[], text[], text[], timestamptz), tally_usage_batch_events(text[], bigint[], text[], text[], jsonb[], text[], numeric[]), tally_usage_batch_reads(text[], text[], bigint[], text[], text[], jsonb[], text[], numeric[], timestamptz), tally_usage_batch_at_once(boolean, boolean, bigint, bigint, integer, boolean, boolean, bigint, bigint, bigint, bigint), tally_usage_batch_accounts(text[], text[], text[], bigint[], text[], text[], jsonb[], text[], numeric[], timestamptz), tally_usage_batch_take(bigint, bigint, bigint[], bigint[], bigint[]), tally_usage_batch_write(text[], text[], text[], bigint[], text[], text[], jsonb[], text[], text[], jsonb[], numeric[], text[], integer[], numeric[], timestamptz), tally_usage_batch_one_by_one(jsonb[], text[], bigint[], text[], text[], jsonb[], text[], text[], jsonb[], timestamptz);
drop function if exists tally_usage(text, bigint, text, text, text, jsonb, timestamptz, jsonb), tally_hold(text, bigint, integer, text, text, text, timestamptz, jsonb), tally_release(holds, bigint, text, text, timestamptz, jsonb), tally_usage_batch(text[], bigint[], text[], text[], jsonb[], text[], timestamptz, text[], jsonb[]);
drop function if exists tally_priced_usage(text, text, jsonb, text, text, text, jsonb, timestamptz), tally_priced_hold(text, text, jsonb, integer, text, text, text, timestamptz), tally_priced_capture(bigint, jsonb, text, timestamptz), tally_quote(text, bigint, text, jsonb, timestamptz), tally_spend_limit_passed(text, bigint, timestamptz), tally_open_priced(text, text, text, text), tally_price_spend(text, text, jsonb, numeric, timestamptz, boolean), tally_priced_answer(numeric, text, integer), tally_spend_credits_max();
drop function if exists tally_rates_equal(jsonb, jsonb), tally_rate_card_version_json(rate_card_versions), tally_rate_card_in_effect(text, timestamptz), tally_rate_card_next(text, timestamptz), tally_publish_rate_card(text, jsonb, timestamptz, text, timestamptz), tally_sync_catalog_pricing(jsonb, text, jsonb, timestamptz), tally_rate_cards_json(timestamptz), tally_rate_card_versions_json(text), tally_price(jsonb, text, jsonb), tally_price_events(text[], text[], jsonb[], timestamptz), tally_account_rate_card(text), tally_account_rate_cards(text[]);
alter table holds drop constraint hold_amount_positive;
alter table holds add constraint hold_amount_positive check (amount > 0);
alter table holds drop constraint priced_hold;
alter table holds drop column meter, drop column quantities, drop column rate_card_id, drop column rate_card_version, drop column cost;
alter table entries drop constraint priced_entry;
alter table entries drop column meter, drop column quantities, drop column rate_card_id, drop column rate_card_version, drop column cost, drop column carry_after;
alter table accounts drop column carry;
drop table catalog_plans, rate_card_versions, rate_cards;
drop function tally_refuse_rate_card_version_change();
delete from tally_function_files;
delete from tally_migrations where version = 21;
