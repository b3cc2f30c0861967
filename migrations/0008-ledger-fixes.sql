-- 0008-ledger-fixes: an expired grant stays expired (a release never brings it back, and no
-- path writes `expire:grant_N` twice).
--
-- The definitions this migration replaces are kept under *_before_0008 names, so that rolling
-- it back puts them back exactly and drops the functions it added.
--
-- Rollback:
--   drop function tally_release(holds, bigint, text, text, timestamptz);
--   alter function tally_release_before_0008(holds, bigint, text, text, timestamptz) rename to tally_release;
--   drop function tally_expire_due(text, timestamptz);
--   alter function tally_expire_due_before_0008(text, timestamptz) rename to tally_expire_due;
--   drop function tally_expire_grant(bigint, timestamptz);
--   alter function tally_expire_grant_before_0008(bigint, timestamptz) rename to tally_expire_grant;
--   drop function if exists tally_expire_remaining, tally_grant_expired;
--   delete from tally_migrations where version = 8;

-- The definitions replaced below stay, renamed, so that the rollback puts them back exactly.
alter function tally_release(holds, bigint, text, text, timestamptz) rename to tally_release_before_0008;
alter function tally_expire_due(text, timestamptz) rename to tally_expire_due_before_0008;
alter function tally_expire_grant(bigint, timestamptz) rename to tally_expire_grant_before_0008;

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
  if v_grant.remaining = 0 then
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

-- Resolves a pending hold: captures p_captured and releases the rest. Released credits go
-- back to the grants they came from, last taken first, so that what was captured is what the
-- spend order chose first. Credits whose grant has expired meanwhile (by its expiry, or early)
-- expire at once, and credits coming back while the account is in debt repay the debt first.
create or replace function tally_release(p_hold holds, p_captured bigint, p_status text, p_actor text,
  p_now timestamptz) returns void language plpgsql as $$
declare
  v_release bigint := p_hold.amount - p_captured;
  v_left bigint := v_release;
  v_expired bigint := 0;
  v_repay_left bigint;
  v_give bigint;
  v_back bigint;
  v_ids bigint[] := '{}';
  v_credits bigint[] := '{}';
  v_net bigint;
  i integer;
begin
  update holds set status = p_status, captured = p_captured, released = v_release, resolved_at = p_now
    where id = p_hold.id;
  select debt into v_repay_left from accounts where id = p_hold.account_id;
  for i in reverse cardinality(p_hold.grant_ids) .. 1 loop
    exit when v_left = 0;
    v_give := least(-p_hold.grant_credits[i], v_left);
    v_left := v_left - v_give;
    if tally_grant_expired(p_hold.account_id, p_hold.grant_ids[i], p_now) then
      v_expired := v_expired + v_give;
      continue;
    end if;
    v_back := v_give - least(v_give, v_repay_left);
    v_repay_left := v_repay_left - (v_give - v_back);
    if v_back > 0 then
      update grants set remaining = remaining + v_back where id = p_hold.grant_ids[i];
      v_ids := v_ids || p_hold.grant_ids[i];
      v_credits := v_credits || v_back;
    end if;
  end loop;
  update accounts
    set held = held - p_hold.amount,
        available = available + (select coalesce(sum(c), 0) from unnest(v_credits) c),
        debt = v_repay_left,
        updated_at = p_now
    where id = p_hold.account_id
    returning available - debt into v_net;
  if p_captured > 0 then
    insert into entries (account_id, kind, amount, balance_after, hold_id, idempotency_key,
      reference, actor, created_at)
    values (p_hold.account_id, 'capture', 0, v_net - v_release + v_expired, p_hold.id,
      'capture:hold_' || p_hold.id,
      jsonb_build_object('hold_id', 'hold_' || p_hold.id, 'captured', p_captured), p_actor, p_now);
  end if;
  if v_release > 0 then
    insert into entries (account_id, kind, amount, balance_after, grant_ids, grant_credits, hold_id,
      idempotency_key, reference, actor, created_at)
    values (p_hold.account_id, 'release', v_release, v_net + v_expired, v_ids, v_credits, p_hold.id,
      'release:hold_' || p_hold.id,
      jsonb_build_object('hold_id', 'hold_' || p_hold.id, 'status', p_status), p_actor, p_now);
  end if;
  if v_expired > 0 then
    insert into entries (account_id, kind, amount, balance_after, hold_id, idempotency_key,
      reference, actor, created_at)
    values (p_hold.account_id, 'expire', -v_expired, v_net, p_hold.id, 'expire:hold_' || p_hold.id,
      jsonb_build_object('hold_id', 'hold_' || p_hold.id), 'system', p_now);
  end if;
end $$;
