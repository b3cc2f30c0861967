import createClient, { type Client } from 'openapi-fetch';
import { v7 as uuidv7 } from 'uuid';
import { errorFromAnswer } from './errors.js';
import type { components, paths } from './openapi-types.js';
import { Transport, defaultRetryOptions, type FetchFunction, type RetryOptions, type RetryPolicy } from './transport.js';

/**
 * The typed client of Tally's HTTP API. Every method sends one call (with the retries its
 * transport allows), answers the success body typed from Tally's OpenAPI description, and
 * throws the refusal's own TallyError subclass otherwise. Keyed writes take an
 * `idempotency_key`; left out, one is generated (UUIDv7) and kept for every retry of that call.
 */
type Schemas = components['schemas'];
export type Grant = Schemas['Grant'];
export type Entry = Schemas['Entry'];
export type Balance = Schemas['Balance'];
/** The account's plan, its source, meters, features, rate card and recurring grants. */
export type Entitlements = Schemas['Entitlements'];
export type Account = Schemas['Account'];
export type AccountDetail = Schemas['AccountDetail'];
export type Subscription = Schemas['Subscription'];
export type TallyEventRecord = Schemas['Event'];
export type WebhookEndpoint = Schemas['WebhookEndpoint'];

type Method = 'get' | 'put' | 'post' | 'delete';
/** The JSON body a call takes. */
export type RequestBody<Path extends keyof paths, M extends Method> = paths[Path][M] extends {
  requestBody?: { content: { 'application/json': infer Body } };
}
  ? Body
  : never;
/** The JSON body of a call's success (its 200 or 201). */
export type SuccessBody<Path extends keyof paths, M extends Method> = paths[Path][M] extends { responses: infer Responses }
  ? Responses extends { 200: { content: { 'application/json': infer Body } } }
    ? Body
    : Responses extends { 201: { content: { 'application/json': infer Body } } }
      ? Body
      : never
  : never;
type Query<Path extends keyof paths, M extends Method> = paths[Path][M] extends { parameters: { query?: infer Parameters } }
  ? NonNullable<Parameters>
  : never;
/** A keyed body whose key may be left out (one is generated). */
type Keyed<Body> = Omit<Body, 'idempotency_key'> & { idempotency_key?: string };

/**
 * The catalog's meters, each id naming the union of its dimensions:
 * `{ 'openai/gpt-5-mini': 'input_tokens' | 'output_tokens' }`. Given to `TallyClient<Meters>`,
 * it makes a priced spend with a meter or a dimension the catalog lacks a type error. The
 * default accepts any name, and Tally judges it (`UnknownMeter`, `InvalidRequest`).
 */
export type MeterCatalog = Record<string, string>;
/** The MeterCatalog of a catalog's `meters` list declared `as const`. */
export type MetersOf<List extends readonly { readonly id: string; readonly dimensions: readonly string[] }[]> = {
  [Meter in List[number] as Meter['id']]: Meter['dimensions'][number];
};
export type MeterName<Meters extends MeterCatalog> = Extract<keyof Meters, string>;
/** The units one call used (or may use) per dimension of a meter, each a non-negative integer; a dimension left out used none. */
export type Quantities<Meters extends MeterCatalog, Meter extends MeterName<Meters> = MeterName<Meters>> = Partial<
  Record<Meters[Meter], number>
>;
/** A spend of credits. */
export type CreditsSpend = { amount: number; meter?: never; quantities?: never };
/** A spend priced by the account's rate card: one of the catalog's meters with its quantities. */
export type PricedSpend<
  Meters extends MeterCatalog = MeterCatalog,
  Meter extends MeterName<Meters> = MeterName<Meters>,
> = Meter extends string ? { meter: Meter; quantities: Quantities<Meters, Meter>; amount?: never } : never;
/** Per meter, per dimension, credits per unit as an exact decimal string (`"0.000125"`): every dimension of every meter. */
export type Rates<Meters extends MeterCatalog = MeterCatalog> = { [Meter in MeterName<Meters>]: Record<Meters[Meter], string> };
/** The rate card version that priced a spend. */
export type RateCardReference = { id: string; version: number };
/** An answer to a priced spend: its exact cost (a decimal string) and the version that priced it. */
export type Priced<Answer> = Omit<Answer, 'cost' | 'rate_card'> & { cost: string; rate_card: RateCardReference };

type SpendFields = 'amount' | 'meter' | 'quantities';
// Typed quantities make each dimension optional, so their values read `number | undefined`;
// JSON leaves out a dimension that is absent or undefined, so they go out as the wire type's
// record of numbers.
type OnWire<Body> = Body extends { quantities?: unknown } ? Omit<Body, 'quantities'> & { quantities?: Record<string, number> } : Body;
const onWire = <Body>(body: Body): OnWire<Body> => body as OnWire<Body>;
type UsageFields = Keyed<Omit<RequestBody<'/v1/accounts/{id}/usage', 'post'>, SpendFields>>;
type BatchEventFields = Keyed<Omit<RequestBody<'/v1/usage/batch', 'post'>['events'][number], SpendFields>>;
type HoldFields = Keyed<Omit<RequestBody<'/v1/accounts/{id}/holds', 'post'>, SpendFields>>;

export type AccountInput = RequestBody<'/v1/accounts/{id}', 'put'>;
export type CreditsUsageInput = UsageFields & CreditsSpend;
export type PricedUsageInput<Meters extends MeterCatalog = MeterCatalog> = UsageFields & PricedSpend<Meters>;
export type UsageInput<Meters extends MeterCatalog = MeterCatalog> = CreditsUsageInput | PricedUsageInput<Meters>;
export type UsageAnswer = SuccessBody<'/v1/accounts/{id}/usage', 'post'>;
export type BatchEventInput<Meters extends MeterCatalog = MeterCatalog> = BatchEventFields & (CreditsSpend | PricedSpend<Meters>);
export type BatchResult = SuccessBody<'/v1/usage/batch', 'post'>['results'][number];
export type CreditsHoldInput = HoldFields & CreditsSpend;
/** A priced hold names the most the call may use (its `max_tokens`); it reserves ceil(cost) at the version in effect. */
export type PricedHoldInput<Meters extends MeterCatalog = MeterCatalog> = HoldFields & PricedSpend<Meters>;
export type HoldInput<Meters extends MeterCatalog = MeterCatalog> = CreditsHoldInput | PricedHoldInput<Meters>;
export type HoldAnswer = SuccessBody<'/v1/accounts/{id}/holds', 'post'>;
export type CaptureAnswer = SuccessBody<'/v1/holds/{hold_id}/capture', 'post'>;
export type QuoteInput<Meters extends MeterCatalog = MeterCatalog> = CreditsSpend | PricedSpend<Meters>;
/** What a spend would charge now and whether it would pass (`reason`: the refusal it would get); nothing is written. */
export type Quote = SuccessBody<'/v1/accounts/{id}/quote', 'post'>;
export type RateCardVersion = Schemas['RateCardVersion'];
/** A rate card's version in effect now, with the version scheduled next (null when none is). */
export type CurrentRateCard = SuccessBody<'/v1/rate-cards', 'get'>['rate_cards'][number];
export type PublishRateCardInput<Meters extends MeterCatalog = MeterCatalog> = {
  rates: Rates<Meters>;
  /** When the version takes effect (ISO 8601): now when left out; up to 60 s in the past means now. */
  effective_at?: string;
};
export type VoidAnswer = SuccessBody<'/v1/holds/{hold_id}/void', 'post'>;
export type LedgerPage = SuccessBody<'/v1/accounts/{id}/ledger', 'get'>;
export type CheckoutInput = RequestBody<'/v1/accounts/{id}/checkout', 'post'>;
export type CheckoutSession = SuccessBody<'/v1/accounts/{id}/checkout', 'post'>;
export type TrialEligibilityInput = RequestBody<'/v1/accounts/{id}/trial-eligibility', 'post'>;
export type TrialEligibility = SuccessBody<'/v1/accounts/{id}/trial-eligibility', 'post'>;
export type AutoTopUpInput = RequestBody<'/v1/accounts/{id}/auto-top-up', 'put'>;
export type AutoTopUp = SuccessBody<'/v1/accounts/{id}/auto-top-up', 'put'>;
export type SavedAutoTopUp = SuccessBody<'/v1/accounts/{id}/auto-top-up', 'get'>;
export type LowBalanceThreshold = SuccessBody<'/v1/accounts/{id}/low-balance-threshold', 'put'>;
/** Spend limits per UTC day and month: a field left out keeps its limit, null removes it. */
export type SpendLimitsInput = RequestBody<'/v1/accounts/{id}/limits', 'put'>;
/** The limits, the credits spent in the current UTC day and month, and when each window starts again. */
export type SpendLimits = SuccessBody<'/v1/accounts/{id}/limits', 'get'>;
export type EventsPage = SuccessBody<'/v1/events', 'get'>;
export type GrantInput = Keyed<RequestBody<'/v1/accounts/{id}/grants', 'post'>>;
export type GrantAnswer = SuccessBody<'/v1/accounts/{id}/grants', 'post'>;
export type AdjustmentInput = Keyed<RequestBody<'/v1/accounts/{id}/adjustments', 'post'>>;
export type AdjustmentAnswer = SuccessBody<'/v1/accounts/{id}/adjustments', 'post'>;
export type AccountExport = SuccessBody<'/v1/accounts/{id}/export', 'get'>;
export type Erasure = SuccessBody<'/v1/accounts/{id}/personal-data', 'delete'>;
export type ReconciliationReport = SuccessBody<'/v1/admin/reconcile', 'post'>;
export type ReconciliationRuns = SuccessBody<'/v1/admin/reconciliations', 'get'>;
export type WebhookEventsQuery = Query<'/v1/admin/webhook-events', 'get'>;
export type WebhookEvents = SuccessBody<'/v1/admin/webhook-events', 'get'>;
export type ReplayAnswer = SuccessBody<'/v1/admin/webhook-events/{event_id}/replay', 'post'>;
export type Alerts = SuccessBody<'/v1/admin/alerts', 'get'>;
export type BreakerState = SuccessBody<'/v1/admin/stripe-breaker', 'get'>;
export type AccountsQuery = Query<'/v1/admin/accounts', 'get'>;
export type AccountsPage = SuccessBody<'/v1/admin/accounts', 'get'>;
export type CreditHistory = SuccessBody<'/v1/admin/credit-history', 'get'>;
export type WebhookEndpointInput = RequestBody<'/v1/admin/webhook-endpoints', 'post'>;
export type CreatedWebhookEndpoint = SuccessBody<'/v1/admin/webhook-endpoints', 'post'>;

export interface TallyClientOptions {
  /** Where Tally listens, as `https://tally.internal:3000`. */
  baseUrl: string;
  /** The app key (TALLY_API_KEY), or the admin key for `admin` calls. */
  apiKey: string;
  /** Another fetch (a proxy's, a test's); the global fetch by default. */
  fetch?: FetchFunction;
  /** Each attempt's time limit (default 15 s). */
  timeoutMilliseconds?: number;
  retry?: Partial<RetryOptions>;
  /** Waits between retries (tests shorten it). */
  sleep?: (milliseconds: number) => Promise<void>;
}

export interface AccountCalls {
  /** Creates or updates an account; fields left out keep their value. */
  upsert(accountId: string, input?: AccountInput): Promise<Account>;
  /** The account with its subscription, trial, live grants and balance. */
  get(accountId: string): Promise<AccountDetail>;
}

export interface HoldCalls<Meters extends MeterCatalog = MeterCatalog> {
  /** Reserves credits for up to `expires_in_seconds` (default 900). Keyed like usage. */
  create(accountId: string, input: CreditsHoldInput): Promise<HoldAnswer>;
  /**
   * Reserves ceil(cost) of the most the call may use (`{meter, quantities}`, as its
   * `max_tokens`), priced at the version in effect, which the hold keeps for its capture.
   */
  create(accountId: string, input: PricedHoldInput<Meters>): Promise<Priced<HoldAnswer>>;
  /**
   * Captures `amount` of the hold (all of it when left out); the rest is released. A hold
   * resolves once, so this call is retried only when Tally surely did nothing.
   */
  capture(holdId: string, amount?: number): Promise<CaptureAnswer>;
  /**
   * Captures a priced hold by what the call used, priced by the hold's version with the
   * account's carry; the rest is released. Charged credits above the hold are refused
   * (`CaptureExceedsHold`). Name the meter (`capture<'openai/gpt-5'>`) to type its dimensions
   * exactly. Retried only when Tally surely did nothing.
   */
  capture<Meter extends MeterName<Meters> = MeterName<Meters>>(
    holdId: string,
    used: { quantities: Quantities<Meters, Meter> },
  ): Promise<Priced<CaptureAnswer>>;
  /** Releases the whole hold; retried only when Tally surely did nothing. */
  void(holdId: string): Promise<VoidAnswer>;
}

export interface LimitCalls {
  /** The limits and what was spent in the current windows. */
  get(accountId: string): Promise<SpendLimits>;
  /** Sets limits per UTC day and month; a spend past one is refused with SpendLimitExceeded. */
  set(accountId: string, input: SpendLimitsInput): Promise<SpendLimits>;
}

export interface WebhookEndpointCalls {
  /** Registers an endpoint; its signing secret is in this answer only. Not retried after a lost answer (it would make a second endpoint). */
  create(input: WebhookEndpointInput): Promise<CreatedWebhookEndpoint>;
  list(): Promise<WebhookEndpoint[]>;
  get(endpointId: string): Promise<WebhookEndpoint>;
  delete(endpointId: string): Promise<{ id: string; deleted: true }>;
  /** Enables a disabled endpoint: it resumes from its oldest undelivered event. */
  enable(endpointId: string): Promise<WebhookEndpoint>;
}

/** The operators' calls: they need the admin key. */
export interface AdminCalls<Meters extends MeterCatalog = MeterCatalog> {
  /** Grants promo or admin credits. Keyed. */
  grant(accountId: string, input: GrantInput): Promise<GrantAnswer>;
  /** A signed correction with a reason. Keyed. */
  adjust(accountId: string, input: AdjustmentInput): Promise<AdjustmentAnswer>;
  /** Every record Tally keeps on the account (GDPR access). */
  export(accountId: string): Promise<AccountExport>;
  /** Erases the account's personal data; ledger amounts stay, pseudonymized. */
  erase(accountId: string, reason: string): Promise<Erasure>;
  /** Runs a reconciliation now (never changes the ledger). */
  reconcile(input?: { stripe?: boolean }): Promise<ReconciliationReport>;
  reconciliations(limit?: number): Promise<ReconciliationRuns['runs']>;
  /** The Stripe webhook inbox, newest first. */
  webhookEvents(query?: WebhookEventsQuery): Promise<WebhookEvents['events']>;
  /** Applies a stored Stripe event again (its effects stay exactly once). */
  replay(eventId: string): Promise<ReplayAnswer>;
  alerts(limit?: number): Promise<Alerts['alerts']>;
  stripeBreaker(): Promise<BreakerState>;
  accounts(query?: AccountsQuery): Promise<AccountsPage>;
  creditHistory(query?: { days?: number; until?: string }): Promise<CreditHistory['days']>;
  webhookEndpoints: WebhookEndpointCalls;
  /**
   * Publishes a new version of a rate card: rates for every dimension of every meter,
   * effective now or at `effective_at`. Spends already made keep the version that priced them.
   * Not retried after a lost answer (it would publish a second version).
   */
  publishRateCard(rateCardId: string, input: PublishRateCardInput<Meters>): Promise<RateCardVersion>;
  /** Every version of a rate card, newest published first. */
  rateCardVersions(rateCardId: string): Promise<RateCardVersion[]>;
}

/** What a call of openapi-fetch answers. */
type Outcome<Data> = { data?: Data; error?: unknown; response: Response };

export const pageSizeDefault = 100;

/**
 * `new TallyClient<Meters>(...)` with the catalog's meters (a MeterCatalog) types priced
 * spends, holds, captures, quotes and published rates by meter and dimension.
 */
export class TallyClient<Meters extends MeterCatalog = MeterCatalog> {
  /** The generated openapi-fetch client, for anything the methods do not cover. */
  readonly http: Client<paths>;
  readonly accounts: AccountCalls;
  readonly holds: HoldCalls<Meters>;
  readonly limits: LimitCalls;
  readonly admin: AdminCalls<Meters>;
  private readonly transport: Transport;

  constructor(options: TallyClientOptions) {
    const baseUrl = options.baseUrl.replace(/\/+$/, '');
    const fetchFunction: FetchFunction = options.fetch ?? ((request) => globalThis.fetch(request));
    this.transport = new Transport({
      fetch: fetchFunction,
      timeoutMilliseconds: options.timeoutMilliseconds ?? 15_000,
      retry: { ...defaultRetryOptions, ...options.retry },
      sleep: options.sleep,
    });
    this.http = createClient<paths>({
      baseUrl,
      headers: { authorization: `Bearer ${options.apiKey}` },
      fetch: this.transport.fetchFor('idempotent'),
    });
    this.accounts = this.accountCalls();
    this.holds = this.holdCalls();
    this.limits = this.limitCalls();
    this.admin = this.adminCalls();
  }

  /** The body of a success; a refusal as its typed error. */
  private async unwrap<Data>(pending: Promise<Outcome<Data>>): Promise<Data> {
    const { data, error, response } = await pending;
    if (response.ok && data !== undefined) return data;
    throw errorFromAnswer(response.status, error ?? data);
  }

  private fetchFor(policy: RetryPolicy, idempotencyKey?: string): { fetch: FetchFunction } {
    return { fetch: this.transport.fetchFor(policy, idempotencyKey) };
  }

  /** The spendable, held and owed credits of an account. */
  async balance(accountId: string): Promise<Balance> {
    return this.unwrap(this.http.GET('/v1/accounts/{id}/balance', { params: { path: { id: accountId } } }));
  }

  /** What the account may use: its plan (and whence), meters, features, rate card and recurring grants. */
  async entitlements(accountId: string): Promise<Entitlements> {
    return this.unwrap(this.http.GET('/v1/accounts/{id}/entitlements', { params: { path: { id: accountId } } }));
  }

  /** Spends credits. A retry of this call (or a call with the same key) never spends twice. */
  async usage(accountId: string, input: CreditsUsageInput): Promise<UsageAnswer>;
  /**
   * Spends `{meter, quantities}` priced by the account's rate card: charges floor(cost + carry)
   * and answers the exact `cost` and the `rate_card` version. Keyed like a spend of credits.
   */
  async usage(accountId: string, input: PricedUsageInput<Meters>): Promise<Priced<UsageAnswer>>;
  async usage(accountId: string, input: UsageInput<Meters>): Promise<UsageAnswer> {
    const body = { ...input, idempotency_key: input.idempotency_key ?? uuidv7() };
    return this.unwrap(
      this.http.POST('/v1/accounts/{id}/usage', {
        params: { path: { id: accountId } },
        body: onWire(body),
        ...this.fetchFor('idempotent', body.idempotency_key),
      }),
    );
  }

  /**
   * Up to 1000 spends in one call; one result per event, in order, each with its status (a
   * refused spend is a result, not an error). Events without a key get one each.
   */
  async usageBatch(events: BatchEventInput<Meters>[]): Promise<BatchResult[]> {
    const body = { events: events.map((event) => onWire({ ...event, idempotency_key: event.idempotency_key ?? uuidv7() })) };
    return (await this.unwrap(this.http.POST('/v1/usage/batch', { body, ...this.fetchFor('idempotent') }))).results;
  }

  /** What a spend would charge the account now, and whether it would pass; writes nothing. */
  async quote(accountId: string, input: CreditsSpend): Promise<Quote>;
  /** What a priced spend would charge now (with the account's carry), its exact cost and the version; writes nothing. */
  async quote(accountId: string, input: PricedSpend<Meters>): Promise<Priced<Quote>>;
  async quote(accountId: string, input: QuoteInput<Meters>): Promise<Quote> {
    return this.unwrap(this.http.POST('/v1/accounts/{id}/quote', { params: { path: { id: accountId } }, body: onWire(input) }));
  }

  /** Every rate card's version in effect now, with the one scheduled next. */
  async rateCards(): Promise<CurrentRateCard[]> {
    return (await this.unwrap(this.http.GET('/v1/rate-cards'))).rate_cards;
  }

  /**
   * The account's ledger, newest first, one page per step (`limit` entries, 1 to 500). Stops
   * after the last page.
   */
  async *ledger(accountId: string, options: { limit?: number; cursor?: string } = {}): AsyncGenerator<LedgerPage> {
    let cursor = options.cursor;
    for (;;) {
      const page = await this.unwrap(
        this.http.GET('/v1/accounts/{id}/ledger', {
          params: {
            path: { id: accountId },
            query: { limit: options.limit ?? pageSizeDefault, ...(cursor === undefined ? {} : { cursor }) },
          },
        }),
      );
      yield page;
      if (page.next_cursor === null) return;
      cursor = page.next_cursor;
    }
  }

  /**
   * The event log in sequence order, one event per step, from after the sequence given (0: from
   * the start). It ends when no newer event exists, unless `pollIntervalMilliseconds` is given:
   * then it waits and reads on until `signal` aborts. Keep the last event's `sequence` to
   * resume later.
   */
  async *events(
    options: { after?: number; accountId?: string; limit?: number; pollIntervalMilliseconds?: number; signal?: AbortSignal } = {},
  ): AsyncGenerator<TallyEventRecord> {
    let after = options.after ?? 0;
    while (options.signal?.aborted !== true) {
      const page = await this.eventsPage({ after, limit: options.limit, accountId: options.accountId });
      for (const event of page.events) yield event;
      after = page.next_after;
      if (page.events.length > 0) continue;
      if (options.pollIntervalMilliseconds === undefined) return;
      await new Promise((resolve) => setTimeout(resolve, options.pollIntervalMilliseconds));
    }
  }

  /** One page of the event log after a sequence. */
  async eventsPage(options: { after?: number; limit?: number; accountId?: string } = {}): Promise<EventsPage> {
    const query = {
      after: options.after ?? 0,
      limit: options.limit ?? pageSizeDefault,
      ...(options.accountId === undefined ? {} : { account_id: options.accountId }),
    };
    return this.unwrap(this.http.GET('/v1/events', { params: { query } }));
  }

  /** A Stripe Checkout Session for a plan (optionally its trial) or a credit pack. Tally keys it by its parameters and the minute, so a retry gets the same session. */
  async checkout(accountId: string, input: CheckoutInput): Promise<CheckoutSession> {
    return this.unwrap(this.http.POST('/v1/accounts/{id}/checkout', { params: { path: { id: accountId } }, body: input }));
  }

  /** Whether the account (and the email and device given) may start a trial; creates nothing. */
  async trialEligibility(accountId: string, input: TrialEligibilityInput = {}): Promise<TrialEligibility> {
    return this.unwrap(this.http.POST('/v1/accounts/{id}/trial-eligibility', { params: { path: { id: accountId } }, body: input }));
  }

  /** The account's signed client_reference_id, for Payment Links and pricing tables. */
  async clientReference(accountId: string): Promise<string> {
    return (await this.unwrap(this.http.GET('/v1/accounts/{id}/client-reference', { params: { path: { id: accountId } } })))
      .client_reference_id;
  }

  /** Buys a pack off-session whenever a spend leaves `available` below `threshold`. */
  async autoTopUp(accountId: string, input: AutoTopUpInput): Promise<AutoTopUp> {
    return this.unwrap(this.http.PUT('/v1/accounts/{id}/auto-top-up', { params: { path: { id: accountId } }, body: input }));
  }

  /** The auto top-up setting; one never saved reads as turned off, with null for what was never chosen. */
  async getAutoTopUp(accountId: string): Promise<SavedAutoTopUp> {
    return this.unwrap(this.http.GET('/v1/accounts/{id}/auto-top-up', { params: { path: { id: accountId } } }));
  }

  /** The threshold under which `balance.low` fires (null: off). */
  async getLowBalanceThreshold(accountId: string): Promise<LowBalanceThreshold> {
    return this.unwrap(this.http.GET('/v1/accounts/{id}/low-balance-threshold', { params: { path: { id: accountId } } }));
  }

  /** The threshold under which `balance.low` fires (null turns it off). */
  async lowBalanceThreshold(accountId: string, threshold: number | null): Promise<LowBalanceThreshold> {
    return this.unwrap(
      this.http.PUT('/v1/accounts/{id}/low-balance-threshold', { params: { path: { id: accountId } }, body: { threshold } }),
    );
  }

  private accountCalls(): AccountCalls {
    return {
      /** Creates or updates an account; fields left out keep their value. */
      upsert: (accountId: string, input: AccountInput = {}): Promise<Account> =>
        this.unwrap(this.http.PUT('/v1/accounts/{id}', { params: { path: { id: accountId } }, body: input })),
      /** The account with its subscription, trial, live grants and balance. */
      get: (accountId: string): Promise<AccountDetail> =>
        this.unwrap(this.http.GET('/v1/accounts/{id}', { params: { path: { id: accountId } } })),
    };
  }

  private holdCalls(): HoldCalls<Meters> {
    // Function declarations carry the interface's overloads (credits or priced); `client` is
    // this client, which they cannot take as `this`.
    const client = this;
    function create(accountId: string, input: CreditsHoldInput): Promise<HoldAnswer>;
    function create(accountId: string, input: PricedHoldInput<Meters>): Promise<Priced<HoldAnswer>>;
    function create(accountId: string, input: HoldInput<Meters>): Promise<HoldAnswer> {
      const body = { ...input, idempotency_key: input.idempotency_key ?? uuidv7() };
      return client.unwrap(
        client.http.POST('/v1/accounts/{id}/holds', {
          params: { path: { id: accountId } },
          body: onWire(body),
          ...client.fetchFor('idempotent', body.idempotency_key),
        }),
      );
    }
    function capture(holdId: string, amount?: number): Promise<CaptureAnswer>;
    function capture(holdId: string, used: { quantities: Quantities<Meters> }): Promise<Priced<CaptureAnswer>>;
    function capture(holdId: string, used?: number | { quantities: Quantities<Meters> }): Promise<CaptureAnswer> {
      const body = used === undefined ? {} : typeof used === 'number' ? { amount: used } : { quantities: used.quantities };
      return client.unwrap(
        client.http.POST('/v1/holds/{hold_id}/capture', {
          params: { path: { hold_id: holdId } },
          body: onWire(body),
          ...client.fetchFor('once'),
        }),
      );
    }
    return {
      create,
      capture,
      /** Releases the whole hold; retried only when Tally surely did nothing. */
      void: (holdId: string): Promise<VoidAnswer> =>
        this.unwrap(this.http.POST('/v1/holds/{hold_id}/void', { params: { path: { hold_id: holdId } }, ...this.fetchFor('once') })),
    };
  }

  private limitCalls(): LimitCalls {
    const path = (id: string) => ({ params: { path: { id } } });
    return {
      /** The limits and what was spent in the current windows. */
      get: (accountId: string): Promise<SpendLimits> => this.unwrap(this.http.GET('/v1/accounts/{id}/limits', path(accountId))),
      /**
       * Sets limits per UTC day and month; a spend past one is refused with SpendLimitExceeded.
       * Setting the same limits again changes nothing, so a retry is safe.
       */
      set: (accountId: string, input: SpendLimitsInput): Promise<SpendLimits> =>
        this.unwrap(this.http.PUT('/v1/accounts/{id}/limits', { ...path(accountId), body: input })),
    };
  }

  private adminCalls(): AdminCalls<Meters> {
    const path = (id: string) => ({ params: { path: { id } } });
    return {
      /** Grants promo or admin credits (admin key). Keyed. */
      grant: (accountId: string, input: GrantInput): Promise<GrantAnswer> => {
        const body = { ...input, idempotency_key: input.idempotency_key ?? uuidv7() };
        return this.unwrap(
          this.http.POST('/v1/accounts/{id}/grants', { ...path(accountId), body, ...this.fetchFor('idempotent', body.idempotency_key) }),
        );
      },
      /** A signed correction with a reason (admin key). Keyed. */
      adjust: (accountId: string, input: AdjustmentInput): Promise<AdjustmentAnswer> => {
        const body = { ...input, idempotency_key: input.idempotency_key ?? uuidv7() };
        return this.unwrap(
          this.http.POST('/v1/accounts/{id}/adjustments', {
            ...path(accountId),
            body,
            ...this.fetchFor('idempotent', body.idempotency_key),
          }),
        );
      },
      /** Every record Tally keeps on the account (GDPR access). */
      export: (accountId: string): Promise<AccountExport> => this.unwrap(this.http.GET('/v1/accounts/{id}/export', path(accountId))),
      /** Erases the account's personal data; ledger amounts stay, pseudonymized. */
      erase: (accountId: string, reason: string): Promise<Erasure> =>
        this.unwrap(this.http.DELETE('/v1/accounts/{id}/personal-data', { ...path(accountId), body: { reason } })),
      /** Runs a reconciliation now (never changes the ledger). */
      reconcile: (input: { stripe?: boolean } = {}): Promise<ReconciliationReport> =>
        this.unwrap(this.http.POST('/v1/admin/reconcile', { body: input })),
      reconciliations: (limit?: number): Promise<ReconciliationRuns['runs']> =>
        this.unwrap(this.http.GET('/v1/admin/reconciliations', { params: { query: limit === undefined ? {} : { limit } } })).then(
          (answer) => answer.runs,
        ),
      /** The Stripe webhook inbox, newest first. */
      webhookEvents: (query: WebhookEventsQuery = {}): Promise<WebhookEvents['events']> =>
        this.unwrap(this.http.GET('/v1/admin/webhook-events', { params: { query } })).then((answer) => answer.events),
      /** Applies a stored Stripe event again (its effects stay exactly once). */
      replay: (eventId: string): Promise<ReplayAnswer> =>
        this.unwrap(this.http.POST('/v1/admin/webhook-events/{event_id}/replay', { params: { path: { event_id: eventId } } })),
      alerts: (limit?: number): Promise<Alerts['alerts']> =>
        this.unwrap(this.http.GET('/v1/admin/alerts', { params: { query: limit === undefined ? {} : { limit } } })).then(
          (answer) => answer.alerts,
        ),
      stripeBreaker: (): Promise<BreakerState> => this.unwrap(this.http.GET('/v1/admin/stripe-breaker')),
      accounts: (query: AccountsQuery = {}): Promise<AccountsPage> =>
        this.unwrap(this.http.GET('/v1/admin/accounts', { params: { query } })),
      creditHistory: (query: { days?: number; until?: string } = {}): Promise<CreditHistory['days']> =>
        this.unwrap(this.http.GET('/v1/admin/credit-history', { params: { query } })).then((answer) => answer.days),
      webhookEndpoints: {
        /** Registers an endpoint; its signing secret is in this answer only. Not retried after a lost answer (it would make a second endpoint). */
        create: (input: WebhookEndpointInput): Promise<CreatedWebhookEndpoint> =>
          this.unwrap(this.http.POST('/v1/admin/webhook-endpoints', { body: input, ...this.fetchFor('once') })),
        list: (): Promise<WebhookEndpoint[]> =>
          this.unwrap(this.http.GET('/v1/admin/webhook-endpoints')).then((answer) => answer.endpoints),
        get: (endpointId: string): Promise<WebhookEndpoint> =>
          this.unwrap(this.http.GET('/v1/admin/webhook-endpoints/{id}', path(endpointId))),
        delete: (endpointId: string): Promise<{ id: string; deleted: true }> =>
          this.unwrap(this.http.DELETE('/v1/admin/webhook-endpoints/{id}', { ...path(endpointId), ...this.fetchFor('once') })),
        enable: (endpointId: string): Promise<WebhookEndpoint> =>
          this.unwrap(this.http.POST('/v1/admin/webhook-endpoints/{id}/enable', path(endpointId))),
      },
      /** Publishes a rate card version (admin key); not retried after a lost answer. */
      publishRateCard: (rateCardId: string, input: PublishRateCardInput<Meters>): Promise<RateCardVersion> =>
        this.unwrap(this.http.PUT('/v1/admin/rate-cards/{id}', { ...path(rateCardId), body: input, ...this.fetchFor('once') })),
      /** Every version of a rate card, newest published first. */
      rateCardVersions: (rateCardId: string): Promise<RateCardVersion[]> =>
        this.unwrap(this.http.GET('/v1/admin/rate-cards/{id}/versions', path(rateCardId))).then((answer) => answer.versions),
    };
  }
}
