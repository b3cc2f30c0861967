-- Request keys: a key's first outcome is final (open, replay, remember).
--
-- Applied after the numbered migrations, in file-name order, whenever the file changed
-- (src/db/migrate.ts). A change to a function is a diff of this file; a change of signature
-- also needs a numbered migration that drops the old one.

-- The common start of a keyed operation: a replayed key answers at once; otherwise lock the
-- account, look at the key again (a racing request for the same account has committed by
-- now), and settle the account. NULL means: go on.
create or replace function tally_open(p_account text, p_key text, p_operation text, p_hash text,
  p_now timestamptz) returns jsonb language plpgsql as $$
declare
  v_outcome jsonb := tally_prior_outcome(p_account, p_key, p_operation, p_hash);
begin
  if v_outcome is not null then
    return v_outcome;
  end if;
  perform 1 from accounts where id = p_account for update;
  if not found then
    return jsonb_build_object('status', 404,
      'body', tally_error('account_not_found', 'no account with id ' || p_account));
  end if;
  v_outcome := tally_prior_outcome(p_account, p_key, p_operation, p_hash);
  if v_outcome is not null then
    return v_outcome;
  end if;
  perform tally_settle(p_account, p_now);
  return null;
end $$;

-- The answer to a key the account has seen before: the stored first outcome, or a conflict
-- when the operation or the payload differs. Keys are looked up per account, so the account
-- always matches.
create or replace function tally_replay(p_prior request_keys, p_operation text, p_hash text)
  returns jsonb language plpgsql stable as $$
begin
  if p_prior.operation <> p_operation or p_prior.payload_hash is distinct from p_hash then
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

create or replace function tally_remember(p_key text, p_account text, p_operation text, p_hash text,
  p_status integer, p_body jsonb, p_now timestamptz) returns jsonb language plpgsql as $$
begin
  insert into request_keys (key, account_id, operation, payload_hash, status_code, response, created_at)
  values (p_key, p_account, p_operation, p_hash, p_status, p_body, p_now);
  return jsonb_build_object('status', p_status, 'body', p_body);
end $$;

-- The answer to a key the account has seen before, from request_keys or from a spend's own
-- entry; NULL when the key is new for the account.
create or replace function tally_prior_outcome(p_account text, p_key text, p_operation text, p_hash text)
  returns jsonb language plpgsql stable as $$
declare
  v_prior request_keys;
  v_entry entries;
begin
  select * into v_prior from request_keys where account_id = p_account and key = p_key;
  if found then
    return tally_replay(v_prior, p_operation, p_hash);
  end if;
  select * into v_entry from entries where account_id = p_account and idempotency_key = 'request:' || p_key;
  if found then
    return tally_replay(tally_spend_key(v_entry, p_key), p_operation, p_hash);
  end if;
  return null;
end $$;

-- The first outcome of a spend that kept its key in its own entry, as a request key would
-- hold it. `available` is the entry's balance after: a spend succeeds only on an account
-- without debt, and leaves it so. A priced spend's answer has its cost and rate card version from
-- the entry, so a replay answers as the first time even after a price change. An entry under a
-- request key without a request_keys row and without a payload hash (none is written so) answers
-- as a conflict, never as a replay. (A quoted body, so that rolling migration 0021 back can drop
-- the entry's price columns.)
create or replace function tally_spend_key(p_entry entries, p_key text) returns request_keys
  language sql stable as $$
  select row(p_key, p_entry.account_id,
    case when p_entry.kind = 'usage' and p_entry.payload_hash is not null then 'usage' else p_entry.kind end,
    p_entry.payload_hash, 200,
    jsonb_build_object('entry_id', 'entry_' || p_entry.id, 'amount', -p_entry.amount,
      'available', p_entry.balance_after)
      || tally_priced_answer(p_entry.cost, p_entry.rate_card_id, p_entry.rate_card_version)
      || '{"replayed": false}'::jsonb,
    p_entry.created_at)::request_keys
$$;
