-- The rollback of migration 0022 (entitlements): the functions that 0022's release changed go back
-- to their definitions before it (so that nothing left calls what is dropped next), the functions
-- and triggers it added are dropped, then its table, columns and index; grants' sources go back to
-- the old list, not validated (recurring grants already given keep their source). The function
-- files' checksums are forgotten, so that the release started next applies its own definitions.

create or replace function tally_sync_catalog_pricing(p_cards jsonb, p_default text, p_plans jsonb,
  p_now timestamptz) returns jsonb language plpgsql as $$
declare
  v_now timestamptz := coalesce(p_now, now());
  v_card record;
  v_last rate_card_versions;
  v_published jsonb := '[]'::jsonb;
begin
  insert into rate_cards (id, created_at)
  select c->>'id', v_now from jsonb_array_elements(p_cards) c
  order by c->>'id' collate "C"
  on conflict (id) do nothing;
  perform 1 from rate_cards where id in (select c->>'id' from jsonb_array_elements(p_cards) c)
    order by id collate "C" for update;
  for v_card in
    select c->>'id' as id, c->'rates' as rates from jsonb_array_elements(p_cards) c order by c->>'id' collate "C"
  loop
    select * into v_last from rate_card_versions
      where rate_card_id = v_card.id and source = 'catalog' order by version desc limit 1;
    if not found or not tally_rates_equal(v_last.rates, v_card.rates) then
      v_published := v_published || jsonb_build_array(
        tally_publish_rate_card(v_card.id, v_card.rates, v_now, 'catalog', v_now));
    end if;
  end loop;
  update rate_cards set is_default = false where is_default and id is distinct from p_default;
  update rate_cards set is_default = true where id = p_default and not is_default;
  delete from catalog_plans where id not in (select p->>'id' from jsonb_array_elements(p_plans) p);
  insert into catalog_plans (id, rate_card_id, updated_at)
  select p->>'id', p->>'rate_card', v_now from jsonb_array_elements(p_plans) p
  on conflict (id) do update set rate_card_id = excluded.rate_card_id, updated_at = excluded.updated_at
    where catalog_plans.rate_card_id is distinct from excluded.rate_card_id;
  return v_published;
end $$;


create or replace function tally_account_rate_cards(p_accounts text[]) returns table (account_id text, rate_card_id text)
  language sql stable as $$
  select a.account_id, coalesce(plan.rate_card_id, (select id from rate_cards where is_default))
  from unnest(p_accounts) as a(account_id)
  left join lateral (
    select p.rate_card_id from subscriptions s left join catalog_plans p on p.id = s.plan_id
    where s.account_id = a.account_id and s.status in ('active', 'trialing', 'past_due')
    order by s.event_created desc, s.id limit 1) plan on true
$$;


create or replace function tally_priced_usage(p_account text, p_meter text, p_quantities jsonb, p_key text,
  p_hash text, p_actor text, p_reference jsonb, p_now timestamptz) returns jsonb language plpgsql as $$
declare
  v_now timestamptz := coalesce(p_now, now());
  v_open record;
  v_priced jsonb;
begin
  select * into v_open from tally_open_priced(p_account, p_key, 'usage', p_hash);
  if v_open.p_outcome is not null then
    return v_open.p_outcome;
  end if;
  v_priced := tally_price_spend(p_account, p_meter, p_quantities, v_open.p_carry, v_now, false);
  return tally_usage(p_account, (v_priced->>'credits')::bigint, p_key, p_hash, p_actor, p_reference, v_now, v_priced);
end $$;


create or replace function tally_priced_hold(p_account text, p_meter text, p_quantities jsonb, p_expires_in_seconds integer,
  p_key text, p_hash text, p_actor text, p_now timestamptz) returns jsonb language plpgsql as $$
declare
  v_now timestamptz := coalesce(p_now, now());
  v_open record;
  v_priced jsonb;
begin
  select * into v_open from tally_open_priced(p_account, p_key, 'hold', p_hash);
  if v_open.p_outcome is not null then
    return v_open.p_outcome;
  end if;
  v_priced := tally_price_spend(p_account, p_meter, p_quantities, v_open.p_carry, v_now, true);
  return tally_hold(p_account, (v_priced->>'credits')::bigint, p_expires_in_seconds, p_key, p_hash, p_actor, v_now, v_priced);
end $$;


create or replace function tally_quote(p_account text, p_amount bigint, p_meter text, p_quantities jsonb,
  p_now timestamptz) returns jsonb language plpgsql stable as $$
declare
  v_now timestamptz := coalesce(p_now, now());
  v_account accounts;
  v_available bigint;
  v_priced jsonb;
  v_credits bigint;
  v_reason text;
begin
  select * into v_account from accounts where id = p_account;
  if not found then
    raise exception 'no account %', p_account using errcode = 'TA404';
  end if;
  v_available := v_account.available - coalesce((select sum(g.remaining) from grants g
    where g.account_id = p_account and g.live and g.expires_at <= v_now), 0);
  if p_meter is not null then
    v_priced := tally_price_spend(p_account, p_meter, p_quantities, v_account.carry, v_now, false);
  end if;
  v_credits := coalesce((v_priced->>'credits')::bigint, p_amount);
  if v_credits > v_available then
    v_reason := 'insufficient_credits';
  elsif v_credits > 0 and v_account.spend_limited and tally_spend_limit_passed(p_account, v_credits, v_now) is not null then
    v_reason := 'spend_limit_exceeded';
  end if;
  return jsonb_build_object('amount', v_credits,
      'cost', coalesce(trim_scale((v_priced->>'cost')::numeric)::text, p_amount::text),
      'rate_card', case when v_priced is null then null
        else jsonb_build_object('id', v_priced->>'rate_card_id', 'version', (v_priced->>'rate_card_version')::integer) end,
      'available', v_available, 'allowed', v_reason is null)
    || case when v_reason is null then '{}'::jsonb else jsonb_build_object('reason', v_reason) end;
end $$;


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
  -- A spend of 0 credits (a priced spend whose cost the carry absorbs) passes no limit.
  if v_limited and p_amount > 0 then
    v_outcome := tally_spend_limits_take(p_account, p_amount, p_now);
    if v_outcome is not null then
      return tally_remember(p_key, p_account, p_operation, p_hash, 402, v_outcome, p_now);
    end if;
  end if;
  return null;
end $$;


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

drop trigger if exists subscriptions_insert_entitlements on subscriptions;
drop trigger if exists subscriptions_update_entitlements on subscriptions;
drop function if exists tally_entitlement_events(), tally_entitlements_json(text, timestamptz), tally_entitlements_state(text), tally_balance(text, timestamptz), tally_recurring_pending(text, timestamptz), tally_give_recurring(text, timestamptz), tally_recurring_due(text, timestamptz), tally_catalog_recurs(), tally_recurring_period(text, timestamptz), tally_features_union(text), tally_batch_entitlements(text[], text[], text[], timestamptz), tally_unentitled_accounts(text[], text[]), tally_meter_refusal(text, text), tally_meters_restricted(), tally_account_plans(text[]), tally_plan_items(text[]);
drop table account_plans;
alter table grants drop constraint grant_source;
alter table grants add constraint grant_source check (source in ('subscription', 'trial', 'purchase', 'promo', 'admin', 'rollover')) not valid;
alter table subscriptions drop column plan_ids;
drop index catalog_plans_one_free;
alter table catalog_plans drop constraint entitlements_shape, drop constraint recurring_grants_shape;
alter table catalog_plans drop column free, drop column credits_per_month, drop column entitlements, drop column recurring_grants;
delete from tally_function_files;
delete from tally_migrations where version = 22;
