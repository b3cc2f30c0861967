import type { Catalog } from '../billing/catalog.js';
import type { Database } from '../db/database.js';
import type { Alerts, NewGrant, Queryable } from '../ports/alerts.js';
import { raiseAlert, resolveAlert } from './alerts.js';

/**
 * Alert rules with thresholds: the grant rule where a grant is made, the webhook failure rate
 * on a schedule. (The others are raised where their event happens: a dispute, a refused trial,
 * a failed event, debt, the breaker opening, reconciliation.)
 */
export const allowanceFactorMax = 1.5;
export const webhookFailureRatioMax = 0.1;
export const webhookFailureWindowMinutes = 15;
/** Below this many events in the window a ratio says little. */
export const webhookFailureSampleMin = 10;

/**
 * A grant larger than 1.5 times the monthly allowance of the account's current plan raises an
 * alert. It is looked at when it is made: inside the event's transaction for Stripe's grants
 * (the alert commits with the grant), and right after the call for an operator's grant.
 */
export async function checkGrantAgainstPlan(client: Queryable, catalog: Catalog, grant: NewGrant): Promise<boolean> {
  const { rows } = await client.query<{ plan_id: string; quantity: number }>(
    'select plan_id, quantity from subscriptions where account_id = $1 order by event_created desc limit 1',
    [grant.accountId],
  );
  const plan = catalog.plans.find((candidate) => candidate.id === rows[0]?.plan_id);
  // The allowance is per seat: a period grant for five seats is five allowances.
  const allowance = (plan?.credits_per_month ?? 0) * Math.max(rows[0]?.quantity ?? 1, 1);
  if (plan === undefined || grant.amount <= allowanceFactorMax * allowance) return false;
  await raiseAlert(client, {
    kind: 'grant_over_allowance',
    key: `grant_over_allowance:grant_${grant.grantId}`,
    severity: 'warning',
    message: `grant_${grant.grantId} (${grant.source}) of ${grant.amount} credits to ${grant.accountId} is over 1.5 times the allowance of plan ${plan.id} (${allowance})`,
    details: { grant_id: `grant_${grant.grantId}`, amount: grant.amount, plan: plan.id },
    accountId: grant.accountId,
  });
  return true;
}

/**
 * The alert port (ports/alerts.ts) that assembly hands to the ledger's sweeper, billing, the
 * webhook worker and event delivery: alerts kept in the database, and the grant rule above
 * against this catalog.
 */
export function alertPort(catalog: Catalog): Alerts {
  return { raise: raiseAlert, checkGrant: (client, grant) => checkGrantAgainstPlan(client, catalog, grant) };
}

/**
 * The Ledger's `watchGrant` for an operator's grants. The grant is already made, so a failed
 * check is reported, never thrown.
 */
export function grantWatcher(
  client: Queryable,
  catalog: Catalog,
  report: (error: unknown, grant: NewGrant) => void,
): (grant: NewGrant) => Promise<void> {
  return (grant) =>
    checkGrantAgainstPlan(client, catalog, grant).then(
      () => undefined,
      (error: unknown) => report(error, grant),
    );
}

/**
 * More than 10 % of the webhook events received in the last 15 minutes failed at least once.
 * When the rate is back under the threshold, the open alert is resolved.
 */
export async function checkWebhookFailureRate(db: Database): Promise<boolean> {
  const { rows } = await db.query<{ total: number; failing: number }>(
    `select count(*)::int as total, count(*) filter (where status = 'failed' or last_error is not null)::int as failing
     from webhook_events where received_at > now() - make_interval(mins => $1)`,
    [webhookFailureWindowMinutes],
  );
  const { total = 0, failing = 0 } = rows[0] ?? {};
  if (total < webhookFailureSampleMin || failing / total <= webhookFailureRatioMax) {
    await resolveAlert(db.pool, 'webhook_failure_rate');
    return false;
  }
  await raiseAlert(db.pool, {
    kind: 'webhook_failure_rate',
    key: 'webhook_failure_rate',
    severity: 'critical',
    message: `${failing} of ${total} webhook events in the last ${webhookFailureWindowMinutes} minutes failed (over ${webhookFailureRatioMax * 100} %)`,
    details: { total, failing },
  });
  return true;
}
