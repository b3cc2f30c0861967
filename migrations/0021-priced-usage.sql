-- 0021-priced-usage: rate cards with their versions, the plans' cards, each account's carry, and
-- what a priced entry or hold keeps so that its charge can be recomputed.
--
-- rate_cards: one row per card, and which one is the catalog's default_rate_card.
-- rate_card_versions: every published version of a card, never edited or deleted (a trigger
--   refuses it). `rates` is {meter: {dimension: "decimal"}}: credits per unit as exact decimal
--   strings, read as numeric when a spend is priced, never as floats. `source` says whether the
--   catalog (at start) or an operator (PUT /v1/admin/rate-cards/{id}) published it: a start
--   compares the catalog with the last version the catalog published, so that an unchanged
--   catalog never undoes an operator's version.
-- catalog_plans: the catalog's plans as spends need them inside their transaction; today the
--   card each plan names (null: the default card).
-- accounts.carry: the fraction of a credit priced but not yet charged, in [0, 1). A priced spend
--   charges floor(cost + carry) and keeps the rest.
-- entries and holds: the meter, quantities, card, version and exact cost of a priced spend (and,
--   on the entries that charge, the carry after them). They are columns, not part of `reference`,
--   because erasing personal data rewrites `reference` and a charge must stay explainable.
--   There is deliberately no foreign key from entries to rate_card_versions: every priced spend
--   would take a share lock on its version's row, and one hot row locked by every concurrent
--   spend makes PostgreSQL create a multixact per transaction. Reconciliation checks instead
--   that each priced entry's version exists and prices it as recorded.
-- A priced hold whose cost rounds up to 0 credits reserves 0 (hold_amount_positive allows it).
--
-- The constraints on entries and holds are added NOT VALID: the rows already there have none of
-- the new columns, and a large ledger is not scanned under the migration's lock.
--
-- Rollback: run the statements in rollback/0021-priced-usage.sql, which put back the functions
-- this release changed as they were before it, drop the functions it added, then its columns and
-- tables (refused while a priced hold of 0 credits exists, which the old constraint cannot hold).

create table rate_cards (
  id text primary key constraint rate_card_id_format check (id ~ '^[A-Za-z0-9_.-]{1,64}$'),
  is_default boolean not null default false,
  created_at timestamptz not null default now()
);
create unique index rate_cards_one_default on rate_cards (is_default) where is_default;

create table rate_card_versions (
  rate_card_id text not null references rate_cards (id),
  version integer not null constraint version_positive check (version >= 1),
  effective_at timestamptz not null,
  rates jsonb not null constraint rates_are_decimals check (
    jsonb_typeof(rates) = 'object'
    and not jsonb_path_exists(rates, '$.* ? (@.type() != "object")')
    and not jsonb_path_exists(rates,
      '$.*.* ? (@.type() != "string" || !(@ like_regex "^(0|[1-9][0-9]{0,14})([.][0-9]{1,12})?$"))')),
  source text not null constraint rate_card_version_source check (source in ('catalog', 'admin')),
  published_at timestamptz not null,
  primary key (rate_card_id, version)
);
create index rate_card_versions_in_effect on rate_card_versions (rate_card_id, effective_at desc, version desc);

-- The guard's first definition, so that the triggers can name it; its home is
-- db/functions/45-pricing.sql, which replaces it with the same body.
create function tally_refuse_rate_card_version_change() returns trigger language plpgsql as $$
begin
  raise exception 'rate card versions are never edited or deleted (% refused)', tg_op using errcode = 'TE001';
end $$;
create trigger rate_card_versions_append_only before update or delete on rate_card_versions
  for each row execute function tally_refuse_rate_card_version_change();
create trigger rate_card_versions_no_truncate before truncate on rate_card_versions
  for each statement execute function tally_refuse_rate_card_version_change();

create table catalog_plans (
  id text primary key,
  rate_card_id text references rate_cards (id),
  updated_at timestamptz not null default now()
);

-- A constant default: adding the column rewrites no row.
alter table accounts add column carry numeric not null default 0;
alter table accounts add constraint carry_range check (carry >= 0 and carry < 1) not valid;
alter table accounts validate constraint carry_range;

alter table entries add column meter text, add column quantities jsonb, add column rate_card_id text,
  add column rate_card_version integer, add column cost numeric, add column carry_after numeric;
alter table entries add constraint priced_entry check (
  (meter is null and quantities is null and rate_card_id is null and rate_card_version is null
    and cost is null and carry_after is null)
  or (meter is not null and quantities is not null and rate_card_id is not null and rate_card_version is not null
    and cost >= 0 and kind in ('usage', 'hold', 'capture')
    and (carry_after is null) = (kind = 'hold')
    and (carry_after is null or (carry_after >= 0 and carry_after < 1)))) not valid;

alter table holds add column meter text, add column quantities jsonb, add column rate_card_id text,
  add column rate_card_version integer, add column cost numeric;
alter table holds add constraint priced_hold check (
  (meter is null and quantities is null and rate_card_id is null and rate_card_version is null and cost is null)
  or (meter is not null and quantities is not null and rate_card_id is not null and rate_card_version is not null
    and cost >= 0)) not valid;
alter table holds drop constraint hold_amount_positive;
alter table holds add constraint hold_amount_positive check (amount > 0 or (meter is not null and amount = 0)) not valid;
