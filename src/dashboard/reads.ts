import type { Database } from '../db/database.js';
import { TallyError, accountNotFound } from '../errors.js';

/**
 * The reads the operators' dashboard needs beyond the app's API: the overview's figures,
 * credits per day, account search, an account's grants, holds and balance over time, one
 * webhook event with its payload, one entry. Read-only, one SQL statement each (the overview a
 * few), every list bounded. `now` is the ledger's clock (null: the database's), so expiry is
 * judged as the ledger judges it.
 */

/**
 * A sum over accounts can pass what a JSON number holds exactly, even when each balance is
 * safe: the database sums in numeric, and a sum past the safe range is answered as its exact
 * decimal text rather than rounded.
 */
export function exactSum(text: string | null): number | string {
  const value = Number(text ?? '0');
  return Number.isSafeInteger(value) ? value : (text ?? '0');
}

export interface OverviewOptions {
  now: Date | null;
  webhookWindowHours: number;
}

export async function overview(db: Database, options: OverviewOptions): Promise<Record<string, unknown>> {
  const [credits, webhooks, alerts, reconciliation] = await Promise.all([
    db.query<Record<string, string | number | null>>(
      // Grants past their expiry stop counting at once (as the balance call says), before the
      // sweep writes their expire entries.
      `select count(*)::int as accounts, count(*) filter (where debt > 0)::int as accounts_in_debt,
         count(*) filter (where flagged)::int as accounts_flagged,
         (coalesce(sum(available), 0) - (select coalesce(sum(remaining), 0) from grants
            where live and expires_at <= coalesce($1, now())))::text as available,
         coalesce(sum(held), 0)::text as held, coalesce(sum(debt), 0)::text as debt
       from accounts`,
      [options.now],
    ),
    db.query<Record<string, string | number | null>>(
      `select count(*)::int as received,
         count(*) filter (where status = 'processed')::int as processed,
         count(*) filter (where status = 'ignored')::int as ignored,
         count(*) filter (where status = 'failed')::int as failed,
         count(*) filter (where status = 'pending')::int as pending,
         round(percentile_cont(0.5) within group (order by extract(epoch from processed_at - received_at))
           filter (where processed_at is not null)::numeric, 3)::float8 as lag_seconds_median,
         round(percentile_cont(0.95) within group (order by extract(epoch from processed_at - received_at))
           filter (where processed_at is not null)::numeric, 3)::float8 as lag_seconds_95th,
         round(max(extract(epoch from processed_at - received_at))::numeric, 3)::float8 as lag_seconds_max,
         coalesce((select jsonb_agg(type order by type) from (select distinct type from webhook_events
           where received_at >= now() - make_interval(hours => $1)) types), '[]'::jsonb) as types,
         (select count(*)::int from webhook_events where status = 'failed') as failed_total,
         (select count(*)::int from webhook_events where status = 'pending') as pending_total,
         (select tally_iso(min(received_at)) from webhook_events where status = 'pending') as oldest_pending_received_at
       from webhook_events where received_at >= now() - make_interval(hours => $1)`,
      [options.webhookWindowHours],
    ),
    db.query<{ open: number; open_critical: number; resolved: number }>(
      `select count(*) filter (where resolved_at is null)::int as open,
         count(*) filter (where resolved_at is null and severity = 'critical')::int as open_critical,
         count(*) filter (where resolved_at is not null)::int as resolved
       from alerts`,
    ),
    db.query(
      `select id as run_id, trigger, with_stripe, status, finding_count, error,
         tally_iso(started_at) as started_at, tally_iso(finished_at) as finished_at
       from reconciliation_runs order by started_at desc limit 1`,
    ),
  ]);
  const totals = credits.rows[0] ?? {};
  const available = String(totals.available ?? '0');
  const held = String(totals.held ?? '0');
  return {
    as_of: (options.now ?? new Date()).toISOString(),
    accounts: { count: totals.accounts, in_debt: totals.accounts_in_debt, flagged: totals.accounts_flagged },
    credits: {
      available: exactSum(available),
      held: exactSum(held),
      debt: exactSum(String(totals.debt ?? '0')),
      // What the merchant still owes its customers in credits: spendable now plus reserved.
      outstanding: exactSum((BigInt(available) + BigInt(held)).toString()),
    },
    webhooks: { window_hours: options.webhookWindowHours, ...webhooks.rows[0] },
    alerts: alerts.rows[0],
    last_reconciliation: reconciliation.rows[0] ?? null,
  };
}

export interface CreditDay {
  day: string;
  granted: number | string;
  spent: number | string;
  expired: number | string;
  clawed_back: number | string;
  adjusted_down: number | string;
}

/**
 * Credits moved per UTC day, the last day being `until` (default: today on the ledger's clock):
 * granted (grants, restores and positive adjustments), spent (usage and captured holds),
 * expired, clawed back (refunds, disputes, downgrades) and adjusted down by operators.
 */
export async function creditTotals(
  db: Database,
  options: { days: number; until: string | null; now: Date | null; accountId: string | null },
): Promise<CreditDay[]> {
  const { rows } = await db.query<Record<string, string>>(
    `with bounds as (
       select coalesce($2::date, (coalesce($3, now()) at time zone 'UTC')::date) as last_day),
     totals as (
       select (e.created_at at time zone 'UTC')::date as day,
         coalesce(sum(e.amount) filter (where e.kind in ('grant', 'restore') or (e.kind = 'adjustment' and e.amount > 0)), 0) as granted,
         coalesce(-sum(e.amount) filter (where e.kind = 'usage'), 0)
           + coalesce(sum((e.reference->>'captured')::numeric) filter (where e.kind = 'capture'), 0) as spent,
         coalesce(-sum(e.amount) filter (where e.kind = 'expire'), 0) as expired,
         coalesce(-sum(e.amount) filter (where e.kind = 'clawback'), 0) as clawed_back,
         coalesce(-sum(e.amount) filter (where e.kind = 'adjustment' and e.amount < 0), 0) as adjusted_down
       from entries e, bounds b
       where e.created_at >= (b.last_day - ($1::int - 1)) at time zone 'UTC'
         and e.created_at < (b.last_day + 1) at time zone 'UTC'
         and ($4::text is null or e.account_id = $4)
       group by 1)
     select to_char(d.day, 'YYYY-MM-DD') as day, coalesce(t.granted, 0)::text as granted, coalesce(t.spent, 0)::text as spent,
       coalesce(t.expired, 0)::text as expired, coalesce(t.clawed_back, 0)::text as clawed_back, coalesce(t.adjusted_down, 0)::text as adjusted_down
     from bounds b, generate_series(b.last_day - ($1::int - 1), b.last_day, interval '1 day') as d(day)
     left join totals t on t.day = d.day::date
     order by d.day`,
    [options.days, options.until, options.now, options.accountId],
  );
  return rows.map((row) => ({
    day: row.day ?? '',
    granted: exactSum(row.granted ?? null),
    spent: exactSum(row.spent ?? null),
    expired: exactSum(row.expired ?? null),
    clawed_back: exactSum(row.clawed_back ?? null),
    adjusted_down: exactSum(row.adjusted_down ?? null),
  }));
}

/** Columns the account list may be sorted by, each a fixed SQL expression (never the caller's text). */
export const accountSortColumns = {
  id: 'a.id',
  email: 'a.email',
  available: 'a.available',
  held: 'a.held',
  debt: 'a.debt',
  created_at: 'a.created_at',
  updated_at: 'a.updated_at',
} as const;
export type AccountSort = keyof typeof accountSortColumns;

export interface AccountSearch {
  search: string | null;
  /** Whether `search` may match emails (never for the viewer key: it would find whose email is whose). */
  matchEmail: boolean;
  sort: AccountSort;
  order: 'asc' | 'desc';
  limit: number;
  offset: number;
  now: Date | null;
}

/**
 * Accounts whose id, email (any case) or Stripe customer id starts with `search`, sorted and
 * paged by offset. Sorting is on the stored balance columns; the `available` answered leaves out
 * grants past their expiry that the sweep has not yet expired, as the balance call does.
 */
export async function searchAccounts(
  db: Database,
  options: AccountSearch,
): Promise<{ accounts: Record<string, unknown>[]; next_offset: number | null }> {
  const column = accountSortColumns[options.sort];
  const direction = options.order === 'desc' ? 'desc nulls last' : 'asc nulls last';
  const { rows } = await db.query(
    `select a.id, a.email, a.name, a.stripe_customer_id,
       a.available - coalesce((select sum(g.remaining) from grants g where g.account_id = a.id and g.live
         and g.expires_at <= coalesce($4, now())), 0)::bigint as available,
       a.held, a.debt, a.flagged, tally_iso(a.created_at) as created_at, tally_iso(a.updated_at) as updated_at,
       (select s.status from subscriptions s where s.account_id = a.id order by s.event_created desc, s.id limit 1) as subscription_status
     from accounts a
     where $1::text is null or starts_with(a.id, $1) or ($5 and starts_with(lower(a.email), lower($1))) or starts_with(a.stripe_customer_id, $1)
     order by ${column} ${direction}, a.id
     limit $2 offset $3`,
    [options.search, options.limit + 1, options.offset, options.now, options.matchEmail],
  );
  const more = rows.length > options.limit;
  return { accounts: rows.slice(0, options.limit), next_offset: more ? options.offset + options.limit : null };
}

async function requireAccount(db: Database, accountId: string): Promise<void> {
  const { rowCount } = await db.query('select 1 from accounts where id = $1', [accountId]);
  if (rowCount === 0) throw accountNotFound(accountId);
}

export type GrantState = 'live' | 'past' | 'all';

/**
 * An account's grants, newest first: `live` ones still hold credits and have not expired;
 * `past` ones are used up or expired. Each says which it is: `live`, `used_up` (nothing left,
 * expiry not reached) or `expired` (its expiry has passed, whatever was left then).
 */
export async function accountGrants(
  db: Database,
  accountId: string,
  options: { state: GrantState; limit: number; offset: number; now: Date | null },
): Promise<{ grants: unknown[]; next_offset: number | null }> {
  await requireAccount(db, accountId);
  const { rows } = await db.query<{ grant: unknown }>(
    `select tally_grant_json(g) || jsonb_build_object('state', s.state) as grant
     from grants g
     cross join lateral (select case
         when g.expires_at is not null and g.expires_at <= coalesce($5, now()) then 'expired'
         when g.live then 'live' else 'used_up' end as state) s
     where g.account_id = $1 and ($2 = 'all' or ($2 = 'live') = (s.state = 'live'))
     order by g.id desc limit $3 offset $4`,
    [accountId, options.state, options.limit + 1, options.offset, options.now],
  );
  const more = rows.length > options.limit;
  return { grants: rows.slice(0, options.limit).map((row) => row.grant), next_offset: more ? options.offset + options.limit : null };
}

/** An account's holds, newest first, paged by the id of the last hold of the previous page. */
export async function accountHolds(
  db: Database,
  accountId: string,
  options: { status: string | null; limit: number; cursor: number | null },
): Promise<{ holds: unknown[]; next_cursor: string | null }> {
  await requireAccount(db, accountId);
  const { rows } = await db.query<{ number: string }>(
    `select id::text as number, 'hold_' || id as id, amount, status, captured, released, idempotency_key,
       tally_iso(expires_at) as expires_at, tally_iso(created_at) as created_at, tally_iso(resolved_at) as resolved_at
     from holds where account_id = $1 and ($2::text is null or status = $2) and ($3::bigint is null or id < $3)
     order by id desc limit $4`,
    [accountId, options.status, options.cursor, options.limit + 1],
  );
  const page = rows.slice(0, options.limit);
  const last = page[page.length - 1];
  return {
    holds: page.map(({ number: _number, ...hold }) => hold),
    next_cursor: rows.length > options.limit && last !== undefined ? last.number : null,
  };
}

/**
 * The account's balance (available minus debt, as entries record it) at the end of each UTC
 * day; null before its first entry.
 */
export async function balanceHistory(
  db: Database,
  accountId: string,
  options: { days: number; until: string | null; now: Date | null },
): Promise<{ day: string; balance: number | null }[]> {
  await requireAccount(db, accountId);
  const { rows } = await db.query<{ day: string; balance: string | null }>(
    `select to_char(d.day, 'YYYY-MM-DD') as day,
       (select e.balance_after from entries e where e.account_id = $1 and e.created_at < (d.day + interval '1 day') at time zone 'UTC'
        order by e.id desc limit 1) as balance
     from generate_series(coalesce($3::date, (coalesce($4, now()) at time zone 'UTC')::date) - ($2::int - 1),
                          coalesce($3::date, (coalesce($4, now()) at time zone 'UTC')::date), interval '1 day') as d(day)
     order by d.day`,
    [accountId, options.days, options.until, options.now],
  );
  return rows.map((row) => ({ day: row.day, balance: row.balance === null ? null : Number(row.balance) }));
}

/**
 * One stored Stripe event with its payload and where its processing stands. Without the
 * payload (null) when `withPayload` is false: Stripe's objects carry emails, names and billing
 * addresses, which the viewer key never reads.
 */
export async function webhookEvent(db: Database, eventId: string, withPayload: boolean): Promise<unknown> {
  const { rows } = await db.query(
    `select id, type, api_version, status, attempts, tally_iso(created) as created, tally_iso(received_at) as received_at,
       tally_iso(next_attempt_at) as next_attempt_at, tally_iso(processed_at) as processed_at, last_error, ignored_reason,
       account_id, case when $2 then payload end as payload
     from webhook_events where id = $1`,
    [eventId, withPayload],
  );
  if (rows[0] === undefined) throw new TallyError('event_not_found', 404, `no stored event ${eventId}`);
  return rows[0];
}

/** One ledger entry with the account it belongs to (reconciliation findings name entries). */
export async function ledgerEntry(db: Database, entryId: string): Promise<unknown> {
  const match = /^entry_([0-9]{1,18})$/.exec(entryId);
  const { rows } =
    match?.[1] === undefined
      ? { rows: [] }
      : await db.query<{ entry: Record<string, unknown> }>(
          `select tally_entry_json(e) || jsonb_build_object('account_id', e.account_id) as entry from entries e where e.id = $1`,
          [match[1]],
        );
  if (rows[0] === undefined) throw new TallyError('entry_not_found', 404, `no entry with id ${entryId}`);
  return rows[0].entry;
}

export interface RateCardsOptions {
  now: Date | null;
  /** How many versions of each card to list, newest published first. */
  versions: number;
}

/**
 * Every rate card as the dashboard shows it: whether it is the default card, the plans that
 * name it, the version in effect now and the one scheduled next (as GET /v1/rate-cards judges
 * them, on the ledger's clock), and its versions newest published first with who published each
 * (the catalog at start, or an operator) and where each stands: `current`, `next`, `scheduled`
 * (later than the next), or `superseded` (a later version took its place, or will at the same
 * instant). Rates stay the exact decimal strings they were published as.
 */
export async function rateCards(db: Database, options: RateCardsOptions): Promise<{ as_of: string; rate_cards: unknown[] }> {
  const { rows } = await db.query<{ card: unknown }>(
    `with clock as (select coalesce($1::timestamptz, now()) as now)
     select jsonb_build_object(
         'id', c.id,
         'default', c.is_default,
         'plans', coalesce((select jsonb_agg(p.id order by p.id collate "C") from catalog_plans p where p.rate_card_id = c.id), '[]'::jsonb),
         'current', case when cur.rate_card_id is null then null
                    else tally_rate_card_version_json(cur) || jsonb_build_object('source', cur.source) end,
         'next', case when nxt.rate_card_id is null then null
                 else tally_rate_card_version_json(nxt) || jsonb_build_object('source', nxt.source) end,
         'versions', coalesce((
           select jsonb_agg(tally_rate_card_version_json(v) || jsonb_build_object('source', v.source, 'state',
               case when v.version = cur.version then 'current'
                    when v.version = nxt.version then 'next'
                    when v.effective_at > t.now and not exists (select 1 from rate_card_versions later
                      where later.rate_card_id = v.rate_card_id and later.effective_at = v.effective_at
                        and later.version > v.version) then 'scheduled'
                    else 'superseded' end)
             order by v.version desc)
           from (select * from rate_card_versions where rate_card_id = c.id order by version desc limit $2) v), '[]'::jsonb),
         'versions_total', (select count(*) from rate_card_versions v where v.rate_card_id = c.id)) as card
     from rate_cards c
       cross join clock t
       left join lateral tally_rate_card_in_effect(c.id, t.now) cur on true
       left join lateral tally_rate_card_next(c.id, t.now) nxt on true
     order by c.id collate "C"`,
    [options.now, options.versions],
  );
  return { as_of: (options.now ?? new Date()).toISOString(), rate_cards: rows.map((row) => row.card) };
}

export interface MeterSpend {
  /** Null for spends of a plain amount of credits (no meter). */
  meter: string | null;
  credits: number | string;
  /** The exact cost in credits, a decimal string (null for spends without a meter). */
  cost: string | null;
  spends: number;
}

/**
 * What an account spent per meter over the UTC days up to `until` (default: today on the
 * ledger's clock): usage and captured holds, as the credits they charged and their exact cost
 * (summed in numeric and answered as a decimal string, never a float), with spends of a plain
 * amount under the meter `null`. Pending, voided and expired holds spent nothing and are left
 * out. `meters` holds the window's totals, most credits first; `days` has every day of the
 * window, oldest first, each with the meters spent on that day.
 */
export async function meterSpend(
  db: Database,
  accountId: string,
  options: { days: number; until: string | null; now: Date | null },
): Promise<{ from: string; to: string; meters: MeterSpend[]; days: { day: string; meters: Omit<MeterSpend, 'spends'>[] }[] }> {
  await requireAccount(db, accountId);
  const { rows } = await db.query<{
    window_from: string;
    window_to: string;
    day: string | null;
    meter: string | null;
    credits: string | null;
    cost: string | null;
    spends: number | null;
  }>(
    `with bounds as (
       select last_day - ($4::int - 1) as first_day, last_day
       from (select coalesce($2::date, (coalesce($3, now()) at time zone 'UTC')::date) as last_day) d),
     spends as (
       select (e.created_at at time zone 'UTC')::date as day, e.meter,
         case when e.kind = 'usage' then -e.amount else (e.reference->>'captured')::bigint end as credits, e.cost
       from entries e, bounds b
       where e.account_id = $1 and e.kind in ('usage', 'capture')
         and e.created_at >= b.first_day at time zone 'UTC'
         and e.created_at < (b.last_day + 1) at time zone 'UTC'),
     totals as (
       select to_char(day, 'YYYY-MM-DD') as day, meter, sum(credits) as credits, trim_scale(sum(cost)) as cost,
         count(*)::int as spends
       from spends
       group by grouping sets ((day, meter), (meter)))
     select to_char(b.first_day, 'YYYY-MM-DD') as window_from, to_char(b.last_day, 'YYYY-MM-DD') as window_to,
       t.day, t.meter, t.credits::text as credits, t.cost::text as cost, t.spends
     from bounds b left join totals t on true
     order by t.day nulls first, t.credits desc, t.cost desc nulls last, t.meter collate "C" nulls last`,
    [accountId, options.until, options.now, options.days],
  );
  const from = rows[0]?.window_from ?? '';
  const to = rows[0]?.window_to ?? '';
  const meters: MeterSpend[] = [];
  const byDay = new Map<string, Omit<MeterSpend, 'spends'>[]>();
  for (const row of rows) {
    if (row.spends === null) continue;
    const spend = { meter: row.meter, credits: exactSum(row.credits), cost: row.cost };
    if (row.day === null) meters.push({ ...spend, spends: row.spends });
    else byDay.set(row.day, [...(byDay.get(row.day) ?? []), spend]);
  }
  const days: { day: string; meters: Omit<MeterSpend, 'spends'>[] }[] = [];
  for (let day = new Date(`${from}T00:00:00Z`); day.toISOString().slice(0, 10) <= to; day.setUTCDate(day.getUTCDate() + 1)) {
    const key = day.toISOString().slice(0, 10);
    days.push({ day: key, meters: byDay.get(key) ?? [] });
  }
  return { from, to, meters, days };
}

/** A plan of the catalog as the dashboard names it (the catalog's plans fit this shape). */
export interface CatalogPlanName {
  id: string;
  name: string;
  free?: true | undefined;
}

export interface AccountPlanOptions {
  now: Date | null;
  plans: readonly CatalogPlanName[];
}

/**
 * The account's plan as GET /v1/accounts/{id}/entitlements decides it (the same SQL, on the
 * ledger's clock), with the catalog's names, and for each recurring grant its current period
 * (a UTC day, ISO week or calendar month) and the grant of that period if the account's first
 * call of the period gave it already (null otherwise). Reads only: it never gives a grant.
 */
export async function accountPlan(db: Database, accountId: string, options: AccountPlanOptions): Promise<Record<string, unknown>> {
  await requireAccount(db, accountId);
  const { rows } = await db.query<{ entitlements: Record<string, unknown>; recurring_grants: Record<string, unknown>[] }>(
    `with clock as (select coalesce($2::timestamptz, now()) as now),
     e as (select tally_entitlements_json($1, t.now) as j from clock t)
     select e.j as entitlements, coalesce((
       select jsonb_agg(r.value || jsonb_build_object(
           'period_start', to_char(p.period_start, 'YYYY-MM-DD'), 'period_end', tally_iso(p.period_end),
           'grant', (select tally_grant_json(g) || jsonb_build_object('state', case
                 when g.expires_at is not null and g.expires_at <= t.now then 'expired'
                 when g.live then 'live' else 'used_up' end)
               from grants g where g.account_id = $1 and g.grant_key = 'recurring:' || $1 || ':' || (r.value->>'plan_id')
                 || ':' || (r.value->>'every') || ':' || to_char(p.period_start, 'YYYY-MM-DD')))
         order by r.ordinality)
       from jsonb_array_elements(e.j->'recurring_grants') with ordinality r
       cross join lateral tally_recurring_period(r.value->>'every', t.now) p), '[]'::jsonb) as recurring_grants
     from e, clock t`,
    [accountId, options.now],
  );
  const row = rows[0];
  if (row === undefined) throw accountNotFound(accountId);
  const names = new Map(options.plans.map((plan) => [plan.id, plan.name]));
  const nameOf = (planId: unknown): string | null => (typeof planId === 'string' ? (names.get(planId) ?? null) : null);
  return {
    ...row.entitlements,
    plan_name: nameOf(row.entitlements.plan_id),
    recurring_grants: row.recurring_grants.map((grant) => ({ ...grant, plan_name: nameOf(grant.plan_id) })),
  };
}

export interface PlanCount {
  /** Null: accounts on no plan (no subscription and no free plan, or a price outside the catalog). */
  plan_id: string | null;
  /** The catalog's name; null for no plan, or a plan a subscription names that the catalog no longer has. */
  name: string | null;
  free: boolean;
  accounts: number;
  /** Of `accounts`, those on the plan through a subscription (active or past due) and through a trial. */
  subscription: number;
  trial: number;
}

/**
 * How many accounts are on each plan now, decided as a spend decides it (tally_plan_items):
 * every plan of the catalog in its order (none left out, even with no account), then plans that
 * subscriptions name but the catalog no longer has, then accounts on no plan. Only accounts that
 * ever had a subscription are looked at one by one; the others are on the free plan, or on none,
 * so a million free accounts cost one count.
 */
export async function accountsPerPlan(db: Database, plans: readonly CatalogPlanName[]): Promise<{ accounts: number; plans: PlanCount[] }> {
  const { rows } = await db.query<{ plan_id: string | null; accounts: number; subscription: number; trial: number; total: number }>(
    `with subscribed as (select array(select distinct account_id from subscriptions) as ids),
     top as (select i.plan_id, i.source from subscribed s, tally_plan_items(s.ids) i where i.rank = 1),
     counts as (
       select plan_id, count(*)::int as accounts, count(*) filter (where source = 'subscription')::int as subscription,
         count(*) filter (where source = 'trial')::int as trial
       from top group by plan_id
       union all
       -- Accounts with only ended subscriptions and no free plan to fall back to.
       select null, (cardinality(s.ids) - (select count(*) from top))::int, 0, 0 from subscribed s
       union all
       select (select id from catalog_plans where free), ((select count(*) from accounts) - cardinality(s.ids))::int, 0, 0
       from subscribed s)
     select plan_id, sum(accounts)::int as accounts, sum(subscription)::int as subscription, sum(trial)::int as trial,
       (select count(*)::int from accounts) as total
     from counts group by plan_id`,
  );
  const counted = new Map(rows.map((row) => [row.plan_id, row]));
  const row = (planId: string | null, name: string | null, free: boolean): PlanCount => {
    const found = counted.get(planId);
    counted.delete(planId);
    return {
      plan_id: planId,
      name,
      free,
      accounts: found?.accounts ?? 0,
      subscription: found?.subscription ?? 0,
      trial: found?.trial ?? 0,
    };
  };
  const listed = plans.map((plan) => row(plan.id, plan.name, plan.free === true));
  const none = row(null, null, false);
  const unknown = [...counted.keys()]
    .filter((planId): planId is string => planId !== null)
    .sort()
    .map((planId) => row(planId, null, false));
  return { accounts: rows[0]?.total ?? 0, plans: [...listed, ...unknown, none] };
}
