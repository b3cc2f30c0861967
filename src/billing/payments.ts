import { raiseAlert } from '../ops/alerts.js';
import { accountMetadataKey, idOf, packMetadataKey, readInteger, readPath, readText } from '../stripe/shapes.js';
import { RetryLater, grantOnce, linkCustomer, lockAccount, resolveAccount, type EffectContext, type EffectResult, type StripeObject } from './effect-context.js';

/**
 * Credit packs bought through Checkout, and what refunds and disputes take back. A clawback is
 * proportional: floor(credits × refunded / paid) for each refund, a dispute likewise for the
 * disputed amount, and all of one payment's clawbacks never above its credits. A refund that
 * fails or is cancelled, and a dispute that is won, restore exactly what they took.
 */
interface PaymentRow {
  id: number;
  account_id: string;
  amount_paid: number;
  credits: number;
  clawed_back: number;
}

/** checkout.session.completed and .async_payment_succeeded. */
export async function applyCheckoutSession(context: EffectContext): Promise<EffectResult> {
  const session = context.event.object;
  const accountHint = readText(session.client_reference_id) ?? readText(readPath(session, 'metadata', accountMetadataKey));
  const customerId = idOf(session.customer);
  if (readText(session.mode) === 'subscription') {
    if (accountHint === undefined || customerId === undefined) return { status: 'ignored' };
    const accountId = await resolveAccount(context, { accountHint, customerId });
    await linkCustomer(context, accountId, customerId);
    return { status: 'processed', accountId };
  }
  const paid = readText(session.payment_status) === 'paid' || context.event.type === 'checkout.session.async_payment_succeeded';
  const pack = context.catalog.credit_packs.find((candidate) => candidate.id === readText(readPath(session, 'metadata', packMetadataKey)));
  const paymentIntent = idOf(session.payment_intent);
  if (readText(session.mode) !== 'payment' || !paid || pack === undefined || paymentIntent === undefined) return { status: 'ignored' };
  const accountId = await resolveAccount(context, { accountHint, customerId });
  await lockAccount(context, accountId);
  const { rows } = await context.client.query<{ id: number }>(
    `insert into payments (account_id, checkout_session_id, payment_intent, amount_paid, currency)
     values ($1, $2, $3, $4, $5)
     on conflict (payment_intent) do update set checkout_session_id = coalesce(payments.checkout_session_id, excluded.checkout_session_id)
     returning id`,
    [accountId, readText(session.id), paymentIntent, readInteger(session.amount_total) ?? 0, readText(session.currency) ?? null],
  );
  await grantOnce(context, {
    accountId,
    source: 'purchase',
    credits: pack.credits,
    expiresAt: null,
    key: `purchase:${paymentIntent}`,
    reference: { checkout_session: readText(session.id), payment_intent: paymentIntent, pack: pack.id },
    paymentId: rows[0]?.id,
  });
  return { status: 'processed', accountId };
}

/** The payment behind a refund or dispute: by payment intent, or through the invoice it paid. */
async function findPayment(context: EffectContext, object: StripeObject): Promise<PaymentRow> {
  const paymentIntent = idOf(object.payment_intent) ?? context.prepared.paymentIntent;
  if (paymentIntent === undefined) throw new RetryLater(`no payment intent known for ${String(object.id)}`);
  const select = `select id, account_id, amount_paid, credits, clawed_back from payments`;
  const byIntent = await context.client.query<PaymentRow>(`${select} where payment_intent = $1`, [paymentIntent]);
  if (byIntent.rows[0] !== undefined) return byIntent.rows[0];
  if (context.prepared.invoiceId !== undefined) {
    const byInvoice = await context.client.query<PaymentRow>(
      `update payments set payment_intent = $2 where invoice_id = $1 and payment_intent is null
       returning id, account_id, amount_paid, credits, clawed_back`,
      [context.prepared.invoiceId, paymentIntent],
    );
    if (byInvoice.rows[0] !== undefined) return byInvoice.rows[0];
  }
  throw new RetryLater(`payment ${paymentIntent} has granted nothing that Tally knows of yet`);
}

/** Reads a payment; under its account's lock, what it says is current. */
async function readPayment(context: EffectContext, paymentId: number): Promise<PaymentRow> {
  const { rows } = await context.client.query<PaymentRow>('select id, account_id, amount_paid, credits, clawed_back from payments where id = $1', [paymentId]);
  if (rows[0] === undefined) throw new Error(`payment ${paymentId} vanished`);
  return rows[0];
}

/** Locks the payment's account, then reads the payment again under the lock. */
async function lockPayment(context: EffectContext, object: StripeObject): Promise<PaymentRow> {
  const found = await findPayment(context, object);
  await lockAccount(context, found.account_id);
  return readPayment(context, found.id);
}

export function proportionalCredits(payment: PaymentRow, amount: number): number {
  if (payment.amount_paid <= 0) return 0;
  return Number((BigInt(payment.credits) * BigInt(Math.min(amount, payment.amount_paid))) / BigInt(payment.amount_paid));
}

/** Claws back once under `key`; answers the credits that entry took (now or before). */
async function clawBack(context: EffectContext, payment: PaymentRow, credits: number, key: string, reference: Record<string, unknown>): Promise<number> {
  const existing = await context.client.query<{ amount: number }>('select amount from entries where account_id = $1 and idempotency_key = $2', [payment.account_id, key]);
  if (existing.rows[0] !== undefined) return -existing.rows[0].amount;
  const bounded = Math.min(credits, payment.credits - payment.clawed_back);
  if (bounded <= 0) return 0;
  await context.client.query('select tally_clawback($1, $2, $3, $4, $5, $6)', [payment.account_id, bounded, key, payment.id, { ...reference, event: context.event.id }, context.now]);
  await context.client.query('update payments set clawed_back = clawed_back + $2 where id = $1', [payment.id, bounded]);
  const { rows } = await context.client.query<{ debt: number }>('select debt from accounts where id = $1', [payment.account_id]);
  const debt = rows[0]?.debt ?? 0;
  if (debt > 0) {
    await raiseAlert(context.client, {
      kind: 'account_in_debt',
      key: `debt:${payment.account_id}`,
      severity: 'warning',
      message: `account ${payment.account_id} is in debt by ${debt} credits after ${key}`,
      details: { debt, cause: key },
      accountId: payment.account_id,
    });
  }
  return bounded;
}

/**
 * Restores once under `key` what a clawback took: back to the grants it was taken from, with
 * their expiry (tally_restore), never as new credits that would outlive them.
 */
async function restore(context: EffectContext, payment: PaymentRow, credits: number, key: string, reference: Record<string, unknown>): Promise<void> {
  if (credits <= 0) return;
  // The clawback a restore reverses is keyed after the same Stripe object (SPEC): `refund:{id}`
  // for `refund-reversed:{id}`, `dispute:{id}` for `dispute-won:{id}`.
  const clawbackKey = key.replace(/^refund-reversed:/, 'refund:').replace(/^dispute-won:/, 'dispute:');
  if (clawbackKey === key) throw new Error(`restore key ${key} names no clawback`);
  const { rows } = await context.client.query<{ result: { created: boolean } }>('select tally_restore($1, $2, $3, $4, $5, $6) as result', [
    payment.account_id,
    clawbackKey,
    credits,
    key,
    { ...reference, event: context.event.id },
    context.now,
  ]);
  if (rows[0]?.result.created === true) await context.client.query('update payments set clawed_back = clawed_back - $2 where id = $1', [payment.id, credits]);
}

const refundReversed = (status: string | undefined) => status === 'failed' || status === 'canceled';

async function applyRefund(context: EffectContext, refund: StripeObject): Promise<string> {
  const refundId = readText(refund.id);
  if (refundId === undefined) throw new Error('refund without id');
  const payment = await lockPayment(context, refund);
  const reference = { refund: refundId, payment_intent: idOf(refund.payment_intent) ?? context.prepared.paymentIntent };
  // A reversal seen first still claws, then restores: every order ends in the same entries.
  const clawed = await clawBack(context, payment, proportionalCredits(payment, readInteger(refund.amount) ?? 0), `refund:${refundId}`, reference);
  if (refundReversed(readText(refund.status))) {
    await restore(context, await readPayment(context, payment.id), clawed, `refund-reversed:${refundId}`, reference);
  }
  return payment.account_id;
}

/** refund.created, refund.updated, and charge.refunded (each refund of the charge). */
export async function applyRefundEvent(context: EffectContext): Promise<EffectResult> {
  const object = context.event.object;
  if (context.event.type !== 'charge.refunded') return { status: 'processed', accountId: await applyRefund(context, object) };
  const listed = readPath(object, 'refunds', 'data');
  const refunds = Array.isArray(listed) ? (listed as StripeObject[]) : context.prepared.refunds;
  if (refunds === undefined) throw new RetryLater(`refunds of charge ${String(object.id)} are not known yet`);
  let accountId: string | undefined;
  for (const refund of refunds) {
    accountId = await applyRefund(context, { ...refund, payment_intent: refund.payment_intent ?? object.payment_intent });
  }
  return accountId === undefined ? { status: 'ignored' } : { status: 'processed', accountId };
}

/** charge.dispute.created and charge.dispute.closed. */
export async function applyDisputeEvent(context: EffectContext): Promise<EffectResult> {
  const dispute = context.event.object;
  const disputeId = readText(dispute.id);
  if (disputeId === undefined) return { status: 'ignored' };
  const payment = await lockPayment(context, dispute);
  const reference = { dispute: disputeId, charge: idOf(dispute.charge) };
  const clawed = await clawBack(context, payment, proportionalCredits(payment, readInteger(dispute.amount) ?? payment.amount_paid), `dispute:${disputeId}`, reference);
  const status = readText(dispute.status);
  if (context.event.type === 'charge.dispute.closed' && (status === 'won' || status === 'warning_closed')) {
    await restore(context, await readPayment(context, payment.id), clawed, `dispute-won:${disputeId}`, reference);
    return { status: 'processed', accountId: payment.account_id };
  }
  await context.client.query('update accounts set flagged = true, updated_at = now() where id = $1', [payment.account_id]);
  await raiseAlert(context.client, {
    kind: 'dispute',
    key: `dispute:${disputeId}`,
    severity: 'critical',
    message: `dispute ${disputeId} on account ${payment.account_id}: ${clawed} credits clawed back`,
    details: reference,
    accountId: payment.account_id,
  });
  return { status: 'processed', accountId: payment.account_id };
}
