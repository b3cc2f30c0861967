import type pg from 'pg';
import { accountMetadataKey, readText } from '../stripe/shapes.js';
import type { Catalog } from './catalog.js';
import { type EffectContext, type EffectResult, IgnoredEvent } from './effect-context.js';
import { findPack } from './top-up-settings.js';

/**
 * What a top-up's payment ends in: credits granted once when it succeeds, under
 * `purchase:{payment_intent}` (the payer job's answer from Stripe and the
 * `payment_intent.succeeded` webhook race to it, and whichever comes second finds the grant
 * made), or `topup.failed`, three of which in a row turn auto top-up off.
 *
 * A top-up has at most one PaymentIntent (SPEC): the first Tally learns of (Stripe's answer to the
 * create, or a webhook naming the top-up in its metadata) is recorded on the top-up, and only
 * that one is ever granted. Credits follow money: a recorded PaymentIntent that succeeds is
 * granted whatever became of the top-up meanwhile (turned off, cancelled, failed first).
 */
export const topUpMetadataKey = 'tally_top_up';
export const topUpFailuresInRowMax = 3;

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
 * job and the webhook comes second changes nothing. A PaymentIntent other than the one the
 * top-up recorded is never granted: answers `false`, changing nothing.
 */
export async function completeTopUp(client: pg.ClientBase, catalog: Catalog, paid: PaidTopUp): Promise<boolean> {
  await client.query('select tally_lock_account($1, $2)', [paid.accountId, paid.now]);
  const { rows: topUps } = await client.query<{ pack_id: string; status: string; payment_intent: string | null }>(
    'select pack_id, status, payment_intent from top_ups where id = $1 and account_id = $2 for update',
    [paid.topUpId, paid.accountId],
  );
  const topUp = topUps[0];
  if (topUp === undefined) throw new Error(`top-up ${paid.topUpId} of ${paid.accountId} vanished`);
  if (topUp.payment_intent !== null && topUp.payment_intent !== paid.paymentIntent) return false;
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
  const { rowCount } = await client.query(
    `update top_ups set status = 'succeeded', payment_intent = $2, resolved_at = coalesce($3::timestamptz, now())
     where id = $1 and (payment_intent is null or payment_intent = $2)`,
    [paid.topUpId, paid.paymentIntent, paid.now],
  );
  if (rowCount !== 1) throw new Error(`top-up ${paid.topUpId} changed its PaymentIntent under the account's lock`);
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
  topUp: { id: number; account_id: string },
  failure: { code: string; message: string; paymentIntent?: string | undefined },
  now: Date | null,
): Promise<void> {
  await client.query('select 1 from accounts where id = $1 for update', [topUp.account_id]);
  const { rowCount } = await client.query(
    `update top_ups set status = 'failed', failure_code = $2, last_error = $3, payment_intent = coalesce($4, payment_intent), resolved_at = coalesce($5::timestamptz, now())
     where id = $1 and status = 'pending' and ($4::text is null or payment_intent is null or payment_intent = $4)`,
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

/**
 * payment_intent.succeeded: a top-up's payment, attributed by the metadata Tally set when it
 * created the PaymentIntent (and checked against the top-up Tally recorded). Other payment
 * intents (Checkout's) are granted by their checkout session's events. A success of a
 * PaymentIntent that is not the one the top-up recorded is never granted: it is money taken
 * without credits, so it is ignored with an alert for an operator to refund.
 */
export async function applyPaymentIntentSucceeded(context: EffectContext): Promise<EffectResult> {
  const intent = context.event.object;
  const topUp = await topUpOfPaymentIntent(context);
  if ('ignored' in topUp) return { status: 'ignored', reason: topUp.ignored };
  if (topUp.recordedPaymentIntent !== null && topUp.recordedPaymentIntent !== topUp.paymentIntent) {
    throw new IgnoredEvent(
      `top-up ${topUp.id} was paid with ${topUp.recordedPaymentIntent}, not ${topUp.paymentIntent}: nothing granted`,
      true,
    );
  }
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
