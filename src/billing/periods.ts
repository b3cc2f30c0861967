import type { Plan } from './catalog.js';
import {
  billingPeriodEndingAt,
  creditPeriodsOf,
  lineContributions,
  periodKey,
  type Contribution,
  type Direction,
  type Period,
} from './credit-rule.js';
import { RetryLater, grantOnce, type EffectContext } from './effect-context.js';

/**
 * Subscription credits by credit period (the credit rule, see credit-rule.ts): one period grant
 * per subscription item and credit period under `period:{subscription}:{item}:{start}` (grants
 * made before 0020 keep `period:{subscription}:{start}`), each proration line's move under
 * `proration:{line}`, rollover of unused credits between consecutive periods, and the later
 * months of a yearly period kept as scheduled credits until they start.
 */
export type { Period } from './credit-rule.js';

export interface PeriodGrantRequest {
  accountId: string;
  subscriptionId: string;
  /** The item the period line bills; unknown for months scheduled before 0020 (the old key). */
  subscriptionItem: string | undefined;
  plan: Plan;
  period: Period;
  /** The period's credits: the plan's monthly credits × seats, or the net of a yearly month's lines. */
  credits: number;
  paymentId: number | undefined;
  reference: Record<string, unknown>;
}

interface PeriodGrantRow {
  id: number;
  period_start: number;
  period_end: number;
}

const periodGrantColumns = `id, (reference->>'period_start')::bigint as period_start, (reference->>'period_end')::bigint as period_end`;

async function periodGrantEndingAt(
  context: EffectContext,
  accountId: string,
  subscriptionId: string,
  end: number,
): Promise<PeriodGrantRow | undefined> {
  const { rows } = await context.client.query<PeriodGrantRow>(
    `select ${periodGrantColumns} from grants where account_id = $1 and grant_key like 'period:%' and reference->>'subscription' = $2
       and (reference->>'period_end')::bigint = $3`,
    [accountId, subscriptionId, end],
  );
  return rows[0];
}

/** A period grant of the credit period starting at `start` (any item's: rollover moves the whole period). */
async function periodGrantStartingAt(
  context: EffectContext,
  accountId: string,
  subscriptionId: string,
  start: number,
): Promise<PeriodGrantRow | undefined> {
  const { rows } = await context.client.query<PeriodGrantRow>(
    `select ${periodGrantColumns} from grants where account_id = $1 and grant_key like 'period:%' and reference->>'subscription' = $2
       and (reference->>'period_start')::bigint = $3 order by id limit 1`,
    [accountId, subscriptionId, start],
  );
  return rows[0];
}

/**
 * Whether the period already has its grant of this plan under the key used before 0020
 * (`period:{subscription}:{start}`, which named no item): an invoice applied before the upgrade
 * and applied again after it (its other event, a replay) must not grant the period twice. A
 * subscription never has two items of one price, so the plan names the item. The unique index
 * grants_one_period_per_plan backs this.
 */
async function grantedUnderOldKey(context: EffectContext, request: PeriodGrantRequest): Promise<boolean> {
  if (request.subscriptionItem === undefined) return false;
  const { rowCount } = await context.client.query(
    `select 1 from grants where account_id = $1 and grant_key = $2 and reference->>'plan' = $3`,
    [request.accountId, periodKey(request.subscriptionId, undefined, request.period.start), request.plan.id],
  );
  return rowCount !== 0;
}

/**
 * Grants one credit period's credits, then settles rollover on both sides of it: from the
 * period before into this one, and from this one into a period after it that arrived first.
 * Events may come in any order; both sides end in the same grants.
 */
export async function grantPeriod(context: EffectContext, request: PeriodGrantRequest): Promise<void> {
  const { accountId, subscriptionId, plan, period } = request;
  if (request.credits <= 0 || (await grantedUnderOldKey(context, request))) return;
  await grantOnce(context, {
    accountId,
    source: 'subscription',
    credits: request.credits,
    expiresAt: new Date(period.end * 1000),
    key: periodKey(subscriptionId, request.subscriptionItem, period.start),
    reference: {
      ...request.reference,
      subscription: subscriptionId,
      ...(request.subscriptionItem === undefined ? {} : { subscription_item: request.subscriptionItem }),
      plan: plan.id,
      period_start: period.start,
      period_end: period.end,
    },
    paymentId: request.paymentId,
    countsTowardsPayment: false,
  });
  const previous = await periodGrantEndingAt(context, accountId, subscriptionId, period.start);
  if (previous !== undefined) await rollOver(context, accountId, subscriptionId, previous, period);
  const current = await periodGrantStartingAt(context, accountId, subscriptionId, period.start);
  const next = await periodGrantStartingAt(context, accountId, subscriptionId, period.end);
  if (current !== undefined && next !== undefined)
    await rollOver(context, accountId, subscriptionId, current, { start: next.period_start, end: next.period_end });
}

/**
 * How many credits an ending period may roll over: the smallest `max_credits` of the plans
 * billed in it (its period grant and its proration grants), none when one of them has no
 * rollover. A short upgrade just before a renewal therefore cannot raise the cap.
 */
async function rolloverCapOfPeriod(
  context: EffectContext,
  accountId: string,
  subscriptionId: string,
  periodStart: number,
): Promise<number | undefined> {
  const { rows } = await context.client.query<{ plan: string }>(
    `select distinct reference->>'plan' as plan from grants where account_id = $1 and source = 'subscription'
       and reference->>'subscription' = $2 and (reference->>'period_start')::bigint = $3 and reference ? 'plan'`,
    [accountId, subscriptionId, periodStart],
  );
  const caps = rows.map((row) => context.catalog.plans.find((candidate) => candidate.id === row.plan)?.rollover?.max_credits);
  if (caps.length === 0 || caps.some((cap) => cap === undefined)) return undefined;
  return Math.min(...caps.map((cap) => cap ?? 0));
}

/**
 * Ends a credit period early: every subscription grant made for it (its period grant, the
 * rollover it received, its proration grants, and upgrades of earlier versions) expires now.
 * Answers the credits they left unused (expired now or before).
 */
async function endPeriod(context: EffectContext, accountId: string, subscriptionId: string, periodStart: number): Promise<number> {
  const { rows } = await context.client.query<{ id: number }>(
    `select id from grants where account_id = $1 and source in ('subscription', 'rollover')
       and ((reference->>'subscription' = $2 and (reference->>'period_start')::bigint = $3) or grant_key like $4)
     order by id`,
    [accountId, subscriptionId, periodStart, `upgrade:${subscriptionId}:${periodStart}:%`],
  );
  let unused = 0;
  for (const row of rows) {
    const expired = await context.client.query<{ expired: number }>(
      'select tally_expire_grant($1, coalesce($2::timestamptz, now())) as expired',
      [row.id, context.now],
    );
    unused += Number(expired.rows[0]?.expired ?? 0);
  }
  return unused;
}

/** Whether a credit period was already ended by a rollover (one of its period grants has an expire entry). */
async function periodEnded(context: EffectContext, accountId: string, subscriptionId: string, periodStart: number): Promise<boolean> {
  const { rowCount } = await context.client.query(
    `select 1 from grants g join entries e on e.account_id = g.account_id and e.idempotency_key = 'expire:grant_' || g.id
     where g.account_id = $1 and g.grant_key like 'period:%' and g.reference->>'subscription' = $2
       and (g.reference->>'period_start')::bigint = $3 limit 1`,
    [accountId, subscriptionId, periodStart],
  );
  return rowCount !== 0;
}

/**
 * A grant that lands in a period already ended by a renewal (its events came late) ends at
 * once, as it would have had it come in time.
 */
async function expireIfPeriodEnded(
  context: EffectContext,
  accountId: string,
  subscriptionId: string,
  periodStart: number,
  grantId: number,
): Promise<void> {
  if (await periodEnded(context, accountId, subscriptionId, periodStart)) {
    await context.client.query('select tally_expire_grant($1, coalesce($2::timestamptz, now()))', [grantId, context.now]);
  }
}

/**
 * Unused credits of the ending period (its period grant, the rollover it received, its
 * proration grants), up to the plan's maximum, move into a rollover grant that expires with
 * the new period; the rest expire. The ending period ends now if it has not yet.
 */
async function rollOver(
  context: EffectContext,
  accountId: string,
  subscriptionId: string,
  from: PeriodGrantRow,
  into: Period,
): Promise<void> {
  const key = `rollover:${subscriptionId}:${into.start}`;
  const existing = await context.client.query('select 1 from grants where account_id = $1 and grant_key = $2', [accountId, key]);
  const cap = await rolloverCapOfPeriod(context, accountId, subscriptionId, from.period_start);
  if (existing.rowCount !== 0 || cap === undefined) return;
  const credits = Math.min(await endPeriod(context, accountId, subscriptionId, from.period_start), cap);
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

/** Remembers a billing period seen on a paid invoice (a proration line needs its length). */
export async function recordBillingPeriod(
  context: EffectContext,
  accountId: string,
  subscriptionId: string,
  interval: 'month' | 'year',
  period: Period,
): Promise<void> {
  await context.client.query(
    `insert into billing_periods (subscription_id, period_start, period_end, billing_interval, account_id)
     values ($1, $2, $3, $4, $5) on conflict do nothing`,
    [subscriptionId, period.start, period.end, interval, accountId],
  );
}

/**
 * The billing period a proration line belongs to: the one, seen on a paid invoice, that ends
 * where the line ends. Until that invoice is applied the line waits (its period's credits must
 * be granted before a change can move them, in whatever order the events arrive).
 */
async function billingPeriodOfLine(
  context: EffectContext,
  subscriptionId: string,
  interval: 'month' | 'year',
  line: Period,
): Promise<Period> {
  const { rows } = await context.client.query<{ start: number; end: number }>(
    `select period_start as start, period_end as end from billing_periods
     where subscription_id = $1 and period_end = $2 and period_start <= $3 and billing_interval = $4 limit 1`,
    [subscriptionId, line.end, line.start, interval],
  );
  const known = rows[0];
  if (known !== undefined) return { start: Number(known.start), end: Number(known.end) };
  // Stripe delivers a period's invoice within minutes of its changes; a line still without its
  // period after that belongs to a period Tally never saw paid (paid before Tally ran, or voided).
  // Counted back from its end, as Stripe counts periods from their anchor, it moves its credits
  // rather than waiting until it fails.
  if ((context.event.receivedSecondsAgo ?? 0) < periodWaitSecondsMax) {
    throw new RetryLater(
      `the ${interval}ly period of ${subscriptionId} ending ${new Date(line.end * 1000).toISOString()} has not been paid yet`,
    );
  }
  return billingPeriodEndingAt(interval, line.end);
}

/** How long a proration line waits for the invoice of its period before counting the period back from its end. */
export const periodWaitSecondsMax = 15 * 60;

/** The credit period of a subscription that contains an instant, among the billing periods Tally saw. */
async function creditPeriodAt(context: EffectContext, subscriptionId: string, at: number): Promise<Period | undefined> {
  // The newest billing period begun by then, if it still runs: an older one that an interval
  // change replaced (a year left for months) is not current, however far it reached.
  const { rows } = await context.client.query<{ start: number; end: number; billing_interval: 'month' | 'year' }>(
    `select period_start as start, period_end as end, billing_interval from billing_periods
     where subscription_id = $1 and period_start <= $2 order by period_start desc limit 1`,
    [subscriptionId, at],
  );
  const row = rows[0];
  if (row === undefined || Number(row.end) <= at) return undefined;
  return creditPeriodsOf(row.billing_interval, { start: Number(row.start), end: Number(row.end) }).find(
    (period) => period.start <= at && at < period.end,
  );
}

export interface LineRequest {
  accountId: string;
  subscriptionId: string;
  subscriptionItem: string | undefined;
  plan: Plan;
  interval: 'month' | 'year';
  lineKey: string;
  quantity: number;
  billed: Period;
  direction: Direction;
  paymentId: number | undefined;
  /** When the invoice was paid: credit periods that started by then are moved now, later ones when they start. */
  paidAt: number;
  /** The subscription of the invoice that paid the line (another one's for a pending line of an ended subscription). */
  invoiceSubscriptionId: string;
  reference: Record<string, unknown>;
}

/** A proration line: moves credits now for the credit periods already started, schedules the rest. */
export async function applyProrationLine(context: EffectContext, request: LineRequest): Promise<number> {
  const billingPeriod = await billingPeriodOfLine(context, request.subscriptionId, request.interval, request.billed);
  const contributions = lineContributions(
    { creditsPerMonth: request.plan.credits_per_month, quantity: request.quantity, billed: request.billed, direction: request.direction },
    request.interval,
    billingPeriod,
  );
  const moved = request.direction === 'clawback' ? await boundByPayment(context, request, billingPeriod, contributions) : contributions;
  // A change is paid when it happens or later, never before: an older paid_at is not to be believed.
  const paidAt = Math.max(request.paidAt, request.billed.start);
  const started = moved.filter((contribution) => contribution.period.start <= paidAt);
  const later = moved.filter((contribution) => contribution.period.start > paidAt);
  await moveNow(context, { ...request, paidAt }, started, request.lineKey);
  await schedule(context, { ...request, paidAt }, later);
  return moved.reduce((sum, contribution) => sum + contribution.credits, 0);
}

/**
 * A negative proration ("unused time on ...") takes back credits an earlier payment granted for
 * the period: the newest payment, other than the line's own invoice, that granted the line's
 * plan in that billing period (a seat change's invoice credits the seats paid before it). All
 * clawbacks of one payment (refunds, disputes, these) together never exceed what it granted
 * (SPEC, invariant 18), whichever came first: the line takes at most what the payment has left,
 * cutting its latest months first (a refund cancelled those first), and counts what it takes in
 * the payment's `prorated_back`. A line applied before (a replay) moves nothing again. A period
 * Tally never saw paid has no payment to bound it.
 */
async function boundByPayment(
  context: EffectContext,
  request: LineRequest,
  billingPeriod: Period,
  contributions: Contribution[],
): Promise<Contribution[]> {
  const applied = await context.client.query(
    `select 1 from entries where account_id = $1 and idempotency_key = $2
     union all select 1 from yearly_schedule where subscription_id = $3 and line_key = $2 limit 1`,
    [request.accountId, request.lineKey, request.subscriptionId],
  );
  // Applied before (invoice.paid and invoice.payment_succeeded both carry the line, and an
  // operator may replay): the first application wrote all it should, in one transaction. The
  // months the cap cut have no row of the line, so handing them on would schedule them now.
  if (applied.rowCount !== 0) return [];
  const { rows } = await context.client.query<{ id: number; left: number }>(
    `select p.id, greatest(p.credits - p.clawed_back - p.prorated_back, 0)::bigint as left from payments p where p.id = (
       select max(payment_id) from (
         select payment_id from grants where account_id = $1 and source = 'subscription' and reference->>'subscription' = $2
           and reference->>'plan' = $3 and (reference->>'period_start')::bigint >= $4 and (reference->>'period_start')::bigint < $5
         union all
         select payment_id from yearly_schedule where subscription_id = $2 and plan_id = $3 and credits > 0
           and month_start >= to_timestamp($4) and month_start < to_timestamp($5)) paid
       where payment_id is distinct from $6)`,
    [request.accountId, request.subscriptionId, request.plan.id, billingPeriod.start, billingPeriod.end, request.paymentId ?? null],
  );
  const payment = rows[0];
  if (payment === undefined) return contributions;
  let left = Number(payment.left);
  const bounded = [...contributions]
    .sort((a, b) => a.period.start - b.period.start)
    .map((contribution) => {
      const credits = Math.min(contribution.credits, left);
      left -= credits;
      return { ...contribution, credits };
    })
    .filter((contribution) => contribution.credits > 0);
  const taken = bounded.reduce((sum, contribution) => sum + contribution.credits, 0);
  if (taken > 0) await context.client.query('update payments set prorated_back = prorated_back + $2 where id = $1', [payment.id, taken]);
  return bounded;
}

/**
 * The credit period current when a line was paid, for credits whose own period had ended by
 * then: the line's subscription's, or, when that one has no period then (it ended, and its
 * pending line rode on another subscription's invoice), the paying invoice's subscription's.
 * Answers it with the subscription it belongs to; none: the line's own period.
 */
async function periodAtPayment(context: EffectContext, request: LineRequest, own: Period): Promise<{ period: Period; of: string }> {
  if (own.end > request.paidAt) return { period: own, of: request.subscriptionId };
  const current = await creditPeriodAt(context, request.subscriptionId, request.paidAt);
  if (current !== undefined) return { period: current, of: request.subscriptionId };
  const paying =
    request.invoiceSubscriptionId === request.subscriptionId
      ? undefined
      : await creditPeriodAt(context, request.invoiceSubscriptionId, request.paidAt);
  return paying === undefined ? { period: own, of: request.subscriptionId } : { period: paying, of: request.invoiceSubscriptionId };
}

/**
 * Moves credits into or out of the credit period they belong to. Credits for a period that had
 * ended when the invoice was paid go into the period current at payment, expiring with it.
 */
async function moveNow(context: EffectContext, request: LineRequest, contributions: Contribution[], key: string): Promise<void> {
  const credits = contributions.reduce((sum, contribution) => sum + contribution.credits, 0);
  const own = contributions[0]?.period;
  if (credits <= 0 || own === undefined) return;
  const { period, of } = await periodAtPayment(context, request, own);
  const reference = {
    ...request.reference,
    subscription: request.subscriptionId,
    plan: request.plan.id,
    period_start: period.start,
    period_end: period.end,
    line: request.lineKey,
  };
  if (request.direction === 'grant') {
    const { grantId } = await grantOnce(context, {
      accountId: request.accountId,
      source: 'subscription',
      credits,
      expiresAt: new Date(period.end * 1000),
      key,
      reference,
      paymentId: request.paymentId,
      countsTowardsPayment: false,
    });
    await expireIfPeriodEnded(context, request.accountId, of, period.start, grantId);
    return;
  }
  // A clawback prefers the credits of the period the line billed (none are left once it ended),
  // then takes in spend order: never the new period's before credits that expire sooner.
  await clawBackFromPeriod(context, request.accountId, request.subscriptionId, own, credits, key, reference);
}

/** Claws credits back, first from the grants of their own credit period, then in spend order; beyond what is left, debt. */
export async function clawBackFromPeriod(
  context: EffectContext,
  accountId: string,
  subscriptionId: string,
  period: Period,
  credits: number,
  key: string,
  reference: Record<string, unknown>,
): Promise<void> {
  await context.client.query(
    `select tally_clawback_from($1, $2, $3, (select coalesce(array_agg(id), '{}') from grants where account_id = $1
       and source in ('subscription', 'rollover') and reference->>'subscription' = $4 and (reference->>'period_start')::bigint = $5), $6, $7)`,
    [accountId, credits, key, subscriptionId, period.start, { ...reference, event: context.event.id }, context.now],
  );
}

/**
 * Keeps what a line moves in months that have not started yet; the scheduler grants each
 * month's net when it starts. A month the scheduler already granted (this line came late) is
 * moved at once under a key of its own.
 */
async function schedule(context: EffectContext, request: LineRequest, contributions: Contribution[]): Promise<void> {
  // A period line kept before 0020 has the line key `period` (no item); applied again after it,
  // the line is the same when the plan is (a subscription never has two items of one price).
  const legacyPeriod = request.lineKey.startsWith('period:');
  for (const contribution of contributions) {
    const signed = contribution.direction === 'grant' ? contribution.credits : -contribution.credits;
    const { rows } = await context.client.query<{ own: boolean; outcome: string | null }>(
      `select own, outcome from (select line_key = $3 or ($4 and line_key = 'period' and plan_id = $5) as own, outcome, granted_at
         from yearly_schedule where subscription_id = $1 and month_start = to_timestamp($2)) month
       where own or granted_at is not null order by own desc, outcome = 'granted' desc limit 1`,
      [request.subscriptionId, contribution.period.start, request.lineKey, legacyPeriod, request.plan.id],
    );
    // The line is already kept for this month (the event is applied again, as by a replay).
    if (rows[0]?.own === true) continue;
    const alreadyGranted = rows[0] !== undefined;
    // A month set aside (the subscription ended at or before its start) gets nothing, late or not.
    const setAside = alreadyGranted && rows[0]?.outcome !== 'granted' && rows[0]?.outcome !== 'netted';
    if (alreadyGranted && !setAside) {
      await moveNow(
        context,
        { ...request, paidAt: contribution.period.start },
        [contribution],
        `late:${request.subscriptionId}:${contribution.period.start}:${request.lineKey}`,
      );
    }
    await context.client.query(
      `insert into yearly_schedule (subscription_id, month_start, line_key, account_id, month_end, plan_id, credits, payment_id, line_start,
         granted_at, outcome, subscription_item)
       values ($1, to_timestamp($2), $3, $4, to_timestamp($5), $6, $7, $8, to_timestamp($9), case when $10 then now() end,
         case when $11 then 'skipped' when $10 then 'granted' end, $12)
       on conflict do nothing`,
      [
        request.subscriptionId,
        contribution.period.start,
        request.lineKey,
        request.accountId,
        contribution.period.end,
        request.plan.id,
        signed,
        request.paymentId ?? null,
        request.billed.start,
        alreadyGranted,
        setAside,
        request.subscriptionItem ?? null,
      ],
    );
  }
}

/**
 * A period line (not a proration): the whole billing period at the plan's credits × seats. A
 * monthly period is granted now; a yearly period grants its first month now and keeps the
 * other eleven for the scheduler.
 */
export async function applyPeriodLine(context: EffectContext, request: Omit<LineRequest, 'direction' | 'lineKey'>): Promise<number> {
  const { accountId, subscriptionId, plan, interval } = request;
  await recordBillingPeriod(context, accountId, subscriptionId, interval, request.billed);
  const contributions = lineContributions(
    { creditsPerMonth: plan.credits_per_month, quantity: request.quantity, billed: request.billed, direction: 'grant' },
    interval,
    request.billed,
  );
  const [first, ...later] = contributions;
  if (first !== undefined) {
    await grantPeriod(context, {
      accountId,
      subscriptionId,
      subscriptionItem: request.subscriptionItem,
      plan,
      period: first.period,
      credits: first.credits,
      paymentId: request.paymentId,
      reference: request.reference,
    });
  }
  // Each item's months are kept under a line key of their own (two items of one yearly
  // subscription would otherwise share the month's `period` row).
  const lineKey = request.subscriptionItem === undefined ? 'period' : `period:${request.subscriptionItem}`;
  await schedule(context, { ...request, direction: 'grant', lineKey }, later);
  return contributions.reduce((sum, contribution) => sum + contribution.credits, 0);
}
