import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';

/**
 * A local fake of the few Stripe API calls Tally makes, for tests: checkout sessions, charges,
 * invoice payments, refunds, subscriptions (read and cancel) and payment methods. It records every
 * request, and can be told to time out or fail with 500 to exercise the circuit breaker.
 */
export interface RecordedRequest {
  method: string;
  path: string;
  params: Record<string, string>;
  idempotencyKey: string | undefined;
}

export class FakeStripe {
  readonly requests: RecordedRequest[] = [];
  readonly charges = new Map<string, { payment_intent: string | null }>();
  readonly invoiceOfPaymentIntent = new Map<string, string>();
  readonly refundsOfCharge = new Map<string, Record<string, unknown>[]>();
  readonly cardFingerprints = new Map<string, string>();
  /** What GET /v1/subscriptions/{id} answers (Tally asks for a trial's end). */
  readonly subscriptions = new Map<string, Record<string, unknown>>();
  /** What GET /v1/invoices and GET /v1/refunds (without a charge) list. */
  readonly invoices: Record<string, unknown>[] = [];
  readonly refunds: Record<string, unknown>[] = [];
  readonly invoiceLines = new Map<string, Record<string, unknown>[]>();
  /** Checkout Sessions, as GET /v1/checkout/sessions lists them (by subscription or payment intent). */
  readonly checkoutSessions: Record<string, unknown>[] = [];
  /** What GET /v1/checkout/sessions/{id}/line_items answers (webhook payloads never carry them). */
  readonly checkoutLineItems = new Map<string, Record<string, unknown>[]>();
  /** What GET /v1/payment_intents/{id} answers; unknown ids are 404. */
  readonly paymentIntents = new Map<string, Record<string, unknown>>();
  /** Whole payment methods (any type) for GET /v1/payment_methods/{id}, before cardFingerprints. */
  readonly paymentMethods = new Map<string, Record<string, unknown>>();
  /** What GET /v1/customers/{id} answers (auto top-up reads invoice_settings.default_payment_method). */
  readonly customers = new Map<string, Record<string, unknown>>();
  /** What GET /v1/prices/{id} answers; a price not listed answers 1000 usd (unit_amount in cents). */
  readonly prices = new Map<string, Record<string, unknown>>();
  /**
   * How POST /v1/payment_intents (confirm, off_session) ends: as Stripe answers each outcome
   * (`requires_action` is the 200 answer of a payment that needs the customer; `authentication_required`
   * the 402 card error Stripe answers for it off-session).
   */
  paymentIntentOutcome: 'succeeded' | 'declined' | 'authentication_required' | 'requires_action' | 'processing' = 'succeeded';
  /**
   * Payment intents created, in order; a repeated idempotency key answers the first result again,
   * until Stripe forgets the key 24 hours after its first use (by `clock`), as Stripe does.
   */
  readonly createdPaymentIntents: Record<string, unknown>[] = [];
  private readonly idempotentAnswers = new Map<string, { answer: [number, unknown]; at: number }>();
  static readonly idempotencyKeyLifetimeMilliseconds = 24 * 3600 * 1000;
  /** The fake's time (a test clock), for forgetting idempotency keys. */
  clock: () => Date = () => new Date();
  /** While set, POST /v1/payment_intents waits for it before answering (a call in flight). */
  paymentIntentGate: Promise<void> | undefined;
  mode: 'ok' | 'timeout' | 'error' = 'ok';
  /** When set, every call answers this status and body, as Stripe refuses a call (401, 429, 400...). */
  refusal: { status: number; body: unknown } | undefined;
  /** Lists answer at most this many items a page (Stripe: `limit`, up to 100), to exercise paging. */
  pageSize = 100;
  private server: Server | undefined;
  private sessions = 0;
  url = '';

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
    this.requests.push({ method: request.method ?? '', path: url.pathname, params, idempotencyKey: Array.isArray(key) ? key[0] : key });
    if (this.mode === 'timeout') return; // never answers; the client's timeout fires
    if (this.mode === 'error') return this.send(response, 500, { error: { type: 'api_error', message: 'fake outage' } });
    if (this.refusal !== undefined) return this.send(response, this.refusal.status, this.refusal.body);
    if (request.method === 'POST' && url.pathname === '/v1/payment_intents') await this.paymentIntentGate;
    const [status, answer] = this.answer(request.method ?? '', url.pathname, params, Array.isArray(key) ? key[0] : key);
    this.send(response, status, answer);
  }

  private answer(method: string, path: string, params: Record<string, string>, idempotencyKey?: string): [number, unknown] {
    if (method === 'POST' && path === '/v1/payment_intents') {
      const now = this.clock().getTime();
      const earlier = idempotencyKey === undefined ? undefined : this.idempotentAnswers.get(idempotencyKey);
      if (earlier !== undefined && now - earlier.at < FakeStripe.idempotencyKeyLifetimeMilliseconds) return earlier.answer;
      const answer = this.createPaymentIntent(params);
      if (idempotencyKey !== undefined) this.idempotentAnswers.set(idempotencyKey, { answer, at: now });
      return answer;
    }
    const customer = /^\/v1\/customers\/([^/]+)$/.exec(path);
    if (method === 'GET' && customer?.[1] !== undefined) {
      const found = this.customers.get(customer[1]);
      if (found === undefined)
        return [404, { error: { type: 'invalid_request_error', code: 'resource_missing', message: 'No such customer' } }];
      return [200, { id: customer[1], object: 'customer', invoice_settings: { default_payment_method: null }, ...found }];
    }
    const price = /^\/v1\/prices\/([^/]+)$/.exec(path);
    if (method === 'GET' && price?.[1] !== undefined) {
      return [200, { id: price[1], object: 'price', unit_amount: 1000, currency: 'usd', ...this.prices.get(price[1]) }];
    }
    if (method === 'POST' && path === '/v1/checkout/sessions') {
      // Under 2026-10-28.endive the parameter is gone; Stripe answers 400 (FLOWS.md, endive changes).
      if (Object.keys(params).some((name) => name.startsWith('payment_method_types'))) {
        return [
          400,
          {
            error: {
              type: 'invalid_request_error',
              code: 'parameter_unknown',
              param: 'payment_method_types',
              message: 'Received unknown parameter: payment_method_types',
            },
          },
        ];
      }
      this.sessions += 1;
      const id = `cs_test_fake_${this.sessions}`;
      return [200, { id, object: 'checkout.session', url: `https://checkout.stripe.test/${id}`, mode: params.mode }];
    }
    if (method === 'GET' && path === '/v1/checkout/sessions') {
      const matching = this.checkoutSessions.filter(
        (session) =>
          (params.subscription === undefined || session.subscription === params.subscription) &&
          (params.payment_intent === undefined || session.payment_intent === params.payment_intent),
      );
      return [200, this.page(path, params, matching)];
    }
    const sessionLines = /^\/v1\/checkout\/sessions\/([^/]+)\/line_items$/.exec(path);
    if (method === 'GET' && sessionLines?.[1] !== undefined) {
      const items = this.checkoutLineItems.get(sessionLines[1]);
      if (items === undefined)
        return [404, { error: { type: 'invalid_request_error', code: 'resource_missing', message: 'No such checkout session' } }];
      return [200, this.page(path, params, items)];
    }
    const paymentIntent = /^\/v1\/payment_intents\/([^/]+)$/.exec(path);
    if (method === 'GET' && paymentIntent?.[1] !== undefined) {
      const found = this.paymentIntents.get(paymentIntent[1]);
      if (found === undefined)
        return [404, { error: { type: 'invalid_request_error', code: 'resource_missing', message: 'No such payment_intent' } }];
      return [200, { id: paymentIntent[1], object: 'payment_intent', metadata: {}, ...found }];
    }
    const invoice = /^\/v1\/invoices\/([^/]+)$/.exec(path);
    if (method === 'GET' && invoice?.[1] !== undefined) {
      const found = this.invoices.find((candidate) => candidate.id === invoice[1]);
      if (found === undefined)
        return [404, { error: { type: 'invalid_request_error', code: 'resource_missing', message: 'No such invoice' } }];
      return [200, found];
    }
    const charge = /^\/v1\/charges\/([^/]+)$/.exec(path);
    if (method === 'GET' && charge?.[1] !== undefined) {
      const found = this.charges.get(charge[1]);
      if (found === undefined) return [404, { error: { type: 'invalid_request_error', message: 'No such charge' } }];
      return [200, { id: charge[1], object: 'charge', ...found }];
    }
    if (method === 'GET' && path === '/v1/invoice_payments') {
      const invoice = this.invoiceOfPaymentIntent.get(params['payment[payment_intent]'] ?? '');
      const data =
        invoice === undefined
          ? []
          : [
              {
                id: 'inpay_fake',
                object: 'invoice_payment',
                invoice,
                payment: { type: 'payment_intent', payment_intent: params['payment[payment_intent]'] },
              },
            ];
      return [200, { object: 'list', data, has_more: false, url: path }];
    }
    if (method === 'GET' && path === '/v1/refunds') {
      return [200, this.page(path, params, params.charge === undefined ? this.refunds : (this.refundsOfCharge.get(params.charge) ?? []))];
    }
    if (method === 'GET' && path === '/v1/invoices') return [200, this.page(path, params, this.invoices)];
    const lines = /^\/v1\/invoices\/([^/]+)\/lines$/.exec(path);
    if (method === 'GET' && lines?.[1] !== undefined) return [200, this.page(path, params, this.invoiceLines.get(lines[1]) ?? [])];
    const subscription = /^\/v1\/subscriptions\/([^/]+)$/.exec(path);
    if (method === 'DELETE' && subscription?.[1] !== undefined)
      return [200, { id: subscription[1], object: 'subscription', status: 'canceled' }];
    if (method === 'GET' && subscription?.[1] !== undefined) {
      const found = this.subscriptions.get(subscription[1]);
      if (found === undefined) return [404, { error: { type: 'invalid_request_error', message: 'No such subscription' } }];
      return [200, { id: subscription[1], object: 'subscription', ...found }];
    }
    const paymentMethod = /^\/v1\/payment_methods\/([^/]+)$/.exec(path);
    if (method === 'GET' && paymentMethod?.[1] !== undefined) {
      const whole = this.paymentMethods.get(paymentMethod[1]);
      if (whole !== undefined) return [200, { id: paymentMethod[1], object: 'payment_method', ...whole }];
      const fingerprint = this.cardFingerprints.get(paymentMethod[1]);
      if (fingerprint === undefined) return [404, { error: { type: 'invalid_request_error', message: 'No such payment method' } }];
      return [200, { id: paymentMethod[1], object: 'payment_method', type: 'card', card: { fingerprint, brand: 'visa', last4: '4242' } }];
    }
    return [404, { error: { type: 'invalid_request_error', message: `fake Stripe does not know ${method} ${path}` } }];
  }

  /** A confirmed off-session PaymentIntent with the configured outcome, shaped as Stripe answers it. */
  private createPaymentIntent(params: Record<string, string>): [number, unknown] {
    const id = `pi_fake_${this.createdPaymentIntents.length + 1}`;
    const metadata = Object.fromEntries(
      Object.entries(params).flatMap(([name, value]) => {
        const match = /^metadata\[(.+)\]$/.exec(name);
        return match?.[1] === undefined ? [] : [[match[1], value]];
      }),
    );
    const amount = Number(params.amount);
    const status = {
      succeeded: 'succeeded',
      processing: 'processing',
      declined: 'requires_payment_method',
      authentication_required: 'requires_payment_method',
      requires_action: 'requires_action',
    }[this.paymentIntentOutcome];
    const intent = {
      id,
      object: 'payment_intent',
      amount,
      amount_received: status === 'succeeded' ? amount : 0,
      currency: params.currency,
      customer: params.customer,
      payment_method: params.payment_method,
      status,
      metadata,
    };
    this.createdPaymentIntents.push(intent);
    this.paymentIntents.set(id, intent);
    if (this.paymentIntentOutcome === 'declined') {
      return [
        402,
        {
          error: {
            type: 'card_error',
            code: 'card_declined',
            decline_code: 'generic_decline',
            message: 'Your card was declined.',
            payment_intent: intent,
          },
        },
      ];
    }
    if (this.paymentIntentOutcome === 'authentication_required') {
      return [
        402,
        {
          error: {
            type: 'card_error',
            code: 'authentication_required',
            message: 'Your card was declined. This transaction requires authentication.',
            payment_intent: intent,
          },
        },
      ];
    }
    return [200, intent];
  }

  /**
   * A `processing` payment resolving later (a SEPA or ACH debit days after): what retrieving it
   * answers from now on. Answers the payment intent as the webhook for it would carry it.
   */
  settlePaymentIntent(id: string, outcome: 'succeeded' | 'failed'): Record<string, unknown> {
    const intent = this.paymentIntents.get(id);
    if (intent === undefined) throw new Error(`the fake Stripe has no payment intent ${id}`);
    const amount = Number(intent.amount);
    const settled =
      outcome === 'succeeded'
        ? { ...intent, status: 'succeeded', amount_received: amount, last_payment_error: null }
        : {
            ...intent,
            status: 'requires_payment_method',
            amount_received: 0,
            last_payment_error: { type: 'card_error', code: 'debit_not_authorized', message: 'The debit was not authorized.' },
          };
    this.paymentIntents.set(id, settled);
    return settled;
  }

  /** A page of a list, as Stripe pages: `limit`, then `starting_after` the last id seen. */
  private page(path: string, params: Record<string, string>, items: Record<string, unknown>[]): unknown {
    const size = Math.min(Number(params.limit ?? 10), this.pageSize);
    const after = params.starting_after === undefined ? 0 : items.findIndex((item) => item.id === params.starting_after) + 1;
    const data = items.slice(after, after + size);
    return { object: 'list', data, has_more: after + size < items.length, url: path };
  }

  private send(response: ServerResponse, status: number, body: unknown): void {
    response.writeHead(status, { 'content-type': 'application/json', 'request-id': 'req_fake' });
    response.end(JSON.stringify(body));
  }
}
