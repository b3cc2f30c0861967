import type { Catalog } from '../billing/catalog.js';
import type { Database } from '../db/database.js';
import { raiseAlert } from './alerts.js';

/**
 * Alert rules evaluated on a schedule (the others are raised where their event happens: a
 * dispute, a refused trial, a failed event, debt, the breaker opening, reconciliation).
 */
export const allowanceFactorMax = 1.5;
export const webhookFailureRatioMax = 0.1;
export const webhookFailureWindowMinutes = 15;
/** Below this many events in the window a ratio says little. */
export const webhookFailureSampleMin = 10;

/**
 * Grants larger than 1.5 times the allowance of the account's plan, since the last look. The
 * rule's position row is locked for the look, so processes take turns and each grant is
 * looked at once.
 */
export async function checkGrantsOverAllowance(db: Database, catalog: Catalog): Promise<number> {
  return db.withTransaction(async (client) => {
    await client.query(`insert into alert_rule_state (rule, position) values ('grant_over_allowance', 0) on conflict do nothing`);
    const state = await client.query<{ position: number }>(`select position from alert_rule_state where rule = 'grant_over_allowance' for update`);
    const { rows } = await client.query<{ id: number; account_id: string; amount: number; source: string; plan_id: string | null }>(
      `select g.id, g.account_id, g.amount, g.source,
         (select s.plan_id from subscriptions s where s.account_id = g.account_id order by s.event_created desc limit 1) as plan_id
       from grants g where g.id > $1 order by g.id limit 5000`,
      [state.rows[0]?.position ?? 0],
    );
    let raised = 0;
    for (const grant of rows) {
      const plan = catalog.plans.find((candidate) => candidate.id === grant.plan_id);
      if (plan === undefined || grant.amount <= allowanceFactorMax * plan.credits_per_month) continue;
      raised += 1;
      await raiseAlert(client, {
        kind: 'grant_over_allowance',
        key: `grant_over_allowance:grant_${grant.id}`,
        severity: 'warning',
        message: `grant_${grant.id} (${grant.source}) of ${grant.amount} credits to ${grant.account_id} is over 1.5 times plan ${plan.id}'s ${plan.credits_per_month}`,
        details: { grant_id: `grant_${grant.id}`, amount: grant.amount, plan: plan.id },
        accountId: grant.account_id,
      });
    }
    const last = rows[rows.length - 1];
    if (last !== undefined) {
      await client.query(`update alert_rule_state set position = $1, checked_at = now() where rule = 'grant_over_allowance'`, [last.id]);
    }
    return raised;
  });
}

/** More than 10 % of the webhook events received in the last 15 minutes failed at least once. */
export async function checkWebhookFailureRate(db: Database): Promise<boolean> {
  const { rows } = await db.query<{ total: number; failing: number }>(
    `select count(*)::int as total, count(*) filter (where status = 'failed' or last_error is not null)::int as failing
     from webhook_events where received_at > now() - make_interval(mins => $1)`,
    [webhookFailureWindowMinutes],
  );
  const { total = 0, failing = 0 } = rows[0] ?? {};
  if (total < webhookFailureSampleMin || failing / total <= webhookFailureRatioMax) return false;
  await raiseAlert(db.pool, {
    kind: 'webhook_failure_rate',
    key: 'webhook_failure_rate',
    severity: 'critical',
    message: `${failing} of ${total} webhook events in the last ${webhookFailureWindowMinutes} minutes failed (over ${webhookFailureRatioMax * 100} %)`,
    details: { total, failing },
  });
  return true;
}
