import { CircuitState, ConsecutiveBreaker, BrokenCircuitError, circuitBreaker, handleWhen, type CircuitBreakerPolicy } from 'cockatiel';
import Stripe from 'stripe';
import { TallyError } from '../errors.js';

/**
 * Every Stripe API call Tally makes, through the official package and one circuit breaker.
 * The breaker counts what says Stripe is unwell (timeouts, network errors, 5xx, 429), never a
 * card decline or another 4xx, which are answers (502 stripe_error, Stripe's text kept for the log). Options are explicit: API version, timeout, no
 * hidden retries (callers retry with the same idempotency key, derived from our own ids).
 */
export const stripeApiVersion = '2026-10-28.endive';
export const stripeTimeoutMilliseconds = 10_000;
export const breakerFailureCountMax = 5;
export const breakerHalfOpenAfterMilliseconds = 30_000;

/** Stripe cannot be reached right now (breaker open, timeout, 5xx): try again later. */
export class StripeUnavailableError extends TallyError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('stripe_unavailable', 503, message, {}, options);
    this.name = 'StripeUnavailableError';
  }
}

/**
 * Stripe refused a call (a 4xx other than 429): a bad key, a bad parameter, a missing object.
 * Answered `502 stripe_error` without Stripe's text, which can name the key ("Invalid API Key
 * provided: sk_live_****…") or internals; the text stays in the cause, for the log.
 */
export class StripeRefusedError extends TallyError {
  readonly stripeStatus: number;

  constructor(name: string, stripeStatus: number, options: { cause: unknown }) {
    super('stripe_error', 502, `Stripe refused ${name} (HTTP ${stripeStatus}); the operator has the details in the log`, {}, options);
    this.name = 'StripeRefusedError';
    this.stripeStatus = stripeStatus;
  }
}

/**
 * What says Stripe is unwell or overloaded right now: timeouts, network errors, 5xx, and 429
 * (rate limited: Stripe asks us to back off, which is what an open breaker does).
 */
export function isTransientStripeError(error: unknown): boolean {
  if (error instanceof Stripe.errors.StripeConnectionError) return true;
  if (error instanceof Stripe.errors.StripeError) {
    const status = error.statusCode ?? 500;
    return status >= 500 || status === 429;
  }
  return false;
}

/**
 * Tally's own words for a transient failure. Stripe's message (and a proxy's or the network
 * stack's in its place) may name internals, so it stays in the cause, for the log; the caller
 * learns what kind of failure it was and that nothing was done.
 */
function unavailableMessage(name: string, error: unknown): string {
  const status = error instanceof Stripe.errors.StripeError ? error.statusCode : undefined;
  const what =
    error instanceof Stripe.errors.StripeConnectionError || status === undefined
      ? 'Stripe could not be reached (network error or timeout)'
      : status === 429
        ? 'Stripe is rate limiting Tally (HTTP 429)'
        : `Stripe answered HTTP ${status}`;
  return `${what} during ${name}; nothing was done, try again later`;
}

export interface BreakerStatus {
  state: 'closed' | 'open' | 'half_open' | 'isolated';
  failures: number;
  opened_at: string | null;
}

export interface StripeGatewayOptions {
  secretKey: string;
  apiBase?: string | undefined;
  halfOpenAfterMilliseconds?: number;
  timeoutMilliseconds?: number;
}

export class StripeGateway {
  readonly stripe: Stripe;
  private readonly breaker: CircuitBreakerPolicy;
  private failures = 0;
  private openedAt: Date | null = null;
  /** Called when the breaker opens (alerts, metrics). */
  onOpen: (status: BreakerStatus) => void = () => undefined;
  /** Called when the breaker closes again after a successful trial call. */
  onClose: () => void = () => undefined;
  /** Called when Stripe refuses the secret key (401, 403): a revoked or wrong key needs a person. */
  onKeyRefused: (details: { call: string; status: number; requestId: string | undefined }) => void = () => undefined;

  /** The mode of the secret key (live or test); undefined for a key of another form. */
  readonly livemode: boolean | undefined;

  constructor(options: StripeGatewayOptions) {
    this.livemode = /^(sk|rk)_live_/.test(options.secretKey) ? true : /^(sk|rk)_test_/.test(options.secretKey) ? false : undefined;
    const base = options.apiBase === undefined ? undefined : new URL(options.apiBase);
    this.stripe = new Stripe(options.secretKey, {
      apiVersion: stripeApiVersion as Stripe.StripeConfig['apiVersion'],
      timeout: options.timeoutMilliseconds ?? stripeTimeoutMilliseconds,
      maxNetworkRetries: 0,
      telemetry: false,
      ...(base === undefined
        ? {}
        : {
            host: base.hostname,
            port: base.port === '' ? (base.protocol === 'https:' ? 443 : 80) : Number(base.port),
            protocol: base.protocol.replace(':', '') as 'http' | 'https',
          }),
    });
    this.breaker = circuitBreaker(handleWhen(isTransientStripeError), {
      halfOpenAfter: options.halfOpenAfterMilliseconds ?? breakerHalfOpenAfterMilliseconds,
      breaker: new ConsecutiveBreaker(breakerFailureCountMax),
    });
    this.breaker.onFailure(({ reason }) => {
      if ('error' in reason && isTransientStripeError(reason.error)) this.failures += 1;
    });
    this.breaker.onSuccess(() => {
      this.failures = 0;
    });
    this.breaker.onBreak(() => {
      this.openedAt = new Date();
      this.onOpen(this.status());
    });
    this.breaker.onReset(() => {
      this.openedAt = null;
      this.failures = 0;
      this.onClose();
    });
  }

  status(): BreakerStatus {
    const states: Record<CircuitState, BreakerStatus['state']> = {
      [CircuitState.Closed]: 'closed',
      [CircuitState.Open]: 'open',
      [CircuitState.HalfOpen]: 'half_open',
      [CircuitState.Isolated]: 'isolated',
    };
    return { state: states[this.breaker.state], failures: this.failures, opened_at: this.openedAt?.toISOString() ?? null };
  }

  /** Runs one Stripe call through the breaker; transient failures become StripeUnavailableError. */
  async call<T>(name: string, operation: (stripe: Stripe) => Promise<T>): Promise<T> {
    try {
      return await this.breaker.execute(() => operation(this.stripe));
    } catch (error) {
      if (error instanceof BrokenCircuitError)
        throw new StripeUnavailableError(`Stripe circuit breaker is open; ${name} not attempted`, { cause: error });
      if (isTransientStripeError(error)) throw new StripeUnavailableError(unavailableMessage(name, error), { cause: error });
      if (error instanceof Stripe.errors.StripeError) {
        const status = error.statusCode ?? 400;
        if (status === 401 || status === 403) this.onKeyRefused({ call: name, status, requestId: error.requestId });
        throw new StripeRefusedError(name, status, { cause: error });
      }
      throw error;
    }
  }

  createCheckoutSession(params: Stripe.Checkout.SessionCreateParams, idempotencyKey: string): Promise<Stripe.Checkout.Session> {
    return this.call('checkout.sessions.create', (stripe) => stripe.checkout.sessions.create(params, { idempotencyKey }));
  }

  retrieveCharge(chargeId: string): Promise<Stripe.Charge> {
    return this.call('charges.retrieve', (stripe) => stripe.charges.retrieve(chargeId));
  }

  /** The invoice paid by a payment intent, if any (through invoice payments). */
  async invoiceOfPaymentIntent(paymentIntent: string): Promise<string | undefined> {
    const list = await this.call('invoicePayments.list', (stripe) =>
      stripe.invoicePayments.list({ payment: { type: 'payment_intent', payment_intent: paymentIntent }, limit: 1 }),
    );
    const invoice = list.data[0]?.invoice;
    return typeof invoice === 'string' ? invoice : invoice?.id;
  }

  cancelSubscription(subscriptionId: string, idempotencyKey: string): Promise<Stripe.Subscription> {
    return this.call('subscriptions.cancel', (stripe) => stripe.subscriptions.cancel(subscriptionId, {}, { idempotencyKey }));
  }

  /** Every line item of a Checkout Session (webhook payloads never carry them). */
  async checkoutLineItems(sessionId: string): Promise<Stripe.LineItem[]> {
    return this.call('checkout.sessions.listLineItems', (stripe) =>
      stripe.checkout.sessions.listLineItems(sessionId, { limit: 100 }).autoPagingToArray({ limit: 10_000 }),
    );
  }

  /** The Checkout Session that created a subscription or a payment intent, if any. */
  async checkoutSessionOf(of: { subscription: string } | { payment_intent: string }): Promise<Stripe.Checkout.Session | undefined> {
    const list = await this.call('checkout.sessions.list', (stripe) => stripe.checkout.sessions.list({ ...of, limit: 1 }));
    return list.data[0];
  }

  /** A payment intent, or undefined when Stripe knows none by that id. */
  async retrievePaymentIntent(paymentIntent: string): Promise<Stripe.PaymentIntent | undefined> {
    try {
      return await this.call('paymentIntents.retrieve', (stripe) => stripe.paymentIntents.retrieve(paymentIntent));
    } catch (error) {
      if (error instanceof Stripe.errors.StripeInvalidRequestError && error.statusCode === 404) return undefined;
      throw error;
    }
  }

  retrieveInvoice(invoiceId: string): Promise<Stripe.Invoice> {
    return this.call('invoices.retrieve', (stripe) => stripe.invoices.retrieve(invoiceId));
  }

  retrievePaymentMethod(paymentMethodId: string): Promise<Stripe.PaymentMethod> {
    return this.call('paymentMethods.retrieve', (stripe) => stripe.paymentMethods.retrieve(paymentMethodId));
  }

  retrieveCustomer(customerId: string): Promise<Stripe.Customer | Stripe.DeletedCustomer> {
    return this.call('customers.retrieve', (stripe) => stripe.customers.retrieve(customerId));
  }

  retrievePrice(priceId: string): Promise<Stripe.Price> {
    return this.call('prices.retrieve', (stripe) => stripe.prices.retrieve(priceId));
  }

  /**
   * Creates and confirms an off-session PaymentIntent. A card decline or a payment that needs
   * the customer (`authentication_required`) is Stripe's answer, not an outage: it comes back as
   * `failed` with Stripe's code (and never counts against the breaker); other refusals throw.
   */
  async createOffSessionPayment(params: Stripe.PaymentIntentCreateParams, idempotencyKey: string): Promise<OffSessionPayment> {
    try {
      const intent = await this.call('paymentIntents.create', (stripe) => stripe.paymentIntents.create(params, { idempotencyKey }));
      if (intent.status === 'succeeded')
        return {
          outcome: 'succeeded',
          paymentIntent: intent.id,
          amount: intent.amount_received || intent.amount,
          currency: intent.currency,
        };
      if (intent.status === 'processing') return { outcome: 'processing', paymentIntent: intent.id };
      return {
        outcome: 'failed',
        paymentIntent: intent.id,
        code: intent.status === 'requires_action' ? 'authentication_required' : intent.status,
        message: `payment intent is ${intent.status}`,
      };
    } catch (error) {
      const cause = error instanceof StripeRefusedError ? error.cause : undefined;
      if (cause instanceof Stripe.errors.StripeCardError) {
        const intent = (cause.raw as { payment_intent?: { id?: string } }).payment_intent;
        return { outcome: 'failed', paymentIntent: intent?.id, code: cause.code ?? 'card_declined', message: cause.message };
      }
      throw error;
    }
  }
}

export type OffSessionPayment =
  | { outcome: 'succeeded'; paymentIntent: string; amount: number; currency: string }
  | { outcome: 'processing'; paymentIntent: string }
  | { outcome: 'failed'; paymentIntent: string | undefined; code: string; message: string };
