-- 0004-trials: one trial per account, email, device and card, by unique claims taken inside the
-- transaction of the trial grant; refused trials waiting for their Stripe cancellation; and
-- the keyed hash of the device fingerprint an app reports.
--
-- Rollback:
--   drop table if exists trial_refusals, trial_claims, tally_secrets cascade;
--   alter table accounts drop column if exists device_fingerprint_hash;
--   delete from tally_migrations where version = 4;
-- Rolling back forgets every claim: people who had a trial could start another.

-- Claims hold keyed hashes (HMAC-SHA256 with a server secret), never the raw email or
-- fingerprint. They outlive erasure of the account's personal data on purpose.
create table trial_claims (
  kind text not null constraint claim_kind check (kind in ('account', 'email', 'device', 'card')),
  value_hash text not null,
  account_id text not null,
  subscription_id text,
  created_at timestamptz not null default now(),
  primary key (kind, value_hash)
);

create table trial_refusals (
  subscription_id text primary key,
  account_id text not null references accounts (id),
  reason text not null,
  created_at timestamptz not null default now(),
  cancelled_at timestamptz,
  cancel_attempts integer not null default 0,
  last_error text
);
create index trial_refusals_to_cancel on trial_refusals (created_at) where cancelled_at is null;

alter table accounts add column device_fingerprint_hash text;

-- The claims' hashing secret when TALLY_FINGERPRINT_SECRET is not set: generated once, so that
-- every process of one database hashes alike.
create table tally_secrets (
  name text primary key,
  value text not null,
  created_at timestamptz not null default now()
);
insert into tally_secrets (name, value) values ('fingerprint', encode(sha256(gen_random_uuid()::text::bytea || clock_timestamp()::text::bytea), 'hex'));
