import type { Database } from '../db/database.js';
import type { Alerts } from '../ports/alerts.js';
import type { Catalog } from './catalog.js';
import { grantOnce, lockAccount, type EffectContext } from './effect-context.js';
import type { ClaimHasher } from './claim-hasher.js';
import { clawBackFromPeriod, grantPeriod } from './periods.js';

/**
 * The scheduler of yearly plans. Each later month of a yearly period is kept as scheduled
 * credits, one row per month and invoice line (the period line, proration lines of plan, seat
 * and interval changes, refunds that cancel months not granted yet). When a month starts, its
 * rows are netted and granted in one transaction under `period:{subscription}:{month start}`:
 * after an upgrade the month grants the new plan, after a switch away from the yearly price or
 * a prorated cancellation it nets to nothing. A subscription that ended grants no month that
 * starts after its end. Months are claimed with FOR UPDATE SKIP LOCKED, so several processes
 * may run the scheduler at once; a month that keeps failing is set aside with an alert after
 * `scheduleAttemptsMax` attempts, and the months behind it go on.
 */
// `unpaid` is not an end: the subscription may be paid and become active again, and the months
// the yearly invoice paid for must still come.
const endedStatuses = new Set(['canceled', 'incomplete_expired']);
export const scheduleAttemptsMax = 5;

interface DueMonth {
  subscription_id: string;
  month_start: number;
}

interface MonthRow {
  line_key: string;
  month_end: number;
  account_id: string;
  plan_id: string;
  credits: number;
  payment_id: number | null;
  subscription_item: string | null;
}

interface SubscriptionEnd {
  status: string | null;
  ended_at: number | null;
}

export interface MonthOutcome {
  /** `{subscription}:{month start}`: what a later call in the same pass passes over. */
  key: string;
  failed: boolean;
}

/**
 * Grants one due month, passing over the months in `passedOver` (they failed earlier in this
 * pass); answers what it did, or undefined when no month is due.
 */
export async function grantDueMonth(
  db: Database,
  catalog: Catalog,
  hasher: ClaimHasher,
  alerts: Alerts,
  now: Date | null,
  passedOver: string[] = [],
): Promise<MonthOutcome | undefined> {
  // Found without a lock, outside the transaction (an idle pass costs one query): locks go
  // account first, then the month's rows (applyMonth), in the order event effects take them.
  // Locking a row of the month first deadlocked against a worker granting another line of the
  // same month, or an event of the account. Two workers that pick the same month queue on the
  // account; the second finds it granted and does nothing.
  const { rows } = await db.query<DueMonth>(
    `select subscription_id, extract(epoch from month_start)::bigint as month_start from yearly_schedule
     where granted_at is null and month_start <= coalesce($1, now())
       and not (subscription_id || ':' || extract(epoch from month_start)::bigint = any($2::text[]))
     order by month_start, subscription_id limit 1`,
    [now, passedOver],
  );
  const due = rows[0];
  if (due === undefined) return undefined;
  const key = `${due.subscription_id}:${due.month_start}`;
  try {
    await db.withTransaction((client) => applyMonth({ client, catalog, hasher, alerts, now, due }));
    return { key, failed: false };
  } catch (error) {
    await recordMonthFailure(db, alerts, due, error);
    return { key, failed: true };
  }
}

/** Counts a failed attempt at a month; the last allowed attempt sets it aside and alerts. */
async function recordMonthFailure(db: Database, alerts: Alerts, due: DueMonth, error: unknown): Promise<void> {
  const message = error instanceof Error ? error.message : String(error);
  await db.withTransaction(async (client) => {
    const { rows } = await client.query<{ attempts: number; account_id: string }>(
      `update yearly_schedule set attempts = attempts + 1, last_error = $3
       where subscription_id = $1 and month_start = to_timestamp($2) and granted_at is null returning attempts, account_id`,
      [due.subscription_id, due.month_start, message],
    );
    const attempts = Math.max(0, ...rows.map((row) => row.attempts));
    if (attempts < scheduleAttemptsMax) return;
    await client.query(
      `update yearly_schedule set granted_at = now(), outcome = 'failed' where subscription_id = $1 and month_start = to_timestamp($2) and granted_at is null`,
      [due.subscription_id, due.month_start],
    );
    await alerts.raise(client, {
      kind: 'schedule_failed',
      key: `schedule_failed:${due.subscription_id}:${due.month_start}`,
      severity: 'critical',
      message: `the yearly month of ${due.subscription_id} starting ${new Date(due.month_start * 1000).toISOString()} failed ${attempts} times and was set aside: ${message}`,
      details: { subscription: due.subscription_id, month_start: due.month_start },
      accountId: rows[0]?.account_id,
    });
  });
}

interface MonthWork {
  client: EffectContext['client'];
  catalog: Catalog;
  hasher: ClaimHasher;
  alerts: Alerts;
  now: Date | null;
  due: DueMonth;
}

/** Nets a month's rows (read again under the account's lock, so a line applied meanwhile is seen) and grants or claws the net. */
async function applyMonth(work: MonthWork): Promise<void> {
  const { client, due } = work;
  const accountRows = await client.query<{ account_id: string }>(
    'select account_id from yearly_schedule where subscription_id = $1 and month_start = to_timestamp($2) limit 1',
    [due.subscription_id, due.month_start],
  );
  const accountId = accountRows.rows[0]?.account_id;
  if (accountId === undefined) throw new Error(`scheduled month of ${due.subscription_id} vanished`);
  const context: EffectContext = {
    client,
    catalog: work.catalog,
    hasher: work.hasher,
    alerts: work.alerts,
    event: {
      id: `schedule:${due.subscription_id}:${due.month_start}`,
      type: 'schedule.yearly_month',
      created: due.month_start,
      object: {},
    },
    prepared: {},
    now: work.now,
  };
  await lockAccount(context, accountId);
  const { rows } = await client.query<MonthRow>(
    `select line_key, extract(epoch from month_end)::bigint as month_end, account_id, plan_id, credits, payment_id, subscription_item from yearly_schedule
     where subscription_id = $1 and month_start = to_timestamp($2) and granted_at is null
     order by line_start desc, line_key for update`,
    [due.subscription_id, due.month_start],
  );
  const outcome = await netMonth(context, due, rows);
  await client.query(
    `update yearly_schedule set granted_at = now(), outcome = $3, last_error = null where subscription_id = $1 and month_start = to_timestamp($2) and granted_at is null`,
    [due.subscription_id, due.month_start, outcome],
  );
}

async function netMonth(context: EffectContext, due: DueMonth, rows: MonthRow[]): Promise<'granted' | 'skipped' | 'netted'> {
  const first = rows[0];
  if (first === undefined) return 'netted';
  if (await endedBefore(context, due)) return 'skipped';
  const outcomes: ('granted' | 'skipped' | 'netted')[] = [];
  for (const item of itemsOfMonth(rows)) outcomes.push(await grantItemMonth(context, due, item.subscriptionItem, item.rows, item.credits));
  if (outcomes.includes('granted')) return 'granted';
  return outcomes.includes('skipped') ? 'skipped' : 'netted';
}

interface ItemMonth {
  subscriptionItem: string | undefined;
  rows: MonthRow[];
  credits: number;
}

/**
 * A month's rows by subscription item, each item netted on its own (its period line and the
 * prorations of its plan and seat changes). Rows that name no item (a refund's cancellation of
 * the month, rows kept before 0020) belong to the month as a whole: with one item they net into
 * it; with several, what they take is taken from the items in the order of their ids.
 */
function itemsOfMonth(rows: MonthRow[]): ItemMonth[] {
  const items = [...new Set(rows.flatMap((row) => (row.subscription_item === null ? [] : [row.subscription_item])))].sort();
  const sum = (list: MonthRow[]) => list.reduce((total, row) => total + Number(row.credits), 0);
  if (items.length <= 1) return [{ subscriptionItem: items[0], rows, credits: sum(rows) }];
  let shared = sum(rows.filter((row) => row.subscription_item === null));
  return items.map((subscriptionItem) => {
    const own = rows.filter((row) => row.subscription_item === subscriptionItem);
    let credits = sum(own);
    const taken = shared < 0 ? Math.max(shared, -Math.max(credits, 0)) : shared;
    credits += taken;
    shared -= taken;
    return { subscriptionItem, rows: own, credits };
  });
}

async function grantItemMonth(
  context: EffectContext,
  due: DueMonth,
  subscriptionItem: string | undefined,
  rows: MonthRow[],
  credits: number,
): Promise<'granted' | 'skipped' | 'netted'> {
  const first = rows[0];
  if (first === undefined) return 'netted';
  const period = { start: due.month_start, end: Number(first.month_end) };
  // The newest line that bills the month names its plan (its rollover rule applies).
  const billing = rows.find((row) => Number(row.credits) > 0);
  const plan = context.catalog.plans.find((candidate) => candidate.id === billing?.plan_id);
  if (credits > 0 && plan === undefined) {
    await context.alerts.raise(context.client, {
      kind: 'schedule_skipped',
      key: `schedule_skipped:${due.subscription_id}`,
      severity: 'warning',
      message: `yearly month of ${due.subscription_id} skipped: plan ${billing?.plan_id ?? '?'} is no longer in the catalog`,
      accountId: first.account_id,
    });
    return 'skipped';
  }
  if (credits > 0 && plan !== undefined) {
    await grantPeriod(context, {
      accountId: first.account_id,
      subscriptionId: due.subscription_id,
      subscriptionItem,
      plan,
      period,
      credits,
      paymentId: billing?.payment_id ?? undefined,
      reference: { schedule: 'yearly' },
    });
    return 'granted';
  }
  // A month that nets below zero was taken away twice before it came (a refund cancelled it and
  // a switch away from the yearly price credited it too): it grants nothing, and takes nothing
  // from credits it never gave.
  return 'netted';
}

/** Whether the subscription ended before the month started (a cancelled subscription grants no further month). */
async function endedBefore(context: EffectContext, due: DueMonth): Promise<boolean> {
  const { rows } = await context.client.query<SubscriptionEnd>(
    'select status, extract(epoch from ended_at)::bigint as ended_at from subscriptions where id = $1',
    [due.subscription_id],
  );
  const state = rows[0];
  if (state === undefined || state.status === null || !endedStatuses.has(state.status)) return false;
  return state.ended_at === null || Number(state.ended_at) <= due.month_start;
}

interface ScheduledMonth {
  subscription_id: string;
  month_start: number;
  month_end: number;
  plan_id: string;
  credits: number;
}

interface CancellableMonth extends ScheduledMonth {
  /** What this payment's own rows still give the month. */
  own: number;
  /** The month is not granted yet, or was set aside (skipped, failed) and never granted. */
  open: boolean;
}

/** The credits of later months that the clawback under `key` cancelled (0: none). */
export async function scheduledCancellation(context: EffectContext, paymentId: number, key: string): Promise<number> {
  const { rows } = await context.client.query<{ credits: number }>(
    `select coalesce(-sum(credits), 0)::bigint as credits from yearly_schedule where payment_id = $1 and line_key = $2`,
    [paymentId, key],
  );
  return Number(rows[0]?.credits ?? 0);
}

/**
 * A refund or dispute of a yearly payment takes back first what it bought and was never
 * granted: its months not granted yet (each up to what the month still nets, so that a plan
 * change after the payment is not clawed twice) and its months set aside without a grant (the
 * subscription ended first). Negative rows under `key`, from the last month backwards, up to
 * `credits`. Answers the credits cancelled (now or before, under the same key); the caller
 * claws the rest back from granted credits.
 */
export async function cancelScheduledMonths(
  context: EffectContext,
  paymentId: number,
  accountId: string,
  credits: number,
  key: string,
): Promise<number> {
  const before = await scheduledCancellation(context, paymentId, key);
  if (before > 0) return before;
  const { rows } = await context.client.query<CancellableMonth>(
    `select subscription_id, extract(epoch from month_start)::bigint as month_start, extract(epoch from max(month_end))::bigint as month_end,
       max(plan_id) as plan_id,
       coalesce(sum(credits) filter (where payment_id = $1), 0)::bigint as own,
       greatest(coalesce(sum(credits) filter (where granted_at is null), 0), 0)::bigint as credits,
       bool_or(granted_at is null) as open
     from yearly_schedule
     where subscription_id in (select subscription_id from yearly_schedule where payment_id = $1)
     group by subscription_id, month_start
     having bool_or(granted_at is null) or bool_and(outcome in ('skipped', 'failed'))
     order by month_start desc`,
    [paymentId],
  );
  let cancelled = 0;
  for (const month of rows) {
    const cap = month.open ? Math.min(Number(month.own), Number(month.credits)) : Number(month.own);
    const take = Math.min(credits - cancelled, cap);
    if (credits - cancelled <= 0) break;
    if (take <= 0) continue;
    await context.client.query(
      `insert into yearly_schedule (subscription_id, month_start, line_key, account_id, month_end, plan_id, credits, payment_id, line_start, granted_at, outcome)
       values ($1, to_timestamp($2), $3, $4, to_timestamp($5), $6, $7, $8, to_timestamp($2), case when $9 then null else now() end, case when $9 then null else 'skipped' end)`,
      [month.subscription_id, month.month_start, key, accountId, month.month_end, month.plan_id, -take, paymentId, month.open],
    );
    cancelled += take;
  }
  return cancelled;
}

/**
 * A refund that failed or a dispute that was won gives back the months it cancelled: rows
 * under `key` that undo the rows under `cancelKey`. A month granted meanwhile (without them)
 * gets its credits now, expiring with it; a month that was set aside (the subscription ended)
 * gets nothing, as it would have had the refund never happened.
 */
export async function restoreScheduledMonths(
  context: EffectContext,
  paymentId: number,
  accountId: string,
  cancelKey: string,
  key: string,
): Promise<number> {
  const { rows } = await context.client.query<ScheduledMonth & { state: 'open' | 'granted' | 'lost' }>(
    `select c.subscription_id, extract(epoch from c.month_start)::bigint as month_start, extract(epoch from c.month_end)::bigint as month_end,
       c.plan_id, -c.credits as credits,
       case when c.granted_at is null then 'open' when c.outcome in ('granted', 'netted') then 'granted' else 'lost' end as state
     from yearly_schedule c where c.payment_id = $1 and c.line_key = $2
       and not exists (select 1 from yearly_schedule r where r.subscription_id = c.subscription_id and r.month_start = c.month_start and r.line_key = $3)
     order by c.month_start`,
    [paymentId, cancelKey, key],
  );
  let restored = 0;
  for (const month of rows) {
    const credits = Number(month.credits);
    await context.client.query(
      `insert into yearly_schedule (subscription_id, month_start, line_key, account_id, month_end, plan_id, credits, payment_id, line_start, granted_at, outcome)
       values ($1, to_timestamp($2), $3, $4, to_timestamp($5), $6, $7, $8, to_timestamp($2), case when $9 = 'open' then null else now() end,
         case $9 when 'open' then null when 'granted' then 'granted' else 'skipped' end)`,
      [month.subscription_id, month.month_start, key, accountId, month.month_end, month.plan_id, credits, paymentId, month.state],
    );
    if (month.state === 'granted') {
      await grantOnce(context, {
        accountId,
        source: 'subscription',
        credits,
        expiresAt: new Date(Number(month.month_end) * 1000),
        key: `${key}:${month.month_start}`,
        reference: {
          subscription: month.subscription_id,
          plan: month.plan_id,
          period_start: Number(month.month_start),
          period_end: Number(month.month_end),
        },
        paymentId,
        countsTowardsPayment: false,
        entryKind: 'restore',
      });
    }
    restored += credits;
  }
  return restored;
}

/**
 * A yearly subscription that ended (its `ended_at`) at or before a month's start never keeps
 * that month, whatever order the cancellation, the invoices and the scheduler ran in (SPEC): a
 * month the scheduler granted before the cancellation arrived is clawed back now, once, under
 * `ended:{subscription}:{month start}` (from the month's own grants first; beyond what is left,
 * debt), and the rollover it received expires (it would have expired with the month before).
 * The clawback counts against the payment that bought the month, as a proration's does, so a
 * refund of that payment afterwards never takes the month twice. The caller mirrored the
 * subscription in this transaction.
 */
export async function clawBackEndedMonths(context: EffectContext, subscriptionId: string): Promise<void> {
  const ended = await context.client.query<{ account_id: string; ended_at: number }>(
    `select account_id, extract(epoch from ended_at)::bigint as ended_at from subscriptions
     where id = $1 and status = any($2::text[]) and ended_at is not null`,
    [subscriptionId, [...endedStatuses]],
  );
  const subscription = ended.rows[0];
  if (subscription === undefined) return;
  const { rows: months } = await context.client.query<{ month_start: number; month_end: number }>(
    `select extract(epoch from month_start)::bigint as month_start, extract(epoch from max(month_end))::bigint as month_end
     from yearly_schedule where subscription_id = $1 and month_start >= to_timestamp($2) and outcome = 'granted'
     group by month_start order by month_start`,
    [subscriptionId, subscription.ended_at],
  );
  if (months.length === 0) return;
  const accountId = subscription.account_id;
  await lockAccount(context, accountId);
  for (const month of months)
    await clawBackEndedMonth(context, accountId, subscriptionId, Number(month.month_start), Number(month.month_end));
}

async function clawBackEndedMonth(
  context: EffectContext,
  accountId: string,
  subscriptionId: string,
  monthStart: number,
  monthEnd: number,
): Promise<void> {
  const key = `ended:${subscriptionId}:${monthStart}`;
  const done = await context.client.query('select 1 from entries where account_id = $1 and idempotency_key = $2', [accountId, key]);
  if (done.rowCount !== 0) return;
  // What the month holds: its subscription grants (period, prorations, late lines) less what
  // proration clawbacks already took from it.
  const { rows } = await context.client.query<{ credits: number; payment_id: number | null }>(
    `select (coalesce(sum(g.amount), 0) + coalesce((select sum(e.amount) from entries e where e.account_id = $1 and e.kind = 'clawback'
         and e.reference->>'subscription' = $2 and (e.reference->>'period_start')::bigint = $3), 0))::bigint as credits,
       max(g.payment_id) filter (where g.grant_key like 'period:%') as payment_id
     from grants g where g.account_id = $1 and g.source = 'subscription' and g.reference->>'subscription' = $2
       and (g.reference->>'period_start')::bigint = $3`,
    [accountId, subscriptionId, monthStart],
  );
  let credits = Math.max(Number(rows[0]?.credits ?? 0), 0);
  const paymentId = rows[0]?.payment_id ?? null;
  if (paymentId !== null) {
    const left = await context.client.query<{ left: number }>(
      'select greatest(credits - clawed_back - prorated_back, 0)::bigint as left from payments where id = $1',
      [paymentId],
    );
    credits = Math.min(credits, Number(left.rows[0]?.left ?? 0));
  }
  const rollovers = await context.client.query<{ id: number }>(
    `select id from grants where account_id = $1 and source = 'rollover' and reference->>'subscription' = $2
       and (reference->>'period_start')::bigint = $3`,
    [accountId, subscriptionId, monthStart],
  );
  for (const rollover of rollovers.rows) {
    await context.client.query('select tally_expire_grant($1, coalesce($2::timestamptz, now()))', [rollover.id, context.now]);
  }
  if (credits <= 0) return;
  await clawBackFromPeriod(context, accountId, subscriptionId, { start: monthStart, end: monthEnd }, credits, key, {
    subscription: subscriptionId,
    period_start: monthStart,
    period_end: monthEnd,
    reason: 'the subscription ended at or before the month started',
  });
  if (paymentId !== null) {
    await context.client.query('update payments set prorated_back = prorated_back + $2 where id = $1', [paymentId, credits]);
  }
}
