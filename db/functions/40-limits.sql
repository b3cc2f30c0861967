-- Spend limits per UTC day and month, checked in the spend's own transaction.
--
-- Applied after the numbered migrations, in file-name order, whenever the file changed
-- (src/db/migrate.ts). A change to a function is a diff of this file; a change of signature
-- also needs a numbered migration that drops the old one.

-- What the account spent since p_start, read from the ledger: usage entries, and holds made
-- since then, pending ones for their amount and resolved ones for what they captured. Read when
-- limits are first set (and by the limits call of an account without limits); spends never
-- read it. It reads the account's entries.
create or replace function tally_spent_since(p_account text, p_start timestamptz) returns bigint
  language sql stable as $$
  select coalesce(sum(case when e.kind = 'usage' then -e.amount
                           when h.status = 'pending' then h.amount
                           else h.captured end), 0)::bigint
  from entries e left join holds h on e.kind = 'hold' and h.id = e.hold_id
  where e.account_id = p_account and e.kind in ('usage', 'hold') and e.created_at >= p_start
$$;

create or replace function tally_spend_limit_event(p_account text, p_window text, p_limit bigint, p_spent bigint,
  p_amount bigint, p_refused boolean, p_resets_at timestamptz, p_now timestamptz) returns void
  language sql as $$
  select tally_event('spend_limit.reached', p_account, jsonb_build_object('window', p_window,
    'limit', p_limit, 'spent', p_spent, 'amount', p_amount, 'refused', p_refused,
    'resets_at', tally_iso(p_resets_at)), p_now)
$$;

-- Checks a spend of p_amount against the account's limits and, when it passes, counts it in
-- both windows. Answers NULL (counted) or the error body of the 402. Called only for an account
-- with limits, by a spend that holds the account's row lock, so counts never race.
create or replace function tally_spend_limits_take(p_account text, p_amount bigint, p_now timestamptz)
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
create or replace function tally_spend_limits_give_back() returns trigger language plpgsql as $$
begin
  update spend_limits s set
    spent_day = case when s.day = (new.created_at at time zone 'UTC')::date
                     then s.spent_day - new.released else s.spent_day end,
    spent_month = case when s.month = date_trunc('month', new.created_at at time zone 'UTC')::date
                       then s.spent_month - new.released else s.spent_month end
  where s.account_id = new.account_id;
  return null;
end $$;

-- The account's limits, what was spent in each current window, and when each window ends. For
-- an account without limits, what was spent is read from the ledger.
create or replace function tally_spend_limits_json(p_account text, p_now timestamptz) returns jsonb
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
create or replace function tally_set_spend_limits(p_account text, p_set_day boolean, p_per_day bigint,
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

-- The window whose limit a spend of p_amount would pass now ('day' first, as
-- tally_spend_limits_take checks it), or NULL; reads only, for quotes. A counter of an earlier
-- window counts as 0, as the spend would find it.
create or replace function tally_spend_limit_passed(p_account text, p_amount bigint, p_now timestamptz) returns text
  language sql stable as $$
  select case
    when l.per_day is not null
      and (case when l.day < (p_now at time zone 'UTC')::date then 0 else l.spent_day end) + p_amount > l.per_day then 'day'
    when l.per_month is not null
      and (case when l.month < date_trunc('month', p_now at time zone 'UTC')::date then 0 else l.spent_month end) + p_amount > l.per_month
      then 'month'
  end
  from spend_limits l where l.account_id = p_account
$$;
