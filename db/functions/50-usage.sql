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

-- The set-based batch, in named steps (each a function below, in the order it runs). Event i is a
-- priced spend when p_meters[i] is set (then p_amounts[i] is 0 and p_quantities[i] holds its
-- quantities; both arrays are NULL in a batch without priced events).
--   1. tally_usage_batch_check: the arrays make a batch, or the batch fails (TX001).
--   2. Lock the batch's accounts, in one order.
--   3. tally_usage_batch_price: price the priced events with each account's carry.
--   4. tally_usage_batch_settle: settle the accounts with a hold or grant past due; then
--      tally_batch_entitlements (44-entitlements.sql): give the period's recurring grants, and
--      name the accounts with a meter their plan lacks, which go per event.
--   5. tally_usage_batch_write: decide each account at once or not (tally_usage_batch_accounts,
--      which resolves the keys already answered and checks entitlements, credits and limits),
--      write the spends of those decided at once as one statement, and answer them.
--   6. Ask for the top-ups those spends call for, as tally_usage does.
--   7. tally_usage_batch_one_by_one: every other account goes one event at a time, as before.
create or replace function tally_usage_batch(p_account_ids text[], p_amounts bigint[], p_keys text[],
  p_hashes text[], p_references jsonb[], p_actors text[], p_now timestamptz, p_meters text[], p_quantities jsonb[])
  returns jsonb language plpgsql as $$
declare
  v_now timestamptz := coalesce(p_now, now());
  v_count integer := coalesce(cardinality(p_account_ids), 0);
  v_accounts text[];
  v_account text;
  v_amounts bigint[] := p_amounts;
  v_costs numeric[];
  v_rate_card_ids text[];
  v_rate_card_versions integer[];
  v_carries_after numeric[];
  v_per_event text[];
  v_results jsonb[];
  v_below_top_up text[];
begin
  if v_count = 0 then
    return '[]'::jsonb;
  end if;
  perform tally_usage_batch_check(v_count, p_amounts, p_keys, p_hashes, p_references, p_actors, p_meters, p_quantities);
  select coalesce(array_agg(id), '{}') into v_accounts from (
    select id from accounts where id = any(p_account_ids) order by id collate "C" for update) locked;
  if p_meters is not null then
    select * into v_amounts, v_costs, v_rate_card_ids, v_rate_card_versions, v_carries_after
      from tally_usage_batch_price(p_account_ids, p_amounts, p_meters, p_quantities, v_now);
  end if;
  perform tally_usage_batch_settle(v_accounts, p_account_ids, p_keys, v_now);
  -- The period's recurring grants first; an account with a meter its plan lacks goes per event.
  v_per_event := tally_batch_entitlements(v_accounts, p_account_ids, p_meters, v_now);
  select * into v_results, v_below_top_up
    from tally_usage_batch_write(v_accounts, v_per_event, p_account_ids, v_amounts, p_keys, p_hashes, p_references,
      p_actors, p_meters, p_quantities, v_costs, v_rate_card_ids, v_rate_card_versions, v_carries_after, v_now);
  -- As tally_usage: spends that leave an account below its auto top-up threshold ask for one.
  foreach v_account in array coalesce(v_below_top_up, '{}') loop
    perform tally_request_top_up(v_account, v_now);
  end loop;
  return to_jsonb(tally_usage_batch_one_by_one(v_results, p_account_ids, p_amounts, p_keys, p_hashes, p_references,
    p_actors, p_meters, p_quantities, v_now));
end $$;

-- Step 1: a batch is arrays of one length (p_count), a positive amount for each spend of
-- credits, and amount 0 with quantities for each priced event. Anything else is the caller's bug.
create or replace function tally_usage_batch_check(p_count integer, p_amounts bigint[], p_keys text[], p_hashes text[],
  p_references jsonb[], p_actors text[], p_meters text[], p_quantities jsonb[]) returns void language plpgsql as $$
begin
  if coalesce(cardinality(p_amounts), 0) <> p_count or coalesce(cardinality(p_keys), 0) <> p_count
     or coalesce(cardinality(p_hashes), 0) <> p_count or coalesce(cardinality(p_references), 0) <> p_count
     or coalesce(cardinality(p_actors), 0) <> p_count
     or (p_meters is not null and (cardinality(p_meters) <> p_count or coalesce(cardinality(p_quantities), 0) <> p_count))
     or exists (select 1 from unnest(p_amounts, p_meters, p_quantities) as e(amount, meter, quantities)
                where (e.meter is null and (e.amount is null or e.amount <= 0 or e.quantities is not null))
                   or (e.meter is not null and (e.amount is distinct from 0 or e.quantities is null))) then
    raise exception 'usage batch: % events with arrays of other lengths, amounts that are not positive, or priced events with an amount', p_count
      using errcode = 'TX001';
  end if;
end $$;

-- Step 3: the price of each priced event, each by its account's card at the version in effect
-- (tally_price_events, which reads each account's carry once, under the batch's lock), and what
-- every event charges: a spend of credits its amount; the i-th priced spend of an account
-- floor(carry + the costs up to it) - floor(carry + the costs before it), which is what one priced
-- spend after the other would charge, with the rest after it as the account's carry. NULL for a
-- priced event of an unknown account. As tally_price_spend: a spend no balance could pay is bad
-- input, and fails the batch.
create or replace function tally_usage_batch_price(p_account_ids text[], p_amounts bigint[], p_meters text[],
  p_quantities jsonb[], p_now timestamptz, out p_charges bigint[], out p_costs numeric[], out p_rate_card_ids text[],
  out p_rate_card_versions integer[], out p_carries_after numeric[]) language plpgsql as $$
declare
  v_carries numeric[];
begin
  select * into p_costs, p_rate_card_ids, p_rate_card_versions, v_carries
    from tally_price_events(p_account_ids, p_meters, p_quantities, p_now);
  if exists (select 1 from unnest(p_costs) c where c > tally_spend_credits_max()) then
    raise exception 'a spend of this batch would cost more credits than a balance can hold (%)', tally_spend_credits_max()
      using errcode = 'TP400', detail = 'quantities';
  end if;
  select array_agg(case when e.meter is null then e.amount
      else (floor(e.priced_to) - floor(e.priced_to - e.cost))::bigint end order by e.ord),
    array_agg(e.priced_to - floor(e.priced_to) order by e.ord)
  into p_charges, p_carries_after
  from (
    -- The carry the account starts the batch with, plus the costs of its priced spends up to this
    -- one (NULL for a spend of credits).
    select s.ord, s.amount, s.meter, s.cost,
      s.carry + sum(s.cost) over (partition by s.account_id order by s.ord rows unbounded preceding) as priced_to
    from unnest(p_account_ids, p_amounts, p_meters, p_costs, v_carries)
      with ordinality as s(account_id, amount, meter, cost, carry, ord)) e;
end $$;

-- Step 4: holds and grants past due are few (the sweep settles them), so this reads the due ones.
-- As tally_usage, an account is settled only for a key it has not seen: a replay changes nothing.
create or replace function tally_usage_batch_settle(p_accounts text[], p_account_ids text[], p_keys text[],
  p_now timestamptz) returns void language plpgsql as $$
declare
  v_account text;
begin
  for v_account in
    select d.account_id from (
      select h.account_id from holds h
        where h.status = 'pending' and h.expires_at <= p_now and h.account_id = any(p_accounts)
      union
      select g.account_id from grants g
        where g.live and g.expires_at <= p_now and g.account_id = any(p_accounts)) d
    where exists (
      select 1 from unnest(p_account_ids, p_keys) as e(account_id, key)
      where e.account_id = d.account_id
        and not exists (select 1 from request_keys k where k.account_id = e.account_id and k.key = e.key)
        and not exists (select 1 from entries n where n.account_id = e.account_id and n.idempotency_key = 'request:' || e.key))
    order by d.account_id collate "C"
  loop
    perform tally_settle(v_account, p_now);
  end loop;
end $$;

-- The events of a batch with their position (ord), what each charges (p_charges), the credits its
-- account's events charge up to it (spent_to), and whether its account has seen its key before:
-- one probe per event, of request_keys and of the entries' keys. Inlined into the statement of
-- step 5, as are the two functions after it.
create or replace function tally_usage_batch_events(p_account_ids text[], p_charges bigint[], p_keys text[],
  p_hashes text[], p_references jsonb[], p_actors text[], p_carries_after numeric[])
  returns table (account_id text, ord integer, amount bigint, spent_to bigint, key text, hash text, reference jsonb,
    actor text, carry_after numeric, seen boolean) language sql stable as $$
  select e.account_id, e.ord::integer, e.amount,
    (sum(e.amount) over (partition by e.account_id order by e.ord rows unbounded preceding))::bigint,
    e.key, e.hash, coalesce(e.reference, '{}'::jsonb), e.actor, e.carry_after, prior.seen is not null
  from unnest(p_account_ids, p_charges, p_keys, p_hashes, p_references, p_actors, p_carries_after)
    with ordinality as e(account_id, amount, key, hash, reference, actor, carry_after, ord)
  left join lateral (
    select true as seen from request_keys k where k.account_id = e.account_id and k.key = e.key
    union all
    select true from entries n where n.account_id = e.account_id and n.idempotency_key = 'request:' || e.key
    limit 1) prior on true
$$;

-- Everything the decision reads, one row each: the events, the live grants of the batch's
-- accounts (p_accounts, locked), with where each ends in spend order, and the accounts with their
-- limits, as the current UTC windows count them (a counter of an earlier window starts again at 0).
create or replace function tally_usage_batch_reads(p_accounts text[], p_account_ids text[], p_charges bigint[],
  p_keys text[], p_hashes text[], p_references jsonb[], p_actors text[], p_carries_after numeric[], p_now timestamptz)
  returns table (account_id text, ord integer, amount bigint, spent_to bigint, key text, hash text, reference jsonb,
    actor text, carry_after numeric, seen boolean, grant_id bigint, remaining bigint, granted_to bigint,
    available bigint, debt bigint, limited boolean, limits_found boolean, per_day bigint, per_month bigint,
    spent_day bigint, spent_month bigint) language sql stable as $$
  select e.*, null::bigint, null::bigint, null::bigint, null::bigint, null::bigint, null::boolean, null::boolean,
    null::bigint, null::bigint, null::bigint, null::bigint
  from tally_usage_batch_events(p_account_ids, p_charges, p_keys, p_hashes, p_references, p_actors, p_carries_after) e
  union all
  select g.account_id, null, null, null, null, null, null, null, null, null, g.id, g.remaining,
    (sum(g.remaining) over (partition by g.account_id order by g.priority, g.expires_at, g.created_at, g.id
      rows unbounded preceding))::bigint,
    null, null, null, null, null, null, null, null
  from grants g
  where g.account_id = any(p_accounts) and g.live and (g.expires_at is null or g.expires_at > p_now)
  union all
  select a.id, null, null, null, null, null, null, null, null, null, null, null, null, a.available, a.debt,
    a.spend_limited, l.account_id is not null, l.per_day, l.per_month,
    case when l.day < (p_now at time zone 'UTC')::date then 0 else l.spent_day end,
    case when l.month < date_trunc('month', p_now at time zone 'UTC')::date then 0 else l.spent_month end
  from accounts a left join spend_limits l on a.spend_limited and l.account_id = a.id
  where a.id = any(p_accounts)
$$;

-- Whether the batch can decide an account at once: none of its keys comes twice or was seen
-- before, its plan includes the meters of its priced events (p_entitled: it is not one of the
-- accounts tally_batch_entitlements names), its balance covers the batch, and it has at most
-- 100 live grants (each spend reads its account's live grants, so an account with more, rare:
-- packs bought again and again, takes the per-event path, which stops at the grants a spend
-- needs). An account with limits is decided at once when the whole batch stays below both of
-- them: then no spend is refused and none reaches a limit (which writes an event). A batch that
-- would reach or pass one takes the per-event path, which decides each spend in turn.
create or replace function tally_usage_batch_at_once(p_keys_new boolean, p_entitled boolean, p_total bigint,
  p_available bigint, p_grant_count integer, p_limited boolean, p_limits_found boolean, p_per_day bigint,
  p_per_month bigint, p_spent_day bigint, p_spent_month bigint) returns boolean language sql immutable as $$
  select coalesce(p_keys_new and p_entitled and p_total <= p_available and p_grant_count <= 100
    and (not p_limited or (p_limits_found
      and (p_per_day is null or p_spent_day + p_total < p_per_day)
      and (p_per_month is null or p_spent_month + p_total < p_per_month))), false)
$$;

-- One row per account of the batch: its events as arrays in batch order, their total, the carry
-- after its last priced spend, whether a key comes twice or was seen before, its live grants in
-- spend order, its balance and limits, and whether the batch decides it at once.
create or replace function tally_usage_batch_accounts(p_accounts text[], p_per_event text[], p_account_ids text[],
  p_charges bigint[], p_keys text[], p_hashes text[], p_references jsonb[], p_actors text[], p_carries_after numeric[],
  p_now timestamptz)
  returns table (id text, event_ords integer[], event_amounts bigint[], event_spent_to bigint[], event_keys text[],
    event_hashes text[], event_references jsonb[], event_actors text[], total bigint, carry_after numeric,
    keys_new boolean, grant_ids bigint[], grant_remaining bigint[], grant_granted_to bigint[], found boolean,
    available bigint, debt bigint, limited boolean, limits_found boolean, per_day bigint, per_month bigint,
    spent_day bigint, spent_month bigint, at_once boolean) language sql stable as $$
  select t.*, tally_usage_batch_at_once(t.keys_new, t.id <> all(p_per_event), t.total, t.available,
    coalesce(cardinality(t.grant_ids), 0), t.limited, t.limits_found, t.per_day, t.per_month, t.spent_day, t.spent_month)
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
      (array_agg(p.carry_after order by p.ord desc) filter (where p.carry_after is not null))[1] as carry_after,
      count(p.ord) = count(distinct p.key) and not bool_or(p.seen) as keys_new,
      array_agg(p.grant_id order by p.granted_to) filter (where p.grant_id is not null) as grant_ids,
      array_agg(p.remaining order by p.granted_to) filter (where p.grant_id is not null) as grant_remaining,
      array_agg(p.granted_to order by p.granted_to) filter (where p.grant_id is not null) as grant_granted_to,
      bool_or(p.available is not null) as found, max(p.available) as available, max(p.debt) as debt,
      bool_or(p.limited) as limited, bool_or(p.limits_found) as limits_found, max(p.per_day) as per_day,
      max(p.per_month) as per_month, max(p.spent_day) as spent_day, max(p.spent_month) as spent_month
    from tally_usage_batch_reads(p_accounts, p_account_ids, p_charges, p_keys, p_hashes, p_references, p_actors,
      p_carries_after, p_now) p
    group by p.account_id) t
$$;

-- The grants one spend takes from and how much from each (negative, as entries write it), given
-- its account's live grants in spend order, each with where it ends (granted_to), and where the
-- account's spends end up to this one (p_spent_to). A spend of 0 credits takes from no grant.
create or replace function tally_usage_batch_take(p_amount bigint, p_spent_to bigint, p_grant_ids bigint[],
  p_grant_remaining bigint[], p_grant_granted_to bigint[])
  returns table (grant_ids bigint[], grant_credits bigint[], credits bigint) language sql immutable as $$
  select array_agg(o.id order by o.position), array_agg(-o.credits order by o.position), coalesce(sum(o.credits), 0)::bigint
  from (select g.id, g.position,
          least(p_spent_to, g.granted_to) - greatest(p_spent_to - p_amount, g.granted_to - g.remaining) as credits
        from unnest(p_grant_ids, p_grant_remaining, p_grant_granted_to) with ordinality as g(id, remaining, granted_to, position)
        where p_amount > 0 and g.granted_to - g.remaining < p_spent_to and p_spent_to - p_amount < g.granted_to) o
$$;

-- Step 5: one statement writes the spends of the accounts decided at once (their grants, balances,
-- carries, limits' counters and entries, with entry ids in the order the per-event path would
-- have taken them) and answers each event: the spend's answer, 404 for an unknown account, NULL
-- for the per-event path. Also the accounts those spends leave below their top-up threshold.
create or replace function tally_usage_batch_write(p_accounts text[], p_per_event text[], p_account_ids text[],
  p_charges bigint[], p_keys text[], p_hashes text[], p_references jsonb[], p_actors text[], p_meters text[], p_quantities jsonb[],
  p_costs numeric[], p_rate_card_ids text[], p_rate_card_versions integer[], p_carries_after numeric[],
  p_now timestamptz, out p_results jsonb[], out p_below_top_up text[]) language plpgsql as $$
declare
  v_entry_sequence regclass := pg_get_serial_sequence('entries', 'id')::regclass;
  v_uncovered bigint;
begin
  with account as (
    select * from tally_usage_batch_accounts(p_accounts, p_per_event, p_account_ids, p_charges, p_keys, p_hashes,
      p_references, p_actors, p_carries_after, p_now)
  ),
  numbered as (
    select s.*, nextval(v_entry_sequence) as entry_id from (
      select c.id as account_id, c.available, c.debt, s.*, t.*
      from account c
      cross join lateral unnest(c.event_ords, c.event_amounts, c.event_spent_to, c.event_keys, c.event_hashes,
        c.event_references, c.event_actors) as s(ord, amount, spent_to, key, hash, reference, actor)
      cross join lateral tally_usage_batch_take(s.amount, s.spent_to, c.grant_ids, c.grant_remaining, c.grant_granted_to) t
      where c.at_once
      order by c.id collate "C", s.ord) s
  ),
  taken_from_grants as (
    update grants g set remaining = g.remaining - t.credits
    from (select u.id, -sum(u.credits)::bigint as credits
          from numbered n cross join lateral unnest(n.grant_ids, n.grant_credits) as u(id, credits) group by u.id) t
    where g.id = t.id
  ),
  charged as (
    update accounts a set available = a.available - c.total, carry = coalesce(c.carry_after, a.carry), updated_at = p_now
    from account c where c.at_once and a.id = c.id
    returning a.id, a.available < a.top_up_threshold as below_top_up
  ),
  -- As tally_spend_limits_take would leave them after each spend in turn: windows move forward
  -- only, and each counts the batch's total.
  counted as (
    update spend_limits l set day = greatest(l.day, (p_now at time zone 'UTC')::date), spent_day = c.spent_day + c.total,
      month = greatest(l.month, date_trunc('month', p_now at time zone 'UTC')::date), spent_month = c.spent_month + c.total
    from account c where c.at_once and c.limited and l.account_id = c.id
  ),
  event as (
    select * from unnest(p_meters, p_quantities, p_costs, p_rate_card_ids, p_rate_card_versions, p_carries_after)
      with ordinality as e(meter, quantities, cost, rate_card_id, rate_card_version, carry_after, ord)
  ),
  written as (
    insert into entries (id, account_id, kind, amount, balance_after, grant_ids, grant_credits, idempotency_key,
      reference, actor, payload_hash, created_at, meter, quantities, rate_card_id, rate_card_version, cost, carry_after)
      overriding system value
    select n.entry_id, n.account_id, 'usage', -n.amount, n.available - n.spent_to - n.debt,
      coalesce(n.grant_ids, '{}'), coalesce(n.grant_credits, '{}'), 'request:' || n.key, n.reference,
      n.actor, n.hash, p_now, e.meter, e.quantities, e.rate_card_id, e.rate_card_version, e.cost, e.carry_after
    from numbered n left join event e on e.ord = n.ord
  ),
  answer as (
    select n.ord, jsonb_build_object('status', 200, 'body', jsonb_build_object('entry_id', 'entry_' || n.entry_id,
      'amount', n.amount, 'available', n.available - n.spent_to, 'replayed', false)
      || tally_priced_answer(e.cost, e.rate_card_id, e.rate_card_version)) as result
    from numbered n left join event e on e.ord = n.ord
    union all
    select u.ord, case when c.found then null else jsonb_build_object('status', 404,
      'body', tally_error('account_not_found', 'no account with id ' || c.id)) end
    from account c cross join lateral unnest(c.event_ords) as u(ord)
    where not c.at_once
  )
  select (select array_agg(result order by ord) from answer),
    (select count(*) from numbered where credits is distinct from amount),
    (select array_agg(id order by id collate "C") from charged where below_top_up)
  into p_results, v_uncovered, p_below_top_up;
  if v_uncovered > 0 then
    raise exception 'invariant broken: % spends of a usage batch exceed the live grants of their accounts', v_uncovered
      using errcode = 'TX001';
  end if;
end $$;

-- Step 7: the events step 5 left unanswered (NULL), account by account (ids in byte order, as
-- the batch locked them) and each account's in batch order, as tally_usage or tally_priced_usage
-- answers them one at a time.
create or replace function tally_usage_batch_one_by_one(p_results jsonb[], p_account_ids text[], p_amounts bigint[],
  p_keys text[], p_hashes text[], p_references jsonb[], p_actors text[], p_meters text[], p_quantities jsonb[],
  p_now timestamptz) returns jsonb[] language plpgsql as $$
declare
  v_results jsonb[] := p_results;
  v_position integer;
begin
  for v_position in
    select r.ord from unnest(p_results, p_account_ids) with ordinality as r(result, account_id, ord)
    where r.result is null order by r.account_id collate "C", r.ord
  loop
    if p_meters[v_position] is null then
      v_results[v_position] := tally_usage(p_account_ids[v_position], p_amounts[v_position],
        p_keys[v_position], p_hashes[v_position], p_actors[v_position],
        coalesce(p_references[v_position], '{}'::jsonb), p_now);
    else
      v_results[v_position] := tally_priced_usage(p_account_ids[v_position], p_meters[v_position],
        p_quantities[v_position], p_keys[v_position], p_hashes[v_position], p_actors[v_position],
        coalesce(p_references[v_position], '{}'::jsonb), p_now);
    end if;
  end loop;
  return v_results;
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
