-- Priced usage: rate cards and their versions, the catalog's cards at start, an account's card,
-- and the exact cost of a spend in numeric.
--
-- Applied after the numbered migrations, in file-name order, whenever the file changed
-- (src/db/migrate.ts). A change to a function is a diff of this file; a change of signature
-- also needs a numbered migration that drops the old one.

create or replace function tally_refuse_rate_card_version_change() returns trigger language plpgsql as $$
begin
  raise exception 'rate card versions are never edited or deleted (% refused)', tg_op using errcode = 'TE001';
end $$;

-- Whether two sets of rates price everything the same: the same meters and dimensions, and
-- rates equal as numbers ("0.10" is "0.1").
create or replace function tally_rates_equal(p_left jsonb, p_right jsonb) returns boolean
  language sql immutable as $$
  select not exists (
    select 1
    from (select m.key as meter, d.key as dimension, (d.value #>> '{}')::numeric as rate
          from jsonb_each(p_left) m cross join lateral jsonb_each(m.value) d) l
    full join (select m.key as meter, d.key as dimension, (d.value #>> '{}')::numeric as rate
               from jsonb_each(p_right) m cross join lateral jsonb_each(m.value) d) r
      on l.meter = r.meter and l.dimension = r.dimension
    where l.rate is distinct from r.rate)
$$;

create or replace function tally_rate_card_version_json(p_version rate_card_versions) returns jsonb
  language sql stable as $$
  select jsonb_build_object('id', p_version.rate_card_id, 'version', p_version.version,
    'effective_at', tally_iso(p_version.effective_at), 'rates', p_version.rates,
    'published_at', tally_iso(p_version.published_at))
$$;

-- The version of a card in effect at p_now: the latest effective_at not after p_now, and of
-- versions effective at the same instant the last published. So a version scheduled for later
-- still takes effect when a correction is published for now, and publishing another version for
-- the same instant replaces a scheduled one. NULL when none is in effect yet.
create or replace function tally_rate_card_in_effect(p_card text, p_now timestamptz) returns rate_card_versions
  language sql stable as $$
  select * from rate_card_versions where rate_card_id = p_card and effective_at <= p_now
  order by effective_at desc, version desc limit 1
$$;

-- The version that will take effect next after p_now, if any.
create or replace function tally_rate_card_next(p_card text, p_now timestamptz) returns rate_card_versions
  language sql stable as $$
  select * from rate_card_versions where rate_card_id = p_card and effective_at > p_now
  order by effective_at, version desc limit 1
$$;

-- Publishes a version of an existing card, numbered after its last one under the card's row
-- lock. An effective_at up to 60 seconds in the past (the caller's clock a little behind) means
-- now: a version never takes effect before it was published, so no spend already made could have
-- been priced by it. Audited with the version it follows.
create or replace function tally_publish_rate_card(p_card text, p_rates jsonb, p_effective_at timestamptz,
  p_source text, p_now timestamptz) returns jsonb language plpgsql as $$
declare
  v_now timestamptz := coalesce(p_now, now());
  v_before rate_card_versions;
  v_version rate_card_versions;
begin
  perform 1 from rate_cards where id = p_card for update;
  if not found then
    raise exception 'no rate card %', p_card using errcode = 'TR404';
  end if;
  if p_effective_at < v_now - interval '60 seconds' then
    raise exception 'effective_at % is more than 60 seconds in the past', tally_iso(p_effective_at)
      using errcode = 'TR400', detail = 'effective_at';
  end if;
  v_before := tally_rate_card_in_effect(p_card, v_now);
  insert into rate_card_versions (rate_card_id, version, effective_at, rates, source, published_at)
  select p_card, coalesce(max(version), 0) + 1, greatest(coalesce(p_effective_at, v_now), v_now), p_rates, p_source, v_now
    from rate_card_versions where rate_card_id = p_card
  returning * into v_version;
  insert into audit_log (account_id, actor, action, before, after, created_at)
  values (null, case when p_source = 'admin' then 'admin' else 'system' end, 'rate_card.published',
    case when v_before.rate_card_id is null then null else tally_rate_card_version_json(v_before) end,
    tally_rate_card_version_json(v_version), v_now);
  return tally_rate_card_version_json(v_version);
end $$;

-- Brings the database's pricing in line with the catalog at start, in one transaction: its cards
-- exist; a card whose catalog rates differ from the last version the catalog published gets a
-- new version, effective now (an unchanged catalog publishes nothing, and so never undoes an
-- operator's version); the default card and each plan's card, free flag, credits per month,
-- entitlements and recurring grants are the catalog's. Cards are locked in id order, so that
-- processes starting at once take turns and the second publishes nothing.
-- p_cards: [{id, rates}]; p_plans: [{id, rate_card, free?, credits_per_month?, entitlements?,
-- recurring_grants?}]. Answers the versions published.
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
  -- The free plan may move to another plan: the old one stops being free first (one free plan).
  update catalog_plans set free = false, updated_at = v_now
    where free and id not in (select p->>'id' from jsonb_array_elements(p_plans) p where (p->>'free')::boolean);
  insert into catalog_plans (id, rate_card_id, free, credits_per_month, entitlements, recurring_grants, updated_at)
  select p->>'id', p->>'rate_card', coalesce((p->>'free')::boolean, false), coalesce((p->>'credits_per_month')::bigint, 0),
    nullif(p->'entitlements', 'null'::jsonb), coalesce(p->'recurring_grants', '[]'::jsonb), v_now
  from jsonb_array_elements(p_plans) p order by p->>'id' collate "C"
  on conflict (id) do update set rate_card_id = excluded.rate_card_id, free = excluded.free,
    credits_per_month = excluded.credits_per_month, entitlements = excluded.entitlements,
    recurring_grants = excluded.recurring_grants, updated_at = excluded.updated_at
    where (catalog_plans.rate_card_id, catalog_plans.free, catalog_plans.credits_per_month, catalog_plans.entitlements,
      catalog_plans.recurring_grants) is distinct from (excluded.rate_card_id, excluded.free, excluded.credits_per_month,
      excluded.entitlements, excluded.recurring_grants);
  return v_published;
end $$;

-- Every card's version in effect at p_now (NULL: the database's clock) and the one scheduled
-- next, as GET /v1/rate-cards answers. A card with no version in effect yet is left out.
create or replace function tally_rate_cards_json(p_now timestamptz) returns jsonb language sql stable as $$
  select jsonb_build_object('rate_cards', coalesce(jsonb_agg(
      tally_rate_card_version_json(v) || jsonb_build_object('next',
        (select tally_rate_card_version_json(n) from tally_rate_card_next(c.id, t.now) n where n.rate_card_id is not null))
      order by c.id collate "C"), '[]'::jsonb))
  from (select coalesce(p_now, now()) as now) t
    cross join rate_cards c
    cross join lateral tally_rate_card_in_effect(c.id, t.now) v
  where v.rate_card_id is not null
$$;

-- Every version of a card, newest published first; NULL for a card that does not exist.
create or replace function tally_rate_card_versions_json(p_card text) returns jsonb language sql stable as $$
  select case when exists (select 1 from rate_cards where id = p_card) then
    jsonb_build_object('versions', coalesce((select jsonb_agg(tally_rate_card_version_json(v) order by v.version desc)
      from rate_card_versions v where v.rate_card_id = p_card), '[]'::jsonb))
  end
$$;

-- The exact cost of p_quantities of p_meter at p_rates: the sum of quantity × rate in numeric,
-- with no trailing zeros. A meter or a dimension the rates do not price, or a quantity that is
-- not a non-negative integer, is refused (the API checks both first; this is the database's own
-- guard, so that a missing rate is never read as free).
create or replace function tally_price(p_rates jsonb, p_meter text, p_quantities jsonb) returns numeric
  language plpgsql immutable as $$
declare
  v_rates jsonb := p_rates -> p_meter;
  v_cost numeric := 0;
  v_quantity record;
begin
  if v_rates is null then
    raise exception 'the rate card prices no meter %', p_meter using errcode = 'TP404', detail = p_meter;
  end if;
  if jsonb_typeof(p_quantities) is distinct from 'object' then
    raise exception 'quantities must be an object' using errcode = 'TP400', detail = 'quantities';
  end if;
  for v_quantity in select key, value from jsonb_each(p_quantities) loop
    if not v_rates ? v_quantity.key then
      raise exception 'meter % has no dimension %', p_meter, v_quantity.key
        using errcode = 'TP400', detail = 'quantities.' || v_quantity.key;
    end if;
    if jsonb_typeof(v_quantity.value) <> 'number' or (v_quantity.value #>> '{}')::numeric < 0
       or (v_quantity.value #>> '{}')::numeric <> trunc((v_quantity.value #>> '{}')::numeric) then
      raise exception 'quantity % is not a non-negative integer', v_quantity.key
        using errcode = 'TP400', detail = 'quantities.' || v_quantity.key;
    end if;
    v_cost := v_cost + (v_quantity.value #>> '{}')::numeric * (v_rates ->> v_quantity.key)::numeric;
  end loop;
  return trim_scale(v_cost);
end $$;

-- The card that prices each account's spends: its plan's (the plan item with the most credits per
-- month of its subscriptions that are active, trialing or past due, else the free plan), or the
-- catalog's default when that plan names none or there is no plan. Set-based, so that a batch
-- asks once for all its accounts; the plan is decided by tally_account_plans (44-entitlements.sql).
create or replace function tally_account_rate_cards(p_accounts text[]) returns table (account_id text, rate_card_id text)
  language sql stable as $$
  select p.account_id, p.rate_card_id from tally_account_plans(p_accounts) p
$$;

create or replace function tally_account_rate_card(p_account text) returns text language sql stable as $$
  select rate_card_id from tally_account_rate_cards(array[p_account])
$$;

-- The most credits one spend may charge or reserve: a balance holds at most 2^53 - 1.
create or replace function tally_spend_credits_max() returns bigint language sql immutable as $$
  select 9007199254740991::bigint
$$;

-- The price of a priced spend for an account at p_now: the account's card and the version in
-- effect, the exact cost, and the credits it moves. A spend charges floor(cost + carry) and keeps
-- the rest as the account's new carry, so over any sequence of spends the credits charged are the
-- floor of their total exact cost; a hold (p_reserve) reserves ceil(cost) and leaves the carry to
-- its capture. The caller reads p_carry under the account's row lock (a quote reads it without).
-- A spend that would move more than a balance can hold is refused as bad input.
create or replace function tally_price_spend(p_account text, p_meter text, p_quantities jsonb, p_carry numeric,
  p_now timestamptz, p_reserve boolean) returns jsonb language plpgsql stable as $$
declare
  v_card text := tally_account_rate_card(p_account);
  v_version rate_card_versions;
  v_cost numeric;
  v_credits numeric;
begin
  if v_card is null then
    raise exception 'no rate card prices meter % (the catalog has no rate cards)', p_meter using errcode = 'TP404', detail = p_meter;
  end if;
  v_version := tally_rate_card_in_effect(v_card, p_now);
  if v_version.rate_card_id is null then
    raise exception 'invariant broken: no version of rate card % is in effect at %', v_card, tally_iso(p_now)
      using errcode = 'TX001';
  end if;
  v_cost := tally_price(v_version.rates, p_meter, p_quantities);
  v_credits := case when p_reserve then ceil(v_cost) else floor(v_cost + p_carry) end;
  if v_credits > tally_spend_credits_max() then
    raise exception 'this spend would move % credits, more than a balance can hold (%)', v_credits, tally_spend_credits_max()
      using errcode = 'TP400', detail = 'quantities';
  end if;
  return jsonb_build_object('meter', p_meter, 'quantities', p_quantities, 'rate_card_id', v_card,
    'rate_card_version', v_version.version, 'cost', v_cost, 'credits', v_credits,
    'carry_after', case when p_reserve then null else trim_scale(v_cost + p_carry - v_credits) end);
end $$;

-- What a priced spend's answer adds: its exact cost as a decimal string and the version that
-- priced it (p_priced as tally_price_spend made it, or an entry's or hold's columns).
create or replace function tally_priced_answer(p_cost numeric, p_card text, p_version integer) returns jsonb
  language sql immutable as $$
  select case when p_card is null then '{}'::jsonb
    else jsonb_build_object('cost', trim_scale(p_cost)::text, 'rate_card', jsonb_build_object('id', p_card, 'version', p_version)) end
$$;

-- The start of a priced spend: a key the account has seen answers at once (so a replay is never
-- priced again, whatever the rates now); otherwise the account is locked and its carry read.
-- Answers the stored outcome, a 404, or NULL with p_carry set: go on.
create or replace function tally_open_priced(p_account text, p_key text, p_operation text, p_hash text,
  out p_outcome jsonb, out p_carry numeric) language plpgsql as $$
begin
  p_outcome := tally_prior_outcome(p_account, p_key, p_operation, p_hash);
  if p_outcome is not null then
    return;
  end if;
  select carry into p_carry from accounts where id = p_account for update;
  if not found then
    p_outcome := jsonb_build_object('status', 404, 'body', tally_error('account_not_found', 'no account with id ' || p_account));
    return;
  end if;
  -- A racing request under the same key may have committed before the lock was ours.
  p_outcome := tally_prior_outcome(p_account, p_key, p_operation, p_hash);
end $$;

-- A priced usage: priced under the account's lock at the version in effect now, then spent as
-- tally_usage spends credits (its checks, its refusals kept as the key's first outcome), with the
-- price written on the entry and the carry moved in the same transaction.
create or replace function tally_priced_usage(p_account text, p_meter text, p_quantities jsonb, p_key text,
  p_hash text, p_actor text, p_reference jsonb, p_now timestamptz) returns jsonb language plpgsql as $$
declare
  v_now timestamptz := coalesce(p_now, now());
  v_open record;
  v_priced jsonb;
  v_refusal jsonb;
begin
  select * into v_open from tally_open_priced(p_account, p_key, 'usage', p_hash);
  if v_open.p_outcome is not null then
    return v_open.p_outcome;
  end if;
  -- A meter outside the account's plan is refused before anything is priced or written; the
  -- refusal is the key's first outcome, as 402 is.
  v_refusal := tally_meter_refusal(p_account, p_meter);
  if v_refusal is not null then
    return tally_remember(p_key, p_account, 'usage', p_hash, 403, v_refusal, v_now);
  end if;
  v_priced := tally_price_spend(p_account, p_meter, p_quantities, v_open.p_carry, v_now, false);
  return tally_usage(p_account, (v_priced->>'credits')::bigint, p_key, p_hash, p_actor, p_reference, v_now, v_priced);
end $$;

-- A priced hold: reserves ceil(cost) of the most the call may use, at the version in effect now,
-- which the hold remembers for its capture.
create or replace function tally_priced_hold(p_account text, p_meter text, p_quantities jsonb, p_expires_in_seconds integer,
  p_key text, p_hash text, p_actor text, p_now timestamptz) returns jsonb language plpgsql as $$
declare
  v_now timestamptz := coalesce(p_now, now());
  v_open record;
  v_priced jsonb;
  v_refusal jsonb;
begin
  select * into v_open from tally_open_priced(p_account, p_key, 'hold', p_hash);
  if v_open.p_outcome is not null then
    return v_open.p_outcome;
  end if;
  v_refusal := tally_meter_refusal(p_account, p_meter);
  if v_refusal is not null then
    return tally_remember(p_key, p_account, 'hold', p_hash, 403, v_refusal, v_now);
  end if;
  v_priced := tally_price_spend(p_account, p_meter, p_quantities, v_open.p_carry, v_now, true);
  return tally_hold(p_account, (v_priced->>'credits')::bigint, p_expires_in_seconds, p_key, p_hash, p_actor, v_now, v_priced);
end $$;

-- Captures a priced hold by what was used (p_quantities; NULL: what it held), priced by the
-- hold's version with the account's carry. Charging more than the hold is capture_exceeds_hold
-- and changes nothing; otherwise the rest is released.
create or replace function tally_priced_capture(p_hold_id bigint, p_quantities jsonb, p_actor text, p_now timestamptz)
  returns jsonb language plpgsql as $$
declare
  v_now timestamptz := coalesce(p_now, now());
  v_hold holds := tally_lock_pending_hold(p_hold_id, v_now);
  v_rates jsonb;
  v_carry numeric;
  v_cost numeric;
  v_credits numeric;
  v_available bigint;
begin
  if v_hold.meter is null then
    raise exception 'hold_% holds credits, not a meter: capture it with amount', p_hold_id
      using errcode = 'TP400', detail = 'quantities';
  end if;
  select rates into v_rates from rate_card_versions
    where rate_card_id = v_hold.rate_card_id and version = v_hold.rate_card_version;
  if not found then
    raise exception 'invariant broken: hold_% names rate card % version %, which does not exist', p_hold_id,
      v_hold.rate_card_id, v_hold.rate_card_version using errcode = 'TX001';
  end if;
  select carry into v_carry from accounts where id = v_hold.account_id;
  v_cost := tally_price(v_rates, v_hold.meter, coalesce(p_quantities, v_hold.quantities));
  v_credits := floor(v_cost + v_carry);
  if v_credits > v_hold.amount then
    raise exception 'capture of % credits (cost %) exceeds the hold of %', v_credits, v_cost, v_hold.amount
      using errcode = 'TH400', detail = v_hold.amount::text;
  end if;
  perform tally_release(v_hold, v_credits::bigint, 'captured', p_actor, v_now,
    jsonb_build_object('meter', v_hold.meter, 'quantities', coalesce(p_quantities, v_hold.quantities),
      'rate_card_id', v_hold.rate_card_id, 'rate_card_version', v_hold.rate_card_version, 'cost', v_cost,
      'credits', v_credits, 'carry_after', trim_scale(v_cost + v_carry - v_credits)));
  perform tally_settle(v_hold.account_id, v_now);
  select available into v_available from accounts where id = v_hold.account_id;
  return jsonb_build_object('captured', v_credits, 'released', v_hold.amount - v_credits, 'available', v_available)
    || tally_priced_answer(v_cost, v_hold.rate_card_id, v_hold.rate_card_version);
end $$;

-- What a spend would charge now and whether it would pass, writing nothing: p_amount credits, or
-- p_meter with p_quantities priced as a usage would be (with the carry). `available` is what the
-- balance call answers (grants past their expiry no longer count, and the recurring grants the
-- period's first call would give count as given). `reason` is the refusal the spend would get:
-- the meter's entitlement first, then credits, then the limits, as a spend checks them.
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
    where g.account_id = p_account and g.live and g.expires_at <= v_now), 0)
    + tally_recurring_pending(p_account, v_now);
  if p_meter is not null then
    v_priced := tally_price_spend(p_account, p_meter, p_quantities, v_account.carry, v_now, false);
  end if;
  v_credits := coalesce((v_priced->>'credits')::bigint, p_amount);
  if tally_meter_refusal(p_account, p_meter) is not null then
    v_reason := 'meter_not_entitled';
  elsif v_credits > v_available then
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

-- The prices of a batch's priced events (p_meters[i] set), in batch order: each priced by its
-- account's card at the version in effect at p_now, with the carry its account has now; NULL for
-- a spend of credits or an unknown account. Set-based; an event the version cannot price (a meter
-- or dimension it lacks, a quantity that is not a non-negative integer) goes to tally_price,
-- which raises what it raises for a single spend, and so fails the batch.
create or replace function tally_price_events(p_account_ids text[], p_meters text[], p_quantities jsonb[],
  p_now timestamptz, out costs numeric[], out rate_card_ids text[], out rate_card_versions integer[],
  out carries numeric[]) language sql stable as $$
  with priced_account as (
    select distinct e.account_id from unnest(p_account_ids, p_meters) as e(account_id, meter) where e.meter is not null
  ),
  -- Each account read once, by its key (a batch holds a few of many accounts): its carry, read
  -- once per batch whatever the number of its priced events. An unknown account has no row.
  account as (
    select d.account_id as id, a.carry, c.rate_card_id
    from priced_account d join accounts a on a.id = d.account_id
    cross join lateral tally_account_rate_cards(array[d.account_id]) c
  ),
  version as (
    select d.rate_card_id, v.version, v.rates
    from (select distinct rate_card_id from account) d
    cross join lateral tally_rate_card_in_effect(d.rate_card_id, p_now) v
  )
  select
    array_agg(case when e.meter is null or a.id is null then null when r.priced then trim_scale(r.cost)
      else tally_price(v.rates, e.meter, e.quantities) end order by e.ord),
    array_agg(v.rate_card_id order by e.ord), array_agg(v.version order by e.ord), array_agg(a.carry order by e.ord)
  from unnest(p_account_ids, p_meters, p_quantities) with ordinality as e(account_id, meter, quantities, ord)
  left join account a on e.meter is not null and a.id = e.account_id
  left join version v on v.rate_card_id = a.rate_card_id
  left join lateral (
    -- Quantities are numbers (the API checks them; a string fails the cast); a dimension without
    -- a rate, or a negative or fractional quantity, is left to tally_price to refuse.
    select sum(q.value::numeric * (v.rates -> e.meter ->> q.key)::numeric) as cost,
      count(v.rates -> e.meter ->> q.key) = count(*) and min(q.value::numeric) >= 0
        and bool_and(q.value::numeric = trunc(q.value::numeric)) as priced
    from jsonb_each(e.quantities) q) r on a.id is not null
$$;
