import {
  idOf,
  invoiceAccountHint,
  invoiceLines,
  invoicePaidAt,
  invoicePaymentIntent,
  invoiceTotal,
  invoiceSubscriptionId,
  readInteger,
  readPath,
  readText,
  subscriptionState,
  type InvoiceLine,
} from '../stripe/shapes.js';
import { findPrice, type Plan } from './catalog.js';
import { lockAccount, resolveAccount, type EffectContext, type EffectResult, type StripeObject } from './effect-context.js';
import { applyPeriodLine, applyProrationLine, recordBillingPeriod } from './periods.js';
import { considerTrial } from './trials.js';
import { clawBackEndedMonths } from './yearly.js';

/**
 * Subscriptions: only invoices grant their credits (a subscription event never does, which is
 * what makes a renewal's double grant impossible); subscription events keep the mirror.
 */
interface PlanLine {
  line: InvoiceLine;
  plan: Plan;
  interval: 'month' | 'year';
}

function planLines(context: EffectContext, invoice: StripeObject): PlanLine[] {
  const complete = context.prepared.invoiceLines === undefined ? invoice : { ...invoice, lines: { data: context.prepared.invoiceLines } };
  return invoiceLines(complete).flatMap((line) => {
    const match = line.priceId === undefined ? undefined : findPrice(context.catalog, line.priceId);
    return match?.kind === 'plan' ? [{ line, plan: match.plan, interval: match.interval }] : [];
  });
}

/**
 * An invoice's payment and its invoice_payment.paid link are written under one lock per invoice,
 * so whichever of the two events commits second sees the other and the payment always learns
 * its payment intent.
 */
async function lockInvoice(context: EffectContext, invoiceId: string): Promise<void> {
  await context.client.query(`select pg_advisory_xact_lock(hashtextextended('invoice:' || $1, 0))`, [invoiceId]);
}

async function recordInvoicePayment(context: EffectContext, accountId: string, invoice: StripeObject): Promise<number> {
  const invoiceId = readText(invoice.id);
  if (invoiceId === undefined) throw new Error('a paid invoice without an id');
  await lockInvoice(context, invoiceId);
  const { rows } = await context.client.query<{ id: number }>(
    `insert into payments (account_id, invoice_id, payment_intent, amount_paid, currency, total)
     values ($1, $2, coalesce($3, (select payment_intent from invoice_payment_links where invoice_id = $2)), $4, $5, $6)
     on conflict (invoice_id) do update set payment_intent = coalesce(payments.payment_intent, excluded.payment_intent),
       total = coalesce(payments.total, excluded.total)
     returning id`,
    [
      accountId,
      invoiceId,
      invoicePaymentIntent(invoice) ?? null,
      readInteger(invoice.amount_paid) ?? 0,
      readText(invoice.currency) ?? null,
      invoiceTotal(invoice) ?? null,
    ],
  );
  const id = rows[0]?.id;
  if (id === undefined) throw new Error(`payment of invoice ${invoiceId} was not recorded`);
  return id;
}

/**
 * The $0 line Stripe bills for a trial: it costs nothing and starts inside the trial. The trial
 * rule (with its claims) grants that period, so the invoice grants nothing for it; a refused
 * trial therefore gets nothing from its $0 invoice either. A $0 line outside a trial (a free
 * plan) grants as usual.
 */
function isTrialLine(context: EffectContext, line: InvoiceLine): boolean {
  if (line.amount !== 0) return false;
  const trialEnd = context.prepared.trialEnd;
  if (trialEnd === undefined) throw new Error(`a $0 invoice line of event ${context.event.id} was not prepared with its trial end`);
  // Starting before the trial's end (not ending by it) keeps this true when a trial is ended early.
  return trialEnd !== null && line.periodStart < trialEnd;
}

/**
 * invoice.paid and invoice.payment_succeeded: either or both, in any order, grant once. Each
 * plan line moves credits by the credit rule: a period line grants its period (a yearly one its
 * first month now and the others as they start), a proration line grants or claws back its
 * share of the credit periods it bills. The payment records every credit the invoice bought.
 */
export async function applyInvoicePaid(context: EffectContext): Promise<EffectResult> {
  const invoice = context.event.object;
  const invoiceSubscription = invoiceSubscriptionId(invoice);
  const lines = planLines(context, invoice);
  // Each line is booked to its own subscription: a pending item of another subscription (a
  // proration left by create_prorations) lands on whichever invoice the customer gets next.
  const subscriptionOf = (line: InvoiceLine) => line.subscription ?? invoiceSubscription;
  const subscriptionId = invoiceSubscription ?? lines.map(({ line }) => line.subscription).find((id) => id !== undefined);
  if (subscriptionId === undefined) return { status: 'ignored', reason: "not Tally's: an invoice of no subscription" };
  if (lines.length === 0) return { status: 'ignored', reason: "not Tally's: no line bills a plan price of the catalog" };
  const accountId = await resolveAccount(context, {
    accountHint: invoiceAccountHint(invoice),
    customerId: idOf(invoice.customer),
    subscriptionId,
    payment: true,
  });
  await lockAccount(context, accountId);
  const paymentId = await recordInvoicePayment(context, accountId, invoice);
  const reference = { invoice: readText(invoice.id) };
  const paidAt = invoicePaidAt(invoice) ?? context.event.created;
  // Period lines first: a proration on the same invoice (create_prorations, paid at renewal)
  // finds the new period it grants into.
  // Then positive prorations before negative ones, so that what an invoice does to the ledger
  // never depends on the order Stripe lists its lines: a clawback sees the grants it made.
  const ordered = [
    ...lines.filter(({ line }) => !line.proration),
    ...lines.filter(({ line }) => line.proration && line.amount > 0),
    ...lines.filter(({ line }) => line.proration && line.amount < 0),
  ];
  // An invoice applied before the credit rule moved its upgrade under `upgrade:` keys; applied
  // again (an operator's replay), its proration lines have already moved their credits.
  const legacy = await context.client.query(
    `select 1 from grants where account_id = $1 and grant_key like 'upgrade:%' and reference->>'invoice' = $2 limit 1`,
    [accountId, readText(invoice.id) ?? ''],
  );
  // What the payment granted: its period lines and positive prorations. A negative proration
  // takes back what an earlier payment granted, and counts against that payment (periods.ts).
  let bought = 0;
  for (const { line, plan, interval } of ordered) {
    if (line.proration && legacy.rowCount !== 0) continue;
    const lineSubscription = subscriptionOf(line) ?? subscriptionId;
    const request = {
      accountId,
      subscriptionId: lineSubscription,
      subscriptionItem: line.subscriptionItem,
      plan,
      interval,
      quantity: line.quantity,
      billed: { start: line.periodStart, end: line.periodEnd },
      paymentId,
      paidAt,
      invoiceSubscriptionId: subscriptionId,
      reference,
    };
    if (!line.proration) {
      if (isTrialLine(context, line)) await recordBillingPeriod(context, accountId, lineSubscription, interval, request.billed);
      else bought += await applyPeriodLine(context, request);
      continue;
    }
    if (line.amount === 0) continue;
    if (line.id === undefined) throw new Error(`a proration line of invoice ${String(invoice.id)} has no id`);
    const direction = line.amount > 0 ? 'grant' : 'clawback';
    const moved = await applyProrationLine(context, { ...request, lineKey: `proration:${line.id}`, direction });
    if (direction === 'grant') bought += moved;
  }
  await context.client.query('update payments set credits = greatest(credits, $2) where id = $1', [paymentId, bought]);
  return { status: 'processed', accountId };
}

/**
 * invoice_payment.paid: keeps which payment intent paid the invoice, and gives it to the
 * invoice's payment if Tally recorded one. An invoice that bought no credits only keeps the link.
 */
export async function applyInvoicePaymentPaid(context: EffectContext): Promise<EffectResult> {
  const invoicePayment = context.event.object;
  const invoiceId = idOf(invoicePayment.invoice);
  const paymentIntent = idOf(readPath(invoicePayment, 'payment', 'payment_intent'));
  if (invoiceId === undefined || paymentIntent === undefined)
    return { status: 'ignored', reason: 'an invoice payment without an invoice or a payment intent' };
  await lockInvoice(context, invoiceId);
  await context.client.query(
    'insert into invoice_payment_links (invoice_id, payment_intent, event_id) values ($1, $2, $3) on conflict (invoice_id) do nothing',
    [invoiceId, paymentIntent, context.event.id],
  );
  // Every payment intent of the invoice, not only the first: a refund may name any of them.
  await context.client.query(
    'insert into invoice_payment_intents (payment_intent, invoice_id, event_id) values ($1, $2, $3) on conflict do nothing',
    [paymentIntent, invoiceId, context.event.id],
  );
  const { rows } = await context.client.query<{ account_id: string }>(
    `update payments set payment_intent = coalesce(payment_intent, $2) where invoice_id = $1 returning account_id`,
    [invoiceId, paymentIntent],
  );
  return rows[0] === undefined ? { status: 'processed' } : { status: 'processed', accountId: rows[0].account_id };
}

/**
 * customer.subscription.created/updated/deleted: mirror the newest state; never older over newer.
 * Stripe stamps events to the second, and several events of one change share it, so the order
 * within a second is Stripe's own lifecycle: the later billing period is newer, then the later
 * status (tally_subscription_status_rank: incomplete, trialing, active, past_due, unpaid,
 * canceled). The random event id only breaks what is left, so that replays converge.
 */
export async function applySubscriptionEvent(context: EffectContext): Promise<EffectResult> {
  const state = subscriptionState(context.event.object);
  if (state === undefined) return { status: 'ignored', reason: 'a subscription without an id or a status' };
  const match = state.priceId === undefined ? undefined : findPrice(context.catalog, state.priceId);
  const plan = match?.kind === 'plan' ? match : undefined;
  if (plan === undefined) {
    // A subscription Tally mirrors keeps being mirrored when it moves to another price; one that
    // never had a catalog price is the merchant's other business.
    const mirrored = await context.client.query('select 1 from subscriptions where id = $1', [state.id]);
    if (mirrored.rowCount === 0) return { status: 'ignored', reason: `not Tally's: price ${state.priceId ?? '?'} is not in the catalog` };
  }
  const accountId = await resolveAccount(context, {
    accountHint: state.accountHint,
    customerId: state.customerId,
    subscriptionId: state.id,
  });
  const status = context.event.type === 'customer.subscription.deleted' ? 'canceled' : state.status;
  // Every plan item: an account's entitlements are the union of its subscription's plans.
  const planIds = [
    ...new Set(
      state.priceIds.flatMap((price) => {
        const itemMatch = findPrice(context.catalog, price);
        return itemMatch?.kind === 'plan' ? [itemMatch.plan.id] : [];
      }),
    ),
  ];
  // The account's lock first, as every spend takes it: a spend decides the account's plan under
  // that lock, so the first spend after this change commits sees it (a downgrade's meters).
  await lockAccount(context, accountId);
  const toTime = (seconds: number | undefined) => (seconds === undefined ? null : new Date(seconds * 1000));
  await context.client.query(
    `insert into subscriptions (id, account_id, customer_id, status, price_id, plan_id, billing_interval,
       current_period_start, current_period_end, cancel_at_period_end, trial_end, event_created, event_id, quantity, ended_at, plan_ids)
     values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, to_timestamp($12), $13, $14, $15, $16)
     on conflict (id) do update set customer_id = excluded.customer_id, status = excluded.status,
       price_id = excluded.price_id, plan_id = excluded.plan_id, billing_interval = excluded.billing_interval,
       current_period_start = excluded.current_period_start, current_period_end = excluded.current_period_end,
       cancel_at_period_end = excluded.cancel_at_period_end, trial_end = excluded.trial_end,
       quantity = excluded.quantity, ended_at = excluded.ended_at, plan_ids = excluded.plan_ids,
       event_created = excluded.event_created, event_id = excluded.event_id, updated_at = now()
     where (subscriptions.event_created, coalesce(subscriptions.current_period_start, '-infinity'), tally_subscription_status_rank(subscriptions.status), subscriptions.event_id)
        <= (excluded.event_created, coalesce(excluded.current_period_start, '-infinity'), tally_subscription_status_rank(excluded.status), excluded.event_id)`,
    [
      state.id,
      accountId,
      state.customerId ?? null,
      status,
      state.priceId ?? null,
      plan?.plan.id ?? null,
      plan?.interval ?? null,
      toTime(state.periodStart),
      toTime(state.periodEnd),
      state.cancelAtPeriodEnd,
      toTime(state.trialEnd),
      context.event.created,
      context.event.id,
      state.quantity,
      toTime(state.endedAt ?? (status === 'canceled' ? context.event.created : undefined)),
      planIds,
    ],
  );
  if (state.status === 'trialing' && plan !== undefined) await considerTrial(context, context.hasher, accountId, state, plan.plan);
  // A yearly month granted before the cancellation arrived is not kept when the subscription ended by its start.
  if (status === 'canceled' || status === 'incomplete_expired') await clawBackEndedMonths(context, state.id);
  return { status: 'processed', accountId };
}

/** invoice.payment_failed: the subscription is past due, and an operator is told. */
export async function applyInvoicePaymentFailed(context: EffectContext): Promise<EffectResult> {
  const invoice = context.event.object;
  const subscriptionId = invoiceSubscriptionId(invoice);
  if (subscriptionId === undefined) return { status: 'ignored', reason: "not Tally's: an invoice of no subscription" };
  const accountId = await resolveAccount(context, {
    accountHint: invoiceAccountHint(invoice),
    customerId: idOf(invoice.customer),
    subscriptionId,
  });
  // The same order as the subscription events: a failed payment does not move the period.
  await context.client.query(
    `update subscriptions set status = 'past_due', event_created = to_timestamp($2), event_id = $3, updated_at = now()
     where id = $1 and (event_created, tally_subscription_status_rank(status), event_id) <= (to_timestamp($2), tally_subscription_status_rank('past_due'), $3)`,
    [subscriptionId, context.event.created, context.event.id],
  );
  await context.alerts.raise(context.client, {
    kind: 'payment_failed',
    key: `payment_failed:${subscriptionId}`,
    severity: 'warning',
    message: `payment failed for subscription ${subscriptionId} of account ${accountId}`,
    details: { invoice: readText(invoice.id), subscription: subscriptionId },
    accountId,
  });
  return { status: 'processed', accountId };
}
