import type { AlertInput, Queryable } from '../ports/alerts.js';

/**
 * Alerts are kept in the database, in the transaction of what raised them. The same key inside
 * the window is one alert whose count grows, not a flood; once resolved, the next occurrence is
 * a new alert.
 */
export const alertWindowSeconds = 3600;

export async function raiseAlert(client: Queryable, alert: AlertInput): Promise<void> {
  await client.query(
    `with repeated as (
       update alerts set count = count + 1, last_at = now(), details = $5
       where id = (select id from alerts where alert_key = $1 and resolved_at is null and last_at > now() - make_interval(secs => $7)
                   order by last_at desc limit 1)
       returning id)
     insert into alerts (alert_key, kind, severity, message, details, account_id)
     select $1, $2, $3, $4, $5, $6 where not exists (select 1 from repeated)`,
    [alert.key, alert.kind, alert.severity, alert.message, alert.details ?? {}, alert.accountId ?? null, alertWindowSeconds],
  );
}

/**
 * Resolves the open alert of a condition that has cleared (the breaker closed, the failure rate
 * fell back); the sinks are told on the next delivery. Answers whether one was open.
 */
export async function resolveAlert(client: Queryable, key: string): Promise<boolean> {
  const result = await client.query('update alerts set resolved_at = now() where alert_key = $1 and resolved_at is null', [key]);
  return (result.rowCount ?? 0) > 0;
}
