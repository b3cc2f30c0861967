import type { Logger } from 'pino';
import { Periodic, untilDone } from '../ops/periodic.js';
import { StripeUnavailableError, type StripeGateway } from '../stripe/gateway.js';
import { accountMetadataKey, packMetadataKey } from '../stripe/shapes.js';
import { completeTopUp, failTopUp, topUpMetadataKey } from './top-up-outcomes.js';
import { defaultPaymentMethod, findPack, type TopUpDependencies } from './top-up-settings.js';

/**
 * Auto top-up's payer job. A spend that takes `available` below the account's threshold writes a pending
 * top-up in its own transaction (the accounts trigger, migration 0014); it never waits for
 * Stripe. The job here pays it: an off-session PaymentIntent on the customer's default payment
 * method for the pack's price, idempotency key `topup:{account}:{number}`, through the breaker.
 * Credits are granted only when the payment succeeded, under `purchase:{payment_intent}`: the
 * job's answer from Stripe and the `payment_intent.succeeded` webhook race to it, and whichever
 * comes second finds the grant made. Three failures in a row turn auto top-up off.
 */
export const topUpAttemptsMax = 10;
export const topUpLeaseSeconds = 120;

interface TopUpRow {
  id: number;
  account_id: string;
  number: number;
  pack_id: string;
  attempts: number;
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

  /** Claims what is due and pays it; answers how many top-ups it tried. */
  async runOnce(): Promise<number> {
    const { rows } = await this.dependencies.db.query<TopUpRow>(
      `update top_ups t set attempts = attempts + 1, next_attempt_at = coalesce($1::timestamptz, now()) + make_interval(secs => $2)
       where id in (select id from top_ups where status = 'pending' and next_attempt_at <= coalesce($1::timestamptz, now()) order by id limit 10 for update skip locked)
       returning id, account_id, number, pack_id, attempts`,
      [this.now(), topUpLeaseSeconds],
    );
    for (const topUp of rows) {
      try {
        await this.pay(topUp);
      } catch (error) {
        if (error instanceof StripeUnavailableError) {
          this.logger.warn({ err: error, topUp: topUp.id }, 'Stripe unavailable; the top-up is retried after its lease');
        } else if (topUp.attempts >= topUpAttemptsMax) {
          await this.dependencies.db.withTransaction((client) =>
            failTopUp(client, topUp, { code: 'error', message: (error as Error).message }, this.now()),
          );
        } else {
          this.logger.error({ err: error, topUp: topUp.id }, 'top-up failed; retried after its lease');
        }
      }
    }
    return rows.length;
  }

  private async pay(topUp: TopUpRow): Promise<void> {
    const { db, catalog, gateway } = this.dependencies;
    const fail = (code: string, message: string, paymentIntent?: string) =>
      db.withTransaction((client) => failTopUp(client, topUp, { code, message, paymentIntent }, this.now()));
    const { rows } = await db.query<{ stripe_customer_id: string | null }>('select stripe_customer_id from accounts where id = $1', [
      topUp.account_id,
    ]);
    const customerId = rows[0]?.stripe_customer_id ?? null;
    if (customerId === null) return fail('no_payment_method', 'the account has no Stripe customer');
    const pack = findPack(catalog, topUp.pack_id);
    const paymentMethod = await defaultPaymentMethod(gateway, customerId);
    if (paymentMethod === undefined) return fail('no_payment_method', `Stripe customer ${customerId} has no default payment method`);
    const price = await gateway.retrievePrice(pack.price);
    if (price.unit_amount === null) return fail('price_without_amount', `price ${pack.price} has no unit amount`);
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
    if (payment.outcome === 'failed') return fail(payment.code, payment.message, payment.paymentIntent);
    if (payment.outcome === 'processing') {
      // The webhook grants it when it succeeds; until then the lease keeps it from being asked again soon.
      await db.query('update top_ups set payment_intent = $2 where id = $1', [topUp.id, payment.paymentIntent]);
      return;
    }
    await db.withTransaction((client) =>
      completeTopUp(client, catalog, {
        accountId: topUp.account_id,
        topUpId: topUp.id,
        paymentIntent: payment.paymentIntent,
        amount: payment.amount,
        currency: payment.currency,
        now: this.now(),
      }),
    );
  }
}
