import type { Database } from '../db/database.js';
import { raiseAlert } from '../ops/alerts.js';
import type { Catalog } from './catalog.js';
import { lockAccount, type EffectContext } from './effect-context.js';
import type { ClaimHasher } from './trials.js';
import { grantPeriod } from './periods.js';

/**
 * The scheduler of yearly plans: each due month is claimed with FOR UPDATE SKIP LOCKED and
 * granted in its own transaction under `period:{subscription}:{month start}`, so several
 * processes may run it at once. A cancelled subscription's later months are skipped.
 */
const endedStatuses = new Set(['canceled', 'incomplete_expired', 'unpaid']);

interface DueMonth {
  subscription_id: string;
  month_start: number;
  month_end: number;
  account_id: string;
  plan_id: string;
  payment_id: number | null;
  status: string | null;
}

/** Grants one due month; answers whether there was one. */
export async function grantDueMonth(db: Database, catalog: Catalog, hasher: ClaimHasher, now: Date | null): Promise<boolean> {
  return db.withTransaction(async (client) => {
    const { rows } = await client.query<DueMonth>(
      `select y.subscription_id, extract(epoch from y.month_start)::bigint as month_start,
         extract(epoch from y.month_end)::bigint as month_end, y.account_id, y.plan_id, y.payment_id, s.status
       from yearly_schedule y left join subscriptions s on s.id = y.subscription_id
       where y.granted_at is null and y.month_start <= coalesce($1, now())
       order by y.month_start limit 1 for update of y skip locked`,
      [now],
    );
    const due = rows[0];
    if (due === undefined) return false;
    const plan = catalog.plans.find((candidate) => candidate.id === due.plan_id);
    const skip = plan === undefined || (due.status !== null && endedStatuses.has(due.status));
    if (plan !== undefined && !skip) {
      const context: EffectContext = {
        client,
        catalog,
        hasher,
        event: { id: `schedule:${due.subscription_id}:${due.month_start}`, type: 'schedule.yearly_month', created: due.month_start, object: {} },
        prepared: {},
        now,
      };
      await lockAccount(context, due.account_id);
      await grantPeriod(context, {
        accountId: due.account_id,
        subscriptionId: due.subscription_id,
        plan,
        period: { start: due.month_start, end: due.month_end },
        paymentId: due.payment_id ?? undefined,
        reference: { schedule: 'yearly' },
      });
    }
    if (plan === undefined) {
      await raiseAlert(client, {
        kind: 'schedule_skipped',
        key: `schedule_skipped:${due.subscription_id}`,
        severity: 'warning',
        message: `yearly month of ${due.subscription_id} skipped: plan ${due.plan_id} is no longer in the catalog`,
        accountId: due.account_id,
      });
    }
    await client.query(`update yearly_schedule set granted_at = now(), outcome = $3 where subscription_id = $1 and month_start = to_timestamp($2)`, [
      due.subscription_id,
      due.month_start,
      skip ? 'skipped' : 'granted',
    ]);
    return true;
  });
}
