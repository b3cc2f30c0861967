import { readFileSync } from 'node:fs';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { Fact, PaidLine, Period } from './history.js';
import { addMonths, monthsOf } from './model.js';

/**
 * The simulator's Stripe: customers, subscriptions (monthly and yearly prices, seats), renewals,
 * plan, seat and interval changes with each proration behaviour, cancellations, failed and
 * recovered payments, trials, Checkout (Tally's sessions and Payment Links), refunds and
 * disputes, on a virtual clock. Each business action appends its webhook events (current API
 * shapes: FLOWS.md) to `outbox` and what it did to `facts`, the history the reference model
 * reads. It also answers, over HTTP, the API calls Tally makes.
 */
type StripeObject = Record<string, any>;
const fixtures = JSON.parse(readFileSync(new URL('../test/fixtures/stripe-objects.json', import.meta.url), 'utf8')) as Record<
  string,
  StripeObject
>;
const base = (name: string): StripeObject => structuredClone(fixtures[name] ?? {});

/** Unit prices in cents; a pack's credits come from the catalog, its price from here. */
export const unitAmounts: Record<string, number> = {
  price_starter_monthly: 1000,
  price_plus_monthly: 4000,
  price_plus_yearly: 40000,
  price_pro_monthly: 20000,
  price_pro_yearly: 200000,
  price_pack_1000: 1000,
  price_pack_10000: 8000,
};
export const intervalOf = (price: string): 'month' | 'year' => (price.endsWith('_yearly') ? 'year' : 'month');

export interface SimSubscription {
  id: string;
  account: string;
  customer: string;
  item: string;
  price: string;
  quantity: number;
  anchor: number;
  cycles: number;
  period: Period;
  status: 'trialing' | 'active' | 'past_due' | 'canceled';
  cancelAtPeriodEnd: boolean;
  trialEnd: number | null;
  pending: PaidLine[];
  failNextRenewal: number | undefined;
  /** A second plan item (monthly, fixed), for subscriptions with several items. */
  extra: { item: string; price: string; quantity: number } | undefined;
  /** A `cancel_at` before the period's end (a yearly plan ending at a month start). */
  cancelAt: number | null;
  /** When it ended (Stripe's `ended_at`). */
  endedAt: number | null;
  /** An end whose webhooks Stripe delivers late: when they arrive (Tally knows it from then). */
  endDeliveredAt?: number;
  /** The event time of the last subscription event, so that no two share a second and an order. */
  created: number;
}

export interface SimPayment {
  paymentIntent: string;
  charge: string;
  amount: number;
  refunded: number;
  disputed: boolean;
  kind: 'pack' | 'monthly' | 'yearly' | 'proration';
}

/** What the customer's default card does with an off-session PaymentIntent. */
export type CardBehavior =
  | { outcome: 'succeeded' }
  | { outcome: 'processing'; resolvesAfter: number; succeeds: boolean }
  | { outcome: 'requires_action' }
  | { outcome: 'card_declined' };

export interface SimCustomer {
  id: string;
  balance: number;
  /** Proration items of a subscription cancelled without invoicing them: the next invoice of any subscription carries them. */
  pendingItems: PaidLine[];
  card: CardBehavior;
}

interface Delayed {
  at: number;
  run: () => void;
}

export class StripeWorld {
  now: number;
  readonly facts: Fact[] = [];
  outbox: StripeObject[] = [];
  readonly subscriptions = new Map<string, SimSubscription>();
  readonly customers = new Map<string, SimCustomer>();
  readonly payments = new Map<string, SimPayment[]>();
  private readonly delayed: Delayed[] = [];
  private readonly charges = new Map<string, { payment_intent: string; amount: number; refunds: StripeObject[] }>();
  private readonly invoicePayments = new Map<string, string>();
  private readonly invoiceLines = new Map<string, StripeObject[]>();
  private readonly paidInvoices: StripeObject[] = [];
  private readonly invoicesById = new Map<string, StripeObject>();
  private readonly paymentIntents = new Map<string, StripeObject>();
  private readonly completedSessionObjects: StripeObject[] = [];
  private readonly sessions = new Map<string, StripeObject>();
  private readonly sessionKeys = new Map<string, string>();
  private readonly completedSessions = new Set<string>();
  private readonly sessionLineItems = new Map<string, StripeObject[]>();
  /** Idempotency keys of PaymentIntent creates: Stripe answers a key's first answer for 24 hours, then forgets it. */
  private readonly paymentIntentKeys = new Map<string, { at: number; answer: [number, unknown] }>();
  private counter = 0;
  private server: Server | undefined;
  url = '';
  /** Server errors answered: none expected. */
  readonly unknownCalls: string[] = [];

  constructor(
    private readonly prefix: string,
    start: number,
  ) {
    this.now = start;
  }

  id(kind: string): string {
    this.counter += 1;
    return `${kind}_${this.prefix}${this.counter.toString(36).padStart(4, '0')}`;
  }

  // ---- the clock ----------------------------------------------------------------------------

  /** The next instant after now at which Stripe acts by itself (renewal, trial end, a delayed action) or a yearly month starts. */
  nextBoundary(): number | undefined {
    const times: number[] = this.delayed.map((action) => action.at);
    for (const sub of this.subscriptions.values()) {
      if (sub.status === 'canceled') continue;
      times.push(sub.period.end);
      if (intervalOf(sub.price) === 'year')
        times.push(
          ...monthsOf(sub.period)
            .map((month) => month.start)
            .filter((start) => start > this.now),
        );
    }
    const future = times.filter((time) => time > this.now);
    return future.length === 0 ? undefined : Math.min(...future);
  }

  /** Moves the clock to `at` and runs what Stripe does by itself at that instant. */
  advanceTo(at: number): void {
    this.now = at;
    for (const action of this.delayed.filter((candidate) => candidate.at <= at)) {
      this.delayed.splice(this.delayed.indexOf(action), 1);
      action.run();
    }
    for (const sub of [...this.subscriptions.values()]) {
      if (sub.status === 'canceled' || sub.period.end > at) continue;
      if (sub.cancelAtPeriodEnd) this.end(sub, sub.period.end);
      else this.renew(sub);
    }
  }

  // ---- events -------------------------------------------------------------------------------

  private emit(type: string, object: StripeObject, previous?: StripeObject): void {
    const envelope: StripeObject = {
      ...base('event'),
      id: this.id('evt'),
      type,
      api_version: '2026-10-28.endive',
      created: this.now,
      livemode: false,
      data: { object: structuredClone(object) },
    };
    if (previous !== undefined) envelope.data.previous_attributes = previous;
    envelope.request = { id: null, idempotency_key: null };
    this.outbox.push(envelope);
  }

  customerOf(account: string): string {
    let customer = this.customers.get(account);
    if (customer === undefined)
      this.customers.set(account, (customer = { id: this.id('cus'), balance: 0, pendingItems: [], card: { outcome: 'succeeded' } }));
    return customer.id;
  }

  subscriptionObject(sub: SimSubscription): StripeObject {
    const object = base('subscription');
    const item = object.items.data[0];
    Object.assign(item, {
      id: sub.item,
      subscription: sub.id,
      quantity: sub.quantity,
      current_period_start: sub.period.start,
      current_period_end: sub.period.end,
      price: {
        ...item.price,
        id: sub.price,
        unit_amount: unitAmounts[sub.price],
        recurring: { ...item.price.recurring, interval: intervalOf(sub.price) },
      },
    });
    item.plan = { ...item.plan, id: sub.price, interval: intervalOf(sub.price), interval_count: 1 };
    object.items.data = [item];
    if (sub.extra !== undefined) {
      const second = structuredClone(item);
      Object.assign(second, {
        id: sub.extra.item,
        quantity: sub.extra.quantity,
        price: { ...item.price, id: sub.extra.price, unit_amount: unitAmounts[sub.extra.price] },
      });
      second.plan = { ...item.plan, id: sub.extra.price };
      object.items.data.push(second);
    }
    return Object.assign(object, {
      id: sub.id,
      customer: sub.customer,
      status: sub.status,
      cancel_at_period_end: sub.cancelAtPeriodEnd,
      cancel_at: sub.cancelAtPeriodEnd ? sub.period.end : (sub.cancelAt ?? null),
      trial_end: sub.trialEnd,
      trial_start: sub.trialEnd === null ? null : sub.anchor,
      billing_cycle_anchor: sub.anchor,
      default_payment_method: null,
      metadata: { tally_account_id: sub.account },
      ended_at: sub.status === 'canceled' ? (sub.endedAt ?? this.now) : null,
    });
  }

  /** A subscription event; Stripe's `created` has one-second resolution, so each gets its own second. */
  private emitSubscription(type: string, sub: SimSubscription): void {
    sub.created = Math.max(sub.created + 1, this.now);
    const saved = this.now;
    this.now = sub.created;
    this.emit(type, this.subscriptionObject(sub), type === 'customer.subscription.updated' ? { items: { data: [] } } : undefined);
    this.now = saved;
  }

  private line(
    sub: SimSubscription,
    spec: { price: string; quantity: number; start: number; end: number; proration: boolean; amount: number; billingPeriod: Period },
    item = sub.item,
  ): PaidLine {
    return { id: this.id('il'), subscription: sub.id, item, ...spec };
  }

  /** A proration line for `price × quantity` over [t, period end]: what Stripe charges or credits, by seconds. */
  private proration(sub: SimSubscription, price: string, quantity: number, sign: 1 | -1, item = sub.item): PaidLine {
    const { start, end } = sub.period;
    const amount = Math.round(((unitAmounts[price] ?? 0) * quantity * (end - this.now)) / (end - start));
    return this.line(
      sub,
      {
        price,
        quantity,
        start: this.now,
        end,
        proration: true,
        amount: sign * amount,
        billingPeriod: { ...sub.period },
      },
      item,
    );
  }

  private lineObject(invoiceId: string, line: PaidLine): StripeObject {
    const object = base('line_item');
    delete object.price;
    delete object.plan;
    delete object.proration;
    return Object.assign(object, {
      id: line.id,
      invoice: invoiceId,
      amount: line.amount,
      quantity: line.quantity,
      subscription: line.subscription,
      description: line.proration
        ? `${line.amount < 0 ? 'Unused' : 'Remaining'} time on ${line.quantity} × ${line.price}`
        : `${line.quantity} × ${line.price}`,
      period: { start: line.start, end: line.end },
      parent: {
        type: 'subscription_item_details',
        invoice_item_details: null,
        subscription_item_details: {
          invoice_item: line.proration ? this.id('ii') : null,
          proration: line.proration,
          proration_details: { credited_items: null },
          subscription: line.subscription,
          subscription_item: line.item,
        },
      },
      pricing: {
        type: 'price_details',
        price_details: { price: line.price, product: `prod_${line.price}` },
        unit_amount_decimal: String(unitAmounts[line.price] ?? 0),
      },
    });
  }

  /**
   * Finalizes and collects an invoice of `lines` (plus the customer's pending items): a negative
   * total credits the customer balance and is paid with nothing charged; a failed charge leaves
   * it open, to be paid at `failUntil`.
   */
  private invoice(sub: SimSubscription, lines: PaidLine[], reason: string, failUntil?: number): void {
    const customer = this.customers.get(sub.account)!;
    // Items a cancelled subscription left pending ride on the customer's next invoice, as Stripe does.
    const all = [...customer.pendingItems, ...sub.pending, ...lines];
    customer.pendingItems = [];
    sub.pending = [];
    const invoiceId = this.id('in');
    const total = all.reduce((sum, line) => sum + line.amount, 0);
    const due = Math.max(0, total + customer.balance);
    customer.balance = Math.min(0, total + customer.balance);
    const object = base('invoice');
    delete object.subscription;
    Object.assign(object, {
      id: invoiceId,
      customer: sub.customer,
      billing_reason: reason,
      status: 'open',
      total,
      subtotal: total,
      amount_due: due,
      amount_paid: 0,
      amount_remaining: due,
      period_start: sub.period.start,
      period_end: sub.period.start,
      parent: {
        type: 'subscription_details',
        quote_details: null,
        subscription_details: { subscription: sub.id, metadata: { tally_account_id: sub.account } },
      },
      lines: {
        object: 'list',
        has_more: false,
        url: `/v1/invoices/${invoiceId}/lines`,
        data: all.map((line) => this.lineObject(invoiceId, line)),
      },
    });
    this.invoiceLines.set(invoiceId, object.lines.data);
    this.invoicesById.set(invoiceId, object);
    this.emit('invoice.finalized', object);
    if (failUntil !== undefined && due > 0) {
      this.emit('invoice.payment_failed', { ...object, attempt_count: 1, next_payment_attempt: failUntil });
      sub.status = 'past_due';
      this.emitSubscription('customer.subscription.updated', sub);
      // An immediate cancellation stops the collection of the customer's open invoices (FLOWS §6b).
      this.delayed.push({ at: failUntil, run: () => sub.status !== 'canceled' && this.collect(sub, object, all) });
      return;
    }
    this.collect(sub, object, all);
  }

  private collect(sub: SimSubscription, object: StripeObject, lines: PaidLine[]): void {
    const due = object.amount_due as number;
    const paymentIntent = due > 0 ? this.id('pi') : null;
    const paid: StripeObject = {
      ...object,
      status: 'paid',
      amount_paid: due,
      amount_remaining: 0,
      status_transitions: { ...object.status_transitions, paid_at: this.now },
    };
    this.paidInvoices.push(paid);
    this.invoicesById.set(paid.id, paid);
    this.emit('invoice.paid', paid);
    this.emit('invoice.payment_succeeded', paid);
    if (paymentIntent !== null) {
      const charge = this.id('ch');
      this.charges.set(charge, { payment_intent: paymentIntent, amount: due, refunds: [] });
      this.invoicePayments.set(paymentIntent, object.id);
      this.paymentIntents.set(paymentIntent, this.paymentIntentObject(paymentIntent, due, charge, sub.customer, {}));
      const invoicePayment = base('invoice_payment');
      Object.assign(invoicePayment, {
        id: this.id('inpay'),
        invoice: object.id,
        amount_paid: due,
        amount_requested: due,
        status: 'paid',
        payment: { type: 'payment_intent', payment_intent: paymentIntent },
      });
      this.emit('invoice_payment.paid', invoicePayment);
      const kind = lines.some((line) => line.proration) ? 'proration' : intervalOf(lines[0]?.price ?? '') === 'year' ? 'yearly' : 'monthly';
      this.paymentsOf(sub.account).push({ paymentIntent, charge, amount: due, refunded: 0, disputed: false, kind });
    }
    if (sub.status === 'past_due') {
      sub.status = 'active';
      this.emitSubscription('customer.subscription.updated', sub);
    }
    this.facts.push({
      kind: 'invoice_paid',
      at: this.now,
      account: sub.account,
      subscription: sub.id,
      invoice: object.id,
      paymentIntent,
      amountPaid: due,
      total: object.total as number,
      lines,
      currentPeriod: this.creditPeriod(sub),
    });
  }

  /** The credit period current now: the billing period, or for a yearly price its month slice. */
  private creditPeriod(sub: SimSubscription): Period {
    if (intervalOf(sub.price) === 'month') return { ...sub.period };
    return monthsOf(sub.period).find((month) => month.start <= this.now && this.now < month.end) ?? { ...sub.period };
  }

  /** Each buyer types an email of their own into Checkout (the fixture's would make every trial one person's). */
  private emailOf(account: string): string {
    return `${account}@buyers.test`;
  }

  private paymentIntentObject(
    id: string,
    amount: number,
    charge: string,
    customer: string | null,
    metadata: Record<string, string>,
  ): StripeObject {
    return {
      id,
      object: 'payment_intent',
      amount,
      amount_received: amount,
      currency: 'usd',
      status: 'succeeded',
      latest_charge: charge,
      customer,
      metadata,
      livemode: false,
    };
  }

  paymentsOf(account: string): SimPayment[] {
    let list = this.payments.get(account);
    if (list === undefined) this.payments.set(account, (list = []));
    return list;
  }

  liveSubscription(account: string): SimSubscription | undefined {
    return [...this.subscriptions.values()].find((sub) => sub.account === account && sub.status !== 'canceled');
  }

  /** When the last end Stripe holds back (a late cancellation) is delivered, if one is held now. */
  lateDeliveryUntil(): number | undefined {
    const held = [...this.subscriptions.values()].map((sub) => sub.endDeliveredAt ?? 0).filter((at) => at > this.now);
    return held.length === 0 ? undefined : Math.max(...held);
  }

  /** The live subscription as Stripe's delivered events tell it: an end still held back is not known yet. */
  deliveredSubscription(account: string): { sub: SimSubscription; status: SimSubscription['status'] } | undefined {
    const live = this.liveSubscription(account);
    if (live !== undefined) return { sub: live, status: live.status };
    const ending = [...this.subscriptions.values()].find(
      (sub) => sub.account === account && sub.endDeliveredAt !== undefined && sub.endDeliveredAt > this.now,
    );
    return ending === undefined ? undefined : { sub: ending, status: 'active' };
  }

  // ---- business actions -----------------------------------------------------------------------

  /** A subscription through a Checkout Session (`session` when Tally created one), first invoice paid. */
  subscribe(
    account: string,
    price: string,
    quantity: number,
    trialDays: number | undefined,
    session: string | undefined,
    extraPrice?: string,
  ): SimSubscription {
    const customer = this.customerOf(account);
    const months = intervalOf(price) === 'year' ? 12 : 1;
    const trialEnd = trialDays === undefined ? null : this.now + trialDays * 86400;
    const sub: SimSubscription = {
      id: this.id('sub'),
      account,
      customer,
      item: this.id('si'),
      price,
      quantity,
      anchor: this.now,
      cycles: 1,
      period: { start: this.now, end: trialEnd ?? addMonths(this.now, months) },
      status: trialEnd === null ? 'active' : 'trialing',
      cancelAtPeriodEnd: false,
      trialEnd,
      pending: [],
      failNextRenewal: undefined,
      extra: extraPrice === undefined ? undefined : { item: this.id('si'), price: extraPrice, quantity: 1 },
      cancelAt: null,
      endedAt: null,
      created: this.now - 1,
    };
    this.subscriptions.set(sub.id, sub);
    if (session !== undefined) {
      this.completedSessions.add(session);
      const completed = base('checkout.session');
      Object.assign(completed, {
        id: session,
        mode: 'subscription',
        status: 'complete',
        payment_status: trialEnd === null ? 'paid' : 'no_payment_required',
        customer,
        subscription: sub.id,
        client_reference_id: account,
        metadata: { tally_account_id: account },
        payment_intent: null,
        payment_link: null,
      });
      completed.customer_details = { ...completed.customer_details, email: this.emailOf(account) };
      this.completedSessionObjects.push(completed);
      this.emit('checkout.session.completed', completed);
    }
    this.emitSubscription('customer.subscription.created', sub);
    if (trialEnd !== null) this.facts.push({ kind: 'trial_started', at: this.now, account, subscription: sub.id, price, trialEnd });
    const amount = trialEnd === null ? (unitAmounts[price] ?? 0) * quantity : 0;
    this.invoice(sub, this.periodLines(sub, amount === 0), 'subscription_create');
    return sub;
  }

  private renew(sub: SimSubscription): void {
    const wasTrial = sub.status === 'trialing';
    const months = intervalOf(sub.price) === 'year' ? 12 : 1;
    if (wasTrial) {
      sub.anchor = sub.period.end;
      sub.cycles = 0;
    }
    sub.cycles += 1;
    sub.period = { start: sub.period.end, end: addMonths(sub.anchor, sub.cycles * months) };
    if (sub.status === 'trialing') sub.status = 'active';
    const fail = sub.failNextRenewal;
    sub.failNextRenewal = undefined;
    if (fail === undefined) this.emitSubscription('customer.subscription.updated', sub);
    this.invoice(sub, this.periodLines(sub, false), 'subscription_cycle', fail === undefined ? undefined : this.now + fail);
  }

  /** The lines of a new period: one per plan item (the trial's first one free). */
  private periodLines(sub: SimSubscription, free: boolean): PaidLine[] {
    const items = [{ item: sub.item, price: sub.price, quantity: sub.quantity }, ...(sub.extra === undefined ? [] : [sub.extra])];
    return items.map(({ item, price, quantity }) =>
      this.line(
        sub,
        {
          price,
          quantity,
          start: sub.period.start,
          end: sub.period.end,
          proration: false,
          amount: free ? 0 : (unitAmounts[price] ?? 0) * quantity,
          billingPeriod: { ...sub.period },
        },
        item,
      ),
    );
  }

  private end(sub: SimSubscription, at: number): void {
    sub.status = 'canceled';
    sub.endedAt = at;
    this.emitSubscription('customer.subscription.deleted', sub);
    this.facts.push({ kind: 'subscription_ended', at, subscription: sub.id });
  }

  /**
   * A plan, seat or interval change now. Same interval: proration lines per `behavior`. Another
   * interval resets the anchor (classic mode): the unused time is credited (unless `none`) and
   * the new period is billed at once, starting now.
   */
  change(sub: SimSubscription, price: string, quantity: number, behavior: 'always_invoice' | 'create_prorations' | 'none'): void {
    const lines: PaidLine[] = behavior === 'none' ? [] : [this.proration(sub, sub.price, sub.quantity, -1)];
    const intervalChange = intervalOf(price) !== intervalOf(sub.price);
    sub.price = price;
    sub.quantity = quantity;
    if (intervalChange) {
      sub.anchor = this.now;
      sub.cycles = 1;
      sub.period = { start: this.now, end: addMonths(this.now, intervalOf(price) === 'year' ? 12 : 1) };
      this.emitSubscription('customer.subscription.updated', sub);
      lines.push(
        this.line(sub, {
          price,
          quantity,
          start: sub.period.start,
          end: sub.period.end,
          proration: false,
          amount: (unitAmounts[price] ?? 0) * quantity,
          billingPeriod: { ...sub.period },
        }),
      );
      this.invoice(sub, lines, 'subscription_update');
      return;
    }
    if (behavior !== 'none') lines.push(this.proration(sub, price, quantity, 1));
    this.emitSubscription('customer.subscription.updated', sub);
    if (behavior === 'always_invoice') this.invoice(sub, lines, 'subscription_update');
    else sub.pending.push(...lines);
  }

  cancelAtPeriodEnd(sub: SimSubscription): void {
    sub.cancelAtPeriodEnd = true;
    this.emitSubscription('customer.subscription.updated', sub);
  }

  /** An immediate cancellation; `prorate` credits the unused time on a final invoice (invoice_now). */
  cancelNow(sub: SimSubscription, prorate: boolean): void {
    if (prorate && sub.status !== 'trialing') {
      const lines = [this.proration(sub, sub.price, sub.quantity, -1)];
      if (sub.extra !== undefined) lines.push(this.proration(sub, sub.extra.price, sub.extra.quantity, -1, sub.extra.item));
      this.invoice(sub, lines, 'subscription_update');
    }
    // Without a final invoice, prorations already made stay pending on the customer (Stripe).
    this.customers.get(sub.account)!.pendingItems.push(...sub.pending);
    sub.pending = [];
    this.end(sub, this.now);
  }

  /**
   * `cancel_at` set to `at` (no proration): Stripe ends the subscription then. With a yearly plan
   * and `at` a month start, the end and Tally's scheduler meet on one instant.
   */
  cancelAt(sub: SimSubscription, at: number): void {
    sub.cancelAt = at;
    this.emitSubscription('customer.subscription.updated', sub);
    this.delayed.push({ at, run: () => sub.status !== 'canceled' && this.end(sub, at) });
  }

  /**
   * An immediate cancellation whose webhooks reach Tally only at `deliveredAt` (Stripe's delivery
   * running late): the clock passes a month start meanwhile, so Tally's scheduler may grant it.
   */
  cancelNowDeliveredLate(sub: SimSubscription, deliveredAt: number, monthStart: number): void {
    const mark = this.outbox.length;
    this.cancelNow(sub, false);
    const held = this.outbox.splice(mark);
    sub.endDeliveredAt = deliveredAt;
    // A no-op at the month start, so that the clock stops there and the scheduler runs.
    this.delayed.push({ at: monthStart, run: () => undefined });
    this.delayed.push({ at: deliveredAt, run: () => this.outbox.push(...held) });
  }

  failNextRenewal(sub: SimSubscription, recoverAfterSeconds: number): void {
    sub.failNextRenewal = recoverAfterSeconds;
  }

  /** A completed, paid Checkout Session for packs: Tally's (`session` made by Tally) or a Payment Link's. */
  buyPack(
    account: string,
    lineItems: { price: string; quantity: number }[],
    session: string | undefined,
    clientReference: string | undefined,
  ): void {
    const sessionId = session ?? this.id('cs');
    this.completedSessions.add(sessionId);
    const created = this.sessions.get(sessionId);
    const paymentIntent = this.id('pi');
    const charge = this.id('ch');
    const amount = lineItems.reduce((sum, item) => sum + (unitAmounts[item.price] ?? 0) * item.quantity, 0);
    this.charges.set(charge, { payment_intent: paymentIntent, amount, refunds: [] });
    const object = base('checkout.session');
    delete object.line_items;
    Object.assign(object, {
      id: sessionId,
      mode: 'payment',
      status: 'complete',
      payment_status: 'paid',
      payment_intent: paymentIntent,
      amount_total: amount,
      amount_subtotal: amount,
      currency: 'usd',
      customer: this.customers.get(account)?.id ?? null,
      client_reference_id: created?.client_reference_id ?? clientReference ?? null,
      metadata: created?.metadata ?? {},
      payment_link: session === undefined ? this.id('plink') : null,
      subscription: null,
    });
    object.customer_details = { ...object.customer_details, email: this.emailOf(account) };
    this.completedSessionObjects.push(object);
    this.paymentIntents.set(
      paymentIntent,
      this.paymentIntentObject(paymentIntent, amount, charge, object.customer, created?.payment_intent_metadata ?? {}),
    );
    this.sessionLineItems.set(
      sessionId,
      lineItems.map((item) => ({
        id: this.id('li'),
        object: 'item',
        price: { id: item.price, object: 'price', unit_amount: unitAmounts[item.price] },
        quantity: item.quantity,
        amount_total: (unitAmounts[item.price] ?? 0) * item.quantity,
        currency: 'usd',
      })),
    );
    this.emit('payment_intent.succeeded', {
      ...base('charge'),
      id: paymentIntent,
      object: 'payment_intent',
      amount,
      status: 'succeeded',
      latest_charge: charge,
    });
    this.emit('checkout.session.completed', object);
    this.paymentsOf(account).push({ paymentIntent, charge, amount, refunded: 0, disputed: false, kind: 'pack' });
    this.facts.push({ kind: 'pack_paid', at: this.now, account, paymentIntent, amountPaid: amount, items: lineItems });
  }

  /** The customer's default card now behaves as `card` with off-session payments. */
  setCard(account: string, card: CardBehavior): void {
    this.customerOf(account);
    this.customers.get(account)!.card = card;
  }

  /**
   * POST /v1/payment_intents (off-session, confirm): a new PaymentIntent, unless the key was used
   * less than 24 hours ago (then its first answer). What it does follows the customer's card.
   */
  private createPaymentIntent(params: Record<string, string>, key: string | undefined): [number, unknown] {
    const remembered = key === undefined ? undefined : this.paymentIntentKeys.get(key);
    if (remembered !== undefined && this.now - remembered.at < 86400) return remembered.answer;
    const customer = [...this.customers.values()].find((candidate) => candidate.id === params.customer);
    const account = [...this.customers.entries()].find(([, candidate]) => candidate === customer)?.[0];
    if (customer === undefined || account === undefined)
      return [400, { error: { type: 'invalid_request_error', message: `No such customer: ${params.customer}` } }];
    const id = this.id('pi');
    const charge = this.id('ch');
    const amount = Number(params.amount);
    const metadata = Object.fromEntries(
      Object.entries(params)
        .filter(([name]) => name.startsWith('metadata['))
        .map(([name, value]) => [name.slice(9, -1), value]),
    );
    const intent: StripeObject = {
      ...this.paymentIntentObject(id, amount, charge, customer.id, metadata),
      description: params.description ?? null,
    };
    this.paymentIntents.set(id, intent);
    this.facts.push({ kind: 'payment_intent_created', at: this.now, account, key: key ?? '', paymentIntent: id, amount });
    const succeed = () => {
      Object.assign(intent, { status: 'succeeded', amount_received: amount, latest_charge: charge });
      this.charges.set(charge, { payment_intent: id, amount, refunds: [] });
      this.paymentsOf(account).push({ paymentIntent: id, charge, amount, refunded: 0, disputed: false, kind: 'pack' });
      this.emit('payment_intent.succeeded', intent);
      this.facts.push({ kind: 'payment_intent_resolved', at: this.now, paymentIntent: id, outcome: 'succeeded' });
    };
    const fail = (code: string) => {
      Object.assign(intent, {
        status: 'requires_payment_method',
        amount_received: 0,
        latest_charge: null,
        last_payment_error: {
          type: 'card_error',
          code,
          decline_code: code === 'card_declined' ? 'generic_decline' : undefined,
          message: `Your card was declined (${code}).`,
        },
      });
      this.emit('payment_intent.payment_failed', intent);
      this.facts.push({ kind: 'payment_intent_resolved', at: this.now, paymentIntent: id, outcome: 'failed' });
    };
    let answer: [number, unknown];
    switch (customer.card.outcome) {
      case 'succeeded':
        succeed();
        answer = [200, structuredClone(intent)];
        break;
      case 'processing': {
        const { resolvesAfter, succeeds } = customer.card;
        Object.assign(intent, { status: 'processing', amount_received: 0, latest_charge: null });
        answer = [200, structuredClone(intent)];
        this.emit('payment_intent.processing', intent);
        this.delayed.push({ at: this.now + resolvesAfter, run: () => (succeeds ? succeed() : fail('insufficient_funds')) });
        break;
      }
      case 'requires_action':
        // The bank asks for the customer (3-D Secure): off-session, this is a failure for Tally.
        Object.assign(intent, { status: 'requires_action', amount_received: 0, latest_charge: null });
        answer = [200, structuredClone(intent)];
        this.emit('payment_intent.requires_action', intent);
        this.facts.push({ kind: 'payment_intent_resolved', at: this.now, paymentIntent: id, outcome: 'failed' });
        break;
      case 'card_declined':
        fail('card_declined');
        answer = [
          402,
          {
            error: {
              type: 'card_error',
              code: 'card_declined',
              decline_code: 'generic_decline',
              message: 'Your card was declined.',
              payment_intent: structuredClone(intent),
            },
          },
        ];
        break;
    }
    if (key !== undefined) this.paymentIntentKeys.set(key, { at: this.now, answer });
    return answer;
  }

  /** A refund of `amount` of a payment; when `failAfter` is given the refund fails that many seconds later. */
  refund(payment: SimPayment, amount: number, failAfter: number | undefined): void {
    const refund = {
      ...base('refund'),
      id: this.id('re'),
      amount,
      charge: payment.charge,
      payment_intent: payment.paymentIntent,
      status: 'succeeded',
      created: this.now,
    };
    const charge = this.charges.get(payment.charge)!;
    charge.refunds.push(refund);
    payment.refunded += amount;
    this.emit('refund.created', refund);
    this.emit('charge.refunded', this.chargeObject(payment.charge));
    this.facts.push({ kind: 'refund', at: this.now, refund: refund.id, paymentIntent: payment.paymentIntent, amount });
    if (failAfter === undefined) return;
    this.delayed.push({
      at: this.now + failAfter,
      run: () => {
        Object.assign(refund, { status: 'failed', failure_reason: 'expired_or_canceled_card' });
        payment.refunded -= amount;
        this.emit('refund.updated', refund);
        this.emit('refund.failed', refund);
        this.facts.push({ kind: 'refund_reversed', at: this.now, refund: refund.id });
      },
    });
  }

  /** A dispute of a payment: an inquiry (closed without funds moving), or a chargeback won or lost later. */
  dispute(payment: SimPayment, outcome: 'inquiry' | 'won' | 'lost', closeAfter: number): void {
    payment.disputed = true;
    const inquiry = outcome === 'inquiry';
    const dispute = {
      ...base('dispute'),
      id: this.id('dp'),
      amount: payment.amount,
      charge: payment.charge,
      payment_intent: payment.paymentIntent,
      status: inquiry ? 'warning_needs_response' : 'needs_response',
      created: this.now,
    };
    this.emit('charge.dispute.created', dispute);
    if (!inquiry)
      this.facts.push({ kind: 'dispute', at: this.now, dispute: dispute.id, paymentIntent: payment.paymentIntent, amount: dispute.amount });
    this.delayed.push({
      at: this.now + closeAfter,
      run: () => {
        dispute.status = inquiry ? 'warning_closed' : outcome;
        this.emit('charge.dispute.closed', dispute);
        if (outcome === 'won') this.facts.push({ kind: 'dispute_won', at: this.now, dispute: dispute.id });
      },
    });
  }

  private chargeObject(chargeId: string): StripeObject {
    const charge = this.charges.get(chargeId)!;
    const refunded = charge.refunds
      .filter((refund) => refund.status !== 'failed')
      .reduce((sum, refund) => sum + (refund.amount as number), 0);
    const object: StripeObject = {
      ...base('charge'),
      id: chargeId,
      amount: charge.amount,
      amount_captured: charge.amount,
      captured: true,
      paid: true,
      status: 'succeeded',
      payment_intent: charge.payment_intent,
      amount_refunded: refunded,
      refunded: refunded >= charge.amount,
    };
    delete object.refunds;
    return object;
  }

  // ---- the API Tally calls --------------------------------------------------------------------

  async start(): Promise<this> {
    this.server = createServer((request, response) => void this.handle(request, response));
    await new Promise<void>((resolve) => this.server?.listen(0, '127.0.0.1', resolve));
    const address = this.server.address();
    this.url = `http://127.0.0.1:${typeof address === 'object' && address !== null ? address.port : 0}`;
    return this;
  }

  async stop(): Promise<void> {
    this.server?.closeAllConnections();
    await new Promise<void>((resolve) => this.server?.close(() => resolve()));
  }

  private async handle(request: IncomingMessage, response: ServerResponse): Promise<void> {
    let body = '';
    for await (const chunk of request) body += chunk;
    const url = new URL(request.url ?? '/', 'http://fake');
    const params = Object.fromEntries(new URLSearchParams(request.method === 'GET' || request.method === 'DELETE' ? url.search : body));
    const key = request.headers['idempotency-key'];
    const [status, answer] = this.answer(request.method ?? '', url.pathname, params, Array.isArray(key) ? key[0] : key);
    response.writeHead(status, { 'content-type': 'application/json', 'request-id': 'req_sim' });
    response.end(JSON.stringify(answer));
  }

  private list(path: string, items: StripeObject[]): StripeObject {
    return { object: 'list', data: items, has_more: false, url: path };
  }

  private answer(method: string, path: string, params: Record<string, string>, idempotencyKey: string | undefined): [number, unknown] {
    const notFound: [number, unknown] = [404, { error: { type: 'invalid_request_error', message: `No such object: ${path}` } }];
    if (method === 'POST' && path === '/v1/checkout/sessions') {
      // A key answers its first session, unless that session is complete: Tally's keys hold a
      // minute of real time, which the compressed virtual time of a simulation outlives.
      const existing = idempotencyKey === undefined ? undefined : this.sessionKeys.get(idempotencyKey);
      const id = existing !== undefined && !this.completedSessions.has(existing) ? existing : this.id('cs');
      if (idempotencyKey !== undefined) this.sessionKeys.set(idempotencyKey, id);
      const nested = (prefix: string) =>
        Object.fromEntries(
          Object.entries(params)
            .filter(([name]) => name.startsWith(`${prefix}[`))
            .map(([name, value]) => [name.slice(prefix.length + 1, -1), value]),
        );
      const session = {
        id,
        object: 'checkout.session',
        url: `https://checkout.stripe.test/${id}`,
        mode: params.mode,
        client_reference_id: params.client_reference_id ?? null,
        metadata: nested('metadata'),
        payment_intent_metadata: nested('payment_intent_data[metadata]'),
      };
      this.sessions.set(id, session);
      return [200, session];
    }
    let match = /^\/v1\/checkout\/sessions\/([^/]+)\/line_items$/.exec(path);
    if (method === 'GET' && match?.[1] !== undefined) {
      const items = this.sessionLineItems.get(match[1]);
      return items === undefined ? notFound : [200, this.list(path, items)];
    }
    if (method === 'GET' && path === '/v1/checkout/sessions') {
      const found = this.completedSessionObjects.filter(
        (session) =>
          (params.subscription === undefined || session.subscription === params.subscription) &&
          (params.payment_intent === undefined || session.payment_intent === params.payment_intent),
      );
      return [200, this.list(path, found)];
    }
    if (method === 'POST' && path === '/v1/payment_intents') return this.createPaymentIntent(params, idempotencyKey);
    match = /^\/v1\/customers\/([^/]+)$/.exec(path);
    if (method === 'GET' && match?.[1] !== undefined) {
      const id = match[1];
      const found = [...this.customers.values()].some((candidate) => candidate.id === id);
      return found
        ? [200, { id, object: 'customer', invoice_settings: { default_payment_method: `pm_card_${id}` }, metadata: {} }]
        : notFound;
    }
    match = /^\/v1\/prices\/([^/]+)$/.exec(path);
    if (method === 'GET' && match?.[1] !== undefined) {
      const amount = unitAmounts[match[1]];
      return amount === undefined ? notFound : [200, { id: match[1], object: 'price', unit_amount: amount, currency: 'usd', active: true }];
    }
    match = /^\/v1\/payment_intents\/([^/]+)$/.exec(path);
    if (method === 'GET' && match?.[1] !== undefined) {
      const found = this.paymentIntents.get(match[1]);
      return found === undefined ? notFound : [200, found];
    }
    match = /^\/v1\/invoices\/([^/]+)$/.exec(path);
    if (method === 'GET' && match?.[1] !== undefined) {
      const found = this.invoicesById.get(match[1]);
      return found === undefined ? notFound : [200, found];
    }
    match = /^\/v1\/checkout\/sessions\/([^/]+)$/.exec(path);
    if (method === 'GET' && match?.[1] !== undefined) {
      const session = this.sessions.get(match[1]);
      const items = this.sessionLineItems.get(match[1]);
      return session === undefined
        ? notFound
        : [200, { ...session, line_items: items === undefined ? undefined : this.list(`${path}/line_items`, items) }];
    }
    match = /^\/v1\/charges\/([^/]+)$/.exec(path);
    if (method === 'GET' && match?.[1] !== undefined) return this.charges.has(match[1]) ? [200, this.chargeObject(match[1])] : notFound;
    if (method === 'GET' && path === '/v1/invoice_payments') {
      const paymentIntent = params['payment[payment_intent]'] ?? '';
      const invoice = this.invoicePayments.get(paymentIntent);
      const data =
        invoice === undefined
          ? []
          : [
              {
                id: `inpay_of_${paymentIntent}`,
                object: 'invoice_payment',
                invoice,
                status: 'paid',
                payment: { type: 'payment_intent', payment_intent: paymentIntent },
              },
            ];
      return [200, this.list(path, data)];
    }
    if (method === 'GET' && path === '/v1/refunds') {
      const charge = params.charge === undefined ? undefined : this.charges.get(params.charge);
      const refunds = charge?.refunds ?? [...this.charges.values()].flatMap((candidate) => candidate.refunds);
      return [200, this.list(path, refunds)];
    }
    if (method === 'GET' && path === '/v1/invoices') return [200, this.list(path, this.paidInvoices)];
    match = /^\/v1\/invoices\/([^/]+)\/lines$/.exec(path);
    if (method === 'GET' && match?.[1] !== undefined) {
      const lines = this.invoiceLines.get(match[1]);
      return lines === undefined ? notFound : [200, this.list(path, lines)];
    }
    match = /^\/v1\/subscriptions\/([^/]+)$/.exec(path);
    const sub = match?.[1] === undefined ? undefined : this.subscriptions.get(match[1]);
    if (method === 'GET' && match !== null) return sub === undefined ? notFound : [200, this.subscriptionObject(sub)];
    if (method === 'DELETE' && match !== null) {
      if (sub === undefined) return notFound;
      // Tally cancels a refused trial: Stripe ends it now and says so.
      if (sub.status !== 'canceled') this.end(sub, this.now);
      return [200, this.subscriptionObject(sub)];
    }
    match = /^\/v1\/payment_methods\/([^/]+)$/.exec(path);
    if (method === 'GET' && match?.[1] !== undefined)
      return [
        200,
        { id: match[1], object: 'payment_method', type: 'card', card: { fingerprint: `fp_${match[1]}`, brand: 'visa', last4: '4242' } },
      ];
    this.unknownCalls.push(`${method} ${path}`);
    return [404, { error: { type: 'invalid_request_error', message: `the simulator's Stripe does not know ${method} ${path}` } }];
  }
}
