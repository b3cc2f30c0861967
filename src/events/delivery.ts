import { request as httpRequest } from 'node:http';
import { request as httpsRequest } from 'node:https';
import { isIP } from 'node:net';
import type { Logger } from 'pino';
import { Webhook } from 'standardwebhooks';
import type { Database } from '../db/database.js';
import type { Alerts } from '../ports/alerts.js';
import { backoffDelaySeconds, type Backoff } from '../timing/backoff.js';
import { claimLoopTask, type ClaimLoopLimits, type ClaimLoopWork } from '../timing/claim-loop.js';
import { Periodic } from '../timing/periodic.js';
import {
  bareHostname,
  checkDestination,
  defaultDestinationPolicy,
  DestinationRefused,
  DestinationUnresolved,
  type DestinationPolicy,
} from './destinations.js';
import { eventColumns, sequenceEvents, type EventRecord } from './event-log.js';

/**
 * Delivers events to the app's endpoints as signed POSTs (Standard Webhooks: `webhook-id`,
 * `webhook-timestamp`, `webhook-signature: v1,<base64 HMAC-SHA256>`), at least once and in
 * sequence order per account: only the oldest undelivered event of an (endpoint, account) pair
 * is ever claimed, so an account's next event waits for the previous one. Claims take a lease
 * with FOR UPDATE SKIP LOCKED, so any number of processes share the work and none sends what
 * another holds; one that dies mid-send leaves its claims to the others once the lease ends.
 * A failure is retried with exponential backoff; a delivery still failing after the retry
 * window (3 days) disables its endpoint with an alert, and an operator enables it again.
 */
export interface DeliveryOptions {
  intervalMilliseconds: number;
  batchSizeMax: number;
  /** Batches one tick sends at most; what is still due after them waits for the next tick. */
  batchCountMax: number;
  timeoutMilliseconds: number;
  leaseSeconds: number;
  retryBaseSeconds: number;
  retryDelaySecondsMax: number;
  retryWindowSeconds: number;
  /** Which hosts deliveries may reach, and how names resolve (destinations.ts). */
  destinations: DestinationPolicy;
  /** The time retries are scheduled by; the database's clock when undefined (tests move theirs). */
  clock?: (() => Date) | undefined;
}

export const defaultDeliveryOptions: DeliveryOptions = {
  intervalMilliseconds: 1000,
  batchSizeMax: 100,
  batchCountMax: 100,
  timeoutMilliseconds: 10_000,
  leaseSeconds: 60,
  retryBaseSeconds: 5,
  retryDelaySecondsMax: 6 * 3600,
  retryWindowSeconds: 3 * 24 * 3600,
  destinations: defaultDestinationPolicy,
};

interface Claimed extends EventRecord {
  endpoint_id: number;
  url: string;
  secret: string;
  attempts: number;
  first_failed_at: Date | null;
}

/**
 * What readers of a failed delivery see: a class, never the network's own words. Those would
 * tell an open port from a closed one, or quote a private service's banner; the class says
 * enough to act on (fix the receiver, its name, or its address).
 */
export type DeliveryFailure = 'address_not_allowed' | 'dns_failed' | 'timeout' | 'connection_failed' | `HTTP ${number}`;

/** What went wrong with one POST, or undefined for a 2xx. Redirects are failures, never followed. */
export async function postSigned(
  url: string,
  secret: string,
  event: EventRecord,
  options: { timeoutMilliseconds: number; destinations: DestinationPolicy },
): Promise<DeliveryFailure | undefined> {
  const target = new URL(url);
  const signal = AbortSignal.timeout(options.timeoutMilliseconds);
  let address: string;
  try {
    // Resolved once per attempt; the POST goes to this checked address, never to a second lookup's.
    address = await abortable(checkDestination(target, options.destinations), signal);
  } catch (error) {
    if (error instanceof DestinationRefused) return 'address_not_allowed';
    if (error instanceof DestinationUnresolved) return 'dns_failed';
    if (signal.aborted) return 'timeout';
    throw error;
  }
  const body = JSON.stringify({ ...event, timestamp: event.created_at });
  // The signature's timestamp is the wall clock's: receivers compare it with theirs.
  const sentAt = new Date();
  const headers = {
    'content-type': 'application/json',
    'user-agent': 'Tally-Webhooks',
    'webhook-id': event.id,
    'webhook-timestamp': String(Math.floor(sentAt.getTime() / 1000)),
    'webhook-signature': new Webhook(secret).sign(event.id, sentAt, body),
  };
  try {
    const status = await postTo(target, address, headers, body, signal);
    return status >= 200 && status < 300 ? undefined : `HTTP ${status}`;
  } catch {
    return signal.aborted ? 'timeout' : 'connection_failed';
  }
}

function abortable<T>(promise: Promise<T>, signal: AbortSignal): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    const onAbort = () => reject(signal.reason);
    signal.addEventListener('abort', onAbort, { once: true });
    promise.then(resolve, reject).finally(() => signal.removeEventListener('abort', onAbort));
  });
}

/**
 * One POST to `address`, with the URL's host in the Host header and (for https) as the TLS
 * server name, so that the receiver and its certificate are checked against the name while the
 * socket goes to the address that was checked. Answers the status once the answer is read.
 */
function postTo(url: URL, address: string, headers: Record<string, string>, body: string, signal: AbortSignal): Promise<number> {
  const https = url.protocol === 'https:';
  const hostname = bareHostname(url);
  return new Promise<number>((resolve, reject) => {
    const request = (https ? httpsRequest : httpRequest)(
      {
        method: 'POST',
        host: address,
        port: url.port === '' ? (https ? 443 : 80) : Number(url.port),
        path: `${url.pathname}${url.search}`,
        headers: { ...headers, host: url.host, 'content-length': String(Buffer.byteLength(body)) },
        agent: false,
        signal,
        ...(https && isIP(hostname) === 0 ? { servername: hostname } : {}),
      },
      (response) => {
        response.on('error', reject);
        response.on('end', () => resolve(response.statusCode ?? 0));
        response.resume();
      },
    );
    request.on('error', reject);
    request.end(body);
  });
}

export class EventDelivery {
  private readonly periodic: Periodic;
  readonly options: DeliveryOptions;
  /** Attempts are bounded by the retry window (the endpoint is disabled after it), not by a count. */
  private readonly retries: Backoff;

  constructor(
    private readonly db: Database,
    private readonly logger: Logger,
    private readonly alerts: Alerts,
    options: Partial<DeliveryOptions> = {},
  ) {
    this.options = { ...defaultDeliveryOptions, ...options };
    this.retries = {
      delaySecondsFirst: this.options.retryBaseSeconds,
      delaySecondsMax: this.options.retryDelaySecondsMax,
      attemptsMax: Number.POSITIVE_INFINITY,
      jitterRatio: 0,
    };
    // Until a claim is empty, not merely short: a delivered event lets its account's next one go.
    const limits: ClaimLoopLimits = {
      batchSizeMax: this.options.batchSizeMax,
      batchCountMax: this.options.batchCountMax,
      until: 'empty-batch',
    };
    this.periodic = new Periodic(
      this.options.intervalMilliseconds,
      claimLoopTask(this.work, limits, this.logger, 'event delivery failed; next tick retries'),
    );
  }

  start(): void {
    this.periodic.start();
  }

  async stop(): Promise<void> {
    await this.periodic.stop();
  }

  private now(): Date | null {
    return this.options.clock?.() ?? null;
  }

  /** One batch: numbers new events, claims what is due, sends it; answers how many it attempted. */
  async deliverOnce(): Promise<number> {
    const claimed = await this.work.claim(this.options.batchSizeMax);
    await this.work.process(claimed);
    return claimed.length;
  }

  private readonly work: ClaimLoopWork<Claimed> = {
    claim: async (batchSizeMax) => {
      await sequenceEvents(this.db);
      return this.claim(batchSizeMax);
    },
    process: async (batch) => {
      await Promise.all(batch.map((delivery) => this.send(delivery)));
    },
  };

  private async claim(batchSizeMax: number): Promise<Claimed[]> {
    const { rows } = await this.db.query<Claimed>(
      `with due as (
         select d.endpoint_id, d.sequence from event_deliveries d
         join webhook_endpoints w on w.id = d.endpoint_id and w.status = 'enabled'
         where d.delivered_at is null and d.next_attempt_at <= coalesce($1::timestamptz, now())
           and not exists (select 1 from event_deliveries p where p.endpoint_id = d.endpoint_id and p.account_id = d.account_id
                           and p.delivered_at is null and p.sequence < d.sequence)
         order by d.sequence limit $2 for update of d skip locked),
       claimed as (
         update event_deliveries d set next_attempt_at = coalesce($1::timestamptz, now()) + make_interval(secs => $3)
         from due where d.endpoint_id = due.endpoint_id and d.sequence = due.sequence
         returning d.endpoint_id, d.sequence, d.attempts, d.first_failed_at)
       select ${eventColumns}, c.endpoint_id, c.attempts, c.first_failed_at, w.url, w.secret
       from claimed c join events e on e.sequence = c.sequence join webhook_endpoints w on w.id = c.endpoint_id
       order by e.sequence`,
      [this.now(), batchSizeMax, this.options.leaseSeconds],
    );
    return rows;
  }

  private async send(delivery: Claimed): Promise<void> {
    const { endpoint_id: endpointId, url, secret, attempts, first_failed_at: firstFailedAt, ...event } = delivery;
    const error = await postSigned(url, secret, event, this.options);
    if (error === undefined) {
      await this.db.query(
        `update event_deliveries set delivered_at = coalesce($3::timestamptz, now()), attempts = attempts + 1, last_error = null where endpoint_id = $1 and sequence = $2`,
        [endpointId, event.sequence, this.now()],
      );
      return;
    }
    const now = this.now() ?? new Date();
    const failingSince = firstFailedAt ?? now;
    // `attempts` counts the tries before this one: this failure is number attempts + 1.
    const delaySeconds = backoffDelaySeconds(this.retries, attempts + 1);
    await this.db.query(
      `update event_deliveries set attempts = attempts + 1, last_error = $3, first_failed_at = coalesce(first_failed_at, $4),
         next_attempt_at = $4::timestamptz + make_interval(secs => $5)
       where endpoint_id = $1 and sequence = $2`,
      [endpointId, event.sequence, error, now, delaySeconds],
    );
    if (now.getTime() - failingSince.getTime() >= this.options.retryWindowSeconds * 1000) await this.disable(endpointId, url, event, error);
  }

  private async disable(endpointId: number, url: string, event: EventRecord, error: DeliveryFailure): Promise<void> {
    const reason = `event ${event.sequence} for account ${event.account_id ?? '-'} failed for ${this.options.retryWindowSeconds / 3600} hours: ${error}`;
    await this.db.withTransaction(async (client) => {
      const { rowCount } = await client.query(
        `update webhook_endpoints set status = 'disabled', disabled_at = coalesce($2::timestamptz, now()), disabled_reason = $3 where id = $1 and status = 'enabled'`,
        [endpointId, this.now(), reason],
      );
      if (rowCount === 0) return;
      await this.alerts.raise(client, {
        kind: 'webhook_endpoint_disabled',
        key: `webhook_endpoint_disabled:${endpointId}`,
        severity: 'critical',
        message: `webhook endpoint we_${endpointId} (${new URL(url).host}) is disabled: ${reason}; fix it, then POST /v1/admin/webhook-endpoints/we_${endpointId}/enable`,
        details: {
          endpoint_id: `we_${endpointId}`,
          host: new URL(url).host,
          sequence: event.sequence,
          account_id: event.account_id,
          error,
        },
      });
    });
    this.logger.warn({ endpoint: `we_${endpointId}` }, 'webhook endpoint disabled after its retry window');
  }
}
