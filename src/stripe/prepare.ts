import type { Prepared, StoredEvent, StripeObject } from '../billing/effect-context.js';
import { RetryLater } from '../billing/effect-context.js';
import type { Database } from '../db/database.js';
import type { StripeGateway } from './gateway.js';
import { idOf, invoiceLines, invoiceSubscriptionId, readPath } from './shapes.js';

/**
 * What an event needs from the Stripe API, fetched before its transaction opens so that no
 * lock is held across a network call: the payment intent behind a charge, refund or dispute,
 * the invoice a payment intent paid, the refunds of a charge, an invoice's lines and its
 * subscription's trial end.
 */
const paymentEventTypes = new Set(['charge.refunded', 'refund.created', 'refund.updated', 'charge.dispute.created', 'charge.dispute.closed']);

const subscriptionEventTypes = new Set(['customer.subscription.created', 'customer.subscription.updated']);

/** The card fingerprint of a trialing subscription's payment method: expanded, or fetched. */
async function prepareTrial(gateway: StripeGateway | undefined, object: StripeObject): Promise<Prepared> {
  if (object.status !== 'trialing') return {};
  const method = object.default_payment_method;
  const expanded = readPath(method, 'card', 'fingerprint');
  if (typeof expanded === 'string') return { cardFingerprint: expanded };
  const methodId = idOf(method);
  if (methodId === undefined) return {};
  if (gateway === undefined) throw new RetryLater(`the card of payment method ${methodId} needs the Stripe API, and STRIPE_SECRET_KEY is not set`);
  const fingerprint = (await gateway.retrievePaymentMethod(methodId)).card?.fingerprint;
  return typeof fingerprint === 'string' ? { cardFingerprint: fingerprint } : {};
}

const paidInvoiceTypes = new Set(['invoice.paid', 'invoice.payment_succeeded']);

/**
 * What a paid invoice needs: all its lines when its event listed only the first ones, and,
 * when a plan line costs nothing, the end of its subscription's trial. Stripe bills a trial as
 * a $0 invoice whose line covers the trial; the trial rule grants that period, not the invoice.
 */
async function prepareInvoice(db: Database, gateway: StripeGateway | undefined, invoice: StripeObject): Promise<Prepared> {
  const invoiceId = idOf(invoice.id);
  const prepared: Prepared = {};
  if (readPath(invoice, 'lines', 'has_more') === true && invoiceId !== undefined) {
    if (gateway === undefined) throw new RetryLater(`the lines of invoice ${invoiceId} need the Stripe API, and STRIPE_SECRET_KEY is not set`);
    const lines = await gateway.call('invoices.listLineItems', (stripe) => stripe.invoices.listLineItems(invoiceId, { limit: 100 }).autoPagingToArray({ limit: 10_000 }));
    prepared.invoiceLines = lines as unknown as StripeObject[];
  }
  const complete = prepared.invoiceLines === undefined ? invoice : { ...invoice, lines: { data: prepared.invoiceLines } };
  const subscriptionId = invoiceSubscriptionId(invoice);
  if (subscriptionId !== undefined && invoiceLines(complete).some((line) => line.amount === 0 && !line.proration)) {
    prepared.trialEnd = await subscriptionTrialEnd(db, gateway, subscriptionId);
  }
  return prepared;
}

/** A subscription's trial end (null: no trial), from its mirror once a subscription event was applied, else from Stripe. */
async function subscriptionTrialEnd(db: Database, gateway: StripeGateway | undefined, subscriptionId: string): Promise<number | null> {
  const { rows } = await db.query<{ trial_end: number | null }>('select extract(epoch from trial_end)::bigint as trial_end from subscriptions where id = $1', [subscriptionId]);
  if (rows[0] !== undefined) return rows[0].trial_end;
  // Without the API, the subscription's own event (always sent) tells; until then, wait.
  if (gateway === undefined) throw new RetryLater(`whether a $0 line of ${subscriptionId} is its trial needs its subscription event or the Stripe API`);
  const subscription = await gateway.call('subscriptions.retrieve', (stripe) => stripe.subscriptions.retrieve(subscriptionId));
  return subscription.trial_end ?? null;
}

export async function prepareEvent(db: Database, gateway: StripeGateway | undefined, event: StoredEvent): Promise<Prepared> {
  if (subscriptionEventTypes.has(event.type)) return prepareTrial(gateway, event.object);
  if (paidInvoiceTypes.has(event.type)) return prepareInvoice(db, gateway, event.object);
  if (!paymentEventTypes.has(event.type)) return {};
  const object = event.object;
  const prepared: Prepared = {};
  const needGateway = (what: string): StripeGateway => {
    if (gateway === undefined) throw new RetryLater(`${what} needs the Stripe API, and STRIPE_SECRET_KEY is not set`);
    return gateway;
  };
  let paymentIntent = idOf(object.payment_intent);
  if (paymentIntent === undefined) {
    const chargeId = event.type === 'charge.refunded' ? idOf(object.id) : idOf(object.charge);
    if (chargeId === undefined) return prepared;
    const charge = await needGateway(`the payment intent of charge ${chargeId}`).retrieveCharge(chargeId);
    paymentIntent = idOf(charge.payment_intent);
    if (paymentIntent !== undefined) prepared.paymentIntent = paymentIntent;
  }
  if (paymentIntent === undefined) return prepared;
  const known = await db.query('select 1 from payments where payment_intent = $1', [paymentIntent]);
  if (known.rowCount === 0 && gateway !== undefined) {
    const invoiceId = await gateway.invoiceOfPaymentIntent(paymentIntent);
    if (invoiceId !== undefined) prepared.invoiceId = invoiceId;
  }
  if (event.type === 'charge.refunded' && !Array.isArray(readPath(object, 'refunds', 'data'))) {
    const chargeId = idOf(object.id) ?? '';
    const refunds = await needGateway(`the refunds of charge ${chargeId}`).call('refunds.list', (stripe) =>
      stripe.refunds.list({ charge: chargeId, limit: 100 }).autoPagingToArray({ limit: 10_000 }),
    );
    prepared.refunds = refunds as unknown as StripeObject[];
  }
  return prepared;
}
