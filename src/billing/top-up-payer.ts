import type { Logger } from 'pino';
import { Periodic, untilDone } from '../timing/periodic.js';
import { StripeUnavailableError, type StripeGateway } from '../stripe/gateway.js';
import { accountMetadataKey, packMetadataKey } from '../stripe/shapes.js';
import { completeTopUp, failTopUp, topUpMetadataKey } from './top-up-outcomes.js';
import { defaultPaymentMethod, findPack, type TopUpDependencies } from './top-up-settings.js';

/**
 * Auto top-up's payer job. A spend that leaves `available` below the account's threshold writes
 * a pending top-up in its own transaction (tally_request_top_up, db/functions/85-top-ups.sql); it
 * never waits for Stripe. The job here pays it: an off-session PaymentIntent on the customer's
 * default payment method for the pack's price, idempotency key `topup:{account}:{number}`,
 * through the breaker. Credits are granted only when the payment succeeded, under
 * `purchase:{payment_intent}` (top-up-outcomes.ts). Three failures in a row turn auto top-up off.
 *
 * A top-up has at most one PaymentIntent. Once Stripe answered the create, the top-up records the
 * PaymentIntent, and from then on the job only follows it (retrieves it, as a fallback to its
 * webhooks) until it succeeds or fails, however long it stays `processing`: it never sends the
 * create again. Before an answer (a timeout, an outage) the create is sent again with the same
 * key, but only while Stripe still remembers the key (24 hours): from `topUpCreateWindowSeconds`
 * after the request, the top-up fails instead, and a PaymentIntent an unanswered create made after
 * all is adopted by its webhook (it names the top-up in its metadata).
 */
export const topUpAttemptsMax = 10;
export const topUpLeaseSeconds = 120;
/** How often a PaymentIntent that is still processing is retrieved (its webhook usually comes first). */
export const topUpFollowSeconds = 3600;
/** How long after the request the create may still be sent: less than Stripe's 24 hours of key memory. */
export const topUpCreateWindowSeconds = 23 * 3600;

interface TopUpRow {
  id: number;
  account_id: string;
  number: number;
  pack_id: string;
  attempts: number;
  payment_intent: string | null;
  create_window_over: boolean;
}

/** The background job: pays pending top-ups, a few at a time, claimed with SKIP LOCKED and a lease. */
export class TopUpRunner {
  private readonly periodic: Periodic;

  constructor(
    private readonly dependencies: TopUpDependencies & { gateway: StripeGateway },
    private readonly logger: Logger,
    intervalMilliseconds = 1000,
  ) {
    this.periodic = new Periodic(
      intervalMilliseconds,
      untilDone(() => this.runOnce(), this.logger, 'auto top-up pass failed; next tick retries'),
    );
  }

  start(): void {
    this.periodic.start();
  }

  async stop(): Promise<void> {
    await this.periodic.stop();
  }

  private now(): Date | null {
    return this.dependencies.clock?.() ?? null;
  }

  /**
   * Claims what is due and pays or follows it; answers how many top-ups it tried. A top-up to
   * pay is leased for `topUpLeaseSeconds` and counts an attempt; one to follow is next due after
   * `topUpFollowSeconds`, and following counts no attempt (only Stripe's answer ends it).
   */
  async runOnce(): Promise<number> {
    const { rows } = await this.dependencies.db.query<TopUpRow>(
      `update top_ups t set attempts = attempts + (case when payment_intent is null then 1 else 0 end),
         next_attempt_at = coalesce($1::timestamptz, now())
           + make_interval(secs => case when payment_intent is null then $2::integer else $3::integer end)
       where id in (select id from top_ups where status = 'pending' and next_attempt_at <= coalesce($1::timestamptz, now()) order by id limit 10 for update skip locked)
       returning id, account_id, number, pack_id, attempts, payment_intent,
         created_at + make_interval(secs => $4::integer) <= coalesce($1::timestamptz, now()) as create_window_over`,
      [this.now(), topUpLeaseSeconds, topUpFollowSeconds, topUpCreateWindowSeconds],
    );
    for (const topUp of rows) {
      try {
        if (topUp.payment_intent === null) await this.pay(topUp);
        else await this.follow(topUp, topUp.payment_intent);
      } catch (error) {
        if (error instanceof StripeUnavailableError) {
          this.logger.warn({ err: error, topUp: topUp.id }, 'Stripe unavailable; the top-up is retried after its lease');
        } else if (topUp.payment_intent === null && topUp.attempts >= topUpAttemptsMax) {
          await this.fail(topUp, 'error', (error as Error).message);
        } else {
          this.logger.error({ err: error, topUp: topUp.id }, 'top-up failed; retried after its lease');
        }
      }
    }
    return rows.length;
  }

  private fail(topUp: TopUpRow, code: string, message: string, paymentIntent?: string): Promise<void> {
    return this.dependencies.db.withTransaction((client) => failTopUp(client, topUp, { code, message, paymentIntent }, this.now()));
  }

  /**
   * Creates the top-up's PaymentIntent, or cancels a top-up that must not be charged any more
   * (auto top-up turned off, or the account flagged by a dispute, since it was requested).
   */
  private async pay(topUp: TopUpRow): Promise<void> {
    const { db, catalog, gateway } = this.dependencies;
    const { rows } = await db.query<{ stripe_customer_id: string | null; chargeable: boolean }>(
      `select a.stripe_customer_id, coalesce(s.enabled, false) and not a.flagged as chargeable
       from accounts a left join auto_top_ups s on s.account_id = a.id where a.id = $1`,
      [topUp.account_id],
    );
    if (rows[0]?.chargeable !== true) {
      await db.query(
        `update top_ups set status = 'cancelled', resolved_at = coalesce($2::timestamptz, now()) where id = $1 and status = 'pending' and payment_intent is null`,
        [topUp.id, this.now()],
      );
      return;
    }
    if (topUp.create_window_over) {
      return this.fail(topUp, 'stripe_unavailable', 'Stripe did not answer the create within the 23 hours it remembers the key');
    }
    const customerId = rows[0].stripe_customer_id;
    if (customerId === null) return this.fail(topUp, 'no_payment_method', 'the account has no Stripe customer');
    const pack = findPack(catalog, topUp.pack_id);
    const paymentMethod = await defaultPaymentMethod(gateway, customerId);
    if (paymentMethod === undefined)
      return this.fail(topUp, 'no_payment_method', `Stripe customer ${customerId} has no default payment method`);
    const price = await gateway.retrievePrice(pack.price);
    if (price.unit_amount === null) return this.fail(topUp, 'price_without_amount', `price ${pack.price} has no unit amount`);
    const payment = await gateway.createOffSessionPayment(
      {
        amount: price.unit_amount,
        currency: price.currency,
        customer: customerId,
        payment_method: paymentMethod,
        off_session: true,
        confirm: true,
        description: `Tally auto top-up: ${pack.id}`,
        metadata: { [accountMetadataKey]: topUp.account_id, [topUpMetadataKey]: String(topUp.id), [packMetadataKey]: pack.id },
      },
      `topup:${topUp.account_id}:${topUp.number}`,
    );
    if (payment.outcome === 'failed') return this.fail(topUp, payment.code, payment.message, payment.paymentIntent);
    if (payment.outcome === 'processing') {
      // From now on the top-up follows this PaymentIntent: its webhooks, or retrieving it.
      await db.query(
        `update top_ups set payment_intent = $2, next_attempt_at = coalesce($3::timestamptz, now()) + make_interval(secs => $4::integer)
         where id = $1 and status = 'pending' and (payment_intent is null or payment_intent = $2)`,
        [topUp.id, payment.paymentIntent, this.now(), topUpFollowSeconds],
      );
      return;
    }
    await this.grant(topUp, payment.paymentIntent, payment.amount, payment.currency);
  }

  /** Retrieves the top-up's PaymentIntent: grants it once it succeeded, fails the top-up once Stripe gave up on it. */
  private async follow(topUp: TopUpRow, paymentIntent: string): Promise<void> {
    const intent = await this.dependencies.gateway.retrievePaymentIntent(paymentIntent);
    if (intent === undefined) {
      this.logger.error({ topUp: topUp.id, paymentIntent }, "Stripe does not know the top-up's PaymentIntent; following it again later");
      return;
    }
    if (intent.status === 'succeeded') return this.grant(topUp, intent.id, intent.amount_received || intent.amount, intent.currency);
    if (intent.status === 'requires_payment_method' || intent.status === 'requires_action' || intent.status === 'canceled') {
      const error = intent.last_payment_error;
      const code = error?.code ?? error?.decline_code ?? (intent.status === 'requires_action' ? 'authentication_required' : intent.status);
      return this.fail(topUp, code, error?.message ?? `payment intent is ${intent.status}`, intent.id);
    }
    // processing (or another state on its way): followed again after topUpFollowSeconds.
  }

  private async grant(topUp: TopUpRow, paymentIntent: string, amount: number, currency: string): Promise<void> {
    const { db, catalog } = this.dependencies;
    const granted = await db.withTransaction((client) =>
      completeTopUp(client, catalog, { accountId: topUp.account_id, topUpId: topUp.id, paymentIntent, amount, currency, now: this.now() }),
    );
    if (!granted) this.logger.warn({ topUp: topUp.id, paymentIntent }, 'top-up already granted, or paid with another PaymentIntent');
  }
}
