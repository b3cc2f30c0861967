-- 0011-http: what the HTTP API answers for replays and bare captures.
-- (Written as 0011-http in the plan; numbered 0009 in this branch until 0009 and 0010 land.)
--
-- * A replayed key whose first outcome was a refusal (402, 404...) says it is a replay, as a
--   successful replay already did: `replayed: true` in the error object (SPEC).
-- * A capture without an amount captures the whole hold (p_amount NULL); 0 still captures
--   nothing and releases it all.
--
-- Rolling back restores the two functions as 0002 wrote them; stored request keys are not
-- changed by this migration, so nothing else needs undoing.
-- Rollback:
--   create or replace function tally_replay(p_prior request_keys, p_account text, p_operation text, p_hash text)
--     returns jsonb language plpgsql stable as $$
--   begin
--     if p_prior.account_id <> p_account or p_prior.operation <> p_operation
--        or p_prior.payload_hash <> p_hash then
--       return jsonb_build_object('status', 409, 'body', tally_error('idempotency_conflict',
--         'this idempotency key was first used with another request',
--         jsonb_build_object('idempotency_key', p_prior.key)));
--     end if;
--     if p_prior.status_code < 300 then
--       return jsonb_build_object('status', p_prior.status_code,
--         'body', p_prior.response || '{"replayed": true}'::jsonb);
--     end if;
--     return jsonb_build_object('status', p_prior.status_code, 'body', p_prior.response);
--   end $$;
--   create or replace function tally_capture(p_hold_id bigint, p_amount bigint, p_actor text, p_now timestamptz)
--     returns jsonb language plpgsql as $$
--   declare
--     v_now timestamptz := coalesce(p_now, now());
--     v_hold holds := tally_lock_pending_hold(p_hold_id, v_now);
--     v_available bigint;
--   begin
--     if p_amount > v_hold.amount then
--       raise exception 'capture of % exceeds the hold of %', p_amount, v_hold.amount
--         using errcode = 'TH400', detail = v_hold.amount::text;
--     end if;
--     perform tally_release(v_hold, p_amount, 'captured', p_actor, v_now);
--     perform tally_settle(v_hold.account_id, v_now);
--     select available into v_available from accounts where id = v_hold.account_id;
--     return jsonb_build_object('captured', p_amount, 'released', v_hold.amount - p_amount,
--       'available', v_available);
--   end $$;
--   delete from tally_migrations where version = 11;

create or replace function tally_replay(p_prior request_keys, p_account text, p_operation text, p_hash text)
  returns jsonb language plpgsql stable as $$
begin
  if p_prior.account_id <> p_account or p_prior.operation <> p_operation
     or p_prior.payload_hash <> p_hash then
    return jsonb_build_object('status', 409, 'body', tally_error('idempotency_conflict',
      'this idempotency key was first used with another request',
      jsonb_build_object('idempotency_key', p_prior.key)));
  end if;
  if p_prior.status_code < 300 then
    return jsonb_build_object('status', p_prior.status_code,
      'body', p_prior.response || '{"replayed": true}'::jsonb);
  end if;
  if jsonb_typeof(p_prior.response->'error') = 'object' then
    return jsonb_build_object('status', p_prior.status_code,
      'body', jsonb_set(p_prior.response, '{error,replayed}', 'true'::jsonb));
  end if;
  return jsonb_build_object('status', p_prior.status_code, 'body', p_prior.response);
end $$;

create or replace function tally_capture(p_hold_id bigint, p_amount bigint, p_actor text, p_now timestamptz)
  returns jsonb language plpgsql as $$
declare
  v_now timestamptz := coalesce(p_now, now());
  v_hold holds := tally_lock_pending_hold(p_hold_id, v_now);
  v_amount bigint := coalesce(p_amount, v_hold.amount);
  v_available bigint;
begin
  if v_amount > v_hold.amount then
    raise exception 'capture of % exceeds the hold of %', v_amount, v_hold.amount
      using errcode = 'TH400', detail = v_hold.amount::text;
  end if;
  perform tally_release(v_hold, v_amount, 'captured', p_actor, v_now);
  perform tally_settle(v_hold.account_id, v_now);
  select available into v_available from accounts where id = v_hold.account_id;
  return jsonb_build_object('captured', v_amount, 'released', v_hold.amount - v_amount,
    'available', v_available);
end $$;
