import type { FastifyInstance, InjectOptions } from 'fastify';
import { readFileSync } from 'node:fs';
import { pino } from 'pino';
import { assemble, type Assembled } from '../../src/app.js';
import { parseCatalog, type Catalog } from '../../src/billing/catalog.js';
import type { RateLimitSettings } from '../../src/http/rate-limits.js';
import type { HttpLimits } from '../../src/http/server.js';
import type { Ledger } from '../../src/ledger/ledger.js';
import type { DeliveryOptions } from '../../src/events/delivery.js';
import type { DestinationPolicy } from '../../src/events/destinations.js';
import { sequenceEvents } from '../../src/events/event-log.js';
import type { WorkerOptions } from '../../src/webhooks/worker.js';
import { createTestDatabase, type TestDatabase } from './database.js';
import { FakeStripe } from './fake-stripe.js';

/** A test clock: starts at a fixed instant and moves only when told. */
export class TestClock {
  private current: number;
  constructor(start = Date.parse('2030-01-01T00:00:00.000Z')) {
    this.current = start;
  }
  now = (): Date => new Date(this.current);
  advanceSeconds(seconds: number): void {
    this.current += seconds * 1000;
  }
}

export const appKey = 'test-app-key-0123456789';
export const adminKey = 'test-admin-key-0123456789';
export const viewerKey = 'test-viewer-key-0123456789';
export const metricsKey = 'test-metrics-key-0123456789';

export const webhookSecret = 'whsec_test_secret_0123456789';

/** The shipped example catalog, with a tighter adjustment limit when a test asks for one. */
export function testCatalog(adjustmentCreditsMax = 100_000, grantCreditsMax?: number): Catalog {
  const catalog = parseCatalog(JSON.parse(readFileSync('plans.example.json', 'utf8')));
  return {
    ...catalog,
    limits: {
      admin_adjustment_credits_max: adjustmentCreditsMax,
      admin_grant_credits_max: grantCreditsMax ?? catalog.limits.admin_grant_credits_max,
    },
  };
}

export interface TestApp {
  app: FastifyInstance;
  ledger: Ledger;
  parts: Assembled;
  database: TestDatabase;
  clock: TestClock;
  /** Calls the API through Fastify's HTTP stack with the app key (or the one given). */
  call(method: InjectOptions['method'], url: string, body?: unknown, key?: string | null): Promise<{ status: number; body: any }>;
  admin(method: InjectOptions['method'], url: string, body?: unknown): Promise<{ status: number; body: any }>;
  close(): Promise<void>;
}

export interface TestAppOptions {
  /** The plan catalog (default the example catalog, see testCatalog). */
  catalog?: Catalog;
  adjustmentCreditsMax?: number;
  /** The catalog's limits.admin_grant_credits_max (default the example catalog's). */
  grantCreditsMax?: number;
  poolSize?: number;
  /** A database shared with another TestApp (a second Tally process on the same data). */
  database?: TestDatabase;
  stripeApiBase?: string;
  /** The Stripe secret key (its mode decides which events are Tally's); default a test key. */
  stripeSecretKey?: string;
  checkoutUrlHosts?: string[];
  workerOptions?: Partial<WorkerOptions>;
  eventDeliveryOptions?: Partial<DeliveryOptions>;
  /** Which hosts event endpoints may name; tests delivering to a local receiver allow private ones. */
  eventDestinations?: Partial<DestinationPolicy>;
  breakerHalfOpenAfterMilliseconds?: number;
  clock?: TestClock;
  httpLimits?: Partial<HttpLimits>;
  rateLimits?: Partial<RateLimitSettings>;
}

/** Fast retries for tests: the worker retries within a fraction of a second. */
export const testWorkerOptions: Partial<WorkerOptions> = {
  pollIntervalMilliseconds: 50,
  retryBaseSeconds: 0.05,
  retryDelaySecondsMax: 0.2,
  breakerWaitSeconds: 0.2,
};

export async function createTestApp(options: TestAppOptions = {}): Promise<TestApp> {
  const database = options.database ?? (await createTestDatabase(options.poolSize ?? 20));
  const clock = options.clock ?? new TestClock();
  const parts = await assemble({
    db: database.db,
    catalog: options.catalog ?? testCatalog(options.adjustmentCreditsMax, options.grantCreditsMax),
    keys: { apiKey: appKey, adminKey, viewerKey, metricsKey },
    httpLimits: options.httpLimits,
    rateLimits: options.rateLimits,
    logger: pino({ level: 'silent' }),
    logLevel: 'silent',
    version: 'test',
    stripeSecretKey: options.stripeApiBase === undefined ? undefined : (options.stripeSecretKey ?? 'sk_test_fake'),
    checkoutUrlHosts: options.checkoutUrlHosts,
    stripeApiBase: options.stripeApiBase,
    stripeBreakerHalfOpenAfterMilliseconds: options.breakerHalfOpenAfterMilliseconds ?? 500,
    stripeTimeoutMilliseconds: 1000,
    webhookSecrets: [webhookSecret],
    workerOptions: { ...testWorkerOptions, ...options.workerOptions },
    eventDeliveryOptions: { timeoutMilliseconds: 1000, ...options.eventDeliveryOptions },
    eventDestinations: options.eventDestinations,
    sweepIntervalSeconds: 60,
    clock: clock.now,
  });
  const { app, ledger } = parts;
  const call: TestApp['call'] = async (method, url, body, key = appKey) => {
    const headers: Record<string, string> = {};
    if (key !== null) headers.authorization = `Bearer ${key}`;
    if (body !== undefined) headers['content-type'] = 'application/json';
    const response = await app.inject({ method, url, headers, payload: body === undefined ? undefined : JSON.stringify(body) });
    const text = response.body;
    const parsed: unknown = response.headers['content-type']?.toString().includes('json') && text !== '' ? JSON.parse(text) : text;
    return { status: response.statusCode, body: parsed };
  };
  return {
    app,
    ledger,
    parts,
    database,
    clock,
    call,
    admin: (method, url, body) => call(method, url, body, adminKey),
    close: async () => {
      await parts.close();
      if (options.database === undefined) await database.close();
    },
  };
}

/** Creates an account and gives it credits through the admin API. */
export async function fundedAccount(test: TestApp, accountId: string, credits: number, grant: Record<string, unknown> = {}): Promise<void> {
  const created = await test.call('PUT', `/v1/accounts/${accountId}`, {});
  if (created.status !== 200) throw new Error(`account ${accountId}: ${JSON.stringify(created.body)}`);
  if (credits === 0) return;
  const granted = await test.admin('POST', `/v1/accounts/${accountId}/grants`, {
    amount: credits,
    source: 'promo',
    reason: 'test funding',
    idempotency_key: `fund-${accountId}-${Math.random()}`,
    ...grant,
  });
  if (granted.status !== 201) throw new Error(`grant to ${accountId}: ${JSON.stringify(granted.body)}`);
}

/** Ledger facts read straight from the database, for assertions. */
export async function ledgerFacts(test: TestApp, accountId: string) {
  const { rows } = await test.database.db.query<{
    available: number;
    held: number;
    debt: number;
    entry_sum: number;
    grant_sum: number;
    entry_count: number;
  }>(
    `select a.available, a.held, a.debt,
       (select coalesce(sum(amount), 0) from entries where account_id = a.id)::bigint as entry_sum,
       (select coalesce(sum(remaining), 0) from grants where account_id = a.id)::bigint as grant_sum,
       (select count(*) from entries where account_id = a.id)::bigint as entry_count
     from accounts a where id = $1`,
    [accountId],
  );
  const row = rows[0];
  if (row === undefined) throw new Error(`no account ${accountId}`);
  return row;
}

/** A Tally whose Stripe API is a local fake, for a test file's `before`; stop both with `stopWithFakeStripe`. */
export async function startWithFakeStripe(options: TestAppOptions = {}): Promise<{ test: TestApp; fake: FakeStripe }> {
  const fake = await new FakeStripe().start();
  return { test: await createTestApp({ ...options, stripeApiBase: fake.url }), fake };
}

export async function stopWithFakeStripe(test: TestApp, fake: FakeStripe): Promise<void> {
  await test.close();
  await fake.stop();
}

/**
 * Waits until every committed event is numbered. An event is numbered once every older
 * transaction of the server has finished, and test files running beside this one (other
 * databases, same server) hold transactions of their own for a moment.
 */
export async function settleEvents(test: TestApp, timeoutMilliseconds = 20_000): Promise<void> {
  const deadline = Date.now() + timeoutMilliseconds;
  for (;;) {
    await sequenceEvents(test.database.db);
    const { rows } = await test.database.db.query<{ count: number }>('select count(*)::int as count from events where sequence is null');
    if ((rows[0]?.count ?? 0) === 0) return;
    if (Date.now() > deadline) throw new Error(`${rows[0]?.count} events still not numbered`);
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}
