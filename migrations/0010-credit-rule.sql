-- 0010-credit-rule: subscription credits follow the credit rule. Every plan line of a paid
-- invoice moves credits in each credit period it overlaps; the months of a yearly period that
-- have not started yet are kept as scheduled credits, one row per month and line, so that
-- a plan, seat or interval change (or a refund) changes what the later months grant.
--
-- Rollback:
--   delete from yearly_schedule where line_key <> 'period';
--   alter table yearly_schedule drop constraint yearly_schedule_pkey;
--   alter table yearly_schedule add primary key (subscription_id, month_start);
--   alter table yearly_schedule drop constraint schedule_outcome;
--   update yearly_schedule set outcome = null, granted_at = null where outcome not in ('granted', 'skipped');
--   alter table yearly_schedule add constraint schedule_outcome check (outcome in ('granted', 'skipped'));
--   alter table yearly_schedule drop constraint schedule_credits_not_zero;
--   alter table yearly_schedule add constraint schedule_credits_positive check (credits > 0);
--   alter table yearly_schedule drop column line_key, drop column line_start, drop column attempts, drop column last_error;
--   drop table if exists billing_periods;
--   alter table subscriptions drop column quantity, drop column ended_at;
--   drop function tally_clawback(text, bigint, text, bigint, jsonb, timestamptz);
--   drop function tally_take(text, bigint, timestamptz, bigint);
--   alter function tally_clawback_before_0010(text, bigint, text, bigint, jsonb, timestamptz) rename to tally_clawback;
--   alter function tally_take_before_0010(text, bigint, timestamptz, bigint) rename to tally_take;
--   drop function tally_clawback_from(text, bigint, text, bigint[], jsonb, timestamptz);
--   drop function tally_take_from(text, bigint, timestamptz, bigint[]);
--   delete from tally_migrations where version = 10;

-- One row per month and line: the period line of the yearly invoice ('period'), a proration
-- line ('proration:{line}'), or a refund that cancels months not granted yet ('refund:{id}').
-- A month's net credits are granted when it starts.
alter table yearly_schedule add column line_key text not null default 'period';
alter table yearly_schedule add column line_start timestamptz;
update yearly_schedule set line_start = month_start;
alter table yearly_schedule alter column line_start set not null;
alter table yearly_schedule drop constraint yearly_schedule_pkey;
alter table yearly_schedule add primary key (subscription_id, month_start, line_key);
alter table yearly_schedule drop constraint schedule_credits_positive;
alter table yearly_schedule add constraint schedule_credits_not_zero check (credits <> 0);
-- A month that keeps failing is set aside after a bounded number of attempts, with an alert,
-- so that one bad row never stops the months behind it.
alter table yearly_schedule add column attempts integer not null default 0
  constraint schedule_attempts_bounded check (attempts between 0 and 100);
alter table yearly_schedule add column last_error text;
alter table yearly_schedule drop constraint schedule_outcome;
alter table yearly_schedule add constraint schedule_outcome
  check (outcome in ('granted', 'skipped', 'netted', 'failed'));

-- The billing periods Tally has seen on paid invoices: a proration line names only its own
-- billed time and the period's end, and the credit rule needs the whole period's length.
create table billing_periods (
  subscription_id text not null,
  period_start bigint not null,
  period_end bigint not null constraint billing_period_order check (period_end > period_start),
  billing_interval text not null constraint billing_period_interval check (billing_interval in ('month', 'year')),
  account_id text not null references accounts (id),
  primary key (subscription_id, period_start)
);
create index billing_periods_by_end on billing_periods (subscription_id, period_end);

-- The periods paid before this migration, so that a change to a subscription paid earlier finds
-- its period at once: monthly periods from their period grants, yearly ones from the months
-- their invoice scheduled (the year starts a month before its first scheduled month).
insert into billing_periods (subscription_id, period_start, period_end, billing_interval, account_id)
select distinct on (g.reference->>'subscription', (g.reference->>'period_start')::bigint)
  g.reference->>'subscription', (g.reference->>'period_start')::bigint, (g.reference->>'period_end')::bigint, 'month', g.account_id
from grants g left join subscriptions s on s.id = g.reference->>'subscription'
where g.grant_key like 'period:%' and coalesce(s.billing_interval, 'month') = 'month'
  and (g.reference->>'period_end')::bigint > (g.reference->>'period_start')::bigint
on conflict do nothing;
insert into billing_periods (subscription_id, period_start, period_end, billing_interval, account_id)
select subscription_id, extract(epoch from (min(month_start) at time zone 'UTC' - interval '1 month') at time zone 'UTC')::bigint,
  extract(epoch from max(month_end))::bigint, 'year', min(account_id)
from yearly_schedule group by subscription_id, payment_id
on conflict do nothing;

alter table subscriptions add column quantity integer not null default 1
  constraint subscription_quantity_positive check (quantity >= 0);
alter table subscriptions add column ended_at timestamptz;

-- Takes credits from live grants: the preferred grants first (a clawback's own payment or
-- credit period), then the others in spend order. The caller holds the account lock.
create function tally_take_from(p_account text, p_amount bigint, p_now timestamptz, p_preferred bigint[],
  out grant_ids bigint[], out grant_credits bigint[])
  language plpgsql as $$
declare
  g record;
  v_left bigint := p_amount;
  v_take bigint;
begin
  grant_ids := '{}';
  grant_credits := '{}';
  for g in
    select id, remaining from grants
    where account_id = p_account and live and (expires_at is null or expires_at > p_now)
    order by (id = any(p_preferred)) is true desc, priority, expires_at, created_at, id
  loop
    v_take := least(g.remaining, v_left);
    update grants set remaining = remaining - v_take where id = g.id;
    grant_ids := grant_ids || g.id;
    grant_credits := grant_credits || -v_take;
    v_left := v_left - v_take;
    exit when v_left = 0;
  end loop;
  if v_left <> 0 then
    raise exception 'invariant broken: available of account % exceeds its live grants by %',
      p_account, v_left using errcode = 'TX001';
  end if;
end $$;

-- The spend order with a payment's own grants first is the same take, preferring them.
alter function tally_take(text, bigint, timestamptz, bigint) rename to tally_take_before_0010;
create function tally_take(p_account text, p_amount bigint, p_now timestamptz,
  out grant_ids bigint[], out grant_credits bigint[], p_payment_id bigint default null)
  language sql as $$
  select * from tally_take_from(p_account, p_amount, p_now, case when p_payment_id is null then '{}'::bigint[]
    else (select coalesce(array_agg(id), '{}') from grants where account_id = p_account and payment_id = p_payment_id) end)
$$;

-- Takes p_credits back: first from the preferred grants (a refund's payment, a proration's own
-- credit period), then from the other live grants in spend order; the rest becomes debt. An
-- existing key answers created = false. The caller holds the account lock.
create function tally_clawback_from(p_account text, p_credits bigint, p_key text, p_preferred bigint[],
  p_reference jsonb, p_now timestamptz) returns jsonb language plpgsql as $$
declare
  v_now timestamptz := coalesce(p_now, now());
  v_available bigint;
  v_taken bigint;
  v_take record;
  v_net bigint;
  v_entry entries;
begin
  select * into v_entry from entries where account_id = p_account and idempotency_key = p_key;
  if found then
    return jsonb_build_object('created', false, 'entry', tally_entry_json(v_entry));
  end if;
  select available into v_available from accounts where id = p_account;
  v_taken := least(v_available, p_credits);
  if v_taken > 0 then
    select * into v_take from tally_take_from(p_account, v_taken, v_now, p_preferred);
  else
    select '{}'::bigint[] as grant_ids, '{}'::bigint[] as grant_credits into v_take;
  end if;
  update accounts set available = available - v_taken, debt = debt + (p_credits - v_taken),
    updated_at = v_now where id = p_account returning available - debt into v_net;
  insert into entries (account_id, kind, amount, balance_after, grant_ids, grant_credits,
    idempotency_key, reference, actor, created_at)
  values (p_account, 'clawback', -p_credits, v_net, v_take.grant_ids, v_take.grant_credits, p_key,
      p_reference || jsonb_build_object('debt_created', p_credits - v_taken), 'stripe', v_now)
  returning * into v_entry;
  return jsonb_build_object('created', true, 'entry', tally_entry_json(v_entry));
end $$;

alter function tally_clawback(text, bigint, text, bigint, jsonb, timestamptz) rename to tally_clawback_before_0010;
create function tally_clawback(p_account text, p_credits bigint, p_key text, p_payment_id bigint,
  p_reference jsonb, p_now timestamptz) returns jsonb language sql as $$
  select tally_clawback_from(p_account, p_credits, p_key,
    (select coalesce(array_agg(id), '{}') from grants where account_id = p_account and payment_id = p_payment_id),
    p_reference, p_now)
$$;
