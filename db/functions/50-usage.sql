-- Usage: one spend, and the set-based batch that the usage batcher sends (group commit).
--
-- Applied after the numbered migrations, in file-name order, whenever the file changed
-- (src/db/migrate.ts). A change to a function is a diff of this file; a change of signature
-- also needs a numbered migration that drops the old one.

-- tally_open_spend of 0002, and then, for an account with limits only, the limits: a spend that
-- would pass one is refused with 402 spend_limit_exceeded, stored as the key's first outcome as
-- insufficient_credits is. Credits are checked first, after the period's recurring grants.
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
  perform tally_give_recurring(p_account, p_now);
  select available, spend_limited into v_available, v_limited from accounts where id = p_account;
  if v_available < p_amount then
    return tally_remember(p_key, p_account, p_operation, p_hash, 402,
      tally_error('insufficient_credits', 'not enough credits available',
        jsonb_build_object('available', v_available)), p_now);
  end if;
  -- A spend of 0 credits (a priced spend whose cost the carry absorbs) passes no limit.
  if v_limited and p_amount > 0 then
    v_outcome := tally_spend_limits_take(p_account, p_amount, p_now);
    if v_outcome is not null then
      return tally_remember(p_key, p_account, p_operation, p_hash, 402, v_outcome, p_now);
    end if;
  end if;
  return null;
end $$;

-- One spend of credits.
create or replace function tally_usage(p_account text, p_amount bigint, p_key text, p_hash text,
  p_actor text, p_reference jsonb, p_now timestamptz) returns jsonb language sql as $$
  select tally_usage(p_account, p_amount, p_key, p_hash, p_actor, p_reference, p_now, null)
$$;

-- One spend. A refusal is stored in request_keys (tally_open_spend); a success only in its
-- entry, with the payload's hash. A priced spend (p_priced, from tally_priced_usage: its meter,
-- quantities, card, version, cost and the carry after it) charges p_amount = floor(cost + carry)
-- and writes its price on the entry and the new carry on the account; one that charges 0 is
-- accepted at any balance and still writes its entry, so that the ledger explains the carry.
create or replace function tally_usage(p_account text, p_amount bigint, p_key text, p_hash text,
  p_actor text, p_reference jsonb, p_now timestamptz, p_priced jsonb) returns jsonb language plpgsql as $$
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
  -- A spend of 0 credits takes from no grant.
  if p_amount > 0 then
    select * into v_take from tally_take(p_account, p_amount, v_now);
  else
    select '{}'::bigint[] as grant_ids, '{}'::bigint[] as grant_credits into v_take;
  end if;
  update accounts set available = available - p_amount,
      carry = coalesce((p_priced->>'carry_after')::numeric, carry), updated_at = v_now
    where id = p_account returning * into v_account;
  insert into entries (account_id, kind, amount, balance_after, grant_ids, grant_credits,
    idempotency_key, reference, actor, payload_hash, created_at, meter, quantities, rate_card_id,
    rate_card_version, cost, carry_after)
  values (p_account, 'usage', -p_amount, v_account.available - v_account.debt, v_take.grant_ids,
    v_take.grant_credits, 'request:' || p_key, p_reference, p_actor, p_hash, v_now, p_priced->>'meter',
    p_priced->'quantities', p_priced->>'rate_card_id', (p_priced->>'rate_card_version')::integer,
    (p_priced->>'cost')::numeric, (p_priced->>'carry_after')::numeric)
  returning id into v_entry_id;
  -- A spend that leaves the account below its auto top-up threshold asks for a top-up (null
  -- when auto top-up is off, so other accounts pay one comparison).
  if v_account.available < v_account.top_up_threshold then
    perform tally_request_top_up(p_account, v_now);
  end if;
  return jsonb_build_object('status', 200, 'body', jsonb_build_object('entry_id', 'entry_' || v_entry_id,
    'amount', p_amount, 'available', v_account.available, 'replayed', false)
    || tally_priced_answer((p_priced->>'cost')::numeric, p_priced->>'rate_card_id', (p_priced->>'rate_card_version')::integer));
end $$;

create or replace function tally_usage_batch(p_account_ids text[], p_amounts bigint[], p_keys text[],
  p_hashes text[], p_references jsonb[], p_actors text[], p_now timestamptz)
  returns jsonb language sql as $$
  select tally_usage_batch(p_account_ids, p_amounts, p_keys, p_hashes, p_references, p_actors, p_now, null, null)
$$;

-- The set-based batch. Event i is a priced spend when p_meters[i] is set (then p_amounts[i] is 0
-- and p_quantities[i] holds its quantities; both arrays are NULL in a batch without priced
-- events). Priced events are priced first, each by its account's card at the version in effect;
-- an account decided at once is charged in batch order with its carry: the i-th priced spend
-- charges floor(carry + the costs up to it) - floor(carry + the costs before it), which is what
-- one priced spend after the other would charge, and the account keeps the rest as its carry.
-- An account whose batch may refuse something goes one event at a time, as before.
create or replace function tally_usage_batch(p_account_ids text[], p_amounts bigint[], p_keys text[],
  p_hashes text[], p_references jsonb[], p_actors text[], p_now timestamptz, p_meters text[], p_quantities jsonb[])
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
  v_costs numeric[];
  v_rate_card_ids text[];
  v_rate_card_versions integer[];
  v_carries numeric[];
  v_per_event text[];
begin
  if v_count = 0 then
    return '[]'::jsonb;
  end if;
  if coalesce(cardinality(p_amounts), 0) <> v_count or coalesce(cardinality(p_keys), 0) <> v_count
     or coalesce(cardinality(p_hashes), 0) <> v_count or coalesce(cardinality(p_references), 0) <> v_count
     or coalesce(cardinality(p_actors), 0) <> v_count
     or (p_meters is not null and (cardinality(p_meters) <> v_count or coalesce(cardinality(p_quantities), 0) <> v_count))
     or exists (select 1 from unnest(p_amounts, p_meters, p_quantities) as e(amount, meter, quantities)
                where (e.meter is null and (e.amount is null or e.amount <= 0 or e.quantities is not null))
                   or (e.meter is not null and (e.amount is distinct from 0 or e.quantities is null))) then
    raise exception 'usage batch: % events with arrays of other lengths, amounts that are not positive, or priced events with an amount', v_count
      using errcode = 'TX001';
  end if;
  select coalesce(array_agg(id), '{}') into v_accounts from (
    select id from accounts where id = any(p_account_ids) order by id collate "C" for update) locked;
  if p_meters is not null then
    select costs, rate_card_ids, rate_card_versions, carries into v_costs, v_rate_card_ids, v_rate_card_versions, v_carries
      from tally_price_events(p_account_ids, p_meters, p_quantities, v_now);
    -- As tally_price_spend: a spend no balance could pay is bad input, and fails the batch.
    if exists (select 1 from unnest(v_costs) c where c > tally_spend_credits_max()) then
      raise exception 'a spend of this batch would cost more credits than a balance can hold (%)', tally_spend_credits_max()
        using errcode = 'TP400', detail = 'quantities';
    end if;
  end if;
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
  -- The period's recurring grants first; an account with a meter its plan lacks goes per event.
  v_per_event := tally_batch_entitlements(v_accounts, p_account_ids, p_meters, v_now);

  with sent as (
    select e.ord::integer as ord, e.account_id, e.amount, e.key, e.hash,
      coalesce(e.reference, '{}'::jsonb) as reference, e.actor, e.meter, e.quantities, e.cost, e.rate_card_id,
      e.rate_card_version,
      -- For a priced spend: the carry its account starts the batch with, plus the costs of its
      -- priced spends up to this one (NULL for a spend of credits).
      e.carry + sum(e.cost) over (partition by e.account_id order by e.ord rows unbounded preceding) as priced_to
    from unnest(p_account_ids, p_amounts, p_keys, p_hashes, p_references, p_actors, p_meters, p_quantities,
        v_costs, v_rate_card_ids, v_rate_card_versions, v_carries)
      with ordinality as e(account_id, amount, key, hash, reference, actor, meter, quantities, cost, rate_card_id,
        rate_card_version, carry, ord)
  ),
  event as (
    select s.ord, s.account_id, s.key, s.hash, s.reference, s.actor, s.meter, s.quantities, s.cost, s.rate_card_id,
      s.rate_card_version, t.amount,
      s.priced_to - floor(s.priced_to) as carry_after,
      (sum(t.amount) over (partition by s.account_id order by s.ord rows unbounded preceding))::bigint as spent_to
    from sent s
    cross join lateral (select case when s.meter is null then s.amount
      else (floor(s.priced_to) - floor(s.priced_to - s.cost))::bigint end as amount) t
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
    select t.*, coalesce(t.keys_new and t.id <> all(v_per_event) and t.total <= t.available and coalesce(cardinality(t.grant_ids), 0) <= 100
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
        coalesce(sum(o.credits), 0)::bigint as credits
      from (select g.id, g.position,
              least(s.spent_to, g.granted_to) - greatest(s.spent_to - s.amount, g.granted_to - g.remaining) as credits
            from unnest(c.grant_ids, c.grant_remaining, c.grant_granted_to) with ordinality as g(id, remaining, granted_to, position)
            -- A priced spend of 0 credits takes from no grant.
            where s.amount > 0 and g.granted_to - g.remaining < s.spent_to and s.spent_to - s.amount < g.granted_to) o) p
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
    update accounts a set available = a.available - c.total,
      carry = case when p_meters is null then a.carry
        else coalesce((select e.carry_after from event e where e.account_id = c.id and e.carry_after is not null
          order by e.ord desc limit 1), a.carry) end,
      updated_at = v_now
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
      idempotency_key, reference, actor, payload_hash, created_at, meter, quantities, rate_card_id,
      rate_card_version, cost, carry_after) overriding system value
    select n.entry_id, n.account_id, 'usage', -n.amount, n.available - n.spent_to - n.debt,
      coalesce(n.grant_ids, '{}'), coalesce(n.grant_credits, '{}'), 'request:' || n.key, n.reference,
      n.actor, n.hash, v_now, e.meter, e.quantities, e.rate_card_id, e.rate_card_version, e.cost, e.carry_after
    from numbered n join event e on e.ord = n.ord
  ),
  answer as (
    select n.ord, jsonb_build_object('status', 200, 'body', jsonb_build_object('entry_id', 'entry_' || n.entry_id,
      'amount', n.amount, 'available', n.available - n.spent_to, 'replayed', false)
      || tally_priced_answer(e.cost, e.rate_card_id, e.rate_card_version)) as result
    from numbered n join event e on e.ord = n.ord
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
    if p_meters[v_position] is null then
      v_results[v_position] := tally_usage(p_account_ids[v_position], p_amounts[v_position],
        p_keys[v_position], p_hashes[v_position], p_actors[v_position],
        coalesce(p_references[v_position], '{}'::jsonb), v_now);
    else
      v_results[v_position] := tally_priced_usage(p_account_ids[v_position], p_meters[v_position],
        p_quantities[v_position], p_keys[v_position], p_hashes[v_position], p_actors[v_position],
        coalesce(p_references[v_position], '{}'::jsonb), v_now);
    end if;
  end loop;
  return to_jsonb(v_results);
end $$;

-- The batch as processes started before migration 0013 call it (one JSON array of events),
-- so that they keep working until they restart with the array form.
create or replace function tally_usage_batch(p_events jsonb, p_now timestamptz) returns jsonb
  language sql as $$
  select tally_usage_batch(
    array_agg(e.value->>'account_id' order by e.n), array_agg((e.value->>'amount')::bigint order by e.n),
    array_agg(e.value->>'idempotency_key' order by e.n), array_agg(e.value->>'payload_hash' order by e.n),
    array_agg(coalesce(e.value->'reference', '{}'::jsonb) order by e.n), array_agg(e.value->>'actor' order by e.n),
    p_now)
  from jsonb_array_elements(p_events) with ordinality as e(value, n)
$$;
