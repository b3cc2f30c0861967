import { readFileSync } from 'node:fs';
import Stripe from 'stripe';
import { webhookSecret, type TestApp } from './app.js';

/**
 * Stripe payloads for tests, built from Stripe's own example objects (test/fixtures) with the
 * fields a scenario needs overridden, and signed with Stripe's real scheme.
 */
type StripeObject = Record<string, any>;
const fixtures = JSON.parse(readFileSync(new URL('../fixtures/stripe-objects.json', import.meta.url), 'utf8')) as Record<
  string,
  StripeObject
>;
const base = (name: string): StripeObject => structuredClone(fixtures[name] ?? {});

let sequence = 0;
export const uniqueId = (prefix: string): string => `${prefix}_${Date.now().toString(36)}${((sequence += 1)).toString(36)}`;

export function event(type: string, object: StripeObject, options: { id?: string; created?: number } = {}): StripeObject {
  return {
    ...base('event'),
    id: options.id ?? uniqueId('evt'),
    type,
    api_version: '2026-10-28.endive',
    created: options.created ?? 1_900_000_000,
    data: { object },
  };
}

export interface LineSpec {
  price: string;
  start: number;
  end: number;
  proration?: boolean;
  amount?: number;
  quantity?: number;
  /** The subscription item the line bills (default `si_test`). */
  subscriptionItem?: string;
  /** The line's own subscription, when it is not the invoice's (a pending item of another subscription). */
  subscription?: string;
}

function invoiceLine(invoiceId: string, subscription: string, spec: LineSpec): StripeObject {
  const line = base('line_item');
  line.id = uniqueId('il');
  line.invoice = invoiceId;
  line.amount = spec.amount ?? 1000;
  line.quantity = spec.quantity ?? 1;
  line.period = { start: spec.start, end: spec.end };
  line.parent = {
    type: 'subscription_item_details',
    invoice_item_details: null,
    subscription_item_details: {
      invoice_item: null,
      proration: spec.proration ?? false,
      proration_details: { credited_items: null },
      subscription: spec.subscription ?? subscription,
      subscription_item: spec.subscriptionItem ?? 'si_test',
    },
  };
  line.pricing = {
    type: 'price_details',
    price_details: { price: spec.price, product: 'prod_test' },
    unit_amount_decimal: String(spec.amount ?? 1000),
  };
  return line;
}

export function invoice(spec: {
  id?: string;
  customer: string;
  subscription: string;
  accountId?: string;
  billingReason?: string;
  lines: LineSpec[];
  amountPaid?: number;
  /** The total before the customer balance was applied (default: what was paid). */
  total?: number;
}): StripeObject {
  const object = base('invoice');
  object.id = spec.id ?? uniqueId('in');
  object.customer = spec.customer;
  object.status = 'paid';
  object.billing_reason = spec.billingReason ?? 'subscription_cycle';
  object.amount_paid = spec.amountPaid ?? 1000;
  object.total = spec.total ?? spec.amountPaid ?? 1000;
  object.parent = {
    type: 'subscription_details',
    quote_details: null,
    subscription_details: {
      subscription: spec.subscription,
      metadata: spec.accountId === undefined ? {} : { tally_account_id: spec.accountId },
    },
  };
  object.lines = {
    object: 'list',
    has_more: false,
    url: `/v1/invoices/${object.id}/lines`,
    data: spec.lines.map((line) => invoiceLine(object.id, spec.subscription, line)),
  };
  return object;
}

export function subscription(spec: {
  id: string;
  customer: string;
  status: string;
  price: string;
  start: number;
  end: number;
  accountId?: string;
  trialEnd?: number | null;
  defaultPaymentMethod?: string | null;
}): StripeObject {
  const object = base('subscription');
  object.id = spec.id;
  object.customer = spec.customer;
  object.status = spec.status;
  object.cancel_at_period_end = false;
  object.trial_end = spec.trialEnd ?? null;
  object.default_payment_method = spec.defaultPaymentMethod ?? null;
  object.metadata = spec.accountId === undefined ? {} : { tally_account_id: spec.accountId };
  const item = object.items.data[0];
  item.subscription = spec.id;
  item.price = { ...item.price, id: spec.price };
  item.current_period_start = spec.start;
  item.current_period_end = spec.end;
  return object;
}

/** The price of each pack in plans.example.json, which the tests' catalog is. */
const packPrices: Record<string, string> = { pack_1000: 'price_pack_1000', pack_10000: 'price_pack_10000' };

export interface SessionLineItem {
  price: string;
  quantity?: number;
}

export function checkoutLineItem(item: SessionLineItem): StripeObject {
  const quantity = item.quantity ?? 1;
  return {
    id: uniqueId('li'),
    object: 'item',
    price: { id: item.price, object: 'price' },
    quantity,
    amount_total: 1000 * quantity,
    currency: 'usd',
  };
}

/**
 * A Checkout Session as Tally's checkout creates it (Tally's metadata), or, with `accountId`
 * undefined, as a Payment Link or the app's own code does (only what `metadata` and
 * `clientReference` give). A session with `packId` or `lineItems` carries its line items in the
 * payload, as an expanded session would, unless `lineItemsInPayload` is false: Stripe's own
 * webhooks never carry them, and Tally then fetches them.
 */
export function checkoutSession(spec: {
  mode: 'payment' | 'subscription';
  accountId?: string;
  customer: string;
  paymentStatus?: string;
  paymentIntent?: string | null;
  packId?: string;
  lineItems?: SessionLineItem[];
  lineItemsInPayload?: boolean;
  clientReference?: string | null;
  metadata?: Record<string, string>;
  amountTotal?: number;
  subscription?: string;
  email?: string;
}): StripeObject {
  const object = base('checkout.session');
  object.id = uniqueId('cs_test');
  object.mode = spec.mode;
  object.status = 'complete';
  object.client_reference_id = spec.clientReference !== undefined ? spec.clientReference : (spec.accountId ?? null);
  object.customer = spec.customer;
  object.payment_status = spec.paymentStatus ?? 'paid';
  object.payment_intent = spec.paymentIntent ?? null;
  object.subscription = spec.subscription ?? null;
  object.amount_total = spec.amountTotal ?? 1000;
  if (spec.email !== undefined) object.customer_details = { ...object.customer_details, email: spec.email };
  object.metadata = spec.metadata ?? {
    ...(spec.accountId === undefined ? {} : { tally_account_id: spec.accountId }),
    ...(spec.packId === undefined ? {} : { tally_pack_id: spec.packId }),
  };
  const items = spec.lineItems ?? (spec.packId === undefined ? undefined : [{ price: packPrices[spec.packId] ?? spec.packId }]);
  delete object.line_items;
  if (items !== undefined && spec.lineItemsInPayload !== false) {
    object.line_items = {
      object: 'list',
      data: items.map(checkoutLineItem),
      has_more: false,
      url: `/v1/checkout/sessions/${object.id}/line_items`,
    };
  }
  return object;
}

export function refund(spec: {
  id?: string;
  amount: number;
  paymentIntent: string | null;
  charge?: string;
  status?: string;
}): StripeObject {
  return {
    ...base('refund'),
    id: spec.id ?? uniqueId('re'),
    amount: spec.amount,
    payment_intent: spec.paymentIntent,
    charge: spec.charge ?? uniqueId('ch'),
    status: spec.status ?? 'succeeded',
  };
}

export function dispute(spec: {
  id?: string;
  amount: number;
  paymentIntent: string | null;
  charge?: string;
  status?: string;
}): StripeObject {
  return {
    ...base('dispute'),
    id: spec.id ?? uniqueId('dp'),
    amount: spec.amount,
    payment_intent: spec.paymentIntent,
    charge: spec.charge ?? uniqueId('ch'),
    status: spec.status ?? 'needs_response',
  };
}

export function invoicePayment(spec: { invoice: string; paymentIntent: string; amount?: number }): StripeObject {
  const object = base('invoice_payment');
  object.id = uniqueId('inpay');
  object.invoice = spec.invoice;
  object.amount_paid = spec.amount ?? 1000;
  object.status = 'paid';
  object.payment = { type: 'payment_intent', payment_intent: spec.paymentIntent };
  return object;
}

export function signedHeader(payload: string, options: { secret?: string; timestamp?: number } = {}): string {
  return Stripe.webhooks.generateTestHeaderString({ payload, secret: options.secret ?? webhookSecret, timestamp: options.timestamp });
}

/** POSTs an event to the webhook endpoint, signed (or with the header given). */
export async function deliver(test: TestApp, stripeEvent: StripeObject, header?: string): Promise<{ status: number; body: any }> {
  const payload = JSON.stringify(stripeEvent);
  const response = await test.app.inject({
    method: 'POST',
    url: '/webhooks/stripe',
    headers: { 'content-type': 'application/json', 'stripe-signature': header ?? signedHeader(payload) },
    payload,
  });
  return { status: response.statusCode, body: response.json() };
}

/** Runs the worker until no event is due or waiting, within a bound. */
export async function settleWebhooks(test: TestApp, timeoutMilliseconds = 20_000): Promise<void> {
  const deadline = Date.now() + timeoutMilliseconds;
  for (;;) {
    await test.parts.worker.drain();
    const { rows } = await test.database.db.query<{ count: number }>(
      `select count(*)::int as count from webhook_events where status = 'pending'`,
    );
    if ((rows[0]?.count ?? 0) === 0) return;
    if (Date.now() > deadline) throw new Error(`${rows[0]?.count} webhook events still pending`);
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}

export const month = 30 * 24 * 3600;
