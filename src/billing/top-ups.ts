import type { Logger } from 'pino';
import type pg from 'pg';
import { z } from 'zod';
import type { Database } from '../db/database.js';
import { TallyError, accountNotFound } from '../errors.js';
import { Periodic, untilDone } from '../timing/periodic.js';
import { StripeUnavailableError, type StripeGateway } from '../stripe/gateway.js';
import { accountMetadataKey, idOf, packMetadataKey, readText } from '../stripe/shapes.js';
import type { Catalog, CreditPack } from './catalog.js';
import type { EffectContext, EffectResult } from './effect-context.js';

/**
 * Auto top-up. A spend that takes `available` below the account's threshold writes a pending
 * top-up in its own transaction (the accounts trigger, migration 0014); it never waits for
 * Stripe. The job here pays it: an off-session PaymentIntent on the customer's default payment
 * method for the pack's price, idempotency key `topup:{account}:{number}`, through the breaker.
 * Credits are granted only when the payment succeeded, under `purchase:{payment_intent}`: the
 * job's answer from Stripe and the `payment_intent.succeeded` webhook race to it, and whichever
 * comes second finds the grant made. Three failures in a row turn auto top-up off.
 */
export const topUpMetadataKey = 'tally_top_up';
export const topUpFailuresInRowMax = 3;
export const topUpAttemptsMax = 10;
export const topUpLeaseSeconds = 120;

export const autoTopUpInputSchema = z.strictObject({
  enabled: z.boolean(),
  threshold: z.int().positive().max(Number.MAX_SAFE_INTEGER),
  pack_id: z.string().min(1).max(64),
  max_per_month: z.int().min(1).max(1000),
});
export type AutoTopUpInput = z.infer<typeof autoTopUpInputSchema>;

export const packNotFound = (packId: string): TallyError =>
  new TallyError('pack_not_found', 404, `no credit pack with id ${packId} in the catalog`);
const noPaymentMethod = (message: string): TallyError => new TallyError('no_payment_method', 409, message);

function findPack(catalog: Catalog, packId: string): CreditPack {
  const pack = catalog.credit_packs.find((candidate) => candidate.id === packId);
  if (pack === undefined) throw packNotFound(packId);
  return pack;
}

/** The customer's default payment method, or undefined when it has none (or was deleted). */
async function defaultPaymentMethod(gateway: StripeGateway, customerId: string): Promise<string | undefined> {
  const customer = await gateway.retrieveCustomer(customerId);
  if ('deleted' in customer && customer.deleted === true) return undefined;
  return idOf((customer as { invoice_settings?: { default_payment_method?: unknown } }).invoice_settings?.default_payment_method);
}

export interface TopUpDependencies {
  db: Database;
  catalog: Catalog;
  gateway: StripeGateway | undefined;
  clock?: (() => Date) | undefined;
}

/** PUT /v1/accounts/{id}/auto-top-up. Enabling it asks Stripe that the customer can be charged. */
export async function setAutoTopUp(
  dependencies: TopUpDependencies,
  accountId: string,
  input: AutoTopUpInput,
): Promise<Record<string, unknown>> {
  findPack(dependencies.catalog, input.pack_id);
  const { rows } = await dependencies.db.query<{ stripe_customer_id: string | null }>(
    'select stripe_customer_id from accounts where id = $1',
    [accountId],
  );
  if (rows[0] === undefined) throw accountNotFound(accountId);
  if (input.enabled) {
    const customerId = rows[0].stripe_customer_id;
    if (customerId === null)
      throw noPaymentMethod(`account ${accountId} has no Stripe customer yet; a first purchase or subscription links one`);
    if (dependencies.gateway === undefined) throw noPaymentMethod('Stripe is not configured (STRIPE_SECRET_KEY)');
    if ((await defaultPaymentMethod(dependencies.gateway, customerId)) === undefined) {
      throw noPaymentMethod(`Stripe customer ${customerId} has no default payment method (invoice_settings.default_payment_method)`);
    }
  }
  const now = dependencies.clock?.() ?? null;
  return dependencies.db.withTransaction(async (client) => {
    await client.query('select 1 from accounts where id = $1 for update', [accountId]);
    const { rows: saved } = await client.query(
      `insert into auto_top_ups (account_id, enabled, threshold, pack_id, max_per_month, updated_at) values ($1, $2, $3, $4, $5, coalesce($6::timestamptz, now()))
       on conflict (account_id) do update set enabled = excluded.enabled, threshold = excluded.threshold, pack_id = excluded.pack_id,
         max_per_month = excluded.max_per_month, updated_at = excluded.updated_at,
         failures_in_row = case when excluded.enabled and not auto_top_ups.enabled then 0 else auto_top_ups.failures_in_row end
       returning account_id, enabled, threshold, pack_id, max_per_month, failures_in_row, tally_iso(updated_at) as updated_at`,
      [accountId, input.enabled, input.threshold, input.pack_id, input.max_per_month, now],
    );
    const { rows: account } = await client.query<{ available: number }>(
      'update accounts set top_up_threshold = $2 where id = $1 returning available',
      [accountId, input.enabled ? input.threshold : null],
    );
    if (input.enabled && (account[0]?.available ?? 0) < input.threshold) {
      // Already below the threshold: no spend will cross it, so the top-up starts now.
      await client.query('select tally_request_top_up($1, coalesce($2::timestamptz, now()))', [accountId, now]);
    }
    if (!input.enabled)
      await client.query(
        `update top_ups set status = 'cancelled', resolved_at = now() where account_id = $1 and status = 'pending' and payment_intent is null`,
        [accountId],
      );
    return saved[0] as Record<string, unknown>;
  });
}

interface TopUpRow {
  id: number;
  account_id: string;
  number: number;
  pack_id: string;
  attempts: number;
}

export interface PaidTopUp {
  accountId: string;
  topUpId: number;
  paymentIntent: string;
  amount: number;
  currency: string | null;
  now: Date | null;
}

/**
 * Grants a paid top-up's pack once, under `purchase:{payment_intent}`, records the payment (so
 * refunds and disputes claw back from it) and writes `topup.succeeded` once. Whichever of the
 * job and the webhook comes second changes nothing.
 */
export async function completeTopUp(client: pg.ClientBase, catalog: Catalog, paid: PaidTopUp): Promise<boolean> {
  await client.query('select tally_lock_account($1, $2)', [paid.accountId, paid.now]);
  const { rows: topUps } = await client.query<{ pack_id: string; status: string }>(
    'select pack_id, status from top_ups where id = $1 and account_id = $2',
    [paid.topUpId, paid.accountId],
  );
  const topUp = topUps[0];
  if (topUp === undefined) throw new Error(`top-up ${paid.topUpId} of ${paid.accountId} vanished`);
  const pack = findPack(catalog, topUp.pack_id);
  const { rows: payments } = await client.query<{ id: number }>(
    `insert into payments (account_id, payment_intent, amount_paid, currency) values ($1, $2, $3, $4)
     on conflict (payment_intent) do update set amount_paid = payments.amount_paid returning id`,
    [paid.accountId, paid.paymentIntent, paid.amount, paid.currency],
  );
  const paymentId = payments[0]?.id;
  const { rows } = await client.query<{ result: { created: boolean; grant: { id: string } } }>(
    `select tally_add_grant($1, 'purchase', $2, 0, null, $3, 'grant', $4, 'stripe', null, coalesce($5::timestamptz, now())) as result`,
    [
      paid.accountId,
      pack.credits,
      `purchase:${paid.paymentIntent}`,
      { payment_intent: paid.paymentIntent, top_up: paid.topUpId, pack: pack.id },
      paid.now,
    ],
  );
  const result = rows[0]?.result;
  if (result === undefined) throw new Error(`tally_add_grant answered nothing for top-up ${paid.topUpId}`);
  if (!result.created) return false;
  await client.query('update grants set payment_id = $1 where id = $2', [paymentId, Number(result.grant.id.replace('grant_', ''))]);
  await client.query('update payments set credits = credits + $1 where id = $2', [pack.credits, paymentId]);
  await client.query(
    `update top_ups set status = 'succeeded', payment_intent = $2, resolved_at = coalesce($3::timestamptz, now()) where id = $1`,
    [paid.topUpId, paid.paymentIntent, paid.now],
  );
  await client.query('update auto_top_ups set failures_in_row = 0 where account_id = $1', [paid.accountId]);
  await client.query(`select tally_event('topup.succeeded', $1, $2, $3)`, [
    paid.accountId,
    {
      top_up_id: `topup_${paid.topUpId}`,
      payment_intent: paid.paymentIntent,
      pack_id: pack.id,
      credits: pack.credits,
      amount: paid.amount,
      currency: paid.currency,
    },
    paid.now,
  ]);
  return true;
}

/**
 * Records a failed top-up once, writes `topup.failed`, and turns auto top-up off after three in a
 * row. Only a pending top-up fails: the job's own decline and Stripe's `payment_intent.payment_failed`
 * for the same payment, in either order, count one failure.
 */
export async function failTopUp(
  client: pg.ClientBase,
  topUp: Pick<TopUpRow, 'id' | 'account_id'>,
  failure: { code: string; message: string; paymentIntent?: string | undefined },
  now: Date | null,
): Promise<void> {
  await client.query('select 1 from accounts where id = $1 for update', [topUp.account_id]);
  const { rowCount } = await client.query(
    `update top_ups set status = 'failed', failure_code = $2, last_error = $3, payment_intent = coalesce($4, payment_intent), resolved_at = coalesce($5::timestamptz, now())
     where id = $1 and status = 'pending'`,
    [topUp.id, failure.code, failure.message.slice(0, 500), failure.paymentIntent ?? null, now],
  );
  if (rowCount === 0) return;
  const { rows } = await client.query<{ failures_in_row: number }>(
    `update auto_top_ups set failures_in_row = failures_in_row + 1, enabled = enabled and failures_in_row + 1 < $2 where account_id = $1 returning failures_in_row`,
    [topUp.account_id, topUpFailuresInRowMax],
  );
  const failures = rows[0]?.failures_in_row ?? 0;
  const disabled = failures >= topUpFailuresInRowMax;
  if (disabled) await client.query('update accounts set top_up_threshold = null where id = $1', [topUp.account_id]);
  await client.query(`select tally_event('topup.failed', $1, $2, $3)`, [
    topUp.account_id,
    {
      top_up_id: `topup_${topUp.id}`,
      code: failure.code,
      message: failure.message.slice(0, 500),
      payment_intent: failure.paymentIntent ?? null,
      failures_in_row: failures,
      auto_top_up_disabled: disabled,
    },
    now,
  ]);
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

/**
 * payment_intent.succeeded: a top-up's payment, attributed by the metadata Tally set when it
 * created the PaymentIntent (and checked against the top-up Tally recorded). Other payment
 * intents (Checkout's) are granted by their checkout session's events.
 */
export async function applyPaymentIntentSucceeded(context: EffectContext): Promise<EffectResult> {
  const intent = context.event.object;
  const topUp = await topUpOfPaymentIntent(context);
  if ('ignored' in topUp) return { status: 'ignored', reason: topUp.ignored };
  const amount = Number(intent.amount_received ?? intent.amount ?? 0);
  await completeTopUp(context.client, context.catalog, {
    accountId: topUp.accountId,
    topUpId: topUp.id,
    paymentIntent: topUp.paymentIntent,
    amount,
    currency: readText(intent.currency) ?? null,
    now: context.now,
  });
  return { status: 'processed', accountId: topUp.accountId };
}

/**
 * payment_intent.payment_failed: Stripe may report a top-up's failure after its answer (a
 * payment that was `processing`, a bank that refused later). It is the top-up's `topup.failed`,
 * counted once: a top-up the job already failed (the synchronous decline, which Stripe reports
 * with this event too) or already granted is left as it is.
 */
export async function applyPaymentIntentFailed(context: EffectContext): Promise<EffectResult> {
  const topUp = await topUpOfPaymentIntent(context);
  if ('ignored' in topUp) return { status: 'ignored', reason: topUp.ignored };
  if (topUp.recordedPaymentIntent !== null && topUp.recordedPaymentIntent !== topUp.paymentIntent) {
    return { status: 'ignored', reason: `top-up ${topUp.id} was paid with ${topUp.recordedPaymentIntent}, not ${topUp.paymentIntent}` };
  }
  const error = context.event.object.last_payment_error as Record<string, unknown> | null | undefined;
  const code = readText(error?.code) ?? readText(error?.decline_code) ?? 'payment_failed';
  const message = readText(error?.message) ?? `payment intent ${topUp.paymentIntent} failed`;
  await failTopUp(
    context.client,
    { id: topUp.id, account_id: topUp.accountId },
    { code, message, paymentIntent: topUp.paymentIntent },
    context.now,
  );
  return { status: 'processed', accountId: topUp.accountId };
}

/**
 * The top-up a PaymentIntent event is about, attributed by the metadata Tally set when it
 * created the PaymentIntent and checked against the top-ups Tally recorded.
 */
async function topUpOfPaymentIntent(
  context: EffectContext,
): Promise<{ id: number; accountId: string; paymentIntent: string; recordedPaymentIntent: string | null } | { ignored: string }> {
  const intent = context.event.object;
  const topUpId = readText((intent.metadata as Record<string, unknown> | undefined)?.[topUpMetadataKey]);
  const accountId = readText((intent.metadata as Record<string, unknown> | undefined)?.[accountMetadataKey]);
  const paymentIntent = readText(intent.id);
  if (topUpId === undefined || accountId === undefined || paymentIntent === undefined || !/^[1-9][0-9]{0,15}$/.test(topUpId)) {
    return { ignored: 'not a Tally top-up (checkout payments are granted by their checkout session)' };
  }
  const { rows } = await context.client.query<{ payment_intent: string | null }>(
    'select payment_intent from top_ups where id = $1 and account_id = $2',
    [Number(topUpId), accountId],
  );
  if (rows[0] === undefined) return { ignored: `no top-up ${topUpId} for account ${accountId}` };
  return { id: Number(topUpId), accountId, paymentIntent, recordedPaymentIntent: rows[0].payment_intent };
}
