-- 0015-spend-limits: per account, the most credits that may be spent in a UTC day and in a UTC
-- month, enforced inside the spend's own transaction.
--
-- What counts as spent in a window: usage, and holds, each in the window it was made in. A hold
-- counts for its whole amount when it is made (it reserves credits, so it is checked as a
-- spend); when it resolves, what it releases (a void, an expiry, a capture below the hold) is
-- taken off the counts of the windows it was counted in, if those windows are still the current
-- ones. So once a hold has resolved it counts for what it captured. Refunds, clawbacks,
-- adjustments and grants do not count.
--
-- Accounts without limits pay nothing on the hot path: `accounts.spend_limited` is read with the
-- row the spend already reads (tally_open_spend) and the batch already reads (tally_usage_batch),
-- and only when it is true is `spend_limits` read and written. The batch decides accounts with
-- limits on its per-event path (tally_usage), so its set-based path is unchanged for the others.
-- The counters live in `spend_limits` and are written under the account's row lock, which every
-- spend takes first, so concurrent spends of an account are checked one after the other.
--
-- `spend_limit.reached` is written at most once per window and limit: by the first spend that
-- brings the window's spent exactly to the limit or, if none did, by the first spend the limit
-- refuses. Changing a window's limit lets it be written once more in that window.
--
-- The definitions this migration replaces are kept under *_before_0015 names, only so that
-- rolling back puts them back exactly; nothing calls them. Events already written stay in the
-- event log (it is append-only).
--
-- Rollback:
--   drop trigger if exists holds_spend_limits on holds;
--   drop function tally_usage_batch(text[], bigint[], text[], text[], jsonb[], text[], timestamptz);
--   alter function tally_usage_batch_before_0015(text[], bigint[], text[], text[], jsonb[], text[], timestamptz) rename to tally_usage_batch;
--   drop function tally_hold(text, bigint, integer, text, text, text, timestamptz);
--   alter function tally_hold_before_0015(text, bigint, integer, text, text, text, timestamptz) rename to tally_hold;
--   drop function tally_open_spend(text, bigint, text, text, text, timestamptz);
--   alter function tally_open_spend_before_0015(text, bigint, text, text, text, timestamptz) rename to tally_open_spend;
--   drop function tally_spend_limits_give_back(), tally_spend_limits_take(text, bigint, timestamptz), tally_spend_limit_event(text, text, bigint, bigint, bigint, boolean, timestamptz, timestamptz), tally_set_spend_limits(text, boolean, bigint, boolean, bigint, text, timestamptz), tally_spend_limits_json(text, timestamptz), tally_spent_since(text, timestamptz);
--   drop table spend_limits;
--   alter table holds drop column counted_in_spend_limits;
--   alter table accounts drop column spend_limited;
--   delete from tally_migrations where version = 15;

alter function tally_open_spend(text, bigint, text, text, text, timestamptz) rename to tally_open_spend_before_0015;
alter function tally_hold(text, bigint, integer, text, text, text, timestamptz) rename to tally_hold_before_0015;
alter function tally_usage_batch(text[], bigint[], text[], text[], jsonb[], text[], timestamptz) rename to tally_usage_batch_before_0015;

-- Whether the account has a row in spend_limits: the only thing a spend reads of the feature
-- when the account has no limits. (A constant default: adding it rewrites no row.)
alter table accounts add column spend_limited boolean not null default false;

-- Whether the hold was counted against its account's limits when it was made, so that only such
-- holds give credits back to the counts when they resolve.
alter table holds add column counted_in_spend_limits boolean not null default false;

create table spend_limits (
  account_id text primary key references accounts (id),
  -- null: no limit in that window (at least one of the two is set, or the row is deleted).
  per_day bigint constraint per_day_range check (per_day between 0 and 9007199254740991),
  per_month bigint constraint per_month_range check (per_month between 0 and 9007199254740991),
  constraint some_limit check (per_day is not null or per_month is not null),
  -- The UTC day and the first day of the UTC month the counters are for. A spend in a later
  -- window starts its counter at 0; windows only move forward.
  day date not null,
  spent_day bigint not null constraint spent_day_range check (spent_day between 0 and 9007199254740991),
  month date not null,
  spent_month bigint not null constraint spent_month_range check (spent_month between 0 and 9007199254740991),
  -- The window in which `spend_limit.reached` was written for the current limit, if any.
  day_reached date,
  month_reached date,
  updated_at timestamptz not null default now()
);

-- What the account spent since p_start, read from the ledger: usage entries, and holds made
-- since then, pending ones for their amount and resolved ones for what they captured. Read when
-- limits are first set (and by the limits call of an account without limits); spends never
-- read it. It reads the account's entries.
create function tally_spent_since(p_account text, p_start timestamptz) returns bigint
  language sql stable as $$
  select coalesce(sum(case when e.kind = 'usage' then -e.amount
                           when h.status = 'pending' then h.amount
                           else h.captured end), 0)::bigint
  from entries e left join holds h on e.kind = 'hold' and h.id = e.hold_id
  where e.account_id = p_account and e.kind in ('usage', 'hold') and e.created_at >= p_start
$$;

create function tally_spend_limit_event(p_account text, p_window text, p_limit bigint, p_spent bigint,
  p_amount bigint, p_refused boolean, p_resets_at timestamptz, p_now timestamptz) returns void
  language sql as $$
  select tally_event('spend_limit.reached', p_account, jsonb_build_object('window', p_window,
    'limit', p_limit, 'spent', p_spent, 'amount', p_amount, 'refused', p_refused,
    'resets_at', tally_iso(p_resets_at)), p_now)
$$;

-- Checks a spend of p_amount against the account's limits and, when it passes, counts it in
-- both windows. Answers NULL (counted) or the error body of the 402. Called only for an account
-- with limits, by a spend that holds the account's row lock, so counts never race.
create function tally_spend_limits_take(p_account text, p_amount bigint, p_now timestamptz)
  returns jsonb language plpgsql as $$
declare
  v_day date := (p_now at time zone 'UTC')::date;
  v_month date := date_trunc('month', p_now at time zone 'UTC')::date;
  v_limits spend_limits;
  v_window text;
  v_limit bigint;
  v_spent bigint;
  v_resets_at timestamptz;
begin
  select * into v_limits from spend_limits where account_id = p_account;
  if not found then
    raise exception 'invariant broken: account % is marked as limited but has no spend limits', p_account
      using errcode = 'TX001';
  end if;
  -- A spend whose clock is behind the counters (two transactions racing over midnight) counts in
  -- the newer window: windows never move back, so the count errs on the side of the limit.
  if v_day > v_limits.day then
    v_limits.day := v_day;
    v_limits.spent_day := 0;
  end if;
  if v_month > v_limits.month then
    v_limits.month := v_month;
    v_limits.spent_month := 0;
  end if;
  -- The day is checked first: it is the tighter window when both would be passed.
  if v_limits.per_day is not null and v_limits.spent_day + p_amount > v_limits.per_day then
    v_window := 'day';
    v_limit := v_limits.per_day;
    v_spent := v_limits.spent_day;
    v_resets_at := (v_limits.day + 1)::timestamp at time zone 'UTC';
    if v_limits.day_reached is distinct from v_limits.day then
      perform tally_spend_limit_event(p_account, v_window, v_limit, v_spent, p_amount, true, v_resets_at, p_now);
      v_limits.day_reached := v_limits.day;
    end if;
  elsif v_limits.per_month is not null and v_limits.spent_month + p_amount > v_limits.per_month then
    v_window := 'month';
    v_limit := v_limits.per_month;
    v_spent := v_limits.spent_month;
    v_resets_at := (v_limits.month + interval '1 month')::timestamp at time zone 'UTC';
    if v_limits.month_reached is distinct from v_limits.month then
      perform tally_spend_limit_event(p_account, v_window, v_limit, v_spent, p_amount, true, v_resets_at, p_now);
      v_limits.month_reached := v_limits.month;
    end if;
  else
    v_limits.spent_day := v_limits.spent_day + p_amount;
    v_limits.spent_month := v_limits.spent_month + p_amount;
    if v_limits.spent_day = v_limits.per_day and v_limits.day_reached is distinct from v_limits.day then
      perform tally_spend_limit_event(p_account, 'day', v_limits.per_day, v_limits.spent_day, p_amount, false,
        (v_limits.day + 1)::timestamp at time zone 'UTC', p_now);
      v_limits.day_reached := v_limits.day;
    end if;
    if v_limits.spent_month = v_limits.per_month and v_limits.month_reached is distinct from v_limits.month then
      perform tally_spend_limit_event(p_account, 'month', v_limits.per_month, v_limits.spent_month, p_amount, false,
        (v_limits.month + interval '1 month')::timestamp at time zone 'UTC', p_now);
      v_limits.month_reached := v_limits.month;
    end if;
  end if;
  update spend_limits set day = v_limits.day, spent_day = v_limits.spent_day, month = v_limits.month,
    spent_month = v_limits.spent_month, day_reached = v_limits.day_reached, month_reached = v_limits.month_reached
    where account_id = p_account;
  if v_window is null then
    return null;
  end if;
  return tally_error('spend_limit_exceeded',
    format('this spend of %s credits would pass the %s limit of %s credits (%s spent)', p_amount, v_window, v_limit, v_spent),
    jsonb_build_object('window', v_window, 'limit', v_limit, 'spent', v_spent, 'resets_at', tally_iso(v_resets_at)));
end $$;

-- A resolved hold that was counted gives what it released back to the counts of the windows it
-- was made in, while they are the counters' windows (a hold made yesterday and voided today no
-- longer matters to yesterday). Runs in the resolving transaction, under the account's lock.
create function tally_spend_limits_give_back() returns trigger language plpgsql as $$
begin
  update spend_limits s set
    spent_day = case when s.day = (new.created_at at time zone 'UTC')::date
                     then s.spent_day - new.released else s.spent_day end,
    spent_month = case when s.month = date_trunc('month', new.created_at at time zone 'UTC')::date
                       then s.spent_month - new.released else s.spent_month end
  where s.account_id = new.account_id;
  return null;
end $$;
create trigger holds_spend_limits after update of status on holds for each row
  when (old.status = 'pending' and new.status <> 'pending' and new.released > 0 and new.counted_in_spend_limits)
  execute function tally_spend_limits_give_back();

-- The account's limits, what was spent in each current window, and when each window ends. For
-- an account without limits, what was spent is read from the ledger.
create function tally_spend_limits_json(p_account text, p_now timestamptz) returns jsonb
  language plpgsql stable as $$
declare
  v_now timestamptz := coalesce(p_now, now());
  v_day date := (v_now at time zone 'UTC')::date;
  v_month date := date_trunc('month', v_now at time zone 'UTC')::date;
  v_limits spend_limits;
  v_spent_day bigint;
  v_spent_month bigint;
begin
  perform 1 from accounts where id = p_account;
  if not found then
    raise exception 'no account %', p_account using errcode = 'TA404';
  end if;
  select * into v_limits from spend_limits where account_id = p_account;
  if found then
    v_spent_day := case when v_limits.day >= v_day then v_limits.spent_day else 0 end;
    v_spent_month := case when v_limits.month >= v_month then v_limits.spent_month else 0 end;
  else
    v_spent_day := tally_spent_since(p_account, v_day::timestamp at time zone 'UTC');
    v_spent_month := tally_spent_since(p_account, v_month::timestamp at time zone 'UTC');
  end if;
  return jsonb_build_object('account_id', p_account, 'per_day', v_limits.per_day, 'per_month', v_limits.per_month,
    'spent', jsonb_build_object('day', v_spent_day, 'month', v_spent_month),
    'resets_at', jsonb_build_object('day', tally_iso((v_day + 1)::timestamp at time zone 'UTC'),
      'month', tally_iso((v_month + interval '1 month')::timestamp at time zone 'UTC')));
end $$;

-- Sets, changes or removes an account's limits (p_set_*: whether the call names that window; a
-- named window with NULL removes its limit). Limits set on an account that had none start from
-- what the ledger says was spent in the current windows, and its pending holds are counted from
-- then on. Removing both limits deletes the row; the spends that follow read nothing more.
create function tally_set_spend_limits(p_account text, p_set_day boolean, p_per_day bigint,
  p_set_month boolean, p_per_month bigint, p_actor text, p_now timestamptz) returns jsonb
  language plpgsql as $$
declare
  v_now timestamptz := coalesce(p_now, now());
  v_day date := (v_now at time zone 'UTC')::date;
  v_month date := date_trunc('month', v_now at time zone 'UTC')::date;
  v_before spend_limits;
  v_per_day bigint;
  v_per_month bigint;
  v_after jsonb;
begin
  perform tally_lock_account(p_account, v_now);
  select * into v_before from spend_limits where account_id = p_account;
  v_per_day := case when p_set_day then p_per_day else v_before.per_day end;
  v_per_month := case when p_set_month then p_per_month else v_before.per_month end;
  if v_per_day is null and v_per_month is null then
    delete from spend_limits where account_id = p_account;
    update accounts set spend_limited = false where id = p_account and spend_limited;
  elsif v_before.account_id is not null then
    update spend_limits set per_day = v_per_day, per_month = v_per_month,
      day_reached = case when per_day is distinct from v_per_day then null else day_reached end,
      month_reached = case when per_month is distinct from v_per_month then null else month_reached end,
      updated_at = v_now
    where account_id = p_account;
  else
    insert into spend_limits (account_id, per_day, per_month, day, spent_day, month, spent_month, updated_at)
    values (p_account, v_per_day, v_per_month,
      v_day, tally_spent_since(p_account, v_day::timestamp at time zone 'UTC'),
      v_month, tally_spent_since(p_account, v_month::timestamp at time zone 'UTC'), v_now);
    update holds set counted_in_spend_limits = true
      where account_id = p_account and status = 'pending' and not counted_in_spend_limits;
    update accounts set spend_limited = true where id = p_account;
  end if;
  v_after := tally_spend_limits_json(p_account, v_now);
  if (v_before.per_day, v_before.per_month) is distinct from (v_per_day, v_per_month) then
    insert into audit_log (account_id, actor, action, before, after, created_at)
    values (p_account, p_actor, 'spend_limits.set',
      jsonb_build_object('per_day', v_before.per_day, 'per_month', v_before.per_month),
      jsonb_build_object('per_day', v_per_day, 'per_month', v_per_month), v_now);
  end if;
  return v_after;
end $$;

-- tally_open_spend of 0002, and then, for an account with limits only, the limits: a spend that
-- would pass one is refused with 402 spend_limit_exceeded, stored as the key's first outcome as
-- insufficient_credits is. Credits are checked first.
create function tally_open_spend(p_account text, p_amount bigint, p_key text, p_operation text,
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

-- tally_hold of 0002; the hold records whether it was counted against the account's limits.
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
  return tally_remember(p_key, p_account, 'hold', p_hash, 201,
    jsonb_build_object('hold_id', 'hold_' || v_hold.id, 'amount', p_amount,
      'expires_at', tally_iso(v_hold.expires_at), 'available', v_account.available,
      'replayed', false), v_now);
end $$;

-- tally_usage_batch of 0013, with one change: an account with limits is never decided at once;
-- it takes the per-event path (tally_usage), which checks and counts each spend against its
-- limits as a single spend does. Accounts without limits are decided exactly as before.
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
end $$;
