-- Expiry of grants and holds past due, and settling an account before it is read or spent from.
--
-- Applied after the numbered migrations, in file-name order, whenever the file changed
-- (src/db/migrate.ts). A change to a function is a diff of this file; a change of signature
-- also needs a numbered migration that drops the old one.

-- Whether a grant has expired for good: its expiry has passed, or it was expired before that
-- (tally_expire_grant, when a rollover ends a period early) or by a settle whose clock ran
-- ahead of the caller's. Credits coming back to such a grant expire at once: it never takes
-- them back, or the next settle would expire it a second time.
create or replace function tally_grant_expired(p_account text, p_grant_id bigint, p_now timestamptz)
  returns boolean language sql stable
  return exists (select 1 from grants where id = p_grant_id and expires_at <= p_now)
    or exists (select 1 from entries
               where account_id = p_account and idempotency_key = 'expire:grant_' || p_grant_id);

-- Expires what is left of one grant under `expire:grant_N`; answers the credits it expired.
-- A grant expires once. Only a grant that a release brought back to life before this migration
-- can have credits left once that key exists: they expire under a key that names their own
-- entry, rather than failing every later settle of the account with a unique violation.
-- The caller holds the account lock.
create or replace function tally_expire_remaining(p_grant_id bigint, p_now timestamptz)
  returns bigint language plpgsql as $$
declare
  v_grant grants;
  v_entry_id bigint;
  v_key text;
  v_net bigint;
begin
  select * into v_grant from grants where id = p_grant_id;
  if not found or v_grant.remaining = 0 then
    return 0;
  end if;
  v_entry_id := nextval(pg_get_serial_sequence('entries', 'id'));
  v_key := 'expire:grant_' || v_grant.id;
  if exists (select 1 from entries where account_id = v_grant.account_id and idempotency_key = v_key) then
    v_key := v_key || ':entry_' || v_entry_id;
  end if;
  update grants set remaining = 0 where id = v_grant.id;
  update accounts set available = available - v_grant.remaining, updated_at = p_now
    where id = v_grant.account_id returning available - debt into v_net;
  insert into entries (id, account_id, kind, amount, balance_after, grant_ids, grant_credits,
    idempotency_key, reference, actor, created_at) overriding system value
  values (v_entry_id, v_grant.account_id, 'expire', -v_grant.remaining, v_net, array[v_grant.id],
    array[-v_grant.remaining], v_key, jsonb_build_object('grant_id', 'grant_' || v_grant.id),
    'system', p_now);
  return v_grant.remaining;
end $$;

-- Expires what is left of one grant now (a rollover ends the old period early). Answers the
-- credits that expired under the grant's key, now or before. The caller holds the account lock.
create or replace function tally_expire_grant(p_grant_id bigint, p_now timestamptz) returns bigint
  language plpgsql as $$
declare
  v_account text;
begin
  perform tally_expire_remaining(p_grant_id, coalesce(p_now, now()));
  select account_id into v_account from grants where id = p_grant_id;
  return (select coalesce(-sum(amount), 0) from entries
          where account_id = v_account and idempotency_key = 'expire:grant_' || p_grant_id);
end $$;

-- Writes an expire entry for each grant of the account whose expiry has passed.
create or replace function tally_expire_due(p_account text, p_now timestamptz) returns void
  language plpgsql as $$
declare
  g record;
begin
  for g in
    select id from grants where account_id = p_account and live and expires_at <= p_now order by id
  loop
    perform tally_expire_remaining(g.id, p_now);
  end loop;
end $$;

-- Brings an account up to p_now: releases holds past their expiry, then expires grants past
-- theirs. The caller holds the account lock.
create or replace function tally_settle(p_account text, p_now timestamptz) returns void language plpgsql as $$
declare
  h holds;
begin
  for h in
    select * from holds
    where account_id = p_account and status = 'pending' and expires_at <= p_now order by id
  loop
    perform tally_release(h, 0, 'expired', 'system', p_now);
  end loop;
  perform tally_expire_due(p_account, p_now);
end $$;

-- The background sweep: settles one account (its own transaction, its own lock).
create or replace function tally_settle_account(p_account text, p_now timestamptz) returns void
  language plpgsql as $$
begin
  perform 1 from accounts where id = p_account for update;
  if found then
    perform tally_settle(p_account, coalesce(p_now, now()));
  end if;
end $$;
