-- 0022-entitlements: what each plan lets its accounts use, the free plan, and recurring grants.
--
-- catalog_plans gains what a spend needs to decide, inside its own transaction, which plan an
-- account is on and what that plan allows (db/functions/44-entitlements.sql): whether it is the
-- catalog's free plan (at most one: a unique index), its credits per month (several plan items:
-- the one with the most decides the plan and its rate card), its entitlements ({meters: "all" or
-- [ids], features}; NULL: every meter, no features) and its recurring grants ([{credits, every}]).
-- subscriptions.plan_ids: the catalog plans of every item of the subscription (plan_id keeps the
--   first, as before). NULL on rows mirrored before this migration: their plan_id stands alone.
-- grants.source gains `recurring`: credits a plan gives each UTC day, ISO week or calendar month,
--   granted by the account's first spend, hold or balance read of the period.
-- account_plans: the plan and entitlements last announced for an account, so that a change of
--   subscription writes `entitlements.changed` only when what the account may use changed. An
--   account that never had a subscription has no row (it is on the free plan, or on none).
--
-- Rollback: run the statements in rollback/0022-entitlements.sql, which put back the functions
-- this release changed as they were before it, drop the functions and triggers it added, then its
-- table, columns and index, and put grants' sources back (recurring grants already given stay).

alter table catalog_plans add column free boolean not null default false,
  add column credits_per_month bigint not null default 0,
  add column entitlements jsonb,
  add column recurring_grants jsonb not null default '[]'::jsonb;
alter table catalog_plans add constraint entitlements_shape check (
  entitlements is null or (jsonb_typeof(entitlements) = 'object'
    and (entitlements->'meters' = '"all"'::jsonb or jsonb_typeof(entitlements->'meters') = 'array')
    and jsonb_typeof(entitlements->'features') = 'object'));
alter table catalog_plans add constraint recurring_grants_shape check (jsonb_typeof(recurring_grants) = 'array');
create unique index catalog_plans_one_free on catalog_plans (free) where free;

alter table subscriptions add column plan_ids text[];

-- A widening: every row that passed the old check passes this one.
alter table grants drop constraint grant_source;
alter table grants add constraint grant_source check (source in ('subscription', 'trial', 'purchase', 'promo',
  'admin', 'rollover', 'recurring')) not valid;
alter table grants validate constraint grant_source;

create table account_plans (
  account_id text primary key references accounts (id),
  plan_id text,
  source text not null constraint account_plan_source check (source in ('subscription', 'trial', 'free', 'none')),
  entitlements jsonb not null,
  updated_at timestamptz not null default now()
);

-- The trigger function's first definition, so that the triggers can name it; its home is
-- db/functions/44-entitlements.sql, which replaces it.
create function tally_entitlement_events() returns trigger language plpgsql as $$
begin
  return null;
end $$;
create trigger subscriptions_insert_entitlements after insert on subscriptions
  for each row execute function tally_entitlement_events();
create trigger subscriptions_update_entitlements after update on subscriptions
  for each row when (old.account_id is distinct from new.account_id or old.status is distinct from new.status
    or old.plan_id is distinct from new.plan_id or old.plan_ids is distinct from new.plan_ids)
  execute function tally_entitlement_events();
