import type { Logger } from 'pino';
import type { Catalog } from '../billing/catalog.js';
import { IgnoredEvent, RetryLater, type EffectContext, type StoredEvent } from '../billing/effect-context.js';
import { applyEvent } from '../billing/effects.js';
import type { ClaimHasher } from '../billing/claim-hasher.js';
import { dueMonthsPerPassMax, findDueMonth, grantMonth, type DueMonth } from '../billing/yearly.js';
import type { Database } from '../db/database.js';
import type { Alerts } from '../ports/alerts.js';
import { StripeUnavailableError, type StripeGateway } from '../stripe/gateway.js';
import { backoffDelaySeconds, mayRetry, type Backoff } from '../timing/backoff.js';
import { claimLoop } from '../timing/claim-loop.js';
import { OrderedLanes } from './ordered-lanes.js';
import { prepareEvent } from './prepare.js';

/**
 * Applies stored webhook events. Each event is claimed with FOR UPDATE SKIP LOCKED inside its
 * own transaction, and its effects commit together with its processed mark, so any number of
 * workers in any number of processes apply each event exactly once. What the Stripe API must
 * tell is fetched before the transaction. Failures retry with backoff, a bounded number of
 * times over about a day, then the event is `failed` with an alert; nothing is dropped.
 *
 * A process applies several events at once (`concurrentEventsMax`), in lanes: an event waits
 * while an earlier one naming the same customer, subscription, payment intent, charge, invoice
 * or account is in progress in this process (ordered-lanes.ts), so the effects of one account
 * are applied in event order while other accounts' events proceed beside them.
 */
export interface WorkerOptions {
  pollIntervalMilliseconds: number;
  /** Due events read at a time. */
  batchSizeMax: number;
  /** Pages of due events one pass reads; what is still due after them waits for the next pass. */
  batchCountMax: number;
  /** Events applied at once in this process (each holds one connection at a time). */
  concurrentEventsMax: number;
  retryBaseSeconds: number;
  retryDelaySecondsMax: number;
  attemptsMax: number;
  /** How long an event that needs Stripe waits while the breaker is open. */
  breakerWaitSeconds: number;
  clock?: (() => Date) | undefined;
  /**
   * Count an event's waits (RetryLater: something it needs has not happened yet) and its age in
   * `clock`'s time rather than the database's. Only a world that lives on a virtual clock (the
   * lifecycle simulator, whose Stripe creates and delivers each event at one virtual instant)
   * sets it; there the age counts from the event's creation.
   */
  waitsInClockTime?: boolean;
}

export const defaultWorkerOptions: WorkerOptions = {
  pollIntervalMilliseconds: 1000,
  batchSizeMax: 50,
  batchCountMax: 1000,
  concurrentEventsMax: 4,
  retryBaseSeconds: 30,
  retryDelaySecondsMax: 4 * 3600,
  attemptsMax: 14,
  breakerWaitSeconds: 30,
};

interface DueEvent {
  id: string;
  ordering_keys: string[];
}

export type EventOutcome = 'processed' | 'ignored' | 'retrying' | 'waiting' | 'failed' | 'skipped';

/**
 * The Stripe objects an event names, read from its payload: the keys of its lane. Two events
 * sharing any of them are applied one after the other. An expanded object counts by its id;
 * Tally's account metadata (on sessions, subscriptions, payment intents and invoices) counts as
 * the account.
 */
const orderingKeysSql = `array_remove(array[
  o->>'id',
  coalesce(o->'customer'->>'id', o->>'customer'),
  coalesce(o->'subscription'->>'id', o->>'subscription', o#>>'{parent,subscription_details,subscription}'),
  coalesce(o->'payment_intent'->>'id', o->>'payment_intent', o#>>'{payment,payment_intent}'),
  coalesce(o->'charge'->>'id', o->>'charge'),
  coalesce(o->'invoice'->>'id', o->>'invoice'),
  'account:' || coalesce(o#>>'{metadata,tally_account_id}', o#>>'{parent,subscription_details,metadata,tally_account_id}'),
  o->>'client_reference_id'
], null)`;

export class WebhookWorker {
  private timer: NodeJS.Timeout | undefined;
  private running: Promise<void> | undefined;
  private again = false;
  private started = false;
  private readonly lanes: OrderedLanes<EventOutcome>;
  /** Exact waits (no jitter): an event's next attempt is its business alone, and tests count on them. */
  private readonly retries: Backoff;

  constructor(
    private readonly db: Database,
    private readonly catalog: Catalog,
    private readonly hasher: ClaimHasher,
    private readonly alerts: Alerts,
    private readonly gateway: StripeGateway | undefined,
    private readonly logger: Logger,
    private readonly options: WorkerOptions = defaultWorkerOptions,
    /** Told of each event's outcome and, once applied, the seconds since it was received. */
    private readonly onOutcome: (type: string, outcome: EventOutcome, lagSeconds?: number) => void = () => undefined,
  ) {
    this.lanes = new OrderedLanes(options.concurrentEventsMax);
    this.retries = {
      delaySecondsFirst: options.retryBaseSeconds,
      delaySecondsMax: options.retryDelaySecondsMax,
      attemptsMax: options.attemptsMax,
      jitterRatio: 0,
    };
  }

  start(): void {
    this.started = true;
    this.timer = setInterval(() => this.nudge(), this.options.pollIntervalMilliseconds);
    this.timer.unref();
  }

  /** Runs a pass now (a new event was stored), or right after the pass in progress. */
  nudge(): void {
    if (!this.started) return;
    if (this.running !== undefined) {
      this.again = true;
      return;
    }
    this.running = this.drain()
      .catch((error: unknown) => this.logger.error({ err: error }, 'webhook worker pass failed; next pass retries'))
      .finally(() => {
        this.running = undefined;
        if (this.again) {
          this.again = false;
          this.nudge();
        }
      });
  }

  async stop(): Promise<void> {
    this.started = false;
    clearInterval(this.timer);
    this.again = false;
    await this.running;
  }

  private now(): Date | null {
    return this.options.clock?.() ?? null;
  }

  /**
   * Applies due events, several at once in lanes, until none is due; then due months of yearly
   * plans. When it returns, every event due when it was called has been attempted (by this
   * call or by another pass of this process that had it in progress), up to batchCountMax pages
   * (50,000 events by default): a larger backlog goes on in the next pass.
   */
  async drain(): Promise<void> {
    // Months that started before the events now due come first: a change made in a month moves
    // that month's credits, so they must be there.
    await this.grantDueMonths();
    const attempts: Promise<EventOutcome>[] = [];
    await claimLoop<DueEvent>(
      {
        claim: (batchSizeMax) => this.dueEvents(batchSizeMax),
        process: async (batch) => {
          for (const row of batch) attempts.push(this.lanes.submit(row.id, row.ordering_keys, () => this.processOne(row.id)));
          // The next page (if the claim was full) is read while the lanes still work on this one.
          if (batch.length === this.options.batchSizeMax) await this.lanes.whenWaitingAtMost(this.options.concurrentEventsMax);
        },
      },
      { batchSizeMax: this.options.batchSizeMax, batchCountMax: this.options.batchCountMax, until: 'short-batch' },
    );
    // Another pass of this process may hold due events this one left out: wait for them too.
    const settled = await Promise.allSettled([...attempts, ...this.lanes.inProgress()]);
    const failure = settled.find((result): result is PromiseRejectedResult => result.status === 'rejected');
    if (failure !== undefined) throw failure.reason;
    await this.grantDueMonths();
    await this.cancelRefusedTrials();
  }

  /** Due events, oldest first. Events in progress here are left out; their order is kept by the lanes. */
  private async dueEvents(batchSizeMax: number): Promise<DueEvent[]> {
    const { rows } = await this.db.query<DueEvent>(
      `select id, ${orderingKeysSql} as ordering_keys
       from webhook_events, lateral (select payload->'data'->'object' as o) event_object
       where status = 'pending' and next_attempt_at <= coalesce($1, now()) and id <> all($3::text[])
       order by next_attempt_at, created, id limit $2`,
      [this.now(), batchSizeMax, this.lanes.ids()],
    );
    return rows;
  }

  /** Grants every due month of yearly plans; a month that fails is passed over until the next pass, so it never blocks the others. */
  private async grantDueMonths(): Promise<void> {
    const passedOver: string[] = [];
    // A month is granted at the time it was found due.
    await claimLoop<{ due: DueMonth; now: Date | null }>(
      {
        claim: async () => {
          const now = this.now();
          const due = await findDueMonth(this.db, now, passedOver);
          return due === undefined ? [] : [{ due, now }];
        },
        process: async (months) => {
          for (const { due, now } of months) {
            const month = await grantMonth(this.db, this.catalog, this.hasher, this.alerts, now, due);
            if (!month.failed) continue;
            this.logger.error({ month: month.key }, 'a yearly month failed; it will be retried on the next pass');
            passedOver.push(month.key);
          }
        },
      },
      { batchSizeMax: 1, batchCountMax: dueMonthsPerPassMax, until: 'empty-batch' },
    );
  }

  async processOne(eventId: string): Promise<EventOutcome> {
    const { rows } = await this.db.query<{
      id: string;
      type: string;
      created: number;
      received_seconds_ago: number;
      payload: { livemode?: unknown; data?: { object?: Record<string, unknown> } };
    }>(
      `select id, type, extract(epoch from created)::bigint as created, extract(epoch from now() - received_at)::float8 as received_seconds_ago, payload
       from webhook_events where id = $1 and status = 'pending'`,
      [eventId],
    );
    const row = rows[0];
    if (row === undefined) return 'skipped';
    const livemode = typeof row.payload.livemode === 'boolean' ? row.payload.livemode : undefined;
    const clockNow = this.now();
    const receivedSecondsAgo =
      this.options.waitsInClockTime === true && clockNow !== null
        ? clockNow.getTime() / 1000 - Number(row.created)
        : row.received_seconds_ago;
    const event: StoredEvent = {
      id: row.id,
      type: row.type,
      created: row.created,
      object: row.payload.data?.object ?? {},
      livemode,
      receivedSecondsAgo,
    };
    // A test-mode webhook secret left configured beside a live key (or the reverse) must not let
    // test payments grant real credits: an event of the other mode is not this Tally's.
    const expected = this.gateway?.livemode;
    if ('livemode' in row.payload && livemode === undefined) {
      return this.ignore(event, new IgnoredEvent(`livemode ${JSON.stringify(row.payload.livemode)} is not a boolean`));
    }
    if (expected !== undefined && livemode !== undefined && livemode !== expected) {
      return this.ignore(
        event,
        new IgnoredEvent(`livemode ${livemode} differs from STRIPE_SECRET_KEY's ${expected ? 'live' : 'test'} mode`),
      );
    }
    try {
      const prepared = await prepareEvent({ db: this.db, gateway: this.gateway, hasher: this.hasher, catalog: this.catalog }, event);
      const applied = await this.db.withTransaction(async (client) => {
        const claimed = await client.query(`select 1 from webhook_events where id = $1 and status = 'pending' for update skip locked`, [
          eventId,
        ]);
        if (claimed.rowCount === 0) return { status: 'skipped' as const, lag: undefined };
        const context: EffectContext = {
          client,
          catalog: this.catalog,
          hasher: this.hasher,
          alerts: this.alerts,
          event,
          prepared,
          now: this.now(),
        };
        const result = await applyEvent(context);
        const marked = await client.query<{ lag: number }>(
          `update webhook_events set status = $2, attempts = attempts + 1, processed_at = now(), last_error = null, account_id = $3, ignored_reason = $4 where id = $1
           returning extract(epoch from now() - received_at)::float8 as lag`,
          [eventId, result.status, result.accountId ?? null, result.status === 'ignored' ? (result.reason ?? 'no effect') : null],
        );
        return { status: result.status, lag: marked.rows[0]?.lag };
      });
      // Counted once committed: withTransaction may run the work again after a serialization
      // failure or a deadlock, and an attempt that rolled back applied nothing.
      if (applied.status !== 'skipped') this.onOutcome(event.type, applied.status, applied.lag);
      return applied.status;
    } catch (error) {
      if (error instanceof IgnoredEvent) return this.ignore(event, error);
      return this.postpone(event, error);
    }
  }

  /**
   * Marks an event ignored with its reason, at once: no retries. A payment of Tally's prices that
   * no rule attributes also raises an alert, since someone paid and was credited nothing; the
   * runbook says how an operator grants it by hand.
   */
  private async ignore(event: StoredEvent, ignored: IgnoredEvent): Promise<EventOutcome> {
    const outcome = await this.db.withTransaction(async (client) => {
      const { rowCount } = await client.query(
        `update webhook_events set status = 'ignored', attempts = attempts + 1, processed_at = now(), last_error = null, ignored_reason = $2
         where id = $1 and status = 'pending'`,
        [event.id, ignored.reason],
      );
      if (rowCount === 0) return 'skipped' as const;
      if (ignored.alert) {
        await this.alerts.raise(client, {
          kind: 'unattributed_payment',
          key: `unattributed:${event.id}`,
          severity: 'warning',
          message: `Stripe event ${event.id} (${event.type}) paid for credits but names no account: ${ignored.reason}`,
          details: { event: event.id, type: event.type, object: event.object.id ?? null },
        });
      }
      return 'ignored' as const;
    });
    this.onOutcome(event.type, outcome);
    return outcome;
  }

  /** Puts an event back to wait (Stripe unavailable) or to retry (anything else), or fails it. */
  private async postpone(event: StoredEvent, error: unknown): Promise<EventOutcome> {
    const outcome = await this.recordFailure(event, error);
    this.onOutcome(event.type, outcome);
    return outcome;
  }

  private async recordFailure(event: StoredEvent, error: unknown): Promise<EventOutcome> {
    const message = error instanceof Error ? error.message : String(error);
    if (error instanceof StripeUnavailableError) {
      await this.db.query(
        `update webhook_events set next_attempt_at = now() + make_interval(secs => $2), last_error = $3 where id = $1 and status = 'pending'`,
        [event.id, this.options.breakerWaitSeconds, message],
      );
      return 'waiting';
    }
    if (!(error instanceof RetryLater))
      this.logger.error({ err: error, event: event.id, type: event.type }, 'webhook event failed; it will be retried');
    return this.db.withTransaction(async (client) => {
      const { rows } = await client.query<{ attempts: number }>(
        `update webhook_events set attempts = attempts + 1, last_error = $2 where id = $1 and status = 'pending' returning attempts`,
        [event.id, message],
      );
      const attempts = rows[0]?.attempts;
      if (attempts === undefined) return 'skipped';
      if (!mayRetry(this.retries, attempts)) {
        await client.query(`update webhook_events set status = 'failed' where id = $1`, [event.id]);
        await this.alerts.raise(client, {
          kind: 'webhook_failed',
          key: `webhook_failed:${event.id}`,
          severity: 'critical',
          message: `Stripe event ${event.id} (${event.type}) failed after ${attempts} attempts: ${message}`,
          details: { event: event.id, type: event.type },
        });
        return 'failed';
      }
      const delay = backoffDelaySeconds(this.retries, attempts);
      const waitFrom = error instanceof RetryLater && this.options.waitsInClockTime === true ? this.now() : null;
      await client.query(`update webhook_events set next_attempt_at = coalesce($3, now()) + make_interval(secs => $2) where id = $1`, [
        event.id,
        delay,
        waitFrom,
      ]);
      return 'retrying';
    });
  }

  /**
   * Cancels, through the Stripe API, the subscriptions of refused trials (recorded by the
   * effect's transaction; the call happens after it, never under its locks). The idempotency
   * key is derived from the subscription, so a retry after a lost answer cancels once.
   */
  async cancelRefusedTrials(): Promise<void> {
    if (this.gateway === undefined) return;
    const { rows } = await this.db.query<{ subscription_id: string }>(
      `select subscription_id from trial_refusals where cancelled_at is null and cancel_attempts < $1 order by created_at limit $2`,
      [this.options.attemptsMax, this.options.batchSizeMax],
    );
    for (const row of rows) {
      try {
        await this.gateway.cancelSubscription(row.subscription_id, `cancel-trial:${row.subscription_id}`);
        await this.db.query('update trial_refusals set cancelled_at = now(), last_error = null where subscription_id = $1', [
          row.subscription_id,
        ]);
      } catch (error) {
        await this.db.query('update trial_refusals set cancel_attempts = cancel_attempts + 1, last_error = $2 where subscription_id = $1', [
          row.subscription_id,
          (error as Error).message,
        ]);
        if (error instanceof StripeUnavailableError) return;
        this.logger.error({ err: error, subscription: row.subscription_id }, 'cancelling a refused trial failed; it will be retried');
      }
    }
  }

  /** An operator's replay: back to pending, applied at once; effects stay exactly once. */
  async replay(eventId: string, actor: 'admin' | 'cli' = 'admin'): Promise<EventOutcome | undefined> {
    const { rows } = await this.db.query<{ status: string; account_id: string | null }>(
      `update webhook_events w set status = 'pending', attempts = 0, next_attempt_at = now(), last_error = null, ignored_reason = null
       from (select id, status, account_id from webhook_events where id = $1 for update) before
       where w.id = before.id returning before.status, before.account_id`,
      [eventId],
    );
    const before = rows[0];
    if (before === undefined) return undefined;
    const outcome = await this.processOne(eventId);
    await this.db.query(
      `insert into audit_log (account_id, actor, action, reason, before, after) values ($1, 'admin', 'webhook.replay', $2, $3, $4)`,
      [
        before.account_id,
        `replay of ${eventId} from the ${actor === 'cli' ? 'tally command' : 'admin API'}`,
        { event: eventId, status: before.status },
        { event: eventId, outcome },
      ],
    );
    return outcome;
  }
}
