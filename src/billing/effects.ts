import type { EffectContext, EffectResult } from './effect-context.js';
import { applyCheckoutSession, applyDisputeEvent, applyRefundEvent } from './payments.js';
import { applyPaymentIntentFailed, applyPaymentIntentSucceeded } from './top-up-outcomes.js';
import { applyInvoicePaid, applyInvoicePaymentFailed, applyInvoicePaymentPaid, applySubscriptionEvent } from './subscriptions.js';

/**
 * Which effect each Stripe event type has. Every effect is keyed by a natural key unique in the
 * database, so applying an event twice, or events in any order, changes the ledger once.
 */
const handlers: Record<string, (context: EffectContext) => Promise<EffectResult>> = {
  'invoice.paid': applyInvoicePaid,
  'invoice.payment_succeeded': applyInvoicePaid,
  'invoice.payment_failed': applyInvoicePaymentFailed,
  'invoice_payment.paid': applyInvoicePaymentPaid,
  'customer.subscription.created': applySubscriptionEvent,
  'customer.subscription.updated': applySubscriptionEvent,
  'customer.subscription.deleted': applySubscriptionEvent,
  // Notification only: stored and marked processed, with no effect on credits.
  'customer.subscription.trial_will_end': async () => ({ status: 'processed' }),
  'checkout.session.completed': applyCheckoutSession,
  'checkout.session.async_payment_succeeded': applyCheckoutSession,
  // An auto top-up's payment (attributed by the metadata Tally set on it); others are ignored.
  'payment_intent.succeeded': applyPaymentIntentSucceeded,
  // An auto top-up's payment that Stripe reports failed after its answer: topup.failed, once.
  'payment_intent.payment_failed': applyPaymentIntentFailed,
  'charge.refunded': applyRefundEvent,
  'refund.created': applyRefundEvent,
  'refund.updated': applyRefundEvent,
  'charge.dispute.created': applyDisputeEvent,
  'charge.dispute.closed': applyDisputeEvent,
  // An inquiry that escalates to a chargeback says so only here (status `needs_response`).
  'charge.dispute.updated': applyDisputeEvent,
  'charge.dispute.funds_withdrawn': applyDisputeEvent,
};

export async function applyEvent(context: EffectContext): Promise<EffectResult> {
  const handler = handlers[context.event.type];
  return handler === undefined ? { status: 'ignored', reason: `Tally has no effect for ${context.event.type}` } : handler(context);
}
