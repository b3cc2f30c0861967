/**
 * Readers for the Stripe objects inside events, for current API versions first and the older
 * shapes where it is cheap: the invoice's subscription under parent.subscription_details (was
 * invoice.subscription), a line's price under pricing.price_details (was line.price), proration
 * under parent.subscription_item_details (was line.proration), billing periods on subscription
 * items (were on the subscription).
 */
type StripeObject = Record<string, unknown>;

const isObject = (value: unknown): value is StripeObject => typeof value === 'object' && value !== null && !Array.isArray(value);
const at = (value: unknown, ...path: string[]): unknown =>
  path.reduce<unknown>((current, key) => (isObject(current) ? current[key] : undefined), value);
/** An id, whether the field holds the id or the expanded object. */
export const idOf = (value: unknown): string | undefined =>
  typeof value === 'string' ? value : isObject(value) && typeof value.id === 'string' ? value.id : undefined;
const text = (value: unknown): string | undefined => (typeof value === 'string' && value !== '' ? value : undefined);
const integer = (value: unknown): number | undefined => (typeof value === 'number' && Number.isSafeInteger(value) ? value : undefined);

export const accountMetadataKey = 'tally_account_id';
/** Set on Tally's pack sessions for people reading the Dashboard; never read to decide a grant (the price paid decides). */
export const packMetadataKey = 'tally_pack_id';

export interface InvoiceLine {
  /** The line's id (`il_...`): the natural key of a proration's effect. */
  id: string | undefined;
  priceId: string | undefined;
  /** Seats billed by the line (Stripe: null for lines without a quantity, counted as 1). */
  quantity: number;
  proration: boolean;
  periodStart: number;
  periodEnd: number;
  amount: number;
  /** The subscription the line bills (a pending item of another subscription may land on this invoice). */
  subscription: string | undefined;
  /** The subscription item the line bills: each item of a subscription has its own period grant. */
  subscriptionItem: string | undefined;
}

export function invoiceSubscriptionId(invoice: StripeObject): string | undefined {
  return idOf(at(invoice, 'parent', 'subscription_details', 'subscription')) ?? idOf(invoice.subscription);
}

export function invoiceAccountHint(invoice: StripeObject): string | undefined {
  return text(at(invoice, 'parent', 'subscription_details', 'metadata', accountMetadataKey));
}

export function invoiceLines(invoice: StripeObject): InvoiceLine[] {
  const data = at(invoice, 'lines', 'data');
  if (!Array.isArray(data)) return [];
  return data.filter(isObject).flatMap((line) => {
    const periodStart = integer(at(line, 'period', 'start'));
    const periodEnd = integer(at(line, 'period', 'end'));
    if (periodStart === undefined || periodEnd === undefined) return [];
    const priceId = idOf(at(line, 'pricing', 'price_details', 'price')) ?? idOf(line.price) ?? idOf(line.plan);
    const proration =
      at(line, 'parent', 'subscription_item_details', 'proration') ??
      at(line, 'parent', 'invoice_item_details', 'proration') ??
      line.proration;
    const quantity = integer(line.quantity) ?? 1;
    return [
      {
        id: text(line.id),
        priceId,
        quantity: Math.max(quantity, 0),
        proration: proration === true,
        periodStart,
        periodEnd,
        amount: integer(line.amount) ?? 0,
        subscription:
          idOf(at(line, 'parent', 'subscription_item_details', 'subscription')) ??
          idOf(at(line, 'parent', 'invoice_item_details', 'subscription')) ??
          idOf(line.subscription),
        subscriptionItem: idOf(at(line, 'parent', 'subscription_item_details', 'subscription_item')) ?? idOf(line.subscription_item),
      },
    ];
  });
}

/**
 * The invoice's total before the customer's Stripe balance was applied (`total`; `amount_due`
 * and `amount_paid` are what remained after it), the denominator of a refund's share.
 */
export function invoiceTotal(invoice: StripeObject): number | undefined {
  return integer(invoice.total);
}

/** When an invoice was paid (Stripe's `status_transitions.paid_at`), if the event says. */
export function invoicePaidAt(invoice: StripeObject): number | undefined {
  return integer(at(invoice, 'status_transitions', 'paid_at'));
}

/** The payment intent of an invoice where the event carries it (older shapes, or payments expanded). */
export function invoicePaymentIntent(invoice: StripeObject): string | undefined {
  const payments = at(invoice, 'payments', 'data');
  if (Array.isArray(payments)) {
    for (const payment of payments) {
      const intent = idOf(at(payment, 'payment', 'payment_intent'));
      if (intent !== undefined) return intent;
    }
  }
  return idOf(invoice.payment_intent);
}

export interface SubscriptionState {
  id: string;
  customerId: string | undefined;
  accountHint: string | undefined;
  status: string;
  priceId: string | undefined;
  /** The price of every item, in order (the first is priceId's). */
  priceIds: string[];
  quantity: number;
  periodStart: number | undefined;
  periodEnd: number | undefined;
  cancelAtPeriodEnd: boolean;
  trialEnd: number | undefined;
  endedAt: number | undefined;
  defaultPaymentMethod: string | undefined;
}

export function subscriptionState(subscription: StripeObject): SubscriptionState | undefined {
  const id = text(subscription.id);
  const status = text(subscription.status);
  if (id === undefined || status === undefined) return undefined;
  const items = at(subscription, 'items', 'data');
  const item = Array.isArray(items) && isObject(items[0]) ? items[0] : {};
  return {
    id,
    customerId: idOf(subscription.customer),
    accountHint: text(at(subscription, 'metadata', accountMetadataKey)),
    status,
    priceId: idOf(item.price) ?? idOf(item.plan),
    priceIds: (Array.isArray(items) ? items : [])
      .filter(isObject)
      .map((candidate) => idOf(candidate.price) ?? idOf(candidate.plan))
      .filter((price): price is string => price !== undefined),
    quantity: Math.max(integer(item.quantity) ?? 1, 0),
    periodStart: integer(item.current_period_start) ?? integer(subscription.current_period_start),
    periodEnd: integer(item.current_period_end) ?? integer(subscription.current_period_end),
    cancelAtPeriodEnd: subscription.cancel_at_period_end === true,
    trialEnd: integer(subscription.trial_end),
    endedAt: integer(subscription.ended_at),
    defaultPaymentMethod: idOf(subscription.default_payment_method),
  };
}

export const readText = text;
export const readInteger = integer;
export const readPath = at;
