-- Entitlements and recurring grants: which plan an account is on, what it may use, and the
-- credits its plan gives each day, week or month.
--
-- Applied after the numbered migrations, in file-name order, whenever the file changed
-- (src/db/migrate.ts). A change to a function is a diff of this file; a change of signature
-- also needs a numbered migration that drops the old one.
--
-- The account's plan is decided here, in SQL, so that a spend decides it under its own account
-- lock: a downgrade or a cancellation applies to the first spend after its event commits.

-- The plan items of each account: one row per plan of each subscription that is active, trialing
-- or past due (a subscription of several plan items has one row per item; rows mirrored before
-- migration 0022 have their plan_id alone), ranked by credits per month (most first), then the
-- newest subscription. An account with none has the catalog's free plan as its only item, and an
-- account without either has no row. A plan no longer in the catalog (or a price that never was)
-- is an item without entitlements: every meter, no features. Set-based, for a batch's accounts.
create or replace function tally_plan_items(p_accounts text[]) returns table (account_id text, plan_id text,
  source text, rate_card_id text, entitlements jsonb, recurring_grants jsonb, rank bigint)
  language sql stable as $$
  with item as (
    select a.account_id, i.plan_id, case when s.status = 'trialing' then 'trial' else 'subscription' end as source,
      p.rate_card_id, p.entitlements, coalesce(p.recurring_grants, '[]'::jsonb) as recurring_grants,
      row_number() over (partition by a.account_id
        order by coalesce(p.credits_per_month, 0) desc, s.event_created desc, s.id, i.plan_id) as rank
    from unnest(p_accounts) as a(account_id)
    join subscriptions s on s.account_id = a.account_id and s.status in ('active', 'trialing', 'past_due')
    cross join lateral unnest(coalesce(nullif(s.plan_ids, '{}'), array[s.plan_id])) as i(plan_id)
    left join catalog_plans p on p.id = i.plan_id
  )
  select * from item
  union all
  select a.account_id, f.id, 'free', f.rate_card_id, f.entitlements, f.recurring_grants, 1
  from unnest(p_accounts) as a(account_id)
  join catalog_plans f on f.free
  where not exists (select 1 from item i where i.account_id = a.account_id)
$$;

-- Each account's plan as a spend needs it: the plan of its first item (NULL: no plan, or a price
-- outside the catalog), where it comes from (`subscription`, `trial`, `free`, `none`), the rate
-- card that prices its spends (the item's, else the catalog's default), and its meters: every
-- meter when any item allows all (or says nothing), otherwise the union of the items' lists.
create or replace function tally_account_plans(p_accounts text[]) returns table (account_id text, plan_id text,
  source text, rate_card_id text, all_meters boolean, meters text[])
  language sql stable as $$
  with item as (select * from tally_plan_items(p_accounts))
  select a.account_id, top.plan_id, coalesce(top.source, 'none'),
    coalesce(top.rate_card_id, (select id from rate_cards where is_default)),
    coalesce(m.all_meters, true), coalesce(m.meters, '{}')
  from unnest(p_accounts) as a(account_id)
  left join item top on top.account_id = a.account_id and top.rank = 1
  left join lateral (
    select bool_or(i.entitlements is null or i.entitlements->'meters' = '"all"'::jsonb) as all_meters,
      array_agg(distinct x.meter) filter (where x.meter is not null) as meters
    from item i
    left join lateral jsonb_array_elements_text(
      case when jsonb_typeof(i.entitlements->'meters') = 'array' then i.entitlements->'meters' end) as x(meter) on true
    where i.account_id = a.account_id) m on true
$$;

-- Whether any plan of the catalog restricts meters: when none does, a spend skips the check.
create or replace function tally_meters_restricted() returns boolean language sql stable as $$
  select exists (select 1 from catalog_plans where jsonb_typeof(entitlements->'meters') = 'array')
$$;

-- The refusal of a priced spend on a meter outside the account's entitlements (403
-- meter_not_entitled, naming the meter and the plan), or NULL when the meter is allowed. Called by
-- every priced spend, hold and quote after the account's lock, before anything is written.
create or replace function tally_meter_refusal(p_account text, p_meter text) returns jsonb
  language plpgsql stable as $$
declare
  v_plan record;
begin
  if p_meter is null or not tally_meters_restricted() then
    return null;
  end if;
  select * into v_plan from tally_account_plans(array[p_account]);
  if v_plan.all_meters or p_meter = any(v_plan.meters) then
    return null;
  end if;
  return tally_error('meter_not_entitled',
    'meter ' || p_meter || ' is not included in ' || coalesce('plan ' || v_plan.plan_id, 'the account''s plan'),
    jsonb_build_object('meter', p_meter, 'plan_id', v_plan.plan_id));
end $$;

-- The accounts of a batch with a priced event on a meter their plan does not include: they go the
-- per-event way, where tally_priced_usage refuses that event and decides the others.
create or replace function tally_unentitled_accounts(p_account_ids text[], p_meters text[]) returns text[]
  language sql stable as $$
  select case when p_meters is null or not tally_meters_restricted() then '{}'::text[] else coalesce((
    select array_agg(distinct e.account_id)
    from unnest(p_account_ids, p_meters) as e(account_id, meter)
    join tally_account_plans(array(select distinct account_id from unnest(p_account_ids) as u(account_id))) p
      on p.account_id = e.account_id
    where e.meter is not null and not p.all_meters and not e.meter = any(p.meters)), '{}') end
$$;

-- What a usage batch does for its locked accounts (p_accounts) before deciding: answers the
-- accounts with a priced event on a meter their plan does not include, which the batch decides
-- one event at a time, and gives the others the period's recurring grants. An account decided per
-- event is given them by its first event that is not refused as not entitled (tally_open_spend),
-- so that its events refused as not entitled write nothing, as a single spend's refusal does.
create or replace function tally_batch_entitlements(p_accounts text[], p_account_ids text[], p_meters text[],
  p_now timestamptz) returns text[] language plpgsql as $$
declare
  v_account text;
  v_per_event text[] := tally_unentitled_accounts(p_account_ids, p_meters);
begin
  if tally_catalog_recurs() then
    foreach v_account in array p_accounts loop
      if not v_account = any(v_per_event) then
        perform tally_give_recurring(v_account, p_now);
      end if;
    end loop;
  end if;
  return v_per_event;
end $$;

-- Features of several items: the union, the larger number and true winning; for any other value
-- (strings, or one name with values of different kinds) the first item's (most credits) wins.
create or replace function tally_features_union(p_account text) returns jsonb language sql stable as $$
  select coalesce(jsonb_object_agg(f.name, f.value), '{}'::jsonb) from (
    select x.key as name,
      case when bool_and(jsonb_typeof(x.value) = 'number')
          then to_jsonb(max((x.value #>> '{}')::numeric) filter (where jsonb_typeof(x.value) = 'number'))
        when bool_and(jsonb_typeof(x.value) = 'boolean')
          then to_jsonb(bool_or((x.value #>> '{}')::boolean) filter (where jsonb_typeof(x.value) = 'boolean'))
        else (array_agg(x.value order by i.rank))[1] end as value
    from tally_plan_items(array[p_account]) i
    cross join lateral jsonb_each(coalesce(i.entitlements->'features', '{}'::jsonb)) x
    group by x.key) f
$$;

-- The start and end of the period of a cadence that holds p_now: a UTC day, an ISO week (from
-- Monday), a calendar month.
create or replace function tally_recurring_period(p_every text, p_now timestamptz, out period_start date,
  out period_end timestamptz) language sql immutable as $$
  select d::date, (d + case p_every when 'day' then interval '1 day' when 'week' then interval '7 days'
    else interval '1 month' end) at time zone 'UTC'
  from (select date_trunc(p_every, p_now at time zone 'UTC') as d) t
$$;

-- Whether any plan of the catalog gives recurring grants: when none does, the probe costs nothing.
create or replace function tally_catalog_recurs() returns boolean language sql stable as $$
  select exists (select 1 from catalog_plans where recurring_grants <> '[]'::jsonb)
$$;

-- The recurring grants an account's plans give in the period that holds p_now and that it has not
-- had yet: one per plan, cadence and period, keyed recurring:{account}:{plan}:{every}:{period_start}.
create or replace function tally_recurring_due(p_account text, p_now timestamptz) returns table (plan_id text,
  every text, credits bigint, period_start date, period_end timestamptz, grant_key text)
  language sql stable as $$
  select d.plan_id, d.every, d.credits, d.period_start, d.period_end, d.grant_key from (
    select distinct i.plan_id, r.value->>'every' as every, (r.value->>'credits')::bigint as credits,
      p.period_start, p.period_end,
      'recurring:' || p_account || ':' || i.plan_id || ':' || (r.value->>'every') || ':'
        || to_char(p.period_start, 'YYYY-MM-DD') as grant_key
    from tally_plan_items(array[p_account]) i
    cross join lateral jsonb_array_elements(i.recurring_grants) r
    cross join lateral tally_recurring_period(r.value->>'every', p_now) p
    where i.plan_id is not null and i.recurring_grants <> '[]'::jsonb) d
  where not exists (select 1 from grants g where g.account_id = p_account and g.grant_key = d.grant_key)
$$;

-- Gives the account the recurring grants due in the current periods (the first spend, hold or
-- balance read of a period gives them). Each expires at its period's end and so never rolls over.
-- The caller holds the account lock, so that concurrent first calls give each grant once.
create or replace function tally_give_recurring(p_account text, p_now timestamptz) returns void
  language plpgsql as $$
declare
  v_due record;
begin
  if not tally_catalog_recurs() then
    return;
  end if;
  for v_due in select * from tally_recurring_due(p_account, p_now) order by grant_key loop
    perform tally_add_grant(p_account, 'recurring', v_due.credits, 0, v_due.period_end, v_due.grant_key, 'grant',
      jsonb_build_object('plan', v_due.plan_id, 'every', v_due.every, 'period_start', to_char(v_due.period_start, 'YYYY-MM-DD')),
      'system', null, p_now);
  end loop;
end $$;

-- The credits the account's first call of the period would give by recurring grants, net of the
-- debt they would repay first: what a quote counts as if given, without writing it.
create or replace function tally_recurring_pending(p_account text, p_now timestamptz) returns bigint
  language sql stable as $$
  select case when not tally_catalog_recurs() then 0 else greatest(0, coalesce(
    (select sum(credits) from tally_recurring_due(p_account, p_now)), 0)
    - (select debt from accounts where id = p_account))::bigint end
$$;

-- The balance as GET /v1/accounts/{id}/balance answers it, after giving the recurring grants due
-- (the lock is taken only when one is due, so most reads write nothing). Grants past their expiry
-- stop counting at once, before any sweep.
create or replace function tally_balance(p_account text, p_now timestamptz) returns jsonb language plpgsql as $$
declare
  v_now timestamptz := coalesce(p_now, now());
  v_balance jsonb;
begin
  if tally_catalog_recurs() and exists (select 1 from tally_recurring_due(p_account, v_now)) then
    perform tally_lock_account(p_account, v_now);
    perform tally_give_recurring(p_account, v_now);
  end if;
  select jsonb_build_object('account_id', a.id,
      'available', a.available - coalesce((select sum(g.remaining) from grants g where g.account_id = a.id
        and g.live and g.expires_at <= v_now), 0)::bigint,
      'held', a.held, 'debt', a.debt)
    into v_balance from accounts a where a.id = p_account;
  if v_balance is null then
    raise exception 'no account %', p_account using errcode = 'TA404';
  end if;
  return v_balance;
end $$;

-- What the account may use, compared to announce a change: its plan, where it comes from, its
-- meters, features and recurring grants.
create or replace function tally_entitlements_state(p_account text) returns jsonb language sql stable as $$
  select jsonb_build_object('plan_id', p.plan_id, 'source', p.source,
    'meters', case when p.all_meters then '"all"'::jsonb else to_jsonb(array(select unnest(p.meters) order by 1)) end,
    'features', tally_features_union(p_account),
    'recurring_grants', coalesce((select jsonb_agg(jsonb_build_object('plan_id', i.plan_id) || r.value
        order by i.rank, r.value->>'every')
      from tally_plan_items(array[p_account]) i cross join lateral jsonb_array_elements(i.recurring_grants) r
      where i.plan_id is not null), '[]'::jsonb))
  from tally_account_plans(array[p_account]) p
$$;

-- GET /v1/accounts/{id}/entitlements: the state above with the rate card version in effect.
create or replace function tally_entitlements_json(p_account text, p_now timestamptz) returns jsonb
  language plpgsql stable as $$
declare
  v_card text;
  v_version rate_card_versions;
begin
  perform 1 from accounts where id = p_account;
  if not found then
    raise exception 'no account %', p_account using errcode = 'TA404';
  end if;
  select rate_card_id into v_card from tally_account_plans(array[p_account]);
  if v_card is not null then
    v_version := tally_rate_card_in_effect(v_card, coalesce(p_now, now()));
  end if;
  return tally_entitlements_state(p_account) || jsonb_build_object('rate_card',
    case when v_version.rate_card_id is null then null
      else jsonb_build_object('id', v_version.rate_card_id, 'version', v_version.version) end);
end $$;

-- A subscription's change that changes what its account may use writes entitlements.changed,
-- in the change's transaction, and keeps what was announced. An account without a row has only
-- ever been on the free plan or on none.
create or replace function tally_entitlement_events() returns trigger language plpgsql as $$
declare
  v_after jsonb := tally_entitlements_state(new.account_id);
  v_before jsonb;
begin
  select entitlements into v_before from account_plans where account_id = new.account_id;
  if not found then
    -- The state of an account without a subscription: the empty id, which no account has (ids
    -- are 1 to 128 characters), is on the free plan or on none.
    v_before := tally_entitlements_state('');
  end if;
  if v_before is distinct from v_after then
    insert into account_plans (account_id, plan_id, source, entitlements, updated_at)
    values (new.account_id, v_after->>'plan_id', v_after->>'source', v_after, now())
    on conflict (account_id) do update set plan_id = excluded.plan_id, source = excluded.source,
      entitlements = excluded.entitlements, updated_at = excluded.updated_at;
    perform tally_event('entitlements.changed', new.account_id, v_after || jsonb_build_object('previous',
      jsonb_build_object('plan_id', v_before->'plan_id', 'source', v_before->'source')), null);
  end if;
  return null;
end $$;
