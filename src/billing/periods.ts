import type { Plan } from './catalog.js';
import { grantOnce, type EffectContext } from './effect-context.js';

/**
 * Subscription credits by period: one grant per period under `period:{subscription}:{start}`,
 * rollover of unused credits between consecutive periods, and the months of a yearly plan.
 */
export interface Period {
  start: number;
  end: number;
}

export interface PeriodGrantRequest {
  accountId: string;
  subscriptionId: string;
  plan: Plan;
  period: Period;
  paymentId: number | undefined;
  reference: Record<string, unknown>;
}

interface PeriodGrantRow {
  id: number;
  period_start: number;
  period_end: number;
}

/** Adds months in UTC, clamping to the end of a shorter month (Jan 31 + 1 month = Feb 28/29). */
export function addMonths(unixSeconds: number, months: number): number {
  const date = new Date(unixSeconds * 1000);
  const target = new Date(Date.UTC(date.getUTCFullYear(), date.getUTCMonth() + months, 1, date.getUTCHours(), date.getUTCMinutes(), date.getUTCSeconds()));
  const lastDay = new Date(Date.UTC(target.getUTCFullYear(), target.getUTCMonth() + 1, 0)).getUTCDate();
  target.setUTCDate(Math.min(date.getUTCDate(), lastDay));
  return Math.floor(target.getTime() / 1000);
}

/** The twelve months of a yearly period; the last one ends with the period. */
export function monthsOf(period: Period): Period[] {
  const months: Period[] = [];
  for (let index = 0; index < 12; index += 1) {
    const start = addMonths(period.start, index);
    if (start >= period.end) break;
    months.push({ start, end: Math.min(addMonths(period.start, index + 1), period.end) });
  }
  return months;
}

async function periodGrantEndingAt(context: EffectContext, accountId: string, subscriptionId: string, end: number): Promise<PeriodGrantRow | undefined> {
  const { rows } = await context.client.query<PeriodGrantRow>(
    `select id, (reference->>'period_start')::bigint as period_start, (reference->>'period_end')::bigint as period_end
     from grants where account_id = $1 and grant_key like 'period:%' and reference->>'subscription' = $2
       and (reference->>'period_end')::bigint = $3`,
    [accountId, subscriptionId, end],
  );
  return rows[0];
}

async function periodGrantStartingAt(context: EffectContext, accountId: string, subscriptionId: string, start: number): Promise<PeriodGrantRow | undefined> {
  const { rows } = await context.client.query<PeriodGrantRow>(
    `select id, (reference->>'period_start')::bigint as period_start, (reference->>'period_end')::bigint as period_end
     from grants where account_id = $1 and grant_key = $2`,
    [accountId, `period:${subscriptionId}:${start}`],
  );
  return rows[0];
}

/**
 * Grants one period's credits, then settles rollover on both sides of it: from the period
 * before into this one, and from this one into a period after it that arrived first. Events
 * may come in any order; both sides end in the same grants.
 */
export async function grantPeriod(context: EffectContext, request: PeriodGrantRequest): Promise<void> {
  const { accountId, subscriptionId, plan, period } = request;
  await grantOnce(context, {
    accountId,
    source: 'subscription',
    credits: plan.credits_per_month,
    expiresAt: new Date(period.end * 1000),
    key: `period:${subscriptionId}:${period.start}`,
    reference: { ...request.reference, subscription: subscriptionId, plan: plan.id, period_start: period.start, period_end: period.end },
    paymentId: request.paymentId,
  });
  if (plan.rollover === undefined) return;
  const previous = await periodGrantEndingAt(context, accountId, subscriptionId, period.start);
  if (previous !== undefined) await rollOver(context, accountId, subscriptionId, plan, previous, period);
  const current = await periodGrantStartingAt(context, accountId, subscriptionId, period.start);
  const next = await periodGrantStartingAt(context, accountId, subscriptionId, period.end);
  if (current !== undefined && next !== undefined) await rollOver(context, accountId, subscriptionId, plan, current, { start: next.period_start, end: next.period_end });
}

/**
 * Ends a period early: its period grant, the rollover it received and its upgrades expire now.
 * Answers the credits they left unused (expired now or before).
 */
async function endPeriod(context: EffectContext, accountId: string, subscriptionId: string, periodStart: number): Promise<number> {
  const { rows } = await context.client.query<{ id: number }>(
    `select id from grants where account_id = $1 and (grant_key = $2 or grant_key = $3 or grant_key like $4) order by id`,
    [accountId, `period:${subscriptionId}:${periodStart}`, `rollover:${subscriptionId}:${periodStart}`, `upgrade:${subscriptionId}:${periodStart}:%`],
  );
  let unused = 0;
  for (const row of rows) {
    const expired = await context.client.query<{ expired: number }>('select tally_expire_grant($1, $2) as expired', [row.id, context.now ?? new Date()]);
    unused += expired.rows[0]?.expired ?? 0;
  }
  return unused;
}

/**
 * A grant that lands in a period already ended by a renewal (its events came late) ends at
 * once, as it would have had it come in time.
 */
async function expireIfPeriodEnded(context: EffectContext, accountId: string, subscriptionId: string, periodStart: number, grantId: number): Promise<void> {
  const { rowCount } = await context.client.query(
    `select 1 from grants g join entries e on e.account_id = g.account_id and e.idempotency_key = 'expire:grant_' || g.id
     where g.account_id = $1 and g.grant_key = $2`,
    [accountId, `period:${subscriptionId}:${periodStart}`],
  );
  if (rowCount !== 0) await context.client.query('select tally_expire_grant($1, $2)', [grantId, context.now ?? new Date()]);
}

/**
 * Unused credits of the ending period (its period grant, the rollover it received, its
 * upgrades), up to the plan's maximum, move into a rollover grant that expires with the new
 * period; the rest expire. The ending period ends now if it has not yet.
 */
async function rollOver(context: EffectContext, accountId: string, subscriptionId: string, plan: Plan, from: PeriodGrantRow, into: Period): Promise<void> {
  const key = `rollover:${subscriptionId}:${into.start}`;
  const existing = await context.client.query('select 1 from grants where account_id = $1 and grant_key = $2', [accountId, key]);
  if (existing.rowCount !== 0 || plan.rollover === undefined) return;
  const credits = Math.min(await endPeriod(context, accountId, subscriptionId, from.period_start), plan.rollover.max_credits);
  if (credits <= 0) return;
  const { grantId } = await grantOnce(context, {
    accountId,
    source: 'rollover',
    credits,
    expiresAt: new Date(into.end * 1000),
    key,
    reference: { subscription: subscriptionId, from_grant: `grant_${from.id}`, period_start: into.start, period_end: into.end },
  });
  await expireIfPeriodEnded(context, accountId, subscriptionId, into.start, grantId);
}

/**
 * An upgrade inside a period: the new plan's allowance minus what this period already granted
 * (its period grant and earlier upgrades), never negative.
 */
export async function grantUpgrade(context: EffectContext, request: Omit<PeriodGrantRequest, 'period'> & { within: Period }): Promise<'granted' | 'nothing' | 'period-unknown'> {
  const { accountId, subscriptionId, plan } = request;
  const { rows } = await context.client.query<PeriodGrantRow>(
    `select id, (reference->>'period_start')::bigint as period_start, (reference->>'period_end')::bigint as period_end
     from grants where account_id = $1 and grant_key like 'period:%' and reference->>'subscription' = $2
       and (reference->>'period_start')::bigint <= $3 and (reference->>'period_end')::bigint >= $4
     order by (reference->>'period_start')::bigint desc limit 1`,
    [accountId, subscriptionId, request.within.start, request.within.end],
  );
  const period = rows[0];
  if (period === undefined) return 'period-unknown';
  const granted = await context.client.query<{ credits: number }>(
    `select coalesce(sum(amount), 0)::bigint as credits from grants
     where account_id = $1 and (grant_key = $2 or grant_key like $3)`,
    [accountId, `period:${subscriptionId}:${period.period_start}`, `upgrade:${subscriptionId}:${period.period_start}:%`],
  );
  const difference = plan.credits_per_month - (granted.rows[0]?.credits ?? 0);
  if (difference <= 0) return 'nothing';
  const { grantId } = await grantOnce(context, {
    accountId,
    source: 'subscription',
    credits: difference,
    expiresAt: new Date(period.period_end * 1000),
    key: `upgrade:${subscriptionId}:${period.period_start}:${plan.id}`,
    reference: { ...request.reference, subscription: subscriptionId, plan: plan.id, upgrade_of_period: period.period_start },
    paymentId: request.paymentId,
  });
  await expireIfPeriodEnded(context, accountId, subscriptionId, period.period_start, grantId);
  return 'granted';
}
