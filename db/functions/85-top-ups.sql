-- Auto top-up: the request that a spend writes, paid by the background job
-- (src/billing/top-up-payer.ts).
--
-- Applied after the numbered migrations, in file-name order, whenever the file changed
-- (src/db/migrate.ts). A change to a function is a diff of this file; a change of signature
-- also needs a numbered migration that drops the old one.

-- Asks for a top-up of an account whose auto top-up is enabled: a pending row that the
-- background job pays, unless one is in flight already or the month's maximum is reached (top-ups
-- pending or succeeded since the start of p_at's UTC month). The caller holds the account's row
-- lock (the spend's update, or the setting's call), which makes the next number safe to take.
create or replace function tally_request_top_up(p_account text, p_at timestamptz) returns void language plpgsql as $$
declare
  v_setting auto_top_ups;
  v_this_month integer;
begin
  select * into v_setting from auto_top_ups where account_id = p_account and enabled;
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
