import { cancelScheduledMonths, restoreScheduledMonths, scheduledCancellation } from './yearly.js';
import { accountMetadataKey, idOf, readInteger, readPath, readText } from '../stripe/shapes.js';
import { findPrice } from './catalog.js';
import type { Catalog } from './catalog.js';
import {
  IgnoredEvent,
  RetryLater,
  grantOnce,
  lockAccount,
  resolveAccount,
  type EffectContext,
  type EffectResult,
  type StripeObject,
} from './effect-context.js';

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
  /** The invoice's or session's total before the customer's Stripe balance was applied (null: recorded before 0020). */
  total: number | null;
  credits: number;
  clawed_back: number;
  /** What proration clawbacks of the period it paid took back (a downgrade, a prorated cancellation). */
  prorated_back: number;
}

/** The packs a session bought: each line item whose price is a pack's price, times its quantity. */
export function packsBought(catalog: Catalog, lineItems: StripeObject[]): { credits: number; packs: { pack: string; quantity: number }[] } {
  let credits = 0;
  const packs: { pack: string; quantity: number }[] = [];
  for (const item of lineItems) {
    const priceId = idOf(item.price);
    const match = priceId === undefined ? undefined : findPrice(catalog, priceId);
    const quantity = readInteger(item.quantity) ?? 1;
    if (match?.kind !== 'pack' || quantity <= 0) continue;
    credits += match.pack.credits * quantity;
    packs.push({ pack: match.pack.id, quantity });
  }
  if (!Number.isSafeInteger(credits)) throw new Error(`pack credits ${credits} are not a safe integer`);
  return { credits, packs };
}

/** A session's line items: carried by the event (expanded), or fetched before the transaction. */
function sessionLineItems(context: EffectContext, session: StripeObject): StripeObject[] {
  const carried = readPath(session, 'line_items', 'data');
  if (Array.isArray(carried) && readPath(session, 'line_items', 'has_more') !== true) return carried as StripeObject[];
  if (context.prepared.lineItems !== undefined) return context.prepared.lineItems;
  throw new RetryLater(`the line items of checkout session ${String(session.id)} were not fetched`);
}

/**
 * checkout.session.completed and .async_payment_succeeded. Whoever created the session (Tally's
 * checkout, a Payment Link, a pricing table, the app's own code), the credits follow the prices
 * paid, never metadata: a buyer cannot make a small pack's price grant a big pack. Whose account
 * it is follows the attribution rules; a bare client_reference_id counts for nothing.
 */
export async function applyCheckoutSession(context: EffectContext): Promise<EffectResult> {
  const session = context.event.object;
  const hints = {
    accountHint: readText(readPath(session, 'metadata', accountMetadataKey)),
    customerId: idOf(session.customer),
    clientReference: readText(session.client_reference_id),
    complete: true,
  };
  const mode = readText(session.mode);
  if (mode === 'subscription') {
    if (hints.customerId === undefined) return { status: 'ignored', reason: 'a subscription checkout without a customer' };
    const accountId = await resolveAccount(context, hints);
    return { status: 'processed', accountId };
  }
  if (mode !== 'payment') return { status: 'ignored', reason: `checkout mode ${mode ?? '?'} buys no credits` };
  const paid = readText(session.payment_status) === 'paid' || context.event.type === 'checkout.session.async_payment_succeeded';
  if (!paid) return { status: 'ignored', reason: 'not paid yet; checkout.session.async_payment_succeeded will grant' };
  const paymentIntent = idOf(session.payment_intent);
  if (paymentIntent === undefined) return { status: 'ignored', reason: 'a paid checkout without a payment intent' };
  const bought = packsBought(context.catalog, sessionLineItems(context, session));
  if (bought.credits === 0) return { status: 'ignored', reason: "not Tally's: no line item is a credit pack's price" };
  const accountId = await resolveAccount(context, { ...hints, payment: true });
  await lockAccount(context, accountId);
  const { rows } = await context.client.query<{ id: number }>(
    `insert into payments (account_id, checkout_session_id, payment_intent, amount_paid, currency, total)
     values ($1, $2, $3, $4, $5, $4)
     on conflict (payment_intent) do update set checkout_session_id = coalesce(payments.checkout_session_id, excluded.checkout_session_id)
     returning id`,
    [accountId, readText(session.id), paymentIntent, readInteger(session.amount_total) ?? 0, readText(session.currency) ?? null],
  );
  await grantOnce(context, {
    accountId,
    source: 'purchase',
    credits: bought.credits,
    expiresAt: null,
    key: `purchase:${paymentIntent}`,
    reference: { checkout_session: readText(session.id), payment_intent: paymentIntent, packs: bought.packs },
    paymentId: rows[0]?.id,
  });
  return { status: 'processed', accountId };
}

/**
 * The payment behind a refund or dispute: by payment intent, by any payment intent that paid an
 * invoice (Stripe may take several payments for one invoice), or through the invoice the API
 * named. A payment Tally never granted for is ignored; one that is Tally's waits for its grant.
 */
async function findPayment(context: EffectContext, object: StripeObject): Promise<PaymentRow> {
  const paymentIntent = idOf(object.payment_intent) ?? context.prepared.paymentIntent;
  if (paymentIntent === undefined) throw new RetryLater(`no payment intent known for ${String(object.id)}`);
  const select = `select p.id, p.account_id, p.amount_paid, p.total, p.credits, p.clawed_back, p.prorated_back from payments p`;
  const byIntent = await context.client.query<PaymentRow>(`${select} where p.payment_intent = $1`, [paymentIntent]);
  if (byIntent.rows[0] !== undefined) return byIntent.rows[0];
  const byInvoicePayment = await context.client.query<PaymentRow>(
    `${select} join invoice_payment_intents i on i.invoice_id = p.invoice_id where i.payment_intent = $1`,
    [paymentIntent],
  );
  if (byInvoicePayment.rows[0] !== undefined) return byInvoicePayment.rows[0];
  if (context.prepared.invoiceId !== undefined) {
    const byInvoice = await context.client.query<PaymentRow>(`${select} where p.invoice_id = $1`, [context.prepared.invoiceId]);
    const payment = byInvoice.rows[0];
    if (payment !== undefined) {
      await context.client.query(
        `insert into invoice_payment_intents (payment_intent, invoice_id, event_id) values ($1, $2, $3) on conflict do nothing`,
        [paymentIntent, context.prepared.invoiceId, context.event.id],
      );
      await context.client.query('update payments set payment_intent = $2 where id = $1 and payment_intent is null', [
        payment.id,
        paymentIntent,
      ]);
      return payment;
    }
  }
  const owner = context.prepared.paymentOwner;
  if (owner !== undefined && owner !== 'tally') throw new IgnoredEvent(`not Tally's: payment ${paymentIntent} ${owner.foreign}`);
  throw new RetryLater(`payment ${paymentIntent} has granted nothing that Tally knows of yet`);
}

/** Reads a payment; under its account's lock, what it says is current. */
async function readPayment(context: EffectContext, paymentId: number): Promise<PaymentRow> {
  const { rows } = await context.client.query<PaymentRow>(
    'select id, account_id, amount_paid, total, credits, clawed_back, prorated_back from payments where id = $1',
    [paymentId],
  );
  if (rows[0] === undefined) throw new Error(`payment ${paymentId} vanished`);
  return rows[0];
}

/** Locks the payment's account, then reads the payment again under the lock. */
async function lockPayment(context: EffectContext, object: StripeObject): Promise<PaymentRow> {
  const found = await findPayment(context, object);
  await lockAccount(context, found.account_id);
  return readPayment(context, found.id);
}

/**
 * A refund's or dispute's share of the payment's credits: floor(credits × amount / total), where
 * total is the invoice's or session's total before the customer's Stripe balance was applied
 * (SPEC): refunding the 400 cents a card paid of a 1000-cent invoice whose other 600 came from
 * the balance takes 40 % of its credits, not all of them. Payments recorded before the total was
 * kept fall back to what was paid.
 */
export function proportionalCredits(payment: PaymentRow, amount: number): number {
  const total = Number(payment.total ?? payment.amount_paid);
  if (total <= 0 || amount <= 0) return 0;
  return Number((BigInt(payment.credits) * BigInt(Math.min(amount, total))) / BigInt(total));
}

/**
 * Claws back once under `key`; answers the credits it took (now or before). A yearly payment's
 * months not granted yet are cancelled first; only the rest is taken from granted credits.
 */
async function clawBack(
  context: EffectContext,
  payment: PaymentRow,
  credits: number,
  key: string,
  reference: Record<string, unknown>,
): Promise<number> {
  const existing = await context.client.query<{ amount: number }>(
    'select amount from entries where account_id = $1 and idempotency_key = $2',
    [payment.account_id, key],
  );
  const cancelledBefore = await scheduledCancellation(context, payment.id, key);
  if (existing.rows[0] !== undefined || cancelledBefore > 0) return cancelledBefore - Number(existing.rows[0]?.amount ?? 0);
  // Refunds, disputes and the proration clawbacks of the period it paid together never take
  // more than the payment granted.
  const bounded = Math.min(credits, payment.credits - payment.clawed_back - payment.prorated_back);
  if (bounded <= 0) return 0;
  const cancelled = await cancelScheduledMonths(context, payment.id, payment.account_id, bounded, key);
  if (bounded > cancelled) {
    await context.client.query('select tally_clawback($1, $2, $3, $4, $5, $6)', [
      payment.account_id,
      bounded - cancelled,
      key,
      payment.id,
      { ...reference, event: context.event.id, months_cancelled: cancelled },
      context.now,
    ]);
  }
  await context.client.query('update payments set clawed_back = clawed_back + $2 where id = $1', [payment.id, bounded]);
  const { rows } = await context.client.query<{ debt: number }>('select debt from accounts where id = $1', [payment.account_id]);
  const debt = rows[0]?.debt ?? 0;
  if (debt > 0) {
    await context.alerts.raise(context.client, {
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
async function restore(
  context: EffectContext,
  payment: PaymentRow,
  credits: number,
  key: string,
  reference: Record<string, unknown>,
): Promise<void> {
  if (credits <= 0) return;
  // The clawback a restore reverses is keyed after the same Stripe object (SPEC): `refund:{id}`
  // for `refund-reversed:{id}`, `dispute:{id}` for `dispute-won:{id}`.
  const clawbackKey = key.replace(/^refund-reversed:/, 'refund:').replace(/^dispute-won:/, 'dispute:');
  if (clawbackKey === key) throw new Error(`restore key ${key} names no clawback`);
  // Months of a yearly payment that the clawback cancelled are scheduled again; the rest goes
  // back to the grants it was taken from.
  let restored = await restoreScheduledMonths(context, payment.id, payment.account_id, clawbackKey, key);
  const fromGrants = credits - (await scheduledCancellation(context, payment.id, clawbackKey));
  if (fromGrants > 0) {
    const { rows } = await context.client.query<{ result: { created: boolean } }>(
      'select tally_restore($1, $2, $3, $4, $5, $6) as result',
      [payment.account_id, clawbackKey, fromGrants, key, { ...reference, event: context.event.id }, context.now],
    );
    if (rows[0]?.result.created === true) restored += fromGrants;
  }
  if (restored > 0) await context.client.query('update payments set clawed_back = clawed_back - $2 where id = $1', [payment.id, restored]);
}

const refundReversed = (status: string | undefined) => status === 'failed' || status === 'canceled';

async function applyRefund(context: EffectContext, refund: StripeObject): Promise<string> {
  const refundId = readText(refund.id);
  if (refundId === undefined) throw new Error('refund without id');
  const payment = await lockPayment(context, refund);
  const reference = { refund: refundId, payment_intent: idOf(refund.payment_intent) ?? context.prepared.paymentIntent };
  // A reversal seen first still claws, then restores: every order ends in the same entries.
  const clawed = await clawBack(
    context,
    payment,
    proportionalCredits(payment, readInteger(refund.amount) ?? 0),
    `refund:${refundId}`,
    reference,
  );
  // Kept even when the clawback is 0 credits, so reconciliation sees the refund was applied.
  await context.client.query('insert into payment_refunds (refund_id, payment_id, credits) values ($1, $2, $3) on conflict do nothing', [
    refundId,
    payment.id,
    clawed,
  ]);
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

/**
 * An inquiry (`warning_*`) moves no money: Stripe withdraws nothing and the charge stays
 * refundable, so it claws nothing back. A chargeback (`needs_response`, `under_review`, `lost`)
 * claws back; `won` and `prevented` (a prevention, no chargeback) end with the credits restored.
 * An inquiry that escalates arrives as charge.dispute.updated in `needs_response`.
 */
const isInquiry = (status: string | undefined) => status?.startsWith('warning_') === true;
const disputeSettledForMerchant = (status: string | undefined) => status === 'won' || status === 'prevented';

/** charge.dispute.created, .updated, .funds_withdrawn and .closed. */
export async function applyDisputeEvent(context: EffectContext): Promise<EffectResult> {
  const dispute = context.event.object;
  const disputeId = readText(dispute.id);
  if (disputeId === undefined) return { status: 'ignored', reason: 'a dispute without an id' };
  const status = readText(dispute.status);
  const payment = await lockPayment(context, dispute);
  const reference = { dispute: disputeId, charge: idOf(dispute.charge) };
  if (isInquiry(status)) {
    // Nothing was taken for an inquiry; should an escalation have been applied first, a closed
    // inquiry gives back whatever that took.
    if (status === 'warning_closed') await restoreDispute(context, payment, disputeId, reference);
    return { status: 'processed', accountId: payment.account_id };
  }
  const clawed = await clawBack(
    context,
    payment,
    proportionalCredits(payment, readInteger(dispute.amount) ?? Number(payment.total ?? payment.amount_paid)),
    `dispute:${disputeId}`,
    reference,
  );
  if (disputeSettledForMerchant(status)) {
    // Claw, then restore: whichever of the dispute's events comes first, the entries end the same.
    await restore(context, await readPayment(context, payment.id), clawed, `dispute-won:${disputeId}`, reference);
    return { status: 'processed', accountId: payment.account_id };
  }
  await context.client.query('update accounts set flagged = true, updated_at = now() where id = $1', [payment.account_id]);
  await context.alerts.raise(context.client, {
    kind: 'dispute',
    key: `dispute:${disputeId}`,
    severity: 'critical',
    message: `dispute ${disputeId} on account ${payment.account_id}: ${clawed} credits clawed back`,
    details: reference,
    accountId: payment.account_id,
  });
  return { status: 'processed', accountId: payment.account_id };
}

/** Restores what `dispute:{id}` took, if it took anything. */
async function restoreDispute(
  context: EffectContext,
  payment: PaymentRow,
  disputeId: string,
  reference: Record<string, unknown>,
): Promise<void> {
  const taken = await context.client.query<{ amount: number }>(
    'select amount from entries where account_id = $1 and idempotency_key = $2',
    [payment.account_id, `dispute:${disputeId}`],
  );
  const credits = -(taken.rows[0]?.amount ?? 0);
  if (credits > 0) await restore(context, await readPayment(context, payment.id), credits, `dispute-won:${disputeId}`, reference);
}
