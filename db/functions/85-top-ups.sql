-- Auto top-up: the request that a spend writes, paid by the background job
-- (src/billing/top-up-payer.ts).
--
-- Applied after the numbered migrations, in file-name order, whenever the file changed
-- (src/db/migrate.ts). A change to a function is a diff of this file; a change of signature
-- also needs a numbered migration that drops the old one.

-- Asks for a top-up after a spend that left the account below its threshold: a pending row that
-- the background job pays, when auto top-up is enabled, the account is not flagged (a dispute:
-- never charged off-session until an operator clears it), no top-up of the account is in flight
-- (pending: not yet paid, or its PaymentIntent not yet resolved) and the month's count (top-ups
-- in flight or succeeded since the start of p_at's UTC month) is below max_per_month. The caller
-- holds the account's row lock (the spend's update), which makes the next number safe to take.
-- The first check is the in-flight one: spends below the threshold while a top-up is paid are
-- the common case, and it reads one row of a partial unique index.
create or replace function tally_request_top_up(p_account text, p_at timestamptz) returns void language plpgsql as $$
declare
  v_setting auto_top_ups;
  v_this_month integer;
begin
  if exists (select 1 from top_ups where account_id = p_account and status = 'pending') then
    return;
  end if;
  select s.* into v_setting from auto_top_ups s join accounts a on a.id = s.account_id
    where s.account_id = p_account and s.enabled and not a.flagged;
  if not found then
    return;
  end if;
  select count(*) into v_this_month from top_ups
    where account_id = p_account and status in ('pending', 'succeeded')
      and created_at >= date_trunc('month', p_at at time zone 'UTC') at time zone 'UTC';
  if v_this_month >= v_setting.max_per_month then
    return;
  end if;
  insert into top_ups (account_id, number, pack_id, created_at)
  select p_account, coalesce(max(number), 0) + 1, v_setting.pack_id, p_at
    from top_ups where account_id = p_account
  on conflict (account_id) where status = 'pending' do nothing;
end $$;
