import type pg from 'pg';
import type Stripe from 'stripe';
import type { Catalog } from '../billing/catalog.js';
import { findPrice } from '../billing/catalog.js';
import { periodKey } from '../billing/credit-rule.js';
import type { Database } from '../db/database.js';
import { TallyError } from '../errors.js';
import type { StripeGateway } from '../stripe/gateway.js';
import { idOf, invoiceLines, invoiceSubscriptionId } from '../stripe/shapes.js';
import { backoffDelaySeconds, type Backoff } from '../timing/backoff.js';
import { raiseAlert } from './alerts.js';

/**
 * Reconciliation: set-based checks that the ledger agrees with itself (and, when asked, with
 * Stripe). A run stores its report and raises an alert for findings; it never changes the
 * ledger. One run at a time across all processes (an advisory lock).
 */
export interface Finding {
  check: string;
  account_id: string | null;
  message: string;
  entry_ids: string[];
  grant_ids?: string[];
  stripe_ids?: string[];
}

export interface ReconciliationReport {
  run_id: number;
  started_at: string;
  finished_at: string;
  with_stripe: boolean;
  finding_count: number;
  findings: Finding[];
  summary: { accounts: number; entries: number; duration_ms: number; checks: Record<string, number> };
}

export type ProgressListener = (done: number, total: number, check: string) => void;

const reconcileLockKey = 7_316_122_452;
export const findingsPerCheckMax = 1000;
export const staleHoldGraceSeconds = 300;
export const stripeLookbackDays = 30;
const entriesPerFindingMax = 20;
/**
 * A run's time budget. The checks are full scans (about 40 M entries would not fit in the 10 s
 * that bounds a request's statement), so a run has its own limit, long enough for a large
 * ledger and short enough that a stuck run ends and is reported.
 */
export const reconcileTimeSecondsMax = 1800;
/** After a failed scheduled run, the next waits this long, doubling with each failure in a row (up to the interval). */
export const failedRunBackoffSecondsBase = 300;

/** A run that used up its time budget; it is recorded as failed and alerted. */
export class ReconcileBudgetError extends Error {
  constructor(seconds: number, step: string, options?: { cause?: unknown }) {
    super(`reconciliation ran out of its time budget of ${seconds} s (during ${step})`, options);
    this.name = 'ReconcileBudgetError';
  }
}

type Queryable = Pick<pg.ClientBase, 'query'>;
const ids = (prefix: string, values: (number | string)[] | null): string[] => (values ?? []).map((value) => `${prefix}${value}`);

const checks: { name: string; run: (client: Queryable) => Promise<Finding[]> }[] = [
  {
    name: 'balance_equals_entries',
    async run(client) {
      const { rows } = await client.query<{ account_id: string; net: number; entry_sum: number; entry_ids: number[] }>(
        `select a.id as account_id, a.available - a.debt as net, coalesce(e.total, 0)::bigint as entry_sum,
           (select array_agg(id order by id desc) from (select id from entries where account_id = a.id order by id desc limit ${entriesPerFindingMax}) last) as entry_ids
         from accounts a left join (select account_id, sum(amount) as total from entries group by account_id) e on e.account_id = a.id
         where a.available - a.debt <> coalesce(e.total, 0) limit ${findingsPerCheckMax}`,
      );
      return rows.map((row) => ({
        check: 'balance_equals_entries',
        account_id: row.account_id,
        message: `available - debt is ${row.net} but the entries sum to ${row.entry_sum}`,
        entry_ids: ids('entry_', row.entry_ids),
      }));
    },
  },
  {
    name: 'grant_remaining_equals_entries',
    async run(client) {
      const { rows } = await client.query<{
        grant_id: number;
        account_id: string;
        amount: number;
        remaining: number;
        moved: number;
        entry_ids: number[];
      }>(
        `with moved as (
           select m.grant_id, sum(m.credits) as credits
           from entries e cross join lateral unnest(e.grant_ids, e.grant_credits) as m(grant_id, credits)
           group by m.grant_id),
         wrong as (
           select g.id, g.account_id, g.amount, g.remaining, coalesce(moved.credits, 0)::bigint as moved
           from grants g left join moved on moved.grant_id = g.id
           where g.remaining <> coalesce(moved.credits, 0) limit ${findingsPerCheckMax})
         select wrong.id as grant_id, wrong.account_id, wrong.amount, wrong.remaining, wrong.moved,
           (select array_agg(e.id order by e.id desc) from (select id from entries where account_id = wrong.account_id and wrong.id = any(grant_ids)
              order by id desc limit ${entriesPerFindingMax}) e) as entry_ids
         from wrong`,
      );
      return rows.map((row) => ({
        check: 'grant_remaining_equals_entries',
        account_id: row.account_id,
        message: `grant_${row.grant_id} of ${row.amount} has ${row.remaining} remaining but its entries leave ${row.moved}`,
        entry_ids: ids('entry_', row.entry_ids),
        grant_ids: [`grant_${row.grant_id}`],
      }));
    },
  },
  {
    name: 'available_equals_grants',
    async run(client) {
      const { rows } = await client.query<{ account_id: string; available: number; grant_sum: number }>(
        `select a.id as account_id, a.available, coalesce(g.total, 0)::bigint as grant_sum
         from accounts a left join (select account_id, sum(remaining) as total from grants group by account_id) g on g.account_id = a.id
         where a.available <> coalesce(g.total, 0) limit ${findingsPerCheckMax}`,
      );
      return rows.map((row) => ({
        check: 'available_equals_grants',
        account_id: row.account_id,
        message: `available is ${row.available} but its grants have ${row.grant_sum} remaining`,
        entry_ids: [],
      }));
    },
  },
  {
    name: 'one_grant_per_period',
    async run(client) {
      const { rows } = await client.query<{
        account_id: string;
        subscription: string;
        period_start: string;
        grant_ids: number[];
        entry_ids: number[];
      }>(
        `select g.account_id, g.reference->>'subscription' as subscription, g.reference->>'period_start' as period_start,
           array_agg(g.id order by g.id) as grant_ids,
           array_agg(e.id order by e.id) filter (where e.id is not null) as entry_ids
         from grants g left join entries e on e.account_id = g.account_id and e.idempotency_key = g.grant_key
         where g.source = 'subscription' and g.grant_key like 'period:%'
         group by g.account_id, g.reference->>'subscription', g.reference->>'period_start', g.reference->>'plan'
         having count(distinct g.id) > 1 limit ${findingsPerCheckMax}`,
      );
      return rows.map((row) => ({
        check: 'one_grant_per_period',
        account_id: row.account_id,
        message: `subscription ${row.subscription} has ${row.grant_ids.length} grants for the period starting ${row.period_start}`,
        entry_ids: ids('entry_', row.entry_ids),
        grant_ids: ids('grant_', row.grant_ids),
        stripe_ids: [row.subscription],
      }));
    },
  },
  {
    name: 'no_negative_balance',
    async run(client) {
      const { rows } = await client.query<{ account_id: string; available: number; held: number; debt: number }>(
        `select id as account_id, available, held, debt from accounts where available < 0 or held < 0 or debt < 0 limit ${findingsPerCheckMax}`,
      );
      return rows.map((row) => ({
        check: 'no_negative_balance',
        account_id: row.account_id,
        message: `negative balance: available ${row.available}, held ${row.held}, debt ${row.debt}`,
        entry_ids: [],
      }));
    },
  },
  {
    name: 'holds_resolved_or_live',
    async run(client) {
      const { rows } = await client.query<{ account_id: string; hold_id: number; problem: string; entry_ids: number[] }>(
        `select h.account_id, h.id as hold_id,
           case when h.status = 'pending' then 'pending ' || round(extract(epoch from now() - h.expires_at)) || ' s past its expiry'
                else 'held ' || h.amount || ' but captured ' || coalesce(h.captured, 0) || ' and released ' || coalesce(h.released, 0) end as problem,
           (select array_agg(id order by id) from entries where account_id = h.account_id and hold_id = h.id) as entry_ids
         from holds h
         where (h.status = 'pending' and h.expires_at < now() - make_interval(secs => ${staleHoldGraceSeconds}))
            or (h.status <> 'pending' and coalesce(h.captured, 0) + coalesce(h.released, 0) <> h.amount)
         limit ${findingsPerCheckMax}`,
      );
      const held = await client.query<{ account_id: string; held: number; pending: number }>(
        `select a.id as account_id, a.held, coalesce(p.total, 0)::bigint as pending
         from accounts a left join (select account_id, sum(amount) as total from holds where status = 'pending' group by account_id) p on p.account_id = a.id
         where a.held <> coalesce(p.total, 0) limit ${findingsPerCheckMax}`,
      );
      return [
        ...rows.map((row) => ({
          check: 'holds_resolved_or_live',
          account_id: row.account_id,
          message: `hold_${row.hold_id} is ${row.problem}`,
          entry_ids: ids('entry_', row.entry_ids),
        })),
        ...held.rows.map((row) => ({
          check: 'holds_resolved_or_live',
          account_id: row.account_id,
          message: `held is ${row.held} but pending holds sum to ${row.pending}`,
          entry_ids: [],
        })),
      ];
    },
  },
  {
    name: 'priced_entries_recompute',
    // Every priced entry's charge, recomputed from the rate card version it names: its cost is
    // the sum of quantity x rate at that version; a usage or capture charged floor(cost + the
    // carry the account's previous priced charge left) and left the rest as its carry; a hold
    // reserved ceil(cost). The account's carry is the last one left. All in numeric.
    async run(client) {
      const { rows } = await client.query<{ account_id: string; entry_id: number | null; problem: string }>(
        `with priced as (
           select e.id, e.account_id, e.kind, e.amount, e.meter, e.quantities, e.rate_card_id, e.rate_card_version,
             e.cost, e.carry_after,
             case when e.kind = 'usage' then -e.amount else (e.reference->>'captured')::bigint end as charged,
             coalesce(lag(e.carry_after) over (partition by e.account_id, e.kind = 'hold' order by e.id), 0) as carry_before,
             row_number() over (partition by e.account_id, e.kind = 'hold' order by e.id desc) as from_last
           from entries e where e.meter is not null),
         recomputed as (
           select p.*, v.rate_card_id is not null as version_found, r.cost as recomputed_cost, r.priced
           from priced p
           left join rate_card_versions v on v.rate_card_id = p.rate_card_id and v.version = p.rate_card_version
           left join lateral (
             select sum((q.value #>> '{}')::numeric * (v.rates -> p.meter ->> q.key)::numeric) as cost,
               coalesce(bool_and(v.rates -> p.meter ? q.key), true) as priced
             from jsonb_each(p.quantities) q) r on v.rate_card_id is not null)
         select account_id, id as entry_id, case
             when not version_found then format('names rate card %s version %s, which does not exist', rate_card_id, rate_card_version)
             when not priced then format('prices a dimension of %s that version %s of %s has no rate for', meter, rate_card_version, rate_card_id)
             when coalesce(recomputed_cost, 0) <> cost then format('cost %s recomputes to %s at %s version %s', trim_scale(cost), trim_scale(coalesce(recomputed_cost, 0)), rate_card_id, rate_card_version)
             when kind = 'hold' and -amount <> ceil(cost) then format('reserved %s credits, not ceil(%s)', -amount, trim_scale(cost))
             when kind <> 'hold' and charged <> floor(cost + carry_before) then format('charged %s credits, not floor(%s + carry %s)', charged, trim_scale(cost), trim_scale(carry_before))
             when kind <> 'hold' and carry_after <> cost + carry_before - charged then format('left carry %s, not %s', trim_scale(carry_after), trim_scale(cost + carry_before - charged))
           end as problem
         from recomputed
         where not version_found or not priced or coalesce(recomputed_cost, 0) <> cost
           or (kind = 'hold' and -amount <> ceil(cost))
           or (kind <> 'hold' and (charged <> floor(cost + carry_before) or carry_after <> cost + carry_before - charged))
         union all
         select a.id, l.id, format('carry is %s but its last priced charge left %s', trim_scale(a.carry), trim_scale(coalesce(l.carry_after, 0)))
         from accounts a left join priced l on l.account_id = a.id and l.kind <> 'hold' and l.from_last = 1
         where a.carry <> coalesce(l.carry_after, 0)
         limit ${findingsPerCheckMax}`,
      );
      return rows.map((row) => ({
        check: 'priced_entries_recompute',
        account_id: row.account_id,
        message: row.entry_id === null ? row.problem : `entry_${row.entry_id} ${row.problem}`,
        entry_ids: row.entry_id === null ? [] : [`entry_${row.entry_id}`],
      }));
    },
  },
];

/** What Stripe lists for the last 30 days: paid invoices and refunds. */
interface StripeLists {
  invoices: Stripe.Invoice[];
  refunds: Stripe.Refund[];
}

/**
 * Pages through Stripe before the database snapshot is taken: paging can take minutes, and a
 * snapshot held open that long keeps PostgreSQL from pruning the rows that hot accounts update
 * (their HOT updates then fail and the tables bloat). Anything paid after the lists were read
 * is simply not compared this run.
 */
async function listStripe(gateway: StripeGateway, progress: (label: string) => void): Promise<StripeLists> {
  const since = Math.floor(Date.now() / 1000) - stripeLookbackDays * 86400;
  const invoices = await gateway.call('invoices.list', (stripe) =>
    stripe.invoices.list({ status: 'paid', created: { gte: since }, limit: 100 }).autoPagingToArray({ limit: 10_000 }),
  );
  progress('stripe invoices listed');
  const refunds = await gateway.call('refunds.list', (stripe) =>
    stripe.refunds.list({ created: { gte: since }, limit: 100 }).autoPagingToArray({ limit: 10_000 }),
  );
  progress('stripe refunds listed');
  return { invoices, refunds };
}

/** Paid Stripe invoices of the last 30 days each have their period grant; refunds their clawback. */
async function stripeFindings(client: Queryable, lists: StripeLists, catalog: Catalog): Promise<Finding[]> {
  const findings: Finding[] = [];
  for (const invoice of lists.invoices) {
    const object = invoice as unknown as Record<string, unknown>;
    const subscriptionId = invoiceSubscriptionId(object);
    if (subscriptionId === undefined) continue;
    for (const line of invoiceLines(object)) {
      const match = line.priceId === undefined ? undefined : findPrice(catalog, line.priceId);
      if (match?.kind !== 'plan' || line.proration) continue;
      if (line.amount === 0) {
        // A trial's $0 line: the trial rule grants that period, not the invoice.
        const trial = await client.query('select 1 from subscriptions where id = $1 and trial_end > to_timestamp($2)', [
          subscriptionId,
          line.periodStart,
        ]);
        if (trial.rowCount === 1) continue;
      }
      // Each item of the line's own subscription has its grant; one made before 0020 has the key
      // that named no item, and the item's plan.
      const lineSubscription = line.subscription ?? subscriptionId;
      const key = periodKey(lineSubscription, line.subscriptionItem, line.periodStart);
      const { rows } = await client.query<{ account_id: string; id: number }>(
        `select account_id, id from grants where grant_key = $1
         union all select account_id, id from grants where grant_key = $2 and reference->>'plan' = $3 and $1 <> $2`,
        [key, periodKey(lineSubscription, undefined, line.periodStart), match.plan.id],
      );
      if (rows.length !== 1) {
        findings.push({
          check: 'stripe_invoice_granted_once',
          account_id: rows[0]?.account_id ?? null,
          message: `paid invoice ${invoice.id} has ${rows.length} grants under ${key}`,
          entry_ids: [],
          grant_ids: ids(
            'grant_',
            rows.map((row) => row.id),
          ),
          stripe_ids: [invoice.id ?? '', subscriptionId],
        });
      }
    }
  }
  for (const refund of lists.refunds) {
    const paymentIntent = idOf(refund.payment_intent);
    if (paymentIntent === undefined || refund.status === 'failed' || refund.status === 'canceled') continue;
    // A refund counts as applied when its clawback entry exists, or when Tally recorded it with
    // nothing to take (its proportion rounded down to 0, or the payment was already clawed back):
    // such a refund has no entry and would otherwise be reported missing forever. The payment is
    // found by any payment intent that paid its invoice, not only the first.
    const { rows } = await client.query<{ account_id: string; credits: number; clawed: boolean }>(
      `select p.account_id, p.credits,
         exists (select 1 from entries e where e.account_id = p.account_id and e.idempotency_key = $2)
           or exists (select 1 from payment_refunds r where r.refund_id = $3) as clawed
       from payments p
       where p.payment_intent = $1
          or p.invoice_id = (select invoice_id from invoice_payment_intents where payment_intent = $1)
       limit 1`,
      [paymentIntent, `refund:${refund.id}`, refund.id],
    );
    const payment = rows[0];
    if (payment !== undefined && payment.credits > 0 && !payment.clawed) {
      findings.push({
        check: 'stripe_refund_clawed_back',
        account_id: payment.account_id,
        message: `refund ${refund.id} of ${paymentIntent} has no clawback`,
        entry_ids: [],
        stripe_ids: [refund.id, paymentIntent],
      });
    }
  }
  return findings;
}

export interface ReconcileOptions {
  trigger: 'cli' | 'api' | 'schedule';
  stripe: boolean;
  gateway: StripeGateway | undefined;
  catalog: Catalog;
  onProgress?: ProgressListener;
  /** The run's own time limit (default reconcileTimeSecondsMax), instead of the pool's statement timeout. */
  timeSecondsMax?: number;
}

export async function reconcile(db: Database, options: ReconcileOptions): Promise<ReconciliationReport> {
  const report = await reconcileLocked(db, options, undefined);
  if (report === undefined) throw new Error('an unconditional reconciliation did not run');
  return report;
}

/**
 * The scheduled run: under the lock, runs only when the last run (from any process) started
 * more than `intervalHours` ago, so that two processes due at the same moment run it once.
 */
export async function reconcileIfDue(
  db: Database,
  options: ReconcileOptions,
  intervalHours: number,
): Promise<ReconciliationReport | undefined> {
  return reconcileLocked(db, options, intervalHours);
}

async function reconcileLocked(
  db: Database,
  options: ReconcileOptions,
  dueAfterHours: number | undefined,
): Promise<ReconciliationReport | undefined> {
  if (options.stripe && options.gateway === undefined)
    throw new TallyError('stripe_unavailable', 503, 'reconciliation with Stripe needs STRIPE_SECRET_KEY');
  const client = await db.pool.connect();
  try {
    const locked = await client.query<{ locked: boolean }>('select pg_try_advisory_lock($1) as locked', [reconcileLockKey]);
    if (locked.rows[0]?.locked !== true) throw new TallyError('reconciliation_running', 409, 'another reconciliation is running');
    try {
      if (dueAfterHours !== undefined && !(await runIsDue(client, dueAfterHours))) return undefined;
      return await runLocked(client, options);
    } finally {
      await client.query('select pg_advisory_unlock($1)', [reconcileLockKey]);
    }
  } finally {
    client.release();
  }
}

/**
 * Due when the last run that did not fail started an interval ago, and the failures since then
 * (if any) have waited out their backoff: a failing run is retried at 5, 10, 20... minutes, up
 * to the interval, not on every tick.
 */
async function runIsDue(client: pg.PoolClient, dueAfterHours: number): Promise<boolean> {
  const { rows } = await client.query<{ interval_passed: boolean; failure_count: number; seconds_since_failure: number | null }>(
    `with last_run as (select max(started_at) as at from reconciliation_runs where status <> 'failed'),
          failures as (select count(*)::int as count, max(started_at) as last_at from reconciliation_runs
                       where status = 'failed' and started_at > coalesce((select at from last_run), '-infinity'))
     select coalesce((select at from last_run) < now() - make_interval(hours => $1), true) as interval_passed,
       failures.count as failure_count, extract(epoch from now() - failures.last_at)::float8 as seconds_since_failure
     from failures`,
    [dueAfterHours],
  );
  const row = rows[0];
  if (row === undefined || !row.interval_passed) return false;
  if (row.failure_count === 0 || row.seconds_since_failure === null) return true;
  const backoff: Backoff = {
    delaySecondsFirst: failedRunBackoffSecondsBase,
    delaySecondsMax: dueAfterHours * 3600,
    // The schedule keeps trying, at most once per interval once the backoff reaches it.
    attemptsMax: Number.POSITIVE_INFINITY,
    jitterRatio: 0,
  };
  return row.seconds_since_failure > backoffDelaySeconds(backoff, row.failure_count);
}

async function runLocked(client: pg.PoolClient, options: ReconcileOptions): Promise<ReconciliationReport> {
  const started = Date.now();
  const timeSecondsMax = options.timeSecondsMax ?? reconcileTimeSecondsMax;
  const { rows } = await client.query<{ id: number; started_at: string }>(
    `insert into reconciliation_runs (trigger, with_stripe) values ($1, $2) returning id, tally_iso(started_at) as started_at`,
    [options.trigger, options.stripe],
  );
  const run = rows[0];
  if (run === undefined) throw new Error('reconciliation run was not recorded');
  const total = checks.length + (options.stripe ? 3 : 0);
  let done = 0;
  const progress = (label: string) => {
    done += 1;
    options.onProgress?.(done, total, label);
  };
  let step = 'start';
  // Each statement may take what is left of the run's budget (at least 1 ms: 0 means no limit).
  const budget = async (next: string): Promise<void> => {
    step = next;
    const leftMilliseconds = started + timeSecondsMax * 1000 - Date.now();
    if (leftMilliseconds <= 0) throw new ReconcileBudgetError(timeSecondsMax, step);
    await client.query(`select set_config('statement_timeout', $1, true)`, [String(Math.ceil(leftMilliseconds))]);
  };
  try {
    const lists = options.stripe && options.gateway !== undefined ? await listStripe(options.gateway, progress) : undefined;
    // One snapshot for every check, read only: the report describes one moment.
    await client.query('begin isolation level repeatable read read only');
    const findings: Finding[] = [];
    const perCheck: Record<string, number> = {};
    for (const check of checks) {
      await budget(check.name);
      const found = await check.run(client);
      perCheck[check.name] = found.length;
      findings.push(...found);
      progress(check.name);
    }
    if (lists !== undefined) {
      await budget('stripe comparison');
      const found = await stripeFindings(client, lists, options.catalog);
      perCheck.stripe = found.length;
      findings.push(...found);
      progress('stripe comparison');
    }
    await budget('counts');
    const counts = await client.query<{ accounts: number; entries: number }>(
      'select (select count(*) from accounts)::bigint as accounts, (select count(*) from entries)::bigint as entries',
    );
    await client.query('commit');
    const summary = {
      accounts: counts.rows[0]?.accounts ?? 0,
      entries: counts.rows[0]?.entries ?? 0,
      duration_ms: Date.now() - started,
      checks: perCheck,
    };
    return await recordReport(client, run, options, findings, summary);
  } catch (caught) {
    // A statement cancelled by the budget (57014) is the budget's failure, named as such.
    const error =
      (caught as { code?: string }).code === '57014' ? new ReconcileBudgetError(timeSecondsMax, step, { cause: caught }) : caught;
    try {
      await recordFailure(client, run.id, options, error as Error);
    } catch (recordError) {
      throw new Error(`${(error as Error).message}; recording the failed run failed too: ${(recordError as Error).message}`, {
        cause: error,
      });
    }
    throw error;
  }
}

async function recordReport(
  client: pg.PoolClient,
  run: { id: number; started_at: string },
  options: ReconcileOptions,
  findings: Finding[],
  summary: ReconciliationReport['summary'],
): Promise<ReconciliationReport> {
  const perCheck = summary.checks;
  const finished = await client.query<{ finished_at: string }>(
    `update reconciliation_runs set finished_at = now(), status = 'done', finding_count = $2, findings = $3, summary = $4 where id = $1 returning tally_iso(finished_at) as finished_at`,
    [run.id, findings.length, JSON.stringify(findings), summary],
  );
  await client.query(`insert into audit_log (actor, action, reason, after) values ($1, 'reconcile', $2, $3)`, [
    options.trigger === 'schedule' ? 'system' : 'admin',
    `reconciliation from the ${options.trigger}`,
    { run_id: run.id, findings: findings.length, with_stripe: options.stripe },
  ]);
  if (findings.length > 0) {
    await raiseAlert(client, {
      kind: 'reconciliation',
      key: 'reconciliation:findings',
      severity: 'critical',
      message: `reconciliation run ${run.id} found ${findings.length} problem(s): ${Object.entries(perCheck)
        .filter(([, count]) => count > 0)
        .map(([name, count]) => `${name} ${count}`)
        .join(', ')}`,
      details: { run_id: run.id, checks: perCheck },
    });
  }
  return {
    run_id: run.id,
    started_at: run.started_at,
    finished_at: finished.rows[0]?.finished_at ?? '',
    with_stripe: options.stripe,
    finding_count: findings.length,
    findings,
    summary,
  };
}

/** Marks the run failed and raises an alert: a reconciliation that cannot finish checks nothing. */
async function recordFailure(client: pg.PoolClient, runId: number, options: ReconcileOptions, error: Error): Promise<void> {
  // The run's own error is what is reported; a failed rollback only means the connection is gone.
  await client.query('rollback').catch((rollbackError: unknown) => void rollbackError);
  await client.query(`update reconciliation_runs set finished_at = now(), status = 'failed', error = $2 where id = $1`, [
    runId,
    error.message,
  ]);
  await raiseAlert(client, {
    kind: 'reconciliation_failed',
    key: 'reconciliation:failed',
    severity: 'critical',
    message: `reconciliation run ${runId} (${options.trigger}) failed: ${error.message}`,
    details: { run_id: runId, trigger: options.trigger },
  });
}
