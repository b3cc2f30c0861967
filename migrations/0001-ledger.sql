-- 0001-ledger: accounts, grants, append-only entries, holds and request keys.
--
-- Rollback: this is the first migration; rolling it back drops the whole ledger:
--   drop table if exists audit_log, request_keys, holds, entries, grants, accounts cascade;
--   drop function if exists tally_refuse_entry_change cascade;
--   delete from tally_migrations where version = 1;
-- Take a backup first (pg_dump); ledger entries are the accounting record.
--
-- Locking rule for every function in this project: a money change locks its account row
-- first (SELECT ... FOR UPDATE). Grants and holds of an account are only ever written while
-- that lock is held, so two transactions can never wait on each other's grant rows in
-- opposite orders; batches that touch several accounts lock them in id order.

create table accounts (
  id text primary key
    constraint account_id_format check (id ~ '^[A-Za-z0-9_.:@-]{1,128}$'),
  email text constraint email_length check (char_length(email) <= 320),
  name text constraint name_length check (char_length(name) <= 200),
  metadata jsonb not null default '{}'::jsonb
    constraint metadata_is_object check (jsonb_typeof(metadata) = 'object'),
  stripe_customer_id text unique,
  -- Materialized balance. available - debt equals the sum of the account's entries.
  available bigint not null default 0 constraint available_not_negative check (available >= 0),
  held bigint not null default 0 constraint held_not_negative check (held >= 0),
  debt bigint not null default 0 constraint debt_not_negative check (debt >= 0),
  -- Grants repay debt first, so an account never has both spendable credits and debt.
  constraint available_or_debt check (available = 0 or debt = 0),
  -- Balances stay safe integers so that every JSON reader sees them exactly.
  constraint balances_safe check (available <= 9007199254740991 and held <= 9007199254740991
    and debt <= 9007199254740991),
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now()
  -- Room on each page for the next version of a busy account row (HOT updates).
) with (fillfactor = 80);

create table grants (
  id bigint generated always as identity primary key,
  account_id text not null references accounts (id),
  source text not null
    constraint grant_source check (source in ('subscription', 'trial', 'purchase', 'promo', 'admin', 'rollover')),
  amount bigint not null constraint grant_amount_positive check (amount > 0),
  remaining bigint not null,
  constraint remaining_within_amount check (remaining >= 0 and remaining <= amount),
  priority integer not null default 0 constraint priority_range check (priority between 0 and 1000),
  expires_at timestamptz,
  -- The natural key of the grant (a request key, a Stripe period, a refund...).
  grant_key text not null,
  reference jsonb not null default '{}'::jsonb,
  -- The payment a grant was bought with (payments come with Stripe, 0003), so that a refund
  -- takes back those credits first.
  payment_id bigint,
  created_at timestamptz not null default now(),
  -- Whether credits are left. The partial indexes below name this column rather than
  -- `remaining`, so that a spend that leaves credits in a grant changes no indexed value and
  -- PostgreSQL can update the row in place (a HOT update, no index writes).
  live boolean generated always as (remaining > 0) stored,
  constraint grant_key_unique unique (account_id, grant_key)
) with (fillfactor = 80);

-- Spend order: priority, earliest expiry (never-expiring last: NULLs sort last ascending), oldest.
-- Queries say `live` (not `remaining > 0`) so that these partial indexes serve them.
create index grants_spend_order on grants (account_id, priority, expires_at, created_at, id)
  where live;
create index grants_due_expiry on grants (expires_at) where live and expires_at is not null;

create table entries (
  id bigint generated always as identity primary key,
  account_id text not null references accounts (id),
  kind text not null constraint entry_kind check (kind in
    ('grant', 'usage', 'hold', 'capture', 'release', 'expire', 'clawback', 'restore', 'adjustment')),
  -- Signed change of (available - debt); a capture moves held credits to spent and is 0 here.
  amount bigint not null,
  balance_after bigint not null,
  -- Parallel arrays: the grants this entry moved and by how much (signed).
  grant_ids bigint[] not null default '{}',
  grant_credits bigint[] not null default '{}',
  constraint grant_arrays_match check (cardinality(grant_ids) = cardinality(grant_credits)),
  hold_id bigint,
  idempotency_key text not null,
  reference jsonb not null default '{}'::jsonb,
  actor text not null constraint entry_actor check (actor in ('app', 'admin', 'stripe', 'system')),
  reason text,
  constraint admin_has_reason check (actor <> 'admin' or reason is not null),
  created_at timestamptz not null default now(),
  constraint entry_key_unique unique (account_id, idempotency_key)
);
create index entries_by_account on entries (account_id, id desc);

-- Entries are the accounting record: append-only, enforced here rather than by convention.
create function tally_refuse_entry_change() returns trigger language plpgsql as $$
begin
  raise exception 'ledger entries are append-only (% refused)', tg_op using errcode = 'TE001';
end $$;
create trigger entries_append_only before update or delete on entries
  for each row execute function tally_refuse_entry_change();
create trigger entries_no_truncate before truncate on entries
  for each statement execute function tally_refuse_entry_change();

create table holds (
  id bigint generated always as identity primary key,
  account_id text not null references accounts (id),
  amount bigint not null constraint hold_amount_positive check (amount > 0),
  status text not null default 'pending'
    constraint hold_status check (status in ('pending', 'captured', 'voided', 'expired')),
  captured bigint,
  released bigint,
  -- A hold resolves once, and what it captured plus what it released is what it held.
  constraint hold_resolution check (
    (status = 'pending' and captured is null and released is null)
    or (status <> 'pending' and captured >= 0 and released >= 0 and captured + released = amount)),
  grant_ids bigint[] not null,
  grant_credits bigint[] not null,
  expires_at timestamptz not null,
  idempotency_key text not null,
  created_at timestamptz not null default now(),
  resolved_at timestamptz
);
create index holds_due_expiry on holds (expires_at) where status = 'pending';
create index holds_pending_by_account on holds (account_id, expires_at) where status = 'pending';

-- A request key's first outcome is final. The key is unique across accounts so that the same
-- key sent for another account is recognised as a conflict, not as a new request.
create table request_keys (
  key text primary key,
  account_id text not null,
  operation text not null,
  payload_hash text not null,
  status_code integer not null,
  response jsonb not null,
  created_at timestamptz not null default now()
);

-- Admin actions with before and after, for the audit trail.
create table audit_log (
  id bigint generated always as identity primary key,
  account_id text,
  actor text not null,
  action text not null,
  reason text,
  before jsonb,
  after jsonb,
  created_at timestamptz not null default now()
);
create index audit_log_by_account on audit_log (account_id, id desc);
