import { createHash } from 'node:crypto';
import type { Database } from '../db/database.js';
import { backoffDelaySeconds, type Backoff } from '../timing/backoff.js';
import { claimLoop } from '../timing/claim-loop.js';

/**
 * Where alerts go: Slack incoming webhooks, PagerDuty Events API v2, or any URL as a JSON POST.
 * The kind comes from the URL (hooks.slack.com, events.pagerduty.com) or from a prefix that
 * names it (`slack+https://…`, `pagerduty+https://…`, `json+https://…`). Each alert is delivered
 * to each sink on its own, retried with backoff; a repeat of the same alert inside its window
 * only raises the count, so it is not sent again. A resolved alert is sent once more, as resolved.
 */
export type SinkKind = 'slack' | 'pagerduty' | 'json';

export interface Sink {
  kind: SinkKind;
  url: string;
  /** The configured text, which names the sink in the database. */
  name: string;
}

/** PagerDuty's Events API v2 hosts (US and EU service regions). */
export const pagerDutyHosts = new Set(['events.pagerduty.com', 'events.eu.pagerduty.com']);

/**
 * A sink's name as the API shows it: the kind and host, and a short digest to tell two sinks on
 * one host apart. A Slack incoming-webhook URL (its path) is a secret of its own, so the
 * configured text never leaves the process.
 */
export function redactSinkName(name: string): string {
  const digest = createHash('sha256').update(name).digest('hex').slice(0, 8);
  const prefixed = /^(slack|pagerduty|json)\+(.+)$/.exec(name);
  const url = prefixed?.[2] ?? name;
  // Names come from parsed URLs; one kept from an older configuration may not parse, and stays redacted.
  const host = URL.canParse(url) ? new URL(url).host : 'unknown';
  const kind = prefixed?.[1] ?? (host === 'hooks.slack.com' ? 'slack' : pagerDutyHosts.has(host) ? 'pagerduty' : 'json');
  return `${kind}:${host}#${digest}`;
}

export function parseSinks(urls: string[]): Sink[] {
  return urls.map((raw) => {
    const prefixed = /^(slack|pagerduty|json)\+(https?:\/\/.+)$/.exec(raw);
    if (prefixed?.[1] !== undefined && prefixed[2] !== undefined) return { kind: prefixed[1] as SinkKind, url: prefixed[2], name: raw };
    const host = new URL(raw).hostname;
    // Exact hosts only: a suffix match would send the routing key to evilpagerduty.com.
    const kind: SinkKind = host === 'hooks.slack.com' ? 'slack' : pagerDutyHosts.has(host) ? 'pagerduty' : 'json';
    return { kind, url: raw, name: raw };
  });
}

export interface AlertRow {
  id: number;
  alert_key: string;
  kind: string;
  severity: 'info' | 'warning' | 'critical';
  message: string;
  details: Record<string, unknown>;
  account_id: string | null;
  count: number;
  first_at: string;
  last_at: string;
  resolved_at: string | null;
}

/** A sink is told of an alert (trigger) and, once its condition clears, that it is over (resolve). */
export type DeliveryAction = 'trigger' | 'resolve';

export function sinkPayload(
  sink: Sink,
  alert: AlertRow,
  pagerDutyRoutingKey: string | undefined,
  action: DeliveryAction = 'trigger',
): unknown {
  if (sink.kind === 'slack') {
    if (action === 'resolve') {
      return {
        text: `:white_check_mark: Tally resolved: ${alert.message}`,
        blocks: [{ type: 'section', text: { type: 'mrkdwn', text: `:white_check_mark: *${alert.kind}* resolved\n${alert.message}` } }],
      };
    }
    const icon = alert.severity === 'critical' ? ':rotating_light:' : alert.severity === 'warning' ? ':warning:' : ':information_source:';
    return {
      text: `${icon} Tally ${alert.severity}: ${alert.message}`,
      blocks: [{ type: 'section', text: { type: 'mrkdwn', text: `${icon} *${alert.kind}* (${alert.severity})\n${alert.message}` } }],
    };
  }
  if (sink.kind === 'pagerduty') {
    if (action === 'resolve') return { routing_key: pagerDutyRoutingKey, event_action: 'resolve', dedup_key: alert.alert_key };
    return {
      routing_key: pagerDutyRoutingKey,
      event_action: 'trigger',
      dedup_key: alert.alert_key,
      payload: {
        summary: alert.message.slice(0, 1024),
        source: 'tally',
        severity: alert.severity,
        component: alert.kind,
        custom_details: { ...alert.details, account_id: alert.account_id, count: alert.count },
      },
    };
  }
  return {
    action,
    id: alert.id,
    key: alert.alert_key,
    kind: alert.kind,
    severity: alert.severity,
    message: alert.message,
    details: alert.details,
    account_id: alert.account_id,
    count: alert.count,
    first_at: alert.first_at,
    last_at: alert.last_at,
    resolved_at: alert.resolved_at,
  };
}

export const deliveryAttemptsMax = 10;
export const deliveryTimeoutMilliseconds = 5000;
export const deliveryLeaseSeconds = 60;

export interface DeliveryOptions {
  sinks: Sink[];
  pagerDutyRoutingKey: string | undefined;
  retryBaseSeconds: number;
  retryDelaySecondsMax: number;
}

/** Exact waits; a delivery is given up after deliveryAttemptsMax tries. */
const deliveryBackoff = (options: DeliveryOptions): Backoff => ({
  delaySecondsFirst: options.retryBaseSeconds,
  delaySecondsMax: options.retryDelaySecondsMax,
  attemptsMax: deliveryAttemptsMax,
  jitterRatio: 0,
});

/**
 * Deliveries claimed at once, and batches per operations tick: one, so that a slow or hanging
 * sink (each POST may take deliveryTimeoutMilliseconds) never holds the operations loop's other
 * work for long; what is left goes on the next tick.
 */
export const deliveryBatchSizeMax = 100;
export const deliveryBatchCountMax = 1;

type ClaimedDelivery = AlertRow & { sink: string; action: DeliveryAction; attempts: number };

/** Sends what is due to every sink; answers how many deliveries succeeded. */
export async function deliverAlerts(db: Database, options: DeliveryOptions): Promise<number> {
  if (options.sinks.length === 0) return 0;
  const sinkNames = options.sinks.map((sink) => sink.name);
  await db.query(
    `insert into alert_deliveries (alert_id, sink, action)
     select a.id, s.sink, 'trigger' from alerts a cross join unnest($1::text[]) as s(sink) where a.first_at > now() - interval '1 day'
     union all
     select a.id, s.sink, 'resolve' from alerts a cross join unnest($1::text[]) as s(sink) where a.resolved_at > now() - interval '1 day'
     on conflict do nothing`,
    [sinkNames],
  );
  let delivered = 0;
  await claimLoop<ClaimedDelivery>(
    {
      claim: (batchSizeMax) => claimDeliveries(db, sinkNames, batchSizeMax),
      process: async (batch) => {
        for (const row of batch) if (await sendDelivery(db, options, row)) delivered += 1;
      },
    },
    { batchSizeMax: deliveryBatchSizeMax, batchCountMax: deliveryBatchCountMax, until: 'short-batch' },
  );
  return delivered;
}

/**
 * Claims due deliveries with a lease (their next attempt moves a minute ahead), so that several
 * processes never send one alert twice, and one that dies mid-way leaves it to the others. A
 * resolve waits until its trigger reached the sink (or gave up), so it never arrives first.
 */
async function claimDeliveries(db: Database, sinkNames: string[], batchSizeMax: number): Promise<ClaimedDelivery[]> {
  const { rows } = await db.query<ClaimedDelivery>(
    `with claimed as (
       update alert_deliveries d set next_attempt_at = now() + make_interval(secs => $3)
       where (d.alert_id, d.sink, d.action) in (
         select alert_id, sink, action from alert_deliveries r
         where delivered_at is null and next_attempt_at <= now() and attempts < $1 and sink = any($2)
           and (action = 'trigger' or exists (
             select 1 from alert_deliveries t where t.alert_id = r.alert_id and t.sink = r.sink and t.action = 'trigger'
               and (t.delivered_at is not null or t.attempts >= $1)))
         order by alert_id, action desc limit $4 for update skip locked)
       returning d.alert_id, d.sink, d.action, d.attempts)
     select a.id, a.alert_key, a.kind, a.severity, a.message, a.details, a.account_id, a.count, tally_iso(a.first_at) as first_at,
       tally_iso(a.last_at) as last_at, tally_iso(a.resolved_at) as resolved_at, c.sink, c.action, c.attempts
     from claimed c join alerts a on a.id = c.alert_id order by a.id, c.action desc`,
    [deliveryAttemptsMax, sinkNames, deliveryLeaseSeconds, batchSizeMax],
  );
  return rows;
}

/** Sends one delivery and records how it went; answers whether the sink took it. */
async function sendDelivery(db: Database, options: DeliveryOptions, row: ClaimedDelivery): Promise<boolean> {
  const sink = options.sinks.find((candidate) => candidate.name === row.sink);
  if (sink === undefined) return false;
  const error = await post(sink.url, sinkPayload(sink, row, options.pagerDutyRoutingKey, row.action));
  if (error === undefined) {
    await db.query(
      'update alert_deliveries set delivered_at = now(), attempts = attempts + 1, last_error = null where alert_id = $1 and sink = $2 and action = $3',
      [row.id, row.sink, row.action],
    );
    return true;
  }
  // `row.attempts` counts the tries before this one: this failure is number attempts + 1.
  const delay = backoffDelaySeconds(deliveryBackoff(options), row.attempts + 1);
  await db.query(
    `update alert_deliveries set attempts = attempts + 1, last_error = $4, next_attempt_at = now() + make_interval(secs => $5)
     where alert_id = $1 and sink = $2 and action = $3`,
    [row.id, row.sink, row.action, error, delay],
  );
  return false;
}

/** Answers undefined on a 2xx, otherwise what went wrong. */
async function post(url: string, body: unknown): Promise<string | undefined> {
  try {
    const response = await fetch(url, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify(body),
      signal: AbortSignal.timeout(deliveryTimeoutMilliseconds),
    });
    await response.arrayBuffer();
    return response.ok ? undefined : `HTTP ${response.status}`;
  } catch (error) {
    return (error as Error).message;
  }
}
